-- (b) Purchases spread over the funded users. One in ten is in LOYALTY, which nobody was given: those are
-- the expected 409 insufficient_funds.
local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
bench.install()

function request()
  local asset = math.random(1, 10) == 1 and "LOYALTY" or "GOLD"
  return bench.post("/v1/purchases", bench.movement(bench.user(bench.funded), asset, math.random(1, 100)))
end

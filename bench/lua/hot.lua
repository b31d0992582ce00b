-- (d) Every connection buys 1 GOLD from the same user, who holds a known amount: once it is spent, the
-- rest are the expected 409 insufficient_funds.
local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
bench.install()

function request()
  return bench.post("/v1/purchases", bench.movement(bench.hot_user, "GOLD", 1))
end

-- (a) Top-ups spread over all bench users.
local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
bench.install()

function request()
  return bench.post("/v1/topups", bench.movement(bench.user(bench.users), "GOLD", math.random(1, 1000)))
end

-- (c) 70% reads (all balances, first history page) and 30% writes (top-ups, purchases by funded users).
local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
bench.install()

function request()
  local dice = math.random(1, 100)
  if dice <= 35 then
    return bench.get("/v1/users/" .. bench.user(bench.users) .. "/balances")
  elseif dice <= 70 then
    return bench.get("/v1/users/" .. bench.user(bench.users) .. "/transactions")
  elseif dice <= 85 then
    return bench.post("/v1/topups", bench.movement(bench.user(bench.users), "GOLD", math.random(1, 1000)))
  end
  return bench.post("/v1/purchases", bench.movement(bench.user(bench.funded), "GOLD", math.random(1, 10)))
end

-- Reads of BENCH_PATH, where "{user}" stands for a random bench user (e.g. /v1/users/{user}/balances/GOLD).
local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
bench.install()

function request()
  local path = bench.path:gsub("{user}", bench.user(bench.users))
  return bench.get(path)
end

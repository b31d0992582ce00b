-- Reads of BENCH_PATH, where "{user}" stands for a random bench user (e.g. /v1/users/{user}/balances/GOLD) and
-- "{at}" for a random instant (RFC 3339, UTC, microseconds) between BENCH_AT_FIRST_US and BENCH_AT_LAST_US (Unix
-- microseconds).
local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
bench.install()

local first_us = tonumber(os.getenv("BENCH_AT_FIRST_US") or "0")
local last_us = tonumber(os.getenv("BENCH_AT_LAST_US") or "0")

local function instant()
  local us = first_us + math.floor(math.random() * (last_us - first_us + 1))
  local seconds = math.floor(us / 1000000)
  return os.date("!%Y-%m-%dT%H:%M:%S", seconds) .. string.format(".%06dZ", us - seconds * 1000000)
end

function request()
  local path = bench.path:gsub("{user}", bench.user(bench.users))
  if path:find("{at}", 1, true) then
    path = path:gsub("{at}", instant())
  end
  return bench.get(path)
end

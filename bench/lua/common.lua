-- Shared by the scenario scripts (each loads it with dofile): settings from the environment, requests with a
-- unique Idempotency-Key each, per-thread counts of responses by status, and a done() that prints the run's
-- figures as one JSON line for bench/load.py.
local M = {}

M.key = os.getenv("BENCH_API_KEY")
M.users = tonumber(os.getenv("BENCH_USERS") or "100000")
M.funded = tonumber(os.getenv("BENCH_FUNDED") or "10000")
M.prefix = os.getenv("BENCH_PREFIX") or "bench"
M.hot_user = os.getenv("BENCH_HOT_USER") or "hot"
M.batch_size = tonumber(os.getenv("BENCH_BATCH_SIZE") or "100")
M.path = os.getenv("BENCH_PATH")

local threads = {}    -- main state: every thread, for done()
local counter = 0     -- thread state: requests made, for unique idempotency keys
statuses = {}         -- thread state: responses by status (a global, so that done() can read it)
items = 0             -- thread state: batch operations answered 201
codes = {}            -- thread state: error responses by status and problem code, e.g. "503 unavailable"

function M.setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function M.init(args)
  local seed = os.time() + thread_id * 7919
  for i = 1, #M.prefix do
    seed = seed + M.prefix:byte(i) * i * 104729
  end
  math.randomseed(seed)
  M.get_headers = {["Authorization"] = "Bearer " .. M.key}
  M.post_headers = {["Authorization"] = "Bearer " .. M.key, ["Content-Type"] = "application/json"}
end

function M.next_key()
  counter = counter + 1
  return M.prefix .. "-" .. thread_id .. "-" .. counter
end

function M.user(count)
  return "u" .. math.random(1, count)
end

function M.get(path)
  return wrk.format("GET", path, M.get_headers)
end

-- A POST with a new Idempotency-Key header, unless `unkeyed` (a batch: its items carry their keys).
function M.post(path, body, unkeyed)
  M.post_headers["Idempotency-Key"] = (not unkeyed) and M.next_key() or nil
  return wrk.format("POST", path, M.post_headers, body)
end

function M.movement(user, asset, amount)
  return string.format('{"user_id":"%s","asset":"%s","amount":%d}', user, asset, amount)
end

function M.response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status >= 400 then
    local code = string.format("%d %s", status, body:match('"code"%s*:%s*"([%w_]+)"') or "?")
    if status >= 500 then  -- which failure: the detail tells a timeout from an unreachable database
      code = code .. " (" .. (body:match('"detail"%s*:%s*"([^"]*)"') or ""):sub(1, 30) .. ")"
    end
    codes[code] = (codes[code] or 0) + 1
  end
  if M.count_items and status == 200 then
    local _, n = body:gsub('"status"%s*:%s*201', "")
    items = items + n
  end
end

function M.done(summary, latency, requests)
  local counts, total_items, problems = {}, 0, {}
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("codes")) do
      problems[code] = (problems[code] or 0) + n
    end
    for status, n in pairs(thread:get("statuses")) do
      counts[tostring(status)] = (counts[tostring(status)] or 0) + n
    end
    total_items = total_items + thread:get("items")
  end
  local parts, problem_parts = {}, {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%s":%d', status, n))
  end
  for code, n in pairs(problems) do
    table.insert(problem_parts, string.format('"%s":%d', code, n))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"items":%d,"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},"statuses":{%s},"codes":{%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, total_items, e.connect, e.read, e.write, e.timeout,
    table.concat(parts, ","), table.concat(problem_parts, ",")))
end

-- Installs the hooks wrk looks for; the scenario script defines request().
function M.install()
  setup, init, response, done = M.setup, M.init, M.response, M.done
end

return M

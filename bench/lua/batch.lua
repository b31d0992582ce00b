-- (f) POST /v1/batch with BENCH_BATCH_SIZE top-ups over random users, each with its own idempotency key;
-- response() counts the operations answered 201.
local bench = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
bench.install()
bench.count_items = true

function request()
  local operations = {}
  for i = 1, bench.batch_size do
    operations[i] = string.format(
      '{"type":"topup","user_id":"%s","asset":"GOLD","amount":%d,"idempotency_key":"%s"}',
      bench.user(bench.users), math.random(1, 1000), bench.next_key())
  end
  return bench.post("/v1/batch", '{"operations":[' .. table.concat(operations, ",") .. '],"atomic":false}', true)
end

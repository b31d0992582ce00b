-- What each `wallet verify` found: the console shows the last report, /metrics its result and time.
CREATE TABLE verify_reports (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    failed      int NOT NULL CHECK (failed >= 0),                          -- checks with violations
    totals      jsonb NOT NULL CHECK (jsonb_typeof(totals) = 'object'),    -- rows counted: transactions, entries...
    checks      jsonb NOT NULL CHECK (jsonb_typeof(checks) = 'array')      -- [{name, violations, sample}]
);

-- Transactions of the last hours (volume per asset): rows are appended in created_at order, so a block range index
-- finds them for a few pages of index, and a posting's insert only widens the last range (no B-tree entry).
CREATE INDEX transactions_by_time ON transactions USING brin (created_at);

-- Users whose id starts with some text: ids are ASCII, so byte order keeps every prefix's ids together, whatever
-- the database's collation.
CREATE INDEX users_by_id_bytes ON users (user_id COLLATE "C");

-- Statistics of a user's accounts over any window, exact, in bounded time however long the history.
--
-- Aggregating a window on the fly reads every entry in it and the transaction of each (for its type and time):
-- 100,000 entries of one account took <MEASURED> on the 10M-entry bench ledger, and an index that covers it
-- would cost every posting one more index insertion. Instead, the maintenance loop folds each user account's
-- entries into chunks of consecutive transactions (statistics_chunks: per chunk and type, the count and sum of
-- credits and of debits, and the chunk's first and last creation time); postings do not know about it. A
-- window is then the chunks inside it, plus the raw entries of the at most two chunks it cuts and of the tail
-- past the account's last chunk. A chunk is a fact about the past that never changes: on a user account, ids
-- are taken under the account's lock, so the entries a snapshot sees are all those up to some id (a prefix),
-- and creation times follow ids.
CREATE TABLE statistics_chunks (
    account_id    bigint NOT NULL,
    last_id       bigint NOT NULL,   -- the chunk's last transaction on the account: chunks are (previous last_id, last_id]
    type          text NOT NULL,
    first_id      bigint NOT NULL,   -- the chunk's first transaction (the same on every row of a chunk)
    first_at      timestamptz NOT NULL,
    last_at       timestamptz NOT NULL,
    credit_count  bigint NOT NULL,
    credit_amount numeric NOT NULL,  -- sums of many entries can pass a bigint; numeric cannot overflow
    debit_count   bigint NOT NULL,
    debit_amount  numeric NOT NULL,  -- positive: what the debits took
    PRIMARY KEY (account_id, last_id, type),
    CONSTRAINT statistics_chunk_bounds CHECK (
        first_id <= last_id AND first_at <= last_at AND credit_count >= 0 AND debit_count >= 0
        AND credit_amount >= 0 AND debit_amount >= 0 AND credit_count + debit_count > 0)
);

-- How far the rollup has looked for accounts with new entries: transaction ids up to scanned_through.
CREATE TABLE statistics_progress (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    scanned_through bigint NOT NULL
);
INSERT INTO statistics_progress VALUES (true, 0);

-- Rolls one user account's complete chunks of p_chunk transactions past its last chunk; returns how many it wrote.
-- Rollups take turns (one advisory lock), so that two never write chunks of one account side by side.
CREATE FUNCTION wallet_statistics_roll(p_account_id bigint, p_chunk int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    v_rolled bigint;
    v_written int;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('wallet_statistics_rollup'));
    SELECT coalesce(max(last_id), 0) INTO v_rolled FROM statistics_chunks WHERE account_id = p_account_id;
    WITH pending AS (
        SELECT e.transaction_id, e.amount, t.type, t.created_at,
               (dense_rank() OVER (ORDER BY e.transaction_id) - 1) / p_chunk AS chunk
          FROM entries e JOIN transactions t ON t.id = e.transaction_id
         WHERE e.account_id = p_account_id AND e.stripe IS NULL AND e.transaction_id > v_rolled
    ), chunks AS (
        SELECT chunk, min(transaction_id) AS first_id, max(transaction_id) AS last_id,
               min(created_at) AS first_at, max(created_at) AS last_at
          FROM pending GROUP BY chunk
        HAVING count(DISTINCT transaction_id) = p_chunk  -- complete chunks only: the rest stays raw
    ), written AS (
        INSERT INTO statistics_chunks (account_id, last_id, type, first_id, first_at, last_at,
                                       credit_count, credit_amount, debit_count, debit_amount)
        SELECT p_account_id, c.last_id, p.type, c.first_id, c.first_at, c.last_at,
               count(*) FILTER (WHERE p.amount > 0), coalesce(sum(p.amount) FILTER (WHERE p.amount > 0), 0),
               count(*) FILTER (WHERE p.amount < 0), coalesce(-sum(p.amount) FILTER (WHERE p.amount < 0), 0)
          FROM pending p JOIN chunks c USING (chunk)
         GROUP BY c.last_id, p.type, c.first_id, c.first_at, c.last_at
        RETURNING last_id
    )
    SELECT count(DISTINCT last_id) INTO v_written FROM written;
    RETURN v_written;
END
$$;

-- One round of the rollup: the user accounts with entries in the next p_ids_max transaction ids, and p_chunk
-- transactions or more past their last chunk, get their complete chunks written. Returns how many ids it looked at
-- (0: caught up, or another session's round is running). An account whose entry commits after a round looked past
-- its id is found again at its next entry; until then that entry is read raw, which is exact, only slower.
CREATE FUNCTION wallet_statistics_rollup(p_ids_max bigint, p_chunk int) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_from bigint;
    v_through bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('wallet_statistics_rollup')) THEN
        RETURN 0;
    END IF;
    SELECT scanned_through INTO v_from FROM statistics_progress;
    SELECT least(v_from + p_ids_max, coalesce(max(id), 0)) INTO v_through FROM transactions;
    IF v_through <= v_from THEN
        RETURN 0;
    END IF;
    PERFORM wallet_statistics_roll(m.account_id, p_chunk)
       FROM (SELECT t.account_id,
                    coalesce((SELECT max(c.last_id) FROM statistics_chunks c WHERE c.account_id = t.account_id), 0)
                        AS rolled
               FROM (SELECT DISTINCT e.account_id FROM entries e
                      WHERE e.transaction_id > v_from AND e.transaction_id <= v_through AND e.stripe IS NULL) t) m
      WHERE (SELECT count(*) FROM (SELECT 1 FROM entries e
                                    WHERE e.account_id = m.account_id AND e.stripe IS NULL
                                      AND e.transaction_id > m.rolled LIMIT p_chunk) p) >= p_chunk;
    UPDATE statistics_progress SET scanned_through = v_through;
    RETURN v_through - v_from;
END
$$;

-- A user account's statistics over [p_from, p_to) (either may be NULL: unbounded), one row per type: the chunks
-- inside the window, and the raw entries of the chunks it cuts and of the tail. The account's balance at the end
-- of the window is read apart (wallet_balance_as_of).
CREATE FUNCTION wallet_statistics(p_account_id bigint, p_from timestamptz, p_to timestamptz)
RETURNS TABLE (type text, credit_count bigint, credit_amount numeric, debit_count bigint, debit_amount numeric,
               first_at timestamptz, last_at timestamptz)
LANGUAGE sql STABLE AS $$
    WITH chunks AS (
        SELECT c.*,
               (p_from IS NULL OR c.first_at >= p_from) AND (p_to IS NULL OR c.last_at < p_to) AS inside,
               c.last_at < p_from OR c.first_at >= p_to AS outside
          FROM statistics_chunks c WHERE c.account_id = p_account_id
    ), raw_ranges AS (
        SELECT DISTINCT first_id AS low, last_id AS high FROM chunks WHERE NOT inside AND NOT coalesce(outside, false)
        UNION ALL
        SELECT coalesce(max(last_id), 0) + 1, NULL FROM chunks
    ), raw AS (
        -- Range by range, each entry's transaction by its primary key (OFFSET 0 keeps each subquery apart, so the
        -- ranges drive): the planner cannot know that the ranges hold a few hundred entries, and with an account of
        -- 10,000 chunks it read all of the account's entries, or hashed all of transactions (2-3 s on the bench
        -- ledger).
        SELECT t.type, e.amount, t.created_at
          FROM raw_ranges r
         CROSS JOIN LATERAL (SELECT x.transaction_id, x.amount FROM entries x
                              WHERE x.account_id = p_account_id AND x.stripe IS NULL AND x.transaction_id >= r.low
                                AND x.transaction_id <= coalesce(r.high, 9223372036854775807) OFFSET 0) e
         CROSS JOIN LATERAL (SELECT x.type, x.created_at FROM transactions x WHERE x.id = e.transaction_id OFFSET 0) t
         WHERE (p_from IS NULL OR t.created_at >= p_from) AND (p_to IS NULL OR t.created_at < p_to)
    ), parts AS (
        SELECT c.type, c.credit_count, c.credit_amount, c.debit_count, c.debit_amount, c.first_at, c.last_at
          FROM chunks c WHERE c.inside
        UNION ALL
        SELECT r.type, count(*) FILTER (WHERE r.amount > 0), coalesce(sum(r.amount) FILTER (WHERE r.amount > 0), 0),
               count(*) FILTER (WHERE r.amount < 0), coalesce(-sum(r.amount) FILTER (WHERE r.amount < 0), 0),
               min(r.created_at), max(r.created_at)
          FROM raw r GROUP BY r.type
    )
    SELECT p.type, sum(p.credit_count)::bigint, sum(p.credit_amount), sum(p.debit_count)::bigint,
           sum(p.debit_amount), min(p.first_at), max(p.last_at)
      FROM parts p GROUP BY p.type
$$;

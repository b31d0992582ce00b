-- The ledger schema and its posting engine. Runs on PostgreSQL 15 and newer.
--
-- Hot accounts: system accounts (treasury, bonus_pool, revenue) are unbounded, so no request locks their rows.
-- A request appends its system-side change to account_deltas; wallet_rollup() folds the deltas into
-- accounts.balance in the background. A system account's balance is accounts.balance + its pending deltas,
-- exact at every moment (see wallet_account_balances).

CREATE TABLE assets (
    code  text PRIMARY KEY CHECK (code ~ '^[A-Z][A-Z0-9_]{1,15}$'),
    name  text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    scale smallint NOT NULL DEFAULT 0 CHECK (scale BETWEEN 0 AND 18)
);

CREATE TABLE users (
    user_id      text PRIMARY KEY CHECK (user_id ~ '^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$'),
    display_name text CHECK (char_length(display_name) <= 200),
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE accounts (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind    text NOT NULL CHECK (kind IN ('user', 'system')),
    name    text NOT NULL CHECK (char_length(name) <= 80),
    asset   text NOT NULL REFERENCES assets (code),
    user_id text REFERENCES users (user_id),
    balance bigint NOT NULL DEFAULT 0,
    UNIQUE (name, asset),
    CONSTRAINT account_owner CHECK (
        (kind = 'user' AND user_id IS NOT NULL AND name = 'user:' || user_id)
        OR (kind = 'system' AND user_id IS NULL AND name ~ '^system:[a-z_]{1,32}$')
    ),
    CONSTRAINT user_balance_not_negative CHECK (kind = 'system' OR balance >= 0),
    CONSTRAINT user_balance_max CHECK (kind = 'system' OR balance <= 1000000000000000000)
);

-- Pending changes of system accounts; no index, no foreign key: inserts must stay contention-free.
CREATE TABLE account_deltas (
    account_id bigint NOT NULL,
    amount     bigint NOT NULL CHECK (amount <> 0)
);

CREATE TABLE api_keys (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    secret_hash bytea NOT NULL UNIQUE CHECK (octet_length(secret_hash) = 32),
    scopes      text[] NOT NULL CHECK (
        cardinality(scopes) BETWEEN 1 AND 5
        AND scopes <@ ARRAY['read', 'topup', 'bonus', 'purchase', 'admin']
    ),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    revoked_at  timestamptz
);

CREATE TABLE transactions (
    -- Taken after the posting's account locks: on every account, ids increase in the order postings applied.
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type         text NOT NULL CHECK (type ~ '^[a-z_]{1,32}$'),
    asset        text NOT NULL CHECK (asset ~ '^[A-Z][A-Z0-9_]{1,15}$'),
    user_id      text CHECK (char_length(user_id) <= 64),
    amount       bigint NOT NULL CHECK (amount > 0),
    description  text CHECK (char_length(description) <= 500),
    metadata     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    api_key_name text NOT NULL CHECK (char_length(api_key_name) <= 64),
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- entries.account_id and idempotency_keys.api_key_id carry no foreign key on purpose: the check would take a
-- KEY SHARE lock on the referenced row in every posting, and those rows are hot (the treasury, the one key a
-- game server uses), so every request would pile into one MultiXact. The engine resolves both before writing,
-- rows of accounts and api_keys are never deleted, and `wallet verify` checks that every reference resolves.
CREATE TABLE entries (
    transaction_id bigint NOT NULL REFERENCES transactions (id),
    leg            smallint NOT NULL CHECK (leg >= 1),
    account_id     bigint NOT NULL,
    amount         bigint NOT NULL CHECK (amount <> 0),
    -- The balance this entry produced; NULL on system accounts, whose balance is not serialized.
    balance_after  bigint CHECK (balance_after >= 0),
    PRIMARY KEY (transaction_id, leg)
);
CREATE INDEX entries_by_account ON entries (account_id, transaction_id DESC);

CREATE TABLE idempotency_keys (
    api_key_id     bigint NOT NULL,
    key            text NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    endpoint       text NOT NULL CHECK (char_length(endpoint) <= 100),
    request        jsonb NOT NULL,
    status         smallint CHECK (status BETWEEN 100 AND 599),
    transaction_id bigint REFERENCES transactions (id),
    problem        jsonb,
    -- Which HTTP request claimed the key: when the service runs a request again after losing its connection,
    -- finding its own claim means the first run committed, and the outcome is its own, not a replay.
    attempt_id     uuid,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (api_key_id, key)
);
-- BRIN: keys arrive in time order, and the purge only needs ranges; a B-tree would cost every request.
CREATE INDEX idempotency_keys_by_age ON idempotency_keys USING brin (created_at);

-- Presentation helpers: one place renders ids, timestamps and transactions, for POST and GET alike.
CREATE FUNCTION wallet_public_id(p_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 'tx_' || lpad(to_hex(p_id), 16, '0') $$;

CREATE FUNCTION wallet_ts(p_at timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- The HTTP status of a business error the engine returns: the one place that decides it.
CREATE FUNCTION wallet_error_status(p_code text) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_code IN ('user_not_found', 'asset_not_found') THEN 404 ELSE 409 END
$$;

-- The bound a user leg would break, and its message; NULLs when it breaks none.
CREATE FUNCTION wallet_bound_error(p_account text, p_asset text, p_balance numeric, p_amount bigint,
                                   OUT code text, OUT detail text)
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_balance + p_amount < 0 THEN 'insufficient_funds'
                WHEN p_balance + p_amount > 1000000000000000000 THEN 'balance_limit_exceeded' END,
           CASE WHEN p_balance + p_amount < 0
                    THEN format('Balance of %s in %s is %s, less than the %s requested.',
                                p_account, p_asset, p_balance, -p_amount)
                WHEN p_balance + p_amount > 1000000000000000000
                    THEN format('Balance of %s in %s is %s; adding %s would pass the limit of 10^18.',
                                p_account, p_asset, p_balance, p_amount) END
$$;

-- The one renderer of a transaction. The POST renders from what it just wrote; GET and replays read the rows.
CREATE FUNCTION wallet_render(
    p_id bigint, p_type text, p_user_id text, p_asset text, p_amount bigint, p_balance_after bigint,
    p_description text, p_metadata jsonb, p_accounts text[], p_amounts bigint[], p_created_at timestamptz
) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', wallet_public_id(p_id),
        'type', p_type,
        'status', 'posted',
        'user_id', p_user_id,
        'asset', p_asset,
        'amount', p_amount,
        'balance_after', p_balance_after,
        'description', p_description,
        'metadata', p_metadata,
        'entries', (SELECT json_agg(json_build_object('account', l.account, 'amount', l.amount) ORDER BY l.leg)
                      FROM unnest(p_accounts, p_amounts) WITH ORDINALITY AS l (account, amount, leg)),
        'created_at', wallet_ts(p_created_at)
    )
$$;

-- Stored transactions, rendered in one set-based pass (a history page is one call, not one per item).
CREATE FUNCTION wallet_transactions_json(p_ids bigint[]) RETURNS TABLE (id bigint, body json)
LANGUAGE sql STABLE AS $$
    SELECT t.id,
           wallet_render(t.id, t.type, t.user_id, t.asset, t.amount,
                         (array_agg(e.balance_after ORDER BY e.leg) FILTER (WHERE a.name = 'user:' || t.user_id))[1],
                         t.description, t.metadata,
                         array_agg(a.name ORDER BY e.leg), array_agg(e.amount ORDER BY e.leg), t.created_at)
      FROM transactions t
      JOIN entries e ON e.transaction_id = t.id
      JOIN accounts a ON a.id = e.account_id
     WHERE t.id = ANY (p_ids)
     GROUP BY t.id
$$;

-- The ids of one page of a user's history, newest first, before p_before_id (NULL: from the newest).
-- Bitmap scans off: the planner, costing by the average account, would fetch every entry of a busy account
-- and sort them; reading entries_by_account newest first stops after p_limit (20 ms -> 1 ms on a 1M ledger).
CREATE FUNCTION wallet_history_page(p_user_id text, p_asset text, p_before_id bigint, p_limit int)
RETURNS bigint[]
LANGUAGE sql STABLE
SET enable_bitmapscan = off
AS $$
    SELECT coalesce(array_agg(page.transaction_id ORDER BY page.transaction_id DESC), '{}')
      FROM (SELECT e.transaction_id
              FROM accounts a
             CROSS JOIN LATERAL (
                   SELECT transaction_id FROM entries
                    WHERE account_id = a.id AND transaction_id < coalesce(p_before_id, 9223372036854775807)
                    ORDER BY transaction_id DESC LIMIT p_limit
             ) e
             WHERE a.name = 'user:' || p_user_id AND (p_asset IS NULL OR a.asset = p_asset)
             ORDER BY e.transaction_id DESC LIMIT p_limit) page
$$;

CREATE FUNCTION wallet_transaction_json(p_id bigint) RETURNS json
LANGUAGE sql STABLE AS $$ SELECT body FROM wallet_transactions_json(ARRAY[p_id]) $$;

-- The posting engine: writes any balanced set of legs on one asset, atomically, or writes nothing and
-- returns the business error. Legs name accounts ('user:alice', 'system:treasury'), each at most once.
-- User accounts are locked in id order (no deadlock between multi-leg postings) and checked under the lock;
-- the UPDATE is conditional all the same, backed by the CHECK constraints. System legs are appended to
-- account_deltas and lock nothing.
-- Returns the balance each leg produced (NULL on system legs) and the transaction's creation time.
CREATE FUNCTION wallet_post(
    p_type text, p_asset text, p_user_id text, p_amount bigint,
    p_accounts text[], p_amounts bigint[],
    p_description text, p_metadata jsonb, p_api_key_name text,
    OUT posted_id bigint, OUT created_at timestamptz, OUT balances bigint[],
    OUT error_code text, OUT error_detail text
)
LANGUAGE plpgsql AS $$
DECLARE
    v_legs int := cardinality(p_accounts);
    v_ids bigint[];
    v_kinds text[];
    v_missing text;
    v_asset_exists boolean;
    v_locked_names text[];
    v_locked_balances bigint[];
    v_locked_amounts bigint[];
    v_user_legs int;
    v_updated int;
BEGIN
    IF v_legs IS NULL OR v_legs < 2 OR v_legs <> cardinality(p_amounts)
       OR 0 = ANY (p_amounts) OR (SELECT sum(x) FROM unnest(p_amounts) x) <> 0
       OR (SELECT count(DISTINCT x) FROM unnest(p_accounts) x) <> v_legs THEN
        RAISE EXCEPTION 'unbalanced posting: accounts %, amounts %', p_accounts, p_amounts
            USING ERRCODE = 'WL900';
    END IF;

    SELECT EXISTS (SELECT 1 FROM assets WHERE code = p_asset),
           array_agg(a.id ORDER BY l.ord), array_agg(a.kind ORDER BY l.ord),
           min(l.name) FILTER (WHERE a.id IS NULL)
      INTO v_asset_exists, v_ids, v_kinds, v_missing
      FROM unnest(p_accounts) WITH ORDINALITY AS l (name, ord)
      LEFT JOIN accounts a ON a.name = l.name AND a.asset = p_asset;

    IF NOT v_asset_exists THEN
        error_code := 'asset_not_found';
        error_detail := format('Asset %s does not exist.', p_asset);
        RETURN;
    END IF;
    IF v_missing IS NOT NULL THEN
        IF v_missing LIKE 'user:%' THEN
            error_code := 'user_not_found';
            error_detail := format('User %s does not exist.', substr(v_missing, 6));
            RETURN;
        END IF;
        RAISE EXCEPTION 'account % does not exist on asset %', v_missing, p_asset USING ERRCODE = 'WL901';
    END IF;

    -- Lock the user accounts in id order and read their balances. No WHERE on the balances here: a filter
    -- would be tested on the row as it was before the lock wait, and a row it dropped would go unlocked;
    -- locked rows are re-read at their newest version.
    SELECT coalesce(array_agg(locked.name ORDER BY locked.id), '{}'),
           coalesce(array_agg(locked.balance ORDER BY locked.id), '{}'),
           coalesce(array_agg(locked.amount ORDER BY locked.id), '{}')
      INTO v_locked_names, v_locked_balances, v_locked_amounts
      FROM (SELECT a.id, a.name, a.balance, l.amount
              FROM accounts a JOIN unnest(v_ids, p_amounts) AS l (id, amount) ON a.id = l.id
             WHERE a.kind = 'user'
             ORDER BY a.id
               FOR NO KEY UPDATE OF a) locked;
    v_user_legs := cardinality(v_locked_names);

    FOR i IN 1..v_user_legs LOOP
        SELECT b.code, b.detail INTO error_code, error_detail
          FROM wallet_bound_error(v_locked_names[i], p_asset, v_locked_balances[i], v_locked_amounts[i]) b;
        IF error_code IS NOT NULL THEN
            RETURN;
        END IF;
    END LOOP;

    -- One statement writes the transaction, moves the user balances, appends the entries and the deltas.
    WITH posted AS (
        INSERT INTO transactions (type, asset, user_id, amount, description, metadata, api_key_name)
        VALUES (p_type, p_asset, p_user_id, p_amount, p_description, coalesce(p_metadata, '{}'), p_api_key_name)
        RETURNING id, transactions.created_at
    ), legs AS (
        SELECT l.id, l.amount, l.kind, l.leg
          FROM unnest(v_ids, p_amounts, v_kinds) WITH ORDINALITY AS l (id, amount, kind, leg)
    ), moved AS (
        UPDATE accounts a SET balance = a.balance + legs.amount
          FROM legs
         WHERE legs.kind = 'user' AND a.id = legs.id AND a.balance + legs.amount >= 0
        RETURNING a.id, a.balance
    ), written AS (
        INSERT INTO entries (transaction_id, leg, account_id, amount, balance_after)
        SELECT posted.id, legs.leg, legs.id, legs.amount, moved.balance
          FROM posted CROSS JOIN legs LEFT JOIN moved ON moved.id = legs.id
        RETURNING leg, balance_after
    ), appended AS (
        INSERT INTO account_deltas (account_id, amount)
        SELECT legs.id, legs.amount FROM legs WHERE legs.kind = 'system'
    )
    SELECT posted.id, posted.created_at,
           (SELECT array_agg(w.balance_after ORDER BY w.leg) FROM written w),
           (SELECT count(w.balance_after) FROM written w)
      INTO posted_id, created_at, balances, v_updated
      FROM posted;

    IF v_updated <> v_user_legs THEN
        RAISE EXCEPTION 'posting %: % user legs, % updated', posted_id, v_user_legs, v_updated
            USING ERRCODE = 'WL902';
    END IF;
END
$$;

-- One money-moving request: claims the idempotency key, posts, and records the outcome, in the caller's
-- single transaction. A concurrent request with the same key waits on the key's index entry, then replays.
-- outcome: 'created' | 'failed' (business error, recorded) | 'replayed' | 'reused' (body: what was stored).
CREATE FUNCTION wallet_request(
    p_attempt_id uuid, p_api_key_id bigint, p_api_key_name text, p_key text, p_endpoint text, p_request jsonb,
    p_type text, p_asset text, p_user_id text, p_amount bigint,
    p_accounts text[], p_amounts bigint[], p_description text, p_metadata jsonb,
    OUT outcome text, OUT status int, OUT body json, OUT transaction_id text
)
LANGUAGE plpgsql AS $$
DECLARE
    v_stored idempotency_keys;
    v_claimed boolean := false;
    v_post record;
BEGIN
    FOR attempt IN 1..3 LOOP
        INSERT INTO idempotency_keys (api_key_id, key, endpoint, request, attempt_id)
        VALUES (p_api_key_id, p_key, p_endpoint, p_request, p_attempt_id)
        ON CONFLICT DO NOTHING;
        v_claimed := FOUND;
        EXIT WHEN v_claimed;

        SELECT * INTO v_stored FROM idempotency_keys k WHERE k.api_key_id = p_api_key_id AND k.key = p_key;
        CONTINUE WHEN NOT FOUND;  -- purged between the two statements: claim it again
        IF v_stored.attempt_id = p_attempt_id THEN  -- our own earlier run committed: its outcome is ours
            outcome := CASE WHEN v_stored.status = 201 THEN 'created' ELSE 'failed' END;
            status := v_stored.status;
            transaction_id := wallet_public_id(v_stored.transaction_id);
            body := coalesce(wallet_transaction_json(v_stored.transaction_id), v_stored.problem::json);
        ELSIF v_stored.endpoint = p_endpoint AND v_stored.request = p_request THEN
            outcome := 'replayed';
            status := v_stored.status;
            transaction_id := wallet_public_id(v_stored.transaction_id);
            body := coalesce(wallet_transaction_json(v_stored.transaction_id), v_stored.problem::json);
        ELSE
            outcome := 'reused';
            status := 422;
            body := json_build_object('endpoint', v_stored.endpoint, 'request', v_stored.request);
        END IF;
        RETURN;
    END LOOP;
    IF NOT v_claimed THEN
        RAISE EXCEPTION 'idempotency key % could not be claimed', p_key USING ERRCODE = 'WL903';
    END IF;

    v_post := wallet_post(p_type, p_asset, p_user_id, p_amount, p_accounts, p_amounts,
                          p_description, p_metadata, p_api_key_name);
    IF v_post.error_code IS NULL THEN
        outcome := 'created';
        status := 201;
        transaction_id := wallet_public_id(v_post.posted_id);
        UPDATE idempotency_keys k SET status = 201, transaction_id = v_post.posted_id
         WHERE k.api_key_id = p_api_key_id AND k.key = p_key;
        body := wallet_render(v_post.posted_id, p_type, p_user_id, p_asset, p_amount,
                              v_post.balances[array_position(p_accounts, 'user:' || p_user_id)],
                              p_description, coalesce(p_metadata, '{}'), p_accounts, p_amounts, v_post.created_at);
    ELSE
        outcome := 'failed';
        status := wallet_error_status(v_post.error_code);
        body := json_build_object('code', v_post.error_code, 'detail', v_post.error_detail);
        UPDATE idempotency_keys k SET status = wallet_request.status, problem = body::jsonb
         WHERE k.api_key_id = p_api_key_id AND k.key = p_key;
    END IF;
END
$$;

-- Folds pending system-account deltas into accounts.balance. Safe beside writers: DELETE sees only committed
-- deltas, and they move in the same transaction that adds them up. One rollup at a time; others return 0.
CREATE FUNCTION wallet_rollup() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_moved bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(2039172135) THEN
        RETURN 0;
    END IF;
    WITH moved AS (
        DELETE FROM account_deltas RETURNING account_id, amount
    ), summed AS (
        SELECT account_id, sum(amount)::bigint AS amount, count(*) AS n FROM moved GROUP BY account_id
    ), applied AS (
        UPDATE accounts a SET balance = a.balance + s.amount FROM summed s WHERE a.id = s.account_id
        RETURNING s.n
    )
    SELECT coalesce(sum(n), 0)::bigint INTO v_moved FROM applied;
    RETURN v_moved;
END
$$;

-- Balance of every account, exact at any moment: stored balance plus pending deltas (one pass over the deltas).
CREATE VIEW account_balances AS
SELECT a.id, a.kind, a.name, a.asset, a.user_id, a.balance + coalesce(d.pending, 0)::bigint AS balance
  FROM accounts a
  LEFT JOIN (SELECT account_id, sum(amount) AS pending FROM account_deltas GROUP BY account_id) d
         ON d.account_id = a.id;

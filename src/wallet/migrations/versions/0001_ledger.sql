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
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id bigint NOT NULL REFERENCES transactions (id),
    account_id     bigint NOT NULL,
    amount         bigint NOT NULL CHECK (amount <> 0),
    -- The balance this entry produced; NULL on system accounts, whose balance is not serialized.
    balance_after  bigint CHECK (balance_after >= 0)
);
CREATE INDEX entries_by_account ON entries (account_id, transaction_id DESC);
CREATE INDEX entries_by_transaction ON entries (transaction_id);

CREATE TABLE idempotency_keys (
    api_key_id     bigint NOT NULL,
    key            text NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    endpoint       text NOT NULL CHECK (char_length(endpoint) <= 100),
    request        jsonb NOT NULL,
    status         smallint CHECK (status BETWEEN 100 AND 599),
    transaction_id bigint REFERENCES transactions (id),
    problem        jsonb,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (api_key_id, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- Presentation helpers: one place renders ids, timestamps and transactions, for POST and GET alike.
CREATE FUNCTION wallet_public_id(p_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 'tx_' || lpad(to_hex(p_id), 16, '0') $$;

CREATE FUNCTION wallet_ts(p_at timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

CREATE FUNCTION wallet_transaction_json(p_id bigint) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', wallet_public_id(t.id),
        'type', t.type,
        'status', 'posted',
        'user_id', t.user_id,
        'asset', t.asset,
        'amount', t.amount,
        'balance_after', (
            SELECT e.balance_after FROM entries e JOIN accounts a ON a.id = e.account_id
            WHERE e.transaction_id = t.id AND a.kind = 'user' AND a.user_id = t.user_id
            ORDER BY e.id LIMIT 1
        ),
        'description', t.description,
        'metadata', t.metadata,
        'entries', (
            SELECT json_agg(json_build_object('account', a.name, 'amount', e.amount) ORDER BY e.id)
            FROM entries e JOIN accounts a ON a.id = e.account_id
            WHERE e.transaction_id = t.id
        ),
        'created_at', wallet_ts(t.created_at)
    )
    FROM transactions t WHERE t.id = p_id
$$;

-- The posting engine: writes any balanced set of legs on one asset, atomically, or writes nothing and
-- returns the business error. Legs name accounts ('user:alice', 'system:treasury'), each at most once.
-- User accounts are locked in id order (no deadlock between multi-leg postings) and checked under the lock;
-- the UPDATE is conditional all the same, backed by the CHECK constraints. System legs are appended to
-- account_deltas and lock nothing.
CREATE FUNCTION wallet_post(
    p_type text, p_asset text, p_user_id text, p_amount bigint,
    p_accounts text[], p_amounts bigint[],
    p_description text, p_metadata jsonb, p_api_key_name text,
    OUT posted_id bigint, OUT error_code text, OUT error_detail text
)
LANGUAGE plpgsql AS $$
DECLARE
    v_legs int := cardinality(p_accounts);
    v_ids bigint[];
    v_kinds text[];
    v_missing text;
    v_user_legs int;
    v_short record;
    v_updated int;
BEGIN
    IF v_legs IS NULL OR v_legs < 2 OR v_legs <> cardinality(p_amounts)
       OR 0 = ANY (p_amounts) OR (SELECT sum(x) FROM unnest(p_amounts) x) <> 0
       OR (SELECT count(DISTINCT x) FROM unnest(p_accounts) x) <> v_legs THEN
        RAISE EXCEPTION 'unbalanced posting: accounts %, amounts %', p_accounts, p_amounts
            USING ERRCODE = 'WL900';
    END IF;

    IF NOT EXISTS (SELECT 1 FROM assets WHERE code = p_asset) THEN
        error_code := 'asset_not_found';
        error_detail := format('Asset %s does not exist.', p_asset);
        RETURN;
    END IF;

    SELECT array_agg(a.id ORDER BY l.ord), array_agg(a.kind ORDER BY l.ord),
           min(l.name) FILTER (WHERE a.id IS NULL), count(*) FILTER (WHERE a.kind = 'user')
      INTO v_ids, v_kinds, v_missing, v_user_legs
      FROM unnest(p_accounts) WITH ORDINALITY AS l (name, ord)
      LEFT JOIN accounts a ON a.name = l.name AND a.asset = p_asset;

    IF v_missing IS NOT NULL THEN
        IF v_missing LIKE 'user:%' THEN
            error_code := 'user_not_found';
            error_detail := format('User %s does not exist.', substr(v_missing, 6));
            RETURN;
        END IF;
        RAISE EXCEPTION 'account % does not exist on asset %', v_missing, p_asset USING ERRCODE = 'WL901';
    END IF;

    -- Lock the user accounts in id order. A statement of its own: in one statement PostgreSQL would test the
    -- bounds below on the row as it was before the lock wait, and a concurrent change would slip past them.
    PERFORM 1 FROM accounts a
     WHERE a.id = ANY (v_ids) AND a.kind = 'user'
     ORDER BY a.id
       FOR NO KEY UPDATE;

    -- Under the locks, with a snapshot taken after them: find the first leg that would break a bound.
    SELECT a.name, a.balance, l.amount INTO v_short
      FROM accounts a JOIN unnest(v_ids, p_amounts) AS l (id, amount) ON a.id = l.id
     WHERE a.kind = 'user'
       AND (a.balance + l.amount < 0 OR a.balance + l.amount > 1000000000000000000)
     ORDER BY a.id
     LIMIT 1;

    IF FOUND THEN
        IF v_short.balance + v_short.amount < 0 THEN
            error_code := 'insufficient_funds';
            error_detail := format('Balance of %s in %s is %s, less than the %s requested.',
                                   v_short.name, p_asset, v_short.balance, -v_short.amount);
        ELSE
            error_code := 'balance_limit_exceeded';
            error_detail := format('Balance of %s in %s is %s; adding %s would pass the limit of 10^18.',
                                   v_short.name, p_asset, v_short.balance, v_short.amount);
        END IF;
        RETURN;
    END IF;

    INSERT INTO transactions (type, asset, user_id, amount, description, metadata, api_key_name)
    VALUES (p_type, p_asset, p_user_id, p_amount, p_description, coalesce(p_metadata, '{}'), p_api_key_name)
    RETURNING id INTO posted_id;

    WITH moved AS (
        UPDATE accounts a SET balance = a.balance + l.amount
          FROM unnest(v_ids, p_amounts, v_kinds) AS l (id, amount, kind)
         WHERE l.kind = 'user' AND a.id = l.id AND a.balance + l.amount >= 0
        RETURNING a.id, a.balance
    ), written AS (
        INSERT INTO entries (transaction_id, account_id, amount, balance_after)
        SELECT posted_id, l.id, l.amount, moved.balance
          FROM unnest(v_ids, p_amounts) WITH ORDINALITY AS l (id, amount, ord)
          LEFT JOIN moved ON moved.id = l.id
         ORDER BY l.ord
        RETURNING balance_after
    )
    SELECT count(balance_after) INTO v_updated FROM written;

    IF v_updated <> v_user_legs THEN
        RAISE EXCEPTION 'posting %: % user legs, % updated', posted_id, v_user_legs, v_updated
            USING ERRCODE = 'WL902';
    END IF;

    INSERT INTO account_deltas (account_id, amount)
    SELECT l.id, l.amount FROM unnest(v_ids, p_amounts, v_kinds) AS l (id, amount, kind) WHERE l.kind = 'system';
END
$$;

-- One money-moving request: claims the idempotency key, posts, and records the outcome, in the caller's
-- single transaction. A concurrent request with the same key waits on the key's index entry, then replays.
-- outcome: 'created' | 'failed' (business error, recorded) | 'replayed' | 'reused' (body: what was stored).
CREATE FUNCTION wallet_request(
    p_api_key_id bigint, p_api_key_name text, p_key text, p_endpoint text, p_request jsonb,
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
        INSERT INTO idempotency_keys (api_key_id, key, endpoint, request)
        VALUES (p_api_key_id, p_key, p_endpoint, p_request)
        ON CONFLICT DO NOTHING;
        v_claimed := FOUND;
        EXIT WHEN v_claimed;

        SELECT * INTO v_stored FROM idempotency_keys WHERE api_key_id = p_api_key_id AND key = p_key;
        CONTINUE WHEN NOT FOUND;  -- purged between the two statements: claim it again
        IF v_stored.endpoint = p_endpoint AND v_stored.request = p_request THEN
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
        body := wallet_transaction_json(v_post.posted_id);
        UPDATE idempotency_keys SET status = 201, transaction_id = v_post.posted_id
         WHERE api_key_id = p_api_key_id AND key = p_key;
    ELSE
        outcome := 'failed';
        status := CASE v_post.error_code WHEN 'user_not_found' THEN 404 WHEN 'asset_not_found' THEN 404
                  ELSE 409 END;
        body := json_build_object('code', v_post.error_code, 'detail', v_post.error_detail);
        UPDATE idempotency_keys SET status = wallet_request.status, problem = body::jsonb
         WHERE api_key_id = p_api_key_id AND key = p_key;
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

-- Balance of every account, exact at any moment: stored balance plus pending deltas.
CREATE VIEW account_balances AS
SELECT a.id, a.kind, a.name, a.asset, a.user_id,
       a.balance + coalesce((SELECT sum(d.amount) FROM account_deltas d WHERE d.account_id = a.id), 0)::bigint
           AS balance
  FROM accounts a;

-- The engine, second edition: one item path for single requests and batches, system accounts spread over stripes
-- with bounded issuance, and the idempotency record written once, with its outcome.
--
-- Released migrations are never edited: a change to the schema or to a function is a new revision like this one.

-- Bounds, each named once. Users are capped at 10^18. Issuance is capped per issuer account (treasury,
-- bonus_pool) at 2^61 net: every account but the issuers is >= 0, the issuers are >= -2^61 each, and each asset
-- sums to 0, so no balance of an asset can pass 2 * 2^61 = 2^62 and no sum of its balances either: every
-- balance, every sum and every running total fits a bigint with room to spare.
CREATE FUNCTION wallet_balance_max() RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 1000000000000000000::bigint $$;

CREATE FUNCTION wallet_issuance_max() RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 2305843009213693952::bigint $$;  -- 2^61

-- Stripes per system account. A request writes the stripe of its connection (backend pid modulo this), so
-- concurrent requests on different connections rarely touch the same row.
CREATE FUNCTION wallet_stripe_count() RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 64 $$;

-- A business error as the engine returns and the idempotency record keeps it. Its HTTP status is decided in one
-- place, the service's table of codes (errors.py); a test checks that every code written here is in it.
CREATE FUNCTION wallet_problem(p_code text, p_detail text) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT jsonb_build_object('code', p_code, 'detail', p_detail) $$;

-- Hot accounts, second edition. System accounts (treasury, bonus_pool, revenue) are touched by every request,
-- so no request may serialize on one row of theirs. Their balance is spread over wallet_stripe_count() stripes
-- and is the sum of them, exact at every moment. A stripe also carries `room`: how far it may still go down.
-- The rooms of an account add up to its balance minus its floor (balance_min), so an issuer can never pass
-- -wallet_issuance_max() and a sink (revenue) never goes below 0, checked row by row under the stripe's own lock.
-- When a stripe runs out of room, wallet_stripe_gather() moves room into it from the others, under all their
-- locks; only when the account as a whole has none left is the request refused (supply_limit_exceeded).
ALTER TABLE accounts ADD COLUMN balance_min bigint;

CREATE TABLE account_stripes (
    account_id bigint NOT NULL REFERENCES accounts (id),
    stripe     smallint NOT NULL,
    balance    bigint NOT NULL DEFAULT 0,
    room       bigint NOT NULL,
    PRIMARY KEY (account_id, stripe),
    CONSTRAINT stripe_bounds CHECK (stripe >= 0 AND room >= 0)
);

-- Issuers are the system accounts that credits come from; every other account is a sink, floored at 0.
CREATE FUNCTION wallet_system_floor(p_name text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_name IN ('system:treasury', 'system:bonus_pool') THEN -wallet_issuance_max() ELSE 0 END
$$;

-- A system account, with its floor and its stripes, the room spread evenly; returns its id. Idempotent.
CREATE FUNCTION wallet_system_account(p_name text, p_asset text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
BEGIN
    INSERT INTO accounts (kind, name, asset, balance_min) VALUES ('system', p_name, p_asset, wallet_system_floor(p_name))
    ON CONFLICT (name, asset) DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        SELECT id INTO v_id FROM accounts WHERE name = p_name AND asset = p_asset;
        RETURN v_id;
    END IF;
    INSERT INTO account_stripes (account_id, stripe, balance, room)
    SELECT v_id, s, 0, wallet_issuance_max() / wallet_stripe_count() * (wallet_system_floor(p_name) < 0)::int
      FROM generate_series(0, wallet_stripe_count() - 1) s;
    RETURN v_id;
END
$$;

-- Existing system accounts move to stripes: pending deltas are folded first, then the whole balance goes to
-- stripe 0 and its room is spread over all of them.
DO $$
DECLARE
    v_account record;
BEGIN
    PERFORM wallet_rollup();
    UPDATE accounts SET balance_min = wallet_system_floor(name) WHERE kind = 'system';
    FOR v_account IN SELECT id, balance, balance_min FROM accounts WHERE kind = 'system' LOOP
        INSERT INTO account_stripes (account_id, stripe, balance, room)
        SELECT v_account.id, s, CASE WHEN s = 0 THEN v_account.balance ELSE 0 END,
               (v_account.balance - v_account.balance_min) / wallet_stripe_count()
               + CASE WHEN s = 0 THEN (v_account.balance - v_account.balance_min) % wallet_stripe_count() ELSE 0 END
          FROM generate_series(0, wallet_stripe_count() - 1) s;
    END LOOP;
    UPDATE accounts SET balance = 0 WHERE kind = 'system';
END
$$;
-- What an account may be, in one CHECK (see the bounds of transactions below for why one): a user's account, named
-- after its user, within 0..10^18 (wallet_balance_max(), written as a number: a function in a CHECK is planned again
-- for every statement that writes the table; test_codes.py checks that the two agree), or a system account with a
-- floor.
ALTER TABLE accounts
    DROP CONSTRAINT accounts_kind_check, DROP CONSTRAINT accounts_name_check, DROP CONSTRAINT account_owner,
    DROP CONSTRAINT user_balance_not_negative, DROP CONSTRAINT user_balance_max,
    ADD CONSTRAINT account_kinds CHECK (
        kind = 'user' AND user_id IS NOT NULL AND name = 'user:' || user_id AND balance_min IS NULL
            AND balance BETWEEN 0 AND 1000000000000000000
        OR kind = 'system' AND user_id IS NULL AND name ~ '^system:[a-z_]{1,32}$' AND balance_min IS NOT NULL);
COMMENT ON COLUMN accounts.balance IS 'users: the balance; system accounts: 0, their balance is the sum of their stripes';

DROP VIEW account_balances;
DROP FUNCTION wallet_rollup();
DROP TABLE account_deltas;

CREATE VIEW account_balances AS
SELECT a.id, a.kind, a.name, a.asset, a.user_id,
       CASE WHEN a.kind = 'user' THEN a.balance
            ELSE (SELECT sum(s.balance) FROM account_stripes s WHERE s.account_id = a.id)::bigint END AS balance
  FROM accounts a;

-- Moves room into one stripe of an account from all the others, under all their locks (taken in stripe order,
-- after whatever user accounts the caller holds, as every posting takes them), so that the stripe can go down by
-- p_amount. False when the account as a whole lacks the room: the floor would be passed.
CREATE FUNCTION wallet_stripe_gather(p_account_id bigint, p_stripe int, p_amount bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_total numeric;
    v_share bigint;
BEGIN
    SELECT sum(room) INTO v_total
      FROM (SELECT room FROM account_stripes WHERE account_id = p_account_id ORDER BY stripe FOR UPDATE) locked;
    IF v_total < p_amount THEN
        RETURN false;
    END IF;
    v_share := ((v_total - p_amount) / wallet_stripe_count())::bigint;  -- floor: what is left over stays in p_stripe
    UPDATE account_stripes
       SET room = CASE WHEN stripe = p_stripe THEN (v_total - v_share * (wallet_stripe_count() - 1))::bigint
                       ELSE v_share END
     WHERE account_id = p_account_id;
    RETURN true;
END
$$;

-- What a posting writes, as the templates build it: the transaction's own fields, then its legs, each an account
-- name ('user:alice', 'system:treasury') in an asset with a signed amount.
CREATE TYPE wallet_posting AS (
    type        text,
    user_id     text,
    asset       text,
    amount      bigint,
    description text,
    metadata    jsonb,
    accounts    text[],
    assets      text[],
    amounts     bigint[]
);

-- A money-moving request: who sent it (the API key, whose name the transaction records and to which the
-- idempotency key belongs, and the attempt id of the HTTP request, the same across the service's own retries of
-- it), its idempotency key, the fingerprint the key is bound to (endpoint and canonical request), and the posting
-- it asks for. A posting the ledger makes by itself has no key (NULL). A batch may carry items of several callers
-- (the service coalesces concurrent requests into one transaction).
CREATE TYPE wallet_item AS (
    api_key_id   bigint,
    api_key_name text,
    attempt_id   uuid,
    key          text,
    endpoint     text,
    request      jsonb,
    posting      wallet_posting
);

-- Why a posting that wrote nothing did not apply, looked at under the user accounts' locks: the first unknown
-- user (before an unknown asset: one precedence on every route), an unknown asset, or a user bound. NULL when
-- nothing stands in the way any more (a concurrent posting moved the balance meanwhile): post again.
CREATE FUNCTION wallet_refusal(p wallet_posting) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_leg record;
BEGIN
    FOR v_leg IN
        SELECT l.name, l.asset, l.amount, a.id, a.balance, s.code IS NOT NULL AS asset_exists,
               u.user_id IS NOT NULL OR l.name NOT LIKE 'user:%' AS user_exists
          FROM unnest(p.accounts, p.assets, p.amounts) AS l (name, asset, amount)
          LEFT JOIN assets s ON s.code = l.asset
          LEFT JOIN users u ON l.name LIKE 'user:%' AND u.user_id = substr(l.name, 6)
          LEFT JOIN accounts a ON a.name = l.name AND a.asset = l.asset
         ORDER BY (u.user_id IS NOT NULL OR l.name NOT LIKE 'user:%'), s.code IS NOT NULL, a.id
    LOOP
        IF NOT v_leg.user_exists THEN
            RETURN wallet_problem('user_not_found', format('User %s does not exist.', substr(v_leg.name, 6)));
        ELSIF NOT v_leg.asset_exists THEN
            RETURN wallet_problem('asset_not_found', format('Asset %s does not exist.', v_leg.asset));
        ELSIF v_leg.id IS NULL THEN
            RAISE EXCEPTION 'account % does not exist in %', v_leg.name, v_leg.asset USING ERRCODE = 'WL901';
        END IF;
    END LOOP;
    FOR v_leg IN
        SELECT a.name, a.asset, a.balance, l.amount
          FROM accounts a JOIN unnest(p.accounts, p.assets, p.amounts) AS l (name, asset, amount)
                          ON a.name = l.name AND a.asset = l.asset
         WHERE a.kind = 'user'
         ORDER BY a.id
           FOR NO KEY UPDATE OF a
    LOOP
        IF v_leg.balance + v_leg.amount < 0 THEN
            RETURN wallet_problem('insufficient_funds', format('Balance of %s in %s is %s, less than the %s requested.',
                                                               v_leg.name, v_leg.asset, v_leg.balance, -v_leg.amount));
        ELSIF v_leg.balance + v_leg.amount > wallet_balance_max() THEN
            RETURN wallet_problem('balance_limit_exceeded',
                                  format('Balance of %s in %s is %s; adding %s would pass the limit of %s.',
                                         v_leg.name, v_leg.asset, v_leg.balance, v_leg.amount, wallet_balance_max()));
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- Stored transactions as rows, one per id, with their legs in order: the service renders them (one renderer in
-- Python for POST, GET, history and replays). `balance_after` is the user's, `metadata` jsonb's own text.
CREATE FUNCTION wallet_transactions(p_ids bigint[])
RETURNS TABLE (id bigint, type text, user_id text, asset text, amount bigint, balance_after bigint,
               description text, metadata text, accounts text[], amounts bigint[], created_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT t.id, t.type, t.user_id, t.asset, t.amount,
           (array_agg(e.balance_after ORDER BY e.leg) FILTER (WHERE a.name = 'user:' || t.user_id))[1],
           t.description, t.metadata::text, array_agg(a.name ORDER BY e.leg), array_agg(e.amount ORDER BY e.leg),
           t.created_at
      FROM transactions t
      JOIN entries e ON e.transaction_id = t.id
      JOIN accounts a ON a.id = e.account_id
     WHERE t.id = ANY (p_ids)
     GROUP BY t.id
$$;

DROP FUNCTION wallet_transaction_json(bigint);
DROP FUNCTION wallet_history_page(text, text, bigint, int);  -- the service reads pages with a plain query now
DROP FUNCTION wallet_transactions_json(bigint[]);
DROP FUNCTION wallet_render(bigint, text, text, text, bigint, bigint, text, jsonb, text[], bigint[], timestamptz);

-- Entries and idempotency records name their transaction without a foreign key: the engine writes them in the
-- statement that inserts the transaction, and the key checks cost three index lookups and row locks per posting
-- (a quarter of its time). `wallet verify` checks that every reference resolves.
ALTER TABLE entries DROP CONSTRAINT entries_transaction_id_fkey;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_transaction_id_fkey;

-- The same bounds, in one CHECK per table and without regular expressions: PostgreSQL reads and prepares every
-- CHECK of a table again for each statement that writes it, and the eleven of these three tables cost a sixth of a
-- posting's time. The formats they also checked (type, asset) come from rows that check them (assets) or from
-- the engine's templates.
ALTER TABLE transactions
    DROP CONSTRAINT transactions_type_check, DROP CONSTRAINT transactions_asset_check,
    DROP CONSTRAINT transactions_user_id_check, DROP CONSTRAINT transactions_amount_check,
    DROP CONSTRAINT transactions_description_check, DROP CONSTRAINT transactions_metadata_check,
    DROP CONSTRAINT transactions_api_key_name_check,
    ADD CONSTRAINT transaction_bounds CHECK (
        amount > 0 AND char_length(type) BETWEEN 1 AND 32 AND char_length(asset) BETWEEN 2 AND 16
        AND char_length(user_id) <= 64 AND char_length(description) <= 500 AND char_length(api_key_name) <= 64
        AND jsonb_typeof(metadata) = 'object');
ALTER TABLE entries
    DROP CONSTRAINT entries_leg_check, DROP CONSTRAINT entries_amount_check, DROP CONSTRAINT entries_balance_after_check,
    ADD CONSTRAINT entry_bounds CHECK (leg >= 1 AND amount <> 0 AND balance_after >= 0);
ALTER TABLE idempotency_keys
    DROP CONSTRAINT idempotency_keys_key_check, DROP CONSTRAINT idempotency_keys_endpoint_check,
    ADD CONSTRAINT idempotency_key_bounds CHECK (
        char_length(key) BETWEEN 1 AND 255 AND char_length(endpoint) <= 100
        AND (transaction_id IS NULL) <> (problem IS NULL));

-- The idempotency record, second edition: written once, in the statement that posts, with its outcome (the
-- transaction, or the problem), no longer claimed first and updated after. Status is not stored: it follows
-- from the outcome (201, or the problem code's status in the service's table).
ALTER TABLE idempotency_keys DROP COLUMN status;

-- What a request came to: the outcome, the transaction's own values that the request did not send (its id, when
-- it was created, the user's balance after it, its metadata as stored), or the problem. Batches collect them.
CREATE TYPE wallet_outcome AS (
    outcome        text,
    transaction_id bigint,
    created_at     timestamptz,
    balance_after  bigint,
    metadata       text,
    problem        jsonb
);

-- The posting engine and the item path of every request, single or in a batch: writes any balanced set of legs,
-- atomically, with the idempotency record of its key (an item without a key writes none), or writes nothing.
--
-- One statement does the work: user balances move by conditional updates (the balance check is the write), the
-- transaction, its entries and the key's record are inserted, and each system leg moves the stripe of this
-- connection, within its room. A gate in front of it holds everything back when the key was seen before, an
-- account is unknown, a stripe lacks room, or (postings with several user legs, whose accounts are locked in id
-- order first, so that no two postings deadlock) a user bound would break. Then the slow paths find out why: a
-- seen key replays its outcome (or the request is `reused` when it differs, or is this request's own earlier
-- run when the attempt id matches); a short stripe gathers room from the others, or the supply is exhausted; an
-- unknown user or asset, or a user bound found under the user accounts' locks, is the problem, recorded under
-- the key in the same transaction. User accounts are always locked before stripes.
--
-- Two requests with one key at once both pass the gate; the second fails on the record's primary key (23505)
-- when the first commits, which undoes it whole, and the service runs it again: then it replays.
-- outcome: 'created' | 'failed' (a recorded problem) | 'replayed' | 'reused' (problem: what was first sent).
-- A replay returns the stored transaction's values: with the same request, its other fields are the request's.
CREATE FUNCTION wallet_request(p_item wallet_item)
RETURNS wallet_outcome
LANGUAGE plpgsql AS $$
DECLARE
    p wallet_posting := p_item.posting;
    p_api_key_id bigint := p_item.api_key_id;
    p_api_key_name text := p_item.api_key_name;
    p_attempt_id uuid := p_item.attempt_id;
    v_stripe int := pg_backend_pid() % wallet_stripe_count();
    v_legs int := coalesce(cardinality(p.accounts), 0);
    v_user_legs int := 0;
    v_bounded boolean := true;  -- with one user leg the UPDATE decides; with several, the locked read above
    v_posted record;
    v_leg record;
    v_stored idempotency_keys;
    v_problem jsonb;
    v_result wallet_outcome;
BEGIN
    -- The legs balance per asset, name distinct accounts, and none is 0 (checked without a query for two legs).
    IF v_legs < 2 OR v_legs <> coalesce(cardinality(p.assets), 0) OR v_legs <> coalesce(cardinality(p.amounts), 0)
       OR 0 = ANY (p.amounts) OR array_position(p.amounts, NULL) IS NOT NULL
       OR (CASE WHEN v_legs = 2 THEN p.assets[1] <> p.assets[2] OR p.amounts[1] + p.amounts[2] <> 0
                                     OR p.accounts[1] = p.accounts[2]
                ELSE EXISTS (SELECT FROM unnest(p.assets, p.amounts) AS l (asset, amount)
                              GROUP BY l.asset HAVING sum(l.amount) <> 0)
                     OR (SELECT count(DISTINCT (l.name, l.asset)) FROM unnest(p.accounts, p.assets) AS l (name, asset))
                        <> v_legs END) THEN
        RAISE EXCEPTION 'unbalanced posting: % % %', p.accounts, p.assets, p.amounts USING ERRCODE = 'WL900';
    END IF;
    FOR i IN 1..v_legs LOOP
        v_user_legs := v_user_legs + (p.accounts[i] LIKE 'user:%')::int;
    END LOOP;
    IF v_user_legs > 1 THEN  -- lock the user accounts in id order, and see whether every bound holds under the locks
        SELECT coalesce(bool_and(locked.balance + locked.amount BETWEEN 0 AND wallet_balance_max()), true)
          INTO v_bounded
          FROM (SELECT a.balance, l.amount
                  FROM accounts a JOIN unnest(p.accounts, p.assets, p.amounts) AS l (name, asset, amount)
                                  ON a.name = l.name AND a.asset = l.asset
                 WHERE a.kind = 'user' ORDER BY a.id FOR NO KEY UPDATE OF a) locked;
    END IF;

    FOR attempt IN 1..3 LOOP
        WITH legs AS (
            SELECT l.ord, l.amount, a.id, a.kind,
                   CASE WHEN a.kind = 'system' THEN (SELECT s.room FROM account_stripes s
                                                      WHERE s.account_id = a.id AND s.stripe = v_stripe) END AS room
              FROM unnest(p.accounts, p.assets, p.amounts) WITH ORDINALITY AS l (name, asset, amount, ord)
              JOIN accounts a ON a.name = l.name AND a.asset = l.asset
        ), gate AS (
            SELECT EXISTS (SELECT FROM idempotency_keys k WHERE k.api_key_id = p_api_key_id AND k.key = p_item.key)
                       AS seen,
                   (SELECT count(*) FROM legs) = v_legs AS known,
                   NOT EXISTS (SELECT FROM legs l WHERE l.kind = 'system' AND l.room + l.amount < 0) AS roomy
        ), moved AS (
            UPDATE accounts a SET balance = a.balance + l.amount
              FROM legs l, gate g
             WHERE a.id = l.id AND l.kind = 'user' AND NOT g.seen AND g.known AND g.roomy AND v_bounded
               AND a.balance + l.amount BETWEEN 0 AND wallet_balance_max()
            RETURNING a.id, a.balance
        ), posted AS (
            INSERT INTO transactions (type, asset, user_id, amount, description, metadata, api_key_name)
            SELECT p.type, p.asset, p.user_id, p.amount, p.description, coalesce(p.metadata, '{}'), p_api_key_name
              FROM gate g
             WHERE NOT g.seen AND g.known AND g.roomy AND (SELECT count(*) FROM moved) = v_user_legs
            RETURNING transactions.id, transactions.created_at, transactions.metadata
        ), striped AS (
            UPDATE account_stripes s SET balance = s.balance + l.amount, room = s.room + l.amount
              FROM legs l, posted
             WHERE s.account_id = l.id AND s.stripe = v_stripe AND l.kind = 'system' AND s.room + l.amount >= 0
            RETURNING s.account_id
        ), written AS (
            INSERT INTO entries (transaction_id, leg, account_id, amount, balance_after)
            SELECT posted.id, l.ord, l.id, l.amount, m.balance
              FROM posted CROSS JOIN legs l LEFT JOIN moved m ON m.id = l.id
        ), keyed AS (
            INSERT INTO idempotency_keys (api_key_id, key, endpoint, request, transaction_id, attempt_id)
            SELECT p_api_key_id, p_item.key, p_item.endpoint, p_item.request, posted.id, p_attempt_id
              FROM posted WHERE p_item.key IS NOT NULL
        )
        SELECT posted.id, posted.created_at, posted.metadata::text AS metadata,
               (SELECT m.balance FROM moved m JOIN legs l ON l.id = m.id
                 WHERE p.accounts[l.ord] = 'user:' || p.user_id) AS balance_after,
               (SELECT count(*) FROM striped) AS striped, g.seen, g.known, g.roomy
          INTO v_posted
          FROM gate g LEFT JOIN posted ON true;

        IF v_posted.id IS NOT NULL THEN
            IF v_posted.striped <> v_legs - v_user_legs THEN  -- a stripe lost its room between the read and the lock
                RAISE EXCEPTION 'stripe room taken concurrently' USING ERRCODE = '40001';
            END IF;
            RETURN ROW('created', v_posted.id, v_posted.created_at, v_posted.balance_after, v_posted.metadata,
                       NULL)::wallet_outcome;
        ELSIF v_posted.seen THEN
            EXIT;
        ELSIF v_posted.known AND NOT v_posted.roomy THEN  -- a stripe is short: gather room from the others, or refuse
            FOR v_leg IN
                SELECT a.id, a.name, a.asset, l.amount
                  FROM unnest(p.accounts, p.assets, p.amounts) AS l (name, asset, amount)
                  JOIN accounts a ON a.name = l.name AND a.asset = l.asset
                 WHERE a.kind = 'system' AND l.amount < 0 ORDER BY a.id
            LOOP
                IF NOT wallet_stripe_gather(v_leg.id, v_stripe, -v_leg.amount) THEN
                    v_problem := wallet_problem('supply_limit_exceeded',
                        format('Taking %s %s from %s would pass its floor of %s: the supply of %s is capped.',
                               -v_leg.amount, v_leg.asset, v_leg.name, wallet_system_floor(v_leg.name), v_leg.asset));
                    EXIT;
                END IF;
            END LOOP;
        ELSE  -- an unknown user or asset, or a user bound, under the lock; NULL: all is there now, post again
            v_problem := wallet_refusal(p);
        END IF;
        IF v_problem IS NOT NULL THEN
            IF p_item.key IS NOT NULL THEN
                INSERT INTO idempotency_keys (api_key_id, key, endpoint, request, problem, attempt_id)
                VALUES (p_api_key_id, p_item.key, p_item.endpoint, p_item.request, v_problem, p_attempt_id);
            END IF;
            RETURN ROW('failed', NULL, NULL, NULL, NULL, v_problem)::wallet_outcome;
        END IF;
        IF attempt = 3 THEN
            RAISE EXCEPTION 'posting did not settle after 3 attempts' USING ERRCODE = '40001';
        END IF;
    END LOOP;

    SELECT * INTO STRICT v_stored FROM idempotency_keys k WHERE k.api_key_id = p_api_key_id AND k.key = p_item.key;
    IF v_stored.attempt_id = p_attempt_id OR (v_stored.endpoint = p_item.endpoint
                                              AND v_stored.request = p_item.request) THEN
        SELECT CASE WHEN v_stored.attempt_id IS DISTINCT FROM p_attempt_id THEN 'replayed'
                    WHEN v_stored.problem IS NULL THEN 'created' ELSE 'failed' END,
               t.id, t.created_at, t.balance_after, t.metadata, v_stored.problem
          INTO v_result
          FROM (SELECT 1) one LEFT JOIN wallet_transactions(ARRAY[v_stored.transaction_id]) t ON true;
    ELSE
        v_result.outcome := 'reused';
        v_result.problem := jsonb_build_object('endpoint', v_stored.endpoint, 'request', v_stored.request);
    END IF;
    RETURN v_result;
END
$$;

-- Many requests in one transaction: each item goes through wallet_request(), as it would alone. The user
-- accounts of every item are locked first, in id order, so batches cannot deadlock whatever order their items
-- come in. A later item with the key of an earlier one replays it (or is `reused`), as a second request would
-- (POST /v1/batch refuses such a batch; requests the service coalesces may share a key). With p_atomic, any item that does not end in 201 undoes the whole batch:
-- the items it would have created report 'aborted', the failing ones their problem as 'rejected' (not recorded,
-- so a corrected batch can use the keys again).
CREATE FUNCTION wallet_batch(p_atomic boolean, p_items wallet_item[]) RETURNS SETOF wallet_outcome
LANGUAGE plpgsql AS $$
DECLARE
    v_results wallet_outcome[] := ARRAY[]::wallet_outcome[];
    v_result wallet_outcome;
    v_failed boolean := false;
BEGIN
    PERFORM 1 FROM accounts a
      JOIN (SELECT DISTINCT l.name, l.asset FROM unnest(p_items) i
             CROSS JOIN LATERAL unnest((i.posting).accounts, (i.posting).assets) AS l (name, asset)
             WHERE l.name LIKE 'user:%') w ON a.name = w.name AND a.asset = w.asset
     ORDER BY a.id FOR NO KEY UPDATE OF a;
    IF NOT p_atomic THEN
        FOR i IN 1..cardinality(p_items) LOOP
            RETURN NEXT wallet_request(p_items[i]);
        END LOOP;
        RETURN;
    END IF;
    BEGIN  -- a subtransaction, to undo the atomic batch whole and still answer for every item
        FOR i IN 1..cardinality(p_items) LOOP
            v_result := wallet_request(p_items[i]);
            v_results := v_results || v_result;
            v_failed := v_failed OR v_result.transaction_id IS NULL;
        END LOOP;
        IF v_failed THEN
            RAISE EXCEPTION 'atomic batch aborted' USING ERRCODE = 'WL424';
        END IF;
    EXCEPTION WHEN SQLSTATE 'WL424' THEN
        -- Everything the block wrote is undone; the outcomes gathered in the variable remain.
        FOR i IN 1..cardinality(v_results) LOOP
            IF v_results[i].outcome = 'created' THEN
                v_results[i] := ROW('aborted', NULL, NULL, NULL, NULL, wallet_problem('batch_aborted',
                                    'Not written: another item of this atomic batch failed.'))::wallet_outcome;
            ELSIF v_results[i].outcome = 'failed' THEN
                v_results[i].outcome := 'rejected';  -- its failure was not recorded either
            END IF;
        END LOOP;
    END;
    RETURN QUERY SELECT * FROM unnest(v_results);
END
$$;

DROP FUNCTION wallet_batch(uuid, bigint, text, boolean, jsonb);
DROP FUNCTION wallet_batch_set_based(bigint, text, boolean, jsonb);
DROP FUNCTION wallet_request(uuid, bigint, text, text, text, jsonb, text, text, text, bigint, text[], bigint[], text, jsonb);
DROP FUNCTION wallet_post(text, text, text, bigint, text[], bigint[], text, jsonb, text);
DROP FUNCTION wallet_bound_error(text, text, numeric, bigint);
DROP FUNCTION wallet_error_status(text);

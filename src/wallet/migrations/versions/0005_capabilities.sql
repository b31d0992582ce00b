-- Capabilities I (spec/API.md, v1.1): holds, refunds and reversals, purchases with rewards (several assets in one
-- transaction), adjustments, frozen users, and balances as they were at an instant.

-- Frozen users. A freeze writes the user's status and a flag on every account of the user, in one transaction
-- that locks those accounts: a debit in flight holds its account's lock, so the freeze waits for it, and every
-- debit after the freeze commits sees the flag in its own conditional update.
ALTER TABLE users
    ADD COLUMN status text NOT NULL DEFAULT 'active',
    ADD COLUMN frozen_reason text,
    ADD COLUMN frozen_at timestamptz,  -- taken under the accounts' locks: every debit of the user is before it
    ADD CONSTRAINT user_status CHECK (
        status = 'active' AND frozen_reason IS NULL AND frozen_at IS NULL
        OR status = 'frozen' AND char_length(frozen_reason) BETWEEN 1 AND 500 AND frozen_at IS NOT NULL);

-- Held: the sum of the account's holds in status `held` (a hold reserves, it moves no money), kept under the
-- account's lock with every hold created, captured, voided or expired; available = balance - held, never below
-- 0, checked by every debit in its own conditional update. A hold past its expiry still counts here until it is
-- marked expired; a debit refused for it marks the account's due holds expired and looks again, and readers
-- subtract them, so an expired hold stops counting at once.
ALTER TABLE accounts ADD COLUMN held bigint NOT NULL DEFAULT 0, ADD COLUMN frozen boolean NOT NULL DEFAULT false;
ALTER TABLE accounts
    DROP CONSTRAINT account_kinds,
    ADD CONSTRAINT account_kinds CHECK (
        kind = 'user' AND user_id IS NOT NULL AND name = 'user:' || user_id AND balance_min IS NULL
            AND balance BETWEEN 0 AND 1000000000000000000 AND held BETWEEN 0 AND balance
        OR kind = 'system' AND user_id IS NULL AND name ~ '^system:[a-z_]{1,32}$' AND balance_min IS NOT NULL
            AND held = 0 AND NOT frozen);

CREATE TABLE holds (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      bigint NOT NULL,
    user_id         text NOT NULL,
    asset           text NOT NULL,
    amount          bigint NOT NULL,
    status          text NOT NULL DEFAULT 'held',
    captured_amount bigint,
    expires_at      timestamptz NOT NULL,
    transaction_id  bigint,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    resolved_at     timestamptz,
    description     text,
    metadata        jsonb NOT NULL DEFAULT '{}',
    api_key_name    text NOT NULL,
    -- A hold is resolved (captured, voided, expired) at most once, and says how.
    CONSTRAINT hold_states CHECK (
        amount > 0 AND char_length(description) <= 500 AND jsonb_typeof(metadata) = 'object'
        AND (status = 'held' AND resolved_at IS NULL AND captured_amount IS NULL AND transaction_id IS NULL
             OR status = 'captured' AND resolved_at IS NOT NULL AND captured_amount BETWEEN 1 AND amount
                AND transaction_id IS NOT NULL
             OR status IN ('voided', 'expired') AND resolved_at IS NOT NULL AND captured_amount IS NULL
                AND transaction_id IS NULL))
);
CREATE INDEX holds_active ON holds (account_id, expires_at) WHERE status = 'held';
CREATE INDEX holds_due ON holds (expires_at) WHERE status = 'held';
CREATE INDEX holds_by_user ON holds (user_id, id DESC);

-- A transaction says, from its creation on, what it refunds and which hold it captured.
ALTER TABLE transactions ADD COLUMN refund_of bigint, ADD COLUMN hold_id bigint;
CREATE INDEX transactions_by_refund_of ON transactions (refund_of) WHERE refund_of IS NOT NULL;

-- How much of a transaction has been refunded: the row the refunds of one transaction lock in turn, so that
-- together they never pass its amount, however many run at once. (Transactions themselves are never updated.)
CREATE TABLE refunded (
    transaction_id bigint PRIMARY KEY,
    amount         bigint NOT NULL CHECK (amount >= 0)
);

-- The idempotency record of a hold's creation or void names the hold.
ALTER TABLE idempotency_keys
    ADD COLUMN hold_id bigint,
    DROP CONSTRAINT idempotency_key_bounds,
    ADD CONSTRAINT idempotency_key_bounds CHECK (
        char_length(key) BETWEEN 1 AND 255 AND char_length(endpoint) <= 100
        AND num_nonnulls(transaction_id, hold_id, problem) = 1);

-- System legs say which stripe they moved, and balance_after is that stripe's balance after them: the stripes of
-- an account record running balances as user accounts do, so that a system balance as of an instant is the sum
-- of its stripes' last entries then. Every entry is in one of two indexes: user legs by account, system legs by
-- account and stripe.
ALTER TABLE entries
    ADD COLUMN stripe smallint,
    DROP CONSTRAINT entry_bounds,
    ADD CONSTRAINT entry_bounds CHECK (leg >= 1 AND amount <> 0 AND (stripe IS NOT NULL OR balance_after >= 0));

-- Entries of system accounts written before this revision go to stripe 0, with their running balances; each
-- account's stripes are brought together on stripe 0 first, so that stripe 0's last balance_after is its balance.
WITH totals AS (
    SELECT account_id, sum(balance)::bigint AS balance, sum(room)::bigint AS room FROM account_stripes GROUP BY account_id
)
UPDATE account_stripes s
   SET balance = CASE WHEN s.stripe = 0 THEN t.balance ELSE 0 END,
       room = t.room / wallet_stripe_count() + CASE WHEN s.stripe = 0 THEN t.room % wallet_stripe_count() ELSE 0 END
  FROM totals t
 WHERE t.account_id = s.account_id;
UPDATE entries e
   SET stripe = 0, balance_after = r.running
  FROM (SELECT x.transaction_id, x.leg,
               sum(x.amount) OVER (PARTITION BY x.account_id ORDER BY x.transaction_id, x.leg) AS running
          FROM entries x JOIN accounts a ON a.id = x.account_id
         WHERE a.kind = 'system') r
 WHERE e.transaction_id = r.transaction_id AND e.leg = r.leg;

DROP INDEX entries_by_account;
CREATE INDEX entries_by_account ON entries (account_id, transaction_id DESC) WHERE stripe IS NULL;
CREATE INDEX entries_by_stripe ON entries (account_id, stripe, transaction_id DESC) WHERE stripe IS NOT NULL;

-- wallet_stripe_gather() of 0004, corrected (found by the refunds' tests). The share each other stripe keeps is
-- meant to be (total - amount) / stripes rounded down, so that the gathering stripe keeps at least the amount; 0004 cast the numeric quotient to bigint,
-- which rounds to the nearest. With a total room below about 64 times the amount, as on a sink (revenue) that
-- refunds and adjustments take from since 0005, the gathering stripe was left with less than the amount (the
-- posting never found its room: 40001 after three attempts, a 503) or with negative room (stripe_bounds violated:
-- a 500). E.g. revenue's room 40 gathered for 7: share round(33 / 64) = 1, and the stripe kept 40 - 63 = -23.
CREATE OR REPLACE FUNCTION wallet_stripe_gather(p_account_id bigint, p_stripe int, p_amount bigint) RETURNS boolean
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
    v_share := div(v_total - p_amount, wallet_stripe_count())::bigint;  -- rounded down: the rest stays in p_stripe
    UPDATE account_stripes
       SET room = CASE WHEN stripe = p_stripe THEN (v_total - v_share * (wallet_stripe_count() - 1))::bigint
                       ELSE v_share END
     WHERE account_id = p_account_id;
    RETURN true;
END
$$;

-- The engine's types, second edition: a posting may capture a hold or refund a transaction (its legs then come
-- from the hold or the transaction, see wallet_request()), may be allowed on frozen accounts (refunds of
-- purchases, adjustments), and may release what its user legs held.
DROP FUNCTION wallet_batch(boolean, wallet_item[]);
DROP FUNCTION wallet_request(wallet_item);
DROP FUNCTION wallet_refusal(wallet_posting);
DROP TYPE wallet_item;
DROP TYPE wallet_posting;
DROP TYPE wallet_outcome;

CREATE TYPE wallet_posting AS (
    type         text,
    user_id      text,
    asset        text,
    amount       bigint,   -- NULL on a capture or a refund: all of the hold, all that is left to refund
    description  text,
    metadata     jsonb,
    accounts     text[],   -- empty on a capture or a refund: the hold or the original decides them
    assets       text[],
    amounts      bigint[],
    held_changes bigint[], -- per leg, what the account's `held` changes by (a capture releases its hold)
    hold_id      bigint,   -- a capture of this hold
    refund_of    bigint,   -- a refund of this transaction
    frozen_ok    boolean   -- debits allowed on frozen accounts (refunds of purchases, adjustments)
);

CREATE TYPE wallet_item AS (
    api_key_id   bigint,
    api_key_name text,
    attempt_id   uuid,
    key          text,
    endpoint     text,
    request      jsonb,
    posting      wallet_posting
);

-- What a request came to: the outcome, the values the request did not send (the transaction's id, creation time,
-- each leg's user balance after it, its stored metadata, and its legs when a template made them), or the problem.
CREATE TYPE wallet_outcome AS (
    outcome        text,
    transaction_id bigint,
    created_at     timestamptz,
    balances       bigint[],
    metadata       text,
    problem        jsonb,
    posting        wallet_posting
);

-- Stored transactions as rows, with their legs in order: each leg's account, asset, amount and, on a user's
-- account, the balance after it.
DROP FUNCTION wallet_transactions(bigint[]);
CREATE FUNCTION wallet_transactions(p_ids bigint[])
RETURNS TABLE (id bigint, type text, user_id text, asset text, amount bigint, description text, metadata text,
               accounts text[], assets text[], amounts bigint[], balances bigint[], refund_of bigint, hold_id bigint,
               created_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT t.id, t.type, t.user_id, t.asset, t.amount, t.description, t.metadata::text,
           array_agg(a.name ORDER BY e.leg), array_agg(a.asset ORDER BY e.leg), array_agg(e.amount ORDER BY e.leg),
           array_agg(CASE WHEN e.stripe IS NULL THEN e.balance_after END ORDER BY e.leg), t.refund_of, t.hold_id,
           t.created_at
      FROM transactions t
      JOIN entries e ON e.transaction_id = t.id
      JOIN accounts a ON a.id = e.account_id
     WHERE t.id = ANY (p_ids)
     GROUP BY t.id
$$;

-- Marks the due holds of an account expired and releases what they held. The caller holds the account's lock.
CREATE FUNCTION wallet_expire_account_holds(p_account_id bigint) RETURNS bigint
LANGUAGE sql AS $$
    WITH expired AS (
        UPDATE holds SET status = 'expired', resolved_at = expires_at
         WHERE account_id = p_account_id AND status = 'held' AND expires_at <= now()
        RETURNING amount
    ), released AS (
        UPDATE accounts SET held = held - (SELECT sum(amount) FROM expired)
         WHERE id = p_account_id AND EXISTS (SELECT FROM expired)
    )
    SELECT coalesce(sum(amount), 0)::bigint FROM expired
$$;

-- Why a posting that wrote nothing did not apply, looked at under the user accounts' locks: the first unknown
-- user (before an unknown asset: one precedence on every route), an unknown asset, a frozen account a debit would
-- take from, or a user bound (available funds, after marking the account's due holds expired, or the limit).
-- NULL when nothing stands in the way any more (a concurrent posting moved the balance meanwhile): post again.
CREATE FUNCTION wallet_refusal(p wallet_posting) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_leg record;
BEGIN
    FOR v_leg IN
        SELECT l.name, l.asset, l.amount, a.id, s.code IS NOT NULL AS asset_exists,
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
        SELECT a.id, a.name, a.asset, a.balance, a.held, a.frozen, l.amount, coalesce(l.held_change, 0) AS held_change
          FROM accounts a
          JOIN unnest(p.accounts, p.assets, p.amounts, p.held_changes) AS l (name, asset, amount, held_change)
            ON a.name = l.name AND a.asset = l.asset
         WHERE a.kind = 'user'
         ORDER BY a.id
           FOR NO KEY UPDATE OF a
    LOOP
        IF v_leg.amount < 0 AND v_leg.frozen AND NOT coalesce(p.frozen_ok, false) THEN
            RETURN wallet_problem('account_frozen', format('%s is frozen: nothing can be taken from it.', v_leg.name));
        ELSIF v_leg.amount < 0 AND v_leg.balance + v_leg.amount < v_leg.held + v_leg.held_change THEN
            IF v_leg.held > 0 AND wallet_expire_account_holds(v_leg.id) > 0 THEN
                RETURN NULL;  -- due holds were still counted: look again
            END IF;
            RETURN wallet_problem('insufficient_funds',
                format('Available balance of %s in %s is %s (balance %s, held %s), less than the %s requested.',
                       v_leg.name, v_leg.asset, v_leg.balance - v_leg.held - v_leg.held_change, v_leg.balance,
                       v_leg.held + v_leg.held_change, -v_leg.amount));
        ELSIF v_leg.balance + v_leg.amount > wallet_balance_max() THEN
            RETURN wallet_problem('balance_limit_exceeded',
                                  format('Balance of %s in %s is %s; adding %s would pass the limit of %s.',
                                         v_leg.name, v_leg.asset, v_leg.balance, v_leg.amount, wallet_balance_max()));
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- A failed request's outcome, recorded under its key (when it has one) in the caller's transaction.
-- A payload error found here (a capture above its hold) is not recorded: like every 422 validation_error, the
-- request can be corrected and sent again with the same key.
CREATE FUNCTION wallet_refuse(p_item wallet_item, p_problem jsonb) RETURNS wallet_outcome
LANGUAGE plpgsql AS $$
BEGIN
    IF p_item.key IS NOT NULL AND p_problem->>'code' <> 'validation_error' THEN
        INSERT INTO idempotency_keys (api_key_id, key, endpoint, request, problem, attempt_id)
        VALUES (p_item.api_key_id, p_item.key, p_item.endpoint, p_item.request, p_problem, p_item.attempt_id);
    END IF;
    RETURN ROW('failed', NULL, NULL, NULL, NULL, p_problem, NULL)::wallet_outcome;
END
$$;

-- The outcome a key recorded, for a request that comes again: a replay of it (or this request's own earlier run,
-- when the attempt id matches), or `reused` when the request differs. NULL when the key is new.
CREATE FUNCTION wallet_stored(p_item wallet_item) RETURNS wallet_outcome
LANGUAGE plpgsql AS $$
DECLARE
    v_stored idempotency_keys;
    v_result wallet_outcome;
BEGIN
    SELECT * INTO v_stored FROM idempotency_keys k WHERE k.api_key_id = p_item.api_key_id AND k.key = p_item.key;
    IF NOT FOUND THEN
        RETURN NULL;
    ELSIF v_stored.attempt_id = p_item.attempt_id OR (v_stored.endpoint = p_item.endpoint
                                                      AND v_stored.request = p_item.request) THEN
        SELECT CASE WHEN v_stored.attempt_id IS DISTINCT FROM p_item.attempt_id THEN 'replayed'
                    WHEN v_stored.problem IS NULL THEN 'created' ELSE 'failed' END,
               coalesce(t.id, v_stored.hold_id), t.created_at, t.balances, t.metadata, v_stored.problem,
               ROW(t.type, t.user_id, t.asset, t.amount, t.description, NULL, t.accounts, t.assets, t.amounts, NULL,
                   t.hold_id, t.refund_of, NULL)::wallet_posting
          INTO v_result
          FROM (SELECT 1) one LEFT JOIN wallet_transactions(ARRAY[v_stored.transaction_id]) t ON true;
    ELSE
        v_result.outcome := 'reused';
        v_result.problem := jsonb_build_object('endpoint', v_stored.endpoint, 'request', v_stored.request);
    END IF;
    RETURN v_result;
END
$$;

-- What a template made of a request: the posting with its legs, or the problem that stopped it.
CREATE TYPE wallet_template AS (posting wallet_posting, problem jsonb);

-- The legs of a capture, from its hold: the user pays the captured amount to revenue, and the whole hold is
-- released. Locks the user's account, then the hold (every path takes an account before its holds), and checks
-- the hold under its lock: captured, voided or expired (also past its expiry with no job having marked it yet),
-- or an amount above it, and nothing is written.
CREATE FUNCTION wallet_capture_posting(p_request wallet_posting) RETURNS wallet_template
LANGUAGE plpgsql AS $$
DECLARE
    p wallet_posting := p_request;
    problem jsonb;
    v_hold holds;
    v_account bigint;
BEGIN
    SELECT account_id INTO v_account FROM holds WHERE id = p.hold_id;
    IF NOT FOUND THEN
        problem := wallet_problem('hold_not_found', format('Hold %s does not exist.', wallet_hold_public_id(p.hold_id)));
        RETURN ROW(p, problem)::wallet_template;
    END IF;
    PERFORM 1 FROM accounts WHERE id = v_account FOR NO KEY UPDATE;
    SELECT * INTO v_hold FROM holds WHERE id = p.hold_id FOR UPDATE;
    IF v_hold.status <> 'held' THEN
        problem := wallet_problem('hold_not_active', format('Hold %s is %s already.',
                                                            wallet_hold_public_id(v_hold.id), v_hold.status));
    ELSIF v_hold.expires_at <= now() THEN
        problem := wallet_problem('hold_expired', format('Hold %s expired at %s.', wallet_hold_public_id(v_hold.id),
                                                         wallet_ts(v_hold.expires_at)));
    ELSIF p.amount > v_hold.amount THEN
        problem := wallet_problem('validation_error', format('Hold %s is of %s; %s cannot be captured from it.',
                                                             wallet_hold_public_id(v_hold.id), v_hold.amount, p.amount))
                   || jsonb_build_object('errors', jsonb_build_array(jsonb_build_object(
                          'loc', jsonb_build_array('body', 'amount'), 'msg', 'above the amount of the hold',
                          'type', 'capture_above_hold')));
    END IF;
    IF problem IS NOT NULL THEN
        RETURN ROW(p, problem)::wallet_template;
    END IF;
    p.type := 'purchase';
    p.user_id := v_hold.user_id;
    p.asset := v_hold.asset;
    p.amount := coalesce(p.amount, v_hold.amount);
    p.accounts := ARRAY['user:' || v_hold.user_id, 'system:revenue'];
    p.assets := ARRAY[v_hold.asset, v_hold.asset];
    p.amounts := ARRAY[-p.amount, p.amount];
    p.held_changes := ARRAY[-v_hold.amount, 0];
    RETURN ROW(p, NULL)::wallet_template;
END
$$;

-- The legs of a refund, from its original: each leg reversed in proportion to the amount refunded. Cumulative
-- rounding (what has been reversed of a leg after all refunds so far is its amount x refunded / original,
-- truncated) keeps every reversal within its leg whatever the split, and each asset's legs summing to 0. Locks the
-- original's user accounts (in id order), as every posting takes user accounts before what a template reads (a
-- capture takes the account before its hold; a batch locks its items' accounts first), then the original's counter
-- of refunds: refunds of one transaction go one after another. Purchases may be refunded
-- by a key with the purchase scope; top-ups (chargeback) and bonuses (clawback) only by an admin key.
CREATE FUNCTION wallet_refund_posting(p_request wallet_posting, p_api_key_id bigint) RETURNS wallet_template
LANGUAGE plpgsql AS $$
DECLARE
    p wallet_posting := p_request;
    problem jsonb;
    v_original record;
    v_done bigint;
BEGIN
    SELECT * INTO v_original FROM wallet_transactions(ARRAY[p.refund_of]);
    IF v_original.id IS NULL THEN
        problem := wallet_problem('transaction_not_found', format('Transaction %s does not exist.',
                                                                  wallet_public_id(p.refund_of)));
        RETURN ROW(p, problem)::wallet_template;
    ELSIF v_original.type NOT IN ('purchase', 'topup', 'bonus') THEN
        problem := wallet_problem('not_refundable', format('Transaction %s is a %s: only purchases, top-ups and bonuses'
                                                           ' can be refunded.', wallet_public_id(v_original.id),
                                                           v_original.type));
        RETURN ROW(p, problem)::wallet_template;
    ELSIF v_original.type <> 'purchase'
          AND NOT EXISTS (SELECT FROM api_keys WHERE id = p_api_key_id AND 'admin' = ANY (scopes)) THEN
        problem := wallet_problem('forbidden', format('Reversing a %s (transaction %s) takes a key with the admin scope.',
                                                      v_original.type, wallet_public_id(v_original.id)));
        RETURN ROW(p, problem)::wallet_template;
    END IF;
    PERFORM 1 FROM accounts a
      JOIN unnest(v_original.accounts, v_original.assets) AS l (name, asset) ON a.name = l.name AND a.asset = l.asset
     WHERE a.kind = 'user' ORDER BY a.id FOR NO KEY UPDATE OF a;
    INSERT INTO refunded (transaction_id, amount) VALUES (v_original.id, 0) ON CONFLICT DO NOTHING;
    SELECT amount INTO v_done FROM refunded WHERE transaction_id = v_original.id FOR UPDATE;
    IF v_done >= v_original.amount THEN
        problem := wallet_problem('refund_exceeds_original', format('Transaction %s of %s is refunded already.',
                                                                    wallet_public_id(v_original.id), v_original.amount));
        RETURN ROW(p, problem)::wallet_template;
    ELSIF p.amount > v_original.amount - v_done THEN
        problem := wallet_problem('refund_exceeds_original',
            format('Transaction %s of %s has %s left to refund; %s is more.', wallet_public_id(v_original.id),
                   v_original.amount, v_original.amount - v_done, p.amount));
        RETURN ROW(p, problem)::wallet_template;
    END IF;
    p.amount := coalesce(p.amount, v_original.amount - v_done);
    p.user_id := v_original.user_id;
    p.asset := v_original.asset;
    p.frozen_ok := v_original.type = 'purchase';  -- a refund of a purchase gives back; a reversal takes away
    SELECT array_agg(r.account ORDER BY r.leg), array_agg(r.asset ORDER BY r.leg), array_agg(r.amount ORDER BY r.leg)
      INTO p.accounts, p.assets, p.amounts
      FROM (SELECT l.leg, l.account, l.asset,
                   -(trunc(l.amount::numeric * (v_done + p.amount) / v_original.amount)
                     - trunc(l.amount::numeric * v_done / v_original.amount))::bigint AS amount
              FROM unnest(v_original.accounts, v_original.assets, v_original.amounts)
                   WITH ORDINALITY AS l (account, asset, amount, leg)) r
     WHERE r.amount <> 0;
    p.held_changes := NULL;
    RETURN ROW(p, NULL)::wallet_template;
END
$$;

-- The posting engine and the item path of every request, single or in a batch (0004's, with captures, refunds,
-- holds and frozen accounts). In order:
--   a capture or a refund first replays its key if it has been seen, then gets its legs from its template
--   (wallet_capture_posting, wallet_refund_posting), which locks what it reads;
--   one statement then writes everything, behind a gate: user balances move by conditional updates (available
--   funds for debits, not frozen unless the posting may, the limit for credits), then the stripes of the system
--   legs (within their room), then the transaction (its id taken after every lock, so that on every account and
--   every stripe ids follow the order in which postings applied), its entries with the balance each produced,
--   and the key's record;
--   a capture then marks its hold captured; a refund adds to its original's refunded amount.
-- When the statement writes nothing, the slow paths find out why (see 0004): a seen key replays; a short stripe
-- gathers room or the supply is exhausted; otherwise wallet_refusal() says what stands in the way, recorded
-- under the key.
CREATE FUNCTION wallet_request(p_item wallet_item)
RETURNS wallet_outcome
LANGUAGE plpgsql AS $$
DECLARE
    p wallet_posting := p_item.posting;
    p_api_key_id bigint := p_item.api_key_id;
    p_api_key_name text := p_item.api_key_name;
    p_attempt_id uuid := p_item.attempt_id;
    v_stripe int := pg_backend_pid() % wallet_stripe_count();
    v_legs int;
    v_user_legs int := 0;
    v_bounded boolean := true;  -- with one user leg the UPDATE decides; with several, the locked read below
    v_posted record;
    v_leg record;
    v_problem jsonb;
    v_result wallet_outcome;
    v_template wallet_template;
BEGIN
    IF (p.hold_id IS NOT NULL OR p.refund_of IS NOT NULL) AND coalesce(cardinality(p.accounts), 0) = 0 THEN
        v_result := wallet_stored(p_item);
        IF v_result.outcome IS NOT NULL THEN
            RETURN v_result;
        END IF;
        IF p.hold_id IS NOT NULL THEN
            v_template := wallet_capture_posting(p);
        ELSE
            v_template := wallet_refund_posting(p, p_api_key_id);
        END IF;
        p := v_template.posting;
        v_problem := v_template.problem;
        IF v_problem IS NOT NULL THEN
            RETURN wallet_refuse(p_item, v_problem);
        END IF;
    END IF;

    -- The legs balance per asset, name distinct accounts, and none is 0 (checked without a query for two legs).
    v_legs := coalesce(cardinality(p.accounts), 0);
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
        SELECT coalesce(bool_and(locked.ok), true) INTO v_bounded
          FROM (SELECT (l.amount >= 0 OR NOT a.frozen OR coalesce(p.frozen_ok, false))
                       AND a.balance + l.amount <= wallet_balance_max()
                       AND (l.amount >= 0 OR a.balance + l.amount >= a.held + coalesce(l.held_change, 0)) AS ok
                  FROM accounts a
                  JOIN unnest(p.accounts, p.assets, p.amounts, p.held_changes) AS l (name, asset, amount, held_change)
                    ON a.name = l.name AND a.asset = l.asset
                 WHERE a.kind = 'user' ORDER BY a.id FOR NO KEY UPDATE OF a) locked;
    END IF;

    FOR attempt IN 1..3 LOOP
        WITH legs AS (
            SELECT l.ord, l.amount, coalesce(l.held_change, 0) AS held_change, a.id, a.kind,
                   CASE WHEN a.kind = 'system' THEN (SELECT s.room FROM account_stripes s
                                                      WHERE s.account_id = a.id AND s.stripe = v_stripe) END AS room
              FROM unnest(p.accounts, p.assets, p.amounts, p.held_changes)
                   WITH ORDINALITY AS l (name, asset, amount, held_change, ord)
              JOIN accounts a ON a.name = l.name AND a.asset = l.asset
        ), gate AS (
            SELECT EXISTS (SELECT FROM idempotency_keys k WHERE k.api_key_id = p_api_key_id AND k.key = p_item.key)
                       AS seen,
                   (SELECT count(*) FROM legs) = v_legs AS known,
                   NOT EXISTS (SELECT FROM legs l WHERE l.kind = 'system' AND l.room + l.amount < 0) AS roomy
        ), moved AS (
            UPDATE accounts a SET balance = a.balance + l.amount, held = a.held + l.held_change
              FROM legs l, gate g
             WHERE a.id = l.id AND l.kind = 'user' AND NOT g.seen AND g.known AND g.roomy AND v_bounded
               AND a.balance + l.amount <= wallet_balance_max()
               AND (l.amount >= 0 OR a.balance + l.amount >= a.held + l.held_change)
               AND (l.amount >= 0 OR NOT a.frozen OR coalesce(p.frozen_ok, false))
            RETURNING a.id, a.balance
        ), striped AS (
            UPDATE account_stripes s SET balance = s.balance + l.amount, room = s.room + l.amount
              FROM legs l, gate g
             WHERE s.account_id = l.id AND s.stripe = v_stripe AND l.kind = 'system' AND s.room + l.amount >= 0
               AND NOT g.seen AND g.known AND g.roomy AND (SELECT count(*) FROM moved) = v_user_legs
            RETURNING s.account_id, s.balance
        ), posted AS (
            INSERT INTO transactions (type, asset, user_id, amount, description, metadata, api_key_name, refund_of,
                                      hold_id)
            SELECT p.type, p.asset, p.user_id, p.amount, p.description, coalesce(p.metadata, '{}'), p_api_key_name,
                   p.refund_of, p.hold_id
             WHERE (SELECT count(*) FROM striped) = v_legs - v_user_legs
               AND (SELECT count(*) FROM moved) = v_user_legs AND (SELECT g.known FROM gate g)
            RETURNING transactions.id, transactions.created_at, transactions.metadata
        ), written AS (
            INSERT INTO entries (transaction_id, leg, account_id, amount, balance_after, stripe)
            SELECT posted.id, l.ord, l.id, l.amount, coalesce(m.balance, s.balance),
                   CASE WHEN l.kind = 'system' THEN v_stripe END
              FROM posted CROSS JOIN legs l
              LEFT JOIN moved m ON m.id = l.id
              LEFT JOIN striped s ON s.account_id = l.id
        ), keyed AS (
            INSERT INTO idempotency_keys (api_key_id, key, endpoint, request, transaction_id, attempt_id)
            SELECT p_api_key_id, p_item.key, p_item.endpoint, p_item.request, posted.id, p_attempt_id
              FROM posted WHERE p_item.key IS NOT NULL
        )
        SELECT posted.id, posted.created_at, posted.metadata::text AS metadata,
               (SELECT array_agg(m.balance ORDER BY l.ord) FROM legs l LEFT JOIN moved m ON m.id = l.id) AS balances,
               (SELECT count(*) FROM moved) AS moved, (SELECT count(*) FROM striped) AS striped,
               g.seen, g.known, g.roomy
          INTO v_posted
          FROM gate g LEFT JOIN posted ON true;

        IF v_posted.id IS NOT NULL THEN
            IF p.hold_id IS NOT NULL THEN
                UPDATE holds SET status = 'captured', captured_amount = p.amount, transaction_id = v_posted.id,
                                 resolved_at = v_posted.created_at
                 WHERE id = p.hold_id;
            ELSIF p.refund_of IS NOT NULL THEN
                UPDATE refunded SET amount = amount + p.amount WHERE transaction_id = p.refund_of;
            END IF;
            RETURN ROW('created', v_posted.id, v_posted.created_at, v_posted.balances, v_posted.metadata, NULL,
                       p)::wallet_outcome;
        ELSIF v_posted.moved > 0 THEN  -- a stripe lost its room between the read and the lock
            RAISE EXCEPTION 'stripe room taken concurrently' USING ERRCODE = '40001';
        ELSIF v_posted.seen THEN
            RETURN wallet_stored(p_item);
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
        ELSE  -- an unknown user or asset, a frozen account, or a user bound; NULL: all is there now, post again
            v_problem := wallet_refusal(p);
        END IF;
        IF v_problem IS NOT NULL THEN
            RETURN wallet_refuse(p_item, v_problem);
        END IF;
    END LOOP;
    RAISE EXCEPTION 'posting did not settle after 3 attempts' USING ERRCODE = '40001';
END
$$;

-- Batches, as 0004's, over the new item path; captures and refunds may be items too.
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
        FOR i IN 1..cardinality(v_results) LOOP
            IF v_results[i].outcome = 'created' THEN
                v_results[i] := ROW('aborted', NULL, NULL, NULL, NULL, wallet_problem('batch_aborted',
                                    'Not written: another item of this atomic batch failed.'), NULL)::wallet_outcome;
            ELSIF v_results[i].outcome = 'failed' THEN
                v_results[i].outcome := 'rejected';  -- its failure was not recorded either
            END IF;
        END LOOP;
    END;
    RETURN QUERY SELECT * FROM unnest(v_results);
END
$$;

CREATE FUNCTION wallet_hold_public_id(p_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 'hold_' || lpad(to_hex(p_id), 16, '0') $$;

-- What a hold's creation or void came to: the outcome (as wallet_outcome's), the hold, or the problem.
CREATE TYPE wallet_hold_outcome AS (outcome text, hold_id bigint, problem jsonb);

-- The outcome a key recorded for a hold's creation or void (see wallet_stored()).
CREATE FUNCTION wallet_hold_stored(p_item wallet_item) RETURNS wallet_hold_outcome
LANGUAGE sql AS $$
    SELECT CASE WHEN k.attempt_id = p_item.attempt_id THEN CASE WHEN k.problem IS NULL THEN 'created' ELSE 'failed' END
                WHEN same THEN 'replayed'
                ELSE 'reused' END,
           CASE WHEN same THEN k.hold_id END,
           CASE WHEN same THEN k.problem ELSE jsonb_build_object('endpoint', k.endpoint, 'request', k.request) END
      FROM idempotency_keys k
     CROSS JOIN LATERAL (SELECT k.attempt_id = p_item.attempt_id
                                OR (k.endpoint = p_item.endpoint AND k.request = p_item.request) AS same) c
     WHERE k.api_key_id = p_item.api_key_id AND k.key = p_item.key
$$;

CREATE FUNCTION wallet_hold_refuse(p_item wallet_item, p_problem jsonb) RETURNS wallet_hold_outcome
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wallet_refuse(p_item, p_problem);
    RETURN ROW('failed', NULL, p_problem)::wallet_hold_outcome;
END
$$;

-- A hold: reserves amount of the user's available balance until expires_at, in one conditional update of the
-- account (available funds, not frozen), with the hold and the key's record. No money moves.
CREATE FUNCTION wallet_hold(p_item wallet_item, p_expires_at timestamptz) RETURNS wallet_hold_outcome
LANGUAGE plpgsql AS $$
DECLARE
    p wallet_posting := p_item.posting;
    v_account accounts;
    v_hold_id bigint;
    v_problem jsonb;
    v_stored wallet_hold_outcome := wallet_hold_stored(p_item);
BEGIN
    IF v_stored.outcome IS NOT NULL THEN
        RETURN v_stored;
    END IF;
    FOR attempt IN 1..3 LOOP
        UPDATE accounts a SET held = a.held + p.amount
         WHERE a.name = 'user:' || p.user_id AND a.asset = p.asset AND NOT a.frozen
           AND a.balance - a.held >= p.amount
        RETURNING * INTO v_account;
        IF FOUND THEN
            INSERT INTO holds (account_id, user_id, asset, amount, expires_at, description, metadata, api_key_name)
            VALUES (v_account.id, p.user_id, p.asset, p.amount, p_expires_at, p.description,
                    coalesce(p.metadata, '{}'), p_item.api_key_name)
            RETURNING id INTO v_hold_id;
            INSERT INTO idempotency_keys (api_key_id, key, endpoint, request, hold_id, attempt_id)
            VALUES (p_item.api_key_id, p_item.key, p_item.endpoint, p_item.request, v_hold_id, p_item.attempt_id);
            RETURN ROW('created', v_hold_id, NULL)::wallet_hold_outcome;
        END IF;
        v_problem := wallet_refusal(ROW('hold', p.user_id, p.asset, p.amount, NULL, NULL,
                                        ARRAY['user:' || p.user_id], ARRAY[p.asset], ARRAY[-p.amount], NULL, NULL,
                                        NULL, false)::wallet_posting);
        IF v_problem IS NOT NULL THEN
            RETURN wallet_hold_refuse(p_item, v_problem);
        END IF;
    END LOOP;
    RAISE EXCEPTION 'hold did not settle after 3 attempts' USING ERRCODE = '40001';
END
$$;

-- A void: releases a hold that is still held (not captured, voided or expired, nor past its expiry).
CREATE FUNCTION wallet_hold_void(p_item wallet_item, p_hold_id bigint) RETURNS wallet_hold_outcome
LANGUAGE plpgsql AS $$
DECLARE
    v_hold holds;
    v_account bigint;
    v_stored wallet_hold_outcome := wallet_hold_stored(p_item);
BEGIN
    IF v_stored.outcome IS NOT NULL THEN
        RETURN v_stored;
    END IF;
    SELECT account_id INTO v_account FROM holds WHERE id = p_hold_id;
    IF NOT FOUND THEN
        RETURN wallet_hold_refuse(p_item, wallet_problem('hold_not_found',
                                  format('Hold %s does not exist.', wallet_hold_public_id(p_hold_id))));
    END IF;
    PERFORM 1 FROM accounts WHERE id = v_account FOR NO KEY UPDATE;
    SELECT * INTO v_hold FROM holds WHERE id = p_hold_id FOR UPDATE;
    IF v_hold.status <> 'held' OR v_hold.expires_at <= now() THEN
        RETURN wallet_hold_refuse(p_item, wallet_problem('hold_not_active', format('Hold %s is %s already.',
                                  wallet_hold_public_id(p_hold_id),
                                  CASE WHEN v_hold.status = 'held' THEN 'expired' ELSE v_hold.status END)));
    END IF;
    UPDATE holds SET status = 'voided', resolved_at = clock_timestamp() WHERE id = p_hold_id;
    UPDATE accounts SET held = held - v_hold.amount WHERE id = v_account;
    INSERT INTO idempotency_keys (api_key_id, key, endpoint, request, hold_id, attempt_id)
    VALUES (p_item.api_key_id, p_item.key, p_item.endpoint, p_item.request, p_hold_id, p_item.attempt_id);
    RETURN ROW('created', p_hold_id, NULL)::wallet_hold_outcome;
END
$$;

-- The expiry job: marks up to p_limit due holds expired and releases what they held, account by account in id
-- order (every path takes an account before its holds); returns how many it marked.
CREATE FUNCTION wallet_expire_holds(p_limit int) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_marked bigint := 0;
    v_account bigint;
BEGIN
    FOR v_account IN
        SELECT DISTINCT account_id FROM (SELECT account_id FROM holds WHERE status = 'held' AND expires_at <= now()
                                          ORDER BY expires_at LIMIT p_limit) due ORDER BY account_id
    LOOP
        PERFORM 1 FROM accounts WHERE id = v_account FOR NO KEY UPDATE;
        v_marked := v_marked + (SELECT count(*) FROM holds WHERE account_id = v_account AND status = 'held'
                                                            AND expires_at <= now());
        PERFORM wallet_expire_account_holds(v_account);
    END LOOP;
    RETURN v_marked;
END
$$;

-- The id of the newest transaction created at or before p_at, by bisection over the primary key: ids follow
-- creation time but for postings that ran side by side; wallet_balance_as_of() corrects for those.
CREATE FUNCTION wallet_id_at(p_at timestamptz) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_low bigint;
    v_high bigint;
    v_middle bigint;
    v_probe record;
BEGIN
    SELECT min(id), max(id) INTO v_low, v_high FROM transactions;
    IF v_low IS NULL OR (SELECT created_at FROM transactions WHERE id = v_low) > p_at THEN
        RETURN 0;
    END IF;
    WHILE v_low < v_high LOOP  -- invariant: created_at(v_low) <= p_at
        v_middle := v_low + (v_high - v_low + 1) / 2;
        SELECT id, created_at INTO v_probe FROM transactions WHERE id >= v_middle ORDER BY id LIMIT 1;
        IF v_probe.created_at <= p_at THEN
            v_low := v_probe.id;
        ELSE
            v_high := v_middle - 1;
        END IF;
    END LOOP;
    RETURN v_low;
END
$$;

-- The last entry at or before p_before (and after p_after) of one series of balances: a user account's entries
-- (p_stripe NULL), or one stripe's of a system account. Each branch reads its own index (entries_by_account,
-- entries_by_stripe), newest first, one index entry and one transaction: O(log n).
--
-- The account and the stripe are matched with `= ANY` of a one-element array, and stay in the sort key: an equality
-- to a plain value would let the planner drop them from it, and then the primary key of entries (transaction_id,
-- leg) gives the order too, walked from p_before with the account as a filter. The planner costs that walk as a few
-- rows; it is every entry of the ledger on the way to the account's, all of them for an account with none (as of
-- the middle of 20,000 transactions, 2,100 buffers to read three balances instead of about 150, 55,000 and 160 ms
-- for one system account). Only the series' own index gives this order.
CREATE FUNCTION wallet_series_entry(p_account_id bigint, p_stripe smallint, p_before bigint, p_after bigint)
RETURNS TABLE (transaction_id bigint, balance_after bigint, created_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT e.transaction_id, e.balance_after, t.created_at
      FROM ((SELECT x.transaction_id, x.balance_after FROM entries x
              WHERE p_stripe IS NULL AND x.account_id = ANY (ARRAY[p_account_id]) AND x.stripe IS NULL
                AND x.transaction_id <= coalesce(p_before, 9223372036854775807)
                AND x.transaction_id > coalesce(p_after, 0)
              ORDER BY x.account_id, x.transaction_id DESC LIMIT 1)
            UNION ALL
            (SELECT x.transaction_id, x.balance_after FROM entries x
              WHERE p_stripe IS NOT NULL AND x.account_id = ANY (ARRAY[p_account_id]) AND x.stripe IS NOT NULL
                AND x.stripe = ANY (ARRAY[p_stripe]) AND x.transaction_id <= coalesce(p_before, 9223372036854775807)
                AND x.transaction_id > coalesce(p_after, 0)
              ORDER BY x.account_id, x.stripe, x.transaction_id DESC LIMIT 1)) e
      JOIN transactions t ON t.id = e.transaction_id
$$;

-- The first entry after p_after of one series (see wallet_series_entry(): the same indexes, read oldest first).
CREATE FUNCTION wallet_series_next(p_account_id bigint, p_stripe smallint, p_after bigint)
RETURNS TABLE (transaction_id bigint, balance_after bigint, created_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT e.transaction_id, e.balance_after, t.created_at
      FROM ((SELECT x.transaction_id, x.balance_after FROM entries x
              WHERE p_stripe IS NULL AND x.account_id = ANY (ARRAY[p_account_id]) AND x.stripe IS NULL
                AND x.transaction_id > p_after
              ORDER BY x.account_id DESC, x.transaction_id LIMIT 1)
            UNION ALL
            (SELECT x.transaction_id, x.balance_after FROM entries x
              WHERE p_stripe IS NOT NULL AND x.account_id = ANY (ARRAY[p_account_id]) AND x.stripe IS NOT NULL
                AND x.stripe = ANY (ARRAY[p_stripe]) AND x.transaction_id > p_after
              ORDER BY x.account_id DESC, x.stripe DESC, x.transaction_id LIMIT 1)) e
      JOIN transactions t ON t.id = e.transaction_id
$$;

-- An account's balance as it was at p_at: the balance after its last entry at or before then, in O(log n). On one
-- account (or one stripe of a system account) ids follow the order in which postings applied, and so do their
-- creation times; from the entry at p_around (wallet_id_at(p_at)), a few steps back or forward find the exact
-- last one. A system account's balance is the sum of its stripes'.
CREATE FUNCTION wallet_balance_as_of(p_account_id bigint, p_at timestamptz, p_around bigint) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_total bigint := 0;
    v_stripe smallint;
    v_entry record;
    v_next record;
BEGIN
    FOR v_stripe IN SELECT NULL::smallint FROM accounts WHERE id = p_account_id AND kind = 'user'
                    UNION ALL SELECT stripe FROM account_stripes WHERE account_id = p_account_id
    LOOP
        SELECT * INTO v_entry FROM wallet_series_entry(p_account_id, v_stripe, p_around, NULL);
        WHILE v_entry.transaction_id IS NOT NULL AND v_entry.created_at > p_at LOOP
            SELECT * INTO v_entry FROM wallet_series_entry(p_account_id, v_stripe, v_entry.transaction_id - 1, NULL);
        END LOOP;
        LOOP
            SELECT * INTO v_next FROM wallet_series_next(p_account_id, v_stripe, coalesce(v_entry.transaction_id, 0));
            EXIT WHEN v_next.transaction_id IS NULL OR v_next.created_at > p_at;
            v_entry := v_next;
        END LOOP;
        v_total := v_total + coalesce(v_entry.balance_after, 0);
    END LOOP;
    RETURN v_total;
END
$$;

-- The held amount readers see: holds past their expiry stop counting at once, marked expired or not.
CREATE FUNCTION wallet_held(p_account_id bigint, p_held bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT p_held - CASE WHEN p_held = 0 THEN 0 ELSE
           (SELECT coalesce(sum(amount), 0) FROM holds
             WHERE account_id = p_account_id AND status = 'held' AND expires_at <= now())::bigint END
$$;

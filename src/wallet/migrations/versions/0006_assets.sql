-- Asset policies (spec/API.md, v1.1 "Asset policies"): assets created and changed at runtime, with their system
-- accounts; user accounts opened when a posting first needs them, not one per user per asset up front; transfers
-- between users of transferable assets, under a new API key scope, `transfer`; expiring credits, kept as lots.

-- Policies of an asset. `transferable`: whether its credits may move from user to user (the seeded assets keep the
-- closed loop: false). `expiry_days`: how long a credit lasts, NULL for ever. `lots`: whether its user accounts keep
-- their balance as lots (set with the asset's first expiry_days and never cleared: lots that formed under a policy
-- keep their dates when it changes; see wallet_put_asset()).
ALTER TABLE assets
    ADD COLUMN transferable boolean NOT NULL DEFAULT false,
    ADD COLUMN expiry_days integer,
    ADD COLUMN lots boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT asset_expiry_days CHECK (expiry_days BETWEEN 1 AND 3650),
    ADD CONSTRAINT asset_lots CHECK (lots OR expiry_days IS NULL);

-- Expiring credits. A user account of an asset with lots (accounts.lots, read by the engine under the account's
-- lock) keeps its balance as lots: each credit forms one that expires `expiry_days` after it ('infinity' when the
-- asset has no expiry now), each debit takes what it needs from the lots that expire first (lot_uses records what
-- it took, so that a refund of it can give back to the same lots), and the lots' amounts always sum to the balance
-- (`wallet verify` checks it). A lot that expires with an amount left is moved to `system:expired` by a
-- transaction of type `expiry` (wallet_expire_lots(), run every second by the service).
ALTER TABLE accounts ADD COLUMN lots boolean NOT NULL DEFAULT false;

CREATE TABLE lots (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id     bigint NOT NULL REFERENCES accounts (id),
    -- The credit that formed it; NULL for the balance an account had when its asset first got an expiry.
    transaction_id bigint REFERENCES transactions (id),
    expires_at     timestamptz NOT NULL,
    original       bigint NOT NULL CHECK (original > 0),
    amount         bigint NOT NULL CHECK (amount BETWEEN 0 AND original)
);
CREATE INDEX lots_open ON lots (account_id, expires_at, id) WHERE amount > 0;
CREATE INDEX lots_due ON lots (expires_at) WHERE amount > 0 AND expires_at < 'infinity';
CREATE INDEX lots_formed_by ON lots (transaction_id);

CREATE TABLE lot_uses (
    transaction_id bigint NOT NULL REFERENCES transactions (id),
    lot_id         bigint NOT NULL REFERENCES lots (id),
    amount         bigint NOT NULL CHECK (amount > 0),
    restored       bigint NOT NULL DEFAULT 0 CHECK (restored BETWEEN 0 AND amount),
    PRIMARY KEY (transaction_id, lot_id)
);

-- The scope of transfers.
ALTER TABLE api_keys
    DROP CONSTRAINT api_keys_scopes_check,
    ADD CONSTRAINT api_keys_scopes_check CHECK (
        cardinality(scopes) BETWEEN 1 AND 6
        AND scopes <@ ARRAY['read', 'topup', 'bonus', 'purchase', 'transfer', 'admin']);

-- PUT /v1/assets/{code}: creates the asset with its system accounts (each with its stripes, wallet_system_account()),
-- or changes its policies. A NULL scale or transferable, or p_expiry_sent false, leaves the field as it is (on
-- creation: scale 0, not transferable, no expiry). The scale never changes once the asset exists: every amount
-- ever posted in it is in its minor units. Two PUTs of one new code at once: the second waits on the first's
-- insert, then finds the asset and changes it.
--
-- An expiry_days changes the expiry of the credits that come after it; lots that formed before keep the dates
-- they were shown with. The first expiry_days an existing asset gets turns its user accounts to lots, each with
-- the balance it has as one lot that never expires: the accounts known are locked first (in id order, as postings
-- lock them), then the asset (which every opening of an account holds FOR SHARE, wallet_open_accounts(), so
-- openings in flight commit first and later ones see `lots`), then those opened in between.
CREATE TYPE wallet_asset_outcome AS (
    created      boolean,
    code         text,
    name         text,
    scale        smallint,
    transferable boolean,
    expiry_days  integer,
    problem      jsonb
);

CREATE FUNCTION wallet_put_asset(p_code text, p_name text, p_scale smallint, p_transferable boolean,
                                 p_expiry_days integer, p_expiry_sent boolean, p_system_accounts text[])
RETURNS wallet_asset_outcome
LANGUAGE plpgsql AS $$
DECLARE
    v_asset assets;
    v_had_lots boolean;
BEGIN
    INSERT INTO assets (code, name, scale, transferable, expiry_days, lots)
    VALUES (p_code, p_name, coalesce(p_scale, 0), coalesce(p_transferable, false), p_expiry_days,
            p_expiry_days IS NOT NULL)
    ON CONFLICT (code) DO NOTHING
    RETURNING * INTO v_asset;
    IF FOUND THEN
        PERFORM wallet_system_account('system:' || s.name, p_code) FROM unnest(p_system_accounts) s (name) ORDER BY 1;
        RETURN ROW(true, v_asset.code, v_asset.name, v_asset.scale, v_asset.transferable, v_asset.expiry_days,
                   NULL)::wallet_asset_outcome;
    END IF;
    IF p_expiry_sent AND p_expiry_days IS NOT NULL
       AND NOT EXISTS (SELECT FROM assets WHERE code = p_code AND lots) THEN
        PERFORM 1 FROM accounts WHERE asset = p_code AND kind = 'user' ORDER BY id FOR NO KEY UPDATE;
    END IF;
    -- NO KEY UPDATE, as the UPDATE below takes: it waits for the openings of accounts in flight (FOR SHARE), not
    -- for every posting's foreign key checks (KEY SHARE).
    SELECT * INTO STRICT v_asset FROM assets WHERE code = p_code FOR NO KEY UPDATE;
    IF p_scale IS NOT NULL AND p_scale <> v_asset.scale THEN
        RETURN ROW(false, v_asset.code, v_asset.name, v_asset.scale, v_asset.transferable, v_asset.expiry_days,
                   wallet_problem('asset_scale_immutable',
                                  format('Asset %s has scale %s; the scale of an asset cannot change (asked: %s).',
                                         p_code, v_asset.scale, p_scale)))::wallet_asset_outcome;
    END IF;
    v_had_lots := v_asset.lots;
    UPDATE assets
       SET name = p_name, transferable = coalesce(p_transferable, transferable),
           expiry_days = CASE WHEN p_expiry_sent THEN p_expiry_days ELSE expiry_days END,
           lots = lots OR (p_expiry_sent AND p_expiry_days IS NOT NULL)
     WHERE code = p_code
    RETURNING * INTO v_asset;
    IF v_asset.lots AND NOT v_had_lots THEN  -- its accounts' balances, each as one lot
        PERFORM 1 FROM accounts WHERE asset = p_code AND kind = 'user' AND NOT lots ORDER BY id FOR NO KEY UPDATE;
        INSERT INTO lots (account_id, expires_at, original, amount)
        SELECT id, 'infinity', balance, balance FROM accounts
         WHERE asset = p_code AND kind = 'user' AND NOT lots AND balance > 0
         ORDER BY id;
        UPDATE accounts SET lots = true WHERE asset = p_code AND kind = 'user' AND NOT lots;
    END IF;
    -- An asset made before a system account joined the registry gets it now (idempotent).
    PERFORM wallet_system_account('system:' || s.name, p_code) FROM unnest(p_system_accounts) s (name) ORDER BY 1;
    RETURN ROW(false, v_asset.code, v_asset.name, v_asset.scale, v_asset.transferable, v_asset.expiry_days,
               NULL)::wallet_asset_outcome;
END
$$;

-- Freezes, second edition. A freeze locked the user's accounts and flagged them in one statement; with accounts
-- opened on first use, one opened by a posting that committed after that statement's snapshot would have been left
-- unflagged. Now the freeze, one statement after another (each sees what committed before it began): locks the
-- accounts it knows in id order (as postings do; a debit in flight commits first), then the user's row, which
-- every opening of an account holds FOR SHARE while it reads the user's status (wallet_open_accounts()), so
-- openings in flight commit first and later ones wait and see the new status; then flags every account of the
-- user, those just opened included; then writes the user, frozen_at taken after all of those locks.
-- Returns the user as it now is; no row when the user does not exist.
CREATE FUNCTION wallet_set_frozen(p_user_id text, p_frozen boolean, p_reason text) RETURNS SETOF users
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM accounts WHERE name = 'user:' || p_user_id ORDER BY id FOR NO KEY UPDATE;
    PERFORM 1 FROM users WHERE user_id = p_user_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE accounts SET frozen = p_frozen WHERE name = 'user:' || p_user_id AND kind = 'user' AND frozen <> p_frozen;
    RETURN QUERY
        UPDATE users
           SET status = CASE WHEN p_frozen THEN 'frozen' ELSE 'active' END, frozen_reason = p_reason,
               frozen_at = CASE WHEN p_frozen THEN coalesce(frozen_at, clock_timestamp()) END
         WHERE user_id = p_user_id
        RETURNING *;
END
$$;

-- The first unknown user of a posting's legs (before an unknown asset: one precedence on every route), or the
-- first unknown asset; NULL when all are known. (0005's wallet_refusal() did this in its first loop.)
CREATE FUNCTION wallet_unknown(p wallet_posting) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN NOT l.user_exists
                    THEN wallet_problem('user_not_found', format('User %s does not exist.', substr(l.name, 6)))
                ELSE wallet_problem('asset_not_found', format('Asset %s does not exist.', l.asset)) END
      FROM (SELECT x.name, x.asset, s.code IS NOT NULL AS asset_exists,
                   u.user_id IS NOT NULL OR x.name NOT LIKE 'user:%' AS user_exists
              FROM unnest(p.accounts, p.assets) AS x (name, asset)
              LEFT JOIN assets s ON s.code = x.asset
              LEFT JOIN users u ON x.name LIKE 'user:%' AND u.user_id = substr(x.name, 6)) l
     WHERE NOT l.user_exists OR NOT l.asset_exists
     ORDER BY l.user_exists, l.asset_exists
     LIMIT 1
$$;

-- User accounts are opened on first use: the user accounts a posting names that do not exist yet, for known users
-- and assets. A debit from one is refused as from an empty account (account_frozen when its user is frozen and the
-- posting may not take from frozen accounts, otherwise insufficient_funds); otherwise each is opened for its credit,
-- flagged frozen when its user is, and NULL says "post again". The users' rows are held FOR SHARE while their
-- status is read and the accounts inserted (see wallet_set_frozen()): no freeze can commit in between, so no
-- account of a frozen user is ever opened unflagged; likewise the assets' rows, for `lots`. Two postings opening
-- one account at once: the second waits on the first's insert and, when it commits, finds the account (ON CONFLICT
-- DO NOTHING) and posts again.
CREATE FUNCTION wallet_open_accounts(p wallet_posting) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_leg record;
BEGIN
    PERFORM 1 FROM users u
     WHERE u.user_id IN (SELECT substr(l.name, 6) FROM unnest(p.accounts) AS l (name) WHERE l.name LIKE 'user:%')
     ORDER BY u.user_id FOR SHARE;
    FOR v_leg IN
        SELECT l.name, l.asset, l.amount, u.status
          FROM unnest(p.accounts, p.assets, p.amounts) AS l (name, asset, amount)
          JOIN users u ON u.user_id = substr(l.name, 6)
         WHERE l.name LIKE 'user:%' AND l.amount < 0
           AND NOT EXISTS (SELECT FROM accounts a WHERE a.name = l.name AND a.asset = l.asset)
         ORDER BY l.name, l.asset
    LOOP
        IF v_leg.status = 'frozen' AND NOT coalesce(p.frozen_ok, false) THEN
            RETURN wallet_problem('account_frozen', format('%s is frozen: nothing can be taken from it.', v_leg.name));
        END IF;
        RETURN wallet_problem('insufficient_funds',
            format('Available balance of %s in %s is 0 (balance 0, held 0), less than the %s requested.',
                   v_leg.name, v_leg.asset, -v_leg.amount));
    END LOOP;
    -- The assets' rows too (see wallet_put_asset()): an account opened here is kept as lots if its asset has them.
    PERFORM 1 FROM assets s
     WHERE s.code IN (SELECT l.asset FROM unnest(p.accounts, p.assets, p.amounts) AS l (name, asset, amount)
                       WHERE l.name LIKE 'user:%' AND l.amount > 0)
     ORDER BY s.code FOR SHARE;
    INSERT INTO accounts (kind, name, asset, user_id, frozen, lots)
    SELECT 'user', l.name, l.asset, u.user_id, u.status = 'frozen', s.lots
      FROM unnest(p.accounts, p.assets, p.amounts) AS l (name, asset, amount)
      JOIN users u ON u.user_id = substr(l.name, 6)
      JOIN assets s ON s.code = l.asset
     WHERE l.name LIKE 'user:%' AND l.amount > 0
     ORDER BY l.name, l.asset
    ON CONFLICT (name, asset) DO NOTHING;
    RETURN NULL;
END
$$;

-- wallet_refusal() of 0005, with accounts opened on first use: an unknown user or asset is the problem
-- (wallet_unknown()); a missing system account is still a bug (WL901); the existing user accounts are looked at
-- under their locks as before (frozen, available funds, the limit); only then are the missing user accounts dealt
-- with (wallet_open_accounts()), so that a posting refused for another reason opens none. NULL: post again.
CREATE OR REPLACE FUNCTION wallet_refusal(p wallet_posting) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_leg record;
    v_problem jsonb := wallet_unknown(p);
    v_missing boolean;
BEGIN
    IF v_problem IS NOT NULL THEN
        RETURN v_problem;
    END IF;
    SELECT l.name, l.asset INTO v_leg
      FROM unnest(p.accounts, p.assets) AS l (name, asset)
     WHERE l.name NOT LIKE 'user:%' AND NOT EXISTS (SELECT FROM accounts a WHERE a.name = l.name AND a.asset = l.asset)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'account % does not exist in %', v_leg.name, v_leg.asset USING ERRCODE = 'WL901';
    END IF;
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
    SELECT EXISTS (SELECT FROM unnest(p.accounts, p.assets) AS l (name, asset)
                    WHERE NOT EXISTS (SELECT FROM accounts a WHERE a.name = l.name AND a.asset = l.asset))
      INTO v_missing;
    IF v_missing THEN
        RETURN wallet_open_accounts(p);
    END IF;
    RETURN NULL;
END
$$;

-- What a posting does to the lots of the user accounts it moved that keep lots; called by wallet_request() once it
-- has posted, under those accounts' locks. A credit that refunds a debit gives back to the lots the debit took from
-- (those taken last first; a lot whose date has passed meanwhile expires again at the next sweep), and what is left
-- of a credit forms a lot that expires the asset's expiry_days after the posting ('infinity' without one). A debit
-- takes what it needs from the lots that expire first (a reversal first from the lot its original formed) and
-- records what it took. Lots that do not cover a debit are a broken invariant (WL902): the posting fails.
CREATE FUNCTION wallet_lots_post(p wallet_posting, p_transaction_id bigint, p_at timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_leg record;
    v_use record;
    v_left bigint;
    v_give bigint;
    v_taken bigint;
BEGIN
    FOR v_leg IN
        SELECT a.id, a.name, a.asset, l.amount, s.expiry_days
          FROM unnest(p.accounts, p.assets, p.amounts) AS l (name, asset, amount)
          JOIN accounts a ON a.name = l.name AND a.asset = l.asset
          JOIN assets s ON s.code = a.asset
         WHERE a.kind = 'user' AND a.lots
         ORDER BY a.id
    LOOP
        IF v_leg.amount > 0 THEN
            v_left := v_leg.amount;
            FOR v_use IN
                SELECT u.lot_id, u.amount - u.restored AS open
                  FROM lot_uses u JOIN lots t ON t.id = u.lot_id
                 WHERE p.refund_of IS NOT NULL AND u.transaction_id = p.refund_of AND t.account_id = v_leg.id
                   AND u.restored < u.amount
                 ORDER BY t.expires_at DESC, t.id DESC
            LOOP
                EXIT WHEN v_left = 0;
                v_give := least(v_left, v_use.open);
                UPDATE lot_uses SET restored = restored + v_give
                 WHERE transaction_id = p.refund_of AND lot_id = v_use.lot_id;
                UPDATE lots SET amount = amount + v_give WHERE id = v_use.lot_id;
                v_left := v_left - v_give;
            END LOOP;
            IF v_left > 0 THEN
                INSERT INTO lots (account_id, transaction_id, expires_at, original, amount)
                VALUES (v_leg.id, p_transaction_id,
                        CASE WHEN v_leg.expiry_days IS NULL THEN 'infinity'
                             ELSE p_at + make_interval(days => v_leg.expiry_days) END,
                        v_left, v_left);
            END IF;
        ELSE
            WITH open AS (
                SELECT t.id, t.amount,
                       sum(t.amount) OVER (ORDER BY coalesce(t.transaction_id = p.refund_of, false) DESC, t.expires_at,
                                                    t.id) AS upto
                  FROM lots t
                 WHERE t.account_id = v_leg.id AND t.amount > 0
            ), taken AS (
                SELECT o.id, least(o.amount, -v_leg.amount - (o.upto - o.amount)) AS amount
                  FROM open o
                 WHERE o.upto - o.amount < -v_leg.amount
            ), used AS (
                UPDATE lots t SET amount = t.amount - k.amount FROM taken k WHERE t.id = k.id RETURNING k.id, k.amount
            ), recorded AS (
                INSERT INTO lot_uses (transaction_id, lot_id, amount) SELECT p_transaction_id, u.id, u.amount FROM used u
            )
            SELECT coalesce(sum(u.amount), 0) INTO v_taken FROM used u;
            IF v_taken <> -v_leg.amount THEN
                RAISE EXCEPTION 'lots of % in % hold % of the % a debit takes', v_leg.name, v_leg.asset, v_taken,
                                -v_leg.amount USING ERRCODE = 'WL902';
            END IF;
        END IF;
    END LOOP;
END
$$;

-- wallet_request() of 0005, with two additions. At its start: a transfer of an asset that is not transferable is
-- refused (409 transfers_disabled), recorded under its key like every business error. Transfers are a template of
-- the registry like any other (two user legs: the engine locks both accounts in id order, as it does for every
-- posting with several user legs); accounts missing on the way are opened by wallet_refusal(). After a posting:
-- the lots of the user accounts it moved that keep them (wallet_lots_post()); whether any does is read from the
-- rows the statement updated, under their locks, so postings of assets without expiry pay one returned column
-- and one bool_or, and no query.
CREATE OR REPLACE FUNCTION wallet_request(p_item wallet_item)
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
    -- New in 0006: a transfer needs a transferable asset. Looked at only for transfers, so that no other posting
    -- pays a query for it; after the key (a transfer that was posted replays as posted whatever the asset's policy
    -- is now) and after an unknown user or asset (one precedence on every route).
    IF p.type = 'transfer' AND NOT EXISTS (SELECT FROM assets s WHERE s.code = p.asset AND s.transferable) THEN
        v_result := wallet_stored(p_item);
        IF v_result.outcome IS NOT NULL THEN
            RETURN v_result;
        END IF;
        RETURN wallet_refuse(p_item, coalesce(wallet_unknown(p), wallet_problem('transfers_disabled',
                             format('Asset %s is not transferable: its credits cannot move between users.', p.asset))));
    END IF;
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
            RETURNING a.id, a.balance, a.lots
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
               (SELECT bool_or(m.lots) FROM moved m) AS lots, g.seen, g.known, g.roomy
          INTO v_posted
          FROM gate g LEFT JOIN posted ON true;

        IF v_posted.id IS NOT NULL THEN
            IF v_posted.lots THEN
                PERFORM wallet_lots_post(p, v_posted.id, v_posted.created_at);
            END IF;
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


-- Expired lots, swept. For up to p_limit accounts with lots past their date at p_now (the service's clock, which
-- tests move forward), those expired first first, a transaction of type `expiry` moves what is left of those lots
-- to the asset's `system:expired`, under the account's lock, through the engine like any posting (its debit takes
-- the lots that expire first: these). What active holds reserve stays: a hold reserves from the lots that expire
-- first, which its capture then takes; an account whose expired lots are all reserved is passed over until a hold
-- ends. A frozen account's credits expire too: a freeze stops what the user does, not the clock. Sweeps running at
-- once take different accounts (SKIP LOCKED). Returns how many expiry transactions it posted.
CREATE FUNCTION wallet_expire_lots(p_now timestamptz, p_limit int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    v_account accounts;
    v_amount bigint;
    v_posted int := 0;
    v_outcome wallet_outcome;
BEGIN
    FOR v_account IN
        SELECT a.* FROM accounts a
         WHERE a.id IN (SELECT d.account_id FROM lots d JOIN accounts x ON x.id = d.account_id
                         WHERE d.amount > 0 AND d.expires_at <= p_now
                         GROUP BY d.account_id, x.held HAVING sum(d.amount) > x.held
                         ORDER BY min(d.expires_at) LIMIT p_limit)
         ORDER BY a.id
           FOR NO KEY UPDATE SKIP LOCKED
    LOOP
        IF v_account.held > 0 AND wallet_expire_account_holds(v_account.id) > 0 THEN
            SELECT * INTO STRICT v_account FROM accounts WHERE id = v_account.id;
        END IF;
        SELECT sum(amount) - v_account.held INTO v_amount
          FROM lots WHERE account_id = v_account.id AND amount > 0 AND expires_at <= p_now;
        CONTINUE WHEN coalesce(v_amount, 0) <= 0;
        v_outcome := wallet_request(ROW(NULL, 'system:expiry', NULL, NULL, NULL, NULL,
            ROW('expiry', v_account.user_id, v_account.asset, v_amount, 'Expired credits', NULL,
                ARRAY[v_account.name, 'system:expired'], ARRAY[v_account.asset, v_account.asset],
                ARRAY[-v_amount, v_amount], NULL, NULL, NULL, true)::wallet_posting)::wallet_item);
        IF v_outcome.outcome <> 'created' THEN
            RAISE EXCEPTION 'expiry of % in % refused: %', v_account.name, v_account.asset, v_outcome.problem
                  USING ERRCODE = 'WL903';
        END IF;
        v_posted := v_posted + 1;
    END LOOP;
    RETURN v_posted;
END
$$;

-- Every asset's expired credits go to its `system:expired` (a sink, like revenue); assets made from now on get it
-- with their other system accounts (the registry, wallet/kinds.py).
SELECT wallet_system_account('system:expired', code) FROM assets ORDER BY code;

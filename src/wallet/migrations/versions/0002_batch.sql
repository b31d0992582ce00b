-- Batches: many money-moving operations in one transaction, each with its own idempotency key and the same
-- rules as a single request (an item is fingerprinted as the single POST of its type, so the two are
-- interchangeable). Keys are claimed and user accounts locked up front, each in sorted order, so concurrent
-- batches cannot deadlock whatever order their items come in.
--
-- p_items: a JSON array of {"key", "endpoint", "request", "type", "asset", "user_id", "amount",
-- "accounts": [..], "amounts": [..], "description", "metadata"}, keys distinct (the caller checks).
-- Returns one row per item, in request order. With p_atomic, any item that does not end in 201 undoes the
-- whole batch (claims and recorded failures included): the items it would have created report 'aborted'
-- (424), the failing ones their problem ('rejected': not recorded, so a corrected batch can reuse the keys).
-- The set-based path of a batch, for items newly claimed with two legs (a user's account, then a system
-- account). The caller holds the locks on the user accounts. Each item's balance is the running sum of its
-- account's legs in item order; that holds as long as no item of an account that has several fails (a failed
-- item would not apply, and the items after it would see another balance): then it returns no rows and the
-- caller goes item by item. Otherwise a handful of statements post every item at once, with one balance update
-- per account and one delta per system account. With p_atomic and any item failing, it writes nothing and
-- returns the would-be successes as 'created' with no body (the caller rolls back and reports them aborted).
CREATE FUNCTION wallet_batch_set_based(p_api_key_id bigint, p_api_key_name text, p_atomic boolean, p_items jsonb)
RETURNS TABLE (ord int, outcome text, status int, body json, transaction_id text)
LANGUAGE plpgsql AS $$
DECLARE
    v_failures int;
    v_ok int;
    v_posted int;
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS wallet_batch_plan (
        ord int, key text, type text, asset text, user_id text, amount bigint, user_leg bigint,
        accounts text[], amounts bigint[], description text, metadata jsonb,
        user_account bigint, system_account bigint, error_code text, error_detail text, tx_id bigint,
        running bigint, account_items int
    ) ON COMMIT DELETE ROWS;  -- one per session, emptied by every commit
    TRUNCATE wallet_batch_plan;  -- and by a rolled-back atomic batch earlier in this transaction

    WITH planned AS (
        SELECT x.ord, x.i, (x.i->'amounts'->>0)::bigint AS user_leg, s.code AS asset_found, ua.id AS user_account,
               ua.name AS user_account_name, sa.id AS system_account,
               ua.balance::numeric + sum((x.i->'amounts'->>0)::bigint)
                   OVER (PARTITION BY ua.id ORDER BY x.ord) AS running,
               count(*) OVER (PARTITION BY ua.id) AS account_items
          FROM jsonb_array_elements(p_items) WITH ORDINALITY AS x (i, ord)
          LEFT JOIN assets s ON s.code = x.i->>'asset'
          LEFT JOIN accounts ua ON ua.name = x.i->'accounts'->>0 AND ua.asset = x.i->>'asset' AND ua.kind = 'user'
          LEFT JOIN accounts sa ON sa.name = x.i->'accounts'->>1 AND sa.asset = x.i->>'asset' AND sa.kind = 'system'
    ), judged AS (
        SELECT p.*,
               CASE WHEN p.asset_found IS NULL THEN 'asset_not_found'
                    WHEN p.user_account IS NULL THEN 'user_not_found'
                    ELSE b.code END AS error_code,
               CASE WHEN p.asset_found IS NULL THEN format('Asset %s does not exist.', p.i->>'asset')
                    WHEN p.user_account IS NULL THEN format('User %s does not exist.', p.i->>'user_id')
                    ELSE b.detail END AS error_detail
          FROM planned p
         CROSS JOIN LATERAL wallet_bound_error(p.user_account_name, p.i->>'asset', p.running - p.user_leg,
                                               p.user_leg) b
    )
    INSERT INTO wallet_batch_plan
    SELECT j.ord, j.i->>'key', j.i->>'type', j.i->>'asset', j.i->>'user_id', (j.i->>'amount')::bigint, j.user_leg,
           ARRAY[j.i->'accounts'->>0, j.i->'accounts'->>1],
           ARRAY[j.user_leg, (j.i->'amounts'->>1)::bigint],
           j.i->>'description', coalesce(j.i->'metadata', '{}'), j.user_account, j.system_account, j.error_code,
           j.error_detail,
           -- Ids in item order, taken under the locks, as a single posting takes its own.
           CASE WHEN j.error_code IS NULL AND NOT p_atomic THEN nextval('transactions_id_seq') END,
           CASE WHEN j.error_code IS NULL THEN j.running END, j.account_items
      FROM judged j ORDER BY j.ord;

    IF EXISTS (SELECT 1 FROM wallet_batch_plan p WHERE p.error_code IS NOT NULL AND p.account_items > 1) THEN
        RETURN;  -- outcomes depend on each other: item by item it is (nothing was written)
    END IF;

    SELECT count(*) FILTER (WHERE p.error_code IS NOT NULL), count(*) FILTER (WHERE p.error_code IS NULL)
      INTO v_failures, v_ok FROM wallet_batch_plan p;
    IF EXISTS (SELECT 1 FROM wallet_batch_plan p WHERE p.error_code IS NULL AND p.system_account IS NULL) THEN
        RAISE EXCEPTION 'a system account of this batch does not exist' USING ERRCODE = 'WL901';
    END IF;
    IF p_atomic THEN
        IF v_failures > 0 THEN  -- write nothing; the caller rolls the claims back
            RETURN QUERY SELECT p.ord, CASE WHEN p.error_code IS NULL THEN 'created' ELSE 'failed' END,
                                CASE WHEN p.error_code IS NULL THEN 201 ELSE wallet_error_status(p.error_code) END,
                                json_build_object('code', p.error_code, 'detail', p.error_detail), NULL::text
                           FROM wallet_batch_plan p ORDER BY p.ord;
            RETURN;
        END IF;
        UPDATE wallet_batch_plan p SET tx_id = n.tx_id
          FROM (SELECT q.ord, nextval('transactions_id_seq') AS tx_id
                  FROM (SELECT w.ord FROM wallet_batch_plan w ORDER BY w.ord OFFSET 0) q) n
         WHERE p.ord = n.ord;
    END IF;

    UPDATE idempotency_keys k
       SET status = wallet_error_status(p.error_code),
           problem = jsonb_build_object('code', p.error_code, 'detail', p.error_detail)
      FROM wallet_batch_plan p
     WHERE p.error_code IS NOT NULL AND k.api_key_id = p_api_key_id AND k.key = p.key;

    RETURN QUERY
    WITH posted AS (
        INSERT INTO transactions (id, type, asset, user_id, amount, description, metadata, api_key_name)
        OVERRIDING SYSTEM VALUE
        SELECT p.tx_id, p.type, p.asset, p.user_id, p.amount, p.description, p.metadata, p_api_key_name
          FROM wallet_batch_plan p WHERE p.tx_id IS NOT NULL ORDER BY p.tx_id
        RETURNING id, transactions.created_at
    ), moved AS (
        UPDATE accounts a SET balance = a.balance + t.total
          FROM (SELECT p.user_account, sum(p.user_leg) AS total FROM wallet_batch_plan p
                 WHERE p.tx_id IS NOT NULL GROUP BY p.user_account) t
         WHERE a.id = t.user_account
    ), written AS (
        INSERT INTO entries (transaction_id, leg, account_id, amount, balance_after)
        SELECT p.tx_id, 1, p.user_account, p.user_leg, p.running FROM wallet_batch_plan p WHERE p.tx_id IS NOT NULL
        UNION ALL
        SELECT p.tx_id, 2, p.system_account, -p.user_leg, NULL FROM wallet_batch_plan p WHERE p.tx_id IS NOT NULL
    ), appended AS (  -- one delta per system account for the whole batch
        INSERT INTO account_deltas (account_id, amount)
        SELECT p.system_account, -sum(p.user_leg) FROM wallet_batch_plan p
         WHERE p.tx_id IS NOT NULL GROUP BY p.system_account HAVING sum(p.user_leg) <> 0
    ), recorded AS (
        UPDATE idempotency_keys k SET status = 201, transaction_id = p.tx_id
          FROM wallet_batch_plan p
         WHERE p.tx_id IS NOT NULL AND k.api_key_id = p_api_key_id AND k.key = p.key
    )
    SELECT p.ord,
           CASE WHEN p.error_code IS NULL THEN 'created' ELSE 'failed' END,
           CASE WHEN p.error_code IS NULL THEN 201 ELSE wallet_error_status(p.error_code) END,
           CASE WHEN p.error_code IS NOT NULL THEN json_build_object('code', p.error_code, 'detail', p.error_detail)
                ELSE wallet_render(p.tx_id, p.type, p.user_id, p.asset, p.amount, p.running, p.description,
                                   p.metadata, p.accounts, p.amounts, posted.created_at) END,
           wallet_public_id(p.tx_id)
      FROM wallet_batch_plan p
      LEFT JOIN posted ON posted.id = p.tx_id
     ORDER BY p.ord;

    -- Every account moved by this batch must now hold its last item's balance_after (the bounds were checked
    -- under the locks, so it does); were one not to, refuse the whole batch rather than commit it.
    SELECT count(*) INTO v_posted
      FROM (SELECT DISTINCT ON (p.user_account) p.user_account, p.running FROM wallet_batch_plan p
             WHERE p.tx_id IS NOT NULL ORDER BY p.user_account, p.ord DESC) last
      JOIN accounts a ON a.id = last.user_account
     WHERE a.balance <> last.running;
    IF v_posted > 0 THEN
        RAISE EXCEPTION 'batch: % accounts do not hold their last balance_after', v_posted USING ERRCODE = 'WL902';
    END IF;
END
$$;

CREATE FUNCTION wallet_batch(
    p_attempt_id uuid, p_api_key_id bigint, p_api_key_name text, p_atomic boolean, p_items jsonb
)
RETURNS TABLE (ord int, outcome text, status int, body json, transaction_id text)
LANGUAGE plpgsql AS $$
DECLARE
    v_item jsonb;
    v_ord int;
    v_claimed jsonb;  -- the keys this batch claimed, as an object for O(log n) lookups
    v_stored idempotency_keys;
    v_post record;
    v_accounts text[];
    v_amounts bigint[];
    v_outcomes text[] := '{}';
    v_statuses int[] := '{}';
    v_bodies json[] := '{}';
    v_tx_ids text[] := '{}';
    v_failed boolean := false;
BEGIN
    BEGIN
        WITH wanted AS (
            SELECT i->>'key' AS key, i->>'endpoint' AS endpoint, i->'request' AS request
              FROM jsonb_array_elements(p_items) i ORDER BY i->>'key'
        ), claimed AS (
            INSERT INTO idempotency_keys (api_key_id, key, endpoint, request, attempt_id)
            SELECT p_api_key_id, key, endpoint, request, p_attempt_id FROM wanted
            ON CONFLICT DO NOTHING RETURNING key
        )
        SELECT coalesce(jsonb_object_agg(key, true), '{}') INTO v_claimed FROM claimed;

        PERFORM 1 FROM accounts a
          JOIN (SELECT DISTINCT i->>'asset' AS asset, 'user:' || (i->>'user_id') AS name
                  FROM jsonb_array_elements(p_items) i) w ON a.asset = w.asset AND a.name = w.name
         ORDER BY a.id FOR NO KEY UPDATE OF a;

        IF (SELECT count(*) FROM jsonb_object_keys(v_claimed)) = jsonb_array_length(p_items)
           AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_items) i
                            WHERE jsonb_array_length(i->'accounts') <> 2
                               OR (i->'accounts'->>0) NOT LIKE 'user:%' OR (i->'accounts'->>1) NOT LIKE 'system:%')
        THEN
            SELECT coalesce(array_agg(f.outcome ORDER BY f.ord), '{}'), coalesce(array_agg(f.status ORDER BY f.ord), '{}'),
                   coalesce(array_agg(f.body ORDER BY f.ord), '{}'), coalesce(array_agg(f.transaction_id ORDER BY f.ord), '{}')
              INTO v_outcomes, v_statuses, v_bodies, v_tx_ids
              FROM wallet_batch_set_based(p_api_key_id, p_api_key_name, p_atomic, p_items) f;
            v_failed := 'failed' = ANY (v_outcomes);
        END IF;

        FOR v_item, v_ord IN SELECT e.value, e.ordinality FROM jsonb_array_elements(p_items) WITH ORDINALITY e
                              WHERE cardinality(v_outcomes) = 0
        LOOP
            IF NOT v_claimed ? (v_item->>'key') THEN
                SELECT * INTO v_stored FROM idempotency_keys k
                 WHERE k.api_key_id = p_api_key_id AND k.key = v_item->>'key';
                IF v_stored.attempt_id = p_attempt_id OR (v_stored.endpoint = v_item->>'endpoint'
                                                         AND v_stored.request = v_item->'request') THEN
                    -- Our own earlier run (the connection broke after it committed) is not a replay.
                    v_outcomes := v_outcomes || CASE WHEN v_stored.attempt_id = p_attempt_id
                                                     THEN CASE WHEN v_stored.status = 201 THEN 'created' ELSE 'failed' END
                                                     ELSE 'replayed' END;
                    v_statuses := v_statuses || v_stored.status::int;
                    v_bodies := v_bodies || coalesce(wallet_transaction_json(v_stored.transaction_id),
                                                     v_stored.problem::json);
                    v_tx_ids := v_tx_ids || wallet_public_id(v_stored.transaction_id);
                ELSE
                    v_outcomes := v_outcomes || 'reused'::text;
                    v_statuses := v_statuses || 422;
                    v_bodies := v_bodies || json_build_object('endpoint', v_stored.endpoint,
                                                              'request', v_stored.request);
                    v_tx_ids := v_tx_ids || NULL::text;
                END IF;
            ELSE
                v_accounts := ARRAY(SELECT jsonb_array_elements_text(v_item->'accounts'));
                v_amounts := ARRAY(SELECT x::bigint FROM jsonb_array_elements_text(v_item->'amounts') x);
                v_post := wallet_post(
                    v_item->>'type', v_item->>'asset', v_item->>'user_id',
                    (v_item->>'amount')::bigint, v_accounts, v_amounts,
                    v_item->>'description', v_item->'metadata', p_api_key_name);
                IF v_post.error_code IS NULL THEN
                    UPDATE idempotency_keys k SET status = 201, transaction_id = v_post.posted_id
                     WHERE k.api_key_id = p_api_key_id AND k.key = v_item->>'key';
                    v_outcomes := v_outcomes || 'created'::text;
                    v_statuses := v_statuses || 201;
                    v_bodies := v_bodies || wallet_render(
                        v_post.posted_id, v_item->>'type', v_item->>'user_id', v_item->>'asset',
                        (v_item->>'amount')::bigint,
                        v_post.balances[array_position(v_accounts, 'user:' || (v_item->>'user_id'))],
                        v_item->>'description', coalesce(v_item->'metadata', '{}'), v_accounts, v_amounts,
                        v_post.created_at);
                    v_tx_ids := v_tx_ids || wallet_public_id(v_post.posted_id);
                ELSE
                    v_outcomes := v_outcomes || 'failed'::text;
                    v_statuses := v_statuses || wallet_error_status(v_post.error_code);
                    v_bodies := v_bodies || json_build_object('code', v_post.error_code,
                                                              'detail', v_post.error_detail);
                    v_tx_ids := v_tx_ids || NULL::text;
                    UPDATE idempotency_keys k
                       SET status = v_statuses[v_ord], problem = v_bodies[v_ord]::jsonb
                     WHERE k.api_key_id = p_api_key_id AND k.key = v_item->>'key';
                END IF;
            END IF;
            v_failed := v_failed OR v_statuses[v_ord] <> 201;
        END LOOP;

        IF p_atomic AND v_failed THEN
            RAISE EXCEPTION 'atomic batch aborted' USING ERRCODE = 'WL424';
        END IF;
    EXCEPTION WHEN SQLSTATE 'WL424' THEN
        -- Everything the block wrote is undone; the outcomes gathered in variables remain.
        FOR i IN 1..cardinality(v_statuses) LOOP
            IF v_outcomes[i] = 'created' THEN
                v_outcomes[i] := 'aborted';
                v_statuses[i] := 424;
                v_bodies[i] := json_build_object('code', 'batch_aborted', 'detail',
                    'Not written: another item of this atomic batch failed.');
                v_tx_ids[i] := NULL;
            ELSIF v_outcomes[i] = 'failed' THEN
                v_outcomes[i] := 'rejected';  -- its failure was not recorded either
            END IF;
        END LOOP;
    END;

    RETURN QUERY SELECT r.ord::int, r.outcome, r.status, r.body, r.transaction_id
                   FROM unnest(v_outcomes, v_statuses, v_bodies, v_tx_ids)
                        WITH ORDINALITY AS r (outcome, status, body, transaction_id, ord);
END
$$;

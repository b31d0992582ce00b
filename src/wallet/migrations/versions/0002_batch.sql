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

        FOR v_item, v_ord IN SELECT e.value, e.ordinality FROM jsonb_array_elements(p_items) WITH ORDINALITY e
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
                    v_statuses := v_statuses || CASE WHEN v_post.error_code IN ('user_not_found', 'asset_not_found')
                                                     THEN 404 ELSE 409 END;
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

-- Corrections to the engine of 0004 and 0005, found by the tests of refunds, rewards and adjustments.

-- wallet_stripe_gather(), corrected. The share each other stripe keeps is meant to be (total - amount) / stripes
-- rounded down, so that the gathering stripe keeps at least the amount; 0004 cast the numeric quotient to bigint,
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

-- wallet_refund_posting(), corrected: it locks the original's user accounts (in id order) before the original's
-- counter of refunds, as every posting takes user accounts before what a template reads (a capture takes the
-- account before its hold). 0005 locked the counter first and the account when posting: a refund alone held the
-- counter while it waited for the account, and a group of coalesced requests (a batch: it locks every user
-- account of its items first) that held the account came to the same counter: a deadlock, undone by PostgreSQL
-- after deadlock_timeout (1 s) and retried; under load, a 503 once the retries ran out. Otherwise as 0005's.
CREATE OR REPLACE FUNCTION wallet_refund_posting(p_request wallet_posting, p_api_key_id bigint) RETURNS wallet_template
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

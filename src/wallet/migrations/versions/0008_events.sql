-- Events (spec/API.md, v1.1 "Events and webhooks"). Every change is an event written in the transaction of the
-- change, so there is no event without its change and no change without its event:
--   transaction.posted  the transaction's own row is the event (transactions are never changed, so the event is
--                       rendered from it when read): no second row on the posting path;
--   hold.*, user.*      a row of `events`, written by a trigger on `holds` and `users` (neither table is hot), with
--                       the object as the API shows it at that change;
--   balance.threshold_crossed, webhook.disabled: rows of `events` written where they happen.
--
-- The feed is read in the order of the writing transactions' ids (xid8, which never wraps and survives restarts),
-- then of the rows within one, and only below the oldest transaction still running (the snapshot's xmin): every
-- transaction below it has committed or rolled back, so nothing can appear behind a position a reader has passed.
-- A reader never skips an event that commits later; a long transaction delays the feed, it loses nothing. Two
-- transactions of which one committed before the other began are always in that order; transactions that
-- overlapped are in the order of their ids.
ALTER TABLE transactions ADD COLUMN xid xid8 NOT NULL DEFAULT '0';  -- earlier transactions come first, by id
ALTER TABLE transactions ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE INDEX transactions_feed ON transactions (xid, id);

CREATE TABLE events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    type       text NOT NULL CHECK (type ~ '^[a-z_]+\.[a-z_]+$'),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    data       jsonb NOT NULL CHECK (jsonb_typeof(data) = 'object')
);
CREATE INDEX events_feed ON events (xid, id);

-- A hold as the API shows it (holds.py), at the change that emits it.
CREATE FUNCTION wallet_hold_json(h holds) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', wallet_hold_public_id(h.id), 'status', h.status, 'user_id', h.user_id, 'asset', h.asset,
        'amount', h.amount, 'captured_amount', h.captured_amount, 'expires_at', wallet_ts(h.expires_at),
        'transaction_id', CASE WHEN h.transaction_id IS NOT NULL THEN wallet_public_id(h.transaction_id) END,
        'created_at', wallet_ts(h.created_at), 'resolved_at', wallet_ts(h.resolved_at),
        'description', h.description, 'metadata', h.metadata)
$$;

CREATE FUNCTION wallet_hold_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (type, data) VALUES ('hold.' || CASE WHEN TG_OP = 'INSERT' THEN 'created' ELSE NEW.status END,
                                            wallet_hold_json(NEW));
    RETURN NULL;
END
$$;
CREATE TRIGGER hold_created AFTER INSERT ON holds FOR EACH ROW EXECUTE FUNCTION wallet_hold_event();
CREATE TRIGGER hold_resolved AFTER UPDATE OF status ON holds
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION wallet_hold_event();

-- A user as the API shows it (reads.py).
CREATE FUNCTION wallet_user_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (type, data)
    VALUES ('user.' || CASE WHEN TG_OP = 'INSERT' THEN 'created' WHEN NEW.status = 'frozen' THEN 'frozen'
                            ELSE 'unfrozen' END,
            jsonb_build_object('user_id', NEW.user_id, 'display_name', NEW.display_name, 'status', NEW.status,
                               'frozen_reason', NEW.frozen_reason, 'frozen_at', wallet_ts(NEW.frozen_at),
                               'created_at', wallet_ts(NEW.created_at)));
    RETURN NULL;
END
$$;
CREATE TRIGGER user_created AFTER INSERT ON users FOR EACH ROW EXECUTE FUNCTION wallet_user_event();
CREATE TRIGGER user_frozen AFTER UPDATE OF status ON users
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION wallet_user_event();

-- Webhook endpoints. `secret` signs deliveries (shown once, at creation and at each rotation); after a rotation the
-- previous secret signs too, beside it, for a day, so that receivers can switch without losing a delivery.
-- `position` is where the endpoint's fan-out has read the feed up to (a feed cursor: xid, source, id); it starts
-- at the feed's head when the endpoint is registered. `failing_since`: the first failure since the last success;
-- an endpoint that has failed for 72 hours is disabled (and a `webhook.disabled` event emitted).
CREATE TABLE webhook_endpoints (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url                    text NOT NULL CHECK (url ~ '^https?://' AND char_length(url) <= 2000),
    types                  text[] NOT NULL CHECK (cardinality(types) >= 1),
    description            text CHECK (char_length(description) <= 500),
    secret                 text NOT NULL,
    previous_secret        text,
    previous_secret_until  timestamptz,
    position_xid           xid8 NOT NULL,
    position_source        smallint NOT NULL,
    position_id            bigint NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    failing_since          timestamptz,
    disabled_at            timestamptz,
    deleted_at             timestamptz
);

-- One delivery per endpoint and event: the payload as it is sent every time (so that its signature covers the same
-- bytes), when it is due next, and a lease taken by the dispatcher that is sending it (a dispatcher that dies
-- mid-delivery leaves a lease that runs out; another then sends it again: at least once).
CREATE TABLE webhook_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id     bigint NOT NULL REFERENCES webhook_endpoints (id),
    event_id        text NOT NULL,
    event_type      text NOT NULL,
    payload         text NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    leased_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    delivered_at    timestamptz,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, id DESC);

-- Every attempt, for the delivery log: when, how it ended (the HTTP status, or the error), how long it took.
CREATE TABLE webhook_attempts (
    delivery_id  bigint NOT NULL REFERENCES webhook_deliveries (id),
    attempt      integer NOT NULL,
    started_at   timestamptz NOT NULL,
    duration_ms  integer NOT NULL,
    status_code  integer,
    error        text,
    PRIMARY KEY (delivery_id, attempt)
);

-- Balance monitors: a posting that takes a matching balance across the threshold (below: from >= threshold to
-- < threshold; above: from <= threshold to > threshold) emits balance.threshold_crossed, once per crossing. The
-- accounts a monitor watches are flagged (`monitored`), so that the trigger below is evaluated in C (its WHEN) for
-- every other account and never called: postings of unwatched accounts pay only that test.
CREATE TABLE monitors (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    asset      text NOT NULL REFERENCES assets (code),
    user_id    text REFERENCES users (user_id),
    condition  text NOT NULL CHECK (condition IN ('below', 'above')),
    threshold  bigint NOT NULL CHECK (threshold BETWEEN 0 AND 1000000000000000000),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX monitors_by_asset ON monitors (asset);

ALTER TABLE accounts ADD COLUMN monitored boolean NOT NULL DEFAULT false;

CREATE FUNCTION wallet_monitor_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (type, data)
    SELECT 'balance.threshold_crossed',
           jsonb_build_object('monitor_id', 'mon_' || lpad(to_hex(m.id), 16, '0'), 'user_id', NEW.user_id,
                              'asset', NEW.asset, 'condition', m.condition, 'threshold', m.threshold,
                              'balance_before', OLD.balance, 'balance', NEW.balance)
      FROM monitors m
     WHERE m.asset = NEW.asset AND (m.user_id IS NULL OR m.user_id = NEW.user_id)
       AND (m.condition = 'below' AND OLD.balance >= m.threshold AND NEW.balance < m.threshold
            OR m.condition = 'above' AND OLD.balance <= m.threshold AND NEW.balance > m.threshold)
     ORDER BY m.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER balance_monitored AFTER UPDATE OF balance ON accounts
    FOR EACH ROW WHEN (NEW.monitored AND OLD.balance <> NEW.balance) EXECUTE FUNCTION wallet_monitor_event();

-- Accounts opened later are flagged as they are inserted when a monitor watches them (openings are not hot).
CREATE FUNCTION wallet_monitor_flag() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.monitored := NEW.kind = 'user' AND EXISTS (
        SELECT FROM monitors m WHERE m.asset = NEW.asset AND (m.user_id IS NULL OR m.user_id = NEW.user_id));
    RETURN NEW;
END
$$;
CREATE TRIGGER account_monitored BEFORE INSERT ON accounts FOR EACH ROW EXECUTE FUNCTION wallet_monitor_flag();

-- Where each sink (the NATS JetStream one: `nats`) has published the feed up to.
CREATE TABLE event_sinks (
    name            text PRIMARY KEY,
    position_xid    xid8 NOT NULL,
    position_source smallint NOT NULL,
    position_id     bigint NOT NULL
);

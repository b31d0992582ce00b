"""Webhooks: endpoints registered through the API, each event of the types they ask for POSTed to them, signed,
retried with growing delays until delivered, for at least 72 hours.

Every endpoint reads the event feed from its own position (events.py). The dispatcher, which runs in every worker
of `wallet serve` and as `wallet dispatch`, shares its work through the database: an endpoint's fan-out (the
feed's next events into deliveries, and the position moved past them) happens under that endpoint's row lock,
taken with SKIP LOCKED, so each event becomes one delivery per endpoint whichever dispatcher read it; a delivery is
sent under a lease (the timeout and a margin) that a dispatcher takes by an UPDATE and commits before sending, so a
dispatcher that dies mid-delivery leaves a lease that runs out, and another sends it again. Delivery is at least
once: receivers deduplicate by `Wallet-Event-Id`.

An endpoint that has failed (no 2xx) for 72 hours without a success in between is disabled, and a
`webhook.disabled` event says so; its deliveries stay pending and are not lost.
"""

import asyncio
import functools
import hashlib
import hmac
import logging
import random
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatch
from typing import Any, NoReturn
from urllib.parse import urlsplit

import asyncpg
import httpx
import orjson

from wallet import __version__, events
from wallet.clock import Clock
from wallet.config import Settings
from wallet.database import Database
from wallet.errors import ValidationFailed, WalletError, WebhookNotFound
from wallet.render import parse_public_id, public_id, timestamp

log = logging.getLogger("wallet.webhooks")

ID_PREFIX = "wh"
DELIVERY_PREFIX = "whd"
RETRY_DELAYS_S = (10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800)  # then every 8 hours
DISABLE_AFTER = timedelta(hours=72)
PREVIOUS_SECRET_VALID = timedelta(hours=24)
FAN_OUT_EVENTS_MAX = 500  # events one endpoint's fan-out reads at a time
DELIVERIES_MAX = 50  # deliveries one dispatcher sends at once
POLL_S = 0.5


def sign(secret: str, at: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `<at>.<body>` under the secret (spec/API.md, `Wallet-Signature`)."""
    return hmac.new(secret.encode(), str(at).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secrets_: list[str], at: int, body: bytes) -> str:
    return ",".join([f"t={at}", *(f"v1={sign(secret, at, body)}" for secret in secrets_)])


def retry_delay_s(attempts: int) -> float:
    """After the `attempts`-th failed attempt: growing delays, then every 8 hours; 10% jitter."""
    base = RETRY_DELAYS_S[min(attempts, len(RETRY_DELAYS_S)) - 1]
    return base * random.uniform(0.9, 1.1)


def check_url(url: str, allowed_hosts: str | None) -> None:
    """http(s) URLs with a host; with an allow-list (WALLET_WEBHOOK_ALLOWED_HOSTS), only its hosts."""
    problem = None
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # both raise ValueError on a malformed authority ("]", a bad port)
    except ValueError:
        _refuse("a well-formed URL")
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        problem = "a URL without spaces or control characters"
    elif parts.scheme not in ("http", "https") or not host:
        problem = "an http or https URL with a host"
    elif parts.username or parts.password:
        problem = "a URL without credentials (the signature authenticates the sender)"
    elif not host_allowed(host, allowed_hosts):
        problem = f"a URL whose host is allowed (WALLET_WEBHOOK_ALLOWED_HOSTS); {host} is not"
    if problem:
        _refuse(problem)


def _refuse(problem: str) -> NoReturn:
    raise ValidationFailed(f"url must be {problem}.", [{"loc": ["body", "url"], "msg": problem, "type": "url"}])


def host_allowed(host: str, allowed_hosts: str | None) -> bool:
    if not allowed_hosts:
        return True
    return any(
        fnmatch(host.lower(), pattern.strip().lower()) for pattern in allowed_hosts.split(",") if pattern.strip()
    )


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


_ENDPOINT_FIELDS = "id, url, types, description, created_at, failing_since, disabled_at"


def _endpoint(row: asyncpg.Record, secret: str | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": public_id(row["id"], ID_PREFIX),
        "url": row["url"],
        "types": list(row["types"]),
        "description": row["description"],
        "status": "disabled" if row["disabled_at"] else "active",
        "created_at": timestamp(row["created_at"]),
        "failing_since": timestamp(row["failing_since"]),
        "disabled_at": timestamp(row["disabled_at"]),
    }
    if secret is not None:
        document["secret"] = secret
    return document


def parse_id(webhook_id: str) -> int:
    internal = parse_public_id(webhook_id, ID_PREFIX) if webhook_id.startswith(ID_PREFIX + "_") else None
    if internal is None:
        raise WebhookNotFound(f"Webhook {webhook_id[:64]} does not exist.")
    return internal


async def create(database: Database, url: str, types: list[str], description: str | None) -> bytes:
    """Registers an endpoint; its deliveries start with the events that commit from now on. Its secret is in this
    answer only."""
    secret = new_secret()

    async def work(conn: asyncpg.Connection) -> asyncpg.Record:
        head = await events.head(conn)
        row = await conn.fetchrow(
            f"""INSERT INTO webhook_endpoints (url, types, description, secret, position_xid, position_source,
                                               position_id)
                VALUES ($1, $2, $3, $4, $5::text::xid8, $6, $7) RETURNING {_ENDPOINT_FIELDS}""",
            url,
            types,
            description,
            secret,
            *head.stored,
        )
        assert row is not None
        return row

    return orjson.dumps(_endpoint(await database.run(work), secret))


async def get(database: Database, webhook_id: str) -> bytes:
    row = await database.fetchrow(
        f"SELECT {_ENDPOINT_FIELDS} FROM webhook_endpoints WHERE id = $1 AND deleted_at IS NULL", parse_id(webhook_id)
    )
    if row is None:
        raise WebhookNotFound(f"Webhook {webhook_id[:64]} does not exist.")
    return orjson.dumps(_endpoint(row))


async def list_all(database: Database) -> bytes:
    rows = await database.fetch(
        f"SELECT {_ENDPOINT_FIELDS} FROM webhook_endpoints WHERE deleted_at IS NULL ORDER BY id"
    )
    return orjson.dumps({"items": [_endpoint(row) for row in rows], "next_cursor": None})


async def delete(database: Database, webhook_id: str) -> None:
    deleted = await database.fetchval(
        "UPDATE webhook_endpoints SET deleted_at = clock_timestamp() WHERE id = $1 AND deleted_at IS NULL RETURNING id",
        parse_id(webhook_id),
    )
    if deleted is None:
        raise WebhookNotFound(f"Webhook {webhook_id[:64]} does not exist.")


async def rotate_secret(database: Database, webhook_id: str) -> bytes:
    """A new secret, shown in this answer only; the previous one keeps signing beside it for 24 hours."""
    secret = new_secret()
    row = await database.fetchrow(
        f"""UPDATE webhook_endpoints
               SET previous_secret = secret, previous_secret_until = clock_timestamp() + $3::interval, secret = $2
             WHERE id = $1 AND deleted_at IS NULL RETURNING {_ENDPOINT_FIELDS}""",
        parse_id(webhook_id),
        secret,
        PREVIOUS_SECRET_VALID,
    )
    if row is None:
        raise WebhookNotFound(f"Webhook {webhook_id[:64]} does not exist.")
    return orjson.dumps(_endpoint(row, secret))


async def deliveries(database: Database, webhook_id: str, limit: int, cursor: str | None) -> bytes:
    """The delivery log: newest first, each with its attempts (when, the answer's status or the error, how long)."""
    internal = parse_id(webhook_id)
    before = parse_public_id(cursor, DELIVERY_PREFIX) if cursor else None
    if cursor and before is None:
        raise ValidationFailed("cursor is not a cursor of this list.", [{"loc": ["query", "cursor"], "msg": "bad"}])
    rows = await database.fetch(
        """SELECT d.id, d.event_id, d.event_type, d.status, d.attempts, d.next_attempt_at, d.created_at,
                  d.delivered_at,
                  (SELECT coalesce(jsonb_agg(jsonb_build_object(
                              'attempt', a.attempt, 'started_at', wallet_ts(a.started_at),
                              'duration_ms', a.duration_ms, 'status_code', a.status_code, 'error', a.error)
                              ORDER BY a.attempt), '[]')
                     FROM webhook_attempts a WHERE a.delivery_id = d.id)::text AS attempts_log
             FROM webhook_deliveries d
            WHERE d.endpoint_id = $1 AND ($2::bigint IS NULL OR d.id < $2)
              AND EXISTS (SELECT FROM webhook_endpoints e WHERE e.id = $1 AND e.deleted_at IS NULL)
            ORDER BY d.id DESC LIMIT $3 + 1""",
        internal,
        before,
        limit,
    )
    if not rows and not await database.fetchval(
        "SELECT EXISTS (SELECT FROM webhook_endpoints WHERE id = $1 AND deleted_at IS NULL)", internal
    ):
        raise WebhookNotFound(f"Webhook {webhook_id[:64]} does not exist.")
    items = [
        {
            "id": public_id(row["id"], DELIVERY_PREFIX),
            "event_id": row["event_id"],
            "event_type": row["event_type"],
            "status": row["status"],
            "attempts": orjson.Fragment(row["attempts_log"]),
            "next_attempt_at": timestamp(row["next_attempt_at"]) if row["status"] == "pending" else None,
            "created_at": timestamp(row["created_at"]),
            "delivered_at": timestamp(row["delivered_at"]),
        }
        for row in rows[:limit]
    ]
    next_cursor = public_id(rows[limit - 1]["id"], DELIVERY_PREFIX) if len(rows) > limit else None
    return orjson.dumps({"items": items, "next_cursor": next_cursor})


# --- the dispatcher ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Due:
    id: int
    endpoint_id: int
    url: str
    secrets: list[str]
    event_id: str
    payload: bytes
    attempt: int


class Dispatcher:
    """Fans the feed out into deliveries and sends those that are due; `clock` is the time it goes by (the
    database's unless a test moves it)."""

    def __init__(self, database: Database, settings: Settings, clock: Clock) -> None:
        self.database = database
        self.settings = settings
        self.clock = clock
        self.timeout_s = settings.webhook_timeout_ms / 1000
        self.lease = timedelta(seconds=self.timeout_s + 5)

    async def run(self) -> None:
        async with httpx.AsyncClient(
            timeout=self.timeout_s, follow_redirects=False, headers={"User-Agent": f"wallet-webhooks/{__version__}"}
        ) as http:
            while True:
                try:
                    await self.fan_out()
                    sent = await self.deliver(http)
                    await asyncio.sleep(0 if sent >= DELIVERIES_MAX else POLL_S)
                except WalletError as exc:
                    log.warning("webhook dispatch skipped: %s", exc.detail)
                    await asyncio.sleep(5)
                except Exception:  # the dispatcher must outlive any one failure: logged, then on after a pause
                    log.exception("webhook dispatch failed")
                    await asyncio.sleep(5)

    async def fan_out(self) -> int:
        """Each active endpoint's next events into deliveries, under its row lock (SKIP LOCKED: another dispatcher
        doing it is left to it). Returns the deliveries made."""
        ids = await self.database.fetch(
            "SELECT id FROM webhook_endpoints WHERE disabled_at IS NULL AND deleted_at IS NULL ORDER BY id"
        )
        made = 0
        for row in ids:
            endpoint_id: int = row["id"]
            made += await self.database.run(functools.partial(self._fan_out_one, endpoint_id=endpoint_id))
        return made

    async def _fan_out_one(self, conn: asyncpg.Connection, endpoint_id: int) -> int:
        async with conn.transaction():
            endpoint = await conn.fetchrow(
                f"""SELECT types, {events.STORED_COLUMNS} FROM webhook_endpoints
                    WHERE id = $1 AND disabled_at IS NULL AND deleted_at IS NULL FOR UPDATE SKIP LOCKED""",
                endpoint_id,
            )
            if endpoint is None:
                return 0
            position = events.Position.of_stored(endpoint)
            page = await events.read(conn, position, FAN_OUT_EVENTS_MAX)
            if not page.events:
                return 0
            wanted = set(endpoint["types"])
            rows = [
                (endpoint_id, events.event_id(pos.source, pos.id), kind, document.decode())
                for pos, kind, document in page.events
                if kind in wanted
            ]
            await conn.executemany(
                """INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, payload, next_attempt_at)
                   VALUES ($1, $2, $3, $4, coalesce($5, now())) ON CONFLICT (endpoint_id, event_id) DO NOTHING""",
                [(*row, self.clock()) for row in rows],
            )
            await conn.execute(
                """UPDATE webhook_endpoints SET position_xid = $2::text::xid8, position_source = $3, position_id = $4
                    WHERE id = $1""",
                endpoint_id,
                *page.next.stored,
            )
            return len(rows)

    async def deliver(self, http: httpx.AsyncClient) -> int:
        """Sends the due deliveries (at most DELIVERIES_MAX, at once), each under a lease; records each attempt."""
        now = self.clock()
        rows = await self.database.fetch(
            """WITH due AS (
                   SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
                    WHERE d.status = 'pending' AND d.next_attempt_at <= coalesce($1, now())
                      AND (d.leased_until IS NULL OR d.leased_until <= coalesce($1, now()))
                      AND e.disabled_at IS NULL AND e.deleted_at IS NULL
                    ORDER BY d.next_attempt_at LIMIT $2 FOR UPDATE OF d SKIP LOCKED
               )
               UPDATE webhook_deliveries d
                  SET attempts = d.attempts + 1, leased_until = coalesce($1, now()) + $3::interval
                 FROM due, webhook_endpoints e
                WHERE d.id = due.id AND e.id = d.endpoint_id
               RETURNING d.id, d.endpoint_id, e.url, d.event_id, d.payload, d.attempts,
                         array_remove(ARRAY[e.secret, CASE WHEN e.previous_secret_until > coalesce($1, now())
                                                           THEN e.previous_secret END], NULL) AS secrets""",
            now,
            DELIVERIES_MAX,
            self.lease,
        )
        due = [
            Due(
                r["id"],
                r["endpoint_id"],
                r["url"],
                list(r["secrets"]),
                r["event_id"],
                r["payload"].encode(),
                r["attempts"],
            )
            for r in rows
        ]
        await asyncio.gather(*(self._send(http, delivery) for delivery in due))
        return len(due)

    async def _send(self, http: httpx.AsyncClient, delivery: Due) -> None:
        started = time.monotonic()
        started_at = self.clock()
        status_code: int | None = None
        error: str | None = None
        if not host_allowed(urlsplit(delivery.url).hostname or "", self.settings.webhook_allowed_hosts):
            error = "host not allowed (WALLET_WEBHOOK_ALLOWED_HOSTS)"
        else:
            at = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "Wallet-Event-Id": delivery.event_id,
                "Wallet-Signature": signature_header(delivery.secrets, at, delivery.payload),
            }
            try:
                response = await http.post(delivery.url, content=delivery.payload, headers=headers)
                status_code = response.status_code
            except httpx.TimeoutException:
                error = f"no answer within {self.timeout_s:g} s"
            except Exception as exc:  # any failure to send is the attempt's error (httpx.InvalidURL is no HTTPError)
                error = f"{type(exc).__name__}: {exc}"[:500]
        duration_ms = int((time.monotonic() - started) * 1000)
        delivered = status_code is not None and 200 <= status_code < 300
        try:
            await self.database.run(
                lambda conn: self._record(conn, delivery, started_at, duration_ms, status_code, error, delivered)
            )
        except WalletError as exc:  # the lease runs out and the delivery is sent again
            log.warning("webhook delivery %s not recorded: %s", delivery.id, exc.detail)

    async def _record(
        self,
        conn: asyncpg.Connection,
        delivery: Due,
        started_at: datetime | None,
        duration_ms: int,
        status_code: int | None,
        error: str | None,
        delivered: bool,
    ) -> None:
        async with conn.transaction():
            await conn.execute(
                """INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, status_code, error)
                   VALUES ($1, $2, coalesce($3, now()), $4, $5, $6) ON CONFLICT DO NOTHING""",
                delivery.id,
                delivery.attempt,
                started_at,
                duration_ms,
                status_code,
                error,
            )
            if delivered:
                await conn.execute(
                    """UPDATE webhook_deliveries SET status = 'delivered', delivered_at = coalesce($2, now()),
                                                     leased_until = NULL WHERE id = $1""",
                    delivery.id,
                    self.clock(),
                )
                await conn.execute(
                    "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL",
                    delivery.endpoint_id,
                )
                return
            await conn.execute(
                """UPDATE webhook_deliveries SET leased_until = NULL,
                          next_attempt_at = coalesce($2, now()) + make_interval(secs => $3)
                    WHERE id = $1 AND status = 'pending'""",
                delivery.id,
                self.clock(),
                retry_delay_s(delivery.attempt),
            )
            endpoint = await conn.fetchrow(
                f"""UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, coalesce($2, now()))
                     WHERE id = $1 RETURNING {_ENDPOINT_FIELDS}, coalesce($2, now()) AS now""",
                delivery.endpoint_id,
                self.clock(),
            )
            if (
                endpoint
                and not endpoint["disabled_at"]
                and endpoint["now"] - endpoint["failing_since"] >= DISABLE_AFTER
            ):
                disabled = await conn.fetchrow(
                    f"""UPDATE webhook_endpoints SET disabled_at = coalesce($2, now())
                         WHERE id = $1 AND disabled_at IS NULL RETURNING {_ENDPOINT_FIELDS}""",
                    delivery.endpoint_id,
                    self.clock(),
                )
                if disabled is not None:
                    await conn.execute(
                        "INSERT INTO events (type, data) VALUES ('webhook.disabled', $1::text::jsonb)",
                        orjson.dumps(_endpoint(disabled)).decode(),
                    )
                    log.warning("webhook %s disabled after failing for 72 hours", public_id(delivery.endpoint_id, "wh"))

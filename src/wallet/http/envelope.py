"""The envelope of every request, as pure ASGI middleware: request ids, the body size limit, security headers,
and one log line per request."""

import logging
import re
import time
import uuid

from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wallet import metrics
from wallet.errors import InternalError, PayloadTooLarge
from wallet.http import problems
from wallet.logs import log_request

log = logging.getLogger("wallet.http")

REQUEST_ID_PATTERN = re.compile(r"[\x21-\x7e]{1,200}")  # echoed as given when visible ASCII of sane length
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
UNMATCHED = "unmatched"  # the route label of a request no route took (a 404): paths are not labels
API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
# The pages (Swagger UI, the console) load what they need from this origin only, with no inline script or style;
# Swagger UI's stylesheet draws its icons as data: URLs.
PAGE_CSP = (
    b"content-security-policy",
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
)
PAGES = frozenset(("docs", "console"))  # first path segments


class RequestContext:
    """Per-request facts the log line reports, filled in by handlers."""

    __slots__ = ("key_name", "request_id", "transaction_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.key_name: str | None = None
        self.transaction_id: str | None = None


def context(scope: Scope) -> RequestContext:
    found: RequestContext = scope["state"]["context"]
    return found


class Envelope:
    def __init__(self, app: ASGIApp, body_size_max_bytes: int, body_size_max_bytes_by_path: dict[str, int]) -> None:
        self.app = app
        self.body_size_max_bytes = body_size_max_bytes
        self.body_size_max_bytes_by_path = body_size_max_bytes_by_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"]
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_context = RequestContext(given if REQUEST_ID_PATTERN.fullmatch(given) else uuid.uuid4().hex)
        scope.setdefault("state", {})["context"] = request_context
        status_holder = [500]
        response_started = [False]
        extra_headers = [(b"x-request-id", request_context.request_id.encode()), *SECURITY_HEADERS]
        extra_headers.append(PAGE_CSP if scope["path"][1:].partition("/")[0] in PAGES else API_CSP)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_started[0] = True
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", []), *extra_headers]
            await send(message)

        if scope["method"] == "HEAD":  # every GET route answers HEAD: the GET's status and headers, no body
            scope["method"] = "GET"
            respond: Send = _without_body(send_wrapper)
        else:
            respond = send_wrapper
        body_max = self.body_size_max_bytes_by_path.get(scope["path"], self.body_size_max_bytes)
        too_large = PayloadTooLarge(f"The body is over {body_max} bytes.")
        try:
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > body_max):
                await problems.send(respond, too_large)
                return
            await self.app(scope, self._limited(receive, body_max), respond)
        except PayloadTooLarge:
            await problems.send(respond, too_large)
        except ClientDisconnect:
            status_holder[0] = 499  # the client went away before sending its whole body; nothing to answer
        except Exception:
            log.exception("unhandled error", extra={"fields": {"request_id": request_context.request_id}})
            if not response_started[0]:
                await problems.send(respond, InternalError("Unexpected error; nothing was written."))
        finally:
            duration_s = time.perf_counter() - started
            route = scope.get("route")
            template = route.path if isinstance(route, BaseRoute) and hasattr(route, "path") else UNMATCHED
            metrics.REQUESTS.labels(method, template, status_holder[0]).inc()
            metrics.LATENCY.labels(method, template).observe(duration_s)
            log_request(
                method=method,
                path=scope["path"],
                status=status_holder[0],
                duration_ms=round(duration_s * 1000, 3),
                request_id=request_context.request_id,
                key=request_context.key_name,
                transaction_id=request_context.transaction_id,
            )

    @staticmethod
    def _limited(receive: Receive, body_max: int) -> Receive:
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > body_max:
                    raise PayloadTooLarge("body too large")
            return message

        return limited_receive


def _without_body(send: Send) -> Send:
    """What a HEAD request gets: the response's start (its content-length included), then an empty body."""

    async def send_head(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return send_head

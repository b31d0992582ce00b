"""Optional OpenTelemetry tracing: off unless OTEL_EXPORTER_OTLP_ENDPOINT is set, and then it needs the `otel` extra
(`pip install 'wallet[otel]'`).

One span per request (OpenTelemetry's ASGI middleware, outside the envelope, so it covers all of a request), the
request id as its attribute `wallet.request_id`, and one span per database call (asyncpg's instrumentation). Spans go
to the OTLP/HTTP endpoint in batches; everything else is configured by OpenTelemetry's own OTEL_* variables
(OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER...).
"""

import logging
import os

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("wallet.tracing")
ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"
REQUEST_ID_ATTRIBUTE = "wallet.request_id"

_configured: bool | None = None  # once per process: the provider and asyncpg's patch are process-wide


def enabled() -> bool:
    """Whether requests are traced: the endpoint is set and the extra is installed (said once, if it is not)."""
    global _configured
    if _configured is None:
        _configured = bool(os.environ.get(ENDPOINT_VARIABLE)) and _configure()
    return _configured


def _configure() -> bool:
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.error("%s is set but the otel extra is not installed: requests are not traced", ENDPOINT_VARIABLE)
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "wallet")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # the endpoint from the environment
    trace.set_tracer_provider(provider)
    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    return True


class RequestIdAttribute:
    """Inside the envelope (which settles the request id): names the request's span with it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            from opentelemetry import trace

            trace.get_current_span().set_attribute(REQUEST_ID_ATTRIBUTE, scope["state"]["context"].request_id)
        await self.app(scope, receive, send)


class RequestSpans:
    """Outside the envelope: a span per request (OpenTelemetry's ASGI middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        self.app = OpenTelemetryMiddleware(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

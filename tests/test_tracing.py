"""Optional OpenTelemetry tracing (README "Tracing"): with OTEL_EXPORTER_OTLP_ENDPOINT set, a real `wallet serve`
sends one span per request, carrying the request id, and a span per database call within it, to an OTLP/HTTP
receiver (here a plain HTTP server on 127.0.0.1 that decodes what it gets with OpenTelemetry's own protobufs)."""

import gzip
import http.server
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.conftest import Keys, serving
from tests.support import free_port, idem, movement


class Receiver(http.server.ThreadingHTTPServer):
    spans: list[Span]


class Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.server.spans.extend(scope.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(("127.0.0.1", free_port()), Handler)
    server.spans = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def attributes(span: Span) -> dict[str, str]:
    return {a.key: a.value.string_value or str(a.value.int_value) for a in span.attributes}


def test_a_request_is_a_span_with_its_request_id_and_its_database_calls_within(
    receiver: Receiver, database_url: str, api_keys: Keys
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds between exports
    }
    request_id = f"trace-{uuid.uuid4().hex}"
    with serving(database_url, env) as base:
        headers = {**api_keys.headers("admin"), "Idempotency-Key": idem(), "X-Request-Id": request_id}
        response = httpx.post(f"{base}/v1/topups", json=movement("alice", 5), headers=headers, timeout=10)
        assert response.status_code == 201, response.text
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ours = [s for s in list(receiver.spans) if attributes(s).get("wallet.request_id") == request_id]
            if ours and any(s.trace_id == ours[0].trace_id and "db.system" in attributes(s) for s in receiver.spans):
                break
            time.sleep(0.1)
    [request_span] = ours
    assert request_span.kind == Span.SpanKind.SPAN_KIND_SERVER
    in_trace = [s for s in receiver.spans if s.trace_id == request_span.trace_id]
    database_calls = [s for s in in_trace if attributes(s).get("db.system") == "postgresql"]
    assert database_calls, [s.name for s in in_trace]
    spans_by_id = {s.span_id: s for s in in_trace}
    for call in database_calls:  # each call's ancestors lead to the request's span
        parent = call
        while parent.parent_span_id and parent.span_id != request_span.span_id:
            parent = spans_by_id[parent.parent_span_id]
        assert parent.span_id == request_span.span_id, call.name
        assert request_span.start_time_unix_nano <= call.start_time_unix_nano <= request_span.end_time_unix_nano

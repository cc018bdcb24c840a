"""Stand-ins for the servers a generated project's telemetry reports to, on 127.0.0.1.

`OtlpReceiver` is an OTLP/HTTP trace receiver: it decodes each `ExportTraceServiceRequest`
with the `opentelemetry-proto` package, as a collector does, and keeps the spans. `SentryServer`
accepts envelopes at a DSN's `/api/<project>/envelope/`, as Sentry and GlitchTip do, and keeps
the events. Each is an HTTP server in a thread of the test process (no collector or Sentry can be
installed here), used by the tests and the benchmarks alike.
"""

import contextlib
import gzip
import json
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

TRACES_PATH = "/v1/traces"
SERVER_SPAN, CLIENT_SPAN = 2, 3  # SpanKind in the OTLP protocol


@dataclass(frozen=True)
class Span:
    """One span as the receiver got it."""

    service: str
    trace_id: str  # 32 hex digits
    span_id: str
    parent_span_id: str  # empty for a root span
    name: str
    kind: int  # SERVER_SPAN, CLIENT_SPAN, ...
    attributes: dict[str, Any]
    pid: int | None  # process.pid of the resource: which worker sent it


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _body(handler: BaseHTTPRequestHandler) -> bytes:
    body = handler.rfile.read(int(handler.headers.get("Content-Length", "0")))
    encoding = handler.headers.get("Content-Encoding", "")
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


class _Server:
    """A threaded HTTP server on a free port of 127.0.0.1 and what it received."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.received: list[Any] = []
        self.requests = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def keep(self, items: list[Any]) -> None:
        with self.lock:
            self.requests += 1
            self.received.extend(items)

    def wait_for(self, found: Callable[[list[Any]], list[Any]], timeout: float = 20.0) -> list[Any]:
        """What `found` picks from everything received, once it picks something; [] on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                picked = found(list(self.received))
            if picked or time.monotonic() > deadline:
                return picked
            time.sleep(0.05)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _OtlpHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        if self.path != TRACES_PATH:
            self.send_error(404)
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(_body(self))
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        Span(
                            service=str(resource.get("service.name", "")),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            pid=resource.get("process.pid"),
                        )
                    )
        self.server.owner.keep(spans)  # type: ignore[attr-defined]
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class OtlpReceiver(_Server):
    """An OTLP/HTTP receiver: OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint."""

    def __init__(self) -> None:
        super().__init__(_OtlpHandler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans_of_trace(self, trace_id: str, timeout: float = 20.0) -> list[Span]:
        """The spans of a trace, once its server span is in (it ends last: the spans inside it
        came in the same batch or before)."""

        def complete(spans: list[Span]) -> list[Span]:
            found = [span for span in spans if span.trace_id == trace_id]
            return found if any(span.kind == SERVER_SPAN for span in found) else []

        return self.wait_for(complete, timeout)


def envelope_events(body: bytes) -> list[dict[str, Any]]:
    """The events of a Sentry envelope: a header line, then items, each a header line and a
    payload of its `length` (or up to the next newline)."""
    events = []
    rest = body.split(b"\n", 1)[1] if b"\n" in body else b""
    while rest.strip():
        header_line, _, rest = rest.partition(b"\n")
        header = json.loads(header_line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"] + 1 :]
        else:
            payload, _, rest = rest.partition(b"\n")
        if header.get("type") == "event":
            events.append(json.loads(payload))
    return events


class _SentryHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        parts = self.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "api" or parts[2] != "envelope":
            self.send_error(404)
            return
        self.server.owner.keep(envelope_events(_body(self)))  # type: ignore[attr-defined]
        answer = b'{"id": "0"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class SentryServer(_Server):
    """A Sentry-protocol endpoint: SENTRY_DSN=server.dsn (project 42)."""

    def __init__(self) -> None:
        super().__init__(_SentryHandler)

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.port}/42"


@contextlib.contextmanager
def silent_endpoint() -> Iterator[str]:
    """A collector's address that accepts connections (the kernel's backlog) and never reads or
    answers: each export to it waits for its timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4096)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"

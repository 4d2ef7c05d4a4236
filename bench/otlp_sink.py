"""A stand-in for Jaeger's OTLP/HTTP receiver (`POST /v1/traces`, protobuf): it decodes every
export and keeps the spans, so a test can read the traces real processes sent, and a bench can
measure tracing with its export cost included (the exporter talks to a real endpoint).

No Jaeger or OpenTelemetry Collector build installs from the registries this machine reaches
(see README, Traces): this is the smallest receiver that speaks the same protocol."""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    links: tuple[tuple[str, str], ...]
    """(trace id, span id) of each linked span."""
    attributes: dict[str, Any] = field(hash=False)
    start_ns: int = 0


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class OtlpSink:
    """`with OtlpSink() as sink:` serves on `sink.endpoint` (for OTEL_EXPORTER_OTLP_ENDPOINT)."""

    def __init__(self, *, keep: bool = True) -> None:
        self.keep = keep
        self.spans: list[ReceivedSpan] = []
        self.count = 0
        self.exports = 0
        self.requests: list[tuple[str, str, str]] = []
        """(method, path, content type) of every request."""
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with sink._lock:
                    sink.requests.append(("POST", self.path, self.headers.get("content-type", "")))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                if self.headers.get("content-encoding") == "gzip":  # OTEL_EXPORTER_OTLP_COMPRESSION
                    body = gzip.decompress(body)
                sink._received(body)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> OtlpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _received(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        found: list[ReceivedSpan] = []
        count = 0
        for resource_spans in request.resource_spans:
            attributes = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            service = str(attributes.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                count += len(scope_spans.spans)
                if not self.keep:
                    continue
                for span in scope_spans.spans:
                    found.append(
                        ReceivedSpan(
                            service,
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                            {a.key: _value(a.value) for a in span.attributes},
                            span.start_time_unix_nano,
                        )
                    )
        with self._lock:
            self.spans.extend(found)
            self.count += count
            self.exports += 1

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def trace_of(self, attribute: str, wanted: str) -> list[ReceivedSpan]:
        """Every span of the traces holding a span whose `attribute` reads `wanted`."""
        with self._lock:
            traces = {span.trace_id for span in self.spans if str(span.attributes.get(attribute)) == wanted}
            return [span for span in self.spans if span.trace_id in traces]

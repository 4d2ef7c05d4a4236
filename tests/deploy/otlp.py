"""A stand-in for Jaeger's OTLP/HTTP receiver (port 4318): takes `POST /v1/traces` with an
`ExportTraceServiceRequest` in protobuf, as the OpenTelemetry SDK's OTLP/HTTP exporter sends it,
answers 200 with an empty response, and keeps every span it was sent, decoded. What the deploy
test maps compose's `http://jaeger:4318` to when it runs the containers as local processes."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass(frozen=True)
class Span:
    service: str
    """The resource's `service.name`."""
    name: str
    trace_id: str
    attributes: dict[str, Any]


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    return None if kind is None else getattr(any_value, kind)


@dataclass
class OtlpReceiver:
    spans: list[Span] = field(default_factory=list)
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    """(method, path, content type) of every request."""
    server: asyncio.Server | None = None

    @property
    def endpoint(self) -> str:
        """What OTEL_EXPORTER_OTLP_ENDPOINT names (the exporter appends /v1/traces)."""
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """HTTP/1.1 with keep-alive, as the exporter's `requests` session speaks it."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                headers = {
                    name.strip().lower(): raw.strip()
                    for name, _, raw in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                self.requests.append((method, path, headers.get("content-type", "")))
                if method == "POST" and path == "/v1/traces":
                    self.keep(body)
                    status, answer = "200 OK", ExportTraceServiceResponse().SerializeToString()
                else:
                    status, answer = "404 Not Found", b""
                writer.write(
                    f"HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\n"
                    f"content-length: {len(answer)}\r\n\r\n".encode()
                    + answer
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def keep(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            resource = {item.key: value(item.value) for item in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Span(
                            str(resource.get("service.name", "")),
                            span.name,
                            span.trace_id.hex(),
                            {item.key: value(item.value) for item in span.attributes},
                        )
                    )

    def trace_of(self, attribute: str, wanted: str) -> list[Span]:
        """Every span of the traces that hold a span with `attribute` = `wanted`."""
        traces = {span.trace_id for span in self.spans if str(span.attributes.get(attribute)) == wanted}
        return [span for span in self.spans if span.trace_id in traces]

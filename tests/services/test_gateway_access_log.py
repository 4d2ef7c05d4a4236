"""The gateway's access log: a line per sampled request with its route template and status, every
5xx whatever the ratio, and, inside a traced request, the trace id."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from bourse.adapters import tracing
from bourse.entrypoints.rest.access_log import AccessLog
from bourse.entrypoints.rest.http_metrics import Message, RouteTemplates
from bourse.entrypoints.rest.request_tracing import RequestTracing
from bourse.runtime.logs import TraceContextFilter

ROUTES = RouteTemplates(["/api/v3/order/{order_id}", "/api/v3/markets"])


def answering(status: int) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


async def call(app: Any, path: str) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "client": ("10.0.0.7", 5555)}
    await app(scope, receive, send)
    return sent


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="bourse.gateway.access")
    caplog.handler.addFilter(TraceContextFilter())
    return caplog


async def test_every_request_is_logged_by_route_template_at_ratio_one(
    access: pytest.LogCaptureFixture,
) -> None:
    await call(AccessLog(answering(200), ROUTES, 1.0), "/api/v3/order/123456")
    [record] = access.records
    line: Any = record
    assert (line.method, line.route, line.path, line.status, line.client) == (
        "GET",
        "/api/v3/order/{order_id}",
        "/api/v3/order/123456",
        200,
        "10.0.0.7",
    )
    assert line.duration_ms >= 0


async def test_a_tiny_ratio_logs_no_success_but_every_server_error(access: pytest.LogCaptureFixture) -> None:
    for _ in range(50):
        await call(AccessLog(answering(200), ROUTES, 1e-9), "/api/v3/markets")
    assert access.records == []
    await call(AccessLog(answering(503), ROUTES, 1e-9), "/api/v3/markets")
    assert [getattr(record, "status", None) for record in access.records] == [503]


async def test_inside_a_traced_request_the_line_carries_the_trace_id_the_client_is_told(
    access: pytest.LogCaptureFixture,
) -> None:
    exporter = InMemorySpanExporter()
    previous = tracing.install(
        tracing.Tracing([SimpleSpanProcessor(exporter)], tracing.FollowLinks(ALWAYS_ON))
    )
    try:
        tracer = tracing.tracer("gateway")
        assert tracer is not None
        app = RequestTracing(AccessLog(answering(200), ROUTES, 1.0), tracer, ROUTES)
        sent = await call(app, "/api/v3/markets")
    finally:
        tracing.install(previous)
    headers = dict(sent[0]["headers"])
    told = tracing.parse_traceparent(headers[b"traceresponse"].decode())
    assert told is not None
    [record] = access.records
    assert getattr(record, "trace_id", None) == f"{told.trace_id:032x}"
    [span] = exporter.get_finished_spans()
    assert span.name == "GET /api/v3/markets"

"""Where an order's trace starts over REST: a SERVER span per request, named by its route
template, the child of the client's own `traceparent` when it sent one.

The span is current while the app handles the request, so the order intake opens its
`order intake` span under it and sends that context on with the command (`bourse.adapters.tracing`);
the gateway answers with a `traceresponse` header (W3C Trace Context level 2) naming the trace,
so a client can find its order's trace. Installed only when tracing is on."""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import SpanKind, StatusCode, Tracer

from bourse.adapters import tracing
from bourse.entrypoints.rest.http_metrics import ASGIApp, Message, Receive, RouteTemplates, Scope, Send


class RequestTracing:
    def __init__(self, app: ASGIApp, tracer: Tracer, routes: RouteTemplates) -> None:
        self.app = app
        self.tracer = tracer
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, route = scope["method"], self.routes(scope["path"])
        carrier: dict[str, Any] = {
            key.decode("latin-1"): value
            for key, value in scope.get("headers", ())
            if key in (b"traceparent", b"tracestate")
        }
        with self.tracer.start_as_current_span(
            f"{method} {route}",
            context=tracing.incoming_context(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route, "url.path": scope["path"]},
        ) as span:
            context = span.get_span_context()
            response_header = (b"traceresponse", tracing.traceparent(context).encode())

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(StatusCode.ERROR)
                    if context.trace_flags.sampled:
                        message = {**message, "headers": [*message.get("headers", ()), response_header]}
                await send(message)

            await self.app(scope, receive, send_traced)

"""The gateway's access log: one structured line per sampled request (`BOURSE_ACCESS_LOG_SAMPLE`,
a ratio; off by default: at thousands of requests a second a line each costs more than the
request), and one for every 5xx whatever the ratio. Inside the request's span, the line carries
its `trace_id` (`bourse.runtime.logs`)."""

from __future__ import annotations

import logging
import random
import time

from bourse.entrypoints.rest.http_metrics import ASGIApp, Message, Receive, RouteTemplates, Scope, Send

log = logging.getLogger("bourse.gateway.access")


class AccessLog:
    def __init__(self, app: ASGIApp, routes: RouteTemplates, sample: float) -> None:
        self.app = app
        self.routes = routes
        self.sample = sample

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_seen(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_seen)
        finally:
            if status >= 500 or random.random() < self.sample:
                client = scope.get("client")
                log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "route": self.routes(scope["path"]),
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                        "client": client[0] if client else None,
                    },
                )

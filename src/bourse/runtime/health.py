"""The per-process health endpoint: `GET /healthz` (all services, 200 or 503),
`GET /livez` (the process answers) and `GET /metrics` (the services' Prometheus text, when a
metrics source is given). Plain ASGI: no framework for three routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
HealthSource = Callable[[], Mapping[str, Any]]
MetricsSource = Callable[[], str]

PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"


class HealthApp:
    def __init__(self, source: HealthSource, metrics: MetricsSource | None = None) -> None:
        self.source = source
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        body: dict[str, Any]
        if path == "/metrics" and self.metrics is not None:
            await self._send(send, 200, PROMETHEUS_TEXT, self.metrics().encode())
            return
        if path == "/livez":
            status, body = 200, {"ok": True}
        elif path == "/healthz":
            body = dict(self.source())
            status = 200 if body.get("ok") else 503
        else:
            status, body = 404, {"ok": False, "error": "not_found"}
        await self._send(send, status, b"application/json", msgspec.json.encode(body))

    @staticmethod
    async def _send(send: Send, status: int, content_type: bytes, payload: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

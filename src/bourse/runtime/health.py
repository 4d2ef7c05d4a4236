"""The per-process health endpoint: `GET /healthz` (all services, 200 or 503) and
`GET /livez` (the process answers). Plain ASGI: no framework for two routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
HealthSource = Callable[[], Mapping[str, Any]]


class HealthApp:
    def __init__(self, source: HealthSource) -> None:
        self.source = source

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        body: dict[str, Any]
        if path == "/livez":
            status, body = 200, {"ok": True}
        elif path == "/healthz":
            body = dict(self.source())
            status = 200 if body.get("ok") else 503
        else:
            status, body = 404, {"ok": False, "error": "not_found"}
        payload = msgspec.json.encode(body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

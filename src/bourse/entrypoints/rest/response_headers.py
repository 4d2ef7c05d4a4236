"""The gateway's caching rule, the same for both HTTP paths: an ASGI wrapper around the hot path
and FastAPI together, so whichever answers (and whatever it answers: 2xx, 404, 405, 422, 5xx)
the response carries the same headers.

`Cache-Control: no-store` on every answer except public market data and the API docs. An
answer for a member (an order, its orders, balances, trades) and every answer to a write must
never be kept by a browser, a proxy or a CDN: a shared cache would hand one member's balances
to the next asker, and even a private one keeps them on disk after logout. The rule is
"private unless listed public", so a member route added later is covered without anyone
remembering to.

Public market data (`/markets...`, `/tickers`) and the docs (`/docs...`, `/openapi.json`), read
with GET or HEAD, get no `Cache-Control`: they hold nothing of any member, so a cache may keep
them, but they change with every trade, so the gateway promises no freshness lifetime; whoever
puts a cache in front (e.g. a CDN absorbing a crowd watching one order book) chooses its TTL
there. The docs assets carry `ETag`/`Last-Modified` (static files) and revalidate.

`nosniff` and the absent `server:` banner are the HTTP server's (`bourse.adapters.http_server`):
they are on every answer of the port, even those no app sees.

An exception that escapes before any answer started (the hot path has no framework to catch
it) is answered here with the same 500 problem as FastAPI's handler gives, then re-raised so the
server logs it; uvicorn's own 500 would carry neither the problem body nor these headers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from bourse.entrypoints.rest.errors import PROBLEM_JSON, internal_error_body

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_PATHS = ("/api/v3/markets", "/api/v3/tickers", "/api/v3/docs", "/api/v3/openapi.json")
"""Paths (and everything below them) whose GET/HEAD answers may be cached: see the module."""
NO_STORE = (b"cache-control", b"no-store")


def is_public(method: str, path: str) -> bool:
    """A read of public market data or of the docs: nothing of a member in it."""
    if method not in ("GET", "HEAD"):
        return False
    return any(path == prefix or path.startswith(prefix + "/") for prefix in PUBLIC_PATHS)


class ResponseHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        private = not is_public(scope["method"], scope["path"])
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if private:
                    headers = [
                        (name, value)
                        for name, value in message.get("headers", ())
                        if name != b"cache-control"
                    ]
                    headers.append(NO_STORE)
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            if not started:
                payload = msgspec.json.encode(internal_error_body())
                await send_with_headers(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", PROBLEM_JSON.encode()),
                            (b"content-length", str(len(payload)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": payload})
            raise

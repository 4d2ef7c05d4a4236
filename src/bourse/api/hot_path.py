"""POST /api/v3/order without the framework: the one route that carries the load.

Measured per request on the reference box, FastAPI's routing, dependency solving and response
validation cost about three times the work the route itself does. This ASGI front serves
`POST /api/v3/order` with the very same code (`bourse.api.orders.place_order`, the same pydantic
`OrderIn` schema, the same problem+json errors) and hands every other request to FastAPI, which
also keeps documenting the route. `BOURSE_GATEWAY_HOT_PATH=false` turns it off, to compare.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from pydantic import ValidationError

from bourse.api.deps import GatewayDeps, member_of_token
from bourse.api.errors import INVALID_REQUEST, PROBLEM_JSON, ApiError, problem_body, schema_errors
from bourse.api.orders import place_order
from bourse.api.schemas import OrderIn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ORDER_PATH = "/api/v3/order"
MAX_BODY = 16 * 1024
_JSON = b"application/json"


class OrderHotPath:
    def __init__(self, app: ASGIApp, deps: GatewayDeps) -> None:
        self.app = app
        self.deps = deps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == ORDER_PATH:
            await self._place(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _place(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            token = ""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    scheme, _, credentials = value.decode("latin-1").partition(" ")
                    if scheme.lower() == "bearer":
                        token = credentials.strip()
                    break
            member = member_of_token(self.deps, token)
            raw = await _read_body(receive)
            try:
                body = OrderIn.model_validate_json(raw)
            except ValidationError as exc:
                raise ApiError(
                    422, "invalid_request", INVALID_REQUEST, errors=schema_errors(exc.errors())
                ) from exc
            status, out = await place_order(self.deps, member, body)
            await _respond(send, status, out.model_dump_json().encode(), _JSON)
        except ApiError as exc:
            payload = msgspec.json.encode(problem_body(exc.status, exc.code, exc.detail, **exc.extra))
            await _respond(send, exc.status, payload, PROBLEM_JSON.encode(), exc.headers)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "invalid_request", "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, "body_too_large", f"an order body is at most {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(
    send: Send, status: int, payload: bytes, content_type: bytes, headers: dict[str, str] | None = None
) -> None:
    raw_headers = [(b"content-type", content_type), (b"content-length", str(len(payload)).encode())]
    if headers:
        raw_headers.extend((name.lower().encode(), value.encode()) for name, value in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})

"""POST /api/v3/order and DELETE /api/v3/order/{id} without the framework: the routes that
carry the load.

Measured per request on the reference box, FastAPI's routing, dependency solving and response
validation cost about three times the work the route itself does. This ASGI front serves those
two routes with the very same code (`bourse.entrypoints.rest.orders.place_order` and `cancel_order`, the same
pydantic schemas, the same problem+json errors) and hands every other request to FastAPI, which
also keeps documenting them. `BOURSE_GATEWAY_HOT_PATH=false` turns it off, to compare.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from pydantic import ValidationError

from bourse.entrypoints.rest.deps import GatewayDeps, member_of_token
from bourse.entrypoints.rest.errors import (
    INVALID_REQUEST,
    PROBLEM_JSON,
    ApiError,
    problem_body,
    schema_errors,
)
from bourse.entrypoints.rest.orders import RETRY_AFTER, cancel, place_order
from bourse.entrypoints.rest.schemas import OrderIn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ORDER_PATH = "/api/v3/order"
ORDER_ITEM_PREFIX = "/api/v3/order/"
MAX_BODY = 16 * 1024
_JSON = b"application/json"


class OrderHotPath:
    def __init__(self, app: ASGIApp, deps: GatewayDeps) -> None:
        self.app = app
        self.deps = deps
        self.served = 0
        """Requests answered here rather than by the framework."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if method == "POST" and path == ORDER_PATH:
                self.served += 1
                await self._place(scope, receive, send)
                return
            if method == "DELETE" and path.startswith(ORDER_ITEM_PREFIX):
                order_id = path[len(ORDER_ITEM_PREFIX) :]
                if order_id and "/" not in order_id:
                    self.served += 1
                    await self._cancel(scope, order_id, send)
                    return
        await self.app(scope, receive, send)

    def _member(self, scope: Scope) -> int:
        token = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    token = credentials.strip()
                break
        return member_of_token(self.deps, token)

    async def _cancel(self, scope: Scope, order_id: str, send: Send) -> None:
        try:
            status, out = await cancel(self.deps, self._member(scope), order_id)
            headers = RETRY_AFTER if status == 202 else None
            await _respond(send, status, out.model_dump_json().encode(), _JSON, headers)
        except ApiError as exc:
            await _problem(send, exc)

    async def _place(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            member = self._member(scope)
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
            await _problem(send, exc)


async def _problem(send: Send, exc: ApiError) -> None:
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

"""A keep-alive HTTP/1.1 client connection for load generation, on asyncio.Protocol and
httptools (the parser uvicorn uses).

Why not aiohttp: on this 2-core box the load generator shares the CPU with the system under
test, and aiohttp's client spent ~300 µs of CPU per request (sessions, header multidicts,
timeouts, response objects). This connection writes pre-built request bytes and parses the
answer in C: a fraction of that, so the box's CPU goes to the server being measured. One
request at a time per connection, which is what the benchmark's clients do.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools


class HttpError(Exception):
    """The connection closed or the answer could not be parsed."""


class LeanHttpConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> LeanHttpConnection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, host, port)
        return protocol

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"bad response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._fail(HttpError(f"connection closed: {exc!r}"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        body, self._body = b"".join(self._body), []
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), body))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def request(self, raw: bytes, timeout: float) -> tuple[int, bytes]:
        """Send one complete request (bytes as built by `build_request`); (status, body)."""
        if self._closed or self._transport is None:
            raise HttpError("connection closed")
        waiter: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._transport.write(raw)
        handle = asyncio.get_running_loop().call_later(timeout, self._timeout, waiter)
        try:
            return await waiter
        finally:
            handle.cancel()

    def _timeout(self, waiter: asyncio.Future[tuple[int, bytes]]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError())
            self.close()  # the late answer would otherwise be taken for the next request's

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()


def build_request(method: str, host: str, path: str, headers: bytes, body: bytes = b"") -> bytes:
    """`headers`: pre-joined `Name: value\\r\\n` lines (the member's authorization)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n".encode()
    return head + headers + b"\r\n" + body

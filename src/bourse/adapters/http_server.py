"""Uvicorn as a task inside our event loop, leaving signals to the process supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from typing import Any

import uvicorn


class _QuietSignalsServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


SERVER_HEADERS = [("x-content-type-options", "nosniff")]
"""Sent by uvicorn itself on every answer of every server here, before the app's own headers:
so also on the answers no app sees (uvicorn's own 400 for a malformed request, its 500 when an
app fails before answering). `nosniff`: a browser takes a body for its declared type only (a
JSON error is never run as script or rendered as HTML)."""


class HttpServer:
    """Serve an ASGI app on host:port until `stop()`; `port=0` picks a free port.

    No `server:` header (uvicorn's banner tells an attacker which parser to aim at), and
    `SERVER_HEADERS` on every answer."""

    def __init__(self, app: Any, host: str, port: int, *, access_log: bool = False) -> None:
        self.host = host
        self.port = port
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            access_log=access_log,
            log_config=None,
            lifespan="off",
            loop="none",
            server_header=False,
            headers=list(SERVER_HEADERS),
        )
        self._server = _QuietSignalsServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # proto=IPPROTO_TCP, not the default 0: asyncio turns Nagle off (TCP_NODELAY) on accepted
        # connections only when their proto says TCP. With Nagle on, a keep-alive client waits for
        # the delayed ACK (~40 ms) before the second write of each response (headers, then body).
        sock = socket.socket(
            socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=f"http:{self.port}")
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

"""A pausable TCP proxy for fault injection: put it between a service and MariaDB, Redis or
RabbitMQ, then switch it between three states.

- `up`: bytes flow both ways.
- `refuse`: every connection is reset (RST) and new ones are closed at once, as a stopped server
  or a firewall REJECT does: the client learns at once.
- `blackhole`: connections stay open but nothing flows either way, and new connections are
  accepted and then ignored, as a dropped route or a firewall DROP does: the client learns only
  from its own timeouts. Bytes held back are discarded, not delivered later.

It runs in the test's own event loop (`start`/`close`) or in a thread of its own
(`ThreadedProxy`), so it keeps forwarding while the test's loop awaits something else.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from enum import StrEnum


class ProxyState(StrEnum):
    UP = "up"
    REFUSE = "refuse"
    BLACKHOLE = "blackhole"


class _Pipe:
    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server

    def reset(self) -> None:
        for writer in (self.client, self.server):
            sock = writer.get_extra_info("socket")
            if sock is not None:  # SO_LINGER 0: close() sends RST, not FIN
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self.state = ProxyState.UP
        self._server: asyncio.Server | None = None
        self._pipes: set[_Pipe] = set()
        self._held: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def set_state(self, state: ProxyState | str) -> None:
        self.state = ProxyState(state)
        if self.state is ProxyState.REFUSE:
            for pipe in list(self._pipes):
                pipe.reset()
            self._pipes.clear()
            for writer in list(self._held):
                writer.transport.abort()
            self._held.clear()
        elif self.state is ProxyState.UP:
            # held connections never reached the server: the client must start again
            for writer in list(self._held):
                writer.transport.abort()
            self._held.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.reset()
        for writer in list(self._held):
            writer.transport.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.state is ProxyState.REFUSE:
            _Pipe(writer, writer).reset()
            return
        if self.state is ProxyState.BLACKHOLE:
            self._held.add(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _Pipe(writer, writer).reset()
            return
        pipe = _Pipe(writer, up_writer)
        self._pipes.add(pipe)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except asyncio.CancelledError:
            # the proxy is closing: end quietly (asyncio's stream callback would report the
            # cancelled connection task as an error in the middle of the suite's output)
            return
        finally:
            self._pipes.discard(pipe)
            for w in (writer, up_writer):
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                if self.state is ProxyState.BLACKHOLE:
                    continue  # dropped on the floor, as a black-holed route does
                if self.state is ProxyState.REFUSE:
                    return
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ConnectionError):
            # one side reset (a client killed with unread data in its socket sends RST, not FIN):
            # pass the reset on, as the network would. Swallowed, it left the other side's
            # connection open forever: a killed persistence's transaction kept its row locks
            # in MariaDB, and the next instance waited on them (fault suite, kill-persistence).
            writer.transport.abort()


class ThreadedProxy:
    """A `FaultProxy` in its own thread and event loop: it forwards whatever the caller's loop
    is doing (a test's blocking call, a subprocess under load)."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._proxy = FaultProxy(upstream_host, upstream_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)

    def __enter__(self) -> ThreadedProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._proxy.start(), self._loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        """Close the proxy, then end the connection tasks still pumping or held: closing the
        loop under them printed "Task was destroyed but it is pending!" for each."""
        await self._proxy.close()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def port(self) -> int:
        return self._proxy.port

    @property
    def state(self) -> ProxyState:
        return self._proxy.state

    def set_state(self, state: ProxyState | str) -> None:
        async def apply() -> None:
            self._proxy.set_state(state)

        asyncio.run_coroutine_threadsafe(apply(), self._loop).result(5)

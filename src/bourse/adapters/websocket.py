"""WebSocket server connections over picows (chosen by measurement, `bench/ws_library_bench.py`:
about 6-8 CPU µs per delivered message and 10 KB per idle connection on the reference box, against
10-12 µs and 14 KB for `websockets`).

A thin adapter: `serve_websockets(handler, host, port, ...)` starts a server on `path`; every
connection is a `WsConnection` that hands complete text messages to the handler and sends bytes
as text frames. What picows leaves to its user is done here, once:

- frames are messages only when final and text: a fragmented or binary frame closes the
  connection with 1003 (unsupported data); a frame over `max_frame_size` is closed by picows
  with 1009;
- the peer's CLOSE is answered and the socket closed;
- writes never block: picows buffers them in the transport; `buffered()` says how much is
  waiting, so the caller bounds each connection (see `WsConnection.send`);
- protocol pings: picows pings an idle peer and drops one that does not answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

log = logging.getLogger(__name__)
CONNECTION_LOG = logging.getLogger("bourse.pusher.ws")
CONNECTION_LOG.setLevel(logging.WARNING)
"""picows logs every connection and disconnection at INFO: tens of thousands of lines a crowd."""

CLOSE_GRACE_S = 1.0
"""After a close frame is queued, how long a peer has to read it before the socket is cut."""


class ConnectionHandler(Protocol):
    """What the service does with connections (`bourse.services.pusher`)."""

    def connected(self, conn: WsConnection) -> None: ...

    def received(self, conn: WsConnection, data: bytes) -> None: ...

    def disconnected(self, conn: WsConnection) -> None: ...


class WsConnection(WSListener):
    """One client connection; `state` is the service's (its subscriptions, its member)."""

    def __init__(self, handler: ConnectionHandler) -> None:
        super().__init__()
        self.handler = handler
        self.transport: WSTransport | None = None
        self.peer_ip = ""
        self.closing = False
        self.state: Any = None

    # picows callbacks

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        peer = transport.underlying_transport.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if peer else ""
        self.handler.connected(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT and frame.fin:
            self.handler.received(self, frame.get_payload_as_bytes())
        elif kind == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif kind in (WSMsgType.PING, WSMsgType.PONG):
            return  # answered by picows (auto pong)
        else:
            self.close(WSCloseCode.UNSUPPORTED_DATA.value, "text messages only, unfragmented")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closing = True
        self.handler.disconnected(self)

    # the service's side

    def send(self, data: bytes) -> int:
        """Queue one text message; the bytes then waiting for this peer (0 once closed)."""
        transport = self.transport
        if transport is None or self.closing:
            return 0
        transport.send(WSMsgType.TEXT, data)
        return int(transport.underlying_transport.get_write_buffer_size())

    def close(self, code: int, reason: str) -> None:
        """Queue a close frame with `code`, then cut the socket after `CLOSE_GRACE_S`."""
        transport = self.transport
        if transport is None or self.closing:
            return
        self.closing = True
        # picows takes any 16-bit code (its enum lists the standard ones): 4xxx are ours
        close_code: Any = code
        transport.send_close(close_code, reason.encode()[:120])
        asyncio.get_running_loop().call_later(CLOSE_GRACE_S, transport.disconnect, False)


async def serve_websockets(
    handler: ConnectionHandler,
    host: str,
    port: int,
    *,
    path: str = "/ws",
    max_frame_size: int = 64 * 1024,
    ping_idle_s: float = 20.0,
    ping_reply_s: float = 10.0,
) -> asyncio.Server:
    """Serve `path` on host:port (port 0: any); other paths answer 404."""
    wanted = path.encode()

    def factory(request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener:
        if request.path != wanted:
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_error_response(404), None)
        return WsConnection(handler)

    options: dict[str, Any] = {
        "backlog": 4096,
        "enable_auto_ping": True,
        "auto_ping_idle_timeout": ping_idle_s,
        "auto_ping_reply_timeout": ping_reply_s,
        "auto_ping_strategy": WSAutoPingStrategy.PING_WHEN_IDLE,
        "max_frame_size": max_frame_size,
        "read_buffer_init_size": 1024,
        # picows makes a child logger per connection from a Logger (kilobytes each): an adapter
        # is shared; picows' aiofastnet transports cost ~5 KB more per connection
        "logger_name": logging.LoggerAdapter(CONNECTION_LOG),
        "use_aiofastnet": False,
    }
    server: asyncio.Server = await ws_create_server(_typed(factory), host, port, **options)
    return server


def _typed(factory: Callable[[WSUpgradeRequest], Any]) -> Any:
    return factory

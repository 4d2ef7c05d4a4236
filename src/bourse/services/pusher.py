"""pusher: WebSocket market data (trades, depth, ticker, k-lines) and each member's private feed
(orders, trades, balances), for any number of connected users; any number of instances, each
holding its own connections.

A composition: the pure feeds (`bourse.application.push_feeds`), the protocol
(`bourse.contracts.push_protocol`, documented in `docs/asyncapi.yaml`), the WebSocket server
adapter (`bourse.adapters.websocket`, picows) and NATS:

- public: a core subscription to the statistics service's updates (`<ns>.md.>`); the local
  depth books are loaded from its `depth` endpoint at start and after a gap. Every
  `FAST_MS` the 100 ms channels, every `SLOW_MS` the 1000 ms ones, send what is pending: each
  message encoded once, the same bytes written to every subscriber;
- private: ordered JetStream consumers on EVENTS and ACCOUNTS from the new messages on (their
  stream sequences are the private positions a client resumes from); a message is built only for
  members connected here, and sent at once;
- a client that reconnects (to this instance or another) authenticates with the positions it
  last processed (`auth.resume`): the instance replays the member's messages after them from the
  streams, then the live ones, nothing twice (`PrivateReplay`);
- a slow client never slows anyone: writes never wait; past `BOURSE_PUSHER_MAX_BUFFERED_BYTES`
  waiting for a peer, it is closed with 4008 `slow_consumer`. The NATS callbacks never await a
  client.

Close codes: 1003 not text, 1009 frame too big, 4001 idle, 4008 slow consumer, 4029 too many
connections from one address per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict, deque
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from opentelemetry.trace import SpanContext
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bourse.adapters import tracing
from bourse.adapters.auth import TokenVerifier, fetch_jwks, keep_keys_fresh
from bourse.adapters.cancellation import cancel_and_wait
from bourse.adapters.jetstream import stream_position
from bourse.adapters.order_intake import OrderIntake
from bourse.adapters.query_client import QueryClient
from bourse.adapters.statistics_client import StatisticsClient
from bourse.adapters.websocket import WsConnection, serve_websockets
from bourse.application.ports import QueryFailed
from bourse.application.push_feeds import (
    FAST_MS,
    PRIVATE_KINDS,
    SLOW_MS,
    Channel,
    ChannelRefused,
    MarketFeeds,
    PrivateMessage,
    Topic,
    event_messages,
    parse_channel,
    report_messages,
)
from bourse.config.auth import verifier_for
from bourse.config.intake import order_intake
from bourse.contracts.messages import (
    ACCOUNTS_REPORTS_DECODER,
    DEPTH_UPDATE_DECODER,
    EVENT_BATCH_DECODER,
    KLINE_UPDATE_DECODER,
    TICKER_UPDATE_DECODER,
    TRADES_UPDATE_DECODER,
)
from bourse.contracts.push_protocol import (
    CLIENT_FRAME_DECODER,
    Auth,
    Authenticated,
    CancelOnDisconnect,
    CancelOnDisconnectSet,
    ChannelMessage,
    Error,
    Heartbeat,
    Ping,
    Pong,
    ResumeFrom,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    encode_frame,
)
from bourse.contracts.subjects import (
    ACCOUNTS,
    DEPTH_CHANNEL,
    EVENTS,
    KLINE_CHANNEL,
    MARKET_DATA,
    TICKER_CHANNEL,
    TRADES_CHANNEL,
    member_shard,
)
from bourse.domain.orders import CancelOrder
from bourse.domain.values import MemberId, OrderId
from bourse.runtime.service import Service, ServiceContext

WHOLE = 1 << 31
"""The part that stands for a whole stream message (the wire says 0)."""
CLOSE_IDLE = 4001
CLOSE_SLOW = 4008
CLOSE_TOO_MANY = 4029


def numbered(messages: list[PrivateMessage]) -> list[tuple[int, int, PrivateMessage]]:
    """Each message with its member and its part: its place among that member's messages of
    the same stream message (1, 2, ...), `WHOLE` for the member's last one."""
    counts: dict[int, int] = defaultdict(int)
    for member, _, _ in messages:
        counts[member] += 1
    seen: dict[int, int] = defaultdict(int)
    out: list[tuple[int, int, PrivateMessage]] = []
    for message in messages:
        member = message[0]
        seen[member] += 1
        out.append((member, WHOLE if seen[member] == counts[member] else seen[member], message))
    return out


@dataclass(eq=False, slots=True)
class Client:
    """A connection's state: its public topics, its member, its private sequences."""

    conn: WsConnection
    topics: dict[Channel, Topic] = field(default_factory=dict)
    private: set[str] = field(default_factory=set)
    member_id: int | None = None
    expiry: asyncio.TimerHandle | None = None
    private_seq: dict[str, int] = field(default_factory=dict)
    cancel_on_disconnect: bool = False
    cancel_for: int | None = None
    """The member whose orders a drop cancels, when their token expired on this connection."""
    last_heard: float = field(default_factory=time.monotonic)
    replaying: list[tuple[str, int, int, PrivateMessage]] | None = None
    """While a resume replays the streams: the live messages held back (stream, seq, part, message)."""
    position: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per stream kind, the last private message sent: (stream sequence, part; `WHOLE`: all)."""


class PusherMetrics(Collector):
    """`bourse_pusher_*`, read from the service's counters when scraped."""

    def __init__(self, service: Pusher) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        yield GaugeMetricFamily(
            "bourse_pusher_connections", "Open WebSocket connections.", value=len(service.clients)
        )
        yield GaugeMetricFamily(
            "bourse_pusher_members",
            "Members with an authenticated connection here.",
            value=len(service.members),
        )
        yield GaugeMetricFamily(
            "bourse_pusher_channels", "Public channels with subscribers.", value=len(service.feeds.topics)
        )
        delivered = CounterMetricFamily(
            "bourse_pusher_messages_delivered", "Messages written to connections, by kind.", labels=["kind"]
        )
        for kind, count in sorted(service.delivered.items()):
            delivered.add_metric([kind], count)
        yield delivered
        for name, help_text, value in (
            (
                "slow_consumers_closed",
                "Connections closed for a full write buffer (4008).",
                service.slow_dropped,
            ),
            ("connections_refused", "Connections refused for the per-address rate (4029).", service.refused),
            (
                "orders_cancelled_on_disconnect",
                "Cancels sent for cancel-on-disconnect.",
                service.cancelled_on_disconnect,
            ),
            ("handler_cpu_seconds", "CPU of the pusher's handlers and fan-outs.", service.cpu_s),
        ):
            yield CounterMetricFamily(f"bourse_pusher_{name}", help_text, value=value)


class Pusher(Service):
    name = "pusher"
    description = "WebSocket market data and private orders, trades and balances"

    HEARTBEAT_S = 10.0
    SLICE = 256
    """Sends of one fan-out between two turns given to the event loop (about 3 ms of CPU)."""
    CANCEL_PASSES_S = (1.0, 2.0)
    """Cancel-on-disconnect looks for open orders at once, then after these pauses."""

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.catalog = ctx.catalog
        self.feeds = MarketFeeds(ctx.catalog.markets)
        self.subscribers: dict[Topic, set[Client]] = defaultdict(set)
        self.clients: dict[WsConnection, Client] = {}
        self.members: dict[int, set[Client]] = defaultdict(set)
        self.statistics = StatisticsClient(ctx.nc, ctx.namespace)
        self.queries = QueryClient(ctx.nc, ctx.namespace)
        self.verifier: TokenVerifier | None = None
        self.intake: OrderIntake | None = None
        """Built on the first cancel-on-disconnect (most instances never need one)."""
        self.max_buffered = settings.pusher_max_buffered_bytes
        self.max_subscriptions = settings.pusher_max_subscriptions
        self.connections_per_ip_s = settings.pusher_connections_per_ip_per_s
        self.idle_s = settings.pusher_idle_timeout_s
        self._recent: dict[str, deque[float]] = defaultdict(deque)
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: list[Any] = []
        self._reloading: set[str] = set()
        self.position: dict[str, int] = {EVENTS.kind: 0, ACCOUNTS.kind: 0}
        """The last live stream sequence seen per private stream."""
        self.url = ""
        # counters
        self.delivered: dict[str, int] = defaultdict(int)
        self.slow_dropped = 0
        self.cancelled_on_disconnect = 0
        self.refused = 0
        self.errors = 0
        self.cpu_s = 0.0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PusherMetrics(self))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        ctx, settings = self.ctx, self.ctx.settings
        self.verifier = verifier_for(settings, await fetch_jwks(ctx.nc, ctx.namespace))
        self._tasks.append(
            asyncio.create_task(keep_keys_fresh(ctx.nc, ctx.namespace, self.verifier), name="pusher:jwks")
        )
        ns = ctx.namespace
        self._subs.append(await ctx.nc.subscribe(f"{ns}.{MARKET_DATA}.>", cb=self._on_market_data))
        js = ctx.js
        for spec, handler in ((EVENTS, self._on_events), (ACCOUNTS, self._on_accounts)):
            self._subs.append(
                await js.subscribe(
                    spec.wildcard(ns),
                    stream=spec.name(ns),
                    cb=handler,
                    ordered_consumer=True,
                    deliver_policy=DeliverPolicy.NEW,
                )
            )
            info = await js.stream_info(spec.name(ns))
            self.position[spec.kind] = info.state.last_seq
        for market in self.catalog.markets:
            self._reload_depth(market)
        self._server = await serve_websockets(self, settings.pusher_host, settings.pusher_port)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://{settings.pusher_host}:{port}/ws"
        self._tasks += [
            asyncio.create_task(self._every(FAST_MS / 1000, FAST_MS), name="pusher:fast"),
            asyncio.create_task(self._every(SLOW_MS / 1000, SLOW_MS), name="pusher:slow"),
            asyncio.create_task(self._heartbeats(), name="pusher:heartbeat"),
        ]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for client in list(self.clients.values()):
            client.conn.close(1001, "server stopping")
        await cancel_and_wait(self._tasks)
        if self.intake is not None:
            await self.intake.stop()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def links(self) -> Mapping[str, str]:
        return {"websocket": self.url} if self.url else {}

    # ------------------------------------------------------------------ public data in

    async def _on_market_data(self, msg: Msg) -> None:
        started = time.process_time()
        parts = msg.subject.split(".")
        channel = parts[2] if len(parts) > 3 else ""
        try:
            if channel == DEPTH_CHANNEL:
                update = DEPTH_UPDATE_DECODER.decode(msg.data)
                if not self.feeds.on_depth(update):
                    self._reload_depth(update.market)
            elif channel == TRADES_CHANNEL:
                self.feeds.on_trades(TRADES_UPDATE_DECODER.decode(msg.data))
            elif channel == TICKER_CHANNEL:
                self.feeds.on_ticker(TICKER_UPDATE_DECODER.decode(msg.data))
            elif channel == KLINE_CHANNEL:
                self.feeds.on_kline(KLINE_UPDATE_DECODER.decode(msg.data))
        except msgspec.DecodeError:
            self.errors += 1
            self.log.error("undecodable market data", extra={"subject": msg.subject})
        self.cpu_s += time.process_time() - started

    def _reload_depth(self, market: str) -> None:
        """Load a fresh depth snapshot (at start, after a gap); retried until it comes."""
        if market in self._reloading:
            return
        self._reloading.add(market)

        async def reload() -> None:
            delay = 0.2
            try:
                while True:
                    try:
                        snapshot = await self.statistics.depth_snapshot(market)
                    except QueryFailed as exc:
                        self.log.debug(
                            "depth snapshot not loaded", extra={"market": market, "error": str(exc)}
                        )
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 5.0)
                        continue
                    self.feeds.load_depth(snapshot)
                    with contextlib.suppress(QueryFailed):
                        ticker = await self.statistics.ticker(market)
                        if ticker.close_time:
                            self.feeds.tickers.setdefault(market, ticker)
                    return
            finally:
                self._reloading.discard(market)

        self._tasks.append(asyncio.create_task(reload(), name=f"pusher:depth:{market}"))

    async def _every(self, interval_s: float, speed_ms: int) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += interval_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            await self._flush(speed_ms)

    async def _flush(self, speed_ms: int) -> None:
        """Every due message to its subscribers, `SLICE` sends at a time: between slices the
        loop takes what came meanwhile (private messages first of all), so a fan-out to tens of
        thousands never holds them for its whole length (`bench/ws_bench.py` measured 190 ms
        per second of one uninterrupted 1000 ms fan-out at 10,000 users)."""
        started = time.process_time()
        sent = 0
        for topic, data in self.feeds.due(speed_ms):
            clients = self.subscribers.get(topic)
            if not clients:
                continue
            frame = encode_frame(ChannelMessage(topic.channel.name, topic.next_seq(), data))
            kind = topic.channel.kind
            for client in list(clients):
                self._send(client, frame, kind)
                sent += 1
                if sent % self.SLICE == 0:
                    self.cpu_s += time.process_time() - started
                    await asyncio.sleep(0)
                    started = time.process_time()
        self.cpu_s += time.process_time() - started

    # ------------------------------------------------------------------ private data in

    async def _on_events(self, msg: Msg) -> None:
        self._on_private(EVENTS.kind, msg)

    async def _on_accounts(self, msg: Msg) -> None:
        self._on_private(ACCOUNTS.kind, msg)

    def _on_private(self, stream: str, msg: Msg) -> None:
        started = time.process_time()
        tracer = tracing.tracer(self.name)
        orders = self._traced_orders(stream, msg) if tracer is not None else None
        if tracer is not None and orders:
            with tracing.stage_spans(tracer, self.name, orders, {"bourse.stream": stream}):
                self._push_private(stream, msg)
        else:
            self._push_private(stream, msg)
        self.cpu_s += time.process_time() - started

    def _push_private(self, stream: str, msg: Msg) -> None:
        position = stream_position(msg)
        self.position[stream] = position.seq
        if self.members:
            try:
                messages = self._private_messages(stream, msg.data, position.timestamp_ns, self.members)
            except msgspec.DecodeError:
                self.errors += 1
            else:
                self._deliver_private(stream, position.seq, messages)

    @staticmethod
    def _traced_orders(stream: str, msg: Msg) -> dict[int, SpanContext]:
        """The sampled orders of an EVENTS message (those its events name) or of an ACCOUNTS
        message (all it lists: a report covers its whole input batch)."""

        def holds(_: int) -> list[int] | None:
            if stream != EVENTS.kind:
                return None
            try:
                return EVENT_BATCH_DECODER.decode(msg.data).order_ids()
            except msgspec.DecodeError:
                return []

        return tracing.traced_orders([msg.headers], holds)

    def _private_messages(
        self, stream: str, data: bytes, timestamp_ns: int, wanted: Container[int]
    ) -> list[PrivateMessage]:
        """The private messages an EVENTS or ACCOUNTS message (stored at `timestamp_ns`) holds
        for the `wanted` members, live or replayed."""
        catalog = self.catalog
        if stream == EVENTS.kind:
            return event_messages(EVENT_BATCH_DECODER.decode(data), catalog.markets, wanted)
        return [
            message
            for report in ACCOUNTS_REPORTS_DECODER.decode(data).reports
            for message in report_messages(report, timestamp_ns, catalog.markets, catalog.currencies, wanted)
        ]

    def _deliver_private(self, stream: str, seq: int, messages: list[PrivateMessage]) -> None:
        """The messages of one stream message, each to its member's connections here, named by
        (stream sequence, part) so that a resume can start inside a stream message."""
        for member, part, message in numbered(messages):
            for client in list(self.members.get(member, ())):
                if client.replaying is not None:
                    client.replaying.append((stream, seq, part, message))
                    continue
                self._send_private(client, stream, seq, part, message)

    def _send_private(
        self, client: Client, stream: str, seq: int, part: int, message: PrivateMessage
    ) -> None:
        _, kind, data = message
        if kind not in client.private or (seq, part) <= client.position.get(stream, (0, WHOLE)):
            return
        client.position[stream] = (seq, part)
        next_seq = client.private_seq.get(kind, 0) + 1
        client.private_seq[kind] = next_seq
        events, events_part = client.position.get(EVENTS.kind, (0, WHOLE))
        accounts, accounts_part = client.position.get(ACCOUNTS.kind, (0, WHOLE))
        position = ResumeFrom(events, accounts, events_part % WHOLE, accounts_part % WHOLE)
        self._send(client, encode_frame(ChannelMessage(kind, next_seq, data, position)), kind)

    # ------------------------------------------------------------------ connections

    def connected(self, conn: WsConnection) -> None:
        now = time.monotonic()
        recent = self._recent[conn.peer_ip]
        while recent and recent[0] < now - 1.0:
            recent.popleft()
        if len(recent) >= self.connections_per_ip_s:
            self.refused += 1
            conn.send(
                encode_frame(
                    Error("too_many_connections", "too many connections from this address per second")
                )
            )
            conn.close(CLOSE_TOO_MANY, "too_many_connections")
            return
        recent.append(now)
        self.clients[conn] = Client(conn)

    def disconnected(self, conn: WsConnection) -> None:
        client = self.clients.pop(conn, None)
        if client is None:
            return
        for channel, topic in client.topics.items():
            self._leave(client, channel, topic)
        if client.expiry is not None:
            client.expiry.cancel()
        member = client.member_id if client.member_id is not None else client.cancel_for
        if member is not None:
            others = self._forget(client, member)
            if client.cancel_on_disconnect and not any(c.cancel_on_disconnect for c in others):
                self._tasks.append(asyncio.create_task(self._cancel_all(member), name=f"pusher:cod:{member}"))

    def _leave(self, client: Client, channel: Channel, topic: Topic) -> None:
        """`client` off `topic`; the topic closed with its last subscriber."""
        clients = self.subscribers[topic]
        clients.discard(client)
        if not clients:
            del self.subscribers[topic]
        self.feeds.close(channel)

    def _forget(self, client: Client, member: int) -> set[Client]:
        """`client` no longer one of `member`'s connections here; the others that are."""
        others = self.members.get(member, set())
        others.discard(client)
        if not others:
            self.members.pop(member, None)
        return others

    def received(self, conn: WsConnection, data: bytes) -> None:
        client = self.clients.get(conn)
        if client is None:
            return
        started = time.process_time()
        client.last_heard = time.monotonic()
        try:
            frame = CLIENT_FRAME_DECODER.decode(data)
        except msgspec.DecodeError as exc:
            self._reply(client, Error("invalid_frame", f"not a frame of the protocol: {exc}"))
            return
        if isinstance(frame, Subscribe):
            self._subscribe(client, frame)
        elif isinstance(frame, Unsubscribe):
            self._unsubscribe(client, frame)
        elif isinstance(frame, Auth):
            self._auth(client, frame)
        elif isinstance(frame, Ping):
            self._reply(client, Pong(frame.id, int(time.time() * 1000)))
        elif isinstance(frame, CancelOnDisconnect):
            if client.member_id is None:
                self._reply(client, Error("not_authenticated", "authenticate first", id=frame.id))
            else:
                client.cancel_on_disconnect = frame.enabled
                self._reply(client, CancelOnDisconnectSet(frame.id, frame.enabled))
        self.cpu_s += time.process_time() - started

    def _reply(self, client: Client, frame: msgspec.Struct) -> None:
        self._send(client, encode_frame(frame), "control")

    def _send(self, client: Client, data: bytes, kind: str) -> None:
        waiting = client.conn.send(data)
        self.delivered[kind] += 1
        if waiting > self.max_buffered:
            self.slow_dropped += 1
            client.conn.close(CLOSE_SLOW, "slow_consumer")

    # ------------------------------------------------------------------ operations

    def _channels(self, client: Client, frame: Subscribe | Unsubscribe) -> list[Channel] | None:
        """The frame's channels; None (the first refusal answered) if one is refused: a name
        unknown, or, to subscribe, a private channel before `auth`."""
        channels: list[Channel] = []
        for text in frame.channels:
            try:
                channel = parse_channel(text, self.catalog.markets)
            except ChannelRefused as refused:
                self._reply(client, Error(refused.code, refused.message, id=frame.id, channel=text))
                return None
            if isinstance(frame, Subscribe) and channel.private and client.member_id is None:
                refusal = Error("not_authenticated", f"{text} needs auth first", id=frame.id, channel=text)
                self._reply(client, refusal)
                return None
            channels.append(channel)
        return channels

    def _subscribe(self, client: Client, frame: Subscribe) -> None:
        channels = self._channels(client, frame)
        if channels is None:
            return
        fresh = [
            c for c in dict.fromkeys(channels) if c not in client.topics and c.kind not in client.private
        ]
        if len(client.topics) + len(client.private) + len(fresh) > self.max_subscriptions:
            self._reply(
                client,
                Error(
                    "too_many_subscriptions",
                    f"at most {self.max_subscriptions} subscriptions per connection",
                    id=frame.id,
                ),
            )
            return
        self._reply(client, Subscribed(frame.id, [c.name for c in channels]))
        for channel in dict.fromkeys(channels):
            if channel.private:
                client.private.add(channel.kind)
                continue
            topic = client.topics.get(channel)
            if topic is None:
                topic = self.feeds.open(channel)
                client.topics[channel] = topic
                self.subscribers[topic].add(client)
            # new, or held again: the channel's state at once (a client that saw a gap in the
            # depth subscribes again for this snapshot), numbered as the last message sent
            first = self.feeds.first_message(topic)
            if first is not None:
                self._send(client, encode_frame(ChannelMessage(channel.name, topic.seq, first)), channel.kind)

    def _unsubscribe(self, client: Client, frame: Unsubscribe) -> None:
        channels = self._channels(client, frame)
        if channels is None:
            return
        names: list[str] = []
        for channel in channels:
            names.append(channel.name)
            if channel.private:
                client.private.discard(channel.kind)
                continue
            topic = client.topics.pop(channel, None)
            if topic is not None:
                self._leave(client, channel, topic)
        self._reply(client, Unsubscribed(frame.id, names))

    def _auth(self, client: Client, frame: Auth) -> None:
        assert self.verifier is not None
        try:
            principal = self.verifier.verify(frame.token)
        except Exception as exc:
            code = getattr(exc, "code", "invalid_token")
            self._reply(client, Error(str(code), f"token refused: {exc}", id=frame.id))
            return
        member = principal.member_id
        if client.member_id is not None and client.member_id != member:
            self._reply(client, Error("member_changed", "a connection authenticates one member", id=frame.id))
            return
        expires_ms = principal.expires_at * 1000
        client.member_id = member
        self.members[member].add(client)
        if client.expiry is not None:
            client.expiry.cancel()
        if expires_ms:
            delay = max(0.0, expires_ms / 1000 - time.time())
            client.expiry = asyncio.get_running_loop().call_later(delay, self._expired, client)
        live = ResumeFrom(self.position[EVENTS.kind], self.position[ACCOUNTS.kind])
        resume = frame.resume
        if resume is None:
            client.position = {EVENTS.kind: (live.events, WHOLE), ACCOUNTS.kind: (live.accounts, WHOLE)}
            self._reply(client, Authenticated(frame.id, member, expires_ms, live))
            return
        client.position = {
            EVENTS.kind: (resume.events, resume.events_part or WHOLE),
            ACCOUNTS.kind: (resume.accounts, resume.accounts_part or WHOLE),
        }
        client.private.update(PRIVATE_KINDS)  # a resume is of the private feed
        client.replaying = []
        self._reply(client, Authenticated(frame.id, member, expires_ms, resume))
        self._tasks.append(
            asyncio.create_task(self._replay(client, resume, live), name=f"pusher:resume:{member}")
        )

    def _expired(self, client: Client) -> None:
        """The token ran out: the connection is no longer the member's (public channels go on);
        an opt-in to cancel-on-disconnect stays, for the member who made it."""
        member = client.member_id
        client.private.clear()
        client.member_id = None
        if member is not None:
            self._forget(client, member)
            if client.cancel_on_disconnect:
                client.cancel_for = member
        message = "the token expired: the private subscriptions ended; auth again to resume"
        self._reply(client, Error("token_expired", message))

    async def _replay(self, client: Client, resume: ResumeFrom, upto: ResumeFrom) -> None:
        """Send the member's private messages after `resume` up to `upto` (the live position at
        auth) from the streams, then what arrived live meanwhile, in order, nothing twice."""
        member = client.member_id
        assert member is not None
        js, ns = self.ctx.js, self.ctx.namespace
        shard = member_shard(member, self.ctx.settings.accounts_shards)
        wanted = {member}
        try:
            for spec, start, part, last, subject in (
                (EVENTS, resume.events, resume.events_part, upto.events, EVENTS.wildcard(ns)),
                (ACCOUNTS, resume.accounts, resume.accounts_part, upto.accounts, ACCOUNTS.subject(ns, shard)),
            ):
                first = start if part else start + 1  # inside a stream message: read it again
                if first > last:
                    continue
                sub = await js.subscribe(
                    subject,
                    stream=spec.name(ns),
                    ordered_consumer=True,
                    config=ConsumerConfig(
                        deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first
                    ),
                )
                try:
                    while True:
                        msg = await sub.next_msg(timeout=5.0)
                        position = stream_position(msg)
                        if position.seq > last:
                            break
                        messages = self._private_messages(spec.kind, msg.data, position.timestamp_ns, wanted)
                        for _, part_of, message in numbered(messages):
                            self._send_private(client, spec.kind, position.seq, part_of, message)
                        if position.seq >= last:
                            break
                finally:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
        except Exception as exc:
            self.log.warning("resume failed", extra={"member": member, "error": repr(exc)})
            self._reply(
                client,
                Error("resume_failed", "the private feed could not be replayed: take a snapshot over REST"),
            )
        held, client.replaying = client.replaying or [], None
        for stream, seq, part, message in held:
            self._send_private(client, stream, seq, part, message)

    async def _cancel_all(self, member: int) -> None:
        """Cancel-on-disconnect: the member's open orders, each cancel through the order intake
        (ORDERS, the accounts stage, the engine), as `DELETE /orders` does. The open orders are
        the query service's; an order still on its way through the stages when the connection
        dropped is not there yet, so the pass is made again after `CANCEL_PASSES_S`."""
        cancelled: set[int] = set()
        for pause_s in (0.0, *self.CANCEL_PASSES_S):
            await asyncio.sleep(pause_s)
            if member in self.members and any(c.cancel_on_disconnect for c in self.members[member]):
                return  # the member opted in again meanwhile
            try:
                orders = await self.queries.orders(member, state="open", limit=1000)
            except QueryFailed as exc:
                failure = {"member": member, "error": str(exc)}
                self.log.warning("cancel on disconnect: open orders unknown", extra=failure)
                continue
            if self.intake is None:
                self.intake = order_intake(self.ctx.nc, self.ctx.settings, service=self.name)
                await self.intake.start()
            for view in orders:
                if view.id in cancelled:
                    continue
                try:
                    await self.intake.submit(CancelOrder(OrderId(view.id), MemberId(member), view.market))
                except Exception as exc:
                    failure = {"order": view.id, "error": repr(exc)}
                    self.log.warning("cancel on disconnect: not sent", extra=failure)
                    continue
                cancelled.add(view.id)
                self.cancelled_on_disconnect += 1
        self.log.info("cancel on disconnect", extra={"member": member, "orders": len(cancelled)})

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.HEARTBEAT_S)
            now = time.monotonic()
            frame = encode_frame(Heartbeat(int(time.time() * 1000)))
            for sent, client in enumerate(list(self.clients.values()), start=1):
                if not client.topics and not client.private and now - client.last_heard > self.idle_s:
                    client.conn.close(CLOSE_IDLE, "idle")
                    continue
                self._send(client, frame, "heartbeat")
                if sent % self.SLICE == 0:
                    await asyncio.sleep(0)

    # ------------------------------------------------------------------ health

    def metrics(self) -> str:
        return generate_latest(self.registry).decode()

    def health(self) -> Mapping[str, Any]:
        return {
            "ok": self._server is not None,
            "url": self.url,
            "connections": len(self.clients),
            "members": len(self.members),
            "topics": len(self.feeds.topics),
            "delivered": dict(self.delivered),
            "slow_dropped": self.slow_dropped,
            "cancelled_on_disconnect": self.cancelled_on_disconnect,
            "refused": self.refused,
            "errors": self.errors,
            "depth_loaded": sorted(m for m, b in self.feeds.books.items() if b.loaded),
            "cpu_s": round(self.cpu_s, 3),
        }

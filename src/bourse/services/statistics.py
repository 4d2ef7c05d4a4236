"""statistics: k-lines, 24-hour tickers and the depth with its sequence, per market, folded from
EVENTS; public updates on core NATS for the pushers; queries over NATS request/reply.

A composition of the projection shell (`bourse.runtime.projection`) and one pure aggregate per
market (`bourse.application.market_statistics.MarketStatistics`):

- one durable consumer on EVENTS per market group (`statistics-<group>-events`; the group is
  `BOURSE_STATISTICS_MARKETS`, or `all`), so an instance per group folds and publishes its
  markets once. Messages of other markets are skipped by subject before decoding;
- per fetched batch: each fresh EventBatch (positions by producer sequence, as every projection)
  folded into its market's aggregate, then one message per market and channel published on core
  NATS (`bourse.contracts.subjects.market_data_subject`): depth updates with `seq`/`prev_seq`,
  the trades since the last message, the ticker, the changed candles per period. Core NATS, not
  a stream: at most once, and every message says the state it leads to, so a subscriber that
  missed one only needs the next (the depth: a fresh snapshot, see `depth` below);
- the state (every market's aggregate, the positions and the stream watermark) is snapshotted to
  the SNAPSHOTS object store every `SNAPSHOT_EVERY_S`, between batches, and restored at start; the
  consumer resumes after the snapshot's watermark. The replay after it publishes again what was
  published before the crash, with the same sequences: subscribers drop what they have.

Time is the engine's (each batch's receive time and its trades' timestamps), never this
service's clock: replaying EVENTS gives the same candles, byte for byte.

Endpoints (JSON, `bourse.contracts.messages`): per market of the group
`<ns>.svc.statistics.{ticker,klines,depth,position}.<market>` (`position`: the group's EVENTS
watermark, for the gateway's read chain). Until the instance has reached the stream's last
sequence noted at start, its queries answer 503 `not_ready`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import msgspec
from nats.micro.request import Request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bourse.adapters.jetstream import SnapshotSchedule, SnapshotStore
from bourse.adapters.metrics import Sample, observe_order_to_trade, snapshot_age_samples
from bourse.application.market_statistics import MarketStatistics, MarketUpdates
from bourse.application.ports import QueryFailed
from bourse.application.projection import Envelope, fresh
from bourse.application.read_queries import check_depth_query, check_klines_query
from bourse.contracts.messages import (
    DEPTH_SNAPSHOT_QUERY_DECODER,
    KLINES_QUERY_DECODER,
    TICKER_QUERY_DECODER,
    DepthSnapshotQuery,
    EventBatch,
    KlinesQuery,
    KlinesReply,
    StatisticsPosition,
    TickerQuery,
    encode,
    json_encode,
)
from bourse.contracts.subjects import (
    DEPTH_CHANNEL,
    EVENTS,
    KLINE_CHANNEL,
    TICKER_CHANNEL,
    TRADES_CHANNEL,
    market_data_subject,
    statistics_consumer,
    statistics_subject,
)
from bourse.domain.depth_book import DepthSnapshot
from bourse.domain.order_ids import id_timestamp_ms
from bourse.domain.orders import Trade
from bourse.domain.tickers import Ticker
from bourse.runtime.projection import EVENTS_FEED, Applied, Feed, Projection
from bourse.runtime.service import Endpoint, Service, ServiceContext, StreamConsumer, query_endpoint

SNAPSHOT_VERSION = 1


class _Snapshot(msgspec.Struct, frozen=True):
    version: int
    group: str
    watermark: int
    positions: dict[str, int]
    markets: dict[str, bytes]


class StatisticsMetrics(Collector):
    """`bourse_statistics_*`, read from the service's counters when scraped."""

    def __init__(self, service: Statistics) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        feed = service.events
        yield GaugeMetricFamily(
            "bourse_statistics_watermark", "EVENTS stream sequence applied.", value=feed.watermark
        )
        sequence = GaugeMetricFamily(
            "bourse_statistics_market_sequence",
            "The last EVENTS batch sequence folded, per market.",
            labels=["market"],
        )
        for market, stats in sorted(service.stats.items()):
            sequence.add_metric([market], stats.seq)
        yield sequence
        for name, help_text, value in (
            ("messages_published", "Market-data messages published.", service.published),
            ("publish_failures", "Market-data messages not published.", service.publish_failures),
            ("handler_cpu_seconds", "CPU of the folds and publishing.", service.cpu_s),
        ):
            yield CounterMetricFamily(f"bourse_statistics_{name}", help_text, value=value)


class Statistics(Service):
    name = "statistics"
    description = "K-lines, 24h tickers and depth with sequences per market, folded from EVENTS"

    BATCH = 512
    SNAPSHOT_EVERY_S = 5.0
    CATCH_UP_WAIT_S = 30.0

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.markets: list[str] = list(settings.statistics_markets or ctx.catalog.markets)
        unknown = [m for m in self.markets if m not in ctx.catalog.markets]
        if unknown:
            raise ValueError(f"BOURSE_STATISTICS_MARKETS names unknown markets: {', '.join(unknown)}")
        self.group = "all" if settings.statistics_markets is None else "-".join(sorted(self.markets))
        subjects = {EVENTS.subject(ctx.namespace, m) for m in self.markets}
        self.projection = Projection.over(
            self,
            self,
            [EVENTS_FEED],
            batch=self.BATCH,
            consumer=statistics_consumer(self.group),
            wanted=None if self.group == "all" else subjects.__contains__,
        )
        self.events = self.projection.feed(EVENTS.kind)
        self.stats: dict[str, MarketStatistics] = {m: MarketStatistics(m) for m in self.markets}
        self._snapshots = SnapshotSchedule(SnapshotStore(ctx.js, ctx.namespace), self.SNAPSHOT_EVERY_S)
        self._ready = asyncio.Event()
        self.published = 0
        self.publish_failures = 0
        self.cpu_s = 0.0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatisticsMetrics(self))

    @property
    def snapshot_name(self) -> str:
        return f"{self.name}.{self.group}"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self._restore()
        await self.projection.note_targets()
        self._check_ready()
        self._snapshots.restart_clock(self.snapshot_name)

    async def _restore(self) -> None:
        snapshot = await self._snapshots.store.load(self.snapshot_name)
        if snapshot is None:
            return
        state = msgspec.msgpack.decode(snapshot.state, type=_Snapshot)
        if state.version != SNAPSHOT_VERSION or state.group != self.group:
            self.log.warning("snapshot of another version or group ignored", extra={"group": state.group})
            return
        for market, data in state.markets.items():
            if market in self.stats:
                self.stats[market] = MarketStatistics.restore(data)
        self.events.positions = dict(state.positions)
        self.events.watermark = state.watermark
        self.log.info("snapshot restored", extra={"watermark": state.watermark, "group": self.group})

    async def stop(self) -> None:
        await self._snapshots.save_now(self.snapshot_name, self.events.watermark, self._snapshot())
        await self._snapshots.drain()

    def consumers(self) -> Sequence[StreamConsumer]:
        return self.projection.consumers()

    def _check_ready(self) -> None:
        if not self._ready.is_set() and self.projection.caught_up():
            self._ready.set()
            self.log.info("caught up", extra={"watermark": self.events.watermark})

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    # ------------------------------------------------------------------ stream input

    async def write(self, feed: Feed, envelopes: Sequence[Envelope[Any]], watermark: int) -> Applied:
        """Fold what is fresh, publish what it changed, move the positions; never raises for a
        publish (market data is at most once: the next message carries the state)."""
        started = time.process_time()
        live = self.ready
        batch = fresh(envelopes, lambda key: int(feed.positions.get(key, 0)), feed.watermark)
        touched: dict[str, MarketStatistics] = {}
        folded: list[EventBatch] = []
        for envelope in batch.envelopes:
            body: EventBatch = envelope.body
            stats = self.stats.get(body.market)
            if stats is not None and stats.apply(body):
                touched[body.market] = stats
                folded.append(body)
        feed.positions.update({key: envelope.seq for key, envelope in batch.latest.items()})
        feed.watermark = max(feed.watermark, watermark)
        for market, stats in touched.items():
            await self._publish(market, stats.drain())
        if live:  # a catch-up republishes old trades: their delay says nothing of the pipeline
            _order_to_trade(folded)
        self._check_ready()
        if self._snapshots.due(self.snapshot_name):
            self._snapshots.save_in_background(self.snapshot_name, feed.watermark, self._snapshot())
        self.cpu_s += time.process_time() - started
        return Applied(items=len(batch.envelopes), duplicates=batch.duplicates)

    def failed(self, feed: Feed, exc: BaseException) -> None:
        """Nothing to undo: a write changes memory only, and positions only after folding."""

    async def _publish(self, market: str, updates: MarketUpdates) -> None:
        ns = self.ctx.namespace
        messages: list[tuple[str, bytes]] = []
        if updates.depth is not None:
            messages.append((market_data_subject(ns, DEPTH_CHANNEL, market), encode(updates.depth)))
        if updates.trades is not None:
            messages.append((market_data_subject(ns, TRADES_CHANNEL, market), encode(updates.trades)))
        if updates.ticker is not None:
            messages.append((market_data_subject(ns, TICKER_CHANNEL, market), encode(updates.ticker)))
        for kline in updates.klines:
            subject = market_data_subject(ns, KLINE_CHANNEL, market, kline.period.value)
            messages.append((subject, encode(kline)))
        nc = self.ctx.nc
        for subject, data in messages:
            try:
                await nc.publish(subject, data)
                self.published += 1
            except Exception as exc:
                # buffered by the client, this fails only when it is closed or its reconnect
                # buffer is full; the next update of the channel carries the state again
                self.publish_failures += 1
                self.log.debug("market data not published", extra={"subject": subject, "error": repr(exc)})

    def _snapshot(self) -> bytes:
        return msgspec.msgpack.encode(
            _Snapshot(
                SNAPSHOT_VERSION,
                self.group,
                self.events.watermark,
                {key: int(seq) for key, seq in self.events.positions.items()},
                {market: stats.snapshot() for market, stats in self.stats.items()},
            )
        )

    # ------------------------------------------------------------------ endpoints

    def endpoints(self) -> Sequence[Endpoint]:
        ns = self.ctx.namespace
        endpoints: list[Endpoint] = []
        for market in self.markets:
            endpoints += [
                Endpoint(
                    f"ticker-{market}",
                    statistics_subject(ns, "ticker", market),
                    query_endpoint(TICKER_QUERY_DECODER, self.answer_ticker, ready=self._ready.is_set),
                ),
                Endpoint(
                    f"klines-{market}",
                    statistics_subject(ns, "klines", market),
                    query_endpoint(KLINES_QUERY_DECODER, self.answer_klines, ready=self._ready.is_set),
                ),
                Endpoint(
                    f"depth-{market}",
                    statistics_subject(ns, "depth", market),
                    query_endpoint(DEPTH_SNAPSHOT_QUERY_DECODER, self.answer_depth, ready=self._ready.is_set),
                ),
                Endpoint(
                    f"position-{market}", statistics_subject(ns, "position", market), self._serve_position
                ),
            ]
        return endpoints

    def _market(self, market: str) -> MarketStatistics:
        stats = self.stats.get(market)
        if stats is None:
            raise QueryFailed(404, "unknown_market", f"no market {market!r} in this statistics group")
        return stats

    def answer_ticker(self, query: TickerQuery) -> Ticker:
        return self._market(query.market).current_ticker()

    def answer_klines(self, query: KlinesQuery) -> KlinesReply:
        checked = check_klines_query(
            query.market,
            period=query.period,
            start=query.start,
            end=query.end,
            limit=query.limit,
            markets=self.stats,
        )
        candles = self._market(checked.market).candles.candles(
            checked.period, checked.start_ms, checked.end_ms, checked.limit
        )
        return KlinesReply(checked.market, checked.period, candles)

    def answer_depth(self, query: DepthSnapshotQuery) -> DepthSnapshot:
        if query.limit is not None:
            check_depth_query(query.market, limit=query.limit, markets=self.stats)
        return self._market(query.market).depth_snapshot(query.limit)

    async def _serve_position(self, request: Request) -> None:
        await request.respond(json_encode(self.position()))

    def position(self) -> StatisticsPosition:
        return StatisticsPosition(self.events.watermark, self.events.target, self.markets)

    # ------------------------------------------------------------------ health

    def metrics(self) -> str:
        return generate_latest(self.registry).decode()

    def samples(self) -> Iterable[Sample]:
        return snapshot_age_samples(self.name, self._snapshots.ages())

    def health(self) -> Mapping[str, Any]:
        failing = self.projection.failing()
        return {
            "ok": not failing,
            "ready": self.ready,
            "group": self.group,
            "markets": {m: {"seq": s.seq, "time_ms": s.time_ms} for m, s in self.stats.items()},
            "published": self.published,
            "publish_failures": self.publish_failures,
            "snapshots": self._snapshots.health(),
            "cpu_s": round(self.cpu_s, 3),
            **self.projection.health(),
        }


def _order_to_trade(published: Iterable[EventBatch]) -> None:
    """`bourse_order_to_trade_seconds`, per trade just published: from its taker order's id
    time (stamped by the gateway or the ingress that took the order) to now. Clocks of two hosts
    may disagree by a little: a negative delay counts as none."""
    now_ms = time.time() * 1000
    for body in published:
        for event in body.events:
            if type(event) is Trade:
                observe_order_to_trade(max(now_ms - id_timestamp_ms(event.taker_order_id), 0.0) / 1000)

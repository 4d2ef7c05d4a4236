"""persistence: orders, trades, balances and the ledger written to SQL (MariaDB/MySQL in
production, SQLite embedded), batched and idempotent.

Two durable consumers read the streams the order pipeline leaves behind:

- `persistence-events` on EVENTS (`<ns>.events.>`): engine batches, folded into one row per
  order (`bourse.domain.order_records`, the query service's rules) and one row per trade;
- `persistence-accounts` on ACCOUNTS (`<ns>.accounts.>`): orders the accounts stage refused
  (a closed row with its reject reason), balances as they now are, ledger entries, members.

Group commit: each fetched batch of stream messages (up to `BATCH`) is written in ONE
transaction, with one bulk statement per table, and the batch is acked only after the commit.

Exactly once: the same transaction stores, per consumer and market (or accounts shard), the
envelope sequence of the last batch applied (`applied_positions`); a message at or below it is
a repeat (a redelivery, or a replay of the producer) and is skipped, and rows are keyed so that
writing one twice changes nothing anyway. The consumer's watermark (every stream message up to
it is applied) is stored there too, and on start the durable consumer is recreated to deliver
from the next message: the database, not the consumer's ack state, says what is done, so a
commit lost with the machine (SQLite's WAL with `synchronous=NORMAL`) is simply redone.

A transaction that fails (database down, deadlock) is retried with backoff until it commits:
nothing is ever skipped; `health()` is not ok meanwhile. Each attempt has a deadline
(`sql_transaction_timeout_s`): a black-holed server (packets dropped, nothing refused) fails the
attempt then, instead of holding the consumer for as long as the socket stays open.
One instance at a time: two instances
would split the durable consumer's messages between them. An instance holds the database's
persistence lock (`bourse.adapters.sql.lock`: `GET_LOCK` on MariaDB/MySQL, a file lock on
SQLite; released with the process), taken before it touches anything; a second instance (after
waiting `LOCK_WAIT_S` for the first to go), `bourse rebuild` and `bourse db reset` refuse to run
beside it.

Schema: `bourse.adapters.sql.models`; migrations run at start (Alembic, to the newest revision;
a no-op when the database is there), or ahead of time with `bourse db upgrade`.

Lag (`health()["lag"]`, refreshed every `LAG_INTERVAL_S`): per stream, messages stored after the
watermark, and per subject, the stream sequence distance from the last message applied to the
last one stored; `metrics()` renders them as Prometheus text.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bourse.adapters.cancellation import cancel_and_wait
from bourse.adapters.metrics import sql_write_seconds
from bourse.adapters.retry import retrying
from bourse.adapters.sql.database import create_engine, upgrade
from bourse.adapters.sql.lock import PersistenceLock
from bourse.adapters.sql.models import WATERMARK
from bourse.adapters.sql.store import (
    MarketStatistics,
    Position,
    Row,
    SqlStore,
    balance_row,
    kline_row,
    ledger_row,
    member_row,
)
from bourse.application.projection import Envelope, fresh
from bourse.contracts.messages import AccountsReport, EventBatch
from bourse.contracts.subjects import ACCOUNTS, EVENTS
from bourse.domain.candles import Candle, CandleBook, Period, merged
from bourse.domain.order_records import OrderRecords, orders_to_load
from bourse.runtime.projection import (
    ACCOUNTS_FEED,
    EVENTS_FEED,
    Applied,
    Feed,
    Projection,
    RetryPolicy,
)
from bourse.runtime.service import Service, ServiceContext, StreamConsumer

T = TypeVar("T")


@dataclass(slots=True)
class Written:
    """What one transaction did."""

    positions: dict[str, Position]
    items: int = 0
    duplicates: int = 0
    rows: int = 0
    members: set[int] = field(default_factory=set)


@dataclass(slots=True)
class StreamLag:
    """How far a feed is behind its stream, refreshed every `LAG_INTERVAL_S`."""

    stream_last: int = 0
    subject_last: dict[str, int] = field(default_factory=dict)

    def of(self, feed: Feed) -> dict[str, Any]:
        watermark = feed.watermark
        subjects = {}
        for shard, last in sorted(self.subject_last.items()):
            applied = feed.positions.get(shard)
            done = max(watermark, 0 if applied is None else applied.stream_seq)
            subjects[shard] = max(0, last - done)
        return {"messages": max(0, self.stream_last - watermark), "subjects": subjects}


class PersistenceMetrics(Collector):
    """`bourse_persistence_*`: the lag and the feeds' counters, read when scraped (the feeds keep
    the counts for /healthz; this only exposes them)."""

    COUNTERS = ("messages", "items", "rows", "duplicates", "transactions", "failures")

    def __init__(self, service: Persistence) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        feeds = (service.events, service.accounts)
        lag = GaugeMetricFamily(
            "bourse_persistence_lag_messages",
            "Stream messages stored after the last one applied.",
            labels=["stream"],
        )
        subject_lag = GaugeMetricFamily(
            "bourse_persistence_subject_lag",
            "Stream sequences between the last message of a subject and the last one applied.",
            labels=["stream", "subject"],
        )
        for feed in feeds:
            feed_lag = service.lag[feed.kind].of(feed)
            lag.add_metric([feed.stream], feed_lag["messages"])
            for shard, value in feed_lag["subjects"].items():
                subject = feed.spec.stream.subject(service.ctx.namespace, shard)
                subject_lag.add_metric([feed.stream, subject], value)
        yield lag
        yield subject_lag
        for name in self.COUNTERS:
            counter = CounterMetricFamily(
                f"bourse_persistence_{name}", f"Persistence {name}, per stream.", labels=["stream"]
            )
            for feed in feeds:
                counter.add_metric([feed.stream], getattr(feed, name))
            yield counter


class Persistence(Service):
    name = "persistence"
    description = "Orders, trades, balances and the ledger written to SQL (MariaDB/MySQL; SQLite embedded)"

    BATCH = 512
    """Stream messages per fetch, and so per transaction."""
    LAG_INTERVAL_S = 2.0
    RETRY = RetryPolicy(first_s=0.1, max_s=5.0)
    LOCK_WAIT_S = 10.0

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        self.url = ctx.settings.effective_sql_url
        self.engine: AsyncEngine | None = None
        self._store: SqlStore | None = None
        self.projection = Projection.over(
            self,
            self,
            [EVENTS_FEED, ACCOUNTS_FEED],
            batch=self.BATCH,
            linger_s=ctx.settings.persistence_linger_s,
            retry=self.RETRY,
        )
        self.events = self.projection.feed(EVENTS.kind)
        self.accounts = self.projection.feed(ACCOUNTS.kind)
        self.lag = {kind: StreamLag() for kind in self.projection.feeds}
        self.write_s = {kind: 0.0 for kind in self.projection.feeds}
        self._write_seconds = sql_write_seconds(self.name)
        """`bourse_sql_write_seconds`: each committed transaction, without its wait for SQLite's lock."""
        self._serial: asyncio.Lock | None = None
        self._known_members: set[int] = set()
        self._lag_task: asyncio.Task[None] | None = None
        self._lag_error: str | None = None
        self._lock: PersistenceLock | None = None
        self._abandoned: set[asyncio.Future[Any]] = set()
        """Timed-out transactions still stuck on a dead connection (kept referenced)."""
        self.registry = CollectorRegistry(auto_describe=False)
        """This instance's metrics only: several services (and tests) in one process do not collide."""
        self.registry.register(PersistenceMetrics(self))

    @property
    def store(self) -> SqlStore:
        assert self._store is not None, "persistence is not started"
        return self._store

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._lock = lock = PersistenceLock(self.url)
        await lock.acquire(self.LOCK_WAIT_S)  # first: nothing is touched while another holds it
        self.engine = engine = create_engine(
            self.url, lock_wait_s=math.ceil(self.ctx.settings.sql_transaction_timeout_s)
        )
        await upgrade(engine)
        self._store = store = SqlStore(engine)
        if store.dialect == "sqlite":
            self._serial = asyncio.Lock()  # one writer at a time: SQLite has one write lock anyway
        await self._load_positions(engine, store)
        self.log.info(
            "database ready",
            extra={
                "database": make_url(self.url).render_as_string(hide_password=True),
                "events_watermark": self.events.watermark,
                "accounts_watermark": self.accounts.watermark,
            },
        )
        self._lag_task = asyncio.create_task(self._watch_lag(), name="persistence:lag")

    async def _load_positions(self, engine: AsyncEngine, store: SqlStore) -> None:
        """Read what is applied (and note the demo members' emails), in a transaction bounded and
        retried as the writes are: a previous instance killed in the middle of a statement can
        hold row locks until the server gives its statement up (the session's lock wait timeout),
        and this start must outlast that, not die of it."""
        members = (
            [member_row(member.id, member.email or None, 0) for member in self.ctx.catalog.demo_members]
            if self.ctx.settings.demo_seed
            else []
        )

        async def load(conn: AsyncConnection) -> dict[str, dict[str, Position]]:
            found = {feed.kind: await store.positions(conn, feed.durable, feed.stream) for feed in self.feeds}
            if members:
                await store.upsert_member_emails(conn, members)
            return found

        def failed(exc: BaseException, pause_s: float) -> None:
            self.log.warning(
                "reading the positions failed, retrying",
                extra={"error": f"{type(exc).__name__}: {exc}"[:500], "pause_s": round(pause_s, 3)},
            )

        deadline_s = self.ctx.settings.sql_transaction_timeout_s
        async for attempt in retrying(first_s=self.RETRY.first_s, max_s=self.RETRY.max_s, on_failure=failed):
            with attempt:
                found = await self._attempt(engine, load, deadline_s)
        for feed in self.feeds:
            self._stored(feed, found[feed.kind])

    @property
    def feeds(self) -> tuple[Feed, Feed]:
        return (self.events, self.accounts)

    async def stop(self) -> None:
        if self._lag_task is not None:
            await cancel_and_wait([self._lag_task])
        if self.engine is not None:
            await self.engine.dispose()
        if self._lock is not None:
            await self._lock.release()  # last: nothing of this instance writes any more
            self._lock = None

    def consumers(self) -> Sequence[StreamConsumer]:
        return self.projection.consumers()

    @staticmethod
    def _stored(feed: Feed, positions: dict[str, Position]) -> None:
        feed.positions = positions
        watermark = positions.get(WATERMARK)
        feed.watermark = 0 if watermark is None else watermark.stream_seq

    # ------------------------------------------------------------------ stream input

    async def write_events(self, messages: Sequence[Msg]) -> None:
        """One transaction for a fetched batch of EVENTS messages (retried until it commits)."""
        await self.projection.apply(self.events, messages)

    async def write_reports(self, messages: Sequence[Msg]) -> None:
        """One transaction for a fetched batch of ACCOUNTS messages (retried until it commits)."""
        await self.projection.apply(self.accounts, messages)

    async def write(self, feed: Feed, envelopes: Sequence[Envelope[Any]], watermark: int) -> Applied:
        """One transaction, whose positions are read inside it: an attempt that did commit before
        its connection broke (or its answer came) is not applied twice by the next."""
        work = self._events_work if feed is self.events else self._reports_work
        engine = self.engine
        assert engine is not None, "persistence is not started"

        async def transaction(conn: AsyncConnection) -> Written:
            statistics: dict[str, MarketStatistics] = {}
            if feed is self.events:
                positions, statistics = await self.store.positions_and_statistics(
                    conn, feed.durable, feed.stream
                )
            else:
                positions = await self.store.positions(conn, feed.durable, feed.stream)
            batch = fresh(envelopes, lambda key: positions[key].seq if key in positions else 0)
            written = await work(conn, batch.envelopes, statistics)
            changed = {key: Position(e.seq, e.stream_seq) for key, e in batch.latest.items()}
            current = positions.get(WATERMARK)
            if current is None or watermark > current.stream_seq:
                changed[WATERMARK] = Position(watermark, watermark)
            await self.store.save_positions(conn, feed.durable, feed.stream, changed, time.time_ns())
            positions.update(changed)
            written.positions = positions
            written.duplicates = batch.duplicates
            written.rows += len(changed)
            return written

        started = time.perf_counter()
        # the deadline starts once this feed may write (SQLite: the other one is done)
        async with self._serialized():
            began = time.perf_counter()
            written = await self._attempt(engine, transaction, self.ctx.settings.sql_transaction_timeout_s)
            self._write_seconds.observe(time.perf_counter() - began)
        self.write_s[feed.kind] += time.perf_counter() - started
        self._stored(feed, written.positions)
        self._known_members.update(written.members)
        return Applied(items=written.items, rows=written.rows, duplicates=written.duplicates)

    def failed(self, feed: Feed, exc: BaseException) -> None:
        """Nothing to forget: the positions are read again inside the next attempt."""

    async def _events_work(
        self,
        conn: AsyncConnection,
        envelopes: Sequence[Envelope[EventBatch]],
        statistics: Mapping[str, MarketStatistics],
    ) -> Written:
        store = self.store
        batches = [e.body for e in envelopes]
        records = OrderRecords(await store.load_orders(conn, orders_to_load(batches)) if batches else {})
        for batch in batches:
            records.apply_events(batch)
        await store.insert_orders_if_absent(conn, records.rejected.values())
        await store.upsert_orders(conn, records.changed.values())
        await store.insert_trades(conn, records.trades)
        written = Written({}, items=records.events)
        written.rows = len(records.rejected) + len(records.changed) + len(records.trades)
        written.rows += await self._candles(conn, batches, statistics)
        return written

    async def _candles(
        self, conn: AsyncConnection, batches: Sequence[EventBatch], statistics: Mapping[str, MarketStatistics]
    ) -> int:
        """K-lines and the markets' statistics rows for fresh `batches`, in the caller's
        transaction: per market, a book resumed at the stored time folds its batches in stream
        order (`CandleBook.resume`); the stored candles its changes fall on (per period only the
        interval of the stored time can have one) are loaded in one statement and `merged`.
        Returns the rows written."""
        by_market: dict[str, list[EventBatch]] = {}
        for batch in batches:
            by_market.setdefault(batch.market, []).append(batch)
        changes: list[tuple[str, Period, Candle]] = []
        wanted: list[tuple[str, Period, int]] = []
        markets: list[Row] = []
        for market, group in by_market.items():
            stored = statistics.get(market)
            time_ms, last = (0, None) if stored is None else (stored.time_ms, stored.last_price)
            book = CandleBook.resume(market, time_ms, keep=len(group) + 1)
            for batch in group:
                book.apply(batch.seq, batch.received_at, batch.events)
            for period, candle in book.changes():
                changes.append((market, period, candle))
                if stored is not None and candle.open_time == period.open_time(time_ms):
                    wanted.append((market, period, candle.open_time))
                if period is Period.M1:
                    last = candle.close  # the newest 1m candle's close: the last trade's price
            if stored is None or book.time_ms != time_ms or last != stored.last_price:
                markets.append((market, book.time_ms, last))
        held = await self.store.load_klines(conn, wanted) if wanted else {}
        rows = []
        for market, period, candle in changes:
            before = held.get((market, period, candle.open_time))
            rows.append(kline_row(market, period, candle if before is None else merged(before, candle)))
        await self.store.upsert_klines(conn, rows)
        await self.store.upsert_market_statistics(conn, markets)
        return len(rows) + len(markets)

    async def _reports_work(
        self,
        conn: AsyncConnection,
        envelopes: Sequence[Envelope[AccountsReport]],
        statistics: Mapping[str, MarketStatistics],
    ) -> Written:
        store = self.store
        records = OrderRecords({})
        balances: dict[tuple[int, str, int], Row] = {}
        entries: list[Row] = []
        members: dict[int, Row] = {}
        known = self._known_members
        items = 0
        for envelope in envelopes:
            report, ts = envelope.body, envelope.timestamp_ns
            for rejected in report.rejected:
                records.apply_rejection(rejected, ts)
            for change in report.balances:
                member = change.member_id
                balances[(member, change.currency, report.shard)] = balance_row(
                    change, report.shard, report.seq, ts
                )
                if member not in known and member not in members:
                    members[member] = member_row(member, None, ts)
            entries.extend(
                ledger_row(entry, report.shard, report.seq, n, ts) for n, entry in enumerate(report.entries)
            )
            items += len(report.rejected) + len(report.balances) + len(report.entries)
        await store.insert_members(conn, list(members.values()))
        await store.insert_orders_if_absent(conn, records.rejected.values())
        await store.upsert_balances(conn, list(balances.values()))
        await store.insert_ledger(conn, entries)
        written = Written({}, items=items, members=set(members))
        written.rows = len(members) + len(records.rejected) + len(balances) + len(entries)
        return written

    ABANDON_AFTER_S = 1.0
    """How long a timed-out attempt may take to roll back before it is left behind."""

    async def _attempt(
        self, engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T]], deadline_s: float
    ) -> T:
        """One transaction, bounded as a whole: a deadline inside `engine.begin()` would still
        wait, unbounded, for the rollback on a connection whose server stopped answering (seen
        with a black-holed MariaDB: the consumer stuck long after the network came back). Past
        the deadline the attempt is cancelled; if it does not end within `ABANDON_AFTER_S`, it is
        left behind with its connection and the pool is replaced, so the next attempt connects
        afresh."""

        async def transaction() -> T:
            async with engine.begin() as conn:
                return await work(conn)

        attempt = asyncio.ensure_future(transaction())
        try:
            return await asyncio.wait_for(asyncio.shield(attempt), deadline_s)
        except TimeoutError:
            attempt.cancel()
            done, _ = await asyncio.wait({attempt}, timeout=self.ABANDON_AFTER_S)
            if not done:
                self._abandoned.add(attempt)
                attempt.add_done_callback(self._abandoned.discard)
                await engine.dispose(close=False)
            raise TimeoutError(f"no commit within {deadline_s} s") from None

    @contextlib.asynccontextmanager
    async def _serialized(self) -> AsyncIterator[None]:
        if self._serial is None:
            yield
            return
        async with self._serial:
            yield

    # ------------------------------------------------------------------ lag

    async def _watch_lag(self) -> None:
        while True:
            try:
                await self.refresh_lag()
                self._lag_error = None
            except Exception as exc:  # NATS away for a moment: keep the last figures
                self._lag_error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(self.LAG_INTERVAL_S)

    async def refresh_lag(self) -> None:
        """Read each stream's last sequence, and each subject's, for `health()["lag"]`."""
        js, ns, settings = self.ctx.js, self.ctx.namespace, self.ctx.settings
        expected = {
            EVENTS.kind: set(self.ctx.catalog.markets),
            ACCOUNTS.kind: {str(shard) for shard in range(settings.accounts_shards)},
        }
        for feed in (self.events, self.accounts):
            lag = self.lag[feed.kind]
            info = await js.stream_info(feed.stream)
            lag.stream_last = info.state.last_seq if info.state.messages else 0
            for shard in sorted(expected[feed.kind] | (set(feed.positions) - {WATERMARK})):
                try:
                    last = await js.get_last_msg(feed.stream, feed.spec.stream.subject(ns, shard))
                except NotFoundError:
                    continue
                lag.subject_last[shard] = last.seq or 0

    # ------------------------------------------------------------------ health

    def health(self) -> Mapping[str, Any]:
        failing = self.projection.failing()
        feeds = self.projection.health()
        for kind, feed in self.projection.feeds.items():
            feeds[kind]["positions"] = {
                key: p.seq for key, p in sorted(feed.positions.items()) if key != WATERMARK
            }
            feeds[kind]["write_s"] = round(self.write_s[kind], 3)
        return {
            "ok": self._store is not None and not failing,
            "database": self._store.dialect if self._store is not None else None,
            "failing": failing,
            "lag": {kind: lag.of(self.projection.feeds[kind]) for kind, lag in self.lag.items()},
            "lag_error": self._lag_error,
            **feeds,
        }

    def metrics(self) -> str:
        """The lag and counters in the Prometheus text format (read from the feeds at each scrape)."""
        return generate_latest(self.registry).decode()

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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bourse.adapters.cancellation import cancel_and_wait
from bourse.adapters.jetstream import stream_position
from bourse.adapters.retry import retrying
from bourse.adapters.sql.database import create_engine, upgrade
from bourse.adapters.sql.lock import PersistenceLock
from bourse.adapters.sql.models import WATERMARK
from bourse.adapters.sql.store import Position, Row, SqlStore, balance_row, ledger_row, member_row
from bourse.contracts.messages import (
    ACCOUNTS_REPORTS_DECODER,
    EVENT_BATCH_DECODER,
    AccountsReport,
    EventBatch,
)
from bourse.contracts.subjects import ACCOUNTS, EVENTS, StreamSpec
from bourse.domain.order_records import OrderRecords, orders_to_load
from bourse.runtime.service import Service, ServiceContext, StreamConsumer

EVENTS_DURABLE = "persistence-events"
ACCOUNTS_DURABLE = "persistence-accounts"


@dataclass(slots=True)
class Written:
    """What one transaction did."""

    positions: dict[str, Position]
    items: int = 0
    duplicates: int = 0
    rows: int = 0
    members: set[int] = field(default_factory=set)


@dataclass(slots=True)
class Feed:
    """One consumer: its stream, what is committed, and its counters."""

    spec: StreamSpec
    durable: str
    stream: str
    positions: dict[str, Position] = field(default_factory=dict)
    """Per market or shard (and the watermark `*`), as committed."""
    stream_last: int = 0
    subject_last: dict[str, int] = field(default_factory=dict)
    messages: int = 0
    items: int = 0
    """Engine events (EVENTS); rejections, balance changes and ledger entries (ACCOUNTS)."""
    rows: int = 0
    duplicates: int = 0
    undecodable: int = 0
    transactions: int = 0
    failures: int = 0
    last_error: str | None = None
    write_s: float = 0.0

    @property
    def watermark(self) -> int:
        position = self.positions.get(WATERMARK)
        return 0 if position is None else position.stream_seq

    def lag(self) -> dict[str, Any]:
        watermark = self.watermark
        subjects = {}
        for shard, last in sorted(self.subject_last.items()):
            applied = self.positions.get(shard)
            done = max(watermark, 0 if applied is None else applied.stream_seq)
            subjects[shard] = max(0, last - done)
        return {"messages": max(0, self.stream_last - watermark), "subjects": subjects}

    def stats(self) -> dict[str, Any]:
        return {
            "watermark": self.watermark,
            "positions": {shard: p.seq for shard, p in sorted(self.positions.items()) if shard != WATERMARK},
            "messages": self.messages,
            "items": self.items,
            "rows": self.rows,
            "duplicates": self.duplicates,
            "undecodable": self.undecodable,
            "transactions": self.transactions,
            "failures": self.failures,
            "last_error": self.last_error,
            "write_s": round(self.write_s, 3),
        }


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
            feed_lag = feed.lag()
            lag.add_metric([feed.stream], feed_lag["messages"])
            for shard, value in feed_lag["subjects"].items():
                subject_lag.add_metric([feed.stream, feed.spec.subject(service.ctx.namespace, shard)], value)
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
    RETRY_PAUSE_S = 0.1
    RETRY_PAUSE_MAX_S = 5.0
    LOCK_WAIT_S = 10.0

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        self.url = ctx.settings.effective_sql_url
        self.engine: AsyncEngine | None = None
        self._store: SqlStore | None = None
        ns = ctx.namespace
        self.events = Feed(EVENTS, EVENTS_DURABLE, EVENTS.name(ns))
        self.accounts = Feed(ACCOUNTS, ACCOUNTS_DURABLE, ACCOUNTS.name(ns))
        self._serial: asyncio.Lock | None = None
        self._known_members: set[int] = set()
        self._lag_task: asyncio.Task[None] | None = None
        self._lag_error: str | None = None
        self._lock: PersistenceLock | None = None
        self._abandoned: set[asyncio.Future[Written]] = set()
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
        self.engine = engine = create_engine(self.url)
        await upgrade(engine)
        self._store = store = SqlStore(engine)
        if store.dialect == "sqlite":
            self._serial = asyncio.Lock()  # one writer at a time: SQLite has one write lock anyway
        async with engine.begin() as conn:
            for feed in (self.events, self.accounts):
                feed.positions = await store.positions(conn, feed.durable, feed.stream)
            if self.ctx.settings.demo_seed:
                await store.upsert_member_emails(
                    conn,
                    [
                        member_row(member.id, member.email or None, 0)
                        for member in self.ctx.catalog.demo_members
                    ],
                )
        self.log.info(
            "database ready",
            extra={
                "database": make_url(self.url).render_as_string(hide_password=True),
                "events_watermark": self.events.watermark,
                "accounts_watermark": self.accounts.watermark,
            },
        )
        self._lag_task = asyncio.create_task(self._watch_lag(), name="persistence:lag")

    async def stop(self) -> None:
        if self._lag_task is not None:
            await cancel_and_wait([self._lag_task])
        if self.engine is not None:
            await self.engine.dispose()
        if self._lock is not None:
            await self._lock.release()  # last: nothing of this instance writes any more
            self._lock = None

    def consumers(self) -> Sequence[StreamConsumer]:
        ns = self.ctx.namespace
        linger_s = self.ctx.settings.persistence_linger_s
        return [
            StreamConsumer(
                EVENTS,
                EVENTS_DURABLE,
                EVENTS.wildcard(ns),
                self.write_events,
                batch=self.BATCH,
                resume_after=lambda: self.events.watermark,
                linger_s=linger_s,
            ),
            StreamConsumer(
                ACCOUNTS,
                ACCOUNTS_DURABLE,
                ACCOUNTS.wildcard(ns),
                self.write_reports,
                batch=self.BATCH,
                resume_after=lambda: self.accounts.watermark,
                linger_s=linger_s,
            ),
        ]

    # ------------------------------------------------------------------ stream input

    async def write_events(self, messages: Sequence[Msg]) -> None:
        """One transaction for a fetched batch of EVENTS messages."""
        feed = self.events
        items: list[tuple[int, EventBatch]] = []
        for msg in messages:
            seq = stream_position(msg).seq
            try:
                items.append((seq, EVENT_BATCH_DECODER.decode(msg.data)))
            except msgspec.DecodeError as exc:
                self._undecodable(feed, msg, seq, exc)
        watermark = stream_position(messages[-1]).seq

        async def work(conn: AsyncConnection) -> Written:
            store = self.store
            positions = await store.positions(conn, feed.durable, feed.stream)
            written = Written(positions)
            changed: dict[str, Position] = {}
            fresh: list[EventBatch] = []
            for stream_seq, batch in items:
                applied = changed.get(batch.market) or positions.get(batch.market)
                if applied is not None and batch.seq <= applied.seq:
                    written.duplicates += 1
                    continue
                changed[batch.market] = Position(batch.seq, stream_seq)
                fresh.append(batch)
            records = OrderRecords(await store.load_orders(conn, orders_to_load(fresh)) if fresh else {})
            for batch in fresh:
                records.apply_events(batch)
            await store.insert_orders_if_absent(conn, records.rejected.values())
            await store.upsert_orders(conn, records.changed.values())
            await store.insert_trades(conn, records.trades)
            self._advance(positions, changed, watermark)
            await store.save_positions(conn, feed.durable, feed.stream, changed, time.time_ns())
            positions.update(changed)
            written.items = records.events
            written.rows = len(records.rejected) + len(records.changed) + len(records.trades) + len(changed)
            return written

        await self._commit(feed, len(messages), work)

    async def write_reports(self, messages: Sequence[Msg]) -> None:
        """One transaction for a fetched batch of ACCOUNTS messages."""
        feed = self.accounts
        items: list[tuple[int, int, AccountsReport]] = []
        for msg in messages:
            position = stream_position(msg)
            try:
                reports = ACCOUNTS_REPORTS_DECODER.decode(msg.data).reports
                items.extend((position.seq, position.timestamp_ns, report) for report in reports)
            except msgspec.DecodeError as exc:
                self._undecodable(feed, msg, position.seq, exc)
        watermark = stream_position(messages[-1]).seq

        async def work(conn: AsyncConnection) -> Written:
            store = self.store
            positions = await store.positions(conn, feed.durable, feed.stream)
            written = Written(positions)
            changed: dict[str, Position] = {}
            records = OrderRecords({})
            balances: dict[tuple[int, str, int], Row] = {}
            entries: list[Row] = []
            members: dict[int, Row] = {}
            known = self._known_members
            for stream_seq, ts, report in items:
                shard = str(report.shard)
                applied = changed.get(shard) or positions.get(shard)
                if applied is not None and report.seq <= applied.seq:
                    written.duplicates += 1
                    continue
                changed[shard] = Position(report.seq, stream_seq)
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
                    ledger_row(entry, report.shard, report.seq, n, ts)
                    for n, entry in enumerate(report.entries)
                )
                written.items += len(report.rejected) + len(report.balances) + len(report.entries)
            await store.insert_members(conn, list(members.values()))
            await store.insert_orders_if_absent(conn, records.rejected.values())
            await store.upsert_balances(conn, list(balances.values()))
            await store.insert_ledger(conn, entries)
            self._advance(positions, changed, watermark)
            await store.save_positions(conn, feed.durable, feed.stream, changed, time.time_ns())
            positions.update(changed)
            written.members = set(members)
            written.rows = len(members) + len(records.rejected) + len(balances) + len(entries) + len(changed)
            return written

        await self._commit(feed, len(messages), work)

    @staticmethod
    def _advance(positions: Mapping[str, Position], changed: dict[str, Position], watermark: int) -> None:
        current = positions.get(WATERMARK)
        if current is None or watermark > current.stream_seq:
            changed[WATERMARK] = Position(watermark, watermark)

    def _undecodable(self, feed: Feed, msg: Msg, seq: int, exc: Exception) -> None:
        # only our own services write these streams: a bad message is a bug, not a reason to stop
        feed.undecodable += 1
        self.log.error(
            "undecodable message skipped", extra={"subject": msg.subject, "seq": seq, "error": str(exc)}
        )

    async def _commit(
        self, feed: Feed, messages: int, work: Callable[[AsyncConnection], Awaitable[Written]]
    ) -> None:
        """Run `work` in one transaction until it commits (retrying after any failure, or an
        attempt past its deadline: the positions are read again inside each attempt, so an
        attempt that did commit before its connection broke or its answer came is not applied
        twice)."""
        engine = self.engine
        assert engine is not None, "persistence is not started"
        deadline_s = self.ctx.settings.sql_transaction_timeout_s

        def failed(exc: BaseException, pause_s: float) -> None:
            feed.failures += 1
            if isinstance(exc, TimeoutError):
                feed.last_error = f"TimeoutError: no commit within {deadline_s} s"
            else:
                feed.last_error = f"{type(exc).__name__}: {exc}"[:500]
            self.log.warning(
                "write failed, retrying",
                extra={"consumer": feed.durable, "error": feed.last_error, "pause_s": round(pause_s, 3)},
            )

        async for attempt in retrying(
            first_s=self.RETRY_PAUSE_S, max_s=self.RETRY_PAUSE_MAX_S, on_failure=failed
        ):
            with attempt:
                started = time.perf_counter()
                # the deadline starts once this feed may write (SQLite: the other one is done)
                async with self._serialized():
                    written = await self._attempt(engine, work, deadline_s)
        feed.write_s += time.perf_counter() - started
        feed.positions = written.positions
        feed.messages += messages
        feed.items += written.items
        feed.rows += written.rows
        feed.duplicates += written.duplicates
        feed.transactions += 1
        feed.last_error = None
        self._known_members.update(written.members)

    ABANDON_AFTER_S = 1.0
    """How long a timed-out attempt may take to roll back before it is left behind."""

    async def _attempt(
        self, engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[Written]], deadline_s: float
    ) -> Written:
        """One transaction, bounded as a whole: a deadline inside `engine.begin()` would still
        wait, unbounded, for the rollback on a connection whose server stopped answering (seen
        with a black-holed MariaDB: the consumer stuck long after the network came back). Past
        the deadline the attempt is cancelled; if it does not end within `ABANDON_AFTER_S`, it is
        left behind with its connection and the pool is replaced, so the next attempt connects
        afresh."""

        async def transaction() -> Written:
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
            raise

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
            info = await js.stream_info(feed.stream)
            feed.stream_last = info.state.last_seq if info.state.messages else 0
            for shard in sorted(expected[feed.spec.kind] | (set(feed.positions) - {WATERMARK})):
                try:
                    last = await js.get_last_msg(feed.stream, feed.spec.subject(ns, shard))
                except NotFoundError:
                    continue
                feed.subject_last[shard] = last.seq or 0

    # ------------------------------------------------------------------ health

    def health(self) -> Mapping[str, Any]:
        failing = [feed.durable for feed in (self.events, self.accounts) if feed.last_error is not None]
        return {
            "ok": self._store is not None and not failing,
            "database": self._store.dialect if self._store is not None else None,
            "failing": failing,
            "lag": {EVENTS.kind: self.events.lag(), ACCOUNTS.kind: self.accounts.lag()},
            "lag_error": self._lag_error,
            EVENTS.kind: self.events.stats(),
            ACCOUNTS.kind: self.accounts.stats(),
        }

    def metrics(self) -> str:
        """The lag and counters in the Prometheus text format (read from the feeds at each scrape)."""
        return generate_latest(self.registry).decode()

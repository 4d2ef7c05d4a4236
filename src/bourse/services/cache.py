"""cache: the read models in Redis (`bourse.adapters.redis_read_model`), kept by sequence; runs
only when `BOURSE_REDIS_URL` is set.

Two durable consumers, `cache-events` (`<ns>.events.>`) and `cache-accounts`
(`<ns>.accounts.>`). Per fetched batch: the orders it touches are loaded from Redis
(`orders_to_load`), folded with `OrderRecords` (the persistence service's fold, the query
service's rules), and everything (orders and their per-member indexes, depth levels, last price,
trades, balances, candles) is written with the positions in ONE `MULTI/EXEC`. A batch is acked
only after its EXEC.

Candles: the cache is their single writer and stores them as `bourse.domain.candles` says a
store does. Per write and per market, a `CandleBook.resume`d at the market's stored `time_ms`
folds the fresh EventBatches of that market in stream order; its `changes()` are the parts of
each candle folded since, merged (`merged`) into the newest stored candle of their period when
it has the same open time, else added; the book's `time_ms` is the market's new one. What the
merge needs (the markets' times, the newest candle of every period of a market that traded)
is read in the round trip that loads the orders, before the MULTI. Each period's sorted set is
trimmed to `CANDLES_KEPT` in the same MULTI.

Exactly once: `<ns>:positions` holds, per market (`events:<m>`) and accounts shard
(`accounts:<s>`), the envelope seq last applied, and each consumer's stream watermark
(`events:*`, `accounts:*`). They are read at start and kept in memory (one writer: one instance
per namespace), and read again after any error; a message at or below its position is skipped.
On start each durable consumer is recreated to deliver from the stored watermark + 1, so Redis,
not the consumer's acks, says what is done: an empty Redis (first start, or its data lost while
the service was down) makes the consumers start again from the first message of the streams.

Redis losing its data while the service runs (a restart without persistence, a FLUSHALL) is
seen as "a stream watermark in Redis below the one applied": by the ping, by the read before an
events write, or on the next read of the positions after an error. A write never lands on the
lost state (the events write refuses it; merging candles into nothing would store partial ones
as whole): the service deletes what is left of the namespace, replays each stream from its
first message up to what it had applied (an ephemeral consumer, the same write path, so the
candles and times are rebuilt like the rest), then carries on with the durable consumers where
they are. Until then, and until the cache has reached the
streams' last sequences noted at start, the `ready` position is absent and the read model
answers `not_ready` (the gateway then asks the query service).

Redis down: each write is retried with backoff (never acked unwritten); a ping every
`PING_INTERVAL_S` keeps `health()` honest when no message comes. Redis down at start: the
service starts unhealthy, its consumers deliver from the first message (no watermark known) and
the first write, once Redis answers, reads the positions and skips what they cover.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from redis.asyncio import Redis

from bourse.adapters.cancellation import cancel_and_wait
from bourse.adapters.jetstream import stream_position
from bourse.adapters.metrics import redis_write_seconds
from bourse.adapters.redis_read_model import (
    CANDLES_KEPT,
    FIRST_MS,
    LAST_PRICE,
    ORDER_DECODER,
    ORDER_ENCODER,
    READY,
    TIME_MS,
    RedisKeys,
    candle_bytes,
    candle_of,
    id_member,
    redis_client,
)
from bourse.application.projection import Envelope, fresh
from bourse.contracts.messages import AccountsReport, EventBatch
from bourse.contracts.subjects import ACCOUNTS, EVENTS
from bourse.domain.candles import PERIODS, Candle, CandleBook, Period, merged
from bourse.domain.order_records import OrderRecords, orders_to_load
from bourse.domain.order_views import (
    TRADES_PER_MARKET,
    TRADES_PER_MEMBER,
    MemberTrade,
    OrderView,
    PublicTrade,
    _rests,
    listed,
)
from bourse.domain.orders import Side, Trade
from bourse.runtime.projection import (
    ACCOUNTS_FEED,
    EVENTS_FEED,
    Applied,
    Feed,
    Projection,
    RetryPolicy,
)
from bourse.runtime.service import Service, ServiceContext, StreamConsumer

WATERMARK = "*"


class RedisDataLost(Exception):
    """Redis holds less than the cache applied: its data was lost (the write is retried after
    the rebuild)."""


class Cache(Service):
    name = "cache"
    description = "Read models in Redis (orders, balances, depth, trades), one MULTI/EXEC per batch"

    BATCH = 512
    RETRY = RetryPolicy(first_s=0.1, max_s=2.0)
    PING_INTERVAL_S = 0.5

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        self.keys = RedisKeys(ctx.namespace)
        self.projection = Projection.over(
            self, self, [EVENTS_FEED, ACCOUNTS_FEED], batch=self.BATCH, retry=self.RETRY
        )
        self.events = self.projection.feed(EVENTS.kind)
        self.accounts = self.projection.feed(ACCOUNTS.kind)
        self._redis: Redis | None = None
        self._lock = asyncio.Lock()
        self._stale = False
        """Positions must be read again before the next write (after an error)."""
        self._ready = False
        self.rebuilds = 0
        self.redis_error: str | None = None
        self._ping: asyncio.Task[None] | None = None
        self._write_seconds = redis_write_seconds(self.name)
        """`bourse_redis_write_seconds`: each batch's MULTI/EXEC that went through."""
        self._history_cut = False
        """EVENTS dropped messages this cache never applied: a market's first candle in Redis may
        not be its first one, so its `first_ms` is not written (pages before it go to SQL)."""

    @property
    def redis(self) -> Redis:
        assert self._redis is not None, "cache is not started"
        return self._redis

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        url = self.ctx.settings.redis_url
        if not url:
            raise RuntimeError("the cache service needs BOURSE_REDIS_URL")
        self._redis = redis_client(url.get_secret_value())
        await self.projection.note_targets()
        try:
            await self._load_positions()
            if not self._ready:
                await self._mark_ready_if_caught_up()
        except Exception as exc:
            # Redis away: the consumers start from the first message (no stored watermark to
            # resume after) and the writes wait for Redis, reading the positions first
            self.redis_error = f"{type(exc).__name__}: {exc}"[:500]
            self._stale = True
            self.log.warning("redis unreachable at start", extra={"error": self.redis_error})
        await self._note_history()
        self._ping = asyncio.create_task(self._watch(), name="cache:ping")

    async def stop(self) -> None:
        if self._ping is not None:
            await cancel_and_wait([self._ping])
        if self._redis is not None:
            await self._redis.aclose()

    def consumers(self) -> Sequence[StreamConsumer]:
        return self.projection.consumers()

    async def _note_history(self) -> None:
        """Has EVENTS dropped messages this cache never applied (retention, a purge)? Then a
        market's first candle here may not be its first one."""
        info = await self.ctx.js.stream_info(self.events.stream)
        self._history_cut = info.state.first_seq > self.events.watermark + 1

    async def _load_positions(self) -> None:
        raw = await self.redis.hgetall(self.keys.positions)
        events: dict[str, int] = {}
        accounts: dict[str, int] = {}
        ready = False
        for key, value in raw.items():
            name = key.decode() if isinstance(key, bytes) else str(key)
            if name == READY:
                ready = True
                continue
            kind, _, shard = name.partition(":")
            (events if kind == EVENTS.kind else accounts)[shard] = int(value)
        for feed, positions in ((self.events, events), (self.accounts, accounts)):
            feed.positions = positions
            feed.watermark = positions.get(WATERMARK, 0)
        self._ready = ready

    async def _sync(self) -> None:
        """Read the positions again (after an error); if Redis holds less than was applied (its
        data lost), rebuild from the start of the streams."""
        feeds = (self.events, self.accounts)
        previous = {feed.durable: feed.watermark for feed in feeds}
        await self._load_positions()
        if any(feed.watermark < previous[feed.durable] for feed in feeds):
            await self._rebuild(previous)
        else:
            await self._note_history()
        self._stale = False

    def _lost(self, events: Any, accounts: Any, applied: tuple[int, int] | None = None) -> bool:
        """Redis's stream watermarks (raw replies) are below those applied (read before them):
        its data was lost. Redis's are never below while it keeps its data: the positions in
        memory change only after the EXEC that wrote them."""
        events_applied, accounts_applied = applied or (self.events.watermark, self.accounts.watermark)
        return int(events or 0) < events_applied or int(accounts or 0) < accounts_applied

    def _watermark_fields(self) -> list[str]:
        return [f"{self.events.kind}:{WATERMARK}", f"{self.accounts.kind}:{WATERMARK}"]

    async def _rebuild(self, upto: Mapping[str, int]) -> None:
        """Redis lost the read model: replay both streams from their first message up to what was
        applied before (the durable consumers carry on from there)."""
        self.rebuilds += 1
        self.log.warning("redis lost its data: rebuilding from the streams", extra={"upto": dict(upto)})
        self._ready = False
        # what is left (a write after the loss, an old snapshot) would be skipped or merged into
        await self._forget()
        await self._note_history()
        for feed in (self.events, self.accounts):
            feed.target = max(feed.target, upto[feed.durable])
            last = upto[feed.durable]
            if last <= 0:
                continue
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=60.0
            )
            sub = await self.ctx.js.pull_subscribe(
                feed.spec.stream.wildcard(self.ctx.namespace), stream=feed.stream, config=config
            )
            try:
                done = 0
                while done < last:
                    messages = [
                        m for m in await sub.fetch(self.BATCH, timeout=2.0) if stream_position(m).seq <= last
                    ]
                    if not messages:
                        break
                    done = stream_position(messages[-1]).seq
                    await self._write(feed, self.projection.unpack(feed, messages), done)
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        await self._mark_ready_if_caught_up()

    async def _forget(self) -> None:
        """Delete every key of the namespace, positions first (the reads say `not_ready`)."""
        await self.redis.delete(self.keys.positions)
        found: list[Any] = []
        async for key in self.redis.scan_iter(match=f"{self.keys.prefix}*", count=1000):
            found.append(key)
            if len(found) >= 1000:
                await self.redis.delete(*found)
                found = []
        if found:
            await self.redis.delete(*found)
        for feed in (self.events, self.accounts):
            feed.positions = {}
            feed.watermark = 0

    async def _mark_ready_if_caught_up(self) -> None:
        if self.projection.caught_up():
            await self.redis.hset(self.keys.positions, READY, 1)
            self._ready = True

    async def _watch(self) -> None:
        """Read the watermarks (the ping); on Redis's return with its data gone, after an error,
        or when it lost its data without an error (FLUSHALL), resynchronise."""
        while True:
            try:
                applied = (self.events.watermark, self.accounts.watermark)
                events, accounts = await self.redis.hmget(self.keys.positions, self._watermark_fields())
                if self._lost(events, accounts, applied):
                    self._stale = True
                if self._stale or self.redis_error is not None:
                    async with self._lock:
                        await self._sync()
                self.redis_error = None
            except Exception as exc:
                self.redis_error = f"{type(exc).__name__}: {exc}"[:500]
                self._stale = True
            await asyncio.sleep(self.PING_INTERVAL_S)

    # ------------------------------------------------------------------ stream input

    async def write_events(self, messages: Sequence[Msg]) -> None:
        await self.projection.apply(self.events, messages)

    async def write_reports(self, messages: Sequence[Msg]) -> None:
        await self.projection.apply(self.accounts, messages)

    async def write(self, feed: Feed, envelopes: Sequence[Envelope[Any]], watermark: int) -> Applied:
        """After a failure the positions are read again from Redis before this write."""
        async with self._lock:
            if self._stale:
                await self._sync()
            return await self._write(feed, envelopes, watermark)

    def failed(self, feed: Feed, exc: BaseException) -> None:
        self._stale = True

    async def _write(self, feed: Feed, envelopes: Sequence[Envelope[Any]], watermark: int) -> Applied:
        """One MULTI/EXEC for these envelopes of `feed` (positions in memory, read by the caller)."""
        if watermark <= feed.watermark:
            return Applied(duplicates=len(envelopes))
        batch = fresh(envelopes, lambda key: int(feed.positions.get(key, 0)), feed.watermark)
        changed: dict[str, int] = {key: envelope.seq for key, envelope in batch.latest.items()}
        if feed is self.events:
            pipe_ops = await self._events_written(batch.envelopes)
        else:
            pipe_ops = self._reports_written(batch.envelopes)
        changed[WATERMARK] = watermark
        kind = feed.kind
        target_met = self.projection.caught_up(lambda f: watermark if f is feed else f.watermark)
        began = time.perf_counter()
        async with self.redis.pipeline(transaction=True) as pipe:
            for op in pipe_ops:
                op(pipe)
            pipe.hset(self.keys.positions, mapping={f"{kind}:{shard}": seq for shard, seq in changed.items()})
            if target_met and not self._ready:
                pipe.hset(self.keys.positions, READY, 1)
            await pipe.execute()
        self._write_seconds.observe(time.perf_counter() - began)
        feed.positions.update(changed)
        feed.watermark = watermark
        if target_met:
            self._ready = True
        return Applied(items=len(batch.envelopes), duplicates=batch.duplicates)

    async def _events_written(self, envelopes: Sequence[Envelope[EventBatch]]) -> list[Any]:
        batches = [envelope.body for envelope in envelopes]
        if not batches:
            return []
        by_market: dict[str, list[EventBatch]] = {}
        for batch in batches:
            by_market.setdefault(batch.market, []).append(batch)
        traded = [m for m, its in by_market.items() if any(type(e) is Trade for b in its for e in b.events)]
        known, times, newest = await self._read_before(orders_to_load(batches), list(by_market), traded)
        before = {oid: (view.side, view.price, view.remaining) for oid, view in known.items() if _rests(view)}
        records = OrderRecords(known)
        for batch in batches:
            records.apply_events(batch)
        ops = await self._event_ops(records, before)
        for market, its in by_market.items():
            ops += self._candle_ops(market, its, times[market], newest)
        return ops

    async def _read_before(
        self, ids: set[int], markets: list[str], traded: list[str]
    ) -> tuple[
        dict[int, OrderView], dict[str, tuple[int, bool]], dict[tuple[str, Period], tuple[Candle, bytes]]
    ]:
        """One round trip: the orders the batch touches, the stream watermarks (a loss of data
        is refused here), per market its time and whether its first candle is known, and per
        market that traded the newest candle of every period (the one a change may merge into)."""
        keys = self.keys
        ordered = sorted(ids)
        applied = (self.events.watermark, self.accounts.watermark)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.positions, self._watermark_fields())
            if ordered:
                pipe.mget([keys.order(order_id) for order_id in ordered])
            for market in markets:
                pipe.hmget(keys.market(market), [TIME_MS, FIRST_MS])
            for market in traded:
                for period in PERIODS:
                    pipe.zrange(keys.candles(market, period), -1, -1)
            replies: list[Any] = await pipe.execute()
        events, accounts = replies[0]
        if self._lost(events, accounts, applied):
            raise RedisDataLost(f"redis holds events {events!r} and accounts {accounts!r}, below {applied}")
        i = 1
        found: dict[int, OrderView] = {}
        if ordered:
            for oid, raw in zip(ordered, replies[1], strict=True):
                if raw is not None:
                    found[oid] = ORDER_DECODER.decode(raw)
            i = 2
        times: dict[str, tuple[int, bool]] = {}
        for market in markets:
            time_ms, first_ms = replies[i]
            times[market] = (0 if time_ms is None else int(time_ms), first_ms is not None)
            i += 1
        newest: dict[tuple[str, Period], tuple[Candle, bytes]] = {}
        for market in traded:
            for period in PERIODS:
                held = replies[i]
                i += 1
                if held:
                    newest[(market, period)] = (candle_of(held[0]), held[0])
        return found, times, newest

    def _candle_ops(
        self,
        market: str,
        batches: Sequence[EventBatch],
        stored: tuple[int, bool],
        newest: Mapping[tuple[str, Period], tuple[Candle, bytes]],
    ) -> list[Any]:
        """The market's candles and time after `batches` (fresh, in stream order), merged into
        what Redis holds (`CandleBook.resume`, `merged`), and each changed period trimmed."""
        keys = self.keys
        time_ms, first_known = stored
        # a resumed book opens at most one interval per period and batch: keep them all
        book = CandleBook.resume(market, time_ms, keep=len(batches) + 1)
        for batch in batches:
            book.apply(batch.seq, batch.received_at, batch.events)
        ops: list[Any] = []
        market_key = keys.market(market)
        if book.time_ms > time_ms:
            ops.append(lambda p, t=book.time_ms: p.hset(market_key, TIME_MS, t))
        grown: set[Period] = set()
        """Periods that got a new candle: only they may need trimming."""
        for period, candle in book.changes():
            key = keys.candles(market, period)
            held = newest.get((market, period))
            if held is not None and held[0].open_time == candle.open_time:
                candle = merged(held[0], candle)
                ops.append(lambda p, k=key, old=held[1]: p.zrem(k, old))
            else:
                grown.add(period)
                if period is Period.M1 and held is None and not first_known and not self._history_cut:
                    ops.append(lambda p, t=candle.open_time: p.hsetnx(market_key, FIRST_MS, t))
            ops.append(lambda p, k=key, c=candle: p.zadd(k, {candle_bytes(c): c.open_time}))
        for period in grown:
            key, kept = keys.candles(market, period), CANDLES_KEPT[period]
            ops.append(lambda p, k=key, n=kept: p.zremrangebyrank(k, 0, -n - 1))
        return ops

    def _reports_written(self, envelopes: Sequence[Envelope[AccountsReport]]) -> list[Any]:
        records = OrderRecords({})
        balances: dict[tuple[int, str], tuple[int, int]] = {}
        for envelope in envelopes:
            for rejected in envelope.body.rejected:
                records.apply_rejection(rejected, envelope.timestamp_ns)
            for change in envelope.body.balances:
                balances[(change.member_id, change.currency)] = (change.available, change.locked)
        return self._report_ops(records, balances)

    def _order_ops(self, view: OrderView, *, only_if_absent: bool = False) -> list[Any]:
        keys = self.keys
        member = id_member(view.id)
        data = ORDER_ENCODER.encode(view)
        ops: list[Any] = [
            (lambda p: p.set(keys.order(view.id), data, nx=True))
            if only_if_absent
            else (lambda p: p.set(keys.order(view.id), data))
        ]
        if listed(view):
            ops.append(lambda p: p.zadd(keys.member_orders(view.member_id), {member: 0}))
        if view.is_open:
            ops.append(lambda p: p.zadd(keys.member_open(view.member_id), {member: 0}))
        else:
            ops.append(lambda p: p.zrem(keys.member_open(view.member_id), member))
        return ops

    async def _event_ops(
        self, records: OrderRecords, before: Mapping[int, tuple[Side | None, int | None, int]]
    ) -> list[Any]:
        keys = self.keys
        ops: list[Any] = []
        for view in records.rejected.values():
            ops += self._order_ops(view, only_if_absent=True)
        # depth: each changed order's resting amount after, less what it rested before
        delta: dict[tuple[str, bool, int], int] = {}
        for order_id, (side, price, remaining) in before.items():
            if order_id not in records.changed or price is None:
                continue
            view = records.changed[order_id]
            level = (view.market, side is Side.BUY, price)
            delta[level] = delta.get(level, 0) - remaining
        for view in records.changed.values():
            ops += self._order_ops(view)
            if _rests(view) and view.price is not None:
                level = (view.market, view.side is Side.BUY, view.price)
                delta[level] = delta.get(level, 0) + view.remaining
        touched = [(level, amount) for level, amount in delta.items() if amount]
        if touched:
            async with self.redis.pipeline(transaction=False) as pipe:
                for (market, bid, price), _ in touched:
                    pipe.hget(keys.levels(market, bid), str(price))
                current = await pipe.execute()
            for ((market, bid, price), amount), now in zip(touched, current, strict=True):
                total = (0 if now is None else int(now)) + amount
                key, field_ = keys.levels(market, bid), str(price)
                if total > 0:
                    ops.append(lambda p, k=key, f=field_, t=total: p.hset(k, f, t))
                else:
                    ops.append(lambda p, k=key, f=field_: p.hdel(k, f))
        last_price: dict[str, int] = {}
        for t in records.trades:
            last_price[t.market] = t.price
            public = ORDER_ENCODER.encode(
                PublicTrade(t.trade_id, t.market, t.price, t.amount, t.funds, t.taker_side, t.ts)
            )
            ops.append(lambda p, m=t.market, d=public: p.lpush(keys.trades(m), d))
            maker_side = Side.SELL if t.taker_side is Side.BUY else Side.BUY
            for order_id, member_id, side, role in (
                (t.maker_order_id, t.maker_member_id, maker_side, "maker"),
                (t.taker_order_id, t.taker_member_id, t.taker_side, "taker"),
            ):
                mine = ORDER_ENCODER.encode(
                    MemberTrade(t.trade_id, t.market, t.price, t.amount, t.funds, side, order_id, role, t.ts)
                )
                ops.append(lambda p, m=member_id, d=mine: p.lpush(keys.member_trades(m), d))
                ops.append(lambda p, m=member_id: p.ltrim(keys.member_trades(m), 0, TRADES_PER_MEMBER - 1))
        for market, price in last_price.items():
            ops.append(lambda p, m=market, x=price: p.hset(keys.market(m), LAST_PRICE, x))
            ops.append(lambda p, m=market: p.ltrim(keys.trades(m), 0, TRADES_PER_MARKET - 1))
        return ops

    def _report_ops(
        self, records: OrderRecords, balances: Mapping[tuple[int, str], tuple[int, int]]
    ) -> list[Any]:
        ops: list[Any] = []
        for view in records.rejected.values():
            ops += self._order_ops(view, only_if_absent=True)
        for (member_id, currency), pair in balances.items():
            data = ORDER_ENCODER.encode(pair)
            ops.append(lambda p, m=member_id, c=currency, d=data: p.hset(self.keys.balances(m), c, d))
        return ops

    # ------------------------------------------------------------------ health

    def health(self) -> Mapping[str, Any]:
        failing = self.projection.failing()
        return {
            "ok": self._redis is not None and not failing and self.redis_error is None,
            "ready": self._ready,
            "redis_error": self.redis_error,
            "failing": failing,
            "rebuilds": self.rebuilds,
            **self.projection.health(),
        }

"""cache: the read models in Redis (`bourse.adapters.redis_read_model`), kept by sequence; runs
only when `BOURSE_REDIS_URL` is set.

Two durable consumers, `cache-events` (`<ns>.events.>`) and `cache-accounts`
(`<ns>.accounts.>`). Per fetched batch: the orders it touches are loaded from Redis
(`orders_to_load`), folded with `OrderRecords` (the persistence service's fold, the query
service's rules), and everything (orders and their per-member indexes, depth levels, last price,
trades, balances) is written with the positions in ONE `MULTI/EXEC`. A batch is acked only after
its EXEC.

Exactly once: `<ns>:positions` holds, per market (`events:<m>`) and accounts shard
(`accounts:<s>`), the envelope seq last applied, and each consumer's stream watermark
(`events:*`, `accounts:*`). They are read at start and kept in memory (one writer: one instance
per namespace), and read again after any error; a message at or below its position is skipped.
On start each durable consumer is recreated to deliver from the stored watermark + 1, so Redis,
not the consumer's acks, says what is done: an empty Redis (first start, or its data lost while
the service was down) makes the consumers start again from the first message of the streams.

Redis losing its data while the service runs (a restart without persistence) is seen as
"positions missing but some were applied": the service replays each stream from its first
message up to what it had applied (an ephemeral consumer, the same write path), then carries on
with the durable consumers where they are. Until then, and until the cache has reached the
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from redis.asyncio import Redis

from bourse.adapters.cancellation import cancel_and_wait
from bourse.adapters.jetstream import stream_position
from bourse.adapters.redis_read_model import (
    ORDER_DECODER,
    ORDER_ENCODER,
    READY,
    RedisKeys,
    id_member,
    redis_client,
)
from bourse.adapters.retry import retrying
from bourse.contracts.messages import ACCOUNTS_REPORTS_DECODER, EVENT_BATCH_DECODER
from bourse.contracts.subjects import ACCOUNTS, EVENTS, StreamSpec
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
from bourse.domain.orders import Side
from bourse.runtime.service import Service, ServiceContext, StreamConsumer

EVENTS_DURABLE = "cache-events"
ACCOUNTS_DURABLE = "cache-accounts"
WATERMARK = "*"


@dataclass(slots=True)
class Feed:
    spec: StreamSpec
    durable: str
    stream: str
    positions: dict[str, int] = field(default_factory=dict)
    """Per market or shard, the envelope seq applied; `*` the stream watermark."""
    target: int = 0
    messages: int = 0
    duplicates: int = 0
    transactions: int = 0
    failures: int = 0
    last_error: str | None = None

    @property
    def watermark(self) -> int:
        return self.positions.get(WATERMARK, 0)

    def stats(self) -> dict[str, Any]:
        return {
            "watermark": self.watermark,
            "target": self.target,
            "messages": self.messages,
            "duplicates": self.duplicates,
            "transactions": self.transactions,
            "failures": self.failures,
            "last_error": self.last_error,
        }


class Cache(Service):
    name = "cache"
    description = "Read models in Redis (orders, balances, depth, trades), one MULTI/EXEC per batch"

    BATCH = 512
    RETRY_PAUSE_S = 0.1
    RETRY_PAUSE_MAX_S = 2.0
    PING_INTERVAL_S = 0.5

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        ns = ctx.namespace
        self.keys = RedisKeys(ns)
        self.events = Feed(EVENTS, EVENTS_DURABLE, EVENTS.name(ns))
        self.accounts = Feed(ACCOUNTS, ACCOUNTS_DURABLE, ACCOUNTS.name(ns))
        self._redis: Redis | None = None
        self._lock = asyncio.Lock()
        self._stale = False
        """Positions must be read again before the next write (after an error)."""
        self._ready = False
        self.rebuilds = 0
        self.redis_error: str | None = None
        self._ping: asyncio.Task[None] | None = None

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
        for feed in (self.events, self.accounts):
            info = await self.ctx.js.stream_info(feed.stream)
            feed.target = info.state.last_seq if info.state.messages else 0
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
        self._ping = asyncio.create_task(self._watch(), name="cache:ping")

    async def stop(self) -> None:
        if self._ping is not None:
            await cancel_and_wait([self._ping])
        if self._redis is not None:
            await self._redis.aclose()

    def consumers(self) -> Sequence[StreamConsumer]:
        ns = self.ctx.namespace
        return [
            StreamConsumer(
                EVENTS,
                EVENTS_DURABLE,
                EVENTS.wildcard(ns),
                self.write_events,
                batch=self.BATCH,
                resume_after=lambda: self.events.watermark,
            ),
            StreamConsumer(
                ACCOUNTS,
                ACCOUNTS_DURABLE,
                ACCOUNTS.wildcard(ns),
                self.write_reports,
                batch=self.BATCH,
                resume_after=lambda: self.accounts.watermark,
            ),
        ]

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
        self.events.positions = events
        self.accounts.positions = accounts
        self._ready = ready

    async def _sync(self) -> None:
        """Read the positions again (after an error); if Redis lost them while some were applied,
        rebuild from the start of the streams."""
        had = bool(self.events.positions or self.accounts.positions)
        previous = {feed.durable: feed.watermark for feed in (self.events, self.accounts)}
        await self._load_positions()
        if had and not (self.events.positions or self.accounts.positions):
            await self._rebuild(previous)
        self._stale = False

    async def _rebuild(self, upto: Mapping[str, int]) -> None:
        """Redis lost the read model: replay both streams from their first message up to what was
        applied before (the durable consumers carry on from there)."""
        self.rebuilds += 1
        self.log.warning("redis lost its data: rebuilding from the streams", extra={"upto": dict(upto)})
        self._ready = False
        for feed in (self.events, self.accounts):
            feed.target = max(feed.target, upto[feed.durable])
            last = upto[feed.durable]
            if last <= 0:
                continue
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=60.0
            )
            sub = await self.ctx.js.pull_subscribe(
                feed.spec.wildcard(self.ctx.namespace), stream=feed.stream, config=config
            )
            try:
                done = 0
                while done < last:
                    messages = [
                        m for m in await sub.fetch(self.BATCH, timeout=2.0) if stream_position(m).seq <= last
                    ]
                    if not messages:
                        break
                    await self._write(feed, messages)
                    done = stream_position(messages[-1]).seq
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        await self._mark_ready_if_caught_up()

    async def _mark_ready_if_caught_up(self) -> None:
        if all(feed.watermark >= feed.target for feed in (self.events, self.accounts)):
            await self.redis.hset(self.keys.positions, READY, 1)
            self._ready = True

    async def _watch(self) -> None:
        """Ping Redis; on its return with its data gone (or after an error) resynchronise."""
        while True:
            try:
                await self.redis.ping()
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
        await self._retrying(self.events, messages)

    async def write_reports(self, messages: Sequence[Msg]) -> None:
        await self._retrying(self.accounts, messages)

    async def _retrying(self, feed: Feed, messages: Sequence[Msg]) -> None:
        """Write until Redis takes it (never acked unwritten); after a failure the positions are
        read again from Redis before the next attempt."""

        def failed(exc: BaseException, pause_s: float) -> None:
            self._stale = True
            feed.failures += 1
            feed.last_error = f"{type(exc).__name__}: {exc}"[:500]
            self.log.warning(
                "write failed, retrying",
                extra={"consumer": feed.durable, "error": feed.last_error, "pause_s": round(pause_s, 3)},
            )

        async for attempt in retrying(
            first_s=self.RETRY_PAUSE_S, max_s=self.RETRY_PAUSE_MAX_S, on_failure=failed
        ):
            with attempt:
                async with self._lock:
                    if self._stale:
                        await self._sync()
                    await self._write(feed, messages)
        feed.last_error = None

    async def _write(self, feed: Feed, messages: Sequence[Msg]) -> None:
        """One MULTI/EXEC for these messages of `feed` (positions in memory, read by the caller)."""
        watermark = stream_position(messages[-1]).seq
        if watermark <= feed.watermark:
            feed.duplicates += len(messages)
            return
        changed: dict[str, int] = {}
        records = OrderRecords({})
        pipe_ops: list[Any] = []
        if feed is self.events:
            fresh = []
            for msg in messages:
                if stream_position(msg).seq <= feed.watermark:
                    feed.duplicates += 1
                    continue
                try:
                    batch = EVENT_BATCH_DECODER.decode(msg.data)
                except msgspec.DecodeError:
                    self.log.error("undecodable message skipped", extra={"subject": msg.subject})
                    continue
                applied = changed.get(batch.market, feed.positions.get(batch.market, 0))
                if batch.seq <= applied:
                    feed.duplicates += 1
                    continue
                changed[batch.market] = batch.seq
                fresh.append(batch)
            known = await self._load(orders_to_load(fresh)) if fresh else {}
            before = {
                oid: (view.side, view.price, view.remaining) for oid, view in known.items() if _rests(view)
            }
            records = OrderRecords(known)
            for batch in fresh:
                records.apply_events(batch)
            pipe_ops = await self._event_ops(records, before)
        else:
            balances: dict[tuple[int, str], tuple[int, int]] = {}
            for msg in messages:
                position = stream_position(msg)
                if position.seq <= feed.watermark:
                    feed.duplicates += 1
                    continue
                try:
                    reports = ACCOUNTS_REPORTS_DECODER.decode(msg.data).reports
                except msgspec.DecodeError:
                    self.log.error("undecodable message skipped", extra={"subject": msg.subject})
                    continue
                for report in reports:
                    shard = str(report.shard)
                    applied = changed.get(shard, feed.positions.get(shard, 0))
                    if report.seq <= applied:
                        feed.duplicates += 1
                        continue
                    changed[shard] = report.seq
                    for rejected in report.rejected:
                        records.apply_rejection(rejected, position.timestamp_ns)
                    for change in report.balances:
                        balances[(change.member_id, change.currency)] = (change.available, change.locked)
            pipe_ops = self._report_ops(records, balances)
        changed[WATERMARK] = watermark
        kind = feed.spec.kind
        target_met = all(
            (watermark if f is feed else f.watermark) >= f.target for f in (self.events, self.accounts)
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            for op in pipe_ops:
                op(pipe)
            pipe.hset(self.keys.positions, mapping={f"{kind}:{shard}": seq for shard, seq in changed.items()})
            if target_met and not self._ready:
                pipe.hset(self.keys.positions, READY, 1)
            await pipe.execute()
        feed.positions.update(changed)
        if target_met:
            self._ready = True
        feed.messages += len(messages)
        feed.transactions += 1

    async def _load(self, ids: set[int]) -> dict[int, OrderView]:
        if not ids:
            return {}
        ordered = sorted(ids)
        raws: list[Any] = await self.redis.mget([self.keys.order(order_id) for order_id in ordered])
        found: dict[int, OrderView] = {}
        for oid, raw in zip(ordered, raws, strict=True):
            if raw is not None:
                found[oid] = ORDER_DECODER.decode(raw)
        return found

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
            ops.append(lambda p, m=market, x=price: p.hset(keys.market(m), "last_price", x))
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
        failing = [feed.durable for feed in (self.events, self.accounts) if feed.last_error is not None]
        return {
            "ok": self._redis is not None and not failing and self.redis_error is None,
            "ready": self._ready,
            "redis_error": self.redis_error,
            "failing": failing,
            "rebuilds": self.rebuilds,
            EVENTS.kind: self.events.stats(),
            ACCOUNTS.kind: self.accounts.stats(),
        }

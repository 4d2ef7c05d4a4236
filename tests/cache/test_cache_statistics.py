"""K-lines and tickers in the Redis read model: the cache service folds EventBatches published on
the EVENTS stream (real NATS) into candles in Redis (a private redis-server), and
`RedisReadModel` answers what a `CandleBook` / `RollingTicker` folding the same batches answers,
whatever the delivery (twice, in other chunks, across a restart, after Redis lost its data);
pages older than what Redis holds are passed on (503 not_held)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from bourse.adapters.jetstream import ensure_topology
from bourse.adapters.read_chain import Positions, ReadSource, ReadWatch, _not_a_failure
from bourse.adapters.redis_read_model import CANDLES_KEPT, RedisReadModel
from bourse.application.ports import QueryFailed, StatisticsReads
from bourse.config.settings import Settings
from bourse.contracts.messages import EventBatch, encode
from bourse.contracts.subjects import EVENTS
from bourse.domain.candles import MINUTE_MS, NS_PER_MS, PERIODS, Candle, CandleBook, Period
from bourse.domain.orders import EngineEvent, OrderAccepted, OrderType, Side, TimeInForce, Trade
from bourse.domain.tickers import RollingTicker, Ticker
from bourse.domain.values import Amount, MemberId, OrderId, Price, QuoteUnits, TradeId
from bourse.runtime.host import ServiceHost
from bourse.runtime.service import ServiceContext
from bourse.services.cache import Cache
from tests.cache.conftest import RedisServer, redis_url_of
from tests.cache.test_cache_service import redis_dump
from tests.persistence.helpers import fetch_all, stream_last, until

MARKET = "btc_usd"
OTHER = "eth_usd"


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp() * 1000)


def trade(market: str, price: int, amount: int, at_ms: int, trade_id: int) -> Trade:
    return Trade(
        trade_id=TradeId(trade_id),
        market=market,
        price=Price(price),
        amount=Amount(amount),
        funds=QuoteUnits(price * amount),
        maker_order_id=OrderId(1),
        maker_member_id=MemberId(7),
        taker_order_id=OrderId(2),
        taker_member_id=MemberId(8),
        taker_side=Side.BUY,
        ts=at_ms * NS_PER_MS,
    )


def resting(market: str, order_id: int, side: Side, price: int, at_ms: int) -> OrderAccepted:
    return OrderAccepted(
        order_id=OrderId(order_id),
        member_id=MemberId(9),
        market=market,
        side=side,
        type=OrderType.LIMIT,
        amount=Amount(5),
        price=Price(price),
        tif=TimeInForce.GTC,
        post_only=False,
        created_at=at_ms * NS_PER_MS,
        received_at=at_ms * NS_PER_MS,
    )


def candle(open_time: int, o: int, h: int, lo: int, c: int, volume: int, trades: int, quote: int) -> Candle:
    return Candle(
        open_time, Price(o), Price(h), Price(lo), Price(c), Amount(volume), QuoteUnits(quote), trades
    )


def gap(open_time: int, close: int) -> Candle:
    return candle(open_time, close, close, close, close, 0, 0, 0)


@dataclass
class Stack:
    """The cache service alone on a fresh namespace, a publisher of EventBatches, the Redis read
    model, and the reference: a `CandleBook` and a `RollingTicker` per market folding the same
    batches."""

    nc: Client
    settings: Settings
    redis: Redis
    host: ServiceHost | None = None
    seqs: dict[str, int] = field(default_factory=dict)
    books: dict[str, CandleBook] = field(default_factory=dict)
    tickers: dict[str, RollingTicker] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reads = RedisReadModel(self.redis, self.settings.namespace)
        self.js = self.nc.jetstream()

    @property
    def cache(self) -> Cache:
        assert self.host is not None
        for running in self.host.running:
            if isinstance(running.service, Cache):
                return running.service
        raise AssertionError("no cache service")

    async def start(self) -> None:
        await ensure_topology(self.js, self.settings.namespace)
        self.host = ServiceHost(ServiceContext(self.settings, self.nc, self.js))
        await self.host.start([Cache])

    async def stop(self) -> None:
        if self.host is not None:
            await self.host.stop()
            self.host = None

    async def publish(self, market: str, received_ms: int, events: Sequence[EngineEvent]) -> EventBatch:
        seq = self.seqs[market] = self.seqs.get(market, 0) + 1
        batch = EventBatch(market, seq, received_ms * NS_PER_MS, list(events))
        await self.js.publish(EVENTS.subject(self.settings.namespace, market), encode(batch))
        self.books.setdefault(market, CandleBook(market, keep=10_000)).apply(
            batch.seq, batch.received_at, batch.events
        )
        self.tickers.setdefault(market, RollingTicker(market)).apply(
            batch.seq, batch.received_at, batch.events
        )
        return batch

    async def caught_up(self) -> None:
        last = await stream_last(self.js, self.settings.namespace, "events")
        cache = self.cache
        await until(
            lambda: cache.events.watermark >= last and bool(cache.health()["ready"] and cache.health()["ok"]),
            what="the cache caught up",
        )

    async def expected_ticker(self, market: str) -> Ticker:
        """The reference fold's ticker, with the best prices of the depth (the statistics service
        takes them from its depth book)."""
        reference = self.tickers.get(market, RollingTicker(market))
        depth = await self.reads.depth(market, 1)
        reference.set_best(depth.bids[0][0] if depth.bids else None, depth.asks[0][0] if depth.asks else None)
        return reference.ticker()

    async def assert_as_the_fold(
        self, reads: StatisticsReads, pages: Sequence[tuple[int | None, int | None, int]]
    ) -> None:
        """Every period's pages and every ticker as the reference fold answers them."""
        for market, book in self.books.items():
            for period in PERIODS:
                for start, end, limit in pages:
                    assert await reads.klines(market, period, start, end, limit) == book.candles(
                        period, start, end, limit
                    ), (market, period, start, end, limit)
            assert await reads.ticker(market) == await self.expected_ticker(market), market
        markets = sorted(self.books)
        assert await reads.tickers(markets) == [await self.expected_ticker(m) for m in markets]


@pytest.fixture
async def stack(nc: Client, redis_settings: Settings) -> AsyncIterator[Stack]:
    redis = Redis.from_url(redis_url_of(redis_settings))
    stack = Stack(nc, redis_settings, redis)
    try:
        yield stack
    finally:
        await stack.stop()
        keys = [key async for key in redis.scan_iter(match=f"{redis_settings.namespace}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


T0 = ms(2024, 3, 11, 10)
"""A Monday, 10:00 UTC."""


async def test_scripted_trades_give_hand_computed_candles_and_ticker(stack: Stack) -> None:
    await stack.start()
    # one write per batch: each later batch merges into the candles Redis holds
    await stack.publish(
        MARKET, T0 + 5_000, [trade(MARKET, 100, 2, T0 + 5_000, 1), trade(MARKET, 105, 1, T0 + 5_000, 2)]
    )
    await stack.caught_up()
    await stack.publish(MARKET, T0 + 50_000, [trade(MARKET, 98, 3, T0 + 50_000, 3)])
    await stack.caught_up()
    await stack.publish(MARKET, T0 + 190_000, [trade(MARKET, 110, 1, T0 + 190_000, 4)])
    await stack.caught_up()
    now = T0 + 200_000
    await stack.publish(
        MARKET, now, [resting(MARKET, 11, Side.BUY, 90, now), resting(MARKET, 12, Side.SELL, 120, now)]
    )
    await stack.caught_up()
    reads = stack.reads

    minute = candle(T0, 100, 105, 98, 98, 6, 3, 599)
    assert await reads.klines(MARKET, Period.M1, None, None, 500) == [
        minute,
        gap(T0 + MINUTE_MS, 98),
        gap(T0 + 2 * MINUTE_MS, 98),
        candle(T0 + 3 * MINUTE_MS, 110, 110, 110, 110, 1, 1, 110),
    ]
    whole = candle(T0, 100, 110, 98, 110, 7, 4, 709)
    for period in (Period.M5, Period.M15, Period.M30, Period.H1):
        assert await reads.klines(MARKET, period, None, None, 500) == [whole], period
    assert await reads.klines(MARKET, Period.H4, None, None, 500) == [
        candle(ms(2024, 3, 11, 8), 100, 110, 98, 110, 7, 4, 709)
    ]
    monday = ms(2024, 3, 11)
    assert await reads.klines(MARKET, Period.D1, None, None, 500) == [
        candle(monday, 100, 110, 98, 110, 7, 4, 709)
    ]
    assert await reads.klines(MARKET, Period.W1, None, None, 500) == [
        candle(monday, 100, 110, 98, 110, 7, 4, 709)
    ]
    # paging: from a start, up to an end, the newest ones
    assert await reads.klines(MARKET, Period.M1, T0 + 61_000, None, 2) == [
        gap(T0 + MINUTE_MS, 98),
        gap(T0 + 2 * MINUTE_MS, 98),
    ]
    assert await reads.klines(MARKET, Period.M1, None, T0 + 59_999, 10) == [minute]
    assert await reads.klines(MARKET, Period.M1, None, None, 1) == [
        candle(T0 + 3 * MINUTE_MS, 110, 110, 110, 110, 1, 1, 110)
    ]
    assert await reads.klines(MARKET, Period.M1, None, T0 - 1, 10) == []

    ticker = await reads.ticker(MARKET)
    assert ticker == Ticker(
        market=MARKET,
        open_time=T0 + 3 * MINUTE_MS - 1439 * MINUTE_MS,
        close_time=now,
        open=Price(100),
        high=Price(110),
        low=Price(98),
        last=Price(110),
        volume=Amount(7),
        quote_volume=QuoteUnits(709),
        change=10,
        change_bp=1000,
        trades=4,
        best_bid=Price(90),
        best_ask=Price(120),
        seq=4,
    )
    assert ticker == await stack.expected_ticker(MARKET)

    # a market without a trade: a ticker without prices, no k-lines
    assert await reads.ticker(OTHER) == RollingTicker(OTHER).ticker()
    assert await reads.klines(OTHER, Period.M1, None, None, 500) == []
    await stack.publish(OTHER, now, [resting(OTHER, 21, Side.BUY, 7, now)])
    await stack.caught_up()
    quiet = await reads.ticker(OTHER)
    assert (quiet.open, quiet.last, quiet.trades, quiet.best_bid, quiet.seq) == (None, None, 0, Price(7), 1)
    assert quiet == await stack.expected_ticker(OTHER)
    assert await reads.klines(OTHER, Period.M1, None, None, 500) == []
    assert await reads.tickers([OTHER, MARKET]) == [quiet, ticker]

    # a day later, the window has no trade: open = high = low = last, nothing counted
    later = T0 + 25 * 60 * MINUTE_MS
    await stack.publish(MARKET, later, [])
    await stack.caught_up()
    idle = await reads.ticker(MARKET)
    assert (idle.open, idle.high, idle.low, idle.last, idle.volume, idle.trades, idle.change) == (
        110,
        110,
        110,
        110,
        0,
        0,
        0,
    )
    assert idle == await stack.expected_ticker(MARKET)
    assert len(await reads.klines(MARKET, Period.M1, None, None, 1000)) == 1000


def random_flow(
    rng: random.Random, start_ms: int, batches: int
) -> list[tuple[str, int, list[tuple[int, int, int]]]]:
    """(market, received ms, trades as (price, amount, at ms)): seconds to an hour apart, some
    batches without trades, some trades stamped before the newest time (a clock stepping back)."""
    flow = []
    t = start_ms
    for _ in range(batches):
        t += rng.choice([0, 1_000, 20_000, 59_000, 61_000, 5 * MINUTE_MS, 47 * MINUTE_MS])
        market = rng.choice([MARKET, OTHER])
        trades = [
            (rng.randint(90, 110), rng.randint(1, 9), t - rng.choice([0, 0, 0, 3_000]))
            for _ in range(rng.choice([0, 1, 1, 2, 5]))
        ]
        flow.append((market, t, trades))
    return flow


PAGES: list[tuple[int | None, int | None, int]] = [
    (None, None, 1000),
    (None, None, 7),
    (T0 + 90 * MINUTE_MS, None, 50),
    (None, T0 + 5 * 60 * MINUTE_MS, 100),
    (T0 - 60 * MINUTE_MS, T0 + 3 * 60 * MINUTE_MS, 1000),
    (T0 + 30 * 60 * MINUTE_MS, None, 1),
]


async def test_what_redis_answers_is_what_the_fold_answers_whatever_the_delivery(stack: Stack) -> None:
    rng = random.Random(12)
    flow = random_flow(rng, T0, 400)
    trade_id = 0

    async def publish(part: list[tuple[str, int, list[tuple[int, int, int]]]]) -> None:
        nonlocal trade_id
        for market, received, trades in part:
            events: list[EngineEvent] = []
            for price, amount, at in trades:
                trade_id += 1
                events.append(trade(market, price, amount, at, trade_id))
            await stack.publish(market, received, events)

    await stack.start()
    await publish(flow[:150])
    await stack.caught_up()
    # restart mid-stream: the rest is folded into what Redis holds
    await stack.stop()
    await publish(flow[150:300])
    await stack.start()
    await stack.caught_up()
    await publish(flow[300:])
    await stack.caught_up()
    await stack.assert_as_the_fold(stack.reads, PAGES)

    # every batch delivered again, in other chunks: nothing changes
    ns = stack.settings.namespace
    before = await redis_dump(stack.redis, ns)
    messages = await fetch_all(stack.js, ns, "events")
    for size in (1, 13, 512):
        for chunk in range(0, len(messages), size):
            await stack.cache.write_events(messages[chunk : chunk + size])
    assert await redis_dump(stack.redis, ns) == before
    # ... nor when the cache forgot its positions in memory
    stack.cache.events.positions.clear()
    await stack.cache._load_positions()
    await stack.cache.write_events(messages)
    assert await redis_dump(stack.redis, ns) == before


async def test_redis_losing_its_data_while_running_rebuilds_the_candles(
    stack: Stack, redis_server: RedisServer
) -> None:
    rng = random.Random(3)
    flow = random_flow(rng, T0, 120)
    await stack.start()
    for i, (market, received, trades) in enumerate(flow[:100]):
        await stack.publish(
            market, received, [trade(market, p, a, at, 1000 * i + j) for j, (p, a, at) in enumerate(trades)]
        )
    await stack.caught_up()
    ns = stack.settings.namespace
    before = await redis_dump(stack.redis, ns)
    assert any(":candles:" in key for key in before)

    # FLUSHALL: no connection error; the cache sees its watermarks gone and rebuilds
    await stack.redis.flushall()
    await until(lambda: stack.cache.rebuilds == 1, what="a rebuild")
    await stack.caught_up()
    assert await redis_dump(stack.redis, ns) == before

    # FLUSHALL and a batch at once: the write refuses the lost state, the rebuild takes it in
    await stack.redis.flushall()
    market, received, trades = flow[100]
    await stack.publish(
        market, received, [trade(market, p, a, at, 500_000 + j) for j, (p, a, at) in enumerate(trades)]
    )
    await until(lambda: stack.cache.rebuilds == 2, what="a second rebuild")
    await stack.caught_up()
    await stack.assert_as_the_fold(stack.reads, PAGES)

    # the server restarted without persistence: the same
    await redis_server.stop()
    await until(lambda: not stack.cache.health()["ok"], what="the cache noticed")
    await redis_server.start()
    for i, (market, received, trades) in enumerate(flow[101:], start=101):
        await stack.publish(
            market, received, [trade(market, p, a, at, 1000 * i + j) for j, (p, a, at) in enumerate(trades)]
        )
    await until(lambda: stack.cache.rebuilds == 3, what="a third rebuild")
    await stack.caught_up()
    with contextlib.suppress(RedisConnectionError):  # the test's own client drops its dead connection
        await stack.redis.ping()
    await stack.assert_as_the_fold(stack.reads, PAGES)


async def test_a_page_older_than_what_redis_holds_is_passed_on_as_not_held(stack: Stack) -> None:
    kept = CANDLES_KEPT[Period.M1]
    minutes = kept + 20
    await stack.start()
    for i in range(minutes):  # a trade every minute: 20 1m candles more than Redis keeps
        at = T0 + i * MINUTE_MS
        await stack.publish(MARKET, at, [trade(MARKET, 100 + i % 7, 1, at, i + 1)])
    await stack.caught_up()
    reads = stack.reads
    assert await stack.redis.zcard(stack.reads.keys.candles(MARKET, Period.M1)) == kept
    oldest_held = T0 + 20 * MINUTE_MS
    book = stack.books[MARKET]
    for first in (T0, T0 + 5 * MINUTE_MS, oldest_held):  # reaches a trimmed candle or the one before
        with pytest.raises(QueryFailed) as failed:
            await reads.klines(MARKET, Period.M1, first, None, 10)
        assert (failed.value.status, failed.value.code) == (503, "not_held"), first
        assert _not_a_failure(failed.value), "the read chain's breaker does not count it against Redis"
    with pytest.raises(QueryFailed) as failed:
        await reads.klines(MARKET, Period.M1, None, T0 + 100 * MINUTE_MS, 1000)
    assert failed.value.code == "not_held"
    # from the candle after the oldest held on, and every newest page, Redis answers
    pages: list[tuple[int | None, int | None, int]] = [
        (oldest_held + MINUTE_MS, None, 10),
        (None, None, 1000),
        (None, None, 3),
    ]
    for start, end, limit in pages:
        assert await reads.klines(MARKET, Period.M1, start, end, limit) == book.candles(
            Period.M1, start, end, limit
        )
    # coarser periods hold everything: the first page is answered
    for period in (Period.M5, Period.H1, Period.D1):
        assert await reads.klines(MARKET, period, T0, None, 1000) == book.candles(period, T0, None, 1000)
    # the ticker's window (1440 minutes) is whole
    assert await reads.ticker(MARKET) == await stack.expected_ticker(MARKET)


async def test_reads_say_not_ready_while_the_cache_is_cold(stack: Stack) -> None:
    with pytest.raises(QueryFailed) as failed:
        await stack.reads.klines(MARKET, Period.M1, None, None, 10)
    assert (failed.value.status, failed.value.code) == (503, "not_ready")
    with pytest.raises(QueryFailed) as failed:
        await stack.reads.ticker(MARKET)
    assert (failed.value.status, failed.value.code) == (503, "not_ready")
    with pytest.raises(QueryFailed) as failed:
        await stack.reads.klines(MARKET, Period.M1, 10, 5, 10)  # the k-lines' rule, before Redis
    assert (failed.value.status, failed.value.code) == (400, "start_after_end")


class Book:
    """A model that holds every candle (what the SQL tables are to the chain): the reference fold."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.asked = 0

    async def ticker(self, market: str) -> Ticker:
        self.asked += 1
        return await self.stack.expected_ticker(market)

    async def tickers(self, markets: Sequence[str]) -> list[Ticker]:
        return [await self.ticker(market) for market in markets]

    async def klines(
        self, market: str, period: Period, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[Candle]:
        self.asked += 1
        return self.stack.books[market].candles(period, start_ms, end_ms, limit)


async def test_the_read_chain_passes_a_page_redis_no_longer_holds_to_the_next_model_breaker_closed(
    stack: Stack,
) -> None:
    kept = CANDLES_KEPT[Period.M1]
    await stack.start()
    for i in range(kept + 5):
        at = T0 + i * MINUTE_MS
        await stack.publish(MARKET, at, [trade(MARKET, 100 + i % 3, 1, at, i + 1)])
    await stack.caught_up()
    book = Book(stack)
    last = await stream_last(stack.js, stack.settings.namespace, "events")

    async def held() -> Positions:
        return Positions(last, 0)

    watch = ReadWatch(
        [
            ReadSource("redis", stack.reads, stack.reads.positions),
            ReadSource("sql", book, held),
        ],
        held,
        max_lag_s=1.0,
        interval_s=0.25,
        breaker_failures=2,
        breaker_reset_s=60.0,
    )
    await watch.check()
    chain = watch.statistics_chain("redis", "sql")
    redis_source = watch.sources["redis"]
    for _ in range(5):  # more than the breaker's failures: not_held never opens it
        assert await chain.klines(MARKET, Period.M1, T0, None, 10) == stack.books[MARKET].candles(
            Period.M1, T0, None, 10
        )
    assert (book.asked, redis_source.passed["failed"]) == (5, 5)
    assert redis_source.breaker is not None
    assert redis_source.breaker.context.state == "closed"
    assert await chain.klines(MARKET, Period.M1, None, None, 1000) == stack.books[MARKET].candles(
        Period.M1, None, None, 1000
    )
    assert await chain.ticker(MARKET) == await stack.expected_ticker(MARKET)
    assert (book.asked, redis_source.answered) == (5, 2), "Redis answered what it holds"


async def test_filled_from_a_stream_that_lost_its_first_messages_older_pages_are_not_held(
    stack: Stack,
) -> None:
    await ensure_topology(stack.js, stack.settings.namespace)
    for i in range(30):
        at = T0 + i * MINUTE_MS
        await stack.publish(MARKET, at, [trade(MARKET, 100 + i, 1, at, i + 1)])
    # retention dropped the first 10 batches before the cache ever saw them
    await stack.js.purge_stream(EVENTS.name(stack.settings.namespace), seq=11)
    await stack.start()
    await stack.caught_up()
    reads, book = stack.reads, stack.books[MARKET]
    with pytest.raises(QueryFailed) as failed:  # the market's first candle here is not its first
        await reads.klines(MARKET, Period.M1, None, None, 1000)
    assert (failed.value.status, failed.value.code) == (503, "not_held")
    assert await reads.klines(MARKET, Period.M1, None, None, 5) == book.candles(Period.M1, None, None, 5)
    assert await reads.klines(MARKET, Period.M1, T0 + 11 * MINUTE_MS, None, 5) == book.candles(
        Period.M1, T0 + 11 * MINUTE_MS, None, 5
    )

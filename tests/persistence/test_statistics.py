"""K-lines and tickers in SQL: the persistence service writes them with the EVENTS rows, the SQL
read model answers them as a `CandleBook` / `RollingTicker` folding the same batches would, on
MariaDB and on SQLite; repeats and restarts change nothing."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
from nats.aio.msg import Msg

from bourse.adapters.jetstream import ensure_topology
from bourse.adapters.sql.audit import audit_url
from bourse.adapters.sql.read_model import SqlReadModel
from bourse.application.ports import StatisticsReads
from bourse.contracts.messages import EVENT_BATCH_DECODER, EventBatch, encode
from bourse.contracts.subjects import EVENTS
from bourse.domain.candles import (
    HOUR_MS,
    MINUTE_MS,
    NS_PER_MS,
    PERIODS,
    Candle,
    CandleBook,
    Period,
)
from bourse.domain.orders import EngineEvent, Side, Trade
from bourse.domain.tickers import RollingTicker, Ticker
from bourse.domain.values import Amount, MemberId, OrderId, Price, QuoteUnits, TradeId
from tests.persistence.helpers import Exchange, dump, fetch_all
from tests.persistence.test_persistence_service import busy_streams, started

T0 = Period.W1.open_time(1_790_000_000_000) + 24 * HOUR_MS + 10 * HOUR_MS
"""A Tuesday, 10:00 UTC: an hour (and a minute) opens here."""
MARKET = "btc_usd"
ALL = 1000


def trade(trade_id: int, price: int, amount: int, at_ms: int, market: str = MARKET) -> Trade:
    return Trade(
        TradeId(trade_id),
        market,
        Price(price),
        Amount(amount),
        QuoteUnits(price * amount),
        OrderId(1),
        MemberId(1),
        OrderId(2),
        MemberId(2),
        Side.BUY,
        at_ms * NS_PER_MS,
    )


SCRIPT: list[tuple[int, int, list[tuple[int, int]]]] = [
    # (seq, received at ms, [(price, amount)]): the engine stamps trades with the batch's time
    (1, T0 + 5_000, [(100, 2), (103, 1)]),
    (2, T0 + 50_000, [(98, 1)]),
    (3, T0 + 70_000, [(101, 3)]),
    (4, T0 + 3 * MINUTE_MS + 1_000, []),  # no trade: only the time moves
    (5, T0 + 61 * MINUTE_MS, [(105, 1)]),
]


def scripted() -> list[EventBatch]:
    batches, trade_id = [], 0
    for seq, at, fills in SCRIPT:
        events: list[Any] = []
        for price, amount in fills:
            trade_id += 1
            events.append(trade(trade_id, price, amount, at))
        batches.append(EventBatch(MARKET, seq, at * NS_PER_MS, events))
    return batches


async def published(exchange: Exchange, batches: Sequence[EventBatch]) -> list[Msg]:
    """The batches stored in EVENTS as matching would store them, fetched back as persistence's
    consumer gets them."""
    ns = exchange.settings.namespace
    await ensure_topology(exchange.js, ns)
    for batch in batches:
        await exchange.js.publish(EVENTS.subject(ns, batch.market), encode(batch))
    return list(await fetch_all(exchange.js, ns, "events"))


def candle(open_time: int, o: int, h: int, lo: int, c: int, volume: int, trades: int, quote: int) -> Candle:
    return Candle(
        open_time, Price(o), Price(h), Price(lo), Price(c), Amount(volume), QuoteUnits(quote), trades
    )


async def test_scripted_trades_give_the_hand_computed_candles_and_ticker(
    exchange: Exchange, sql_url: str
) -> None:
    messages = await published(exchange, scripted())
    service = await started(exchange)
    try:
        # in three transactions: candles are merged with the stored ones across writes
        await service.write_events(messages[:2])
        await service.write_events(messages[2:3])
        await service.write_events(messages[3:])
    finally:
        await service.stop()
    reads: StatisticsReads = SqlReadModel.from_url(sql_url)
    assert isinstance(reads, SqlReadModel)
    try:
        minutes = await reads.klines(MARKET, Period.M1, T0, None, 5)
        hours = await reads.klines(MARKET, Period.H1, None, None, ALL)
        newest = await reads.klines(MARKET, Period.M1, None, None, 2)
        ticker = await reads.ticker(MARKET)
        others = await reads.tickers(["eth_usd", MARKET])
        nothing = await reads.klines("eth_usd", Period.M1, None, None, ALL)
    finally:
        await reads.close()

    gap = candle(T0 + 2 * MINUTE_MS, 101, 101, 101, 101, 0, 0, 0)
    assert minutes == [
        candle(T0, 100, 103, 98, 98, 4, 3, 401),
        candle(T0 + MINUTE_MS, 101, 101, 101, 101, 3, 1, 303),
        gap,
        candle(T0 + 3 * MINUTE_MS, 101, 101, 101, 101, 0, 0, 0),
        candle(T0 + 4 * MINUTE_MS, 101, 101, 101, 101, 0, 0, 0),
    ]
    assert newest == [
        candle(T0 + 60 * MINUTE_MS, 101, 101, 101, 101, 0, 0, 0),
        candle(T0 + 61 * MINUTE_MS, 105, 105, 105, 105, 1, 1, 105),
    ]
    assert hours == [
        candle(T0, 100, 103, 98, 101, 7, 4, 704),
        candle(T0 + HOUR_MS, 105, 105, 105, 105, 1, 1, 105),
    ]
    assert ticker == Ticker(
        market=MARKET,
        open_time=T0 + 61 * MINUTE_MS - 1439 * MINUTE_MS,
        close_time=T0 + 61 * MINUTE_MS,
        open=Price(100),
        high=Price(105),
        low=Price(98),
        last=Price(105),
        volume=Amount(8),
        quote_volume=QuoteUnits(809),
        change=5,
        change_bp=500,
        trades=5,
        best_bid=None,
        best_ask=None,
        seq=5,
    )
    # a market without a trade: no prices, no candles
    assert others[1] == ticker
    assert others[0] == RollingTicker("eth_usd").ticker()
    assert nothing == []


async def test_a_coarser_candle_equals_the_merge_of_its_1m_candles(exchange: Exchange, sql_url: str) -> None:
    messages = await published(exchange, scripted())
    service = await started(exchange)
    try:
        for message in messages:
            await service.write_events([message])
    finally:
        await service.stop()
    reads = SqlReadModel.from_url(sql_url)
    try:
        minutes = [c for c in await reads.klines(MARKET, Period.M1, None, None, ALL) if c.trades]
        for period in PERIODS[1:]:
            for coarse in await reads.klines(MARKET, period, None, None, ALL):
                inside = [
                    m
                    for m in minutes
                    if coarse.open_time <= m.open_time < coarse.open_time + period.length_ms
                ]
                if not inside:
                    assert coarse.trades == 0
                    continue
                assert coarse == Candle(
                    coarse.open_time,
                    inside[0].open,
                    max(m.high for m in inside),
                    min(m.low for m in inside),
                    inside[-1].close,
                    Amount(sum(m.volume for m in inside)),
                    QuoteUnits(sum(m.quote_volume for m in inside)),
                    sum(m.trades for m in inside),
                ), (period, coarse)
    finally:
        await reads.close()


def pages(oldest: int, time_ms: int) -> list[tuple[int | None, int | None, int]]:
    """(start, end, limit) of a few pages: from a start, up to an end, one interval."""
    return [(oldest + 1, None, 3), (None, time_ms - 1, 2), (oldest, oldest, 1)]


def folded(messages: Sequence[Msg]) -> tuple[dict[str, CandleBook], dict[str, RollingTicker]]:
    """What a statistics fold of the same EVENTS messages answers, per market."""
    books: dict[str, CandleBook] = {}
    tickers: dict[str, RollingTicker] = {}
    for msg in messages:
        batch = EVENT_BATCH_DECODER.decode(msg.data)
        events: list[EngineEvent] = list(batch.events)
        books.setdefault(batch.market, CandleBook(batch.market, keep=100_000)).apply(
            batch.seq, batch.received_at, events
        )
        tickers.setdefault(batch.market, RollingTicker(batch.market)).apply(
            batch.seq, batch.received_at, events
        )
    return books, tickers


async def answers(url: str, books: dict[str, CandleBook]) -> dict[str, Any]:
    """Every period's candles (whole, and a few pages) and the ticker of each market, read from SQL."""
    reads = SqlReadModel.from_url(url)
    found: dict[str, Any] = {}
    try:
        for market, book in sorted(books.items()):
            for period in PERIODS:
                found[f"{market} {period} all"] = await reads.klines(market, period, None, None, ALL)
                oldest = book.oldest_open_time(period)
                if oldest is not None:
                    for start, end, limit in pages(oldest, book.time_ms):
                        found[f"{market} {period} {start} {end} {limit}"] = await reads.klines(
                            market, period, start, end, limit
                        )
            found[f"{market} ticker"] = await reads.ticker(market)
            depth = await reads.depth(market)
            found[f"{market} best"] = (
                depth.bids[0][0] if depth.bids else None,
                depth.asks[0][0] if depth.asks else None,
            )
    finally:
        await reads.close()
    return found


def expected(
    books: dict[str, CandleBook], tickers: dict[str, RollingTicker], found: dict[str, Any]
) -> dict[str, Any]:
    want: dict[str, Any] = {}
    for market, book in sorted(books.items()):
        for period in PERIODS:
            want[f"{market} {period} all"] = book.candles(period, limit=ALL)
            oldest = book.oldest_open_time(period)
            if oldest is not None:
                for start, end, limit in pages(oldest, book.time_ms):
                    want[f"{market} {period} {start} {end} {limit}"] = book.candles(period, start, end, limit)
        ticker = tickers[market]
        ticker.set_best(*found[f"{market} best"])  # the depth's, which the fold takes from its own book
        want[f"{market} ticker"] = ticker.ticker()
        want[f"{market} best"] = found[f"{market} best"]
    return want


async def test_sql_klines_and_tickers_equal_the_fold_of_the_same_batches_through_repeats_and_a_restart(
    exchange: Exchange, sql_url: str
) -> None:
    await busy_streams(exchange, members=6, rounds=12)
    ns = exchange.settings.namespace
    events = await fetch_all(exchange.js, ns, "events")
    reports = await fetch_all(exchange.js, ns, "accounts")
    books, tickers = folded(events)
    assert set(books) == {"btc_usd", "eth_usd", "eth_btc"}
    half = len(events) // 2
    first = await started(exchange)
    try:
        await first.write_reports(reports)
        for start in range(0, half, 7):  # uneven pieces: candles merged across many writes
            await first.write_events(events[start : min(start + 7, half)])
        await first.write_events(events[: half // 2])  # delivered again: skipped
    finally:
        await first.stop()
    second = await started(exchange)  # a restart mid-stream
    try:
        await second.write_events(events[half - 5 :])  # overlapping what the first instance wrote
        once = await dump(sql_url)
        await second.write_events(events)  # the whole stream again
        assert await dump(sql_url) == once
    finally:
        await second.stop()
    assert len(once["klines"]) >= 3 * len(PERIODS)
    assert {row[0] for row in once["market_statistics"]} == set(books)
    found = await answers(sql_url, books)
    assert found == expected(books, tickers, found)


def wandering(seed: int, batches: int, *, step_back: bool) -> list[EventBatch]:
    """Two markets' batches over more than a week: gaps of seconds to hours (so every period
    opens many intervals, weeks included), zero to three trades each, prices wandering; with
    `step_back`, some batches stamped before the previous one (a clock stepping back: the fold
    counts them at the newest time)."""
    rng = random.Random(seed)
    out: list[EventBatch] = []
    state = {market: [0, 0, T0, 1000] for market in ("btc_usd", "eth_btc")}  # seq, trade id, ms, price
    for _ in range(batches):
        market = rng.choice(sorted(state))
        seq, trade_id, at, price = state[market]
        at += rng.choice([1_000, 20_000, 59_000, 61_000, 7 * MINUTE_MS, HOUR_MS + 1, 5 * HOUR_MS])
        stamped = at - rng.choice([0] * 9 + [30_000]) if step_back else at
        events: list[Any] = []
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            price = max(1, price + rng.randint(-30, 30))
            trade_id += 1
            events.append(trade(trade_id, price, rng.randint(1, 9), stamped, market))
        seq += 1
        out.append(EventBatch(market, seq, stamped * NS_PER_MS, events))
        state[market] = [seq, trade_id, at, price]
    return out


@pytest.mark.parametrize("step_back", [False, True], ids=["steady", "clock-steps-back"])
async def test_candles_over_many_intervals_written_in_pieces_and_a_restart_equal_the_fold(
    exchange: Exchange, sql_url: str, step_back: bool
) -> None:
    events = await published(exchange, wandering(seed=12, batches=500, step_back=step_back))
    books, tickers = folded(events)
    assert books["btc_usd"].time_ms - T0 > 7 * 24 * HOUR_MS  # past a Monday: two weeks
    rng = random.Random(3)
    service = await started(exchange)
    i = 0
    try:
        while i < len(events):
            size = rng.choice([1, 2, 5, 17, 60])
            await service.write_events(events[i : i + size])
            i += size
            if rng.random() < 0.05:
                await service.stop()
                service = await started(exchange)
    finally:
        await service.stop()
    found = await answers(sql_url, books)
    assert found == expected(books, tickers, found)
    report = await audit_url(sql_url)
    *_, minutes, periods = report.checks
    assert periods.ok, "\n".join(report.lines())
    assert periods.checked > 500
    # the trades table keeps no receive time of a batch without trades, which the fold counts
    # too: with the clock stepping back the audit's minutes may differ (its documented limit)
    assert minutes.ok or step_back, "\n".join(report.lines())

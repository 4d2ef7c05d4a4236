"""K-lines: hand-computed candles for a scripted trade sequence (a gap, a week boundary), gap
filling and paging, bounded memory, idempotent batches, and, over random trades, agreement with
a plain group-by, coarse candles as the fold of their 1m candles, byte-equal replays and
snapshot/restore."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bourse.domain.candles import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    NS_PER_MS,
    PERIODS,
    WEEK_MS,
    Candle,
    CandleBook,
    Period,
    fill_gaps,
    merged,
    page_bounds,
)
from bourse.domain.orders import CloseReason, EngineEvent, OrderClosed, OrderStatus, Side, Trade
from bourse.domain.values import Amount, MemberId, OrderId, Price, QuoteUnits, TradeId
from tests.domain.engine_support import MARKET, SYMBOL

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """Milliseconds since the epoch of a UTC date and time (integers only)."""
    return (datetime(year, month, day, hour, minute, second, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)


def trade(price: int, amount: int, at_ms: int, trade_id: int = 1) -> Trade:
    return Trade(
        trade_id=TradeId(trade_id),
        market=SYMBOL,
        price=Price(price),
        amount=Amount(amount),
        funds=MARKET.funds(Price(price), Amount(amount)),
        maker_order_id=OrderId(1),
        maker_member_id=MemberId(1),
        taker_order_id=OrderId(2),
        taker_member_id=MemberId(2),
        taker_side=Side.BUY,
        ts=at_ms * NS_PER_MS + 123,  # sub-millisecond digits are dropped
    )


def candle(open_time: int, o: int, h: int, lo: int, c: int, volume: int, quote: int, trades: int) -> Candle:
    return Candle(
        open_time, Price(o), Price(h), Price(lo), Price(c), Amount(volume), QuoteUnits(quote), trades
    )


def gap(open_time: int, close: int) -> Candle:
    return candle(open_time, close, close, close, close, 0, 0, 0)


FF = MARKET.funds_factor
SUNDAY_2359 = ms(2024, 3, 10, 23, 59)
"""2024-03-10 is a Sunday: the next minute opens a new hour, day and week."""
MONDAY = ms(2024, 3, 11)
LAST_MONDAY = ms(2024, 3, 4)
SCRIPT = [
    (100, 2, SUNDAY_2359 + 10_000),
    (105, 1, SUNDAY_2359 + 40_000),
    (98, 3, SUNDAY_2359 + 59_999),
    (101, 1, MONDAY),
    (103, 2, MONDAY + 30_000),
    # 00:01 and 00:02 without trades
    (99, 4, MONDAY + 3 * MINUTE_MS + 15_000),
]


def scripted() -> CandleBook:
    book = CandleBook(SYMBOL)
    for price, amount, at in SCRIPT:
        book.add_trade(
            Price(price), Amount(amount), MARKET.funds(Price(price), Amount(amount)), at * NS_PER_MS
        )
        assert book.time_ms == at
    return book


def sunday_candle(open_time: int) -> Candle:
    return candle(open_time, 100, 105, 98, 98, 6, (200 + 105 + 294) * FF, 3)


def monday_candle(open_time: int) -> Candle:
    return candle(open_time, 101, 103, 99, 99, 7, (101 + 206 + 396) * FF, 3)


# --------------------------------------------------------------------------- periods


def test_open_times_are_aligned_to_utc_and_weeks_open_on_monday() -> None:
    assert Period.M1.open_time(SUNDAY_2359 + 59_999) == SUNDAY_2359
    assert Period.M15.open_time(ms(2024, 3, 11, 10, 44, 59)) == ms(2024, 3, 11, 10, 30)
    assert Period.H4.open_time(ms(2024, 3, 11, 10, 44)) == ms(2024, 3, 11, 8)
    assert Period.D1.open_time(ms(2024, 3, 11, 23, 59, 59)) == MONDAY
    assert Period.W1.open_time(SUNDAY_2359) == LAST_MONDAY
    assert Period.W1.open_time(MONDAY) == MONDAY
    assert Period.W1.open_time(ms(2024, 3, 17, 23, 59, 59)) == MONDAY
    assert Period.W1.open_time(0) == ms(1969, 12, 29), "the epoch was a Thursday"
    assert datetime.fromtimestamp(Period.W1.open_time(ms(2031, 7, 4)) / 1000, UTC).weekday() == 0
    assert [p.length_ms for p in PERIODS] == [
        MINUTE_MS,
        5 * MINUTE_MS,
        15 * MINUTE_MS,
        30 * MINUTE_MS,
        HOUR_MS,
        4 * HOUR_MS,
        DAY_MS,
        WEEK_MS,
    ]
    assert Period("1w") is Period.W1
    with pytest.raises(ValueError, match="2m"):
        Period("2m")


# --------------------------------------------------------------------------- the scripted sequence


def test_scripted_trades_give_hand_computed_candles() -> None:
    book = scripted()
    assert book.candles(Period.M1) == [
        sunday_candle(SUNDAY_2359),
        candle(MONDAY, 101, 103, 101, 103, 3, (101 + 206) * FF, 2),
        gap(MONDAY + MINUTE_MS, 103),
        gap(MONDAY + 2 * MINUTE_MS, 103),
        candle(MONDAY + 3 * MINUTE_MS, 99, 99, 99, 99, 4, 396 * FF, 1),
    ]
    sunday_5m = ms(2024, 3, 10, 23, 55)
    assert book.candles(Period.M5) == [sunday_candle(sunday_5m), monday_candle(MONDAY)]
    assert book.candles(Period.M15) == [sunday_candle(sunday_5m - 10 * MINUTE_MS), monday_candle(MONDAY)]
    assert book.candles(Period.H1) == [sunday_candle(SUNDAY_2359 - 59 * MINUTE_MS), monday_candle(MONDAY)]
    assert book.candles(Period.H4) == [sunday_candle(ms(2024, 3, 10, 20)), monday_candle(MONDAY)]
    assert book.candles(Period.D1) == [sunday_candle(ms(2024, 3, 10)), monday_candle(MONDAY)]
    assert book.candles(Period.W1) == [sunday_candle(LAST_MONDAY), monday_candle(MONDAY)]
    assert book.latest(Period.W1) == monday_candle(MONDAY)
    assert book.oldest_open_time(Period.W1) == LAST_MONDAY


def test_gaps_are_filled_up_to_the_stream_time_and_nothing_before_the_first_trade() -> None:
    book = scripted()
    assert book.candles(Period.M1, start_ms=ms(2024, 3, 1)) == book.candles(Period.M1)
    assert book.candles(Period.M1, end_ms=SUNDAY_2359 - 1) == []
    book.advance((MONDAY + 6 * MINUTE_MS + 5) * NS_PER_MS)  # time moves, no trade
    assert book.candles(Period.M1, start_ms=MONDAY + 3 * MINUTE_MS) == [
        candle(MONDAY + 3 * MINUTE_MS, 99, 99, 99, 99, 4, 396 * FF, 1),
        gap(MONDAY + 4 * MINUTE_MS, 99),
        gap(MONDAY + 5 * MINUTE_MS, 99),
        gap(MONDAY + 6 * MINUTE_MS, 99),
    ]
    assert book.latest(Period.M1) == gap(MONDAY + 6 * MINUTE_MS, 99)
    assert book.latest(Period.H1) == monday_candle(MONDAY)
    book.advance(ms(2024, 3, 11, 2, 30) * NS_PER_MS)
    assert book.candles(Period.H1, start_ms=MONDAY) == [
        monday_candle(MONDAY),
        gap(MONDAY + HOUR_MS, 99),
        gap(MONDAY + 2 * HOUR_MS, 99),
    ]
    book.advance(0)
    assert book.time_ms == ms(2024, 3, 11, 2, 30), "time never goes back"
    assert CandleBook(SYMBOL).candles(Period.M1) == []
    assert CandleBook(SYMBOL).latest(Period.M1) is None


def test_a_range_means_the_intervals_that_meet_it_and_limit_pages_from_start_or_from_the_end() -> None:
    book = scripted()
    minutes = book.candles(Period.M1)
    assert book.candles(Period.M1, start_ms=MONDAY + 90_000, end_ms=MONDAY + 2 * MINUTE_MS) == minutes[2:4]
    assert book.candles(Period.M1, start_ms=SUNDAY_2359, limit=2) == minutes[:2], "from the start"
    assert book.candles(Period.M1, limit=2) == minutes[-2:], "no start: the newest"
    assert book.candles(Period.M1, end_ms=MONDAY + MINUTE_MS, limit=2) == minutes[1:3]
    assert book.candles(Period.M1, limit=0) == []
    assert book.candles(Period.M1, start_ms=MONDAY + HOUR_MS) == [], "after the stream time"
    assert book.candles(Period.M1, start_ms=MONDAY + MINUTE_MS, end_ms=MONDAY) == [], "start after end"
    assert len(book.candles(Period.M1, limit=1000)) == 5


def test_memory_is_bounded_per_period_and_queries_start_at_the_oldest_kept_candle() -> None:
    book = CandleBook(SYMBOL, keep=3)
    for minute in range(10):
        book.add_trade(
            Price(100 + minute), Amount(1), QuoteUnits(FF), (MONDAY + minute * MINUTE_MS) * NS_PER_MS
        )
    assert [c.open for c in book.candles(Period.M1)] == [107, 108, 109]
    assert book.oldest_open_time(Period.M1) == MONDAY + 7 * MINUTE_MS
    assert book.candles(Period.H1) == [candle(MONDAY, 100, 109, 100, 109, 10, 10 * FF, 10)]
    with pytest.raises(ValueError, match="keep"):
        CandleBook(SYMBOL, keep=0)
    restored = CandleBook.restore(book.snapshot())
    assert restored.keep == 3
    assert restored.candles(Period.M1) == book.candles(Period.M1)


def test_an_event_stamped_before_the_newest_time_counts_at_the_newest_time() -> None:
    book = scripted()
    late = trade(110, 1, SUNDAY_2359 + 5)  # a clock stepped back: it joins the open candles
    book.apply(1, late.ts, [late])
    assert book.time_ms == MONDAY + 3 * MINUTE_MS + 15_000
    assert book.candles(Period.M1)[0] == sunday_candle(SUNDAY_2359), "a closed candle never changes"
    assert book.latest(Period.M1) == candle(MONDAY + 3 * MINUTE_MS, 99, 110, 99, 110, 5, (396 + 110) * FF, 2)


def test_batches_are_applied_once_and_changes_name_the_candles_changed_since_last_asked() -> None:
    book = CandleBook(SYMBOL)
    assert book.changes() == []
    first = [trade(100, 2, SUNDAY_2359 + 10_000, 1), trade(105, 1, SUNDAY_2359 + 40_000, 2)]
    assert book.apply(7, first[-1].ts, first)
    assert [(p, c.open_time) for p, c in book.changes()] == [(p, p.open_time(SUNDAY_2359)) for p in PERIODS]
    assert book.changes() == [], "asked again: nothing new"
    assert not book.apply(7, first[-1].ts, first), "a repeat"
    assert not book.apply(6, first[-1].ts, first), "an older batch"
    assert book.seq == 7
    assert book.candles(Period.M1)[0].trades == 2
    closed_only = OrderClosed(
        order_id=OrderId(3),
        member_id=MemberId(3),
        market=SYMBOL,
        status=OrderStatus.CANCELLED,
        reason=CloseReason.CANCELLED,
        executed=Amount(0),
    )
    assert book.apply(8, (SUNDAY_2359 + 50_000) * NS_PER_MS, [closed_only])
    assert book.changes() == [], "no trade, no change"
    assert book.time_ms == SUNDAY_2359 + 50_000, "but the time moved"
    # across a minute (and week) boundary: the Sunday minute gets a trade and closes
    second = [trade(98, 3, SUNDAY_2359 + 59_999, 3), trade(101, 1, MONDAY + 1, 4)]
    book.apply(9, second[-1].ts, second)
    changed = book.changes()
    assert [c.open_time for p, c in changed if p is Period.M1] == [SUNDAY_2359, MONDAY]
    assert [c for p, c in changed if p is Period.W1] == [
        sunday_candle(LAST_MONDAY),
        candle(MONDAY, 101, 101, 101, 101, 1, 101 * FF, 1),
    ]
    # a new minute only: the candle open at the last call got no trade and is not repeated
    book.apply(10, (MONDAY + 2 * MINUTE_MS) * NS_PER_MS, [trade(103, 2, MONDAY + 2 * MINUTE_MS, 5)])
    assert [(p, c.open_time) for p, c in book.changes()] == [(Period.M1, MONDAY + 2 * MINUTE_MS)] + [
        (p, p.open_time(MONDAY)) for p in PERIODS[1:]
    ]
    assert CandleBook.restore(book.snapshot()).changes() == [], "a restored book starts clean"


# --------------------------------------------------------------------------- random trades


def reference(trades: list[tuple[int, int, int]], period: Period, now_ms: int) -> list[Candle]:
    """A plain group-by: each trade at the newest time so far, candles gap-filled up to now."""
    groups: dict[int, list[tuple[int, int]]] = {}
    newest = 0
    for price, amount, at in trades:
        newest = max(newest, at)
        groups.setdefault(period.open_time(newest), []).append((price, amount))
    if not groups:
        return []
    out: list[Candle] = []
    close = 0
    t = min(groups)
    while t <= period.open_time(max(now_ms, newest)):
        if t in groups:
            prices = [p for p, _ in groups[t]]
            volume = sum(a for _, a in groups[t])
            quote = sum(p * a * FF for p, a in groups[t])
            out.append(candle(t, prices[0], max(prices), min(prices), prices[-1], volume, quote, len(prices)))
            close = prices[-1]
        else:
            out.append(gap(t, close))
        t += period.length_ms
    return out


def folded(parts: list[Candle], open_time: int, previous_close: int) -> Candle:
    """The fold of finer candles into one coarse candle: only those with trades count."""
    traded = [c for c in parts if c.trades]
    if not traded:
        return gap(open_time, previous_close)
    return candle(
        open_time,
        traded[0].open,
        max(c.high for c in traded),
        min(c.low for c in traded),
        traded[-1].close,
        sum(c.volume for c in traded),
        sum(c.quote_volume for c in traded),
        sum(c.trades for c in traded),
    )


ALL = 10**6
START = ms(2024, 3, 10, 21, 17, 3)
STEPS = st.one_of(
    st.integers(0, 2_000),  # same minute, often the same millisecond
    st.integers(0, 3 * MINUTE_MS),
    st.integers(0, 3 * HOUR_MS),  # gaps, hours and the Monday boundary
    st.integers(-MINUTE_MS, 0),  # a clock stepping back
)
TRADES = st.lists(st.tuples(st.integers(1, 300), st.integers(1, 50), STEPS), max_size=120)


def timed(steps: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    at = START
    out = []
    for price, amount, step in steps:
        at = max(0, at + step)
        out.append((price, amount, at))
    return out


def fold(trades: list[tuple[int, int, int]], batch: int = 3) -> CandleBook:
    book = CandleBook(SYMBOL)
    for seq, i in enumerate(range(0, len(trades), batch), start=1):
        events: list[EngineEvent] = [
            trade(p, a, at, i + k) for k, (p, a, at) in enumerate(trades[i : i + batch])
        ]
        book.apply(seq, max(t.ts for t in events if isinstance(t, Trade)), events)
    return book


@settings(max_examples=200, deadline=None)
@given(steps=TRADES)
def test_every_period_equals_a_plain_group_by(steps: list[tuple[int, int, int]]) -> None:
    trades = timed(steps)
    book = fold(trades)
    for period in PERIODS:
        assert book.candles(period, limit=ALL) == reference(trades, period, book.time_ms)


@settings(max_examples=200, deadline=None)
@given(steps=TRADES)
def test_a_coarse_candle_is_the_fold_of_its_1m_candles(steps: list[tuple[int, int, int]]) -> None:
    book = fold(timed(steps))
    minutes = book.candles(Period.M1, limit=ALL)
    for period in (Period.M5, Period.H1, Period.H4, Period.D1, Period.W1):
        inside: dict[int, list[Candle]] = {}
        for minute in minutes:
            inside.setdefault(period.open_time(minute.open_time), []).append(minute)
        previous_close = 0
        for coarse in book.candles(period, limit=ALL):
            # the first coarse candle may open before the first minute: its minutes are all there
            assert coarse == folded(inside.get(coarse.open_time, []), coarse.open_time, previous_close)
            previous_close = coarse.close


NEAR_STEPS = st.one_of(st.integers(0, 2_000), st.integers(0, 3 * MINUTE_MS), st.integers(0, 90 * MINUTE_MS))


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(1, 300), st.integers(1, 50), NEAR_STEPS), max_size=60),
    asks=st.lists(st.booleans(), min_size=60, max_size=60),
)
def test_changes_are_the_candles_that_differ_from_the_last_time_they_were_asked(
    steps: list[tuple[int, int, int]], asks: list[bool]
) -> None:
    book = CandleBook(SYMBOL)

    def stored() -> dict[tuple[Period, int], Candle]:
        return {(p, c.open_time): c for p in PERIODS for c in book.candles(p, limit=ALL) if c.trades}

    seen = stored()
    for seq, ((price, amount, at), ask) in enumerate(zip(timed(steps), asks, strict=False), start=1):
        book.apply(seq, at * NS_PER_MS, [trade(price, amount, at)])
        if ask:
            now = stored()
            expected = sorted(
                ((p, c) for key, c in now.items() if seen.get(key) != c for p in [key[0]]),
                key=lambda pc: (PERIODS.index(pc[0]), pc[1].open_time),
            )
            assert book.changes() == expected
            seen = now


@settings(max_examples=200, deadline=None)
@given(steps=TRADES, cut=st.integers(0, 120), batch=st.integers(1, 5))
def test_replays_give_the_same_bytes_and_restore_resumes(
    steps: list[tuple[int, int, int]], cut: int, batch: int
) -> None:
    trades = timed(steps)
    straight = fold(trades)
    again = fold(trades, batch=batch)  # batches cut differently: the same candles
    for period in PERIODS:
        assert msgspec.msgpack.encode(again.candles(period, limit=ALL)) == msgspec.msgpack.encode(
            straight.candles(period, limit=ALL)
        )
    cut = min(cut, len(trades))
    first = fold(trades[:cut])
    resumed = CandleBook.restore(first.snapshot())
    assert resumed.snapshot() == first.snapshot()
    for seq, (p, a, at) in enumerate(trades[cut:], start=first.seq + 1):
        resumed.apply(seq, at * NS_PER_MS, [trade(p, a, at)])
    for period in PERIODS:
        assert resumed.candles(period, limit=ALL) == straight.candles(period, limit=ALL)


class CandleStore:
    """What SQL and Redis do: candles with trades by (period, open time), and the newest time."""

    def __init__(self) -> None:
        self.rows: dict[tuple[Period, int], Candle] = {}
        self.time_ms = 0

    def fold(self, batches: list[list[tuple[int, int, int]]], first_seq: int) -> None:
        book = CandleBook.resume(SYMBOL, self.time_ms)
        for seq, part in enumerate(batches, start=first_seq):
            events: list[EngineEvent] = [trade(p, a, at) for p, a, at in part]
            book.apply(seq, max(at for _, _, at in part) * NS_PER_MS, events)
        for period, change in book.changes():
            held = self.rows.get((period, change.open_time))
            self.rows[(period, change.open_time)] = change if held is None else merged(held, change)
        self.time_ms = book.time_ms

    def candles(self, period: Period, start: int | None, end: int | None, limit: int) -> list[Candle]:
        stored = sorted((c for (p, _), c in self.rows.items() if p is period), key=lambda c: c.open_time)
        if not stored:
            return []
        bounds = page_bounds(period, stored[0].open_time, self.time_ms, start, end, limit)
        if bounds is None:
            return []
        lo, hi = bounds
        before = [c for c in stored if c.open_time < lo]
        inside = [c for c in stored if lo <= c.open_time <= hi]
        return fill_gaps(period, lo, hi, inside, before[-1] if before else None)


@settings(max_examples=200, deadline=None)
@given(
    steps=TRADES,
    groups=st.lists(st.integers(1, 6), min_size=1, max_size=40),
    start=st.one_of(st.none(), st.integers(-HOUR_MS, 30 * HOUR_MS)),
    span=st.one_of(st.none(), st.integers(0, 40 * HOUR_MS)),
    limit=st.integers(1, 60),
)
def test_a_store_merging_the_changes_of_resumed_books_answers_as_the_book(
    steps: list[tuple[int, int, int]],
    groups: list[int],
    start: int | None,
    span: int | None,
    limit: int,
) -> None:
    """The path of persistence and the cache: each group of batches folded by a book resumed at
    the store's time, its changes merged into the stored candles, pages gap-filled on reading."""
    trades = timed(steps)
    book = fold(trades, batch=1)
    store = CandleStore()
    i, seq, g = 0, 1, 0
    while i < len(trades):
        size = groups[g % len(groups)]
        batches = [[t] for t in trades[i : i + size]]
        store.fold(batches, seq)
        i, seq, g = i + size, seq + size, g + 1
    assert store.time_ms == book.time_ms
    start_ms = None if start is None else START + start
    end_ms = None if span is None or start_ms is None else start_ms + span
    for period in PERIODS:
        assert store.candles(period, start_ms, end_ms, limit) == book.candles(period, start_ms, end_ms, limit)


def test_merging_candles_of_different_intervals_is_refused() -> None:
    with pytest.raises(ValueError, match="different intervals"):
        merged(gap(0, 1), gap(MINUTE_MS, 1))

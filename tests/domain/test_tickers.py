"""The 24-hour rolling ticker: hand-computed values as minutes leave the window, change in basis
points, best bid and ask, idempotent batches, snapshot/restore, and agreement with a plain
computation over random trades."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from bourse.domain.candles import HOUR_MS, MINUTE_MS, NS_PER_MS, CandleBook, Period
from bourse.domain.orders import EngineEvent, Side, Trade
from bourse.domain.tickers import RollingTicker, Ticker, change_bp, percent_text
from bourse.domain.values import Amount, MemberId, OrderId, Price, TradeId
from tests.domain.engine_support import MARKET, SYMBOL

FF = MARKET.funds_factor
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return (datetime(year, month, day, hour, minute, second, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)


def trade(price: int, amount: int, at_ms: int) -> Trade:
    return Trade(
        trade_id=TradeId(1),
        market=SYMBOL,
        price=Price(price),
        amount=Amount(amount),
        funds=MARKET.funds(Price(price), Amount(amount)),
        maker_order_id=OrderId(1),
        maker_member_id=MemberId(1),
        taker_order_id=OrderId(2),
        taker_member_id=MemberId(2),
        taker_side=Side.SELL,
        ts=at_ms * NS_PER_MS,
    )


def add(ticker: RollingTicker, price: int, amount: int, at_ms: int) -> None:
    ticker.add_trade(
        Price(price), Amount(amount), MARKET.funds(Price(price), Amount(amount)), at_ms * NS_PER_MS
    )


def expect(
    ticker: RollingTicker,
    *,
    open_: int | None,
    high: int | None,
    low: int | None,
    last: int | None,
    volume: int,
    quote: int,
    trades: int,
    change: int,
    bp: int,
) -> Ticker:
    """Check the fields that the script computes by hand, and that a snapshot restores them."""
    view = ticker.ticker()
    assert (view.open, view.high, view.low, view.last) == (open_, high, low, last)
    assert (view.volume, view.quote_volume, view.trades) == (volume, quote * FF, trades)
    assert (view.change, view.change_bp) == (change, bp)
    assert view.open_time == view.close_time - view.close_time % MINUTE_MS - 1439 * MINUTE_MS
    restored = RollingTicker.restore(ticker.snapshot())
    assert restored.snapshot() == ticker.snapshot()
    assert restored.ticker() == view
    return view


NOON = ms(2024, 3, 10, 12)


def test_scripted_trades_leave_the_window_minute_by_minute() -> None:
    ticker = RollingTicker(SYMBOL)
    expect(ticker, open_=None, high=None, low=None, last=None, volume=0, quote=0, trades=0, change=0, bp=0)
    add(ticker, 100, 2, NOON + 30_000)
    add(ticker, 110, 1, NOON + 10 * MINUTE_MS)
    add(ticker, 90, 3, NOON + 2 * HOUR_MS)
    add(ticker, 95, 1, ms(2024, 3, 11, 11, 59))  # 23h58m30s after the first trade
    view = expect(
        ticker, open_=100, high=110, low=90, last=95, volume=7, quote=675, trades=4, change=-5, bp=-500
    )
    assert view.open_time == NOON
    assert view.close_time == ms(2024, 3, 11, 11, 59)
    ticker.advance(ms(2024, 3, 11, 12) * NS_PER_MS)  # the 12:00 minute of the 10th leaves
    expect(ticker, open_=110, high=110, low=90, last=95, volume=5, quote=475, trades=3, change=-15, bp=-1364)
    ticker.advance(ms(2024, 3, 11, 12, 10, 59) * NS_PER_MS)  # and the 12:10 one: the high goes too
    expect(ticker, open_=90, high=95, low=90, last=95, volume=4, quote=365, trades=2, change=5, bp=556)
    ticker.advance(ms(2024, 3, 12, 11, 58, 59) * NS_PER_MS)
    expect(ticker, open_=95, high=95, low=95, last=95, volume=1, quote=95, trades=1, change=0, bp=0)
    ticker.advance(ms(2024, 3, 12, 11, 59) * NS_PER_MS)  # nothing left in the window: the last price stays
    expect(ticker, open_=95, high=95, low=95, last=95, volume=0, quote=0, trades=0, change=0, bp=0)
    add(ticker, 97, 2, ms(2024, 3, 12, 12, 0, 5))
    add(ticker, 96, 1, ms(2024, 3, 12, 11, 0, 4))  # stamped earlier: counts at the newest time
    expect(ticker, open_=97, high=97, low=96, last=96, volume=3, quote=290, trades=2, change=-1, bp=-103)
    assert ticker.time_ms == ms(2024, 3, 12, 12, 0, 5)


def test_change_in_basis_points_is_rounded_half_away_from_zero() -> None:
    assert change_bp(3, 4) == 3333
    assert change_bp(8, 9) == 1250
    assert change_bp(20_000, 20_001) == 1, "half a basis point up"
    assert change_bp(20_000, 19_999) == -1, "half a basis point down"
    assert change_bp(30_000, 30_001) == 0
    assert change_bp(100, 1) == -9900
    assert change_bp(10**18 - 1, 1) == -10_000
    assert [percent_text(bp) for bp in (125, -5, 0, -1364, 10_000)] == [
        "1.25",
        "-0.05",
        "0.00",
        "-13.64",
        "100.00",
    ]


def test_best_bid_and_ask_come_from_the_depth_and_batches_apply_once() -> None:
    ticker = RollingTicker(SYMBOL)
    ticker.set_best(Price(99), Price(101))
    events: list[EngineEvent] = [trade(100, 1, NOON), trade(101, 2, NOON + 1)]
    assert ticker.apply(5, (NOON + 7) * NS_PER_MS, events)
    assert not ticker.apply(5, (NOON + 7) * NS_PER_MS, events)
    assert not ticker.apply(4, (NOON + 9) * NS_PER_MS, events)
    view = ticker.ticker()
    assert (view.best_bid, view.best_ask, view.seq, view.trades, view.close_time) == (99, 101, 5, 2, NOON + 7)
    ticker.set_best(None, Price(102))
    assert (ticker.ticker().best_bid, ticker.ticker().best_ask) == (None, 102)
    assert RollingTicker.restore(ticker.snapshot()).ticker() == ticker.ticker()


# --------------------------------------------------------------------------- random trades

STEPS = st.one_of(
    st.integers(0, 2_000),
    st.integers(0, 5 * MINUTE_MS),
    st.integers(0, 6 * HOUR_MS),
    st.integers(20 * HOUR_MS, 30 * HOUR_MS),  # whole windows pass
    st.integers(-MINUTE_MS, 0),  # a clock stepping back
)
TRADES = st.lists(st.tuples(st.integers(1, 300), st.integers(1, 50), STEPS), min_size=1, max_size=80)
START = ms(2024, 3, 10, 21, 17, 3)


def timed(steps: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    at = START
    out = []
    for price, amount, step in steps:
        at = max(0, at + step)
        out.append((price, amount, at))
    return out


def reference(trades: list[tuple[int, int, int]], now_ms: int) -> tuple[object, ...]:
    """The window computed from scratch: trades at the newest time so far, minutes within 24h."""
    newest = 0
    stamped = []
    for price, amount, at in trades:
        newest = max(newest, at)
        stamped.append((price, amount, newest))
    now = max(now_ms, newest)
    window_open = now - now % MINUTE_MS - 1439 * MINUTE_MS
    inside = [(p, a) for p, a, t in stamped if t - t % MINUTE_MS >= window_open]
    last = stamped[-1][0]
    if not inside:
        return (window_open, last, last, last, last, 0, 0, 0, 0)
    prices = [p for p, _ in inside]
    open_ = prices[0]
    return (
        window_open,
        open_,
        max(prices),
        min(prices),
        last,
        sum(a for _, a in inside),
        sum(p * a * FF for p, a in inside),
        len(inside),
        change_bp(open_, last),
    )


def observed(view: Ticker) -> tuple[object, ...]:
    return (
        view.open_time,
        view.open,
        view.high,
        view.low,
        view.last,
        view.volume,
        view.quote_volume,
        view.trades,
        view.change_bp,
    )


@settings(max_examples=200, deadline=None)
@given(steps=TRADES, idle=st.integers(0, 30 * HOUR_MS))
def test_the_window_equals_a_computation_from_scratch(steps: list[tuple[int, int, int]], idle: int) -> None:
    trades = timed(steps)
    ticker = RollingTicker(SYMBOL)
    for i, (price, amount, at) in enumerate(trades):
        add(ticker, price, amount, at)
        assert observed(ticker.ticker()) == reference(trades[: i + 1], ticker.time_ms)
    ticker.advance((ticker.time_ms + idle) * NS_PER_MS)
    assert observed(ticker.ticker()) == reference(trades, ticker.time_ms)


@settings(max_examples=200, deadline=None)
@given(steps=TRADES, cut=st.integers(0, 80), batch=st.integers(1, 5))
def test_replays_give_the_same_bytes_and_restore_resumes(
    steps: list[tuple[int, int, int]], cut: int, batch: int
) -> None:
    trades = timed(steps)

    def fold(
        part: list[tuple[int, int, int]], size: int, ticker: RollingTicker | None = None
    ) -> RollingTicker:
        ticker = ticker or RollingTicker(SYMBOL)
        for i in range(0, len(part), size):
            events: list[EngineEvent] = [trade(p, a, at) for p, a, at in part[i : i + size]]
            ticker.apply(ticker.seq + 1, max(at for _, _, at in part[i : i + size]) * NS_PER_MS, events)
        return ticker

    straight = fold(trades, 1)
    again = fold(trades, batch)  # cut into other batches: the same window (only the seq differs)
    assert observed(again.ticker()) == observed(straight.ticker())
    cut = min(cut, len(trades))
    resumed = RollingTicker.restore(fold(trades[:cut], 1).snapshot())
    fold(trades[cut:], 1, resumed)
    assert resumed.snapshot() == straight.snapshot()
    assert msgspec.msgpack.encode(resumed.ticker()) == msgspec.msgpack.encode(straight.ticker())


@settings(max_examples=200, deadline=None)
@given(steps=TRADES, idle=st.integers(0, 30 * HOUR_MS))
def test_a_store_of_1m_candles_answers_the_ticker_of_the_fold(
    steps: list[tuple[int, int, int]], idle: int
) -> None:
    """What SQL and Redis do: the ticker from the stored minutes, last price and newest time."""
    trades = timed(steps)
    ticker = RollingTicker(SYMBOL)
    book = CandleBook(SYMBOL, keep=len(trades) + 1)
    for seq, (price, amount, at) in enumerate(trades, start=1):
        events: list[EngineEvent] = [trade(price, amount, at)]
        ticker.apply(seq, at * NS_PER_MS, events)
        book.apply(seq, at * NS_PER_MS, events)
    ticker.advance((ticker.time_ms + idle) * NS_PER_MS)
    book.advance((book.time_ms + idle) * NS_PER_MS)
    ticker.set_best(Price(7), None)
    minutes = [c for c in book.candles(Period.M1, limit=len(trades) + 100_000) if c.trades]
    stored = RollingTicker.from_minutes(
        SYMBOL,
        seq=ticker.seq,
        time_ms=book.time_ms,
        last=Price(trades[-1][0]),
        best_bid=Price(7),
        best_ask=None,
        minutes=minutes,
    )
    assert stored.ticker() == ticker.ticker()

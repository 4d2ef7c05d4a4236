"""The 24-hour rolling ticker of one market: open, high, low, last, volumes, change and trade
count over the last day, plus the best bid and ask of the depth.

The window, precisely
---------------------
Trades are counted per minute (UTC, like the 1m candles). At stream time T (ms), the window is
the 1440 minutes ending with T's own: from `open_time = minute(T) - 23h59m` to T, between
23h59m and 24h long. A trade is in it if its minute is, so no trade older than 24 hours is ever
counted; the window moves a minute at a time, as the large exchanges' rolling tickers do (their
open time always starts on a minute).

Why minutes and not an exact per-trade window: an exact window must keep every trade of the
last day (a busy market: millions; memory grows with the rate) and pay a deque push, a pop and
a monotonic high/low queue per trade. Per minute, memory is bounded (at most 1440 buckets per
market, only minutes with trades are stored) and a trade costs a few additions to the open
bucket; a bucket leaves the window once, when the minute turns. The service must fold 50,000
trades/s or more on one core, and this costs under a microsecond per trade
(`bench/statistics_bench.py`).

Fields: `open` is the first trade of the window (the price "24 h ago"), `high`/`low` its
extremes, `last` the latest trade of the market (even when it is older than the window: then
the window has no trade, and open = high = low = last, volumes and count 0, no change). `change`
is `last - open` in price units (may be negative), `change_bp` the change relative to the open
in basis points (1 bp = 0.01 %), an integer rounded half away from zero, computed with integer
arithmetic only (`percent_text` formats it, "-1.25"). Before the first trade they are None / 0.

Time comes from the stream, never from a clock: trade timestamps (`Trade.ts`, ns) and batch
`received_at` (ns); the newest seen is `time_ms`, and an earlier stamp counts at it. An idle
market's window moves only when its time does: the service may `advance()` it with the newest
time of the whole stream. The best bid and ask are the depth's (`set_best`, from
`bourse.domain.depth_book.DepthBook`), kept here so that one `Ticker` says everything.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import Final

import msgspec

from bourse.domain.candles import MINUTE_MS, NS_PER_MS, Candle, CandleRow, candle_row
from bourse.domain.orders import EngineEvent, Trade
from bourse.domain.values import Amount, Price, QuoteUnits

__all__ = [
    "SNAPSHOT_VERSION",
    "WINDOW_MINUTES",
    "RollingTicker",
    "Ticker",
    "change_bp",
    "percent_text",
]

WINDOW_MINUTES: Final = 1440
"""Minutes in the window, the current one included."""
SNAPSHOT_VERSION: Final = 1
_SPAN_MS: Final = (WINDOW_MINUTES - 1) * MINUTE_MS
_NEVER: Final = -(1 << 62)


class Ticker(msgspec.Struct, frozen=True):
    """A market's last 24 hours (see the module docstring). Prices in price units, `volume` in
    amount units, `quote_volume` in quote currency units; times in ms since the epoch."""

    market: str
    open_time: int
    """The first minute of the window."""
    close_time: int
    """The newest event time seen (stream time)."""
    open: Price | None
    high: Price | None
    low: Price | None
    last: Price | None
    volume: Amount
    quote_volume: QuoteUnits
    change: int
    """`last - open`, price units (negative when the price fell)."""
    change_bp: int
    """`change / open` in basis points, rounded half away from zero."""
    trades: int
    best_bid: Price | None
    best_ask: Price | None
    seq: int
    """The last EVENTS sequence applied."""


def change_bp(open_price: int, last: int) -> int:
    """(last - open) / open in basis points, rounded half away from zero; integers only."""
    change = last - open_price
    magnitude = (abs(change) * 20_000 + open_price) // (2 * open_price)
    return magnitude if change >= 0 else -magnitude


def percent_text(bp: int) -> str:
    """Basis points as a percent with two decimals: 125 -> "1.25", -5 -> "-0.05"."""
    sign = "-" if bp < 0 else ""
    whole, hundredths = divmod(abs(bp), 100)
    return f"{sign}{whole}.{hundredths:02d}"


class _State(msgspec.Struct, frozen=True):
    version: int
    market: str
    seq: int
    time_ms: int
    last: Price | None
    best_bid: Price | None
    best_ask: Price | None
    minutes: list[CandleRow]
    """The window's minutes with trades, oldest first (the current minute's last, if it has any)."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_State)


class RollingTicker:
    """One market's 24-hour window, folded from its trades (see the module docstring).

    The current minute is kept as plain attributes (a trade updates them in place); the window's
    earlier minutes with trades are `Candle`s in a deque, with their sums and extremes kept
    alongside so that `ticker()` costs the same at any rate.
    """

    __slots__ = (
        "_best_ask",
        "_best_bid",
        "_close",
        "_high",
        "_last",
        "_low",
        "_minute",
        "_minute_end",
        "_minutes",
        "_open",
        "_past_high",
        "_past_low",
        "_past_quote",
        "_past_trades",
        "_past_volume",
        "_quote",
        "_seq",
        "_time_ms",
        "_trades",
        "_volume",
        "market",
    )

    def __init__(self, market: str) -> None:
        self.market = market
        self._seq = 0
        self._time_ms = 0
        self._last: Price | None = None
        self._best_bid: Price | None = None
        self._best_ask: Price | None = None
        # the current minute (the one of `_time_ms`): `_trades == 0` while it has none
        self._minute = _NEVER
        self._minute_end = _NEVER
        self._open = 0
        self._high = 0
        self._low = 0
        self._close = 0
        self._volume = 0
        self._quote = 0
        self._trades = 0
        # the window's earlier minutes with trades, and their totals
        self._minutes: deque[Candle] = deque()
        self._past_volume = 0
        self._past_quote = 0
        self._past_trades = 0
        self._past_high = 0
        self._past_low = 0

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def time_ms(self) -> int:
        return self._time_ms

    # ------------------------------------------------------------------ folding

    def apply(self, seq: int, received_at: int, events: Iterable[EngineEvent]) -> bool:
        """Fold the trades of EVENTS batch `seq` and move the time to `received_at` (ns); False
        (and nothing changes) if `seq` was applied already."""
        if seq <= self._seq:
            return False
        self._seq = seq
        add = self.add_trade
        for event in events:
            if type(event) is Trade:
                add(event.price, event.amount, event.funds, event.ts)
        self.advance(received_at)
        return True

    def add_trade(self, price: Price, amount: Amount, funds: QuoteUnits, ts: int) -> None:
        """Fold one trade executed at `ts` (ns since the epoch)."""
        t = ts // NS_PER_MS
        if t > self._time_ms:
            self._time_ms = t
        else:
            t = self._time_ms
        if t >= self._minute_end:
            self._turn(t)
        self._last = price
        if self._trades:
            if price > self._high:
                self._high = price
            elif price < self._low:
                self._low = price
            self._trades += 1
            self._volume += amount
            self._quote += funds
        else:
            self._open = self._high = self._low = price
            self._trades = 1
            self._volume = amount
            self._quote = funds
        self._close = price

    def advance(self, ts: int) -> None:
        """Move the time to `ts` (ns) if it is newer, dropping the minutes that leave the window."""
        t = ts // NS_PER_MS
        if t > self._time_ms:
            self._time_ms = t
        else:
            t = self._time_ms
        if t >= self._minute_end:
            self._turn(t)

    def set_best(self, bid: Price | None, ask: Price | None) -> None:
        """The depth's best prices now (None: that side is empty)."""
        self._best_bid = bid
        self._best_ask = ask

    def _turn(self, t: int) -> None:
        """A new minute: store the finished one, drop those before the window of `t`."""
        minutes = self._minutes
        if self._trades:
            high, low = self._high, self._low
            minutes.append(
                Candle(
                    self._minute,
                    Price(self._open),
                    Price(high),
                    Price(low),
                    Price(self._close),
                    Amount(self._volume),
                    QuoteUnits(self._quote),
                    self._trades,
                )
            )
            if self._past_trades:
                if high > self._past_high:
                    self._past_high = high
                if low < self._past_low:
                    self._past_low = low
            else:
                self._past_high, self._past_low = high, low
            self._past_volume += self._volume
            self._past_quote += self._quote
            self._past_trades += self._trades
            self._trades = self._volume = self._quote = 0
        minute = t - t % MINUTE_MS
        self._minute = minute
        self._minute_end = minute + MINUTE_MS
        window_open = minute - _SPAN_MS
        rescan = False
        while minutes and minutes[0].open_time < window_open:
            gone = minutes.popleft()
            self._past_volume -= gone.volume
            self._past_quote -= gone.quote_volume
            self._past_trades -= gone.trades
            rescan = rescan or gone.high == self._past_high or gone.low == self._past_low
        if rescan and minutes:
            self._past_high = max(bucket.high for bucket in minutes)
            self._past_low = min(bucket.low for bucket in minutes)

    # ------------------------------------------------------------------ queries

    def ticker(self) -> Ticker:
        """The window as of `time_ms`."""
        minutes = self._minutes
        trades = self._past_trades + self._trades
        last = self._last
        open_: Price | None
        high: Price | None
        low: Price | None
        if not trades:
            open_ = high = low = last
        else:
            if minutes:
                open_ = minutes[0].open
                high_, low_ = self._past_high, self._past_low
                if self._trades:
                    high_ = max(high_, self._high)
                    low_ = min(low_, self._low)
            else:
                open_ = Price(self._open)
                high_, low_ = self._high, self._low
            high, low = Price(high_), Price(low_)
        change = 0 if last is None or open_ is None else last - open_
        return Ticker(
            market=self.market,
            open_time=self._window_open(),
            close_time=self._time_ms,
            open=open_,
            high=high,
            low=low,
            last=last,
            volume=Amount(self._past_volume + self._volume),
            quote_volume=QuoteUnits(self._past_quote + self._quote),
            change=change,
            change_bp=0 if last is None or open_ is None else change_bp(open_, last),
            trades=trades,
            best_bid=self._best_bid,
            best_ask=self._best_ask,
            seq=self._seq,
        )

    def _window_open(self) -> int:
        t = self._time_ms
        return t - t % MINUTE_MS - _SPAN_MS

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        """The whole state as msgpack bytes (the same state gives the same bytes)."""
        rows = [candle_row(c) for c in self._minutes]
        if self._trades:
            rows.append(
                (
                    self._minute,
                    Price(self._open),
                    Price(self._high),
                    Price(self._low),
                    Price(self._close),
                    Amount(self._volume),
                    QuoteUnits(self._quote),
                    self._trades,
                )
            )
        state = _State(
            version=SNAPSHOT_VERSION,
            market=self.market,
            seq=self._seq,
            time_ms=self._time_ms,
            last=self._last,
            best_bid=self._best_bid,
            best_ask=self._best_ask,
            minutes=rows,
        )
        return _encoder.encode(state)

    @classmethod
    def restore(cls, data: bytes) -> RollingTicker:
        """Rebuild a ticker from `snapshot()` bytes."""
        state = _decoder.decode(data)
        if state.version != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported ticker snapshot version {state.version}")
        return cls.from_minutes(
            state.market,
            seq=state.seq,
            time_ms=state.time_ms,
            last=state.last,
            best_bid=state.best_bid,
            best_ask=state.best_ask,
            minutes=[Candle(*row) for row in state.minutes],
        )

    @classmethod
    def from_minutes(
        cls,
        market: str,
        *,
        seq: int,
        time_ms: int,
        last: Price | None,
        best_bid: Price | None,
        best_ask: Price | None,
        minutes: Sequence[Candle],
    ) -> RollingTicker:
        """The ticker of a store that keeps 1m candles: its newest event time, the market's last
        price and best prices, and its 1m candles with trades (oldest first; those before the
        window of `time_ms` are left out). `ticker()` then answers what the fold would."""
        ticker = cls(market)
        ticker._seq = seq
        ticker._last = last
        ticker._best_bid, ticker._best_ask = best_bid, best_ask
        t = ticker._time_ms = time_ms
        if not minutes and not t:
            return ticker  # nothing seen yet: as new
        minute = t - t % MINUTE_MS
        ticker._minute, ticker._minute_end = minute, minute + MINUTE_MS
        window_open = minute - _SPAN_MS
        past = [c for c in minutes if window_open <= c.open_time <= minute and c.trades]
        if past and past[-1].open_time == minute:
            current = past.pop()
            ticker._open, ticker._high, ticker._low = current.open, current.high, current.low
            ticker._close = current.close
            ticker._volume, ticker._quote = current.volume, current.quote_volume
            ticker._trades = current.trades
        ticker._minutes.extend(past)
        if past:
            ticker._past_volume = sum(c.volume for c in past)
            ticker._past_quote = sum(c.quote_volume for c in past)
            ticker._past_trades = sum(c.trades for c in past)
            ticker._past_high = max(c.high for c in past)
            ticker._past_low = min(c.low for c in past)
        return ticker

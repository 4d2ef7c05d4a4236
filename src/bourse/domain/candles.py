"""K-lines of one market: open, high, low, close, volume, quote volume and trade count per
period, folded from the market's trades.

Periods are 1m, 5m, 15m, 30m, 1h, 4h, 1d and 1w. Open times are milliseconds since the epoch,
aligned to UTC: minutes, hours and days on the epoch's own boundaries, weeks on Monday 00:00 UTC
(the epoch was a Thursday), as the large exchanges' kline endpoints do. Every period nests in
the next one (a week starts on a day, a day on a 4-hour boundary, ...), which the fold relies on.

Time comes from the stream, never from a clock: a trade's engine timestamp (`Trade.ts`, ns) and
a batch's `received_at` (ns). The book keeps the newest time seen (`time_ms`); an event stamped
earlier than that (a server clock stepping back) counts at the newest time, so candles only ever
grow at their end and a closed candle never changes again. The same events give the same
candles, byte for byte once encoded.

Only candles with trades are stored (per period, the newest `keep`, the open one included):
an interval without trades costs nothing, and `candles()` fills it on the way out with open =
high = low = close = the previous close and zero volume, zero trades, up to the interval of the
newest time seen. Before the oldest stored candle (the market's first trade, or the oldest one
`keep` still holds) there are no candles: older history is the store's (SQL) business.

A candle with trades has the price of its first trade as open, so a coarse candle is the merge
of the finer candles *with trades* inside it (the open of the first, the close of the last, the
extremes and the sums): gap candles of a finer period carry the previous close, which is no
trade of the coarse interval.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Final

import msgspec

from bourse.domain.orders import EngineEvent, Trade
from bourse.domain.values import Amount, Price, QuoteUnits

__all__ = [
    "DAY_MS",
    "DEFAULT_KEEP",
    "DEFAULT_LIMIT",
    "HOUR_MS",
    "MINUTE_MS",
    "MONDAY_MS",
    "NS_PER_MS",
    "PERIODS",
    "SNAPSHOT_VERSION",
    "WEEK_MS",
    "Candle",
    "CandleBook",
    "CandleRow",
    "Period",
    "candle_row",
    "fill_gaps",
    "merged",
    "page_bounds",
]

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS
WEEK_MS: Final = 7 * DAY_MS
MONDAY_MS: Final = 4 * DAY_MS
"""1970-01-05 00:00 UTC, the first Monday after the epoch: the origin of weekly open times."""
NS_PER_MS: Final = 1_000_000

DEFAULT_KEEP: Final = 1440
"""Candles with trades kept per period: a day of busy minutes, and more than the largest page
a query may ask for (1000), so the newest page is always served from memory."""
DEFAULT_LIMIT: Final = 500
SNAPSHOT_VERSION: Final = 1

_NEVER: Final = -(1 << 62)
"""An interval end before every time: the next trade opens a candle."""
_NO_PRICE: Final = Price(0)


class Period(StrEnum):
    """A k-line period; the value is the name clients use (`Period("1h")`)."""

    M1 = "1m"
    M5 = "5m"
    M15 = "15m"
    M30 = "30m"
    H1 = "1h"
    H4 = "4h"
    D1 = "1d"
    W1 = "1w"

    @property
    def length_ms(self) -> int:
        return _LENGTH_MS[self]

    def open_time(self, time_ms: int) -> int:
        """Open time (ms) of this period's interval that contains `time_ms`."""
        return time_ms - (time_ms - _ORIGIN_MS[self]) % _LENGTH_MS[self]


_LENGTH_MS: Final = {
    Period.M1: MINUTE_MS,
    Period.M5: 5 * MINUTE_MS,
    Period.M15: 15 * MINUTE_MS,
    Period.M30: 30 * MINUTE_MS,
    Period.H1: HOUR_MS,
    Period.H4: 4 * HOUR_MS,
    Period.D1: DAY_MS,
    Period.W1: WEEK_MS,
}
_ORIGIN_MS: Final = {period: (MONDAY_MS if period is Period.W1 else 0) for period in Period}
PERIODS: Final = tuple(Period)
"""Finest first: the order of `CandleBook`'s series and of its snapshot."""


class Candle(msgspec.Struct, frozen=True, gc=False):
    """One interval of one period. Prices in price units, `volume` in amount units (the sum of
    the trades' amounts), `quote_volume` in quote currency units (the sum of their funds)."""

    open_time: int
    """Milliseconds since the epoch, aligned to the period (UTC)."""
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Amount
    quote_volume: QuoteUnits
    trades: int
    """Number of trades; 0 for a gap-filled interval."""


CandleRow = tuple[int, Price, Price, Price, Price, Amount, QuoteUnits, int]
"""A candle's fields in order, as snapshots and stores keep it (an array costs a third of a map)."""


class _State(msgspec.Struct, frozen=True):
    version: int
    market: str
    keep: int
    seq: int
    time_ms: int
    series: list[list[CandleRow]]
    """Per period (finest first), the stored candles oldest first; the last one is open."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_State)


def _open_time_of(candle: Candle) -> int:
    return candle.open_time


def candle_row(c: Candle) -> CandleRow:
    """`c`'s fields in order (`Candle(*row)` makes it again)."""
    return (c.open_time, c.open, c.high, c.low, c.close, c.volume, c.quote_volume, c.trades)


def merged(stored: Candle, later: Candle) -> Candle:
    """One interval's candle from its stored part and the part folded since (the same open time):
    what a store that keeps candles does with `CandleBook.changes()` of a book started where it
    left off (see `CandleBook.resume`)."""
    if later.open_time != stored.open_time:
        raise ValueError(f"candles of different intervals: {stored.open_time} and {later.open_time}")
    volume: Amount = stored.volume + later.volume  # type: ignore[assignment]
    quote: QuoteUnits = stored.quote_volume + later.quote_volume  # type: ignore[assignment]
    return Candle(
        stored.open_time,
        stored.open,
        max(stored.high, later.high),
        min(stored.low, later.low),
        later.close,
        volume,
        quote,
        stored.trades + later.trades,
    )


def page_bounds(
    period: Period,
    oldest_open_ms: int,
    time_ms: int,
    start_ms: int | None = None,
    end_ms: int | None = None,
    limit: int = DEFAULT_LIMIT,
) -> tuple[int, int] | None:
    """The open times (first, last) of the page of `period` asked for: the intervals that meet
    [start_ms, end_ms], never before `oldest_open_ms` (the oldest candle with trades) nor past
    the interval of `time_ms` (the newest event time); at most `limit` intervals, the first ones
    from `start_ms` when it is given, else the newest ones up to `end_ms` (or up to now), as the
    large exchanges' kline endpoints page. None: no interval."""
    if limit <= 0:
        return None
    length = _LENGTH_MS[period]
    lo = oldest_open_ms
    if start_ms is not None:
        lo = max(lo, period.open_time(start_ms))
    hi = period.open_time(time_ms)
    if end_ms is not None:
        hi = min(hi, period.open_time(end_ms))
    if hi < lo:
        return None
    if (hi - lo) // length >= limit:
        if start_ms is not None:
            hi = lo + (limit - 1) * length
        else:
            lo = hi - (limit - 1) * length
    return lo, hi


def fill_gaps(
    period: Period, lo: int, hi: int, stored: Sequence[Candle], before: Candle | None
) -> list[Candle]:
    """Every interval of `period` from open time `lo` to `hi`: the `stored` candles (those with
    trades in that range, oldest first) and, for the intervals without, open = high = low =
    close = the previous close and zero volume. `before` is the last stored candle before `lo`
    (None if there is none: then `lo` is the oldest stored candle's open time)."""
    length = _LENGTH_MS[period]
    if before is not None:
        close = before.close
    elif stored:
        close = stored[0].open
    else:
        return []
    no_volume = Amount(0)
    no_funds = QuoteUnits(0)
    i, count = 0, len(stored)
    out: list[Candle] = []
    t = lo
    while t <= hi:
        if i < count and stored[i].open_time == t:
            candle = stored[i]
            close = candle.close
            i += 1
        else:
            candle = Candle(t, close, close, close, close, no_volume, no_funds, 0)
        out.append(candle)
        t += length
    return out


class _Series:
    """One period's candles: the closed ones (oldest first, at most `keep - 1`) and the open
    one, kept as plain attributes so that a trade updates it in place."""

    __slots__ = (
        "close",
        "closed",
        "end",
        "high",
        "keep",
        "length",
        "low",
        "open",
        "open_time",
        "origin",
        "period",
        "quote",
        "trades",
        "volume",
    )

    def __init__(self, period: Period, keep: int) -> None:
        self.period = period
        self.length = _LENGTH_MS[period]
        self.origin = _ORIGIN_MS[period]
        self.keep = keep
        self.closed: list[Candle] = []
        self.open_time = _NEVER
        self.end = _NEVER
        """End of the open candle's interval; the next trade at or after it opens a new one."""
        self.open = self.high = self.low = self.close = _NO_PRICE
        self.volume = 0
        self.quote = 0
        self.trades = 0
        """0: no open candle (nothing traded yet)."""

    def start(self, time_ms: int, price: Price, amount: int, funds: int) -> None:
        """Close the open candle (if any) and open the one of `time_ms` with this trade."""
        if self.trades:
            closed = self.closed
            closed.append(self.current())
            if len(closed) >= self.keep:
                del closed[0]
        length = self.length
        open_time = time_ms - (time_ms - self.origin) % length
        self.open_time = open_time
        self.end = open_time + length
        self.open = self.high = self.low = self.close = price
        self.volume = amount
        self.quote = funds
        self.trades = 1

    def current(self) -> Candle:
        # sums of typed values are plain ints: typed by annotation, as a NewType call per field
        # would cost more than the Candle itself
        volume: Amount = self.volume  # type: ignore[assignment]
        quote: QuoteUnits = self.quote  # type: ignore[assignment]
        return Candle(self.open_time, self.open, self.high, self.low, self.close, volume, quote, self.trades)

    def stored(self) -> list[Candle]:
        """Every stored candle, oldest first, the open one last."""
        return [*self.closed, self.current()] if self.trades else list(self.closed)

    def load(self, rows: list[CandleRow]) -> None:
        if len(rows) > self.keep:
            raise ValueError(f"{self.period}: {len(rows)} candles in a snapshot that keeps {self.keep}")
        candles = [Candle(*row) for row in rows]
        if not candles:
            return
        self.closed = candles[:-1]
        last = candles[-1]
        self.open_time = last.open_time
        self.end = last.open_time + self.length
        self.open, self.high, self.low, self.close = last.open, last.high, last.low, last.close
        self.volume, self.quote, self.trades = last.volume, last.quote_volume, last.trades


class CandleBook:
    """Every period's candles of one market, folded from its trades (see the module docstring).

    `apply(seq, received_at, events)` folds one EVENTS batch and ignores a batch at or below the
    last sequence applied, so a replay or a repeat changes nothing; `add_trade` is the fold of one
    trade; `changes()` says which candles changed since it was last asked. `snapshot()` /
    `CandleBook.restore()` persist the whole state as msgpack bytes.
    """

    __slots__ = ("_by_period", "_marks", "_minute", "_seq", "_series", "_time_ms", "keep", "market")

    def __init__(self, market: str, *, keep: int = DEFAULT_KEEP) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.market = market
        self.keep = keep
        self._series = [_Series(period, keep) for period in PERIODS]
        self._minute = self._series[0]
        self._by_period = {series.period: series for series in self._series}
        self._marks = [(_NEVER, 0)] * len(self._series)
        """Per period, (open time, trades) of the open candle at the last `changes()`."""
        self._seq = 0
        self._time_ms = 0

    @classmethod
    def resume(cls, market: str, time_ms: int, *, keep: int = DEFAULT_KEEP) -> CandleBook:
        """An empty book whose time is a store's newest event time (`time_ms`): folding the
        batches after it gives, in `changes()`, the part of each candle folded since, for the
        store to merge into the candles it holds (`merged`), and the store's next time in
        `time_ms`. A store folds at most `keep - 1` batches at a time (each batch has one
        engine time, so it opens at most one interval per period)."""
        book = cls(market, keep=keep)
        book._time_ms = time_ms
        return book

    @property
    def seq(self) -> int:
        """The last EVENTS sequence applied (0: none)."""
        return self._seq

    @property
    def time_ms(self) -> int:
        """The newest event time seen, ms since the epoch (0: none)."""
        return self._time_ms

    # ------------------------------------------------------------------ folding

    def apply(self, seq: int, received_at: int, events: Iterable[EngineEvent]) -> bool:
        """Fold the trades of EVENTS batch `seq` (received at `received_at`, ns) and move the
        time to `received_at`; False (and nothing changes) if `seq` was applied already."""
        if seq <= self._seq:
            return False
        self._seq = seq
        add = self.add_trade
        for event in events:
            if type(event) is Trade:
                add(event.price, event.amount, event.funds, event.ts)
        self.advance(received_at)
        return True

    def changes(self) -> list[tuple[Period, Candle]]:
        """The candles changed since the previous call (or since the book was made or restored),
        per period finest first, oldest first: what a publisher sends and a store upserts.

        Asked once per batch or once per group of batches, as the caller prefers: a call builds
        one candle per changed period (about 4 us for all eight), more than folding a batch's
        trades, so the fold itself never builds them and a caller that publishes every few
        milliseconds pays once. Ask at least once per `keep` candles of a period.
        """
        changed: list[tuple[Period, Candle]] = []
        marks = self._marks
        for i, series in enumerate(self._series):
            open_time, trades = marks[i]
            if series.open_time == open_time and series.trades == trades:
                continue
            marks[i] = (series.open_time, series.trades)
            # the candles closed since are the newest closed ones; the one open at the previous
            # call counts only if it got a trade since
            closed = series.closed
            if closed and closed[-1].open_time >= open_time:
                first = len(closed) - 1
                while first and closed[first - 1].open_time >= open_time:
                    first -= 1
                if closed[first].open_time == open_time and closed[first].trades == trades:
                    first += 1
                changed += [(series.period, candle) for candle in closed[first:]]
            changed.append((series.period, series.current()))
        return changed

    def add_trade(self, price: Price, amount: Amount, funds: QuoteUnits, ts: int) -> None:
        """Fold one trade executed at `ts` (ns since the epoch) into every period."""
        t = ts // NS_PER_MS
        if t > self._time_ms:
            self._time_ms = t
        else:
            t = self._time_ms
        if t < self._minute.end:
            # the open minute's interval: every period's open candle is the one of this trade
            for s in self._series:
                if price > s.high:
                    s.high = price
                elif price < s.low:
                    s.low = price
                s.close = price
                s.volume += amount
                s.quote += funds
                s.trades += 1
            return
        for s in self._series:
            if t >= s.end:
                s.start(t, price, amount, funds)
            else:
                if price > s.high:
                    s.high = price
                elif price < s.low:
                    s.low = price
                s.close = price
                s.volume += amount
                s.quote += funds
                s.trades += 1

    def advance(self, ts: int) -> None:
        """Move the time to `ts` (ns) if it is newer: gap-filled candles then reach its interval.
        The service may also call it for an idle market with the newest time of the whole stream."""
        t = ts // NS_PER_MS
        if t > self._time_ms:
            self._time_ms = t

    # ------------------------------------------------------------------ queries

    def candles(
        self,
        period: Period,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> list[Candle]:
        """The candles of `period` whose intervals meet [start_ms, end_ms] (ms), oldest first,
        gap-filled, never past the interval of `time_ms` nor before the oldest stored candle
        (`page_bounds`, `fill_gaps`: the rule a store that keeps candles answers by too)."""
        series = self._by_period[period]
        stored = series.stored()
        if not stored:
            return []
        bounds = page_bounds(period, stored[0].open_time, self._time_ms, start_ms, end_ms, limit)
        if bounds is None:
            return []
        lo, hi = bounds
        i = bisect_left(stored, lo, key=_open_time_of)
        j = bisect_left(stored, hi + 1, key=_open_time_of)
        return fill_gaps(period, lo, hi, stored[i:j], stored[i - 1] if i else None)

    def latest(self, period: Period) -> Candle | None:
        """The candle of the interval of `time_ms` (gap-filled if it has no trade yet), or None
        before the first trade."""
        found = self.candles(period, limit=1)
        return found[0] if found else None

    def oldest_open_time(self, period: Period) -> int | None:
        """Open time of the oldest stored candle of `period`: `candles()` answers nothing before it."""
        series = self._by_period[period]
        if series.closed:
            return series.closed[0].open_time
        return series.open_time if series.trades else None

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        """The whole state as msgpack bytes (the same state gives the same bytes)."""
        state = _State(
            version=SNAPSHOT_VERSION,
            market=self.market,
            keep=self.keep,
            seq=self._seq,
            time_ms=self._time_ms,
            series=[[candle_row(candle) for candle in series.stored()] for series in self._series],
        )
        return _encoder.encode(state)

    @classmethod
    def restore(cls, data: bytes) -> CandleBook:
        """Rebuild a book from `snapshot()` bytes."""
        state = _decoder.decode(data)
        if state.version != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported candle snapshot version {state.version}")
        if len(state.series) != len(PERIODS):
            raise ValueError(f"a candle snapshot has {len(PERIODS)} series, not {len(state.series)}")
        book = cls(state.market, keep=state.keep)
        book._seq = state.seq
        book._time_ms = state.time_ms
        for series, rows in zip(book._series, state.series, strict=True):
            series.load(rows)
        book._marks = [(series.open_time, series.trades) for series in book._series]
        return book

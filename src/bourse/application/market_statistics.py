"""The statistics of one market, the statistics service's state machine: k-lines, the 24-hour
ticker and the depth with its sequence, folded from the market's EVENTS batches, and the public
updates they cause.

One aggregate per market so that a batch is checked once (its sequence against the last one
applied) and folded by the three folds of `bourse.domain` together: `CandleBook`, `RollingTicker`
and `DepthBook`, the ticker's best bid and ask taken from the depth after each batch.

Updates are collected as batches are applied and handed out by `drain()`, which the service calls
once per fetched group of batches: a subscriber gets one message per channel per group, not per
batch, and nothing is lost by that, since every update says the state it leads to (a depth level's
new total, a candle as it now stands, the whole ticker, every trade since the last message). A depth
update carries the sequence of the last batch that changed a level (`seq`) and the sequence of the
depth update before it (`prev_seq`), so a client that missed one sees the gap and takes a snapshot.

Pure: no I/O, no clock (time is the engine's, carried by the batches).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Final

import msgspec

from bourse.contracts.messages import DepthUpdate, EventBatch, KlineUpdate, TickerUpdate, TradesUpdate
from bourse.domain.candles import Candle, CandleBook, Period
from bourse.domain.depth_book import DepthBook, DepthSnapshot
from bourse.domain.order_views import PublicTrade
from bourse.domain.orders import Side, Trade
from bourse.domain.tickers import RollingTicker, Ticker
from bourse.domain.values import Amount, Price

SNAPSHOT_VERSION: Final = 1


class _State(msgspec.Struct, frozen=True):
    version: int
    market: str
    candles: bytes
    ticker: bytes
    depth: bytes
    published_depth_seq: int


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_State)


@dataclass(slots=True)
class MarketUpdates:
    """What a group of batches changed, as the messages a publisher sends (None: unchanged)."""

    depth: DepthUpdate | None = None
    trades: TradesUpdate | None = None
    ticker: TickerUpdate | None = None
    klines: list[KlineUpdate] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.depth or self.trades or self.ticker or self.klines)


class MarketStatistics:
    """One market's candles, ticker and depth (see the module docstring)."""

    __slots__ = (
        "_changed_levels",
        "_pending_trades",
        "_published_depth_seq",
        "_ticker_changed",
        "candles",
        "depth",
        "market",
        "ticker",
    )

    def __init__(
        self,
        market: str,
        *,
        candles: CandleBook | None = None,
        ticker: RollingTicker | None = None,
        depth: DepthBook | None = None,
        published_depth_seq: int = 0,
    ) -> None:
        self.market = market
        self.candles = candles or CandleBook(market)
        self.ticker = ticker or RollingTicker(market)
        self.depth = depth or DepthBook(market)
        self._published_depth_seq = published_depth_seq
        """The `seq` of the last depth update handed out: the next one's `prev_seq`."""
        self._changed_levels: dict[tuple[Side, Price], Amount] = {}
        self._pending_trades: list[PublicTrade] = []
        self._ticker_changed = False

    @property
    def seq(self) -> int:
        """The last EVENTS batch sequence of this market applied (0: none)."""
        return self.candles.seq

    @property
    def time_ms(self) -> int:
        """The newest engine time seen (ms since the epoch)."""
        return self.candles.time_ms

    # ------------------------------------------------------------------ folding

    def apply(self, batch: EventBatch) -> bool:
        """Fold one EVENTS batch of this market; False (nothing changes) if it was applied."""
        if batch.market != self.market:
            raise ValueError(f"a batch of {batch.market} given to the statistics of {self.market}")
        seq = batch.seq
        if seq <= self.candles.seq:
            return False
        events = batch.events
        levels = self.depth.apply(seq, events)
        self.candles.apply(seq, batch.received_at, events)
        ticker = self.ticker
        ticker.apply(seq, batch.received_at, events)
        if levels:
            changed = self._changed_levels
            for level in levels:
                changed[(level.side, level.price)] = level.amount
            ticker.set_best(self.depth.best_bid(), self.depth.best_ask())
            self._ticker_changed = True
        for event in events:
            if type(event) is Trade:
                self._pending_trades.append(
                    PublicTrade(
                        event.trade_id,
                        event.market,
                        event.price,
                        event.amount,
                        event.funds,
                        event.taker_side,
                        event.ts,
                    )
                )
                self._ticker_changed = True
        return True

    def drain(self) -> MarketUpdates:
        """The updates since the last call, as messages (see the module docstring)."""
        out = MarketUpdates()
        market, seq, time_ms = self.market, self.seq, self.time_ms
        if self._changed_levels:
            bids: list[tuple[Price, Amount]] = []
            asks: list[tuple[Price, Amount]] = []
            for (side, price), amount in self._changed_levels.items():
                (bids if side is Side.BUY else asks).append((price, amount))
            bids.sort(reverse=True)
            asks.sort()
            depth_seq = self.depth.sequence
            out.depth = DepthUpdate(market, depth_seq, self._published_depth_seq, time_ms, bids, asks)
            self._published_depth_seq = depth_seq
            self._changed_levels = {}
        if self._pending_trades:
            out.trades = TradesUpdate(market, seq, time_ms, self._pending_trades)
            self._pending_trades = []
        if self._ticker_changed:
            out.ticker = TickerUpdate(market, seq, time_ms, self.ticker.ticker())
            self._ticker_changed = False
        by_period: dict[Period, list[Candle]] = defaultdict(list)
        for period, candle in self.candles.changes():
            by_period[period].append(candle)
        out.klines = [
            KlineUpdate(market, seq, time_ms, period, candles) for period, candles in by_period.items()
        ]
        return out

    # ------------------------------------------------------------------ queries

    def current_ticker(self) -> Ticker:
        return self.ticker.ticker()

    def depth_snapshot(self, limit: int | None = None) -> DepthSnapshot:
        """The levels and the sequence of the depth update they include: a subscriber applies
        the updates whose `seq` is above it (the first one's `prev_seq` is at most it)."""
        return self.depth.snapshot(limit)

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        """The whole state; updates not drained yet are not part of it (drain first)."""
        return _encoder.encode(
            _State(
                SNAPSHOT_VERSION,
                self.market,
                self.candles.snapshot(),
                self.ticker.snapshot(),
                self.depth.dump(),
                self._published_depth_seq,
            )
        )

    @classmethod
    def restore(cls, data: bytes) -> MarketStatistics:
        state = _decoder.decode(data)
        if state.version != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported market statistics snapshot version {state.version}")
        return cls(
            state.market,
            candles=CandleBook.restore(state.candles),
            ticker=RollingTicker.restore(state.ticker),
            depth=DepthBook.restore(state.depth),
            published_depth_seq=state.published_depth_seq,
        )


__all__ = ["MarketStatistics", "MarketUpdates"]

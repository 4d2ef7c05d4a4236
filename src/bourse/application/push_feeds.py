"""What the pushers send, decided without I/O: channel names, the public feeds (conflated and
batched per update speed, each message built once for every subscriber of its channel), the
market's depth kept locally for snapshots, and the private messages of each member.

Public channels (`<kind>.<market>[@<speed>]`, k-lines `kline.<period>.<market>`):

| kind | data | speeds | what a message holds |
| --- | --- | --- | --- |
| `trades` | `TradesData` | 100ms, 1000ms (default) | every trade since the last message, never dropped |
| `depth` | `DepthData` | 100ms, 1000ms (default) | a snapshot on subscribe, then the levels changed since |
| `ticker` | `TickerData` | 1000ms | the latest ticker (the newest one on subscribe) |
| `kline` | `KlineData` | 1000ms | the candles changed since the last message, latest state |

Private channels (`orders`, `my_trades`, `balances`, after `auth`) are sent as they happen.

`MarketFeeds` takes the statistics service's updates (`bourse.contracts.messages.DepthUpdate`,
`TradesUpdate`, `TickerUpdate`, `KlineUpdate`) for every market and keeps, per open channel (one
with subscribers) a `Topic`: what is pending and the channel's sequence. `due(speed)` returns,
per topic with something pending, the next message: the service encodes it once and writes the
same bytes to every subscriber. The depth is applied to a local book per market (`LocalBook`):
a new subscriber gets its snapshot at once, consistent with the updates that follow; a gap in
the statistics updates (a `prev_seq` the book has not reached) asks for a fresh snapshot, and
every depth topic of the market then sends one.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from bourse.contracts.messages import (
    AccountsReport,
    DepthUpdate,
    EventBatch,
    KlineUpdate,
    TickerUpdate,
    TradesUpdate,
)
from bourse.contracts.push_protocol import (
    BalanceData,
    CandleData,
    DepthData,
    KlineData,
    MyTradeData,
    OrderData,
    TickerData,
    TradeData,
    TradesData,
)
from bourse.domain.candles import Candle, Period
from bourse.domain.depth_book import DepthSnapshot
from bourse.domain.money import Currency, Market
from bourse.domain.order_views import PublicTrade
from bourse.domain.orders import (
    OrderAccepted,
    OrderAmended,
    OrderClosed,
    OrderRejected,
    OrderUpdated,
    Side,
    Trade,
)
from bourse.domain.tickers import Ticker, percent_text

FAST_MS: Final = 100
SLOW_MS: Final = 1000
SPEEDS: Final = (FAST_MS, SLOW_MS)
PUBLIC_KINDS: Final = {
    "trades": (FAST_MS, SLOW_MS),
    "depth": (FAST_MS, SLOW_MS),
    "ticker": (SLOW_MS,),
    "kline": (SLOW_MS,),
}
"""Public kinds and the speeds each offers; the last is the default."""
PRIVATE_KINDS: Final = ("orders", "my_trades", "balances")


class ChannelRefused(ValueError):
    """A channel name refused, with a stable `code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Channel:
    kind: str
    market: str | None = None
    period: Period | None = None
    speed_ms: int | None = None
    """None for the private channels: sent as they happen."""

    @property
    def private(self) -> bool:
        return self.market is None

    @property
    def name(self) -> str:
        if self.market is None:
            return self.kind
        middle = f"{self.period.value}." if self.period is not None else ""
        return f"{self.kind}.{middle}{self.market}@{self.speed_ms}ms"


def parse_channel(text: str, markets: Container[str]) -> Channel:
    """`trades.btc_usd`, `depth.btc_usd@100ms`, `kline.1m.btc_usd`, `orders`, ...; refused with
    `unknown_channel`, `unknown_market`, `unknown_period` or `unknown_speed`."""
    if text in PRIVATE_KINDS:
        return Channel(text)
    base, _, speed = text.partition("@")
    parts = base.split(".")
    kind = parts[0]
    if kind not in PUBLIC_KINDS or len(parts) != (3 if kind == "kline" else 2):
        raise ChannelRefused(
            "unknown_channel",
            f"no channel {text!r}: trades.<market>, depth.<market>, ticker.<market>, "
            f"kline.<period>.<market> (optionally @100ms or @1000ms), orders, my_trades, balances",
        )
    period: Period | None = None
    if kind == "kline":
        try:
            period = Period(parts[1])
        except ValueError:
            names = ", ".join(p.value for p in Period)
            raise ChannelRefused(
                "unknown_period", f"period must be one of {names}, not {parts[1]!r}"
            ) from None
    market = parts[-1]
    if market not in markets:
        raise ChannelRefused("unknown_market", f"no market {market!r}")
    speeds = PUBLIC_KINDS[kind]
    speed_ms = speeds[-1]
    if speed:
        offered = {f"{s}ms": s for s in speeds}
        if speed not in offered:
            raise ChannelRefused("unknown_speed", f"{kind} is sent at {', '.join(offered)}, not {speed!r}")
        speed_ms = offered[speed]
    return Channel(kind, market, period, speed_ms)


# ---------------------------------------------------------------------- formatting


def trade_data(market: Market, trade: PublicTrade) -> TradeData:
    return TradeData(
        trade.id,
        market.format_price(trade.price),
        market.format_amount(trade.amount),
        market.format_funds(trade.funds),
        trade.taker_side.value,
        trade.ts // 1_000_000,
    )


def ticker_data(market: Market, ticker: Ticker) -> TickerData:
    def price(value: int | None) -> str | None:
        return None if value is None else market.format_price(value)

    return TickerData(
        market=market.symbol,
        open_time=ticker.open_time,
        close_time=ticker.close_time,
        open=price(ticker.open),
        high=price(ticker.high),
        low=price(ticker.low),
        last=price(ticker.last),
        volume=market.format_amount(ticker.volume),
        quote_volume=market.format_funds(ticker.quote_volume),
        change=market.format_price(ticker.change),
        change_percent=percent_text(ticker.change_bp),
        trades=ticker.trades,
        best_bid=price(ticker.best_bid),
        best_ask=price(ticker.best_ask),
        sequence=ticker.seq,
    )


def candle_data(market: Market, candle: Candle) -> CandleData:
    return CandleData(
        candle.open_time,
        market.format_price(candle.open),
        market.format_price(candle.high),
        market.format_price(candle.low),
        market.format_price(candle.close),
        market.format_amount(candle.volume),
        market.format_funds(candle.quote_volume),
        candle.trades,
    )


def _levels(market: Market, levels: Iterable[tuple[int, int]]) -> list[tuple[str, str]]:
    return [(market.format_price(p), market.format_amount(a)) for p, a in levels]


# ---------------------------------------------------------------------- depth


class LocalBook:
    """A market's levels as the statistics updates leave them, at `sequence`."""

    __slots__ = ("asks", "bids", "loaded", "market", "sequence")

    def __init__(self, market: str) -> None:
        self.market = market
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.sequence = 0
        self.loaded = False
        """A snapshot was loaded: until then updates cannot be applied (nothing to apply to)."""

    def load(self, snapshot: DepthSnapshot) -> None:
        self.bids = dict(snapshot.bids)
        self.asks = dict(snapshot.asks)
        self.sequence = snapshot.sequence
        self.loaded = True

    def apply(self, update: DepthUpdate) -> bool:
        """Apply an update; False if one was missed (then `load` a fresh snapshot)."""
        if not self.loaded:
            return False
        if update.seq <= self.sequence:
            return True  # already in (a snapshot taken after it)
        if update.prev_seq > self.sequence:
            self.loaded = False
            return False
        for levels, changes in ((self.bids, update.bids), (self.asks, update.asks)):
            for price, amount in changes:
                if amount:
                    levels[price] = amount
                else:
                    levels.pop(price, None)
        self.sequence = update.seq
        return True

    def sides(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        return sorted(self.bids.items(), reverse=True), sorted(self.asks.items())


# ---------------------------------------------------------------------- topics


@dataclass(slots=True, eq=False)
class Topic:
    """One public channel with subscribers: its sequence and what is pending for its next
    message (only what its kind needs)."""

    channel: Channel
    subscribers: int = 0
    seq: int = 0
    trades: list[TradeData] = field(default_factory=list)
    levels: dict[tuple[Side, int], int] = field(default_factory=dict)
    depth_from: int | None = None
    """`prev_seq` of the first depth update pending (None: nothing pending)."""
    depth_to: int = 0
    resnapshot: bool = False
    ticker: Ticker | None = None
    candles: dict[int, Candle] = field(default_factory=dict)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


class MarketFeeds:
    """Every market's public feeds (see the module docstring)."""

    def __init__(self, markets: Mapping[str, Market]) -> None:
        self.markets = markets
        self.books = {symbol: LocalBook(symbol) for symbol in markets}
        self.tickers: dict[str, Ticker] = {}
        self.topics: dict[Channel, Topic] = {}
        self._by_market: dict[tuple[str, str], list[Topic]] = {}
        """(kind, market) -> its open topics (every speed and period)."""

    # ------------------------------------------------------------------ subscriptions

    def open(self, channel: Channel) -> Topic:
        """A subscriber more for `channel` (public); its topic is made on the first."""
        topic = self.topics.get(channel)
        if topic is None:
            topic = self.topics[channel] = Topic(channel)
            assert channel.market is not None
            self._by_market.setdefault((channel.kind, channel.market), []).append(topic)
        topic.subscribers += 1
        return topic

    def close(self, channel: Channel) -> None:
        topic = self.topics.get(channel)
        if topic is None:
            return
        topic.subscribers -= 1
        if topic.subscribers <= 0:
            del self.topics[channel]
            assert channel.market is not None
            self._by_market[(channel.kind, channel.market)].remove(topic)

    def _open_topics(self, kind: str, market: str) -> list[Topic]:
        return self._by_market.get((kind, market), [])

    def first_message(self, topic: Topic) -> object | None:
        """What a new subscriber gets at once: the depth's snapshot, the newest ticker; None for
        the others (or before the depth is known: then the next message is a snapshot)."""
        channel = topic.channel
        assert channel.market is not None
        market = self.markets[channel.market]
        if channel.kind == "depth":
            book = self.books[channel.market]
            if not book.loaded:
                topic.resnapshot = True
                return None
            bids, asks = book.sides()
            return DepthData(
                channel.market,
                True,
                book.sequence,
                book.sequence,
                _levels(market, bids),
                _levels(market, asks),
            )
        if channel.kind == "ticker":
            ticker = self.tickers.get(channel.market)
            return None if ticker is None else ticker_data(market, ticker)
        return None

    # ------------------------------------------------------------------ updates in

    def load_depth(self, snapshot: DepthSnapshot) -> None:
        """A fresh snapshot (at start, or after a gap): every depth topic sends it next."""
        self.books[snapshot.market].load(snapshot)
        for topic in self._open_topics("depth", snapshot.market):
            topic.resnapshot = True
            topic.levels.clear()
            topic.depth_from = None

    def on_depth(self, update: DepthUpdate) -> bool:
        """Apply to the book and to every depth topic of the market; False: the book missed
        an update (load a snapshot)."""
        book = self.books.get(update.market)
        if book is None:
            return True
        before = book.sequence
        if not book.apply(update):
            for topic in self._open_topics("depth", update.market):
                topic.resnapshot = True  # after the fresh snapshot, not the updates before it
                topic.levels.clear()
                topic.depth_from = None
            return False
        if update.seq <= before:
            return True
        for topic in self._open_topics("depth", update.market):
            if topic.depth_from is None:
                topic.depth_from = update.prev_seq
            topic.depth_to = update.seq
            for side, levels in ((Side.BUY, update.bids), (Side.SELL, update.asks)):
                for price, amount in levels:
                    topic.levels[(side, price)] = amount
        return True

    def on_trades(self, update: TradesUpdate) -> None:
        topics = self._open_topics("trades", update.market)
        if not topics:
            return
        market = self.markets[update.market]
        trades = [trade_data(market, trade) for trade in update.trades]
        for topic in topics:
            topic.trades.extend(trades)

    def on_ticker(self, update: TickerUpdate) -> None:
        self.tickers[update.market] = update.ticker
        for topic in self._open_topics("ticker", update.market):
            topic.ticker = update.ticker

    def on_kline(self, update: KlineUpdate) -> None:
        for topic in self._open_topics("kline", update.market):
            if topic.channel.period is update.period:
                for candle in update.candles:
                    topic.candles[candle.open_time] = candle

    # ------------------------------------------------------------------ messages out

    def due(self, speed_ms: int) -> list[tuple[Topic, object]]:
        """Per open topic of this speed with something pending, its next message's data
        (the topic's `next_seq()` is the caller's, once it sends)."""
        out: list[tuple[Topic, object]] = []
        for channel, topic in self.topics.items():
            if channel.speed_ms != speed_ms:
                continue
            data = self._take(topic)
            if data is not None:
                out.append((topic, data))
        return out

    def _take(self, topic: Topic) -> object | None:
        channel = topic.channel
        assert channel.market is not None
        market = self.markets[channel.market]
        kind = channel.kind
        if kind == "trades":
            if not topic.trades:
                return None
            trades, topic.trades = topic.trades, []
            return TradesData(channel.market, trades)
        if kind == "depth":
            if topic.resnapshot:
                book = self.books[channel.market]
                if not book.loaded:
                    return None
                topic.resnapshot = False
                topic.levels.clear()
                topic.depth_from = None
                bids, asks = book.sides()
                return DepthData(
                    channel.market,
                    True,
                    book.sequence,
                    book.sequence,
                    _levels(market, bids),
                    _levels(market, asks),
                )
            if topic.depth_from is None:
                return None
            bids_changed = sorted(
                ((p, a) for (s, p), a in topic.levels.items() if s is Side.BUY), reverse=True
            )
            asks_changed = sorted((p, a) for (s, p), a in topic.levels.items() if s is Side.SELL)
            data = DepthData(
                channel.market,
                False,
                topic.depth_to,
                topic.depth_from,
                _levels(market, bids_changed),
                _levels(market, asks_changed),
            )
            topic.levels.clear()
            topic.depth_from = None
            return data
        if kind == "ticker":
            if topic.ticker is None:
                return None
            ticker, topic.ticker = topic.ticker, None
            return ticker_data(market, ticker)
        if not topic.candles:
            return None
        candles = [candle_data(market, topic.candles[t]) for t in sorted(topic.candles)]
        topic.candles.clear()
        assert channel.period is not None
        return KlineData(channel.market, channel.period.value, candles)


# ---------------------------------------------------------------------- private


PrivateMessage = tuple[int, str, object]
"""(member id, channel kind, data)."""


def event_messages(
    batch: EventBatch, markets: Mapping[str, Market], wanted: Container[int]
) -> list[PrivateMessage]:
    """The private messages an EVENTS batch holds for the `wanted` members (those connected),
    in event order: their orders' changes and their trades (both sides of each)."""
    market = markets.get(batch.market)
    if market is None:
        return []
    out: list[PrivateMessage] = []
    time_ms = batch.received_at // 1_000_000
    for event in batch.events:
        if isinstance(event, Trade):
            maker_side = Side.SELL if event.taker_side is Side.BUY else Side.BUY
            for member, order_id, side, role in (
                (event.maker_member_id, event.maker_order_id, maker_side, "maker"),
                (event.taker_member_id, event.taker_order_id, event.taker_side, "taker"),
            ):
                if member in wanted:
                    out.append(
                        (
                            member,
                            "my_trades",
                            MyTradeData(
                                event.trade_id,
                                event.market,
                                str(order_id),
                                side.value,
                                role,
                                market.format_price(event.price),
                                market.format_amount(event.amount),
                                market.format_funds(event.funds),
                                event.ts // 1_000_000,
                            ),
                        )
                    )
            continue
        if event.member_id not in wanted:
            continue
        data: OrderData
        if isinstance(event, OrderAccepted):
            data = OrderData(
                "accepted",
                str(event.order_id),
                event.market,
                time_ms,
                side=event.side.value,
                type=event.type.value,
                price=None if event.price is None else market.format_price(event.price),
                amount=market.format_amount(event.amount),
                status="submitted",
                client_order_id=event.client_order_id,
            )
        elif isinstance(event, OrderUpdated):
            data = OrderData(
                "updated",
                str(event.order_id),
                event.market,
                time_ms,
                executed=market.format_amount(event.executed),
                remaining=market.format_amount(event.remaining),
                status=event.status.value,
            )
        elif isinstance(event, OrderAmended):
            data = OrderData(
                "amended",
                str(event.order_id),
                event.market,
                time_ms,
                price=market.format_price(event.price),
                amount=market.format_amount(event.amount),
                remaining=market.format_amount(event.remaining),
            )
        elif isinstance(event, OrderClosed):
            data = OrderData(
                "closed",
                str(event.order_id),
                event.market,
                time_ms,
                executed=market.format_amount(event.executed),
                funds=market.format_funds(event.funds_spent),
                status=event.status.value,
                reason=event.reason.value,
            )
        elif isinstance(event, OrderRejected):
            data = OrderData(
                "rejected",
                str(event.order_id),
                event.market,
                time_ms,
                status="closed",
                reason=event.reason.value,
            )
        else:  # pragma: no cover - every engine event is handled above
            continue
        out.append((event.member_id, "orders", data))
    return out


def report_messages(
    report: AccountsReport,
    timestamp_ns: int,
    markets: Mapping[str, Market],
    currencies: Mapping[str, Currency],
    wanted: Container[int],
) -> list[PrivateMessage]:
    """The private messages of one accounts report for the `wanted` members: orders the
    accounts stage refused, and every balance change (available and locked, as it is now)."""
    out: list[PrivateMessage] = []
    time_ms = timestamp_ns // 1_000_000
    for refused in report.rejected:
        if refused.member_id in wanted and refused.market in markets:
            out.append(
                (
                    refused.member_id,
                    "orders",
                    OrderData(
                        "rejected",
                        str(refused.order_id),
                        refused.market,
                        time_ms,
                        status="closed",
                        reason=refused.reason.value,
                    ),
                )
            )
    for change in report.balances:
        if change.member_id in wanted and change.currency in currencies:
            currency = currencies[change.currency]
            out.append(
                (
                    change.member_id,
                    "balances",
                    BalanceData(
                        change.currency, currency.format(change.available), currency.format(change.locked)
                    ),
                )
            )
    return out

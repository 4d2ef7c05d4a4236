"""Read models of the order pipeline: what a member and a market look like now, folded from the
engine's `EventBatch`es (stream EVENTS) and the accounts stage's `AccountsReport`s (stream
ACCOUNTS). Pure: no I/O, no clock; the same messages give the same answers.

`OrderViews` keeps, in memory:

- per order: an `OrderView` (status, executed, remaining, funds, reasons, times);
- per member: open orders (all of them), the most recently closed orders (bounded), balances
  (the latest `BalanceChanged` per currency) and recent trades (bounded);
- per market: recent trades (bounded), the last price and the depth: price levels aggregated
  from the open GTC limit orders (price -> sum of remaining), kept up to date event by event.

Idempotent: a batch whose sequence is at or below the last one applied for its market (EVENTS:
`EventBatch.seq`, the matching engine's input sequence) or its shard (ACCOUNTS:
`AccountsReport.seq`) is ignored, so a replay or a republished duplicate changes nothing.

Orders rejected by the accounts stage (funds, validation) never reach the engine: their view is
created from the `OrderRejected` alone, so side, type, price, amount and tif are unknown (None)
and the status is CLOSED with `close_reason = REJECTED` and `reject_reason` set. A DUPLICATE_ORDER
rejection names an order that exists already and creates nothing; rejected cancels and amends
leave the order as it was.

Order lists are most recent first, by order id (ids are time ordered).

The rules that fold one event into one order's `OrderView` are the functions below
(`accepted_view`, `rejected_view`, `fold_trade`, `fold_updated`, `fold_amended`, `fold_closed`):
`OrderViews` adds its indexes around them (open and closed orders per member, depth, trades),
and `bourse.domain.order_records` applies the same functions to the rows of the persistence
service's SQL tables.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Final, Protocol

import msgspec

from bourse.domain.accounts import BalanceChanged
from bourse.domain.orders import (
    FINAL_STATUSES,
    CloseReason,
    EngineEvent,
    OrderAccepted,
    OrderAmended,
    OrderClosed,
    OrderRejected,
    OrderStatus,
    OrderType,
    OrderUpdated,
    RejectReason,
    Side,
    TimeInForce,
    Trade,
)
from bourse.domain.values import Amount, MemberId, OrderId, Price, QuoteUnits, TradeId


class EventBatch(Protocol):
    """What the projection needs of a matching output message (`bourse.contracts.messages.EventBatch`
    is one): the domain names the shape, not the wire envelope."""

    @property
    def market(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def received_at(self) -> int: ...
    @property
    def events(self) -> Sequence[EngineEvent]: ...


class AccountsReport(Protocol):
    """What the projection needs of an accounts output message
    (`bourse.contracts.messages.AccountsReport`)."""

    @property
    def shard(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def rejected(self) -> Sequence[OrderRejected]: ...
    @property
    def balances(self) -> Sequence[BalanceChanged]: ...


__all__ = [
    "BalanceView",
    "DepthView",
    "MemberTrade",
    "OrderView",
    "OrderViews",
    "PublicTrade",
    "accepted_view",
    "fold_amended",
    "fold_closed",
    "fold_trade",
    "fold_updated",
    "listed",
    "parse_state",
    "rejected_view",
    "wanted_statuses",
]

CLOSED_PER_MEMBER: Final = 1000
TRADES_PER_MARKET: Final = 1000
TRADES_PER_MEMBER: Final = 1000

_BUY = Side.BUY
_LIMIT = OrderType.LIMIT
_GTC = TimeInForce.GTC
_SUBMITTED = OrderStatus.SUBMITTED
_PARTIAL = OrderStatus.PARTIALLY_FILLED
_CLOSED = OrderStatus.CLOSED
_OPEN_STATUSES: Final = frozenset({_SUBMITTED, _PARTIAL})


class OrderView(msgspec.Struct, kw_only=True):
    """One order as a member sees it. Quantities are integers on the market's grid: `price` in
    price units, `amount`/`executed`/`remaining` in amount units, `funds` in quote currency units.
    Times are nanoseconds since the epoch."""

    id: OrderId
    member_id: MemberId
    market: str
    side: Side | None
    """None only for an order the accounts stage rejected (it never reached the engine)."""
    type: OrderType | None
    price: Price | None
    """Limit price; None for market orders (and rejected ones)."""
    amount: Amount | None
    executed: Amount = Amount(0)
    remaining: Amount = Amount(0)
    """Unfilled amount: still in the book while the order is open, left unfilled once closed."""
    funds: QuoteUnits = QuoteUnits(0)
    """Quote units exchanged so far (spent by a buy, received by a sell), before fees."""
    status: OrderStatus
    close_reason: CloseReason | None = None
    reject_reason: RejectReason | None = None
    tif: TimeInForce | None = None
    post_only: bool = False
    client_order_id: str | None = None
    created_at: int = 0
    """Stamped by the gateway."""
    received_at: int = 0
    """Stamped by the engine (the time its input stream stored the command)."""
    updated_at: int = 0
    """`received_at` of the engine batch (or the time of the accounts report) that last changed it."""

    @property
    def is_open(self) -> bool:
        return self.status in _OPEN_STATUSES


class BalanceView(msgspec.Struct, frozen=True):
    currency: str
    available: int
    locked: int
    """Ledger units of the currency (10**-precision)."""


class PublicTrade(msgspec.Struct, frozen=True):
    """A trade as anyone may see it (no member or order ids)."""

    id: TradeId
    """Per market, from 1."""
    market: str
    price: Price
    amount: Amount
    funds: QuoteUnits
    taker_side: Side
    ts: int


class MemberTrade(msgspec.Struct, frozen=True):
    """A trade from one member's side of it."""

    id: TradeId
    market: str
    price: Price
    amount: Amount
    funds: QuoteUnits
    side: Side
    order_id: OrderId
    role: str
    """"maker" or "taker"."""
    ts: int


class DepthView(msgspec.Struct, frozen=True):
    """Aggregated price levels, best first: `[price, remaining amount]`."""

    market: str
    bids: list[tuple[Price, Amount]]
    asks: list[tuple[Price, Amount]]
    last_price: Price | None
    seq: int
    """The last engine input sequence applied for this market (0: nothing yet)."""


def parse_state(state: str | None) -> frozenset[OrderStatus] | None:
    """`None` (every order), "open" (submitted, partially filled), "closed" (every final status:
    executed, cancelled, closed) or one status name; ValueError for anything else."""
    if state is None:
        return None
    if state == "open":
        return _OPEN_STATUSES
    if state == "closed":
        return FINAL_STATUSES
    return frozenset({OrderStatus(state)})


def wanted_statuses(state: str | None, status: OrderStatus | None) -> frozenset[OrderStatus] | None:
    """The statuses an orders query asks for: `state` (see `parse_state`) narrowed to exactly
    `status` if given; None for every status. ValueError for an unknown state."""
    statuses = parse_state(state)
    if status is not None:
        statuses = frozenset({status}) if statuses is None else statuses & {status}
    return statuses


class _Levels:
    """One side of a market's depth: price level -> remaining sum, keys sorted best first
    (key = -price for bids, price for asks)."""

    __slots__ = ("keys", "levels", "sign")

    def __init__(self, sign: int) -> None:
        self.sign = sign
        self.levels: dict[int, int] = {}
        self.keys: list[int] = []

    def add(self, price: Price, amount: Amount) -> None:
        key = price * self.sign
        levels = self.levels
        total = levels.get(key)
        if total is None:
            levels[key] = amount
            insort(self.keys, key)
        else:
            levels[key] = total + amount

    def sub(self, price: Price, amount: Amount) -> None:
        key = price * self.sign
        levels = self.levels
        total = levels[key] - amount
        if total > 0:
            levels[key] = total
        else:
            del levels[key]
            keys = self.keys
            del keys[bisect_left(keys, key)]

    def top(self, limit: int) -> list[tuple[Price, Amount]]:
        sign, levels = self.sign, self.levels
        return [(Price(key * sign), Amount(levels[key])) for key in self.keys[:limit]]


class _Market:
    __slots__ = ("asks", "bids", "last_price", "seq", "trades")

    def __init__(self, trades: int) -> None:
        self.bids = _Levels(-1)
        self.asks = _Levels(1)
        self.trades: deque[PublicTrade] = deque(maxlen=trades)
        self.last_price: Price | None = None
        self.seq = 0


class _Member:
    __slots__ = ("balances", "closed", "open", "trades")

    def __init__(self, trades: int) -> None:
        self.open: dict[OrderId, OrderView] = {}
        self.closed: OrderedDict[OrderId, OrderView] = OrderedDict()
        """In the order they closed, oldest first (evicted first)."""
        self.balances: dict[str, BalanceView] = {}
        self.trades: deque[MemberTrade] = deque(maxlen=trades)


def _rests(view: OrderView) -> bool:
    """Does the order sit in the book (and so count in the depth)?"""
    return view.tif is _GTC and view.type is _LIMIT and view.status in _OPEN_STATUSES and view.remaining > 0


# ---------------------------------------------------------------------- folding rules
#
# One event applied to one order's view; the callers own everything else (which views exist,
# events about unknown orders, indexes). Pure; `ts` is the `updated_at` the change stamps.


def accepted_view(e: OrderAccepted, ts: int) -> OrderView:
    """`accepted` makes the view: `submitted`, remaining = amount. It replaces a view made from a
    rejection (the caller's job)."""
    return OrderView(
        id=e.order_id,
        member_id=e.member_id,
        market=e.market,
        side=e.side,
        type=e.type,
        price=e.price,
        amount=e.amount,
        remaining=e.amount,
        status=_SUBMITTED,
        tif=e.tif,
        post_only=e.post_only,
        client_order_id=e.client_order_id,
        created_at=e.created_at,
        received_at=e.received_at,
        updated_at=ts,
    )


UNLISTED_REASON = RejectReason.CLIENT_ORDER_ID_TAKEN
"""A resubmitted `client_order_id` is refused under its new id and readable by that id (its
sender may have told the client the id), but it is no order of the member: lists leave it out."""


def listed(view: OrderView) -> bool:
    """Whether the view appears in the member's order lists (every read model applies this)."""
    return view.reject_reason is not UNLISTED_REASON


def rejected_view(e: OrderRejected, ts: int) -> OrderView | None:
    """The view a rejected place makes when the order has none yet (the caller checks that):
    `closed`, `close_reason = rejected`, the reject reason; side, type, price, amount and tif
    unknown (None). None if it makes none: a rejected cancel or amend, or a DUPLICATE_ORDER place
    (it names an order that exists already)."""
    if e.command != "place" or e.reason == RejectReason.DUPLICATE_ORDER:
        return None
    return OrderView(
        id=e.order_id,
        member_id=e.member_id,
        market=e.market,
        side=None,
        type=None,
        price=None,
        amount=None,
        status=_CLOSED,
        close_reason=CloseReason.REJECTED,
        reject_reason=e.reason,
        updated_at=ts,
    )


def fold_trade(view: OrderView, t: Trade) -> None:
    """`trade` adds its funds to the order (called for the maker and the taker)."""
    view.funds = QuoteUnits(view.funds + t.funds)


def fold_updated(view: OrderView, e: OrderUpdated, ts: int) -> None:
    """`updated` sets executed, remaining and status."""
    view.executed = e.executed
    view.remaining = e.remaining
    view.status = e.status
    view.updated_at = ts


def fold_amended(view: OrderView, e: OrderAmended, ts: int) -> None:
    """`amended` sets price, amount, remaining, executed = amount - remaining, and status
    `partially_filled` if anything executed, else `submitted`."""
    view.price = e.price
    view.amount = e.amount
    view.remaining = e.remaining
    view.executed = Amount(e.amount - e.remaining)
    view.status = _PARTIAL if view.executed else _SUBMITTED
    view.updated_at = ts


def fold_closed(view: OrderView, e: OrderClosed, ts: int) -> None:
    """`closed` sets status, close reason, executed, remaining = amount - executed (what was left
    unfilled) and funds = funds_spent."""
    view.status = e.status
    view.close_reason = e.reason
    view.executed = e.executed
    view.remaining = Amount((view.amount or 0) - e.executed)
    view.funds = e.funds_spent
    view.updated_at = ts


class OrderViews:
    """The projection. Feed it with `apply_events` and `apply_report`; ask with the queries."""

    def __init__(
        self,
        *,
        closed_per_member: int = CLOSED_PER_MEMBER,
        trades_per_market: int = TRADES_PER_MARKET,
        trades_per_member: int = TRADES_PER_MEMBER,
    ) -> None:
        self.closed_per_member = closed_per_member
        self.trades_per_market = trades_per_market
        self.trades_per_member = trades_per_member
        self._orders: dict[OrderId, OrderView] = {}
        self._members: dict[MemberId, _Member] = {}
        self._markets: dict[str, _Market] = {}
        self._accounts_seq: dict[int, int] = {}
        self.events_applied = 0
        self.unknown_order_events = 0
        """Updates about orders this projection never saw accepted (accepted before the oldest
        message the stream still holds): counted, otherwise ignored."""

    # ------------------------------------------------------------------ feeding

    def apply_events(self, batch: EventBatch) -> bool:
        """Apply one engine batch; False (and nothing changed) if its sequence was applied already."""
        market = self._market(batch.market)
        if batch.seq <= market.seq:
            return False
        market.seq = batch.seq
        ts = batch.received_at
        orders = self._orders
        for event in batch.events:
            if isinstance(event, OrderUpdated):
                self._updated(event, orders.get(event.order_id), market, ts)
            elif isinstance(event, Trade):
                self._trade(event, market)
            elif isinstance(event, OrderAccepted):
                self._accepted(event, market, ts)
            elif isinstance(event, OrderClosed):
                self._closed(event, orders.get(event.order_id), market, ts)
            elif isinstance(event, OrderAmended):
                self._amended(event, orders.get(event.order_id), market, ts)
            else:
                self._rejected(event, ts)
        self.events_applied += len(batch.events)
        return True

    def apply_report(self, report: AccountsReport, ts: int = 0) -> bool:
        """Apply one accounts report stored at `ts` (ns); False if its sequence was applied already."""
        if report.seq <= self._accounts_seq.get(report.shard, 0):
            return False
        self._accounts_seq[report.shard] = report.seq
        for rejected in report.rejected:
            self._rejected(rejected, ts)
        for change in report.balances:
            self._member(change.member_id).balances[change.currency] = BalanceView(
                change.currency, change.available, change.locked
            )
        return True

    def _market(self, symbol: str) -> _Market:
        market = self._markets.get(symbol)
        if market is None:
            market = self._markets[symbol] = _Market(self.trades_per_market)
        return market

    def _member(self, member_id: MemberId) -> _Member:
        member = self._members.get(member_id)
        if member is None:
            member = self._members[member_id] = _Member(self.trades_per_member)
        return member

    def _accepted(self, e: OrderAccepted, market: _Market, ts: int) -> None:
        previous = self._orders.get(e.order_id)
        if previous is not None:  # only a view made from a rejection can be here
            self._forget(previous, market)
        view = accepted_view(e, ts)
        self._orders[e.order_id] = view
        self._member(e.member_id).open[e.order_id] = view
        if _rests(view):
            (market.bids if e.side is _BUY else market.asks).add(e.price, e.amount)  # type: ignore[arg-type]

    def _rejected(self, e: OrderRejected, ts: int) -> None:
        if e.order_id in self._orders:
            return
        view = rejected_view(e, ts)
        if view is not None:
            self._orders[e.order_id] = view
            self._retire(view, self._member(e.member_id))

    def _trade(self, t: Trade, market: _Market) -> None:
        market.trades.append(
            PublicTrade(t.trade_id, t.market, t.price, t.amount, t.funds, t.taker_side, t.ts)
        )
        market.last_price = t.price
        taker_side = t.taker_side
        maker_side = Side.SELL if taker_side is _BUY else _BUY
        orders = self._orders
        for order_id, member_id, side, role in (
            (t.maker_order_id, t.maker_member_id, maker_side, "maker"),
            (t.taker_order_id, t.taker_member_id, taker_side, "taker"),
        ):
            view = orders.get(order_id)
            if view is not None:
                fold_trade(view, t)
            self._member(member_id).trades.append(
                MemberTrade(t.trade_id, t.market, t.price, t.amount, t.funds, side, order_id, role, t.ts)
            )

    def _updated(self, e: OrderUpdated, view: OrderView | None, market: _Market, ts: int) -> None:
        if view is None:
            self.unknown_order_events += 1
            return
        if _rests(view):
            self._levels(view, market).sub(view.price, view.remaining)  # type: ignore[arg-type]
        fold_updated(view, e, ts)
        if _rests(view):
            self._levels(view, market).add(view.price, view.remaining)  # type: ignore[arg-type]

    def _amended(self, e: OrderAmended, view: OrderView | None, market: _Market, ts: int) -> None:
        if view is None:
            self.unknown_order_events += 1
            return
        if _rests(view):
            self._levels(view, market).sub(view.price, view.remaining)  # type: ignore[arg-type]
        fold_amended(view, e, ts)
        if _rests(view):
            self._levels(view, market).add(e.price, e.remaining)

    def _closed(self, e: OrderClosed, view: OrderView | None, market: _Market, ts: int) -> None:
        if view is None:
            self.unknown_order_events += 1
            return
        if _rests(view):
            self._levels(view, market).sub(view.price, view.remaining)  # type: ignore[arg-type]
        fold_closed(view, e, ts)
        member = self._member(view.member_id)
        member.open.pop(view.id, None)
        self._retire(view, member)

    def _retire(self, view: OrderView, member: _Member) -> None:
        closed = member.closed
        closed[view.id] = view
        if len(closed) > self.closed_per_member:
            evicted, _ = closed.popitem(last=False)
            self._orders.pop(evicted, None)

    def _forget(self, view: OrderView, market: _Market) -> None:
        if _rests(view):
            self._levels(view, market).sub(view.price, view.remaining)  # type: ignore[arg-type]
        member = self._member(view.member_id)
        member.open.pop(view.id, None)
        member.closed.pop(view.id, None)
        del self._orders[view.id]

    @staticmethod
    def _levels(view: OrderView, market: _Market) -> _Levels:
        return market.bids if view.side is _BUY else market.asks

    # ------------------------------------------------------------------ queries

    def order(self, member_id: MemberId, order_id: OrderId) -> OrderView | None:
        """The order, or None if it is unknown or belongs to another member."""
        view = self._orders.get(order_id)
        if view is None or view.member_id != member_id:
            return None
        return view

    def orders(
        self,
        member_id: MemberId,
        market: str | None = None,
        state: str | None = None,
        limit: int = 100,
        before_id: OrderId | None = None,
        status: OrderStatus | None = None,
    ) -> list[OrderView]:
        """A member's orders, most recent (highest id) first. `state`: None (all), "open",
        "closed" (every final status) or one status (ValueError otherwise); `status`: exactly
        that status (the way to ask for CLOSED alone, since "closed" names the group);
        `before_id`: only ids below it."""
        statuses = wanted_statuses(state, status)
        member = self._members.get(member_id)
        if member is None or limit <= 0:
            return []
        sources: list[Iterable[OrderView]] = []
        if statuses is None or statuses & _OPEN_STATUSES:
            sources.append(member.open.values())
        if statuses is None or statuses & FINAL_STATUSES:
            sources.append(member.closed.values())

        def matching() -> Iterator[OrderView]:
            for source in sources:
                for view in source:
                    if market is not None and view.market != market:
                        continue
                    if statuses is not None and view.status not in statuses:
                        continue
                    if before_id is not None and view.id >= before_id:
                        continue
                    if not listed(view):
                        continue
                    yield view

        return heapq.nlargest(limit, matching(), key=_order_id)

    def open_orders(self, member_id: MemberId, market: str | None = None) -> list[OrderView]:
        """Every open order of a member (optionally in one market), most recent first."""
        member = self._members.get(member_id)
        if member is None:
            return []
        found = [view for view in member.open.values() if market is None or view.market == market]
        found.sort(key=_order_id, reverse=True)
        return found

    def balances(self, member_id: MemberId) -> list[BalanceView]:
        member = self._members.get(member_id)
        if member is None:
            return []
        return [member.balances[code] for code in sorted(member.balances)]

    def depth(self, market: str, limit: int = 50) -> DepthView:
        state = self._markets.get(market)
        if state is None:
            return DepthView(market, [], [], None, 0)
        return DepthView(market, state.bids.top(limit), state.asks.top(limit), state.last_price, state.seq)

    def trades(self, market: str, limit: int = 100) -> list[PublicTrade]:
        """Recent trades of a market, most recent first."""
        state = self._markets.get(market)
        if state is None or limit <= 0:
            return []
        return list(islice(reversed(state.trades), limit))

    def member_trades(
        self, member_id: MemberId, market: str | None = None, limit: int = 100
    ) -> list[MemberTrade]:
        """A member's recent trades (optionally in one market), most recent first."""
        member = self._members.get(member_id)
        if member is None or limit <= 0:
            return []
        found: list[MemberTrade] = []
        for trade in reversed(member.trades):
            if market is None or trade.market == market:
                found.append(trade)
                if len(found) == limit:
                    break
        return found

    def last_price(self, market: str) -> Price | None:
        state = self._markets.get(market)
        return None if state is None else state.last_price

    # ------------------------------------------------------------------ progress

    def events_seq(self) -> dict[str, int]:
        """Per market, the last engine input sequence applied."""
        return {symbol: state.seq for symbol, state in sorted(self._markets.items())}

    def accounts_seq(self) -> dict[int, int]:
        """Per accounts shard, the last input sequence applied."""
        return dict(sorted(self._accounts_seq.items()))

    def counts(self) -> dict[str, int]:
        return {
            "orders": len(self._orders),
            "open_orders": sum(len(member.open) for member in self._members.values()),
            "members": len(self._members),
            "markets": len(self._markets),
        }


def _order_id(view: OrderView) -> OrderId:
    return view.id

"""The matching engine of one market: commands in, events out, price-time priority.

`MatchingEngine(market).process(command, ts)` applies one `PlaceOrder`, `CancelOrder` or
`AmendOrder` and returns the events it caused. It is pure and deterministic: no clock (`ts`, the
time the command was received, comes from the input stream), no randomness, no I/O; the same
commands with the same `ts` give the same events, byte for byte once encoded. `snapshot()` and
`MatchingEngine.restore()` capture and rebuild the whole state, so restoring a snapshot and
replaying the commands after it equals a straight run.

Rules
-----
- Price-time priority: an incoming order trades against the best opposite price first and, at
  one price, against the oldest order first. Trades execute at the maker's (resting) price.
- Limit orders: GTC rests what it cannot fill; IOC closes the remainder (CLOSED,
  IOC_REMAINDER); FOK fills completely at once or does nothing (CLOSED, FOK_NOT_FILLED).
  `post_only` (GTC only) is reject-style: if the order would cross the book it is closed
  (CLOSED, POST_ONLY_WOULD_TRADE) and nothing trades, even if the crossing orders are its own.
- Market orders never rest (tif GTC and IOC mean the same for them; FOK is honoured). A market
  sell is bounded by its amount; a market buy by its amount *and* by `command.locked` quote
  units: it never spends more. The remainder is closed with FUNDS_EXHAUSTED when funds bound
  the order, else MARKET_REMAINDER (the book ran dry). A market buy with `locked <= 0` is
  rejected (INSUFFICIENT_FUNDS).
- Cancel: the order leaves the book (CANCELLED, CANCELLED).
- Amend (price and/or total amount of a resting order): a pure decrease of the amount keeps
  time priority; any other change is an atomic cancel-replace: the order keeps its id,
  executed amount and funds, moves to the back of the queue at its (new) price, and if that
  price crosses the book it first trades as a GTC limit taker. The new total amount must be
  above the executed amount and within the market limits (else AMEND_INVALID); amending a
  post-only order to a crossing price is rejected (POST_ONLY_WOULD_TRADE); an amend with
  neither price nor amount (`bourse.domain.order_shape.amend_shape_error`) is AMEND_INVALID.
  An amend that changes nothing keeps priority.
- Validation on place: amount within the market's min/max; the order's shape
  (`bourse.domain.order_shape`: a limit order needs a price, a market order has none and is
  not post_only; post_only only with GTC); a price `0 < price <= market.max_price`; otherwise
  INVALID_ORDER. A command for another market is UNKNOWN_MARKET. An order id
  that is open, or was closed recently (the last `recent_ids` closed ids, default 100,000,
  kept in the state and the snapshot), is DUPLICATE_ORDER. The accounts stage stays the first
  line of defence against duplicates; this window only makes the engine safe on its own.
- Cancel or amend of an id that is not open is rejected with UNKNOWN_ORDER, or ORDER_CLOSED
  when the id is in the recently closed window. So is a cancel or amend whose member differs
  from the order's (the reply does not reveal that the order exists). A rejected cancel or
  amend leaves the order as it was.

Self-trade prevention (cancel resting)
--------------------------------------
When an incoming order (or an amended order that crosses) would trade against a resting order
of the same member, the *resting* order is taken out of the book, `OrderClosed(status=CLOSED,
reason=SELF_TRADE)`, and matching goes on with the next resting order. No trade between a
member and itself is ever made. A FOK order counts only other members' liquidity when it
decides whether it can fill; if it can, the same-member orders on its way are cancelled as above.

Event order (the contract the accounts stage and the ledger rely on)
--------------------------------------------------------------------
Place:
  1. `OrderRejected(command="place")` and nothing else if the command is invalid; the order
     never existed (the accounts stage releases the whole lock of that command, except for a
     DUPLICATE_ORDER rejection, which must not touch the existing order's lock).
  2. otherwise `OrderAccepted` first, then, for each resting order met in priority order:
     - same member: `OrderClosed(maker, CLOSED, SELF_TRADE)`;
     - else `Trade`, `OrderUpdated(maker)`, `OrderUpdated(taker)` and, if the maker is now
       fully filled, `OrderClosed(maker, EXECUTED, FILLED)`.
  3. last, `OrderClosed(taker)` if the taker is final: (EXECUTED, FILLED),
     (CLOSED, IOC_REMAINDER | MARKET_REMAINDER | FUNDS_EXHAUSTED | FOK_NOT_FILLED |
     POST_ONLY_WOULD_TRADE). A GTC remainder rests silently: no event after the fills.
Cancel: `OrderClosed(CANCELLED, CANCELLED)`, or `OrderRejected(command="cancel")`.
Amend: `OrderRejected(command="amend")`, or `OrderAmended` (with `priority_kept`), followed when
the new price crosses by the fill events of step 2 and, if it filled completely, its
`OrderClosed(EXECUTED, FILLED)`.

Every accepted order gets exactly one `OrderClosed`, eventually: it carries the executed amount
and `funds_spent`, the quote units the order exchanged over its life (spent by a buy, received
by a sell), so the ledger can release what is left of its lock. After `OrderAmended` the lock a
buy needs is `market.funds(price, remaining)`; a sell needs `remaining` base amount.
`OrderUpdated.status` is PARTIALLY_FILLED or EXECUTED. Trade ids start at 1 per engine and
increase by one per trade (use them together with the market symbol).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterator
from typing import Final

import msgspec

from bourse.domain.money import Market
from bourse.domain.order_book import BookSide, OrderBook, RestingOrder
from bourse.domain.order_shape import amend_shape_error, place_shape_error
from bourse.domain.orders import (
    AmendOrder,
    CancelOrder,
    CloseReason,
    EngineCommand,
    EngineEvent,
    OrderAccepted,
    OrderAmended,
    OrderClosed,
    OrderRejected,
    OrderStatus,
    OrderType,
    OrderUpdated,
    PlaceOrder,
    RejectReason,
    Side,
    TimeInForce,
    Trade,
)
from bourse.domain.values import Amount, MemberId, OrderId, Price, QuoteUnits, TradeId

__all__ = ["SNAPSHOT_VERSION", "MatchingEngine", "OpenOrder"]

SNAPSHOT_VERSION: Final = 1
DEFAULT_RECENT_IDS: Final = 100_000

_NO_LIMIT: Final = 1 << 62
"""A key beyond every price (prices are below 10**18): market orders match the whole side."""
_NO_FUNDS_CAP: Final = -1
_NO_PRICE: Final = Price(0)
"""The price of a market order's `RestingOrder` (it never rests)."""
_ZERO_AMOUNT: Final = Amount(0)
_ZERO_FUNDS: Final = QuoteUnits(0)

_BUY = Side.BUY
_SELL = Side.SELL
_MARKET = OrderType.MARKET
_GTC = TimeInForce.GTC
_IOC = TimeInForce.IOC
_FOK = TimeInForce.FOK
_PARTIAL = OrderStatus.PARTIALLY_FILLED
_EXECUTED = OrderStatus.EXECUTED
_CANCELLED = OrderStatus.CANCELLED
_CLOSED = OrderStatus.CLOSED
_FILLED = CloseReason.FILLED


class OpenOrder(msgspec.Struct, frozen=True):
    """Read-only view of an order resting in the book."""

    order_id: OrderId
    member_id: MemberId
    market: str
    side: Side
    price: Price
    amount: Amount
    executed: Amount
    remaining: Amount
    funds: QuoteUnits
    """Quote units exchanged so far."""
    status: OrderStatus
    post_only: bool
    created_at: int
    received_at: int
    client_order_id: str | None


class _OrderState(msgspec.Struct, frozen=True, array_like=True):
    order_id: OrderId
    member_id: MemberId
    side: Side
    price: Price
    amount: Amount
    executed: Amount
    funds: QuoteUnits
    post_only: bool
    created_at: int
    received_at: int
    client_order_id: str | None


class _EngineState(msgspec.Struct, frozen=True):
    version: int
    market: str
    next_trade_id: TradeId
    recent_ids_capacity: int
    recent_ids: list[OrderId]
    """Recently closed order ids, oldest first."""
    bids: list[_OrderState]
    """Priority order: best price first, oldest first."""
    asks: list[_OrderState]


_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(_EngineState)


class MatchingEngine:
    """Order book and matching rules of one market. See the module docstring for the rules."""

    __slots__ = (
        "_asks",
        "_bids",
        "_book",
        "_funds_factor",
        "_market",
        "_max_amount",
        "_max_price",
        "_min_amount",
        "_next_trade_id",
        "_orders",
        "_recent",
        "_recent_capacity",
        "_recent_set",
        "_symbol",
    )

    def __init__(self, market: Market, *, recent_ids: int = DEFAULT_RECENT_IDS) -> None:
        if recent_ids < 0:
            raise ValueError("recent_ids must be >= 0")
        self._market = market
        self._symbol = market.symbol
        self._funds_factor = market.funds_factor
        self._min_amount = market.min_amount
        self._max_amount = market.max_amount
        self._max_price = market.max_price
        self._book = OrderBook()
        self._bids: BookSide = self._book.bids
        self._asks: BookSide = self._book.asks
        self._orders: dict[OrderId, RestingOrder] = self._book.orders
        self._next_trade_id = 1
        """A plain int counter; `Trade.trade_id` is a `TradeId`."""
        self._recent: deque[OrderId] = deque()
        self._recent_set: set[OrderId] = set()
        self._recent_capacity = recent_ids

    # ------------------------------------------------------------------ commands

    def process(self, command: EngineCommand, ts: int) -> list[EngineEvent]:
        """Apply one command received at `ts` (ns since the epoch) and return its events."""
        kind = type(command)
        if kind is AmendOrder:
            return self._amend(command, ts)  # type: ignore[arg-type]
        if kind is PlaceOrder:
            return self._place(command, ts)  # type: ignore[arg-type]
        if kind is CancelOrder:
            return self._cancel(command)  # type: ignore[arg-type]
        raise TypeError(f"not an engine command: {command!r}")

    def _place(self, c: PlaceOrder, ts: int) -> list[EngineEvent]:
        oid = c.order_id
        symbol = self._symbol
        if c.market != symbol:
            return [self._reject(c, RejectReason.UNKNOWN_MARKET, "place")]
        if oid in self._orders or oid in self._recent_set:
            return [self._reject(c, RejectReason.DUPLICATE_ORDER, "place")]
        amount = c.amount
        side = c.side
        tif = c.tif
        price = c.price
        post_only = c.post_only
        kind = c.type
        if (
            not self._min_amount <= amount <= self._max_amount
            or place_shape_error(side, kind, tif, priced=price is not None, post_only=post_only) is not None
            or (price is not None and not 0 < price <= self._max_price)
        ):
            return [self._reject(c, RejectReason.INVALID_ORDER, "place")]
        is_buy = side == _BUY
        if kind == _MARKET and is_buy and c.locked <= 0:
            return [self._reject(c, RejectReason.INSUFFICIENT_FUNDS, "place")]

        events: list[EngineEvent] = [
            OrderAccepted(
                order_id=oid,
                member_id=c.member_id,
                market=symbol,
                side=side,
                type=kind,
                amount=amount,
                price=price,
                tif=tif,
                post_only=post_only,
                created_at=c.created_at,
                received_at=ts,
                client_order_id=c.client_order_id,
            )
        ]
        order = RestingOrder(
            oid,
            c.member_id,
            _BUY if is_buy else _SELL,
            _NO_PRICE if price is None else price,
            amount,
            _ZERO_AMOUNT,
            _ZERO_FUNDS,
            post_only,
            c.created_at,
            ts,
            c.client_order_id,
        )
        opp = self._asks if is_buy else self._bids

        if price is not None:  # limit
            limit_key = price if is_buy else -price
            opp_keys = opp.keys
            if opp_keys and opp_keys[0] <= limit_key:
                if post_only:
                    return self._close_taker(events, order, CloseReason.POST_ONLY_WOULD_TRADE)
                if tif == _FOK and not self._can_fill(order, opp, limit_key, _NO_FUNDS_CAP):
                    return self._close_taker(events, order, CloseReason.FOK_NOT_FILLED)
                self._match(order, opp, limit_key, _NO_FUNDS_CAP, events, ts)
                if order.executed == amount:
                    return self._close_taker(events, order, _FILLED)
            elif tif == _FOK:
                return self._close_taker(events, order, CloseReason.FOK_NOT_FILLED)
            if tif == _GTC:
                (self._bids if is_buy else self._asks).add(order)
                self._orders[oid] = order
                return events
            return self._close_taker(events, order, CloseReason.IOC_REMAINDER)

        # market
        cap = c.locked if is_buy else _NO_FUNDS_CAP
        if tif == _FOK and not self._can_fill(order, opp, _NO_LIMIT, cap):
            return self._close_taker(events, order, CloseReason.FOK_NOT_FILLED)
        exhausted = self._match(order, opp, _NO_LIMIT, cap, events, ts)
        if order.executed == amount:
            return self._close_taker(events, order, _FILLED)
        return self._close_taker(
            events, order, CloseReason.FUNDS_EXHAUSTED if exhausted else CloseReason.MARKET_REMAINDER
        )

    def _cancel(self, c: CancelOrder) -> list[EngineEvent]:
        oid = c.order_id
        order = self._orders.get(oid)
        if order is None or order.member_id != c.member_id or c.market != self._symbol:
            return [self._reject_missing(c, "cancel")]
        # inline BookSide.remove
        side = self._bids if order.is_buy else self._asks
        key = order.key
        level = side.levels[key]
        del level[oid]
        if not level:
            del side.levels[key]
            keys = side.keys
            if keys[0] == key:
                del keys[0]
            else:
                del keys[bisect_left(keys, key)]
        del self._orders[oid]
        self._remember(oid)
        return [
            OrderClosed(
                order_id=oid,
                member_id=order.member_id,
                market=self._symbol,
                status=_CANCELLED,
                reason=CloseReason.CANCELLED,
                executed=order.executed,
                funds_spent=order.funds,
            )
        ]

    def _amend(self, c: AmendOrder, ts: int) -> list[EngineEvent]:
        oid = c.order_id
        order = self._orders.get(oid)
        if order is None or order.member_id != c.member_id or c.market != self._symbol:
            return [self._reject_missing(c, "amend")]
        price = c.price
        amount = c.amount
        old_price = order.price
        if price is None:
            # only an amend without a price can break the rule: a move with one pays no call
            if amend_shape_error(new_price=False, new_amount=amount is not None) is not None:
                return [self._reject(c, RejectReason.AMEND_INVALID, "amend")]
            price = old_price
        elif not 0 < price <= self._max_price:
            return [self._reject(c, RejectReason.AMEND_INVALID, "amend")]
        if amount is None:
            amount = order.amount
        elif amount <= order.executed or not self._min_amount <= amount <= self._max_amount:
            return [self._reject(c, RejectReason.AMEND_INVALID, "amend")]

        if price == old_price and amount <= order.amount:
            order.amount = amount
            return [
                OrderAmended(
                    order_id=oid,
                    member_id=order.member_id,
                    market=self._symbol,
                    price=price,
                    amount=amount,
                    remaining=amount - order.executed,  # type: ignore[arg-type]
                    priority_kept=True,
                )
            ]

        # cancel-replace: leave the level, maybe trade, then rest at the back of the new level
        if order.is_buy:
            own = self._bids
            opp = self._asks
            new_key = -price
            limit_key: int = price
        else:
            own = self._asks
            opp = self._bids
            new_key = price
            limit_key = -price
        opp_keys = opp.keys
        crosses = bool(opp_keys) and opp_keys[0] <= limit_key
        if crosses and order.post_only:
            return [self._reject(c, RejectReason.POST_ONLY_WOULD_TRADE, "amend")]

        levels = own.levels
        keys = own.keys
        key = order.key
        level = levels[key]
        del level[oid]
        if not level:
            del levels[key]
            if keys[0] == key:
                del keys[0]
            else:
                del keys[bisect_left(keys, key)]
        order.price = price
        order.key = new_key
        order.amount = amount
        events: list[EngineEvent] = [
            OrderAmended(
                order_id=oid,
                member_id=order.member_id,
                market=self._symbol,
                price=price,
                amount=amount,
                remaining=amount - order.executed,  # type: ignore[arg-type]
                priority_kept=False,
            )
        ]
        if crosses:
            self._match(order, opp, limit_key, _NO_FUNDS_CAP, events, ts)
            if order.executed == amount:
                del self._orders[oid]
                return self._close_taker(events, order, _FILLED)

        # inline BookSide.add
        level = levels.get(new_key)  # type: ignore[assignment]
        if level is None:
            level = levels[new_key] = {}
            if not keys or new_key < keys[0]:
                keys.insert(0, new_key)
            else:
                insort(keys, new_key)
        level[oid] = order
        return events

    # ------------------------------------------------------------------ matching

    def _match(
        self,
        taker: RestingOrder,
        opp: BookSide,
        limit_key: int,
        funds_cap: int,
        events: list[EngineEvent],
        ts: int,
    ) -> bool:
        """Trade `taker` against `opp` while its best key is <= `limit_key`.

        `funds_cap` >= 0 bounds the quote units the taker may spend (market buy). Returns True
        when the funds cap stopped the taker before its amount or the book ran out.

        The arithmetic is on plain ints; the values events carry are typed by annotation with a
        `type: ignore`, not by `cast` or a NewType call: either is a Python call per fill
        (about 40 and 60 ns), several per fill, a measurable share of the engine's time.
        """
        keys = opp.keys
        levels = opp.levels
        orders = self._orders
        symbol = self._symbol
        ff = self._funds_factor
        append = events.append
        t_id = taker.order_id
        t_member = taker.member_id
        t_side = taker.side
        t_amount = taker.amount
        t_exec = taker.executed
        t_funds: int = taker.funds
        trade_id = self._next_trade_id
        exhausted = False
        while keys:
            key = keys[0]
            if key > limit_key:
                break
            level = levels[key]
            while level:
                maker = next(iter(level.values()))
                m_id = maker.order_id
                m_member = maker.member_id
                if m_member == t_member:
                    del level[m_id]
                    del orders[m_id]
                    self._remember(m_id)
                    append(
                        OrderClosed(
                            order_id=m_id,
                            member_id=m_member,
                            market=symbol,
                            status=_CLOSED,
                            reason=CloseReason.SELF_TRADE,
                            executed=maker.executed,
                            funds_spent=maker.funds,
                        )
                    )
                    continue
                price = maker.price
                qty = t_amount - t_exec
                m_rem = maker.amount - maker.executed
                if m_rem < qty:
                    qty = m_rem
                if funds_cap >= 0:
                    afford = (funds_cap - t_funds) // (price * ff)
                    if afford < qty:
                        exhausted = True
                        qty = afford
                        if not qty:
                            break
                funds: QuoteUnits = price * qty * ff  # type: ignore[assignment]
                t_exec = t_exec + qty  # type: ignore[assignment]
                t_funds += funds
                m_exec: Amount = maker.executed + qty  # type: ignore[assignment]
                maker.executed = m_exec
                m_funds: QuoteUnits = maker.funds + funds  # type: ignore[assignment]
                maker.funds = m_funds
                append(
                    Trade(
                        trade_id=trade_id,  # type: ignore[arg-type]
                        market=symbol,
                        price=price,
                        amount=qty,  # type: ignore[arg-type]
                        funds=funds,
                        maker_order_id=m_id,
                        maker_member_id=m_member,
                        taker_order_id=t_id,
                        taker_member_id=t_member,
                        taker_side=t_side,
                        ts=ts,
                    )
                )
                trade_id += 1
                m_rem = m_rem - qty
                append(
                    OrderUpdated(
                        order_id=m_id,
                        member_id=m_member,
                        market=symbol,
                        executed=m_exec,
                        remaining=m_rem,  # type: ignore[arg-type]
                        status=_PARTIAL if m_rem else _EXECUTED,
                    )
                )
                t_rem: Amount = t_amount - t_exec  # type: ignore[assignment]
                append(
                    OrderUpdated(
                        order_id=t_id,
                        member_id=t_member,
                        market=symbol,
                        executed=t_exec,
                        remaining=t_rem,
                        status=_PARTIAL if t_rem else _EXECUTED,
                    )
                )
                if not m_rem:
                    del level[m_id]
                    del orders[m_id]
                    self._remember(m_id)
                    append(
                        OrderClosed(
                            order_id=m_id,
                            member_id=m_member,
                            market=symbol,
                            status=_EXECUTED,
                            reason=_FILLED,
                            executed=m_exec,
                            funds_spent=m_funds,
                        )
                    )
                if not t_rem or exhausted:
                    break
            if not level:
                del levels[key]
                del keys[0]
            if t_exec == t_amount or exhausted:
                break
        taker.executed = t_exec
        taker.funds = t_funds  # type: ignore[assignment]
        self._next_trade_id = trade_id
        return exhausted

    def _can_fill(self, taker: RestingOrder, opp: BookSide, limit_key: int, funds_cap: int) -> bool:
        """Could `taker` fill its whole remaining amount now (other members' orders only)?"""
        need = taker.amount - taker.executed
        funds_left = funds_cap
        member = taker.member_id
        ff = self._funds_factor
        levels = opp.levels
        for key in opp.keys:
            if key > limit_key:
                break
            for maker in levels[key].values():
                if maker.member_id == member:
                    continue
                qty = maker.amount - maker.executed
                if qty > need:
                    qty = need
                if funds_cap >= 0:
                    unit = maker.price * ff
                    if funds_left // unit < qty:
                        return False
                    funds_left -= qty * unit
                need -= qty
                if not need:
                    return True
        return False

    # ------------------------------------------------------------------ helpers

    def _close_taker(
        self, events: list[EngineEvent], order: RestingOrder, reason: CloseReason
    ) -> list[EngineEvent]:
        """Append the final OrderClosed of an order that is not (or no longer) in the book."""
        self._remember(order.order_id)
        events.append(
            OrderClosed(
                order_id=order.order_id,
                member_id=order.member_id,
                market=self._symbol,
                status=_EXECUTED if reason is _FILLED else _CLOSED,
                reason=reason,
                executed=order.executed,
                funds_spent=order.funds,
            )
        )
        return events

    def _remember(self, order_id: OrderId) -> None:
        capacity = self._recent_capacity
        if not capacity:
            return
        recent = self._recent
        recent.append(order_id)
        self._recent_set.add(order_id)
        if len(recent) > capacity:
            self._recent_set.discard(recent.popleft())

    def _reject(
        self, c: PlaceOrder | CancelOrder | AmendOrder, reason: RejectReason, command: str
    ) -> OrderRejected:
        return OrderRejected(
            order_id=c.order_id,
            member_id=c.member_id,
            market=c.market,
            reason=reason,
            command=command,
        )

    def _reject_missing(self, c: CancelOrder | AmendOrder, command: str) -> OrderRejected:
        if c.market != self._symbol:
            reason = RejectReason.UNKNOWN_MARKET
        elif c.order_id in self._recent_set:
            reason = RejectReason.ORDER_CLOSED
        else:
            reason = RejectReason.UNKNOWN_ORDER
        return self._reject(c, reason, command)

    # ------------------------------------------------------------------ queries

    @property
    def market(self) -> Market:
        return self._market

    @property
    def next_trade_id(self) -> TradeId:
        """The id the next trade will get."""
        return TradeId(self._next_trade_id)

    def best_bid(self) -> Price | None:
        return self._bids.best_price()

    def best_ask(self) -> Price | None:
        return self._asks.best_price()

    def depth(self, limit: int) -> tuple[list[tuple[Price, Amount]], list[tuple[Price, Amount]]]:
        """Aggregated levels, best first: (bids, asks), each a list of (price, remaining amount)."""
        return self._bids.depth(limit), self._asks.depth(limit)

    def open_order_count(self) -> int:
        return len(self._orders)

    def open_order(self, order_id: OrderId) -> OpenOrder | None:
        order = self._orders.get(order_id)
        return None if order is None else self._view(order)

    def open_orders(self) -> Iterator[OpenOrder]:
        """Every open order in priority order: bids best first, then asks best first."""
        for side in (self._bids, self._asks):
            for order in side.orders():
                yield self._view(order)

    def is_crossed(self) -> bool:
        return self._book.is_crossed()

    def _view(self, order: RestingOrder) -> OpenOrder:
        return OpenOrder(
            order_id=order.order_id,
            member_id=order.member_id,
            market=self._symbol,
            side=order.side,
            price=order.price,
            amount=order.amount,
            executed=order.executed,
            remaining=order.remaining,
            funds=order.funds,
            status=order.status,
            post_only=order.post_only,
            created_at=order.created_at,
            received_at=order.received_at,
            client_order_id=order.client_order_id,
        )

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        """The whole state as msgpack bytes (deterministic for a given state)."""

        def dump(side: BookSide) -> list[_OrderState]:
            return [
                _OrderState(
                    order_id=o.order_id,
                    member_id=o.member_id,
                    side=o.side,
                    price=o.price,
                    amount=o.amount,
                    executed=o.executed,
                    funds=o.funds,
                    post_only=o.post_only,
                    created_at=o.created_at,
                    received_at=o.received_at,
                    client_order_id=o.client_order_id,
                )
                for o in side.orders()
            ]

        state = _EngineState(
            version=SNAPSHOT_VERSION,
            market=self._symbol,
            next_trade_id=TradeId(self._next_trade_id),
            recent_ids_capacity=self._recent_capacity,
            recent_ids=list(self._recent),
            bids=dump(self._bids),
            asks=dump(self._asks),
        )
        return _state_encoder.encode(state)

    @classmethod
    def restore(cls, market: Market, data: bytes) -> MatchingEngine:
        """Rebuild an engine from `snapshot()` bytes taken for the same market."""
        state = _state_decoder.decode(data)
        if state.version != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported snapshot version {state.version}")
        if state.market != market.symbol:
            raise ValueError(f"snapshot is for market {state.market!r}, not {market.symbol!r}")
        engine = cls(market, recent_ids=state.recent_ids_capacity)
        engine._next_trade_id = state.next_trade_id
        engine._recent.extend(state.recent_ids)
        engine._recent_set.update(state.recent_ids)
        for expected_side, orders in ((_BUY, state.bids), (_SELL, state.asks)):
            for s in orders:
                if s.side != expected_side:
                    raise ValueError(f"order {s.order_id} is on the wrong side of the snapshot")
                engine._book.add(
                    RestingOrder(
                        s.order_id,
                        s.member_id,
                        s.side,
                        s.price,
                        s.amount,
                        s.executed,
                        s.funds,
                        s.post_only,
                        s.created_at,
                        s.received_at,
                        s.client_order_id,
                    )
                )
        return engine

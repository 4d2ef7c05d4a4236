"""The accounts stage: lock funds before matching, settle and unlock after it.

Deterministic, single writer per shard (members are sharded; a shard sees every order of its
members). Order flow, see the design brief::

    command -> Accounts.place/amend/cancel -> (forwarded command | OrderRejected)
    forwarded command -> MatchingEngine -> events -> Accounts.apply -> list[BalanceChanged]

Locks (what `PlaceOrder.locked` carries to the engine):

- sell (limit or market): `market.base_units(amount)` of the base currency;
- limit buy (any TIF, post_only too): `market.funds(price, amount)` of the quote currency;
- market buy: the member's whole available quote balance, bounded by `funds(max_price, amount)`
  (the most `amount` can ever cost) and by the market's cap in `market_buy_caps` if one is
  configured. The engine never spends more than `locked` for it; what it did not spend is released
  when the order closes. While a market buy runs, the member cannot use that quote balance for
  anything else (later orders may be rejected for insufficient funds): the cap limits this.

After a fill, a limit buy that traded below its limit price keeps only `funds(price, remaining)`
locked and gets the difference back at once. An amend that needs more (higher buy price, larger
amount) locks the difference before it is forwarded; surplus is released when the engine confirms
(`OrderAmended`) or refuses (`OrderRejected` for "amend"). While an amend is in flight no surplus
is released, so the lock always covers what the engine may still spend, whatever the order of
the amend and the fills.

Trades are settled with maker/taker fees (`FeeSchedule`, parts per million, rounded down; see
`bourse.domain.ledger.fee_for`): the buyer pays the fee in base, the seller in quote, the exchange
account receives them. A trade whose other side belongs to another shard is settled as a half
trade against the ledger's clearing account. Events about orders this shard does not track are
ignored (they belong to another shard). Trade ids increase per market (the engine's contract):
a Trade whose id is not above the highest one applied for its market is a redelivery and is
ignored, so a trade is never settled twice. Likewise an amend answer (`OrderAmended`, or
`OrderRejected` for "amend") for an order with no amend in flight is ignored, and events of
orders already closed find nothing to change. (Exactly-once application is still the runtime's
job, by input sequence: a redelivered amend answer while another amend of the same order is in
flight cannot be told apart.)

`apply` takes the matching engine's events only, never the `OrderRejected`s this class returns
itself (those changed nothing; fed back, a rejected duplicate place would release the original
order's lock, and a rejected amend would count as the answer to another amend in flight). A
place rejected by the engine releases the command's whole lock, unless the engine had accepted
that order id already (then the rejection is of a later duplicate, not of the tracked order).

Outputs besides the forwarded commands: `BalanceChanged` for every balance touched (coalesced,
values as they are now; `apply` returns them and `take_changes` returns those of `place`, `amend`,
`deposit`, `withdraw`), and, if `record_entries`, the ledger entries (`take_entries`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from types import MappingProxyType
from typing import cast

import msgspec
from msgspec.structs import replace

from bourse.domain.ledger import (
    EXCHANGE_MEMBER,
    PPM,
    InsufficientFundsError,
    Ledger,
    LedgerEntry,
    LedgerError,
    LedgerState,
)
from bourse.domain.money import Market
from bourse.domain.order_shape import amend_shape_error, place_shape_error
from bourse.domain.orders import (
    AmendOrder,
    CancelOrder,
    EngineCommand,
    EngineEvent,
    OrderAccepted,
    OrderAmended,
    OrderClosed,
    OrderRejected,
    OrderType,
    OrderUpdated,
    PlaceOrder,
    RejectReason,
    Side,
    Trade,
)
from bourse.domain.values import Amount, MemberId, OrderId, Price, TradeId

__all__ = [
    "Accounts",
    "AccountsSnapshot",
    "BalanceChanged",
    "FeeSchedule",
    "LockExceededError",
    "OrderLock",
    "UnknownCurrencyError",
]


class BalanceChanged(msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="balance"):
    """A member's (or the exchange's, member_id 0) balance of one currency, as it is now."""

    member_id: MemberId
    currency: str
    available: int
    locked: int


class FeeSchedule(msgspec.Struct, frozen=True):
    """Maker and taker fee rates in parts per million (1_000 = 0.1 %), with per-market overrides
    as {symbol: (maker_ppm, taker_ppm)}. Each rate must be within 0..1_000_000."""

    maker_ppm: int = 0
    taker_ppm: int = 0
    markets: dict[str, tuple[int, int]] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        rates = [self.maker_ppm, self.taker_ppm]
        for maker, taker in self.markets.values():
            rates += (maker, taker)
        for rate in rates:
            if not 0 <= rate <= PPM:
                raise ValueError(f"fee rate must be between 0 and {PPM} ppm, got {rate!r}")

    def rates(self, market: str) -> tuple[int, int]:
        """(maker_ppm, taker_ppm) for a market."""
        override = self.markets.get(market)
        return (self.maker_ppm, self.taker_ppm) if override is None else override


class OrderLock(msgspec.Struct, frozen=True, array_like=True):
    """What the accounts stage tracks for an open order."""

    order_id: OrderId
    member_id: MemberId
    market: str
    side: Side
    type: OrderType
    price: Price | None
    amount: Amount
    remaining: Amount
    """Amount not yet filled, as far as the events applied so far tell."""
    locked: int
    """Ledger units still locked for the order (quote for a buy, base for a sell)."""
    pending_amends: int
    """Amends forwarded to the engine and not answered yet."""
    accepted: bool
    """The engine's OrderAccepted has been applied (a later place rejection is not for it)."""


class AccountsSnapshot(msgspec.Struct, frozen=True, array_like=True):
    version: int
    ledger: LedgerState
    orders: list[OrderLock]
    """Sorted by order id."""
    closed: list[OrderId]
    """Recently closed order ids, oldest first (duplicate detection)."""
    last_trade_ids: list[tuple[str, TradeId]]
    """Highest trade id applied per market, by market."""


class LockExceededError(LedgerError):
    """A trade spends more than is locked for one of its orders: the engine and the accounts
    stage disagree. Nothing was changed; this is a bug, not a member's mistake."""

    def __init__(self, order_id: OrderId, spent: int, locked: int) -> None:
        super().__init__(f"order {order_id}: trade spends {spent}, only {locked} locked for it")
        self.order_id = order_id
        self.spent = spent
        self.locked = locked


class UnknownCurrencyError(LedgerError, ValueError):
    def __init__(self, currency: str) -> None:
        super().__init__(f"unknown currency {currency!r}")
        self.currency = currency


_SNAPSHOT_VERSION = 1
_BUY = Side.BUY
_SELL = Side.SELL
_LIMIT = OrderType.LIMIT
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AccountsSnapshot)


class _Order:
    """Mutable lock tracking of one open order."""

    __slots__ = (
        "accepted",
        "amount",
        "currency",
        "is_buy",
        "locked",
        "market",
        "member",
        "mk",
        "pending",
        "price",
        "remaining",
    )

    def __init__(
        self,
        member: MemberId,
        market: str,
        mk: Market,
        is_buy: bool,
        price: Price | None,
        amount: Amount,
        remaining: Amount,
        locked: int,
        pending: int,
        accepted: bool,
    ) -> None:
        self.member = member
        self.market = market
        self.mk = mk
        self.is_buy = is_buy
        self.currency = mk.quote.code if is_buy else mk.base.code
        self.price = price
        """None for a market order."""
        self.amount = amount
        self.remaining = remaining
        self.locked = locked
        self.pending = pending
        self.accepted = accepted

    def need(self) -> int:
        """What the order may still spend, for a limit order with no amend in flight."""
        if self.is_buy:
            assert self.price is not None
            return self.mk.funds(self.price, self.remaining)
        return self.mk.base_units(self.remaining)

    def view(self, order_id: OrderId) -> OrderLock:
        return OrderLock(
            order_id,
            self.member,
            self.market,
            Side.BUY if self.is_buy else Side.SELL,
            OrderType.MARKET if self.price is None else OrderType.LIMIT,
            self.price,
            self.amount,
            self.remaining,
            self.locked,
            self.pending,
            self.accepted,
        )


class Accounts:
    """Deterministic accounts stage of one member shard. See the module docstring.

    `markets` maps symbols to markets (the symbol of a command or event is the key); `fees` the
    fee rates; `market_buy_caps` optional per-market maxima (quote ledger units) of what a market
    buy locks; `max_open_orders_per_member` how many open orders (every order tracked, from its
    place to its close: market and IOC orders too while they run) a member may hold, a new one
    beyond refused as TOO_MANY_OPEN_ORDERS (None: no cap); `record_entries` keeps the ledger
    entries for `take_entries`; `closed_memory` how many closed order ids are remembered to
    reject a reused id as DUPLICATE_ORDER (ids of open orders always are).
    """

    __slots__ = (
        "_caps",
        "_closed",
        "_closed_ids",
        "_closed_memory",
        "_currencies",
        "_entries",
        "_fees",
        "_last_trade",
        "_ledger",
        "_markets",
        "_max_open",
        "_open",
        "_orders",
        "_rates",
        "_touched",
    )

    def __init__(
        self,
        markets: Mapping[str, Market],
        fees: FeeSchedule | None = None,
        *,
        market_buy_caps: Mapping[str, int] | None = None,
        max_open_orders_per_member: int | None = None,
        record_entries: bool = False,
        closed_memory: int = 100_000,
    ) -> None:
        self._markets = dict(markets)
        if max_open_orders_per_member is not None and max_open_orders_per_member < 1:
            raise ValueError(f"max_open_orders_per_member must be >= 1, got {max_open_orders_per_member!r}")
        self._max_open = max_open_orders_per_member
        self._fees = fees if fees is not None else FeeSchedule()
        self._rates = {symbol: self._fees.rates(symbol) for symbol in self._markets}
        caps = dict(market_buy_caps or {})
        for symbol, cap in caps.items():
            if symbol not in self._markets:
                raise ValueError(f"market buy cap for unknown market {symbol!r}")
            if cap <= 0:
                raise ValueError(f"market buy cap for {symbol!r} must be positive, got {cap!r}")
        self._caps = caps
        if closed_memory < 0:
            raise ValueError("closed_memory must be >= 0")
        self._closed_memory = closed_memory
        self._currencies: set[str] = set()
        for market in self._markets.values():
            self._currencies.add(market.base.code)
            self._currencies.add(market.quote.code)
        self._ledger = Ledger()
        self._orders: dict[OrderId, _Order] = {}
        self._open: dict[MemberId, int] = {}
        """Per member with any, how many of `_orders` are theirs."""
        self._last_trade: dict[str, TradeId] = {}
        self._closed: deque[OrderId] = deque()
        self._closed_ids: set[OrderId] = set()
        self._touched: dict[tuple[MemberId, str], None] = {}
        self._entries: list[LedgerEntry] | None = [] if record_entries else None

    # --- queries ---

    @property
    def ledger(self) -> Ledger:
        """The ledger (read it; change it only through this class)."""
        return self._ledger

    @property
    def fees(self) -> FeeSchedule:
        return self._fees

    @property
    def markets(self) -> Mapping[str, Market]:
        return MappingProxyType(self._markets)

    @property
    def currencies(self) -> frozenset[str]:
        """Codes of every currency of the markets (the only ones that can be deposited)."""
        return frozenset(self._currencies)

    def balance(self, member_id: MemberId, currency: str) -> BalanceChanged:
        available, locked = self._ledger.balance(member_id, currency)
        return BalanceChanged(member_id, currency, available, locked)

    def order_lock(self, order_id: OrderId) -> OrderLock | None:
        order = self._orders.get(order_id)
        return None if order is None else order.view(order_id)

    def open_orders(self) -> list[OrderLock]:
        """Every tracked open order, by order id."""
        return [self._orders[oid].view(oid) for oid in sorted(self._orders)]

    def open_order_count(self, member_id: MemberId) -> int:
        """How many open orders the member holds (what `max_open_orders_per_member` caps)."""
        return self._open.get(member_id, 0)

    # --- outputs ---

    def take_changes(self) -> list[BalanceChanged]:
        """A `BalanceChanged` for every balance touched since the last call (or `apply`), in the
        order first touched, with the values it has now."""
        touched = self._touched
        if not touched:
            return []
        rows = self._ledger._balances  # every touched balance exists: it was just changed
        out = []
        for key in touched:
            row = rows[key]
            out.append(BalanceChanged(key[0], key[1], row[0], row[1]))
        touched.clear()
        return out

    def take_entries(self) -> list[LedgerEntry]:
        """Ledger entries recorded since the last call (empty unless `record_entries`)."""
        entries = self._entries
        if not entries:
            return []
        self._entries = []
        return entries

    # --- deposits and withdrawals ---

    def deposit(self, member_id: MemberId, currency: str, amount: int, ref_id: int) -> None:
        """Credit a member. Raises `UnknownCurrencyError` or `InvalidAmountError` (nothing changed)."""
        self._check_member_currency(member_id, currency)
        self._ledger.deposit(member_id, currency, amount, ref_id, self._entries)
        self._touched[(member_id, currency)] = None

    def withdraw(self, member_id: MemberId, currency: str, amount: int, ref_id: int) -> None:
        """Debit a member's available balance. Raises `InsufficientFundsError`, `UnknownCurrencyError` or
        `InvalidAmountError` (nothing changed)."""
        self._check_member_currency(member_id, currency)
        self._ledger.withdraw(member_id, currency, amount, ref_id, self._entries)
        self._touched[(member_id, currency)] = None

    def _check_member_currency(self, member_id: int, currency: str) -> None:
        if currency not in self._currencies:
            raise UnknownCurrencyError(currency)
        if member_id <= 0:
            raise ValueError(f"member ids are positive, got {member_id!r}")

    # --- commands (before matching) ---

    def submit(self, cmd: EngineCommand) -> EngineCommand | OrderRejected:
        """`place`, `amend` or `cancel`, whichever the command is."""
        if isinstance(cmd, PlaceOrder):
            return self.place(cmd)
        if isinstance(cmd, AmendOrder):
            return self.amend(cmd)
        return self.cancel(cmd)

    def place(self, cmd: PlaceOrder) -> PlaceOrder | OrderRejected:
        """Lock the funds of a new order and return it with `locked` set, to forward to matching;
        or an `OrderRejected` (UNKNOWN_MARKET, DUPLICATE_ORDER, INSUFFICIENT_FUNDS; INVALID_ORDER for
        a member id below 1, an amount or price outside the market's limits or a shape
        `bourse.domain.order_shape` refuses; NOTIONAL_TOO_SMALL for a limit order worth less than
        the market's `min_notional`; TOO_MANY_OPEN_ORDERS for a member at the cap) and nothing
        changed."""
        market = self._markets.get(cmd.market)
        if market is None:
            return _reject(cmd, RejectReason.UNKNOWN_MARKET, "place")
        order_id = cmd.order_id
        if order_id in self._orders or order_id in self._closed_ids:
            return _reject(cmd, RejectReason.DUPLICATE_ORDER, "place")
        member = cmd.member_id
        amount = cmd.amount
        price = cmd.price
        shape = place_shape_error(
            cmd.side, cmd.type, cmd.tif, priced=price is not None, post_only=cmd.post_only
        )
        if (
            member <= 0
            or not market.min_amount <= amount <= market.max_amount
            or shape is not None
            or (price is not None and not 0 < price <= market.max_price)
        ):
            return _reject(cmd, RejectReason.INVALID_ORDER, "place")
        if price is not None and market.below_min_notional(price, amount):
            return _reject(cmd, RejectReason.NOTIONAL_TOO_SMALL, "place")
        max_open = self._max_open
        if max_open is not None and self._open.get(member, 0) >= max_open:
            return _reject(cmd, RejectReason.TOO_MANY_OPEN_ORDERS, "place")
        is_buy = cmd.side == _BUY
        lock: int  # ledger units: quote for a buy, base for a sell
        if price is not None:  # a limit order: the shape rule holds
            if is_buy:
                currency = market.quote.code
                lock = market.funds(price, amount)
            else:
                currency = market.base.code
                lock = market.base_units(amount)
        else:  # a market order
            if is_buy:
                currency = market.quote.code
                lock = min(self._ledger.available(member, currency), market.funds(market.max_price, amount))
                cap = self._caps.get(cmd.market)
                if cap is not None and cap < lock:
                    lock = cap
                if lock <= 0:
                    return _reject(cmd, RejectReason.INSUFFICIENT_FUNDS, "place")
            else:
                currency = market.base.code
                lock = market.base_units(amount)
        try:
            self._ledger.lock(member, currency, lock, order_id, self._entries)
        except InsufficientFundsError:
            return _reject(cmd, RejectReason.INSUFFICIENT_FUNDS, "place")
        self._orders[order_id] = _Order(
            member, cmd.market, market, is_buy, price, amount, amount, lock, 0, False
        )
        self._open[member] = self._open.get(member, 0) + 1
        self._touched[(member, currency)] = None
        return replace(cmd, locked=lock)

    def amend(self, cmd: AmendOrder) -> AmendOrder | OrderRejected:
        """Forward an amend, having first locked what the new price/amount needs beyond the
        current lock; or reject it (UNKNOWN_ORDER, AMEND_INVALID, NOTIONAL_TOO_SMALL for a new price
        x total amount below the market's `min_notional`, INSUFFICIENT_FUNDS) with nothing
        changed. Surplus is released when the engine's answer comes back through `apply`."""
        order = self._orders.get(cmd.order_id)
        if order is None or order.member != cmd.member_id or order.market != cmd.market:
            return _reject(cmd, RejectReason.UNKNOWN_ORDER, "amend")
        market = order.mk
        old_price = order.price
        if old_price is None:
            # a market order never rests: the engine will refuse it (ORDER_CLOSED or UNKNOWN_ORDER)
            order.pending += 1
            return cmd
        if amend_shape_error(new_price=cmd.price is not None, new_amount=cmd.amount is not None) is not None:
            return _reject(cmd, RejectReason.AMEND_INVALID, "amend")
        price = old_price if cmd.price is None else cmd.price
        amount = order.amount if cmd.amount is None else cmd.amount
        remaining = Amount(amount - (order.amount - order.remaining))
        if (
            not 0 < price <= market.max_price
            or not market.min_amount <= amount <= market.max_amount
            or remaining <= 0
        ):
            return _reject(cmd, RejectReason.AMEND_INVALID, "amend")
        if market.below_min_notional(price, amount):
            return _reject(cmd, RejectReason.NOTIONAL_TOO_SMALL, "amend")
        need = market.funds(price, remaining) if order.is_buy else market.base_units(remaining)
        extra = need - order.locked
        if extra > 0:
            try:
                self._ledger.lock(order.member, order.currency, extra, cmd.order_id, self._entries)
            except InsufficientFundsError:
                return _reject(cmd, RejectReason.INSUFFICIENT_FUNDS, "amend")
            order.locked += extra
            self._touched[(order.member, order.currency)] = None
        order.pending += 1
        return cmd

    def cancel(self, cmd: CancelOrder) -> CancelOrder | OrderRejected:
        """Forward a cancel of a known order of the member; UNKNOWN_ORDER otherwise."""
        order = self._orders.get(cmd.order_id)
        if order is None or order.member != cmd.member_id or order.market != cmd.market:
            return _reject(cmd, RejectReason.UNKNOWN_ORDER, "cancel")
        return cmd

    # --- events (after matching) ---

    def apply(self, event: EngineEvent) -> list[BalanceChanged]:
        """Consume one event of the matching engine; returns the balances changed (see
        `take_changes`)."""
        kind = type(event)
        if kind is OrderUpdated:  # nothing to do: the Trade before it carried the numbers
            return self.take_changes()
        if kind is Trade:
            self._trade(cast(Trade, event))
            return self.take_changes()
        event = cast("OrderAccepted | OrderRejected | OrderAmended | OrderClosed", event)
        order = self._orders.get(event.order_id)
        if order is None or order.member != event.member_id:
            return self.take_changes()
        if isinstance(event, OrderClosed):
            self._forget(event.order_id, order)
        elif isinstance(event, OrderAccepted):
            order.accepted = True
        elif isinstance(event, OrderAmended):
            if not order.pending:
                return self.take_changes()  # no amend in flight: a redelivered event
            order.price = event.price
            order.amount = event.amount
            order.remaining = event.remaining
            self._amend_done(event.order_id, order)
        elif isinstance(event, OrderRejected) and order.market == event.market:
            if event.command == "place":
                if not order.accepted:
                    self._forget(event.order_id, order)
            elif event.command == "amend" and order.pending:
                self._amend_done(event.order_id, order)
        return self.take_changes()

    def _trade(self, trade: Trade) -> None:
        last = self._last_trade
        if trade.trade_id <= last.get(trade.market, 0):
            return  # settled already: a redelivered event must not settle twice
        orders = self._orders
        maker = orders.get(trade.maker_order_id)
        taker = orders.get(trade.taker_order_id)
        if maker is not None:
            mk = maker.mk
        elif taker is not None:
            mk = taker.mk
        else:
            return
        base = mk.base.code
        quote = mk.quote.code
        base_amount = mk.base_units(trade.amount)
        funds = trade.funds
        maker_ppm, taker_ppm = self._rates[trade.market]
        if trade.taker_side == _BUY:
            buy, sell, buy_ppm, sell_ppm = taker, maker, taker_ppm, maker_ppm
            buy_id, sell_id = trade.taker_order_id, trade.maker_order_id
        else:
            buy, sell, buy_ppm, sell_ppm = maker, taker, maker_ppm, taker_ppm
            buy_id, sell_id = trade.maker_order_id, trade.taker_order_id
        if buy is not None and buy.locked < funds:
            raise LockExceededError(buy_id, funds, buy.locked)
        if sell is not None and sell.locked < base_amount:
            raise LockExceededError(sell_id, base_amount, sell.locked)
        ledger = self._ledger
        entries = self._entries
        touched = self._touched
        if buy is not None and sell is not None:
            buy_fee, sell_fee = ledger.settle_trade(
                trade.trade_id,
                base,
                quote,
                buy.member,
                sell.member,
                base_amount,
                funds,
                buy_ppm,
                sell_ppm,
                entries,
            )
        elif buy is not None:
            buy_fee = ledger.settle_buy(
                trade.trade_id, base, quote, buy.member, base_amount, funds, buy_ppm, entries
            )
            sell_fee = 0
        else:
            assert sell is not None
            sell_fee = ledger.settle_sell(
                trade.trade_id, base, quote, sell.member, base_amount, funds, sell_ppm, entries
            )
            buy_fee = 0
        last[trade.market] = trade.trade_id
        if buy is not None:
            touched[(buy.member, quote)] = None
            touched[(buy.member, base)] = None
            buy.locked -= funds
            buy.remaining = Amount(buy.remaining - trade.amount)
            if buy.price is not None and not buy.pending:
                surplus = buy.locked - mk.funds(buy.price, buy.remaining)
                if surplus > 0:
                    ledger.unlock(buy.member, quote, surplus, buy_id, entries)
                    buy.locked -= surplus
        if sell is not None:
            touched[(sell.member, base)] = None
            touched[(sell.member, quote)] = None
            sell.locked -= base_amount
            sell.remaining = Amount(sell.remaining - trade.amount)
        if buy_fee:
            touched[(EXCHANGE_MEMBER, base)] = None
        if sell_fee:
            touched[(EXCHANGE_MEMBER, quote)] = None

    def _amend_done(self, order_id: OrderId, order: _Order) -> None:
        order.pending -= 1
        if order.pending or order.price is None:
            return
        surplus = order.locked - order.need()
        if surplus > 0:
            self._ledger.unlock(order.member, order.currency, surplus, order_id, self._entries)
            order.locked -= surplus
            self._touched[(order.member, order.currency)] = None

    def _forget(self, order_id: OrderId, order: _Order) -> None:
        del self._orders[order_id]
        self._count_closed(order.member)
        if order.locked:
            self._ledger.unlock(order.member, order.currency, order.locked, order_id, self._entries)
            self._touched[(order.member, order.currency)] = None
        self._remember_closed(order_id)

    def _count_closed(self, member: MemberId) -> None:
        left = self._open[member] - 1
        if left:
            self._open[member] = left
        else:
            del self._open[member]

    def _remember_closed(self, order_id: OrderId) -> None:
        if not self._closed_memory:
            return
        closed = self._closed
        if len(closed) >= self._closed_memory:
            self._closed_ids.discard(closed.popleft())
        closed.append(order_id)
        self._closed_ids.add(order_id)

    # --- snapshot ---

    def snapshot(self) -> bytes:
        """The whole state (not the untaken outputs), canonical: equal states give equal bytes."""
        state = AccountsSnapshot(
            version=_SNAPSHOT_VERSION,
            ledger=self._ledger.dump(),
            orders=self.open_orders(),
            closed=list(self._closed),
            last_trade_ids=sorted(self._last_trade.items()),
        )
        return _encoder.encode(state)

    @classmethod
    def restore(
        cls,
        markets: Mapping[str, Market],
        fees: FeeSchedule | None,
        data: bytes,
        *,
        market_buy_caps: Mapping[str, int] | None = None,
        max_open_orders_per_member: int | None = None,
        record_entries: bool = False,
        closed_memory: int = 100_000,
    ) -> Accounts:
        """An `Accounts` in the state `snapshot()` returned, with this configuration."""
        state = _decoder.decode(data)
        if state.version != _SNAPSHOT_VERSION:
            raise ValueError(f"unsupported accounts snapshot version {state.version}")
        accounts = cls(
            markets,
            fees,
            market_buy_caps=market_buy_caps,
            max_open_orders_per_member=max_open_orders_per_member,
            record_entries=record_entries,
            closed_memory=closed_memory,
        )
        accounts._ledger = Ledger.load(state.ledger)
        for lock in state.orders:
            market = accounts._markets.get(lock.market)
            if market is None:
                raise ValueError(f"snapshot has an order in unknown market {lock.market!r}")
            accounts._orders[lock.order_id] = _Order(
                lock.member_id,
                lock.market,
                market,
                lock.side == _BUY,
                lock.price if lock.type == _LIMIT else None,
                lock.amount,
                lock.remaining,
                lock.locked,
                lock.pending_amends,
                lock.accepted,
            )
            accounts._open[lock.member_id] = accounts._open.get(lock.member_id, 0) + 1
        for order_id in state.closed:
            accounts._remember_closed(order_id)
        accounts._last_trade = dict(state.last_trade_ids)
        return accounts


def _reject(cmd: EngineCommand, reason: RejectReason, command: str) -> OrderRejected:
    return OrderRejected(cmd.order_id, cmd.member_id, cmd.market, reason, command)

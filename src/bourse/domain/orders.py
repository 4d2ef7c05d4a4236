"""Order vocabulary shared by the engine, the ledger and every service.

Commands go into a stage, events come out of it. All quantities are integers scaled by the
market's precision (see `bourse.domain.money`), typed as `bourse.domain.values` says (`Price`,
`Amount`, `QuoteUnits`, the ids); nothing here is ever a float.

These are `msgspec.Struct`s: immutable value types with no I/O, cheap to create on the hot
path and encodable as they are, so the engine's output is already the wire contract.
"""

from __future__ import annotations

import re
from enum import StrEnum

import msgspec

from bourse.domain.values import Amount, MemberId, OrderId, Price, QuoteUnits, TradeId


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    LIMIT = "limit"
    MARKET = "market"


class TimeInForce(StrEnum):
    GTC = "gtc"
    """Good till cancelled: the unfilled part of a limit order rests in the book."""
    IOC = "ioc"
    """Immediate or cancel: fill what can be filled now, close the rest."""
    FOK = "fok"
    """Fill or kill: fill the whole amount now or do nothing and close."""


class OrderStatus(StrEnum):
    SUBMITTED = "submitted"
    """New: accepted, funds locked, nothing filled yet."""
    PARTIALLY_FILLED = "partially_filled"
    EXECUTED = "executed"
    """Fully filled."""
    CANCELLED = "cancelled"
    """Ended by the member."""
    CLOSED = "closed"
    """Ended otherwise: market/IOC remainder, FOK not filled, self-trade prevention, rejected."""


FINAL_STATUSES = frozenset({OrderStatus.EXECUTED, OrderStatus.CANCELLED, OrderStatus.CLOSED})


CLIENT_ORDER_ID_MAX = 64
CLIENT_ORDER_ID_PATTERN = r"^[A-Za-z0-9_\-.:]+$"
"""The client-order-id rule, the one place it is written: 1..64 of A-Z a-z 0-9 _ - . : (the
REST schema, the wire contracts and the RabbitMQ message id all use it)."""
_CLIENT_ORDER_ID = re.compile(CLIENT_ORDER_ID_PATTERN)


def is_client_order_id(text: str) -> bool:
    return len(text) <= CLIENT_ORDER_ID_MAX and _CLIENT_ORDER_ID.match(text) is not None


class RejectReason(StrEnum):
    INSUFFICIENT_FUNDS = "insufficient_funds"
    UNKNOWN_MARKET = "unknown_market"
    UNKNOWN_ORDER = "unknown_order"
    DUPLICATE_ORDER = "duplicate_order"
    INVALID_ORDER = "invalid_order"
    POST_ONLY_WOULD_TRADE = "post_only_would_trade"
    FOK_NOT_FILLED = "fok_not_filled"
    NO_LIQUIDITY = "no_liquidity"
    ORDER_CLOSED = "order_closed"
    AMEND_INVALID = "amend_invalid"
    CLIENT_ORDER_ID_TAKEN = "client_order_id_taken"
    """A place whose (member, client_order_id) an earlier order holds: this new order id is
    refused and recorded as such (unlike DUPLICATE_ORDER, a reused order id, which names an
    order that exists); the decision names the first order."""
    NOTIONAL_TOO_SMALL = "notional_too_small"
    """A limit order (or an amend of one) worth less than its market's `min_notional`, price x
    amount: the gateway refuses a new one before it is stored; the accounts stage refuses an amend
    that would take an order below it (and a place that got past the gateway)."""
    TOO_MANY_OPEN_ORDERS = "too_many_open_orders"
    """A new order of a member who holds `max_open_orders_per_member` open orders already (every
    order the accounts stage tracks until it closes); a cancel or a fill frees a place."""
    EXPIRED = "expired"
    """The command reached its stream after the deadline its sender gave it: the sender has
    stopped waiting (and may have told its client so), so it must not take effect."""


class CloseReason(StrEnum):
    FILLED = "filled"
    CANCELLED = "cancelled"
    IOC_REMAINDER = "ioc_remainder"
    MARKET_REMAINDER = "market_remainder"
    FOK_NOT_FILLED = "fok_not_filled"
    POST_ONLY_WOULD_TRADE = "post_only_would_trade"
    SELF_TRADE = "self_trade"
    FUNDS_EXHAUSTED = "funds_exhausted"
    REJECTED = "rejected"


# --- commands (input of the matching engine; the accounts stage has already locked funds) ---


class PlaceOrder(msgspec.Struct, frozen=True, tag_field="kind", tag="place"):
    order_id: OrderId
    member_id: MemberId
    market: str
    side: Side
    type: OrderType
    amount: Amount
    """Base amount, scaled by the market's amount precision."""
    price: Price | None = None
    """Limit price scaled by the market's price precision; None for market orders."""
    tif: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    locked: int = 0
    """Funds the accounts stage locked for this order (quote units for a buy, base units for a sell).
    A market buy never spends more quote than this."""
    created_at: int = 0
    """Nanoseconds since the epoch, stamped by the gateway."""
    client_order_id: str | None = None


class CancelOrder(msgspec.Struct, frozen=True, tag_field="kind", tag="cancel"):
    order_id: OrderId
    member_id: MemberId
    market: str


class AmendOrder(msgspec.Struct, frozen=True, tag_field="kind", tag="amend"):
    """Change price and/or total amount of a resting order.

    Decreasing the amount only keeps time priority; any other change loses it
    (cancel-replace done atomically)."""

    order_id: OrderId
    member_id: MemberId
    market: str
    price: Price | None = None
    amount: Amount | None = None
    """New total amount (executed part included); must stay above the executed amount."""


EngineCommand = PlaceOrder | CancelOrder | AmendOrder


def command_kind(command: EngineCommand) -> str:
    """ "place", "cancel" or "amend": the command's msgspec tag, the name replies use."""
    tag = type(command).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


# --- events (output of the matching engine) ---


class OrderAccepted(msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="accepted"):
    order_id: OrderId
    member_id: MemberId
    market: str
    side: Side
    type: OrderType
    amount: Amount
    price: Price | None
    tif: TimeInForce
    post_only: bool
    created_at: int
    received_at: int
    """Nanoseconds since the epoch when the engine received the command (taken from the input
    stream, so a replay stamps the same value)."""
    client_order_id: str | None = None


class OrderRejected(msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="rejected"):
    order_id: OrderId
    member_id: MemberId
    market: str
    reason: RejectReason
    command: str
    """Which command was rejected: "place", "cancel" or "amend". A rejected cancel or amend
    leaves the order as it was."""


class Trade(msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="trade"):
    trade_id: TradeId
    market: str
    price: Price
    amount: Amount
    """Base amount, in market amount scale."""
    funds: QuoteUnits
    """Quote amount, in units of the quote currency (price * amount, rescaled; exact)."""
    maker_order_id: OrderId
    maker_member_id: MemberId
    taker_order_id: OrderId
    taker_member_id: MemberId
    taker_side: Side
    ts: int


class OrderUpdated(msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="updated"):
    """A fill happened: the order's executed amount changed (and it is still open or now final)."""

    order_id: OrderId
    member_id: MemberId
    market: str
    executed: Amount
    remaining: Amount
    status: OrderStatus


class OrderAmended(msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="amended"):
    order_id: OrderId
    member_id: MemberId
    market: str
    price: Price
    amount: Amount
    remaining: Amount
    priority_kept: bool


class OrderClosed(msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="closed"):
    """The order left the book for good. `status` says how: executed, cancelled or closed."""

    order_id: OrderId
    member_id: MemberId
    market: str
    status: OrderStatus
    reason: CloseReason
    executed: Amount
    funds_spent: QuoteUnits = QuoteUnits(0)
    """Quote units the order exchanged over its life (spent by a buy, received by a sell)."""


EngineEvent = OrderAccepted | OrderRejected | Trade | OrderUpdated | OrderAmended | OrderClosed

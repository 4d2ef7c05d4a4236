"""Response and request bodies of the REST API. Money is a decimal string, never a float."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from bourse.application.catalog import MarketFees
from bourse.domain.money import Market, format_scaled
from bourse.domain.orders import (
    CLIENT_ORDER_ID_MAX,
    CLIENT_ORDER_ID_PATTERN,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)


class MarketOut(BaseModel):
    id: str = Field(examples=["btc_usd"])
    base_unit: str
    quote_unit: str
    amount_precision: int
    price_precision: int
    min_amount: str = Field(examples=["0.0001"])
    max_amount: str
    max_price: str
    min_notional: str = Field(
        description="Smallest value of a limit order, price x amount, in the quote currency "
        "(0: none); below it an order is refused (422 `notional_too_small`)",
        examples=["1.00000000"],
    )
    maker_fee: str = Field(
        description="Fraction of the amount received, as a decimal string", examples=["0.001"]
    )
    taker_fee: str

    @classmethod
    def of(cls, market: Market, fees: MarketFees) -> MarketOut:
        return cls(
            id=market.symbol,
            base_unit=market.base.code,
            quote_unit=market.quote.code,
            amount_precision=market.amount_precision,
            price_precision=market.price_precision,
            min_amount=market.format_amount(market.min_amount),
            max_amount=market.format_amount(market.max_amount),
            max_price=market.format_price(market.max_price),
            min_notional=market.format_funds(market.min_notional),
            maker_fee=format_scaled(fees.maker_ppm, 6),
            taker_fee=format_scaled(fees.taker_ppm, 6),
        )


class Problem(BaseModel):
    """An error (RFC 9457). `code` is stable; `detail` is for people."""

    type: str
    title: str
    status: int
    code: str
    detail: str


ClientOrderId = Annotated[
    str, StringConstraints(min_length=1, max_length=CLIENT_ORDER_ID_MAX, pattern=CLIENT_ORDER_ID_PATTERN)
]
DecimalString = Annotated[str, StringConstraints(min_length=1, max_length=40)]


class OrderIn(BaseModel):
    """A new order. `price` is required for limit orders and refused for market orders;
    `post_only` is for gtc limit orders only."""

    # That shape is `bourse.domain.order_shape`'s rule, checked by `place_command` with its codes
    # (price_required, price_not_allowed, invalid_order), as for the RabbitMQ ingress: not here,
    # where a refusal would be a plain schema error.

    model_config = ConfigDict(extra="forbid")

    market: str = Field(examples=["btc_usd"])
    side: Side
    type: OrderType = OrderType.LIMIT
    amount: DecimalString = Field(description="Base amount, a decimal string", examples=["0.25"])
    price: DecimalString | None = Field(default=None, examples=["65000.00"])
    time_in_force: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    client_order_id: ClientOrderId | None = None


class AmendIn(BaseModel):
    """New price and/or new total amount. Decreasing the amount only keeps time priority."""

    model_config = ConfigDict(extra="forbid")

    price: DecimalString | None = None
    amount: DecimalString | None = None


class OrderOut(BaseModel):
    id: str = Field(description="64-bit order id, as a string so JavaScript clients keep every digit")
    client_order_id: str | None = None
    member_id: int
    market: str
    side: Side
    type: OrderType
    price: str | None
    amount: str
    executed: str
    remaining: str
    status: OrderStatus
    time_in_force: TimeInForce
    post_only: bool
    created_at: str | None = None
    reason: str | None = Field(default=None, description="Why the order was closed or rejected, if it was")


class PendingOut(BaseModel):
    """A command that is durable (or may be) but not processed yet: the truth while a stage is
    behind or down. Ask again after `Retry-After` seconds."""

    id: str = Field(description="The order's id")
    command: Literal["place", "cancel", "amend"]
    status: Literal["pending"] = "pending"
    order_status: OrderStatus | None = Field(
        default=None, description="Where the engine left the order, when that much is known"
    )
    detail: str


class DepthOut(BaseModel):
    market: str = Field(examples=["btc_usd"])
    bids: list[tuple[str, str]] = Field(
        description="[price, amount], best (highest) first", examples=[[["64990.00", "0.250000"]]]
    )
    asks: list[tuple[str, str]] = Field(
        description="[price, amount], best (lowest) first", examples=[[["65010.00", "0.100000"]]]
    )
    last_price: str | None = Field(default=None, examples=["65000.00"])
    sequence: int = Field(
        description="The market's last engine input sequence these levels include (0: none yet)",
        examples=[1842],
    )


class TradeOut(BaseModel):
    id: int
    market: str
    price: str
    amount: str
    funds: str = Field(description="Quote amount: price x amount")
    taker_side: Side
    created_at: str


class MemberTradeOut(BaseModel):
    id: int
    market: str
    order_id: str
    side: Side
    role: str = Field(description='"maker" or "taker"')
    price: str
    amount: str
    funds: str
    created_at: str


class BalanceOut(BaseModel):
    currency: str
    available: str
    locked: str


class TickerOut(BaseModel):
    """A market's rolling 24 hours, minute by minute (the window opens on a UTC minute, 23h59m
    before the minute of `close_time`). Prices are null before the market's first trade."""

    market: str = Field(examples=["btc_usd"])
    open_time: str | None = Field(
        description="ISO-8601 UTC: the window's first minute; null before the first event",
        examples=["2024-03-10T12:01:00.000000Z"],
    )
    open_time_ms: int | None = Field(description="open_time in ms since the epoch", examples=[1710072060000])
    close_time: str | None = Field(
        description="ISO-8601 UTC: the newest engine time seen (stream time, not a clock)",
        examples=["2024-03-11T12:00:41.250000Z"],
    )
    close_time_ms: int | None = Field(examples=[1710158441250])
    open: str | None = Field(description="The window's first trade price", examples=["64000.00"])
    high: str | None = Field(examples=["65500.00"])
    low: str | None = Field(examples=["63800.00"])
    last: str | None = Field(
        description="The market's latest trade price, even when older than the window",
        examples=["64800.00"],
    )
    volume: str = Field(description="Base amount traded in the window", examples=["12.500000"])
    quote_volume: str = Field(description="Quote amount traded in the window", examples=["805000.00000000"])
    change: str = Field(description="last - open (negative when the price fell)", examples=["800.00"])
    change_percent: str = Field(description="change / open, percent with two decimals", examples=["1.25"])
    trades: int = Field(description="Trades in the window", examples=[318])
    best_bid: str | None = Field(examples=["64790.00"])
    best_ask: str | None = Field(examples=["64810.00"])
    sequence: int = Field(description="The last EVENTS batch sequence of the market applied", examples=[1842])


class KlineOut(BaseModel):
    """One interval of a period. An interval without trades is open = high = low = close = the
    previous close, zero volume and trades."""

    open_time: str = Field(
        description="ISO-8601 UTC, aligned to the period", examples=["2024-03-11T12:00:00.000000Z"]
    )
    open_time_ms: int = Field(
        description="open_time in ms since the epoch: the next page starts after the last one",
        examples=[1710158400000],
    )
    close_time: str = Field(
        description="ISO-8601 UTC: the interval's last millisecond", examples=["2024-03-11T12:00:59.999000Z"]
    )
    close_time_ms: int = Field(examples=[1710158459999])
    open: str = Field(examples=["64800.00"])
    high: str = Field(examples=["64850.00"])
    low: str = Field(examples=["64790.00"])
    close: str = Field(examples=["64810.00"])
    volume: str = Field(description="Base amount traded", examples=["0.420000"])
    quote_volume: str = Field(description="Quote amount traded", examples=["27218.40000000"])
    trades: int = Field(examples=[7])

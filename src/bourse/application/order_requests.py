"""An order request as a person or a system writes it (decimal strings, a market symbol) turned
into the engine command (integers on the market's grid), by the rules every way in shares.

The REST API and the RabbitMQ ingress both take the same body and must refuse the same things
with the same stable codes (`unknown_market`, the `MoneyError` codes, the shape codes of
`bourse.domain.order_shape`: `price_required`, `price_not_allowed`, `invalid_order`,
`amend_invalid`; `notional_too_small` for a limit order worth less than the market's
`min_notional`). No framework here: callers map an
`OrderRequestError` to their own refusal (a 422 problem, a dead-lettered message).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from bourse.application.catalog import Catalog
from bourse.domain.money import Market, MoneyError
from bourse.domain.order_shape import amend_shape_error, place_shape_error
from bourse.domain.orders import (
    AmendOrder,
    CancelOrder,
    OrderType,
    PlaceOrder,
    RejectReason,
    Side,
    TimeInForce,
)
from bourse.domain.values import Amount, MemberId, OrderId, Price

MAX_ORDER_ID = 2**63 - 1
"""Order ids are positive signed 64-bit integers."""


class OrderRequestError(ValueError):
    """A request the exchange refuses before anything changes. `code` is stable."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


def market_of(catalog: Catalog, symbol: str) -> Market:
    market = catalog.market(symbol)
    if market is None:
        raise OrderRequestError("unknown_market", f"no market {symbol!r}", "market")
    return market


_Scaled = TypeVar("_Scaled", bound=int)


def parse_money(parse: Callable[[str], _Scaled], text: str) -> _Scaled:
    """`Market.parse_price` / `parse_amount` with its `MoneyError` as an `OrderRequestError`."""
    try:
        return parse(text)
    except MoneyError as exc:
        raise OrderRequestError(exc.code, str(exc), exc.field) from exc


def parse_order_id(text: str | int) -> OrderId:
    """An order id as the API writes it (ASCII digits, 1..2**63-1), or an integer in that range."""
    if isinstance(text, int):
        value = text
    elif text.isascii() and text.isdigit() and len(text) <= 19:
        value = int(text)
    else:
        value = 0
    if not 0 < value <= MAX_ORDER_ID:
        raise OrderRequestError("invalid_order_id", f"{text!r} is not an order id", "order_id")
    return OrderId(value)


class OrderFields(Protocol):
    """What a place-order request says, whatever carried it (the REST body, a RabbitMQ message)."""

    @property
    def market(self) -> str: ...
    @property
    def side(self) -> Side: ...
    @property
    def type(self) -> OrderType: ...
    @property
    def amount(self) -> str: ...
    @property
    def price(self) -> str | None: ...
    @property
    def time_in_force(self) -> TimeInForce: ...
    @property
    def post_only(self) -> bool: ...


def place_command(
    catalog: Catalog,
    request: OrderFields,
    *,
    order_id: int,
    member_id: int,
    created_at: int,
    client_order_id: str | None,
) -> PlaceOrder:
    """The PlaceOrder for a checked request; the same checks and codes as `POST /order`: the
    market, the amount, the price on the market's grid, the order's shape
    (`bourse.domain.order_shape`), then a limit order's value (`check_notional`)."""
    book = market_of(catalog, request.market)
    scaled_amount = parse_money(book.parse_amount, request.amount)
    price, post_only = request.price, request.post_only
    scaled_price: Price | None = None
    if request.type is OrderType.LIMIT and price is not None:
        scaled_price = parse_money(book.parse_price, price)
    shape = place_shape_error(
        request.side, request.type, request.time_in_force, priced=price is not None, post_only=post_only
    )
    if shape is not None:
        raise OrderRequestError(shape.code, shape.message, shape.field)
    if scaled_price is not None:
        check_notional(book, scaled_price, scaled_amount)
    return PlaceOrder(
        order_id=OrderId(order_id),
        member_id=MemberId(member_id),
        market=book.symbol,
        side=request.side,
        type=request.type,
        amount=scaled_amount,
        price=scaled_price,
        tif=request.time_in_force,
        post_only=post_only,
        created_at=created_at,
        client_order_id=client_order_id,
    )


NOTIONAL_TOO_SMALL = RejectReason.NOTIONAL_TOO_SMALL.value
"""The code of a limit order worth less than its market's `min_notional`: the same here (before
anything is stored) as in the accounts stage's refusal of an amend (`RejectReason`)."""


def check_notional(market: Market, price: Price, amount: Amount) -> None:
    """A limit order's value, price x amount, is at least the market's `min_notional`; else an
    `OrderRequestError` (`notional_too_small`, no one field at fault). Market orders are not
    checked: they have no price before they match (`min_amount` bounds them, and what they do not
    fill is closed, never rests)."""
    if market.below_min_notional(price, amount):
        raise OrderRequestError(
            NOTIONAL_TOO_SMALL,
            f"price x amount {market.format_funds(market.funds(price, amount))} is below the market's "
            f"minimum order value {market.format_funds(market.min_notional)} {market.quote.code}",
        )


def check_amend(price: str | None, amount: str | None) -> None:
    """An amend request gives a new price, a new amount, or both (`amend_shape_error`); else an
    `OrderRequestError` with the rule's code and message. `amend_command` checks it first; the
    REST API also calls it before it looks the order up (an empty amend is refused whatever the
    order)."""
    shape = amend_shape_error(new_price=price is not None, new_amount=amount is not None)
    if shape is not None:
        raise OrderRequestError(shape.code, shape.message, shape.field)


def amend_command(
    catalog: Catalog, *, order_id: int, member_id: int, market: str, price: str | None, amount: str | None
) -> AmendOrder:
    """The AmendOrder for a new price and/or total amount (`check_amend`), on the grid of the
    order's market. Given both, the order's new value is checked here (`check_notional`); given
    one, the accounts stage checks it against the order it holds (`notional_too_small` too)."""
    check_amend(price, amount)
    book = market_of(catalog, market)
    scaled_price = parse_money(book.parse_price, price) if price is not None else None
    scaled_amount = parse_money(book.parse_amount, amount) if amount is not None else None
    if scaled_price is not None and scaled_amount is not None:
        check_notional(book, scaled_price, scaled_amount)
    return AmendOrder(
        order_id=OrderId(order_id),
        member_id=MemberId(member_id),
        market=book.symbol,
        price=scaled_price,
        amount=scaled_amount,
    )


def cancel_command(catalog: Catalog, *, order_id: int, member_id: int, market: str | None) -> CancelOrder:
    """A CancelOrder; without a market the accounts shard finds the order's own."""
    symbol = market_of(catalog, market).symbol if market else ""
    return CancelOrder(OrderId(order_id), MemberId(member_id), symbol)

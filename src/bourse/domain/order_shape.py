"""The shape of a new order and of an amend: which fields each takes, the one place it is written.

- the side is buy or sell, the type limit or market, the time in force gtc, ioc or fok;
- a limit order needs a price (`price_required`), a market order takes none (`price_not_allowed`);
- `post_only` applies to limit orders only, and only with time in force gtc (`invalid_order`);
- an amend gives a new price, a new amount, or both (`amend_invalid`).

`place_shape_error` says which of these a place-order breaks, or None; `amend_shape_error` the
same of an amend. Every way in asks them: `bourse.application.order_requests` (`place_command`,
`check_amend` and `amend_command`: the REST API and the RabbitMQ ingress, which refuse with the
error's code and message), and the accounts stage and the matching engine, whose defensive
re-checks reject any error as INVALID_ORDER (a place) or AMEND_INVALID (an amend). What depends
on the market (the amount and price within its limits, on its grid) is
`bourse.domain.money.Market`'s, and what depends on the order (an amount above what it executed)
the engine's, not this rule's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from bourse.domain.orders import OrderType, Side, TimeInForce

__all__ = [
    "AMEND_CHANGES_NOTHING",
    "ORDER_SHAPE_ERRORS",
    "POST_ONLY_NEEDS_GTC",
    "POST_ONLY_NEEDS_LIMIT",
    "PRICE_NOT_ALLOWED",
    "PRICE_REQUIRED",
    "UNKNOWN_SIDE",
    "UNKNOWN_TIME_IN_FORCE",
    "UNKNOWN_TYPE",
    "ShapeError",
    "amend_shape_error",
    "place_shape_error",
]


@dataclass(frozen=True, slots=True)
class ShapeError:
    """What is wrong with an order's shape: a stable `code`, a message for people, the field."""

    code: str
    message: str
    field: str | None
    """The field at fault; None when no one field is (an amend that changes nothing)."""


UNKNOWN_SIDE: Final = ShapeError("invalid_order", "side must be buy or sell", "side")
UNKNOWN_TYPE: Final = ShapeError("invalid_order", "type must be limit or market", "type")
UNKNOWN_TIME_IN_FORCE: Final = ShapeError(
    "invalid_order", "time_in_force must be gtc, ioc or fok", "time_in_force"
)
PRICE_REQUIRED: Final = ShapeError("price_required", "a limit order needs a price", "price")
PRICE_NOT_ALLOWED: Final = ShapeError("price_not_allowed", "a market order takes no price", "price")
POST_ONLY_NEEDS_LIMIT: Final = ShapeError("invalid_order", "post_only applies to limit orders", "post_only")
POST_ONLY_NEEDS_GTC: Final = ShapeError("invalid_order", "post_only requires time_in_force gtc", "post_only")
ORDER_SHAPE_ERRORS: Final = (
    UNKNOWN_SIDE,
    UNKNOWN_TYPE,
    UNKNOWN_TIME_IN_FORCE,
    PRICE_REQUIRED,
    PRICE_NOT_ALLOWED,
    POST_ONLY_NEEDS_LIMIT,
    POST_ONLY_NEEDS_GTC,
)
"""What `place_shape_error` may say."""
AMEND_CHANGES_NOTHING: Final = ShapeError("amend_invalid", "give a new price, a new amount, or both", None)

_SIDES: Final = frozenset(Side)
_TIFS: Final = frozenset(TimeInForce)
_LIMIT: Final = OrderType.LIMIT
_MARKET: Final = OrderType.MARKET
_GTC: Final = TimeInForce.GTC


def place_shape_error(
    side: Side, type: OrderType, tif: TimeInForce, *, priced: bool, post_only: bool
) -> ShapeError | None:
    """The rule of the module docstring a new order breaks (the first one found), or None.
    `priced`: the order carries a price (whatever its form: a decimal string, grid units).
    Values outside the enums (a command built by hand) are refused, not trusted."""
    if side not in _SIDES:
        return UNKNOWN_SIDE
    if tif not in _TIFS:
        return UNKNOWN_TIME_IN_FORCE
    if type == _LIMIT:
        if not priced:
            return PRICE_REQUIRED
    elif type == _MARKET:
        if priced:
            return PRICE_NOT_ALLOWED
        if post_only:
            return POST_ONLY_NEEDS_LIMIT
    else:
        return UNKNOWN_TYPE
    if post_only and tif != _GTC:
        return POST_ONLY_NEEDS_GTC
    return None


def amend_shape_error(*, new_price: bool, new_amount: bool) -> ShapeError | None:
    """`AMEND_CHANGES_NOTHING` for an amend that gives neither a new price nor a new amount (in
    whatever form: decimal strings, grid units), else None."""
    if new_price or new_amount:
        return None
    return AMEND_CHANGES_NOTHING

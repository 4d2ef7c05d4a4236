"""The shape of a new order: which fields an order of each type takes, the one place it is written.

- the side is buy or sell, the type limit or market, the time in force gtc, ioc or fok;
- a limit order needs a price (`price_required`), a market order takes none (`price_not_allowed`);
- `post_only` applies to limit orders only, and only with time in force gtc (`invalid_order`).

`place_shape_error` says which of these a place-order breaks, or None. Every way in asks it:
`bourse.application.order_requests.place_command` (the REST API and the RabbitMQ ingress, which
refuse with the error's code), and the accounts stage and the matching engine, whose defensive
re-checks reject any error as INVALID_ORDER. What depends on the market (the amount and price
within its limits, on its grid) is `bourse.domain.money.Market`'s, not this rule's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from bourse.domain.orders import OrderType, Side, TimeInForce

__all__ = [
    "ORDER_SHAPE_ERRORS",
    "POST_ONLY_NEEDS_GTC",
    "POST_ONLY_NEEDS_LIMIT",
    "PRICE_NOT_ALLOWED",
    "PRICE_REQUIRED",
    "UNKNOWN_SIDE",
    "UNKNOWN_TIME_IN_FORCE",
    "UNKNOWN_TYPE",
    "ShapeError",
    "place_shape_error",
]


@dataclass(frozen=True, slots=True)
class ShapeError:
    """What is wrong with an order's shape: a stable `code`, a message for people, the field."""

    code: str
    message: str
    field: str


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

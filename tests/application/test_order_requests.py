"""The request check the REST API and the RabbitMQ ingress share (`place_command`) refuses a bad
shape with the code, message and field of `bourse.domain.order_shape`, on the same table as the
engine and the accounts stage (tests/domain/test_order_shape.py); the market's own checks (the
market, the amount, the price on its grid) come first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from bourse.application.catalog import load_catalog
from bourse.application.order_requests import OrderRequestError, place_command
from bourse.domain.orders import OrderType, PlaceOrder, Side, TimeInForce
from tests.domain.test_order_shape import SHAPES

CATALOG = load_catalog()


@dataclass(frozen=True)
class Request:
    """What a REST body or a RabbitMQ message says (`order_requests.OrderFields`)."""

    side: Any
    type: Any
    time_in_force: Any
    price: str | None
    post_only: bool = False
    amount: str = "0.1"
    market: str = "btc_usd"


def place(request: Request) -> PlaceOrder:
    return place_command(CATALOG, request, order_id=1, member_id=7, created_at=0, client_order_id=None)


@pytest.mark.parametrize("case", list(SHAPES))
def test_a_request_is_refused_with_the_shape_rules_code_message_and_field(case: str) -> None:
    shape = SHAPES[case]
    request = Request(shape.side, shape.type, shape.tif, "40000" if shape.priced else None, shape.post_only)
    if shape.error is None:
        assert place(request).price == (4_000_000 if shape.priced else None)
        return
    with pytest.raises(OrderRequestError) as refused:
        place(request)
    assert (refused.value.code, refused.value.message, refused.value.field) == (
        shape.error.code,
        shape.error.message,
        shape.error.field,
    )


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (Request(Side.BUY, OrderType.LIMIT, TimeInForce.IOC, None, market="doge_usd"), "unknown_market"),
        (Request(Side.BUY, OrderType.LIMIT, TimeInForce.IOC, None, amount="0.1234567"), "too_precise"),
        (Request(Side.BUY, OrderType.LIMIT, TimeInForce.IOC, "40000.001", post_only=True), "too_precise"),
        (Request(Side.BUY, OrderType.LIMIT, TimeInForce.IOC, "0", post_only=True), "not_positive"),
    ],
    ids=["market_first", "amount_before_shape", "price_before_shape", "price_range_before_shape"],
)
def test_the_markets_own_checks_come_before_the_shape(request_: Request, code: str) -> None:
    with pytest.raises(OrderRequestError) as refused:
        place(request_)
    assert refused.value.code == code

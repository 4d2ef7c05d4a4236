"""The request checks the REST API and the RabbitMQ ingress share (`place_command`, `check_amend`
and `amend_command`) refuse a bad shape with the code, message and field of
`bourse.domain.order_shape`, on the same tables as the engine and the accounts stage
(tests/domain/test_order_shape.py); for a place the market's own checks (the market, the amount,
the price on its grid) come first, for an amend the shape comes first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from bourse.application.catalog import load_catalog
from bourse.application.order_requests import OrderRequestError, amend_command, check_amend, place_command
from bourse.domain.orders import AmendOrder, OrderType, PlaceOrder, Side, TimeInForce
from tests.domain.test_order_shape import AMENDS, SHAPES

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


def amend(price: str | None, amount: str | None, market: str = "btc_usd") -> AmendOrder:
    return amend_command(CATALOG, order_id=1, member_id=7, market=market, price=price, amount=amount)


@pytest.mark.parametrize("case", list(AMENDS))
def test_an_amend_request_is_refused_with_the_shape_rules_code_message_and_field(case: str) -> None:
    shape = AMENDS[case]
    price, amount = ("40000" if shape.new_price else None), ("0.2" if shape.new_amount else None)
    if shape.error is None:
        check_amend(price, amount)
        command = amend(price, amount)
        assert (command.price, command.amount) == (
            4_000_000 if shape.new_price else None,
            200_000 if shape.new_amount else None,
        )
        return
    for check in (lambda: check_amend(price, amount), lambda: amend(price, amount)):
        with pytest.raises(OrderRequestError) as refused:
            check()
        assert (refused.value.code, refused.value.message, refused.value.field) == (
            shape.error.code,
            shape.error.message,
            shape.error.field,
        )


@pytest.mark.parametrize(
    ("price", "amount", "market", "code"),
    [
        (None, None, "doge_usd", "amend_invalid"),
        ("40000", None, "doge_usd", "unknown_market"),
        ("40000.001", None, "btc_usd", "too_precise"),
        (None, "0.1234567", "btc_usd", "too_precise"),
    ],
    ids=["shape_before_market", "market", "price_on_the_grid", "amount_on_the_grid"],
)
def test_an_amend_is_checked_for_its_shape_then_its_market(
    price: str | None, amount: str | None, market: str, code: str
) -> None:
    with pytest.raises(OrderRequestError) as refused:
        amend(price, amount, market)
    assert refused.value.code == code

"""A new order's shape and an amend's (`bourse.domain.order_shape`), case by case, and the same
rule wherever an order is checked: the accounts stage and the matching engine reject exactly the
shapes the rule refuses (INVALID_ORDER, AMEND_INVALID) and accept every other one. (The request
check of the REST API and the RabbitMQ ingress: tests/application/test_order_requests.py, on the
same tables.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from bourse.domain.accounts import Accounts
from bourse.domain.matching import MatchingEngine
from bourse.domain.money import Currency, Market
from bourse.domain.order_shape import (
    AMEND_CHANGES_NOTHING,
    ORDER_SHAPE_ERRORS,
    POST_ONLY_NEEDS_GTC,
    POST_ONLY_NEEDS_LIMIT,
    PRICE_NOT_ALLOWED,
    PRICE_REQUIRED,
    UNKNOWN_SIDE,
    UNKNOWN_TIME_IN_FORCE,
    UNKNOWN_TYPE,
    ShapeError,
    amend_shape_error,
    place_shape_error,
)
from bourse.domain.orders import (
    AmendOrder,
    OrderAccepted,
    OrderAmended,
    OrderRejected,
    OrderType,
    PlaceOrder,
    RejectReason,
    Side,
    TimeInForce,
)

BUY, SELL = Side.BUY, Side.SELL
LIMIT, MARKET = OrderType.LIMIT, OrderType.MARKET
GTC, IOC, FOK = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK


@dataclass(frozen=True)
class Shape:
    side: Any
    type: Any
    tif: Any
    priced: bool
    post_only: bool = False
    error: ShapeError | None = None


SHAPES = {
    "limit_buy_gtc": Shape(BUY, LIMIT, GTC, priced=True),
    "limit_sell_ioc": Shape(SELL, LIMIT, IOC, priced=True),
    "limit_buy_fok": Shape(BUY, LIMIT, FOK, priced=True),
    "limit_post_only_gtc": Shape(SELL, LIMIT, GTC, priced=True, post_only=True),
    "market_buy_gtc": Shape(BUY, MARKET, GTC, priced=False),
    "market_sell_ioc": Shape(SELL, MARKET, IOC, priced=False),
    "market_buy_fok": Shape(BUY, MARKET, FOK, priced=False),
    "limit_without_price": Shape(BUY, LIMIT, GTC, priced=False, error=PRICE_REQUIRED),
    "limit_without_price_post_only_ioc": Shape(
        BUY, LIMIT, IOC, priced=False, post_only=True, error=PRICE_REQUIRED
    ),
    "market_with_price": Shape(SELL, MARKET, GTC, priced=True, error=PRICE_NOT_ALLOWED),
    "market_with_price_post_only": Shape(
        SELL, MARKET, GTC, priced=True, post_only=True, error=PRICE_NOT_ALLOWED
    ),
    "market_post_only": Shape(SELL, MARKET, GTC, priced=False, post_only=True, error=POST_ONLY_NEEDS_LIMIT),
    "post_only_ioc": Shape(BUY, LIMIT, IOC, priced=True, post_only=True, error=POST_ONLY_NEEDS_GTC),
    "post_only_fok": Shape(SELL, LIMIT, FOK, priced=True, post_only=True, error=POST_ONLY_NEEDS_GTC),
    "unknown_side": Shape("hold", LIMIT, GTC, priced=True, error=UNKNOWN_SIDE),
    "unknown_type": Shape(BUY, "stop", GTC, priced=True, error=UNKNOWN_TYPE),
    "unknown_time_in_force": Shape(BUY, LIMIT, "day", priced=True, error=UNKNOWN_TIME_IN_FORCE),
}
"""Every rule of `bourse.domain.order_shape` broken at least once, and shapes that break none."""

MARKET_SPEC = Market("BTC-USD", Currency("BTC", 8), Currency("USD", 8), amount_precision=4, price_precision=2)
MEMBER = 7


def shape_error(shape: Shape) -> ShapeError | None:
    return place_shape_error(
        shape.side, shape.type, shape.tif, priced=shape.priced, post_only=shape.post_only
    )


def command(shape: Shape) -> PlaceOrder:
    """A place of `shape` that breaks nothing else: an amount and a price well inside the market
    (built from a dict: a hand-made command may hold values outside the enums)."""
    fields: dict[str, Any] = {
        "order_id": 1,
        "member_id": MEMBER,
        "market": MARKET_SPEC.symbol,
        "side": shape.side,
        "type": shape.type,
        "amount": 5,
        "price": 100 if shape.priced else None,
        "tif": shape.tif,
        "post_only": shape.post_only,
        "locked": 10**12,
    }
    return PlaceOrder(**fields)


def test_the_table_breaks_every_rule() -> None:
    assert {shape.error for shape in SHAPES.values()} - {None} == set(ORDER_SHAPE_ERRORS)


@pytest.mark.parametrize("case", list(SHAPES))
def test_the_rule_names_what_a_shape_breaks(case: str) -> None:
    assert shape_error(SHAPES[case]) == SHAPES[case].error


@pytest.mark.parametrize("case", list(SHAPES))
def test_the_engine_rejects_exactly_what_the_rule_refuses(case: str) -> None:
    shape = SHAPES[case]
    events = MatchingEngine(MARKET_SPEC).process(command(shape), 1)
    if shape.error is None:
        assert isinstance(events[0], OrderAccepted), events
    else:
        assert len(events) == 1, events
        assert isinstance(events[0], OrderRejected)
        assert events[0].reason is RejectReason.INVALID_ORDER


@pytest.mark.parametrize("case", list(SHAPES))
def test_the_accounts_stage_rejects_exactly_what_the_rule_refuses(case: str) -> None:
    shape = SHAPES[case]
    place = command(shape)
    accounts = Accounts({MARKET_SPEC.symbol: MARKET_SPEC})
    accounts.deposit(place.member_id, "USD", 10**16, ref_id=1)
    accounts.deposit(place.member_id, "BTC", 10**12, ref_id=2)
    before = accounts.snapshot()
    answer = accounts.place(place)
    if shape.error is None:
        assert isinstance(answer, PlaceOrder), answer
        assert answer.locked > 0
    else:
        assert isinstance(answer, OrderRejected), answer
        assert answer.reason is RejectReason.INVALID_ORDER
        assert accounts.snapshot() == before


@dataclass(frozen=True)
class Amend:
    new_price: bool
    new_amount: bool
    error: ShapeError | None = None


AMENDS = {
    "new_price": Amend(new_price=True, new_amount=False),
    "new_amount": Amend(new_price=False, new_amount=True),
    "new_price_and_amount": Amend(new_price=True, new_amount=True),
    "nothing_new": Amend(new_price=False, new_amount=False, error=AMEND_CHANGES_NOTHING),
}
"""Every amend the rule tells apart: what it gives, and what the rule says of it."""


def amend_of(amend: Amend) -> AmendOrder:
    """An amend of the resting order `command(SHAPES["limit_buy_gtc"])` places (price 100, amount
    5): a new price and amount that break nothing else, where given."""
    fields: dict[str, Any] = {
        "order_id": 1,
        "member_id": MEMBER,
        "market": MARKET_SPEC.symbol,
        "price": 99 if amend.new_price else None,
        "amount": 6 if amend.new_amount else None,
    }
    return AmendOrder(**fields)


def test_an_amend_that_changes_nothing_names_no_field() -> None:
    assert AMEND_CHANGES_NOTHING.code == RejectReason.AMEND_INVALID.value  # the code every way in says
    assert AMEND_CHANGES_NOTHING.field is None


@pytest.mark.parametrize("case", list(AMENDS))
def test_the_rule_names_what_an_amend_breaks(case: str) -> None:
    amend = AMENDS[case]
    assert amend_shape_error(new_price=amend.new_price, new_amount=amend.new_amount) == amend.error


@pytest.mark.parametrize("case", list(AMENDS))
def test_the_engine_rejects_exactly_the_amends_the_rule_refuses(case: str) -> None:
    amend = AMENDS[case]
    engine = MatchingEngine(MARKET_SPEC)
    assert isinstance(engine.process(command(SHAPES["limit_buy_gtc"]), 1)[0], OrderAccepted)
    events = engine.process(amend_of(amend), 2)
    if amend.error is None:
        assert isinstance(events[0], OrderAmended), events
    else:
        assert len(events) == 1, events
        assert isinstance(events[0], OrderRejected)
        assert events[0].reason is RejectReason.AMEND_INVALID


@pytest.mark.parametrize("case", list(AMENDS))
def test_the_accounts_stage_rejects_exactly_the_amends_the_rule_refuses(case: str) -> None:
    amend = AMENDS[case]
    place = command(SHAPES["limit_buy_gtc"])
    accounts = Accounts({MARKET_SPEC.symbol: MARKET_SPEC})
    accounts.deposit(place.member_id, "USD", 10**16, ref_id=1)
    assert isinstance(accounts.place(place), PlaceOrder)
    before = accounts.snapshot()
    answer = accounts.amend(amend_of(amend))
    if amend.error is None:
        assert isinstance(answer, AmendOrder), answer
    else:
        assert isinstance(answer, OrderRejected), answer
        assert answer.reason is RejectReason.AMEND_INVALID
        assert accounts.snapshot() == before

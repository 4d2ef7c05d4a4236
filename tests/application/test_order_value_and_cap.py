"""The minimum order value and the cap on open orders where they are applied: the request rules
every way in shares (`place_command`, `amend_command`: refused before anything is stored), the
markets file that sets the minimum, and the accounts shard that caps a member's open orders and
answers and reports the refusal like any other decision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from bourse.application.accounts_stage import AccountsShard
from bourse.application.catalog import CatalogError, load_catalog, parse_catalog
from bourse.application.order_requests import OrderRequestError, amend_command, place_command
from bourse.config.settings import Settings
from bourse.contracts.messages import AccountsBatch, Deposit
from bourse.domain.orders import (
    CancelOrder,
    CloseReason,
    OrderClosed,
    OrderStatus,
    OrderType,
    PlaceOrder,
    RejectReason,
    Side,
    TimeInForce,
)
from bourse.domain.values import Amount, MemberId, OrderId

CATALOG = load_catalog()


@dataclass(frozen=True)
class Request:
    side: Any = Side.BUY
    type: Any = OrderType.LIMIT
    time_in_force: Any = TimeInForce.GTC
    price: str | None = "100"
    post_only: bool = False
    amount: str = "0.01"
    market: str = "btc_usd"


def place(request: Request) -> PlaceOrder:
    return place_command(CATALOG, request, order_id=1, member_id=7, created_at=0, client_order_id=None)


def test_the_default_markets_have_a_minimum_order_value_in_their_quote_currency() -> None:
    assert CATALOG.markets["btc_usd"].min_notional == CATALOG.currencies["usd"].parse("1")
    assert CATALOG.markets["eth_usd"].min_notional == CATALOG.currencies["usd"].parse("1")
    assert CATALOG.markets["eth_btc"].min_notional == CATALOG.currencies["btc"].parse("0.00001")


def raw_market(**extra: object) -> dict[str, Any]:
    return {
        "currencies": {"btc": {"precision": 8}, "usd": {"precision": 8}},
        "markets": {
            "btc_usd": {"base": "btc", "quote": "usd", "amount_precision": 6, "price_precision": 2, **extra}
        },
    }


def test_a_market_without_a_minimum_order_value_has_none() -> None:
    assert parse_catalog(raw_market()).markets["btc_usd"].min_notional == 0


@pytest.mark.parametrize("value", ["0", "-1", "0.000000001", "ten"])
def test_a_minimum_order_value_that_is_not_a_positive_quote_amount_is_refused(value: str) -> None:
    with pytest.raises(CatalogError, match=r"btc_usd.*min_notional"):
        parse_catalog(raw_market(min_notional=value))


@pytest.mark.parametrize(
    ("side", "tif", "price", "amount"),
    [
        (Side.BUY, TimeInForce.GTC, "99.99", "0.01"),  # 0.9999 usd
        (Side.SELL, TimeInForce.GTC, "0.01", "0.5"),
        (Side.BUY, TimeInForce.IOC, "1", "0.0001"),
        (Side.SELL, TimeInForce.FOK, "9999.99", "0.0001"),
    ],
)
def test_a_limit_order_worth_less_than_the_market_minimum_is_refused_before_it_is_stored(
    side: Side, tif: TimeInForce, price: str, amount: str
) -> None:
    with pytest.raises(OrderRequestError) as refused:
        place(Request(side=side, time_in_force=tif, price=price, amount=amount))
    assert refused.value.code == "notional_too_small"  # the reason the accounts stage gives an amend
    assert refused.value.field is None  # neither the price nor the amount alone is at fault
    assert "below the market's minimum order value 1.00000000 usd" in refused.value.message


def test_a_limit_order_worth_the_minimum_is_accepted() -> None:
    assert place(Request(price="100", amount="0.01")).amount == CATALOG.markets["btc_usd"].parse_amount(
        "0.01"
    )
    assert place(Request(market="eth_btc", price="0.01", amount="0.001")).market == "eth_btc"


def test_a_market_order_is_not_valued_only_its_amount_is_bounded() -> None:
    assert place(Request(type=OrderType.MARKET, price=None, amount="0.0001")).type is OrderType.MARKET


def test_the_markets_own_checks_and_the_shape_come_before_the_value() -> None:
    for request, code in [
        (Request(amount="0.00001"), "too_small"),
        (Request(price="0.001"), "too_precise"),
        (Request(price="1", post_only=True, time_in_force=TimeInForce.IOC), "invalid_order"),
    ]:
        with pytest.raises(OrderRequestError) as refused:
            place(request)
        assert refused.value.code == code


def test_an_amend_giving_price_and_amount_is_valued_before_it_is_stored() -> None:
    with pytest.raises(OrderRequestError) as refused:
        amend_command(CATALOG, order_id=1, member_id=7, market="btc_usd", price="10", amount="0.01")
    assert refused.value.code == "notional_too_small"
    amend = amend_command(CATALOG, order_id=1, member_id=7, market="btc_usd", price="100", amount="0.01")
    assert (amend.price, amend.amount) == (10_000, 10_000)


def test_an_amend_giving_one_of_them_is_left_to_the_accounts_stage_which_holds_the_order() -> None:
    amend = amend_command(CATALOG, order_id=1, member_id=7, market="btc_usd", price="0.01", amount=None)
    assert amend.price == 1


# --- the cap, in the accounts shard ---


def test_the_cap_on_open_orders_per_member_is_a_setting_of_1000_by_default() -> None:
    assert Settings().max_open_orders_per_member == 1000
    assert Settings(max_open_orders_per_member=5).max_open_orders_per_member == 5
    with pytest.raises(ValueError, match="max_open_orders_per_member"):
        Settings(max_open_orders_per_member=0)


def limit_buy(order_id: int, member: int = 1) -> PlaceOrder:
    return PlaceOrder(
        OrderId(order_id),
        MemberId(member),
        "btc_usd",
        Side.BUY,
        OrderType.LIMIT,
        Amount(10_000),  # 0.01 btc
        CATALOG.markets["btc_usd"].parse_price("100"),
    )


def shard_with_cap(cap: int) -> AccountsShard:
    shard = AccountsShard.empty(0, CATALOG, record_entries=True, max_open_orders_per_member=cap)
    deposits = [Deposit(MemberId(m), "usd", 10**15, f"seed:{m}") for m in (1, 2)]
    shard.process(1, AccountsBatch(list(deposits)))
    return shard


def test_a_shard_refuses_an_order_beyond_the_cap_as_a_decision_and_reports_it() -> None:
    shard = shard_with_cap(2)
    out = shard.process(
        2, AccountsBatch([limit_buy(10), limit_buy(11), limit_buy(12), limit_buy(20, 2)], "_INBOX.g")
    )
    assert [(d.order_id, d.accepted, d.reason) for d in out.decisions] == [
        (10, True, None),
        (11, True, None),
        (12, False, RejectReason.TOO_MANY_OPEN_ORDERS),
        (20, True, None),  # another member's order
    ]
    assert [command.order_id for command in out.match["btc_usd"]] == [10, 11, 20]
    assert out.report is not None
    assert [(r.order_id, r.reason, r.command) for r in out.report.rejected] == [
        (12, RejectReason.TOO_MANY_OPEN_ORDERS, "place")
    ]


def test_a_shard_keeps_its_cap_and_count_across_a_snapshot_and_frees_a_place_when_an_order_ends() -> None:
    shard = shard_with_cap(1)
    shard.process(2, AccountsBatch([limit_buy(10)]))
    restored = AccountsShard.restore(
        0, CATALOG, shard.snapshot(), record_entries=True, max_open_orders_per_member=1
    )
    out = restored.process(3, AccountsBatch([limit_buy(11)]))
    assert out.decisions[0].reason == RejectReason.TOO_MANY_OPEN_ORDERS
    restored.process(4, AccountsBatch([CancelOrder(OrderId(10), MemberId(1), "btc_usd")]))
    cancelled = OrderClosed(
        OrderId(10), MemberId(1), "btc_usd", OrderStatus.CANCELLED, CloseReason.CANCELLED, Amount(0)
    )
    restored.process(5, AccountsBatch([cancelled], origin=("matching", "btc_usd", 1)))
    assert restored.process(6, AccountsBatch([limit_buy(12)])).decisions[0].accepted

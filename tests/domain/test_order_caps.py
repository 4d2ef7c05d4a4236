"""What bounds the orders one member can hold: a minimum value per limit order (the market's
`min_notional`, price x amount) and a cap on open orders per member (the accounts stage's
`max_open_orders_per_member`). Both refuse with a stable reason and change nothing; a cancel or
a fill frees a place under the cap."""

from __future__ import annotations

import pytest

from bourse.domain.accounts import Accounts
from bourse.domain.money import Market
from bourse.domain.orders import (
    AmendOrder,
    CancelOrder,
    OrderAmended,
    OrderStatus,
    PlaceOrder,
    RejectReason,
    Side,
)
from bourse.domain.values import Amount, MemberId, OrderId, Price, QuoteUnits
from tests.domain.test_accounts import (
    ALICE,
    BOB,
    BTC,
    BTC_USD,
    ETH_USD,
    USD,
    closed,
    limit,
    market_order,
    placed,
    rejected,
    trade,
)

# BTC-USD with a minimum order value of 10 USD (USD ledger units are 0.0001)
TEN_USD = QuoteUnits(10_0000)


def market_min_10() -> Market:
    return Market(
        "BTC-USD",
        BTC,
        USD,
        amount_precision=2,
        price_precision=2,
        max_price=Price(10_000_000),
        min_notional=TEN_USD,
    )


def accounts_with(*, min_notional: bool = False, cap: int | None = None) -> Accounts:
    btc_usd = market_min_10() if min_notional else BTC_USD
    accounts = Accounts({"BTC-USD": btc_usd, "ETH-USD": ETH_USD}, max_open_orders_per_member=cap)
    accounts.deposit(ALICE, "USD", 1_000_000_000, ref_id=1)  # 100_000 USD
    accounts.deposit(BOB, "BTC", 10_000_000_000, ref_id=2)  # 100 BTC
    accounts.take_changes()
    return accounts


# --- the minimum order value ---


def test_a_market_values_a_limit_order_at_price_times_amount_against_its_minimum() -> None:
    market = market_min_10()
    assert market.below_min_notional(Price(9_99), Amount(1_00))  # 9.99 USD
    assert not market.below_min_notional(Price(10_00), Amount(1_00))  # exactly 10 USD
    assert not market.below_min_notional(Price(1_00), Amount(10_00))
    assert not BTC_USD.below_min_notional(Price(1), Amount(1))  # no minimum: 0.0001 USD is fine


def test_a_minimum_order_value_must_be_a_non_negative_number_of_quote_units() -> None:
    with pytest.raises(ValueError, match="min_notional"):
        Market("X", BTC, USD, amount_precision=2, price_precision=2, min_notional=QuoteUnits(-1))


def test_a_limit_order_below_the_minimum_value_is_refused_and_changes_nothing() -> None:
    accounts = accounts_with(min_notional=True)
    before = accounts.snapshot()
    buy = limit(1, ALICE, Side.BUY, price=9_99, amount=1_00)
    sell = limit(2, BOB, Side.SELL, price=1, amount=1_00)
    assert accounts.place(buy) == rejected(buy, RejectReason.NOTIONAL_TOO_SMALL, "place")
    assert accounts.place(sell) == rejected(sell, RejectReason.NOTIONAL_TOO_SMALL, "place")
    assert accounts.snapshot() == before
    assert accounts.take_changes() == []
    assert isinstance(accounts.place(limit(3, ALICE, Side.BUY, price=10_00, amount=1_00)), PlaceOrder)


def test_a_market_order_is_not_valued_it_is_bounded_by_the_minimum_amount() -> None:
    accounts = accounts_with(min_notional=True)
    assert isinstance(accounts.place(market_order(1, BOB, Side.SELL, amount=1)), PlaceOrder)
    assert isinstance(accounts.place(market_order(2, ALICE, Side.BUY, amount=1)), PlaceOrder)


@pytest.mark.parametrize(
    ("price", "amount"),
    [(1_00, None), (None, 50), (5_00, 1_00)],
    ids=["lower_price", "smaller_amount", "both"],
)
def test_an_amend_that_takes_an_order_below_the_minimum_value_is_refused_and_changes_nothing(
    price: int | None, amount: int | None
) -> None:
    accounts = accounts_with(min_notional=True)
    order = placed(accounts, limit(1, ALICE, Side.BUY, price=10_00, amount=1_00))  # 10 USD
    before = accounts.snapshot()
    amend = AmendOrder(
        order.order_id,
        ALICE,
        "BTC-USD",
        None if price is None else Price(price),
        None if amount is None else Amount(amount),
    )
    assert accounts.amend(amend) == rejected(amend, RejectReason.NOTIONAL_TOO_SMALL, "amend")
    assert accounts.snapshot() == before
    assert accounts.take_changes() == []


def test_an_amend_that_keeps_the_order_at_the_minimum_value_goes_on() -> None:
    accounts = accounts_with(min_notional=True)
    order = placed(accounts, limit(1, ALICE, Side.BUY, price=10_00, amount=2_00))  # 20 USD
    amend = AmendOrder(order.order_id, ALICE, "BTC-USD", Price(5_00), None)  # 10 USD
    assert accounts.amend(amend) == amend


def test_the_minimum_value_is_of_the_whole_order_not_of_what_is_left_after_fills() -> None:
    accounts = accounts_with(min_notional=True)
    maker = placed(accounts, limit(1, BOB, Side.SELL, price=10_00, amount=2_00))  # 20 USD
    taker = placed(accounts, limit(2, ALICE, Side.BUY, price=10_00, amount=1_50))
    accounts.apply(trade(1, 10_00, 1_50, maker, taker))  # 0.5 BTC (5 USD) of the sell rests
    amend = AmendOrder(maker.order_id, BOB, "BTC-USD", Price(9_00), None)  # 18 USD in all
    assert accounts.amend(amend) == amend


# --- the cap on open orders per member ---


def test_a_member_at_the_cap_is_refused_a_new_order_and_nothing_changes() -> None:
    accounts = accounts_with(cap=2)
    placed(accounts, limit(1, ALICE, Side.BUY, price=100_00, amount=1_00))
    assert isinstance(accounts.place(market_order(2, ALICE, Side.BUY, amount=1)), PlaceOrder)  # in flight
    assert accounts.open_order_count(ALICE) == 2
    accounts.take_changes()
    before = accounts.snapshot()
    for cmd in (
        limit(3, ALICE, Side.BUY, price=100_00, amount=1_00),
        limit(4, ALICE, Side.BUY, price=100_00, amount=1_00, market="ETH-USD"),
        market_order(5, ALICE, Side.BUY, amount=1),
    ):
        assert accounts.place(cmd) == rejected(cmd, RejectReason.TOO_MANY_OPEN_ORDERS, "place")
    assert accounts.snapshot() == before
    assert accounts.take_changes() == []
    assert accounts.open_order_count(ALICE) == 2


def test_the_cap_is_per_member() -> None:
    accounts = accounts_with(cap=1)
    placed(accounts, limit(1, ALICE, Side.BUY, price=100_00, amount=1_00))
    assert isinstance(accounts.place(limit(2, BOB, Side.SELL, price=200_00, amount=1_00)), PlaceOrder)
    assert (accounts.open_order_count(ALICE), accounts.open_order_count(BOB)) == (1, 1)


def test_orders_at_the_cap_can_still_be_cancelled_and_amended() -> None:
    accounts = accounts_with(cap=1)
    order = placed(accounts, limit(1, ALICE, Side.BUY, price=100_00, amount=1_00))
    amend = AmendOrder(order.order_id, ALICE, "BTC-USD", Price(90_00), None)
    assert accounts.amend(amend) == amend
    cancel = CancelOrder(order.order_id, ALICE, "BTC-USD")
    assert accounts.cancel(cancel) == cancel


@pytest.mark.parametrize("how", ["cancelled", "filled", "refused_by_the_engine"])
def test_an_order_that_ends_frees_its_place_under_the_cap(how: str) -> None:
    accounts = accounts_with(cap=1)
    first = limit(1, ALICE, Side.BUY, price=100_00, amount=1_00)
    if how == "refused_by_the_engine":
        accounts.place(first)
        accounts.apply(rejected(first, RejectReason.POST_ONLY_WOULD_TRADE, "place"))
    else:
        placed(accounts, first)
        if how == "filled":
            maker = placed(accounts, limit(9, BOB, Side.SELL, price=100_00, amount=1_00))
            accounts.apply(trade(1, 100_00, 1_00, maker, first))
        accounts.apply(closed(first, OrderStatus.CANCELLED if how == "cancelled" else OrderStatus.EXECUTED))
    assert accounts.open_order_count(ALICE) == 0
    assert isinstance(accounts.place(limit(2, ALICE, Side.BUY, price=100_00, amount=1_00)), PlaceOrder)


def test_a_refused_order_takes_no_place_under_the_cap() -> None:
    accounts = accounts_with(cap=1)
    too_dear = limit(1, ALICE, Side.BUY, price=1_000_000, amount=100_00)  # more than she has
    assert accounts.place(too_dear) == rejected(too_dear, RejectReason.INSUFFICIENT_FUNDS, "place")
    assert accounts.open_order_count(ALICE) == 0
    assert isinstance(accounts.place(limit(2, ALICE, Side.BUY, price=100_00, amount=1_00)), PlaceOrder)


def test_the_count_of_open_orders_survives_a_snapshot() -> None:
    accounts = accounts_with(cap=2)
    placed(accounts, limit(1, ALICE, Side.BUY, price=100_00, amount=1_00))
    placed(accounts, limit(2, ALICE, Side.BUY, price=100_00, amount=1_00))
    restored = Accounts.restore(accounts.markets, None, accounts.snapshot(), max_open_orders_per_member=2)
    assert restored.open_order_count(ALICE) == 2
    third = limit(3, ALICE, Side.BUY, price=100_00, amount=1_00)
    assert restored.place(third) == rejected(third, RejectReason.TOO_MANY_OPEN_ORDERS, "place")


def test_without_a_cap_a_member_may_hold_any_number_of_orders() -> None:
    accounts = accounts_with()
    for n in range(1, 51):
        assert isinstance(accounts.place(limit(n, ALICE, Side.BUY, price=1_00, amount=1)), PlaceOrder)
    assert accounts.open_order_count(ALICE) == 50


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_open_orders_per_member"):
        Accounts({}, max_open_orders_per_member=0)


def test_an_amend_answer_does_not_change_the_count() -> None:
    accounts = accounts_with(cap=1)
    order = placed(accounts, limit(1, ALICE, Side.BUY, price=100_00, amount=1_00))
    accounts.amend(AmendOrder(order.order_id, ALICE, "BTC-USD", Price(90_00), None))
    accounts.apply(
        OrderAmended(OrderId(1), MemberId(ALICE), "BTC-USD", Price(90_00), Amount(1_00), Amount(1_00), False)
    )
    assert accounts.open_order_count(ALICE) == 1

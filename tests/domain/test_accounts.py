"""The accounts stage, rule by rule: locks before matching, settlement and releases after it.

Events are written by hand here so that each rule is shown on its own; the property tests
(`test_accounts_properties.py`, `test_exchange_properties.py`) drive the real matching engine.
"""

from __future__ import annotations

import msgspec
import pytest

from bourse.domain.accounts import (
    Accounts,
    BalanceChanged,
    FeeSchedule,
    LockExceededError,
    OrderLock,
    UnknownCurrencyError,
)
from bourse.domain.ledger import EXCHANGE_MEMBER, Balance, InsufficientFundsError, InvalidAmountError
from bourse.domain.money import Currency, Market
from bourse.domain.orders import (
    AmendOrder,
    CancelOrder,
    CloseReason,
    OrderAccepted,
    OrderAmended,
    OrderClosed,
    OrderRejected,
    OrderStatus,
    OrderType,
    OrderUpdated,
    PlaceOrder,
    RejectReason,
    Side,
    TimeInForce,
    Trade,
)
from bourse.domain.values import Amount, MemberId, OrderId, Price, QuoteUnits, TradeId
from tests.domain.accounts_checks import assert_accounts_consistent, assert_entries_balance

BTC = Currency("BTC", 8)
USD = Currency("USD", 4)
ETH = Currency("ETH", 8)
# BTC-USD: amounts in 0.01 BTC (1 amount unit = 1_000_000 BTC units), prices in 0.01 USD,
# funds = price * amount USD units (0.0001 USD)
BTC_USD = Market("BTC-USD", BTC, USD, amount_precision=2, price_precision=2, max_price=Price(10_000_000))
# ETH-USD: amounts in 0.1 ETH, prices in 0.01 USD: funds = price * amount * 10
ETH_USD = Market("ETH-USD", ETH, USD, amount_precision=1, price_precision=2)
MARKETS = {m.symbol: m for m in (BTC_USD, ETH_USD)}
F = BTC_USD.funds
B = BTC_USD.base_units

ALICE_USD = 1_000_000_000  # 100_000 USD
BOB_BTC = 10_000_000_000  # 100 BTC
ALICE = MemberId(1)
BOB = MemberId(2)


def make(fees: FeeSchedule | None = None, **kwargs: object) -> Accounts:
    accounts = Accounts(MARKETS, fees, **kwargs)  # type: ignore[arg-type]
    accounts.deposit(ALICE, "USD", ALICE_USD, ref_id=1)
    accounts.deposit(BOB, "BTC", BOB_BTC, ref_id=2)
    accounts.take_changes()
    return accounts


def limit(
    order_id: int,
    member: int,
    side: Side,
    price: int,
    amount: int,
    market: str = "BTC-USD",
    tif: TimeInForce = TimeInForce.GTC,
    post_only: bool = False,
) -> PlaceOrder:
    return PlaceOrder(
        OrderId(order_id),
        MemberId(member),
        market,
        side,
        OrderType.LIMIT,
        Amount(amount),
        Price(price),
        tif,
        post_only,
    )


def market_order(order_id: int, member: int, side: Side, amount: int, market: str = "BTC-USD") -> PlaceOrder:
    return PlaceOrder(OrderId(order_id), MemberId(member), market, side, OrderType.MARKET, Amount(amount))


def placed(accounts: Accounts, cmd: PlaceOrder) -> PlaceOrder:
    forwarded = accounts.place(cmd)
    assert isinstance(forwarded, PlaceOrder), forwarded
    accounts.apply(
        OrderAccepted(
            cmd.order_id,
            cmd.member_id,
            cmd.market,
            cmd.side,
            cmd.type,
            cmd.amount,
            cmd.price,
            cmd.tif,
            cmd.post_only,
            0,
            0,
        )
    )
    return forwarded


def trade(
    trade_id: int,
    price: int,
    amount: int,
    maker: PlaceOrder,
    taker: PlaceOrder,
    market: Market = BTC_USD,
) -> Trade:
    return Trade(
        TradeId(trade_id),
        market.symbol,
        Price(price),
        Amount(amount),
        market.funds(Price(price), Amount(amount)),
        maker.order_id,
        maker.member_id,
        taker.order_id,
        taker.member_id,
        taker.side,
        0,
    )


def closed(cmd: PlaceOrder, status: OrderStatus = OrderStatus.CANCELLED) -> OrderClosed:
    reason = CloseReason.CANCELLED if status is OrderStatus.CANCELLED else CloseReason.FILLED
    return OrderClosed(cmd.order_id, cmd.member_id, cmd.market, status, reason, Amount(0))


def rejected(cmd: PlaceOrder | AmendOrder, reason: RejectReason, command: str) -> OrderRejected:
    return OrderRejected(cmd.order_id, cmd.member_id, cmd.market, reason, command)


def bal(accounts: Accounts, member: int, currency: str) -> Balance:
    return accounts.ledger.balance(member, currency)


# --- place: locks ---


def test_limit_buy_locks_price_times_amount_of_quote_and_forwards_the_lock() -> None:
    accounts = make()
    cmd = limit(10, ALICE, Side.BUY, price=3_000_00, amount=2_50)  # 2.5 BTC at 3000.00
    forwarded = accounts.place(cmd)
    assert forwarded == msgspec.structs.replace(cmd, locked=75_000_000)  # 7500.0000 USD
    assert bal(accounts, ALICE, "USD") == Balance(ALICE_USD - 75_000_000, 75_000_000)
    assert accounts.order_lock(OrderId(10)) == OrderLock(
        OrderId(10),
        ALICE,
        "BTC-USD",
        Side.BUY,
        OrderType.LIMIT,
        Price(3_000_00),
        Amount(2_50),
        Amount(2_50),
        75_000_000,
        0,
        False,
    )
    assert accounts.take_changes() == [BalanceChanged(ALICE, "USD", ALICE_USD - 75_000_000, 75_000_000)]
    assert_accounts_consistent(accounts)


def test_sell_locks_the_base_units_of_its_amount() -> None:
    accounts = make()
    forwarded = accounts.place(limit(11, BOB, Side.SELL, price=1, amount=1_23))
    assert isinstance(forwarded, PlaceOrder)
    assert forwarded.locked == 123_000_000  # 1.23 BTC
    assert bal(accounts, BOB, "BTC") == Balance(BOB_BTC - 123_000_000, 123_000_000)
    forwarded = accounts.place(market_order(12, BOB, Side.SELL, amount=1))
    assert isinstance(forwarded, PlaceOrder)
    assert forwarded.locked == 1_000_000
    assert_accounts_consistent(accounts)


def test_lock_uses_the_markets_funds_factor() -> None:
    accounts = make()
    forwarded = accounts.place(limit(1, ALICE, Side.BUY, price=2_000_00, amount=1_5, market="ETH-USD"))
    assert isinstance(forwarded, PlaceOrder)
    assert forwarded.locked == ETH_USD.funds(Price(2_000_00), Amount(1_5)) == 30_000_000  # 1.5 ETH at 2000.00


def test_insufficient_funds_rejects_the_order_and_changes_nothing() -> None:
    accounts = make(record_entries=True)
    accounts.take_entries()
    before = accounts.snapshot()
    cmd = limit(10, ALICE, Side.BUY, price=1_000_00, amount=100_01)  # 100_010 USD > 100_000 USD
    assert accounts.place(cmd) == rejected(cmd, RejectReason.INSUFFICIENT_FUNDS, "place")
    sell = limit(11, ALICE, Side.SELL, price=1, amount=1)  # Alice has no BTC
    assert accounts.place(sell) == rejected(sell, RejectReason.INSUFFICIENT_FUNDS, "place")
    assert accounts.snapshot() == before
    assert accounts.take_changes() == []
    assert accounts.take_entries() == []
    # the same id can be used once the member has the funds: a rejected id is not remembered
    assert isinstance(accounts.place(msgspec.structs.replace(cmd, amount=100_00)), PlaceOrder)


def test_unknown_market_is_rejected_and_changes_nothing() -> None:
    accounts = make()
    before = accounts.snapshot()
    cmd = msgspec.structs.replace(limit(10, ALICE, Side.BUY, 1, 1), market="DOGE-USD")
    assert accounts.place(cmd) == rejected(cmd, RejectReason.UNKNOWN_MARKET, "place")
    assert accounts.snapshot() == before


def test_duplicate_order_id_is_rejected_while_open_and_after_close() -> None:
    accounts = make()
    first = placed(accounts, limit(10, ALICE, Side.BUY, price=100, amount=100))
    before = accounts.snapshot()
    again = limit(10, ALICE, Side.BUY, price=100, amount=1)
    assert accounts.place(again) == rejected(again, RejectReason.DUPLICATE_ORDER, "place")
    other_member = limit(10, BOB, Side.SELL, price=100, amount=1)
    assert accounts.place(other_member) == rejected(other_member, RejectReason.DUPLICATE_ORDER, "place")
    assert accounts.snapshot() == before
    accounts.apply(closed(first))
    assert accounts.place(again) == rejected(again, RejectReason.DUPLICATE_ORDER, "place")


def test_closed_order_ids_are_remembered_only_up_to_closed_memory() -> None:
    accounts = make(closed_memory=2)
    for order_id in (1, 2, 3):
        accounts.apply(closed(placed(accounts, limit(order_id, ALICE, Side.BUY, 1, 1))))
    assert isinstance(accounts.place(limit(1, ALICE, Side.BUY, 1, 1)), PlaceOrder)  # forgotten
    for order_id in (2, 3):
        cmd = limit(order_id, ALICE, Side.BUY, 1, 1)
        assert accounts.place(cmd) == rejected(cmd, RejectReason.DUPLICATE_ORDER, "place")


@pytest.mark.parametrize(
    "cmd",
    [
        limit(10, ALICE, Side.BUY, price=100, amount=0),
        limit(10, ALICE, Side.BUY, price=100, amount=-5),
        limit(10, ALICE, Side.SELL, price=0, amount=1),
        limit(10, ALICE, Side.BUY, price=10_000_001, amount=1),
        PlaceOrder(OrderId(10), ALICE, "BTC-USD", Side.BUY, OrderType.LIMIT, Amount(1), None),
        PlaceOrder(OrderId(10), ALICE, "BTC-USD", Side.BUY, OrderType.MARKET, Amount(1), Price(100)),
        PlaceOrder(OrderId(10), ALICE, "BTC-USD", Side.SELL, OrderType.MARKET, Amount(1), post_only=True),
        limit(10, ALICE, Side.BUY, price=100, amount=1, tif=TimeInForce.IOC, post_only=True),
        limit(10, EXCHANGE_MEMBER, Side.BUY, price=100, amount=1),
        msgspec.structs.replace(limit(10, ALICE, Side.BUY, 1, 1), side="hold"),
        msgspec.structs.replace(limit(10, ALICE, Side.BUY, 1, 1), type="stop"),
        msgspec.structs.replace(limit(10, ALICE, Side.BUY, 1, 1), tif="day"),
    ],
    ids=lambda cmd: repr(cmd)[:80],
)
def test_an_order_the_engine_would_refuse_is_rejected_as_invalid_and_changes_nothing(
    cmd: PlaceOrder,
) -> None:
    accounts = make()
    before = accounts.snapshot()
    assert accounts.place(cmd) == rejected(cmd, RejectReason.INVALID_ORDER, "place")
    assert accounts.snapshot() == before


# --- market buys ---


def test_market_buy_locks_the_whole_available_quote_balance() -> None:
    accounts = make()
    forwarded = accounts.place(market_order(10, ALICE, Side.BUY, amount=100_00))
    assert isinstance(forwarded, PlaceOrder)
    assert forwarded.locked == ALICE_USD
    assert bal(accounts, ALICE, "USD") == Balance(0, ALICE_USD)


def test_market_buy_lock_is_bounded_by_what_its_amount_can_cost_at_the_max_price() -> None:
    accounts = make()
    forwarded = accounts.place(market_order(10, ALICE, Side.BUY, amount=2))  # 0.02 BTC
    assert isinstance(forwarded, PlaceOrder)
    assert forwarded.locked == F(BTC_USD.max_price, Amount(2)) == 20_000_000  # 0.02 BTC at 100_000.00
    assert bal(accounts, ALICE, "USD") == Balance(ALICE_USD - 20_000_000, 20_000_000)


def test_market_buy_lock_is_capped_by_the_configured_maximum() -> None:
    accounts = make(market_buy_caps={"BTC-USD": 1_234_567})
    forwarded = accounts.place(market_order(10, ALICE, Side.BUY, amount=100_00))
    assert isinstance(forwarded, PlaceOrder)
    assert forwarded.locked == 1_234_567
    eth = accounts.place(market_order(11, ALICE, Side.BUY, amount=100_000, market="ETH-USD"))
    assert isinstance(eth, PlaceOrder)
    assert eth.locked == ALICE_USD - 1_234_567  # no cap on ETH-USD: the rest of the balance


def test_market_buy_caps_must_name_known_markets_and_be_positive() -> None:
    with pytest.raises(ValueError, match="unknown market"):
        Accounts(MARKETS, market_buy_caps={"X-Y": 1})
    with pytest.raises(ValueError, match="positive"):
        Accounts(MARKETS, market_buy_caps={"BTC-USD": 0})


def test_market_buy_without_quote_balance_is_rejected() -> None:
    accounts = make()
    cmd = market_order(10, BOB, Side.BUY, amount=1)
    assert accounts.place(cmd) == rejected(cmd, RejectReason.INSUFFICIENT_FUNDS, "place")
    assert accounts.order_lock(OrderId(10)) is None


def test_market_buy_releases_what_it_did_not_spend_when_it_closes() -> None:
    accounts = make()
    ask = placed(accounts, limit(1, BOB, Side.SELL, price=2_000_00, amount=1_00))
    buy = placed(accounts, market_order(2, ALICE, Side.BUY, amount=5_00))
    assert bal(accounts, ALICE, "USD") == Balance(0, ALICE_USD)
    accounts.apply(trade(1, 2_000_00, 1_00, maker=ask, taker=buy))
    spent = 20_000_000  # 1 BTC at 2000.00
    assert bal(accounts, ALICE, "USD") == Balance(0, ALICE_USD - spent)
    lock = accounts.order_lock(OrderId(2))
    assert lock is not None
    assert lock.locked == ALICE_USD - spent  # a market buy keeps its whole lock until it closes
    changes = accounts.apply(
        OrderClosed(
            OrderId(2),
            ALICE,
            "BTC-USD",
            OrderStatus.CLOSED,
            CloseReason.MARKET_REMAINDER,
            Amount(1_00),
            QuoteUnits(spent),
        )
    )
    assert changes == [BalanceChanged(ALICE, "USD", ALICE_USD - spent, 0)]
    assert accounts.order_lock(OrderId(2)) is None
    assert bal(accounts, ALICE, "BTC") == Balance(100_000_000, 0)
    assert_accounts_consistent(accounts)


# --- settlement and fees ---


def test_trade_settles_both_sides_with_maker_and_taker_fees() -> None:
    fees = FeeSchedule(maker_ppm=1_000, taker_ppm=2_000)  # 0.1 % maker, 0.2 % taker
    accounts = make(fees, record_entries=True)
    ask = placed(accounts, limit(1, BOB, Side.SELL, price=3_000_00, amount=2_00))  # maker
    bid = placed(accounts, limit(2, ALICE, Side.BUY, price=3_000_00, amount=1_00))  # taker
    accounts.take_entries()
    changes = accounts.apply(trade(7, 3_000_00, 1_00, maker=ask, taker=bid))
    # Alice (taker, buyer) pays 0.2 % of 1 BTC = 200_000 BTC units and gets 0.998 BTC
    assert bal(accounts, ALICE, "BTC") == Balance(100_000_000 - 200_000, 0)
    assert bal(accounts, ALICE, "USD") == Balance(ALICE_USD - 30_000_000, 0)
    # Bob (maker, seller) pays 0.1 % of 3000.0000 USD = 30_000 units and gets 2997 USD
    assert bal(accounts, BOB, "USD") == Balance(29_970_000, 0)
    assert bal(accounts, BOB, "BTC") == Balance(BOB_BTC - 200_000_000, 100_000_000)
    assert bal(accounts, EXCHANGE_MEMBER, "BTC") == Balance(200_000, 0)
    assert bal(accounts, EXCHANGE_MEMBER, "USD") == Balance(30_000, 0)
    assert {(c.member_id, c.currency) for c in changes} == {
        (ALICE, "USD"),
        (ALICE, "BTC"),
        (BOB, "BTC"),
        (BOB, "USD"),
        (EXCHANGE_MEMBER, "BTC"),
        (EXCHANGE_MEMBER, "USD"),
    }
    for change in changes:
        assert (change.available, change.locked) == bal(accounts, change.member_id, change.currency)
    entries = accounts.take_entries()
    assert_entries_balance(entries)
    assert {e.ref_id for e in entries} == {7}
    lock = accounts.order_lock(OrderId(1))
    assert lock is not None
    assert (lock.remaining, lock.locked) == (1_00, 100_000_000)
    assert_accounts_consistent(accounts)


def test_taker_sell_pays_the_taker_rate_and_the_resting_buyer_the_maker_rate() -> None:
    accounts = make(FeeSchedule(maker_ppm=0, taker_ppm=5_000))
    bid = placed(accounts, limit(1, ALICE, Side.BUY, price=1_000_00, amount=1_00))  # maker
    ask = placed(accounts, limit(2, BOB, Side.SELL, price=1_000_00, amount=1_00))  # taker
    accounts.apply(trade(1, 1_000_00, 1_00, maker=bid, taker=ask))
    assert bal(accounts, ALICE, "BTC") == Balance(100_000_000, 0)  # no maker fee
    assert bal(accounts, BOB, "USD") == Balance(10_000_000 - 50_000, 0)  # 0.5 % taker fee
    assert bal(accounts, EXCHANGE_MEMBER, "USD") == Balance(50_000, 0)
    assert bal(accounts, EXCHANGE_MEMBER, "BTC") == Balance(0, 0)


def test_fees_are_rounded_down_to_whole_ledger_units() -> None:
    accounts = make(FeeSchedule(maker_ppm=1_500, taker_ppm=1_500))
    ask = placed(accounts, limit(1, BOB, Side.SELL, price=333, amount=1))
    bid = placed(accounts, limit(2, ALICE, Side.BUY, price=333, amount=1))
    accounts.apply(trade(1, 333, 1, maker=ask, taker=bid))
    # seller fee: 333 * 0.0015 = 0.4995 units -> 0; buyer fee: 1_000_000 * 0.0015 = 1_500 exactly
    assert bal(accounts, BOB, "USD") == Balance(333, 0)
    assert bal(accounts, ALICE, "BTC") == Balance(1_000_000 - 1_500, 0)
    assert bal(accounts, EXCHANGE_MEMBER, "USD") == Balance(0, 0)
    assert bal(accounts, EXCHANGE_MEMBER, "BTC") == Balance(1_500, 0)
    assert_accounts_consistent(accounts)


def test_per_market_fee_rates_override_the_default() -> None:
    fees = FeeSchedule(maker_ppm=1, taker_ppm=2, markets={"ETH-USD": (30, 40)})
    assert fees.rates("BTC-USD") == (1, 2)
    assert fees.rates("ETH-USD") == (30, 40)


@pytest.mark.parametrize("rates", [{"maker_ppm": -1}, {"taker_ppm": 1_000_001}, {"markets": {"X": (0, -1)}}])
def test_fee_rates_outside_0_to_one_million_ppm_are_refused(rates: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="fee rate"):
        FeeSchedule(**rates)  # type: ignore[arg-type]


def test_limit_buy_filled_below_its_price_gets_the_difference_back_at_once() -> None:
    accounts = make()
    ask = placed(accounts, limit(1, BOB, Side.SELL, price=900, amount=1_00))
    bid = placed(accounts, limit(2, ALICE, Side.BUY, price=1_000, amount=3_00))
    assert bal(accounts, ALICE, "USD") == Balance(ALICE_USD - 300_000, 300_000)
    accounts.apply(trade(1, 900, 1_00, maker=ask, taker=bid))
    # spent 90_000; the rest of the order (2 BTC at 10.00) needs 200_000; 10_000 comes back
    assert bal(accounts, ALICE, "USD") == Balance(ALICE_USD - 290_000, 200_000)
    lock = accounts.order_lock(OrderId(2))
    assert lock is not None
    assert (lock.remaining, lock.locked) == (2_00, 200_000)
    assert_accounts_consistent(accounts)


def test_trade_spending_more_than_the_order_locked_is_an_error_and_changes_nothing() -> None:
    accounts = make()
    ask = placed(accounts, limit(1, BOB, Side.SELL, price=900, amount=1_00))
    bid = placed(accounts, limit(2, ALICE, Side.BUY, price=1_000, amount=1_00))
    placed(accounts, limit(3, ALICE, Side.BUY, price=1_000, amount=1_00))  # more USD locked
    before = accounts.snapshot()
    with pytest.raises(LockExceededError, match="order 2"):
        accounts.apply(trade(1, 1_100, 1_00, maker=ask, taker=bid))
    assert accounts.snapshot() == before


# --- releases ---


def test_cancelled_order_releases_its_whole_lock_and_is_forgotten() -> None:
    accounts = make()
    bid = placed(accounts, limit(2, ALICE, Side.BUY, price=1_000, amount=3_00))
    accounts.take_changes()
    changes = accounts.apply(closed(bid))
    assert changes == [BalanceChanged(ALICE, "USD", ALICE_USD, 0)]
    assert accounts.order_lock(OrderId(2)) is None
    assert accounts.open_orders() == []


def test_partially_filled_order_releases_the_rest_when_it_closes() -> None:
    accounts = make()
    bid = placed(accounts, limit(1, ALICE, Side.BUY, price=1_000, amount=3_00))
    ask = placed(accounts, limit(2, BOB, Side.SELL, price=1_000, amount=5_00))
    accounts.apply(trade(1, 1_000, 3_00, maker=bid, taker=ask))
    accounts.apply(OrderUpdated(OrderId(1), ALICE, "BTC-USD", Amount(3_00), Amount(0), OrderStatus.EXECUTED))
    accounts.apply(closed(bid, OrderStatus.EXECUTED))
    assert bal(accounts, ALICE, "USD") == Balance(ALICE_USD - 300_000, 0)
    accounts.apply(closed(ask))
    assert bal(accounts, BOB, "BTC") == Balance(BOB_BTC - 300_000_000, 0)
    assert accounts.open_orders() == []
    assert_accounts_consistent(accounts)


def test_engine_rejection_of_a_place_releases_the_whole_lock() -> None:
    accounts = make()
    cmd = limit(1, ALICE, Side.BUY, price=1_000, amount=3_00)
    assert isinstance(accounts.place(cmd), PlaceOrder)
    accounts.take_changes()
    changes = accounts.apply(rejected(cmd, RejectReason.DUPLICATE_ORDER, "place"))
    assert changes == [BalanceChanged(ALICE, "USD", ALICE_USD, 0)]
    assert accounts.order_lock(OrderId(1)) is None


def test_place_rejection_after_the_engine_accepted_the_order_is_not_about_it() -> None:
    accounts = make()
    cmd = placed(accounts, limit(1, ALICE, Side.BUY, price=1_000, amount=3_00))
    accounts.take_changes()
    before = accounts.snapshot()
    assert accounts.apply(rejected(cmd, RejectReason.DUPLICATE_ORDER, "place")) == []
    assert accounts.snapshot() == before


def test_events_of_orders_this_shard_does_not_track_are_ignored() -> None:
    accounts = make()
    before = accounts.snapshot()
    stranger = limit(99, 77, Side.BUY, price=1, amount=1)
    other = limit(98, 78, Side.SELL, price=1, amount=1)
    for event in (
        trade(1, 1, 1, maker=other, taker=stranger),
        closed(stranger),
        rejected(stranger, RejectReason.INVALID_ORDER, "place"),
        OrderAmended(OrderId(99), MemberId(77), "BTC-USD", Price(1), Amount(1), Amount(1), True),
    ):
        assert accounts.apply(event) == []
    assert accounts.snapshot() == before


def test_close_for_the_right_id_but_another_member_changes_nothing() -> None:
    accounts = make()
    bid = placed(accounts, limit(1, ALICE, Side.BUY, price=1_000, amount=1))
    before = accounts.snapshot()
    accounts.apply(closed(msgspec.structs.replace(bid, member_id=BOB)))
    assert accounts.snapshot() == before


# --- amend ---


def test_amend_to_a_higher_buy_price_locks_the_difference_before_forwarding() -> None:
    accounts = make()
    placed(accounts, limit(1, ALICE, Side.BUY, price=1_000, amount=2_00))
    amend = AmendOrder(OrderId(1), ALICE, "BTC-USD", price=Price(1_500))
    assert accounts.amend(amend) is amend
    assert bal(accounts, ALICE, "USD") == Balance(ALICE_USD - 300_000, 300_000)
    accounts.apply(
        OrderAmended(OrderId(1), ALICE, "BTC-USD", Price(1_500), Amount(2_00), Amount(2_00), False)
    )
    assert bal(accounts, ALICE, "USD") == Balance(ALICE_USD - 300_000, 300_000)
    lock = accounts.order_lock(OrderId(1))
    assert lock is not None
    assert (lock.price, lock.locked, lock.pending_amends) == (1_500, 300_000, 0)
    assert_accounts_consistent(accounts)


def test_amend_needing_more_than_available_is_rejected_and_changes_nothing() -> None:
    accounts = make()
    placed(accounts, limit(1, ALICE, Side.BUY, price=1_000, amount=2_00))
    before = accounts.snapshot()
    amend = AmendOrder(
        OrderId(1), ALICE, "BTC-USD", price=Price(60_000_00)
    )  # 2 BTC at 60_000.00 > 100_000 USD
    assert accounts.amend(amend) == rejected(amend, RejectReason.INSUFFICIENT_FUNDS, "amend")
    assert accounts.snapshot() == before


def test_amend_to_a_lower_buy_price_releases_the_surplus_once_the_engine_confirms() -> None:
    accounts = make()
    placed(accounts, limit(1, ALICE, Side.BUY, price=1_000, amount=2_00))
    amend = AmendOrder(OrderId(1), ALICE, "BTC-USD", price=Price(400))
    assert accounts.amend(amend) is amend
    assert bal(accounts, ALICE, "USD").locked == 200_000  # nothing released before the answer
    accounts.apply(OrderAmended(OrderId(1), ALICE, "BTC-USD", Price(400), Amount(2_00), Amount(2_00), False))
    assert bal(accounts, ALICE, "USD") == Balance(ALICE_USD - 80_000, 80_000)


def test_rejected_amend_releases_what_was_locked_for_it() -> None:
    accounts = make()
    placed(accounts, limit(1, ALICE, Side.BUY, price=1_000, amount=2_00))
    amend = AmendOrder(OrderId(1), ALICE, "BTC-USD", price=Price(1_500))
    accounts.amend(amend)
    assert bal(accounts, ALICE, "USD").locked == 300_000
    accounts.apply(rejected(amend, RejectReason.POST_ONLY_WOULD_TRADE, "amend"))
    assert bal(accounts, ALICE, "USD") == Balance(ALICE_USD - 200_000, 200_000)
    lock = accounts.order_lock(OrderId(1))
    assert lock is not None
    assert (lock.price, lock.pending_amends) == (1_000, 0)


def test_sell_amend_to_a_larger_amount_locks_more_base_and_a_smaller_one_releases() -> None:
    accounts = make()
    placed(accounts, limit(1, BOB, Side.SELL, price=1_000, amount=2_00))
    assert bal(accounts, BOB, "BTC").locked == B(Amount(2_00))
    up = AmendOrder(OrderId(1), BOB, "BTC-USD", amount=Amount(3_00))
    assert accounts.amend(up) is up
    assert bal(accounts, BOB, "BTC").locked == B(Amount(3_00))
    accounts.apply(OrderAmended(OrderId(1), BOB, "BTC-USD", Price(1_000), Amount(3_00), Amount(3_00), False))
    down = AmendOrder(OrderId(1), BOB, "BTC-USD", amount=Amount(1_00))
    assert accounts.amend(down) is down
    assert bal(accounts, BOB, "BTC").locked == B(Amount(3_00))
    accounts.apply(OrderAmended(OrderId(1), BOB, "BTC-USD", Price(1_000), Amount(1_00), Amount(1_00), True))
    assert bal(accounts, BOB, "BTC") == Balance(BOB_BTC - B(Amount(1_00)), B(Amount(1_00)))
    assert_accounts_consistent(accounts)


def test_amend_counts_only_the_unfilled_part() -> None:
    accounts = make()
    bid = placed(accounts, limit(1, ALICE, Side.BUY, price=1_000, amount=3_00))
    ask = placed(accounts, limit(2, BOB, Side.SELL, price=1_000, amount=2_00))
    accounts.apply(trade(1, 1_000, 2_00, maker=bid, taker=ask))
    assert bal(accounts, ALICE, "USD").locked == F(Price(1_000), Amount(1_00))
    amend = AmendOrder(OrderId(1), ALICE, "BTC-USD", price=Price(2_000))  # remaining 1 BTC at 20.00
    accounts.amend(amend)
    assert bal(accounts, ALICE, "USD").locked == F(Price(2_000), Amount(1_00))
    too_small = AmendOrder(OrderId(1), ALICE, "BTC-USD", amount=Amount(2_00))  # not above the executed amount
    assert accounts.amend(too_small) == rejected(too_small, RejectReason.AMEND_INVALID, "amend")


def test_no_surplus_is_released_while_another_amend_is_in_flight() -> None:
    accounts = make()
    placed(accounts, limit(1, ALICE, Side.BUY, price=1_000, amount=1_00))
    first = AmendOrder(OrderId(1), ALICE, "BTC-USD", price=Price(3_000))
    second = AmendOrder(OrderId(1), ALICE, "BTC-USD", price=Price(2_000))
    accounts.amend(first)
    accounts.amend(second)
    assert bal(accounts, ALICE, "USD").locked == F(Price(3_000), Amount(1_00))
    accounts.apply(
        OrderAmended(OrderId(1), ALICE, "BTC-USD", Price(3_000), Amount(1_00), Amount(1_00), False)
    )
    assert bal(accounts, ALICE, "USD").locked == F(Price(3_000), Amount(1_00))  # `second` may still come
    accounts.apply(
        OrderAmended(OrderId(1), ALICE, "BTC-USD", Price(2_000), Amount(1_00), Amount(1_00), False)
    )
    assert bal(accounts, ALICE, "USD").locked == F(Price(2_000), Amount(1_00))


def test_fill_during_an_amend_in_flight_releases_nothing_until_the_answer() -> None:
    accounts = make()
    bid = placed(accounts, limit(1, ALICE, Side.BUY, price=1_000, amount=2_00))
    ask = placed(accounts, limit(2, BOB, Side.SELL, price=800, amount=1_00))
    accounts.amend(AmendOrder(OrderId(1), ALICE, "BTC-USD", price=Price(2_000)))
    accounts.apply(trade(1, 800, 1_00, maker=bid, taker=ask))  # the engine filled before the amend
    assert bal(accounts, ALICE, "USD").locked == F(Price(2_000), Amount(2_00)) - F(Price(800), Amount(1_00))
    accounts.apply(
        OrderAmended(OrderId(1), ALICE, "BTC-USD", Price(2_000), Amount(2_00), Amount(1_00), False)
    )
    assert bal(accounts, ALICE, "USD").locked == F(Price(2_000), Amount(1_00))
    assert_accounts_consistent(accounts)


@pytest.mark.parametrize(
    "amend",
    [
        AmendOrder(OrderId(5), ALICE, "BTC-USD", price=Price(1)),  # unknown id
        AmendOrder(OrderId(1), BOB, "BTC-USD", price=Price(1)),  # someone else's order
        AmendOrder(OrderId(1), ALICE, "ETH-USD", price=Price(1)),  # wrong market
    ],
)
def test_amend_of_an_unknown_order_is_rejected(amend: AmendOrder) -> None:
    accounts = make()
    placed(accounts, limit(1, ALICE, Side.BUY, price=1_000, amount=1_00))
    before = accounts.snapshot()
    assert accounts.amend(amend) == rejected(amend, RejectReason.UNKNOWN_ORDER, "amend")
    assert accounts.snapshot() == before


@pytest.mark.parametrize(
    "amend",
    [
        AmendOrder(OrderId(1), ALICE, "BTC-USD"),
        AmendOrder(OrderId(1), ALICE, "BTC-USD", price=Price(0)),
        AmendOrder(OrderId(1), ALICE, "BTC-USD", amount=Amount(0)),
        AmendOrder(OrderId(1), ALICE, "BTC-USD", price=Price(10_000_001)),
    ],
)
def test_invalid_amend_is_rejected_and_changes_nothing(amend: AmendOrder) -> None:
    accounts = make()
    placed(accounts, limit(1, ALICE, Side.BUY, price=1_000, amount=1_00))
    before = accounts.snapshot()
    assert accounts.amend(amend) == rejected(amend, RejectReason.AMEND_INVALID, "amend")
    assert accounts.snapshot() == before


def test_amend_of_a_market_order_goes_to_the_engine_without_locking() -> None:
    accounts = make()
    placed(accounts, market_order(1, BOB, Side.SELL, amount=1))
    amend = AmendOrder(OrderId(1), BOB, "BTC-USD", price=Price(5))
    assert accounts.amend(amend) is amend
    assert bal(accounts, BOB, "BTC").locked == B(Amount(1))
    accounts.apply(rejected(amend, RejectReason.ORDER_CLOSED, "amend"))
    assert bal(accounts, BOB, "BTC").locked == B(Amount(1))


# --- cancel ---


def test_cancel_of_an_own_open_order_passes_through_and_changes_nothing() -> None:
    accounts = make()
    placed(accounts, limit(1, ALICE, Side.BUY, price=1_000, amount=1_00))
    before = accounts.snapshot()
    cancel = CancelOrder(OrderId(1), ALICE, "BTC-USD")
    assert accounts.cancel(cancel) is cancel
    assert accounts.submit(cancel) is cancel
    assert accounts.snapshot() == before


@pytest.mark.parametrize(
    "cancel",
    [
        CancelOrder(OrderId(5), ALICE, "BTC-USD"),
        CancelOrder(OrderId(1), BOB, "BTC-USD"),
        CancelOrder(OrderId(1), ALICE, "ETH-USD"),
    ],
)
def test_cancel_of_an_unknown_or_foreign_order_is_rejected(cancel: CancelOrder) -> None:
    accounts = make()
    placed(accounts, limit(1, ALICE, Side.BUY, price=1_000, amount=1_00))
    assert accounts.cancel(cancel) == OrderRejected(
        cancel.order_id, cancel.member_id, cancel.market, RejectReason.UNKNOWN_ORDER, "cancel"
    )


def test_submit_dispatches_every_command() -> None:
    accounts = make()
    place = accounts.submit(limit(1, ALICE, Side.BUY, price=1_000, amount=1_00))
    assert isinstance(place, PlaceOrder)
    assert place.locked == F(Price(1_000), Amount(1_00))
    amend = AmendOrder(OrderId(1), ALICE, "BTC-USD", price=Price(1))
    assert accounts.submit(amend) is amend


# --- deposits, withdrawals, outputs ---


def test_deposit_and_withdraw_change_available_and_report_the_balance() -> None:
    accounts = make(record_entries=True)
    accounts.take_entries()
    accounts.deposit(MemberId(3), "ETH", 500, ref_id=10)
    accounts.withdraw(MemberId(3), "ETH", 200, ref_id=11)
    assert accounts.take_changes() == [BalanceChanged(MemberId(3), "ETH", 300, 0)]
    assert accounts.balance(MemberId(3), "ETH") == BalanceChanged(MemberId(3), "ETH", 300, 0)
    entries = accounts.take_entries()
    assert len(entries) == 4
    assert_entries_balance(entries)


def test_withdraw_of_locked_funds_is_refused() -> None:
    accounts = make()
    placed(accounts, limit(1, ALICE, Side.BUY, price=1_000_00, amount=1_00))  # locks 1000 USD
    before = accounts.snapshot()
    with pytest.raises(InsufficientFundsError):
        accounts.withdraw(ALICE, "USD", ALICE_USD - 10_000_000 + 1, ref_id=3)
    assert accounts.snapshot() == before


def test_deposit_of_an_unknown_currency_or_to_a_non_member_is_refused() -> None:
    accounts = make()
    with pytest.raises(UnknownCurrencyError):
        accounts.deposit(ALICE, "DOGE", 1, ref_id=3)
    with pytest.raises(ValueError, match="member ids"):
        accounts.deposit(EXCHANGE_MEMBER, "USD", 1, ref_id=3)
    with pytest.raises(InvalidAmountError):
        accounts.deposit(ALICE, "USD", 0, ref_id=3)
    assert accounts.currencies == {"BTC", "USD", "ETH"}


def test_balance_changes_are_coalesced_in_first_touched_order_with_current_values() -> None:
    accounts = make()
    accounts.place(limit(1, ALICE, Side.BUY, price=1_000, amount=1_00))
    accounts.place(limit(2, BOB, Side.SELL, price=1_000, amount=1_00))
    accounts.place(limit(3, ALICE, Side.BUY, price=1_000, amount=1_00))
    assert accounts.take_changes() == [
        BalanceChanged(ALICE, "USD", ALICE_USD - 200_000, 200_000),
        BalanceChanged(BOB, "BTC", BOB_BTC - B(Amount(1_00)), B(Amount(1_00))),
    ]
    assert accounts.take_changes() == []


def test_no_entries_are_kept_unless_asked_for() -> None:
    accounts = make()
    accounts.place(limit(1, ALICE, Side.BUY, price=1_000, amount=1_00))
    assert accounts.take_entries() == []


# --- snapshots ---


def test_snapshot_and_restore_give_back_the_same_state() -> None:
    fees = FeeSchedule(maker_ppm=10, taker_ppm=20)
    accounts = make(fees)
    bid = placed(accounts, limit(1, ALICE, Side.BUY, price=1_000, amount=3_00))
    ask = placed(accounts, limit(2, BOB, Side.SELL, price=1_000, amount=1_00))
    accounts.apply(trade(1, 1_000, 1_00, maker=bid, taker=ask))
    accounts.apply(closed(ask, OrderStatus.EXECUTED))
    accounts.amend(AmendOrder(OrderId(1), ALICE, "BTC-USD", price=Price(1_200)))
    placed(accounts, market_order(3, ALICE, Side.BUY, amount=1))
    data = accounts.snapshot()
    copy = Accounts.restore(MARKETS, fees, data)
    assert copy.snapshot() == data
    assert copy.open_orders() == accounts.open_orders()
    dup = limit(2, BOB, Side.SELL, price=1, amount=1)
    assert copy.place(dup) == rejected(dup, RejectReason.DUPLICATE_ORDER, "place")
    assert_accounts_consistent(copy)


def test_restore_refuses_another_snapshot_version_or_an_unknown_market() -> None:
    accounts = make()
    placed(accounts, limit(1, ALICE, Side.BUY, price=1_000, amount=3_00))
    data = accounts.snapshot()
    raw = msgspec.msgpack.decode(data)
    raw[0] = 99
    with pytest.raises(ValueError, match="version"):
        Accounts.restore(MARKETS, None, msgspec.msgpack.encode(raw))
    with pytest.raises(ValueError, match="unknown market"):
        Accounts.restore({"ETH-USD": ETH_USD}, None, data)


def test_a_redelivered_trade_is_not_settled_twice() -> None:
    accounts = make()
    ask = placed(accounts, limit(1, BOB, Side.SELL, price=1_000, amount=2_00))
    bid = placed(accounts, limit(2, ALICE, Side.BUY, price=1_000, amount=2_00))
    first = trade(1, 1_000, 1_00, maker=ask, taker=bid)
    accounts.apply(first)
    after_first = accounts.snapshot()
    assert accounts.apply(first) == []
    assert accounts.snapshot() == after_first
    accounts.apply(trade(2, 1_000, 1_00, maker=ask, taker=bid))
    assert bal(accounts, ALICE, "BTC") == Balance(B(Amount(2_00)), 0)
    # trade ids are counted per market
    accounts.deposit(BOB, "ETH", 10**9, ref_id=9)
    eth_ask = placed(accounts, limit(4, BOB, Side.SELL, price=1_000, amount=1, market="ETH-USD"))
    eth_bid = placed(accounts, limit(5, ALICE, Side.BUY, price=1_000, amount=1, market="ETH-USD"))
    accounts.apply(trade(1, 1_000, 1, maker=eth_ask, taker=eth_bid, market=ETH_USD))
    assert bal(accounts, ALICE, "ETH") == Balance(ETH_USD.base_units(Amount(1)), 0)


def test_an_amend_answer_without_an_amend_in_flight_is_a_redelivery_and_changes_nothing() -> None:
    accounts = make()
    bid = placed(accounts, limit(1, ALICE, Side.BUY, price=1_000, amount=1_00))
    amend = AmendOrder(OrderId(1), ALICE, "BTC-USD", price=Price(1_200), amount=Amount(2_00))
    accounts.amend(amend)
    amended = OrderAmended(OrderId(1), ALICE, "BTC-USD", Price(1_200), Amount(2_00), Amount(2_00), False)
    accounts.apply(amended)
    ask = placed(accounts, limit(2, BOB, Side.SELL, price=1_200, amount=1_00))
    accounts.apply(trade(1, 1_200, 1_00, maker=bid, taker=ask))
    before = accounts.snapshot()
    accounts.apply(amended)
    accounts.apply(rejected(amend, RejectReason.AMEND_INVALID, "amend"))
    assert accounts.snapshot() == before
    lock = accounts.order_lock(OrderId(1))
    assert lock is not None
    assert (lock.remaining, lock.locked) == (1_00, F(Price(1_200), Amount(1_00)))

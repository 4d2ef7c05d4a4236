"""The matching engine, rule by rule: each test names the behaviour it proves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from bourse.domain.matching import MatchingEngine
from bourse.domain.orders import (
    CancelOrder,
    CloseReason,
    EngineEvent,
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
from tests.domain.engine_support import (
    MARKET,
    SYMBOL,
    amend,
    buy,
    cancel,
    engine,
    kinds,
    limit,
    make_market,
    market_order,
    of_type,
    sell,
)

FF = MARKET.funds_factor  # 100 quote units per (price unit x amount unit)


def book(*orders: PlaceOrder, eng: MatchingEngine | None = None) -> MatchingEngine:
    e = eng or engine()
    for i, order in enumerate(orders):
        events = e.process(order, i + 1)
        assert not of_type(events, OrderRejected), events
    return e


# --------------------------------------------------------------------------- resting and accepting


def test_limit_order_that_does_not_cross_rests_with_only_an_accepted_event() -> None:
    e = engine()
    events = e.process(buy(1, 100, 5), ts=77)
    assert kinds(events) == ["OrderAccepted"]
    assert e.best_bid() == 100
    assert e.best_ask() is None
    assert e.open_order_count() == 1
    view = e.open_order(OrderId(1))
    assert view is not None
    assert (view.price, view.amount, view.executed, view.remaining) == (100, 5, 0, 5)
    assert view.status is OrderStatus.SUBMITTED
    assert view.received_at == 77


def test_accepted_event_echoes_the_command_and_stamps_the_receive_time() -> None:
    command = PlaceOrder(
        order_id=OrderId(9),
        member_id=MemberId(3),
        market=SYMBOL,
        side=Side.SELL,
        type=OrderType.LIMIT,
        amount=Amount(12),
        price=Price(250),
        tif=TimeInForce.GTC,
        post_only=True,
        created_at=111,
        client_order_id="abc",
    )
    (accepted,) = engine().process(command, ts=222)
    assert accepted == OrderAccepted(
        order_id=OrderId(9),
        member_id=MemberId(3),
        market=SYMBOL,
        side=Side.SELL,
        type=OrderType.LIMIT,
        amount=Amount(12),
        price=Price(250),
        tif=TimeInForce.GTC,
        post_only=True,
        created_at=111,
        received_at=222,
        client_order_id="abc",
    )


# --------------------------------------------------------------------------- validation


def only_rejection(events: Sequence[EngineEvent], reason: RejectReason, command: str = "place") -> None:
    assert len(events) == 1
    (event,) = events
    assert isinstance(event, OrderRejected)
    assert event.reason is reason
    assert event.command == command


def test_order_for_another_market_is_rejected_as_unknown_market() -> None:
    e = engine()
    only_rejection(e.process(buy(1, 100, 5, market="ETH-USD"), 1), RejectReason.UNKNOWN_MARKET)
    assert e.open_order_count() == 0


def test_duplicate_id_of_an_open_order_is_rejected_and_the_open_order_is_untouched() -> None:
    e = book(buy(1, 100, 5))
    only_rejection(e.process(sell(1, 90, 5, member=2), 2), RejectReason.DUPLICATE_ORDER)
    assert e.open_order(OrderId(1)) is not None
    assert e.best_bid() == 100
    assert e.best_ask() is None


def test_duplicate_id_of_a_recently_closed_order_is_rejected() -> None:
    e = book(buy(1, 100, 5))
    e.process(cancel(1), 2)
    only_rejection(e.process(buy(1, 100, 5), 3), RejectReason.DUPLICATE_ORDER)


def test_recently_closed_window_forgets_the_oldest_ids_beyond_its_capacity() -> None:
    e = engine(recent_ids=2)
    for oid in (1, 2, 3):
        e.process(buy(oid, 100, 1, tif=TimeInForce.IOC), oid)  # closes at once
    assert kinds(e.process(buy(1, 100, 1), 10)) == ["OrderAccepted"]  # forgotten
    only_rejection(e.process(buy(2, 100, 1), 11), RejectReason.DUPLICATE_ORDER)
    only_rejection(e.process(buy(3, 100, 1), 12), RejectReason.DUPLICATE_ORDER)


@pytest.mark.parametrize("amount", [0, -1, 4, 101])
def test_amount_outside_the_market_limits_is_rejected_as_invalid(amount: int) -> None:
    e = engine(make_market(min_amount=5, max_amount=100))
    only_rejection(e.process(buy(1, 100, amount), 1), RejectReason.INVALID_ORDER)


@pytest.mark.parametrize("amount", [5, 100])
def test_amount_at_the_market_limits_is_accepted(amount: int) -> None:
    e = engine(make_market(min_amount=5, max_amount=100))
    assert kinds(e.process(buy(1, 100, amount), 1)) == ["OrderAccepted"]


@pytest.mark.parametrize("price", [None, 0, -5, 1001])
def test_limit_order_needs_a_positive_price_within_the_market_maximum(price: int | None) -> None:
    e = engine(make_market(max_price=1000))
    only_rejection(e.process(limit(1, Side.BUY, price, 5), 1), RejectReason.INVALID_ORDER)


def test_limit_order_at_the_maximum_price_is_accepted() -> None:
    e = engine(make_market(max_price=1000))
    assert kinds(e.process(buy(1, 1000, 5), 1)) == ["OrderAccepted"]


def test_market_order_with_a_price_is_rejected_as_invalid() -> None:
    only_rejection(engine().process(market_order(1, Side.SELL, 5, price=100), 1), RejectReason.INVALID_ORDER)


def test_market_order_cannot_be_post_only() -> None:
    command = PlaceOrder(
        order_id=OrderId(1),
        member_id=MemberId(1),
        market=SYMBOL,
        side=Side.SELL,
        type=OrderType.MARKET,
        amount=Amount(5),
        post_only=True,
    )
    only_rejection(engine().process(command, 1), RejectReason.INVALID_ORDER)


@pytest.mark.parametrize("tif", [TimeInForce.IOC, TimeInForce.FOK])
def test_post_only_is_only_for_good_till_cancelled_orders(tif: TimeInForce) -> None:
    only_rejection(engine().process(buy(1, 100, 5, tif=tif, post_only=True), 1), RejectReason.INVALID_ORDER)


def test_unknown_side_type_or_time_in_force_is_rejected_as_invalid() -> None:
    base = buy(1, 100, 5)
    for bad in (
        PlaceOrder(**{**_fields(base), "side": "sideways"}),
        PlaceOrder(**{**_fields(base), "type": "stop"}),
        PlaceOrder(**{**_fields(base), "tif": "day"}),
    ):
        only_rejection(engine().process(bad, 1), RejectReason.INVALID_ORDER)


def _fields(command: PlaceOrder) -> dict[str, Any]:
    return {name: getattr(command, name) for name in command.__struct_fields__}


def test_market_buy_without_locked_funds_is_rejected_as_insufficient_funds() -> None:
    e = book(sell(1, 100, 5))
    only_rejection(e.process(market_order(2, Side.BUY, 5, locked=0), 2), RejectReason.INSUFFICIENT_FUNDS)
    assert e.open_order(OrderId(1)) is not None


def test_a_rejected_place_changes_nothing() -> None:
    e = book(buy(1, 100, 5), sell(2, 110, 5))
    before = e.snapshot()
    e.process(buy(3, 120, 0), 3)
    e.process(sell(1, 90, 5), 4)
    assert e.snapshot() == before


def test_process_refuses_something_that_is_not_a_command() -> None:
    with pytest.raises(TypeError):
        engine().process(object(), 1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- matching


def test_trade_executes_at_the_makers_price() -> None:
    e = book(sell(1, 100, 5))
    (trade,) = of_type(e.process(buy(2, 105, 5), 2), Trade)
    assert trade.price == 100
    assert trade.funds == MARKET.funds(Price(100), Amount(5))


def test_trade_executes_at_the_makers_price_for_a_sell_taker_too() -> None:
    e = book(buy(1, 100, 5))
    (trade,) = of_type(e.process(sell(2, 90, 5), 2), Trade)
    assert trade.price == 100
    assert trade.taker_side is Side.SELL


def test_best_price_fills_first() -> None:
    e = book(sell(1, 103, 5), sell(2, 101, 5), sell(3, 102, 5))
    trades = of_type(e.process(buy(4, 103, 12), 4), Trade)
    assert [(t.maker_order_id, t.price, t.amount) for t in trades] == [(2, 101, 5), (3, 102, 5), (1, 103, 2)]


def test_oldest_order_fills_first_at_one_price() -> None:
    e = book(buy(1, 100, 5), buy(2, 100, 5), buy(3, 100, 5))
    trades = of_type(e.process(sell(4, 100, 7), 4), Trade)
    assert [(t.maker_order_id, t.amount) for t in trades] == [(1, 5), (2, 2)]


def test_partially_filled_maker_keeps_its_place_at_the_front() -> None:
    e = book(sell(1, 100, 10), sell(2, 100, 10))
    e.process(buy(3, 100, 4), 3)
    trades = of_type(e.process(buy(4, 100, 8), 4), Trade)
    assert [(t.maker_order_id, t.amount) for t in trades] == [(1, 6), (2, 2)]


def test_taker_sweeps_levels_up_to_its_limit_and_rests_the_remainder() -> None:
    e = book(sell(1, 100, 5), sell(2, 101, 5), sell(3, 105, 5))
    e.process(buy(4, 102, 20), 4)
    assert e.best_ask() == 105
    assert e.best_bid() == 102
    view = e.open_order(OrderId(4))
    assert view is not None
    assert (view.executed, view.remaining, view.status) == (10, 10, OrderStatus.PARTIALLY_FILLED)
    assert view.funds == MARKET.funds(Price(100), Amount(5)) + MARKET.funds(Price(101), Amount(5))


def test_events_of_a_fill_come_in_the_documented_order() -> None:
    e = book(sell(1, 100, 5), sell(2, 101, 5))
    events = e.process(buy(3, 101, 7), ts=50)
    assert kinds(events) == [
        "OrderAccepted",
        "Trade",
        "OrderUpdated",  # maker 1
        "OrderUpdated",  # taker
        "OrderClosed",  # maker 1 filled
        "Trade",
        "OrderUpdated",  # maker 2
        "OrderUpdated",  # taker, now executed
        "OrderClosed",  # taker filled
    ]
    t1, t2 = of_type(events, Trade)
    assert t1 == Trade(
        trade_id=TradeId(1),
        market=SYMBOL,
        price=Price(100),
        amount=Amount(5),
        funds=QuoteUnits(100 * 5 * FF),
        maker_order_id=OrderId(1),
        maker_member_id=MemberId(1),
        taker_order_id=OrderId(3),
        taker_member_id=MemberId(3),
        taker_side=Side.BUY,
        ts=50,
    )
    assert (t2.trade_id, t2.price, t2.amount) == (2, 101, 2)
    updates = of_type(events, OrderUpdated)
    assert [(u.order_id, u.executed, u.remaining, u.status) for u in updates] == [
        (1, 5, 0, OrderStatus.EXECUTED),
        (3, 5, 2, OrderStatus.PARTIALLY_FILLED),
        (2, 2, 3, OrderStatus.PARTIALLY_FILLED),
        (3, 7, 0, OrderStatus.EXECUTED),
    ]
    maker_closed, taker_closed = of_type(events, OrderClosed)
    assert maker_closed == OrderClosed(
        order_id=OrderId(1),
        member_id=MemberId(1),
        market=SYMBOL,
        status=OrderStatus.EXECUTED,
        reason=CloseReason.FILLED,
        executed=Amount(5),
        funds_spent=MARKET.funds(Price(100), Amount(5)),
    )
    assert taker_closed.order_id == 3
    assert taker_closed.status is OrderStatus.EXECUTED
    assert taker_closed.funds_spent == MARKET.funds(Price(100), Amount(5)) + MARKET.funds(
        Price(101), Amount(2)
    )


def test_trade_ids_start_at_one_and_increase_by_one_per_trade() -> None:
    e = book(sell(1, 100, 1), sell(2, 100, 1), sell(3, 100, 1))
    first = of_type(e.process(buy(4, 100, 2), 4), Trade)
    second = of_type(e.process(buy(5, 100, 1), 5), Trade)
    assert [t.trade_id for t in first + second] == [1, 2, 3]
    assert e.next_trade_id == 4


def test_a_maker_that_is_partially_filled_gets_an_update_but_no_close() -> None:
    e = book(sell(1, 100, 10))
    events = e.process(buy(2, 100, 4), 2)
    assert [c.order_id for c in of_type(events, OrderClosed)] == [2]
    assert e.open_order(OrderId(1)) is not None


# --------------------------------------------------------------------------- IOC, FOK, post-only


def test_ioc_remainder_is_closed_and_never_rests() -> None:
    e = book(sell(1, 100, 5))
    events = e.process(buy(2, 100, 8, tif=TimeInForce.IOC), 2)
    closed = of_type(events, OrderClosed)[-1]
    assert (closed.order_id, closed.status, closed.reason, closed.executed) == (
        2,
        OrderStatus.CLOSED,
        CloseReason.IOC_REMAINDER,
        5,
    )
    assert closed.funds_spent == MARKET.funds(Price(100), Amount(5))
    assert e.best_bid() is None
    assert e.open_order_count() == 0


def test_ioc_without_liquidity_closes_with_nothing_executed() -> None:
    e = book(sell(1, 105, 5))
    events = e.process(buy(2, 100, 8, tif=TimeInForce.IOC), 2)
    assert kinds(events) == ["OrderAccepted", "OrderClosed"]
    closed = of_type(events, OrderClosed)[0]
    assert (closed.status, closed.reason, closed.executed) == (
        OrderStatus.CLOSED,
        CloseReason.IOC_REMAINDER,
        0,
    )


def test_ioc_that_fills_completely_closes_as_executed() -> None:
    e = book(sell(1, 100, 5))
    closed = of_type(e.process(buy(2, 100, 5, tif=TimeInForce.IOC), 2), OrderClosed)[-1]
    assert (closed.order_id, closed.status, closed.reason) == (2, OrderStatus.EXECUTED, CloseReason.FILLED)


def test_fok_fills_completely_when_the_book_holds_enough() -> None:
    e = book(sell(1, 100, 5), sell(2, 101, 5))
    events = e.process(buy(3, 101, 8, tif=TimeInForce.FOK), 3)
    assert sum(t.amount for t in of_type(events, Trade)) == 8
    assert of_type(events, OrderClosed)[-1].status is OrderStatus.EXECUTED


def test_fok_does_nothing_when_the_book_cannot_fill_it_all() -> None:
    e = book(sell(1, 100, 5), sell(2, 102, 5))
    before = e.snapshot()
    events = e.process(buy(3, 101, 8, tif=TimeInForce.FOK), 3)
    assert kinds(events) == ["OrderAccepted", "OrderClosed"]
    closed = of_type(events, OrderClosed)[0]
    assert (closed.status, closed.reason, closed.executed) == (
        OrderStatus.CLOSED,
        CloseReason.FOK_NOT_FILLED,
        0,
    )
    # only the recently-closed window changed: the book is exactly as it was
    assert [o.order_id for o in e.open_orders()] == [1, 2]
    assert e.depth(10) == MatchingEngine.restore(MARKET, before).depth(10)


def test_fok_without_any_crossing_liquidity_is_closed() -> None:
    e = book(sell(1, 105, 5))
    closed = of_type(e.process(buy(2, 100, 1, tif=TimeInForce.FOK), 2), OrderClosed)[0]
    assert closed.reason is CloseReason.FOK_NOT_FILLED


def test_fok_does_not_count_the_members_own_orders_as_liquidity() -> None:
    e = book(sell(1, 100, 5, member=7), sell(2, 100, 5, member=8))
    events = e.process(buy(3, 100, 8, member=7, tif=TimeInForce.FOK), 3)
    assert not of_type(events, Trade)
    assert of_type(events, OrderClosed)[-1].reason is CloseReason.FOK_NOT_FILLED
    assert e.open_order(OrderId(1)) is not None  # nothing happened, not even self-trade prevention


def test_post_only_that_would_trade_is_closed_and_nothing_trades() -> None:
    e = book(sell(1, 100, 5))
    events = e.process(buy(2, 100, 5, post_only=True), 2)
    assert kinds(events) == ["OrderAccepted", "OrderClosed"]
    closed = of_type(events, OrderClosed)[0]
    assert (closed.status, closed.reason, closed.executed) == (
        OrderStatus.CLOSED,
        CloseReason.POST_ONLY_WOULD_TRADE,
        0,
    )
    assert e.open_order(OrderId(1)) is not None
    assert e.best_bid() is None


def test_post_only_that_does_not_cross_rests() -> None:
    e = book(sell(1, 100, 5))
    assert kinds(e.process(buy(2, 99, 5, post_only=True), 2)) == ["OrderAccepted"]
    assert e.best_bid() == 99


# --------------------------------------------------------------------------- market orders


def test_market_sell_is_bounded_by_its_amount_and_its_remainder_is_closed() -> None:
    e = book(buy(1, 100, 3), buy(2, 99, 3))
    events = e.process(market_order(3, Side.SELL, 10), 3)
    assert [(t.price, t.amount) for t in of_type(events, Trade)] == [(100, 3), (99, 3)]
    closed = of_type(events, OrderClosed)[-1]
    assert (closed.order_id, closed.status, closed.reason, closed.executed) == (
        3,
        OrderStatus.CLOSED,
        CloseReason.MARKET_REMAINDER,
        6,
    )
    assert closed.funds_spent == MARKET.funds(Price(100), Amount(3)) + MARKET.funds(Price(99), Amount(3))
    assert e.open_order_count() == 0


def test_market_order_that_fills_completely_closes_as_executed() -> None:
    e = book(buy(1, 100, 10))
    closed = of_type(e.process(market_order(2, Side.SELL, 4), 2), OrderClosed)[-1]
    assert (closed.status, closed.reason, closed.executed) == (OrderStatus.EXECUTED, CloseReason.FILLED, 4)
    assert e.open_order(OrderId(1)) is not None


def test_market_order_never_rests_even_on_an_empty_book() -> None:
    e = engine()
    events = e.process(market_order(1, Side.BUY, 5, locked=10**9, tif=TimeInForce.GTC), 1)
    assert kinds(events) == ["OrderAccepted", "OrderClosed"]
    assert of_type(events, OrderClosed)[0].reason is CloseReason.MARKET_REMAINDER
    assert e.open_order_count() == 0


def test_market_buy_never_spends_more_than_locked_funds() -> None:
    e = book(sell(1, 100, 5), sell(2, 200, 5))
    locked = (
        MARKET.funds(Price(100), Amount(5))
        + MARKET.funds(Price(200), Amount(2))
        + MARKET.funds(Price(200), Amount(1))
        - 1
    )  # not quite 3 more
    events = e.process(market_order(3, Side.BUY, 10, locked=locked), 3)
    trades = of_type(events, Trade)
    assert [(t.price, t.amount) for t in trades] == [(100, 5), (200, 2)]
    spent = sum(t.funds for t in trades)
    assert spent <= locked
    closed = of_type(events, OrderClosed)[-1]
    assert (closed.status, closed.reason, closed.executed, closed.funds_spent) == (
        OrderStatus.CLOSED,
        CloseReason.FUNDS_EXHAUSTED,
        7,
        spent,
    )
    assert e.open_order(OrderId(2)) is not None
    assert e.depth(5)[1] == [(200, 3)]


def test_market_buy_that_cannot_afford_a_single_unit_trades_nothing() -> None:
    e = book(sell(1, 100, 5))
    events = e.process(market_order(2, Side.BUY, 5, locked=MARKET.funds(Price(100), Amount(1)) - 1), 2)
    assert not of_type(events, Trade)
    assert of_type(events, OrderClosed)[0].reason is CloseReason.FUNDS_EXHAUSTED


def test_market_buy_with_enough_funds_fills_its_amount() -> None:
    e = book(sell(1, 100, 5), sell(2, 101, 5))
    events = e.process(market_order(3, Side.BUY, 8, locked=10**12), 3)
    closed = of_type(events, OrderClosed)[-1]
    assert (closed.status, closed.executed) == (OrderStatus.EXECUTED, 8)


def test_market_buy_that_empties_the_book_before_its_funds_closes_as_market_remainder() -> None:
    e = book(sell(1, 100, 5))
    closed = of_type(e.process(market_order(2, Side.BUY, 8, locked=10**12), 2), OrderClosed)[-1]
    assert (closed.reason, closed.executed) == (CloseReason.MARKET_REMAINDER, 5)


def test_market_buy_funds_exactly_enough_for_the_amount_fill_it() -> None:
    e = book(sell(1, 100, 5))
    closed = of_type(
        e.process(market_order(2, Side.BUY, 5, locked=MARKET.funds(Price(100), Amount(5))), 2), OrderClosed
    )[-1]
    assert (closed.status, closed.executed, closed.funds_spent) == (
        OrderStatus.EXECUTED,
        5,
        MARKET.funds(Price(100), Amount(5)),
    )


def test_market_fok_buy_checks_funds_before_trading() -> None:
    e = book(sell(1, 100, 5), sell(2, 200, 5))
    poor = market_order(
        3,
        Side.BUY,
        8,
        locked=MARKET.funds(Price(100), Amount(5)) + MARKET.funds(Price(200), Amount(2)),
        tif=TimeInForce.FOK,
    )
    events = e.process(poor, 3)
    assert not of_type(events, Trade)
    assert of_type(events, OrderClosed)[0].reason is CloseReason.FOK_NOT_FILLED
    rich = market_order(
        4,
        Side.BUY,
        8,
        locked=MARKET.funds(Price(100), Amount(5)) + MARKET.funds(Price(200), Amount(3)),
        tif=TimeInForce.FOK,
    )
    closed = of_type(e.process(rich, 4), OrderClosed)[-1]
    assert (closed.order_id, closed.status, closed.executed) == (4, OrderStatus.EXECUTED, 8)


def test_market_fok_sell_that_the_book_cannot_fill_does_nothing() -> None:
    e = book(buy(1, 100, 5))
    events = e.process(market_order(2, Side.SELL, 6, tif=TimeInForce.FOK), 2)
    assert kinds(events) == ["OrderAccepted", "OrderClosed"]
    assert e.open_order(OrderId(1)) is not None


# --------------------------------------------------------------------------- cancel


def test_cancel_removes_the_order_and_reports_what_it_executed() -> None:
    e = book(sell(1, 100, 10), buy(2, 100, 4))
    events = e.process(cancel(1), 3)
    assert events == [
        OrderClosed(
            order_id=OrderId(1),
            member_id=MemberId(1),
            market=SYMBOL,
            status=OrderStatus.CANCELLED,
            reason=CloseReason.CANCELLED,
            executed=Amount(4),
            funds_spent=MARKET.funds(Price(100), Amount(4)),
        )
    ]
    assert e.open_order_count() == 0
    assert e.depth(10) == ([], [])


def test_cancel_of_an_unknown_order_is_rejected() -> None:
    only_rejection(engine().process(cancel(42), 1), RejectReason.UNKNOWN_ORDER, "cancel")


def test_cancel_of_a_closed_order_is_rejected_as_closed() -> None:
    e = book(sell(1, 100, 5), buy(2, 100, 5))
    only_rejection(e.process(cancel(1), 3), RejectReason.ORDER_CLOSED, "cancel")


def test_cancel_by_another_member_is_rejected_and_the_order_stays() -> None:
    e = book(sell(1, 100, 5))
    only_rejection(e.process(cancel(1, member=99), 2), RejectReason.UNKNOWN_ORDER, "cancel")
    assert e.open_order(OrderId(1)) is not None


def test_cancel_for_another_market_is_rejected_as_unknown_market() -> None:
    e = book(sell(1, 100, 5))
    command = CancelOrder(order_id=OrderId(1), member_id=MemberId(1), market="ETH-USD")
    only_rejection(e.process(command, 2), RejectReason.UNKNOWN_MARKET, "cancel")
    assert e.open_order(OrderId(1)) is not None


def test_cancelling_one_of_several_orders_keeps_the_others_in_time_order() -> None:
    e = book(buy(1, 100, 1), buy(2, 100, 1), buy(3, 100, 1), buy(4, 99, 1))
    e.process(cancel(2), 5)
    assert [o.order_id for o in e.open_orders()] == [1, 3, 4]
    e.process(cancel(4), 6)
    assert e.depth(10) == ([(100, 2)], [])


# --------------------------------------------------------------------------- amend


def test_amend_that_only_decreases_the_amount_keeps_time_priority() -> None:
    e = book(buy(1, 100, 10), buy(2, 100, 10))
    events = e.process(amend(1, amount=6), 3)
    assert events == [
        OrderAmended(
            order_id=OrderId(1),
            member_id=MemberId(1),
            market=SYMBOL,
            price=Price(100),
            amount=Amount(6),
            remaining=Amount(6),
            priority_kept=True,
        )
    ]
    trades = of_type(e.process(sell(3, 100, 7), 4), Trade)
    assert [(t.maker_order_id, t.amount) for t in trades] == [(1, 6), (2, 1)]


def test_amend_that_increases_the_amount_loses_time_priority() -> None:
    e = book(buy(1, 100, 10), buy(2, 100, 10))
    (amended,) = e.process(amend(1, amount=12), 3)
    assert isinstance(amended, OrderAmended)
    assert not amended.priority_kept
    trades = of_type(e.process(sell(3, 100, 7), 4), Trade)
    assert [t.maker_order_id for t in trades] == [2]


def test_amend_of_the_price_moves_the_order_to_the_back_of_the_new_level() -> None:
    e = book(buy(1, 99, 10), buy(2, 100, 10))
    events = e.process(amend(1, price=100), 3)
    assert events == [
        OrderAmended(
            order_id=OrderId(1),
            member_id=MemberId(1),
            market=SYMBOL,
            price=Price(100),
            amount=Amount(10),
            remaining=Amount(10),
            priority_kept=False,
        )
    ]
    assert e.depth(10) == ([(100, 20)], [])
    trades = of_type(e.process(sell(3, 100, 12), 4), Trade)
    assert [(t.maker_order_id, t.amount) for t in trades] == [(2, 10), (1, 2)]


def test_amend_to_the_same_price_with_a_smaller_amount_keeps_priority() -> None:
    e = book(buy(1, 100, 10), buy(2, 100, 10))
    (amended,) = e.process(amend(1, price=100, amount=9), 3)
    assert isinstance(amended, OrderAmended)
    assert amended.priority_kept


def test_amend_that_changes_nothing_keeps_priority() -> None:
    e = book(buy(1, 100, 10), buy(2, 100, 10))
    (amended,) = e.process(amend(1, price=100, amount=10), 3)
    assert isinstance(amended, OrderAmended)
    assert amended.priority_kept
    assert [o.order_id for o in e.open_orders()] == [1, 2]


def test_amend_across_the_spread_trades_at_once_at_the_makers_price() -> None:
    e = book(buy(1, 95, 10), sell(2, 100, 4), sell(3, 101, 4))
    events = e.process(amend(1, price=102), 4)
    assert kinds(events)[0] == "OrderAmended"
    trades = of_type(events, Trade)
    assert [(t.maker_order_id, t.taker_order_id, t.price, t.amount) for t in trades] == [
        (2, 1, 100, 4),
        (3, 1, 101, 4),
    ]
    view = e.open_order(OrderId(1))
    assert view is not None
    assert (view.price, view.executed, view.remaining) == (102, 8, 2)
    assert e.best_bid() == 102
    assert e.best_ask() is None


def test_amend_across_the_spread_that_fills_completely_closes_the_order() -> None:
    e = book(buy(1, 95, 4), sell(2, 100, 10))
    events = e.process(amend(1, price=100), 3)
    closed = of_type(events, OrderClosed)[-1]
    assert (closed.order_id, closed.status, closed.reason, closed.executed) == (
        1,
        OrderStatus.EXECUTED,
        CloseReason.FILLED,
        4,
    )
    assert e.open_order(OrderId(1)) is None
    assert e.best_bid() is None


def test_amend_keeps_executed_amount_and_funds_across_a_cancel_replace() -> None:
    e = book(sell(1, 100, 10), buy(2, 100, 4))
    e.process(amend(1, price=105, amount=12), 3)
    view = e.open_order(OrderId(1))
    assert view is not None
    assert (view.price, view.amount, view.executed, view.remaining, view.funds) == (
        105,
        12,
        4,
        8,
        MARKET.funds(Price(100), Amount(4)),
    )


def test_amend_to_an_amount_not_above_the_executed_amount_is_rejected() -> None:
    e = book(sell(1, 100, 10), buy(2, 100, 4))
    only_rejection(e.process(amend(1, amount=4), 3), RejectReason.AMEND_INVALID, "amend")
    only_rejection(e.process(amend(1, amount=3), 4), RejectReason.AMEND_INVALID, "amend")
    assert kinds(e.process(amend(1, amount=5), 5)) == ["OrderAmended"]


@pytest.mark.parametrize(("price", "amount"), [(None, None), (0, None), (2_000_000, None), (None, 0)])
def test_amend_with_nothing_valid_to_change_is_rejected(price: int | None, amount: int | None) -> None:
    e = book(sell(1, 100, 10))
    only_rejection(e.process(amend(1, price=price, amount=amount), 2), RejectReason.AMEND_INVALID, "amend")


def test_amend_above_the_market_maximum_amount_is_rejected() -> None:
    e = book(sell(1, 100, 10), eng=engine(make_market(max_amount=20)))
    only_rejection(e.process(amend(1, amount=21), 2), RejectReason.AMEND_INVALID, "amend")


def test_amend_of_an_unknown_order_is_rejected() -> None:
    only_rejection(engine().process(amend(5, price=100), 1), RejectReason.UNKNOWN_ORDER, "amend")


def test_amend_of_a_closed_order_is_rejected_as_closed() -> None:
    e = book(sell(1, 100, 5))
    e.process(cancel(1), 2)
    only_rejection(e.process(amend(1, price=101), 3), RejectReason.ORDER_CLOSED, "amend")


def test_amend_by_another_member_is_rejected_and_the_order_is_unchanged() -> None:
    e = book(sell(1, 100, 5))
    only_rejection(e.process(amend(1, price=101, member=2), 2), RejectReason.UNKNOWN_ORDER, "amend")
    assert e.best_ask() == 100


def test_amending_a_post_only_order_across_the_spread_is_rejected_and_changes_nothing() -> None:
    e = book(buy(1, 95, 5, post_only=True), sell(2, 100, 5))
    before = e.snapshot()
    only_rejection(e.process(amend(1, price=100), 3), RejectReason.POST_ONLY_WOULD_TRADE, "amend")
    assert e.snapshot() == before


def test_amended_order_that_empties_its_level_removes_the_level() -> None:
    e = book(sell(1, 100, 5), sell(2, 101, 5), sell(3, 102, 5))
    e.process(amend(2, price=110), 4)
    assert e.depth(10)[1] == [(100, 5), (102, 5), (110, 5)]


# --------------------------------------------------------------------------- self-trade prevention


def test_self_trade_cancels_the_resting_order_and_matching_goes_on() -> None:
    e = book(sell(1, 100, 5, member=7), sell(2, 100, 5, member=8), sell(3, 101, 5, member=7))
    events = e.process(buy(4, 101, 8, member=7), 4)
    assert kinds(events) == [
        "OrderAccepted",
        "OrderClosed",  # order 1: self trade
        "Trade",  # with order 2
        "OrderUpdated",
        "OrderUpdated",
        "OrderClosed",  # order 2 filled
        "OrderClosed",  # order 3: self trade
    ]
    stp = [c for c in of_type(events, OrderClosed) if c.reason is CloseReason.SELF_TRADE]
    assert [(c.order_id, c.status) for c in stp] == [(1, OrderStatus.CLOSED), (3, OrderStatus.CLOSED)]
    (trade,) = of_type(events, Trade)
    assert (trade.maker_member_id, trade.taker_member_id) == (8, 7)
    # the taker rests what it could not fill; the book holds nothing of member 7's on the ask side
    assert e.depth(10) == ([(101, 3)], [])


def test_self_trade_prevention_reports_what_the_cancelled_maker_had_executed() -> None:
    e = book(sell(1, 100, 10, member=7), buy(2, 100, 3, member=8))
    events = e.process(buy(3, 100, 2, member=7), 3)
    closed = of_type(events, OrderClosed)[0]
    assert (closed.order_id, closed.reason, closed.executed, closed.funds_spent) == (
        1,
        CloseReason.SELF_TRADE,
        3,
        MARKET.funds(Price(100), Amount(3)),
    )


def test_self_trade_prevention_applies_to_an_amend_across_the_spread() -> None:
    e = book(buy(1, 95, 5, member=7), sell(2, 100, 5, member=7))
    events = e.process(amend(1, price=100, member=7), 3)
    assert kinds(events) == ["OrderAmended", "OrderClosed"]
    assert of_type(events, OrderClosed)[0].reason is CloseReason.SELF_TRADE
    assert e.best_bid() == 100
    assert e.best_ask() is None


def test_self_trade_prevention_applies_to_market_orders() -> None:
    e = book(buy(1, 100, 5, member=7), buy(2, 99, 5, member=8))
    events = e.process(market_order(3, Side.SELL, 5, member=7), 3)
    assert [(t.maker_order_id, t.amount) for t in of_type(events, Trade)] == [(2, 5)]
    assert e.open_order_count() == 0


# --------------------------------------------------------------------------- read helpers


def test_depth_aggregates_levels_best_first_and_honours_the_limit() -> None:
    e = book(
        buy(1, 100, 1),
        buy(2, 100, 2),
        buy(3, 98, 3),
        buy(4, 99, 4),
        sell(5, 103, 5),
        sell(6, 101, 6),
        sell(7, 101, 7),
    )
    assert e.depth(10) == ([(100, 3), (99, 4), (98, 3)], [(101, 13), (103, 5)])
    assert e.depth(1) == ([(100, 3)], [(101, 13)])
    assert e.depth(0) == ([], [])
    assert (e.best_bid(), e.best_ask(), e.open_order_count()) == (100, 101, 7)


def test_depth_counts_only_what_remains_of_partially_filled_orders() -> None:
    e = book(sell(1, 100, 10), buy(2, 100, 4))
    assert e.depth(5) == ([], [(100, 6)])


def test_open_orders_lists_bids_then_asks_in_priority_order() -> None:
    e = book(sell(1, 102, 1), buy(2, 99, 1), sell(3, 101, 1), buy(4, 100, 1), buy(5, 100, 1))
    assert [o.order_id for o in e.open_orders()] == [4, 5, 2, 3, 1]
    view = e.open_order(OrderId(3))
    assert view is not None
    assert (view.market, view.side, view.client_order_id) == (SYMBOL, Side.SELL, None)
    assert e.open_order(OrderId(999)) is None


def test_engine_exposes_its_market() -> None:
    assert engine().market is MARKET


def test_negative_recent_ids_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="recent_ids"):
        MatchingEngine(MARKET, recent_ids=-1)


def test_zero_recent_ids_capacity_only_guards_open_orders() -> None:
    e = engine(recent_ids=0)
    e.process(buy(1, 100, 1, tif=TimeInForce.IOC), 1)
    assert kinds(e.process(buy(1, 100, 1), 2)) == ["OrderAccepted"]
    only_rejection(e.process(buy(1, 100, 1), 3), RejectReason.DUPLICATE_ORDER)

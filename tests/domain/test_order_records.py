"""Order records for a store that keeps one row per order: which orders to load, and how
events and rejections fold into the loaded records."""

from __future__ import annotations

from bourse.contracts.messages import EventBatch
from bourse.domain.order_records import OrderRecords, orders_to_load, rejected_record
from bourse.domain.order_views import OrderView
from bourse.domain.orders import (
    CloseReason,
    OrderAccepted,
    OrderAmended,
    OrderClosed,
    OrderRejected,
    OrderStatus,
    OrderType,
    OrderUpdated,
    RejectReason,
    Side,
    TimeInForce,
    Trade,
)

M = "btc_usd"


def accepted(order_id: int, member: int, side: Side, amount: int, price: int = 100) -> OrderAccepted:
    return OrderAccepted(
        order_id, member, M, side, OrderType.LIMIT, amount, price, TimeInForce.GTC, False, 1, 2
    )


def resting(order_id: int, member: int, amount: int) -> OrderView:
    return OrderView(
        id=order_id,
        member_id=member,
        market=M,
        side=Side.SELL,
        type=OrderType.LIMIT,
        price=100,
        amount=amount,
        remaining=amount,
        status=OrderStatus.SUBMITTED,
        tif=TimeInForce.GTC,
    )


def batch(*events: object, ts: int = 50) -> EventBatch:
    return EventBatch(M, 1, ts, list(events))  # type: ignore[arg-type]


def test_orders_to_load_are_those_changed_but_not_created_in_the_batches() -> None:
    batches = [
        batch(accepted(2, 1, Side.BUY, 5), Trade(1, M, 100, 5, 500, 1, 9, 2, 1, Side.BUY, 3)),
        batch(OrderUpdated(1, 9, M, 5, 0, OrderStatus.EXECUTED), OrderAmended(3, 1, M, 90, 4, 4, True)),
        batch(OrderClosed(2, 1, M, OrderStatus.EXECUTED, CloseReason.FILLED, 5, 500)),
    ]
    assert orders_to_load(batches) == {1, 3}


def test_a_fill_updates_both_orders_and_a_close_sets_the_final_numbers() -> None:
    records = OrderRecords({1: resting(1, 9, 10)})
    records.apply_events(
        batch(
            accepted(2, 1, Side.BUY, 4),
            Trade(1, M, 100, 4, 400, 1, 9, 2, 1, Side.BUY, 3),
            OrderUpdated(1, 9, M, 4, 6, OrderStatus.PARTIALLY_FILLED),
            OrderUpdated(2, 1, M, 4, 0, OrderStatus.EXECUTED),
            OrderClosed(2, 1, M, OrderStatus.EXECUTED, CloseReason.FILLED, 4, 400),
            ts=70,
        )
    )
    maker, taker = records.changed[1], records.changed[2]
    assert (maker.executed, maker.remaining, maker.funds, maker.status) == (
        4,
        6,
        400,
        OrderStatus.PARTIALLY_FILLED,
    )
    assert (taker.executed, taker.remaining, taker.funds, taker.status) == (4, 0, 400, OrderStatus.EXECUTED)
    assert taker.close_reason == CloseReason.FILLED
    assert maker.updated_at == taker.updated_at == 70
    assert [t.trade_id for t in records.trades] == [1]
    assert records.events == 5


def test_an_amend_sets_price_amount_and_status_from_what_executed() -> None:
    view = resting(1, 9, 10)
    view.executed, view.remaining, view.status = 3, 7, OrderStatus.PARTIALLY_FILLED
    records = OrderRecords({1: view})
    records.apply_events(batch(OrderAmended(1, 9, M, 95, 8, 5, False)))
    amended = records.changed[1]
    assert (amended.price, amended.amount, amended.remaining, amended.executed) == (95, 8, 5, 3)
    assert amended.status == OrderStatus.PARTIALLY_FILLED


def test_events_about_an_order_without_a_record_are_counted_and_change_nothing() -> None:
    records = OrderRecords({})
    records.apply_events(
        batch(
            OrderUpdated(5, 1, M, 1, 1, OrderStatus.PARTIALLY_FILLED),
            OrderClosed(5, 1, M, OrderStatus.CANCELLED, CloseReason.CANCELLED, 1, 0),
        )
    )
    assert records.changed == {}
    assert records.unknown_order_events == 2


def test_a_refused_place_makes_a_closed_record_only_where_the_order_has_none() -> None:
    refused = OrderRejected(7, 3, M, RejectReason.INSUFFICIENT_FUNDS, "place")
    records = OrderRecords({8: resting(8, 3, 1)})
    records.apply_rejection(refused, 99)
    records.apply_rejection(OrderRejected(8, 3, M, RejectReason.INVALID_ORDER, "place"), 99)
    records.apply_rejection(OrderRejected(9, 3, M, RejectReason.DUPLICATE_ORDER, "place"), 99)
    records.apply_rejection(OrderRejected(10, 3, M, RejectReason.UNKNOWN_ORDER, "cancel"), 99)
    assert list(records.rejected) == [7]
    record = records.rejected[7]
    assert record == rejected_record(refused, 99)
    assert (record.status, record.close_reason, record.reject_reason) == (
        OrderStatus.CLOSED,
        CloseReason.REJECTED,
        RejectReason.INSUFFICIENT_FUNDS,
    )
    assert (record.side, record.amount, record.updated_at) == (None, None, 99)


def test_an_acceptance_replaces_a_record_made_from_a_rejection() -> None:
    records = OrderRecords({})
    records.apply_rejection(OrderRejected(7, 3, M, RejectReason.INVALID_ORDER, "place"), 10)
    records.apply_events(batch(accepted(7, 3, Side.SELL, 2)))
    assert records.rejected == {}
    assert records.changed[7].status == OrderStatus.SUBMITTED
    assert records.changed[7].amount == 2

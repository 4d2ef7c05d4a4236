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
from bourse.domain.values import Amount, MemberId, OrderId, Price, QuoteUnits, TradeId

M = "btc_usd"


def accepted(order_id: int, member: int, side: Side, amount: int, price: int = 100) -> OrderAccepted:
    return OrderAccepted(
        OrderId(order_id),
        MemberId(member),
        M,
        side,
        OrderType.LIMIT,
        Amount(amount),
        Price(price),
        TimeInForce.GTC,
        False,
        1,
        2,
    )


def resting(order_id: int, member: int, amount: int) -> OrderView:
    return OrderView(
        id=OrderId(order_id),
        member_id=MemberId(member),
        market=M,
        side=Side.SELL,
        type=OrderType.LIMIT,
        price=Price(100),
        amount=Amount(amount),
        remaining=Amount(amount),
        status=OrderStatus.SUBMITTED,
        tif=TimeInForce.GTC,
    )


def batch(*events: object, ts: int = 50) -> EventBatch:
    return EventBatch(M, 1, ts, list(events))  # type: ignore[arg-type]


def test_orders_to_load_are_those_changed_but_not_created_in_the_batches() -> None:
    batches = [
        batch(
            accepted(2, 1, Side.BUY, 5),
            Trade(
                TradeId(1),
                M,
                Price(100),
                Amount(5),
                QuoteUnits(500),
                OrderId(1),
                MemberId(9),
                OrderId(2),
                MemberId(1),
                Side.BUY,
                3,
            ),
        ),
        batch(
            OrderUpdated(OrderId(1), MemberId(9), M, Amount(5), Amount(0), OrderStatus.EXECUTED),
            OrderAmended(OrderId(3), MemberId(1), M, Price(90), Amount(4), Amount(4), True),
        ),
        batch(
            OrderClosed(
                OrderId(2),
                MemberId(1),
                M,
                OrderStatus.EXECUTED,
                CloseReason.FILLED,
                Amount(5),
                QuoteUnits(500),
            )
        ),
    ]
    assert orders_to_load(batches) == {1, 3}


def test_a_fill_updates_both_orders_and_a_close_sets_the_final_numbers() -> None:
    records = OrderRecords({1: resting(1, 9, 10)})
    records.apply_events(
        batch(
            accepted(2, 1, Side.BUY, 4),
            Trade(
                TradeId(1),
                M,
                Price(100),
                Amount(4),
                QuoteUnits(400),
                OrderId(1),
                MemberId(9),
                OrderId(2),
                MemberId(1),
                Side.BUY,
                3,
            ),
            OrderUpdated(OrderId(1), MemberId(9), M, Amount(4), Amount(6), OrderStatus.PARTIALLY_FILLED),
            OrderUpdated(OrderId(2), MemberId(1), M, Amount(4), Amount(0), OrderStatus.EXECUTED),
            OrderClosed(
                OrderId(2),
                MemberId(1),
                M,
                OrderStatus.EXECUTED,
                CloseReason.FILLED,
                Amount(4),
                QuoteUnits(400),
            ),
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
    view.executed, view.remaining, view.status = Amount(3), Amount(7), OrderStatus.PARTIALLY_FILLED
    records = OrderRecords({1: view})
    records.apply_events(
        batch(OrderAmended(OrderId(1), MemberId(9), M, Price(95), Amount(8), Amount(5), False))
    )
    amended = records.changed[1]
    assert (amended.price, amended.amount, amended.remaining, amended.executed) == (95, 8, 5, 3)
    assert amended.status == OrderStatus.PARTIALLY_FILLED


def test_events_about_an_order_without_a_record_are_counted_and_change_nothing() -> None:
    records = OrderRecords({})
    records.apply_events(
        batch(
            OrderUpdated(OrderId(5), MemberId(1), M, Amount(1), Amount(1), OrderStatus.PARTIALLY_FILLED),
            OrderClosed(
                OrderId(5),
                MemberId(1),
                M,
                OrderStatus.CANCELLED,
                CloseReason.CANCELLED,
                Amount(1),
                QuoteUnits(0),
            ),
        )
    )
    assert records.changed == {}
    assert records.unknown_order_events == 2


def test_a_refused_place_makes_a_closed_record_only_where_the_order_has_none() -> None:
    refused = OrderRejected(OrderId(7), MemberId(3), M, RejectReason.INSUFFICIENT_FUNDS, "place")
    records = OrderRecords({8: resting(8, 3, 1)})
    records.apply_rejection(refused, 99)
    records.apply_rejection(
        OrderRejected(OrderId(8), MemberId(3), M, RejectReason.INVALID_ORDER, "place"), 99
    )
    records.apply_rejection(
        OrderRejected(OrderId(9), MemberId(3), M, RejectReason.DUPLICATE_ORDER, "place"), 99
    )
    records.apply_rejection(
        OrderRejected(OrderId(10), MemberId(3), M, RejectReason.UNKNOWN_ORDER, "cancel"), 99
    )
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
    records.apply_rejection(
        OrderRejected(OrderId(7), MemberId(3), M, RejectReason.INVALID_ORDER, "place"), 10
    )
    records.apply_events(batch(accepted(7, 3, Side.SELL, 2)))
    assert records.rejected == {}
    assert records.changed[7].status == OrderStatus.SUBMITTED
    assert records.changed[7].amount == 2

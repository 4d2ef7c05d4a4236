"""Order records: the engine's events folded into one record per order, for a store that keeps
orders as rows (the persistence service's SQL tables) instead of in memory.

The rules are those of the query service's projection (`bourse.domain.order_views`), applied
to the `OrderView`s of the orders a run of batches touches, which the store loads first
(`orders_to_load`):

- `accepted` makes a record (`submitted`, remaining = amount), replacing one made from a
  rejection;
- `trade` adds its funds to both orders' `funds`;
- `updated` sets executed, remaining and status; `amended` sets price, amount, remaining, and
  executed = amount - remaining, status `partially_filled` if anything executed else
  `submitted`; `closed` sets status, close reason, executed, remaining = amount - executed and
  funds = funds_spent;
- a rejected place (from the engine or the accounts stage) makes a `closed` record with
  `close_reason = rejected` and the reject reason, only if the order has none: side, type,
  price, amount and tif are unknown (None). A DUPLICATE_ORDER rejection names an order that
  exists already and makes nothing; rejected cancels and amends change nothing.

Events about an order that has no record (accepted before the oldest message the stream still
holds) are counted in `unknown_order_events` and otherwise ignored.

Each batch's `updated_at` is its `received_at` (EVENTS) or the time the report was stored
(ACCOUNTS). Pure: no I/O, no clock; deciding which batches are repeats is the caller's job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from bourse.domain.order_views import OrderView
from bourse.domain.orders import (
    CloseReason,
    OrderAccepted,
    OrderAmended,
    OrderClosed,
    OrderRejected,
    OrderStatus,
    OrderUpdated,
    RejectReason,
    Trade,
)

if TYPE_CHECKING:
    from bourse.contracts import EventBatch

__all__ = ["OrderRecords", "orders_to_load", "rejected_record"]

_SUBMITTED = OrderStatus.SUBMITTED
_PARTIAL = OrderStatus.PARTIALLY_FILLED
_CLOSED = OrderStatus.CLOSED
_CHANGING = (OrderUpdated, OrderAmended, OrderClosed)


def orders_to_load(batches: Iterable[EventBatch]) -> set[int]:
    """Ids of the orders these batches change without creating them: what the store must load."""
    created: set[int] = set()
    needed: set[int] = set()
    for batch in batches:
        for event in batch.events:
            if isinstance(event, OrderAccepted):
                created.add(event.order_id)
            elif isinstance(event, Trade):
                if event.maker_order_id not in created:
                    needed.add(event.maker_order_id)
                if event.taker_order_id not in created:
                    needed.add(event.taker_order_id)
            elif isinstance(event, _CHANGING) and event.order_id not in created:
                needed.add(event.order_id)
    return needed


def rejected_record(event: OrderRejected, ts: int) -> OrderView | None:
    """The record a rejection makes when the order has none yet, or None if it makes none
    (a rejected cancel or amend, or a DUPLICATE_ORDER place)."""
    if event.command != "place" or event.reason == RejectReason.DUPLICATE_ORDER:
        return None
    return OrderView(
        id=event.order_id,
        member_id=event.member_id,
        market=event.market,
        side=None,
        type=None,
        price=None,
        amount=None,
        status=_CLOSED,
        close_reason=CloseReason.REJECTED,
        reject_reason=event.reason,
        updated_at=ts,
    )


class OrderRecords:
    """Folds engine batches into the records of `known` (the loaded orders, mutated in place).

    After applying: `changed` holds every record to write whole (insert or replace), `rejected`
    the records to insert only where the order has no row yet, `trades` every trade in order."""

    def __init__(self, known: Mapping[int, OrderView]) -> None:
        self._orders: dict[int, OrderView] = dict(known)
        self.changed: dict[int, OrderView] = {}
        self.rejected: dict[int, OrderView] = {}
        self.trades: list[Trade] = []
        self.events = 0
        self.unknown_order_events = 0

    def apply_events(self, batch: EventBatch) -> None:
        ts = batch.received_at
        for event in batch.events:
            if isinstance(event, OrderAmended):
                self._amended(event, ts)
            elif isinstance(event, OrderUpdated):
                self._updated(event, ts)
            elif isinstance(event, Trade):
                self._trade(event)
            elif isinstance(event, OrderAccepted):
                self._accepted(event, ts)
            elif isinstance(event, OrderClosed):
                self._closed(event, ts)
            else:
                self.apply_rejection(event, ts)
        self.events += len(batch.events)

    def apply_rejection(self, event: OrderRejected, ts: int) -> None:
        if event.order_id in self._orders:
            return
        record = rejected_record(event, ts)
        if record is not None:
            self._orders[event.order_id] = record
            self.rejected[event.order_id] = record

    def _change(self, order_id: int) -> OrderView | None:
        view = self._orders.get(order_id)
        if view is None:
            self.unknown_order_events += 1
            return None
        self.changed[order_id] = view
        self.rejected.pop(order_id, None)
        return view

    def _accepted(self, e: OrderAccepted, ts: int) -> None:
        view = OrderView(
            id=e.order_id,
            member_id=e.member_id,
            market=e.market,
            side=e.side,
            type=e.type,
            price=e.price,
            amount=e.amount,
            remaining=e.amount,
            status=_SUBMITTED,
            tif=e.tif,
            post_only=e.post_only,
            client_order_id=e.client_order_id,
            created_at=e.created_at,
            received_at=e.received_at,
            updated_at=ts,
        )
        self._orders[e.order_id] = view
        self.changed[e.order_id] = view
        self.rejected.pop(e.order_id, None)

    def _trade(self, t: Trade) -> None:
        self.trades.append(t)
        orders = self._orders
        for order_id in (t.maker_order_id, t.taker_order_id):
            view = orders.get(order_id)
            if view is not None:
                view.funds += t.funds
                self.changed[order_id] = view
                self.rejected.pop(order_id, None)

    def _updated(self, e: OrderUpdated, ts: int) -> None:
        view = self._change(e.order_id)
        if view is None:
            return
        view.executed = e.executed
        view.remaining = e.remaining
        view.status = e.status
        view.updated_at = ts

    def _amended(self, e: OrderAmended, ts: int) -> None:
        view = self._change(e.order_id)
        if view is None:
            return
        view.price = e.price
        view.amount = e.amount
        view.remaining = e.remaining
        view.executed = e.amount - e.remaining
        view.status = _PARTIAL if view.executed else _SUBMITTED
        view.updated_at = ts

    def _closed(self, e: OrderClosed, ts: int) -> None:
        view = self._change(e.order_id)
        if view is None:
            return
        view.status = e.status
        view.close_reason = e.reason
        view.executed = e.executed
        view.remaining = (view.amount or 0) - e.executed
        view.funds = e.funds_spent
        view.updated_at = ts

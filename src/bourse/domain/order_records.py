"""Order records: the engine's events folded into one record per order, for a store that keeps
orders as rows (the persistence service's SQL tables) instead of in memory.

The rules are those of the query service's projection, written once in
`bourse.domain.order_views` (`accepted_view`, `rejected_view`, `fold_trade`, `fold_updated`,
`fold_amended`, `fold_closed`) and applied here to the `OrderView`s of the orders a run of
batches touches, which the store loads first (`orders_to_load`). A rejected place makes a record
only if the order has none; such a record (`rejected`) is inserted only where the order has no
row yet, every other record changed (`changed`) is written whole.

Events about an order that has no record (accepted before the oldest message the stream still
holds) are counted in `unknown_order_events` and otherwise ignored.

Each batch's `updated_at` is its `received_at` (EVENTS) or the time the report was stored
(ACCOUNTS). Pure: no I/O, no clock; deciding which batches are repeats is the caller's job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bourse.domain.order_views import (
    EventBatch,
    OrderView,
    accepted_view,
    fold_amended,
    fold_closed,
    fold_trade,
    fold_updated,
)
from bourse.domain.order_views import rejected_view as rejected_record
from bourse.domain.orders import (
    OrderAccepted,
    OrderAmended,
    OrderClosed,
    OrderRejected,
    OrderUpdated,
    Trade,
)

__all__ = ["OrderRecords", "orders_to_load", "rejected_record"]

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
                if (view := self._change(event.order_id)) is not None:
                    fold_amended(view, event, ts)
            elif isinstance(event, OrderUpdated):
                if (view := self._change(event.order_id)) is not None:
                    fold_updated(view, event, ts)
            elif isinstance(event, Trade):
                self._trade(event)
            elif isinstance(event, OrderAccepted):
                self._accepted(event, ts)
            elif isinstance(event, OrderClosed):
                if (view := self._change(event.order_id)) is not None:
                    fold_closed(view, event, ts)
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
        view = accepted_view(e, ts)
        self._orders[e.order_id] = view
        self.changed[e.order_id] = view
        self.rejected.pop(e.order_id, None)

    def _trade(self, t: Trade) -> None:
        self.trades.append(t)
        orders = self._orders
        for order_id in (t.maker_order_id, t.taker_order_id):
            view = orders.get(order_id)
            if view is not None:
                fold_trade(view, t)
                self.changed[order_id] = view
                self.rejected.pop(order_id, None)

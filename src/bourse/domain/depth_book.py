"""Depth at full price-level resolution for clients who keep a local book: one market's levels
(price -> total resting amount per side), folded from the engine's events, with a sequence.

The fold follows every resting order's side, price and remaining amount:

- `OrderAccepted` of a GTC limit order puts its whole amount at its price; the fills that
  follow in the same batch (`OrderUpdated`) take theirs off, and its `OrderClosed` (filled,
  post-only refused) takes the rest, so what it leaves is its resting remainder, which the
  engine rests silently. IOC, FOK and market orders never rest and are not followed.
- `OrderUpdated` (a fill): the order's level loses what was filled.
- `OrderAmended`: the order leaves its level and joins the new price's with the new remaining
  (a change of priority changes no level).
- `OrderClosed` (filled, cancelled, self-trade, ...): the level loses its remaining.

Within a batch the levels may pass through states the engine never had (a crossing order
counted at its price before its fills); only each touched level's total after the whole batch
is compared with the total before it, and a level whose total changed becomes a `LevelUpdate`
(`side, price, new total amount`; 0 removes the level), bids then asks, best first. After every
batch the levels equal the engine's book aggregated by price.

Sequences: `applied_seq` is the last EVENTS batch sequence folded; a batch at or below it is
ignored, so a replay or a repeat changes nothing. `sequence` is the sequence of the last batch
that changed a level, what `snapshot()` reports and what a client compares: the updates of the
batches after a snapshot's sequence, applied to it (`apply_level_updates`), give a later
snapshot. A publisher sends each batch's updates with the batch's sequence and the sequence of
the change before it, so a client sees when it missed one.

`dump()` / `DepthBook.restore()` persist the whole state (the resting orders) as msgpack bytes.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from typing import Final

import msgspec

from bourse.domain.orders import (
    EngineEvent,
    OrderAccepted,
    OrderAmended,
    OrderClosed,
    OrderType,
    OrderUpdated,
    Side,
    TimeInForce,
)
from bourse.domain.values import Amount, OrderId, Price

__all__ = ["SNAPSHOT_VERSION", "DepthBook", "DepthSnapshot", "LevelUpdate", "apply_level_updates"]

SNAPSHOT_VERSION: Final = 1

_BUY = Side.BUY
_SELL = Side.SELL
_GTC = TimeInForce.GTC
_LIMIT = OrderType.LIMIT


class LevelUpdate(msgspec.Struct, frozen=True, gc=False):
    """A level's new total: `amount` in amount units at `price`; 0 removes the level."""

    side: Side
    """BUY: a bid level, SELL: an ask level."""
    price: Price
    amount: Amount


class DepthSnapshot(msgspec.Struct, frozen=True):
    """The levels of a market as of `sequence`, best first: `(price, total amount)`."""

    market: str
    sequence: int
    """The EVENTS batch sequence of the last change these levels include (0: none yet)."""
    bids: list[tuple[Price, Amount]]
    asks: list[tuple[Price, Amount]]


def apply_level_updates(
    snapshot: DepthSnapshot, sequence: int, updates: Iterable[LevelUpdate]
) -> DepthSnapshot:
    """What a client does: `snapshot` with the updates of the batch `sequence` applied."""
    bids = dict(snapshot.bids)
    asks = dict(snapshot.asks)
    for update in updates:
        levels = bids if update.side is _BUY else asks
        if update.amount:
            levels[update.price] = update.amount
        else:
            levels.pop(update.price, None)
    return DepthSnapshot(
        snapshot.market,
        sequence,
        sorted(bids.items(), reverse=True),
        sorted(asks.items()),
    )


class _Resting:
    """A resting order as the depth sees it: its level key and what is left of it."""

    __slots__ = ("key", "remaining")

    def __init__(self, key: int, remaining: int) -> None:
        self.key = key
        """-price for a bid, price for an ask: bids and asks share one dict of totals."""
        self.remaining = remaining


class _State(msgspec.Struct, frozen=True):
    version: int
    market: str
    applied_seq: int
    sequence: int
    orders: list[tuple[OrderId, int, Amount]]
    """(order id, level key, remaining), by order id."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_State)


class DepthBook:
    """One market's price levels and sequence (see the module docstring)."""

    __slots__ = ("_applied_seq", "_ask_keys", "_bid_keys", "_orders", "_sequence", "_totals", "market")

    def __init__(self, market: str) -> None:
        self.market = market
        self._orders: dict[OrderId, _Resting] = {}
        self._totals: dict[int, int] = {}
        """Level key -> total remaining; a key < 0 is the bid at -key, a key > 0 the ask at key."""
        self._bid_keys: list[int] = []
        """Sorted ascending, so best (highest) bid first."""
        self._ask_keys: list[int] = []
        self._applied_seq = 0
        self._sequence = 0

    @property
    def applied_seq(self) -> int:
        """The last EVENTS batch sequence folded (0: none)."""
        return self._applied_seq

    @property
    def sequence(self) -> int:
        """The EVENTS batch sequence of the last change of a level (0: none)."""
        return self._sequence

    # ------------------------------------------------------------------ folding

    def apply(self, batch_seq: int, events: Iterable[EngineEvent]) -> list[LevelUpdate]:
        """Fold EVENTS batch `batch_seq`; the levels it changed (bids then asks, best first), or
        nothing if the batch was applied already."""
        if batch_seq <= self._applied_seq:
            return []
        self._applied_seq = batch_seq
        orders = self._orders
        totals = self._totals
        before: dict[int, int] = {}  # touched level key -> its total before the batch
        for event in events:
            kind = type(event)
            if kind is OrderUpdated:
                updated: OrderUpdated = event  # type: ignore[assignment]
                order = orders.get(updated.order_id)
                if order is not None:
                    key = order.key
                    total = totals[key]
                    if key not in before:
                        before[key] = total
                    remaining: int = updated.remaining
                    totals[key] = total - order.remaining + remaining
                    order.remaining = remaining
            elif kind is OrderAccepted:
                accepted: OrderAccepted = event  # type: ignore[assignment]
                price = accepted.price
                if accepted.tif is _GTC and accepted.type is _LIMIT and price is not None:
                    if accepted.order_id in orders:  # never from the engine; keep the levels right
                        self._leave(orders.pop(accepted.order_id), before)
                    key = -price if accepted.side is _BUY else price
                    orders[accepted.order_id] = _Resting(key, accepted.amount)
                    total = totals.get(key, 0)
                    if key not in before:
                        before[key] = total
                    totals[key] = total + accepted.amount
            elif kind is OrderClosed:
                closed: OrderClosed = event  # type: ignore[assignment]
                order = orders.pop(closed.order_id, None)
                if order is not None:
                    self._leave(order, before)
            elif kind is OrderAmended:
                amended: OrderAmended = event  # type: ignore[assignment]
                order = orders.get(amended.order_id)
                if order is not None:
                    self._leave(order, before)
                    key = -amended.price if order.key < 0 else amended.price
                    order.key = key
                    order.remaining = amended.remaining
                    total = totals.get(key, 0)
                    if key not in before:
                        before[key] = total
                    totals[key] = total + amended.remaining
        if not before:
            return []
        updates: list[LevelUpdate] = []
        for key in sorted(before):
            was = before[key]
            now = totals[key]
            if now == was:
                if not now:
                    del totals[key]
                continue
            keys = self._bid_keys if key < 0 else self._ask_keys
            if not now:
                del totals[key]
                del keys[bisect_left(keys, key)]
            elif not was:
                insort(keys, key)
            if key < 0:
                updates.append(LevelUpdate(_BUY, Price(-key), Amount(now)))
            else:
                updates.append(LevelUpdate(_SELL, Price(key), Amount(now)))
        if updates:
            self._sequence = batch_seq
        return updates

    def _leave(self, order: _Resting, before: dict[int, int]) -> None:
        key = order.key
        total = self._totals[key]
        if key not in before:
            before[key] = total
        self._totals[key] = total - order.remaining

    # ------------------------------------------------------------------ queries

    def snapshot(self, limit: int | None = None) -> DepthSnapshot:
        """The levels (each side's best `limit`, or all) and the sequence they reflect."""
        totals = self._totals
        bid_keys = self._bid_keys if limit is None else self._bid_keys[: max(limit, 0)]
        ask_keys = self._ask_keys if limit is None else self._ask_keys[: max(limit, 0)]
        return DepthSnapshot(
            self.market,
            self._sequence,
            [(Price(-key), Amount(totals[key])) for key in bid_keys],
            [(Price(key), Amount(totals[key])) for key in ask_keys],
        )

    def best_bid(self) -> Price | None:
        return Price(-self._bid_keys[0]) if self._bid_keys else None

    def best_ask(self) -> Price | None:
        return Price(self._ask_keys[0]) if self._ask_keys else None

    def level_count(self) -> int:
        return len(self._bid_keys) + len(self._ask_keys)

    def resting_order_count(self) -> int:
        return len(self._orders)

    # ------------------------------------------------------------------ snapshots

    def dump(self) -> bytes:
        """The whole state (resting orders and sequences) as msgpack bytes, by order id, so the
        same state gives the same bytes."""
        orders = self._orders
        state = _State(
            version=SNAPSHOT_VERSION,
            market=self.market,
            applied_seq=self._applied_seq,
            sequence=self._sequence,
            orders=[
                (order_id, orders[order_id].key, Amount(orders[order_id].remaining))
                for order_id in sorted(orders)
            ],
        )
        return _encoder.encode(state)

    @classmethod
    def restore(cls, data: bytes) -> DepthBook:
        """Rebuild a book from `dump()` bytes."""
        state = _decoder.decode(data)
        if state.version != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported depth snapshot version {state.version}")
        book = cls(state.market)
        book._applied_seq = state.applied_seq
        book._sequence = state.sequence
        totals = book._totals
        for order_id, key, remaining in state.orders:
            if not key or remaining <= 0:
                raise ValueError(f"order {order_id} has no level in a depth snapshot")
            book._orders[order_id] = _Resting(key, remaining)
            totals[key] = totals.get(key, 0) + remaining
        book._bid_keys = sorted(key for key in totals if key < 0)
        book._ask_keys = sorted(key for key in totals if key > 0)
        return book

"""The order book of one market: resting limit orders in price-time priority.

This module holds the data structure only; `bourse.domain.matching.MatchingEngine` owns it and
implements the rules. It is built for speed in CPython:

- A resting order is a plain object with `__slots__` (`RestingOrder`), mutated in place.
- Each side (`BookSide`) keeps its price levels under a *key* such that the best level always
  has the smallest key: the ask price itself for asks, the negated price for bids. So both
  sides share one matching loop, "the opposite side's best key is `keys[0]`", and an incoming
  order at `price` crosses the opposite side when `opposite.keys[0] <= -own_key`
  (`own_key` = `-price` for a buy, `price` for a sell).
- `BookSide.keys` is a plain sorted list maintained with `bisect`; with the few hundred levels
  of a real book an insert or delete is a short `memmove`, cheaper than any tree in Python.
- A price level is a `dict[order_id, RestingOrder]`: dicts keep insertion order, so the first
  entry is the oldest order (time priority), and removing any order (cancel, amend) is O(1).

All prices and amounts are integers in the market's scales (see `bourse.domain.money`), typed
`Price`, `Amount`, `QuoteUnits` and ids (`bourse.domain.values`); a level key is a plain `int`
(a price or a negated price).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from bourse.domain.orders import OrderStatus, Side
from bourse.domain.values import Amount, MemberId, OrderId, Price, QuoteUnits

Level = dict[OrderId, "RestingOrder"]
"""One price level: order id -> order, oldest first."""

_NOTHING_EXECUTED = Amount(0)
_NO_FUNDS = QuoteUnits(0)


class RestingOrder:
    """A limit order in the book (or a taker being matched). Mutable; owned by the engine.

    `key` is the order's level key on its own side: `-price` for a buy, `price` for a sell.
    """

    __slots__ = (
        "amount",
        "client_order_id",
        "created_at",
        "executed",
        "funds",
        "is_buy",
        "key",
        "member_id",
        "order_id",
        "post_only",
        "price",
        "received_at",
        "side",
    )

    def __init__(
        self,
        order_id: OrderId,
        member_id: MemberId,
        side: Side,
        price: Price,
        amount: Amount,
        executed: Amount = _NOTHING_EXECUTED,
        funds: QuoteUnits = _NO_FUNDS,
        post_only: bool = False,
        created_at: int = 0,
        received_at: int = 0,
        client_order_id: str | None = None,
    ) -> None:
        self.order_id = order_id
        self.member_id = member_id
        self.side = side
        self.is_buy = side is Side.BUY
        self.price = price
        self.key = -price if self.is_buy else price
        self.amount = amount
        """Total amount, executed part included."""
        self.executed = executed
        self.funds = funds
        """Quote units exchanged so far (spent by a buy, received by a sell)."""
        self.post_only = post_only
        self.created_at = created_at
        self.received_at = received_at
        self.client_order_id = client_order_id

    @property
    def remaining(self) -> Amount:
        return Amount(self.amount - self.executed)

    @property
    def status(self) -> OrderStatus:
        """Status of an order that is still open."""
        return OrderStatus.PARTIALLY_FILLED if self.executed else OrderStatus.SUBMITTED

    def set_price(self, price: Price) -> None:
        self.price = price
        self.key = -price if self.is_buy else price

    def __repr__(self) -> str:
        return (
            f"RestingOrder(id={self.order_id}, member={self.member_id}, {self.side.value} "
            f"{self.executed}/{self.amount} @ {self.price})"
        )


class BookSide:
    """One side of the book: price levels sorted best first by key."""

    __slots__ = ("is_buy", "keys", "levels")

    def __init__(self, is_buy: bool) -> None:
        self.is_buy = is_buy
        self.keys: list[int] = []
        """Sorted ascending; `keys[0]` is the best level."""
        self.levels: dict[int, Level] = {}

    def add(self, order: RestingOrder) -> None:
        """Append `order` at the back of its price level."""
        key = order.key
        level = self.levels.get(key)
        if level is None:
            level = self.levels[key] = {}
            keys = self.keys
            keys.insert(bisect_left(keys, key), key)
        level[order.order_id] = order

    def remove(self, order: RestingOrder) -> None:
        """Take `order` out of its level (it must be in the book at `order.key`)."""
        key = order.key
        level = self.levels[key]
        del level[order.order_id]
        if not level:
            del self.levels[key]
            keys = self.keys
            del keys[bisect_left(keys, key)]

    def best_price(self) -> Price | None:
        if not self.keys:
            return None
        key = self.keys[0]
        return Price(-key if self.is_buy else key)

    def depth(self, limit: int) -> list[tuple[Price, Amount]]:
        """Up to `limit` levels, best first, as (price, total remaining amount)."""
        out: list[tuple[Price, Amount]] = []
        levels = self.levels
        sign = -1 if self.is_buy else 1
        for key in self.keys[: max(limit, 0)]:
            total = 0
            for order in levels[key].values():
                total += order.amount - order.executed
            out.append((Price(sign * key), Amount(total)))
        return out

    def orders(self) -> Iterator[RestingOrder]:
        """Every order of this side in priority order (best price first, oldest first)."""
        levels = self.levels
        for key in self.keys:
            yield from levels[key].values()

    def __len__(self) -> int:
        return sum(len(level) for level in self.levels.values())


class OrderBook:
    """Both sides of one market plus the index of open orders by id."""

    __slots__ = ("asks", "bids", "orders")

    def __init__(self) -> None:
        self.bids = BookSide(is_buy=True)
        self.asks = BookSide(is_buy=False)
        self.orders: dict[OrderId, RestingOrder] = {}

    def side(self, is_buy: bool) -> BookSide:
        return self.bids if is_buy else self.asks

    def add(self, order: RestingOrder) -> None:
        (self.bids if order.is_buy else self.asks).add(order)
        self.orders[order.order_id] = order

    def remove(self, order: RestingOrder) -> None:
        (self.bids if order.is_buy else self.asks).remove(order)
        del self.orders[order.order_id]

    def is_crossed(self) -> bool:
        """True if the best bid is at or above the best ask (never true after a command)."""
        bid = self.bids.best_price()
        ask = self.asks.best_price()
        return bid is not None and ask is not None and bid >= ask

    def __len__(self) -> int:
        return len(self.orders)

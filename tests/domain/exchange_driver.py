"""Accounts stage + matching engines wired as in production, for the property tests.

Each command goes through `Accounts.submit`, what it forwards through the market's
`MatchingEngine.process`, and every event back through `Accounts.apply`. Operations are small
frozen dataclasses so that hypothesis prints a readable failing sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import msgspec
from hypothesis import strategies as st

from bourse.domain.accounts import Accounts, FeeSchedule, OrderLock
from bourse.domain.ledger import LedgerError
from bourse.domain.matching import MatchingEngine
from bourse.domain.money import Currency, Market
from bourse.domain.orders import (
    AmendOrder,
    CancelOrder,
    EngineCommand,
    EngineEvent,
    OrderRejected,
    OrderType,
    PlaceOrder,
    Side,
    TimeInForce,
)
from bourse.domain.values import Amount, MemberId, OrderId, Price

BTC = Currency("BTC", 3)
ETH = Currency("ETH", 2)
USD = Currency("USD", 4)
# base factor 10, funds factor 1
BTC_USD = Market(
    "BTC-USD", BTC, USD, amount_precision=2, price_precision=2, max_price=Price(200), max_amount=Amount(50)
)
# base factor 10, funds factor 100
ETH_USD = Market(
    "ETH-USD", ETH, USD, amount_precision=1, price_precision=1, max_price=Price(300), max_amount=Amount(50)
)
MARKETS = {m.symbol: m for m in (BTC_USD, ETH_USD)}
CURRENCIES = ("BTC", "ETH", "USD")
MEMBERS = (1, 2, 3, 4)
FEES = FeeSchedule(maker_ppm=2_000, taker_ppm=30_000, markets={"ETH-USD": (0, 125_000)})
MARKET_BUY_CAPS = {"ETH-USD": 150_000}


@dataclass(frozen=True)
class Deposit:
    member: int
    currency: str
    amount: int


@dataclass(frozen=True)
class Withdraw:
    member: int
    currency: str
    amount: int


@dataclass(frozen=True)
class Place:
    member: int
    market: str
    side: Side
    type: OrderType
    price: int | None
    amount: int
    tif: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    reuse: int | None = None
    """Reuse the id of an earlier order (index modulo the ids so far) instead of a new one."""


@dataclass(frozen=True)
class Cancel:
    pick: int
    """Index (modulo) into the open orders, or into every id placed so far if `stale`."""
    member: int | None = None
    """Someone else than the owner, if set."""
    stale: bool = False


@dataclass(frozen=True)
class Amend:
    pick: int
    price: int | None
    amount: int | None
    member: int | None = None
    stale: bool = False


Op = Deposit | Withdraw | Place | Cancel | Amend

T = TypeVar("T")


def rarely(strategy: st.SearchStrategy[T], default: T) -> st.SearchStrategy[T]:
    """`strategy` about one time in eight, else `default`."""
    return st.tuples(st.integers(0, 7), strategy).map(lambda t: t[1] if t[0] == 7 else default)


members = st.sampled_from(MEMBERS)
markets = st.sampled_from(sorted(MARKETS))
prices = st.integers(97, 103)
amounts = st.integers(1, 20)

deposits = st.builds(
    Deposit,
    members,
    st.sampled_from(CURRENCIES),
    st.integers(1, 40) | st.integers(1, 40).map(lambda n: n * 1_000),
)
withdrawals = st.builds(Withdraw, members, st.sampled_from(CURRENCIES), st.integers(1, 5_000))
limit_orders = st.builds(
    Place,
    members,
    markets,
    st.sampled_from(Side),
    st.just(OrderType.LIMIT),
    prices | rarely(st.sampled_from([1, 200]), 100),
    amounts,
    rarely(st.sampled_from([TimeInForce.IOC, TimeInForce.FOK]), TimeInForce.GTC),
    rarely(st.just(True), False),
    rarely(st.integers(0, 1_000), None),
)
market_orders = st.builds(
    Place,
    members,
    markets,
    st.sampled_from(Side),
    st.just(OrderType.MARKET),
    st.none(),
    amounts,
    st.sampled_from([TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK]),
    st.just(False),
    st.none(),
)
cancels = st.builds(Cancel, st.integers(0, 1_000), rarely(members, None), rarely(st.just(True), False))
amends = st.builds(
    Amend,
    st.integers(0, 1_000),
    st.none() | prices,
    st.none() | st.integers(1, 30),
    rarely(members, None),
    rarely(st.just(True), False),
)
_WEIGHTED: list[tuple[int, st.SearchStrategy[Op]]] = [
    (50, limit_orders),
    (12, market_orders),
    (14, cancels),
    (14, amends),
    (5, deposits),
    (5, withdrawals),
]


def _pick(n: int) -> st.SearchStrategy[Op]:
    for weight, strategy in _WEIGHTED:
        if n < weight:
            return strategy
        n -= weight
    raise AssertionError(n)


ops: st.SearchStrategy[Op] = st.integers(0, sum(w for w, _ in _WEIGHTED) - 1).flatmap(_pick)
"""One operation: mostly limit orders, then cancels, amends, market orders, deposits, withdrawals."""


class Exchange:
    """One accounts shard (or several) in front of one engine per market."""

    def __init__(self, shards: int = 1) -> None:
        self.shards = [
            Accounts(MARKETS, FEES, market_buy_caps=MARKET_BUY_CAPS, record_entries=True)
            for _ in range(shards)
        ]
        self.engines = {symbol: MatchingEngine(market) for symbol, market in MARKETS.items()}
        self.ids: list[tuple[int, int, str]] = []
        """(order id, member, market) of every order placed, accepted or not."""
        self.next_id = 1
        self.ts = 0

    @property
    def accounts(self) -> Accounts:
        return self.shards[0]

    def shard(self, member: int) -> Accounts:
        return self.shards[member % len(self.shards)]

    def command(self, op: Place | Cancel | Amend) -> EngineCommand:
        """The command an operation stands for (ids resolved against the orders so far)."""
        if isinstance(op, Place):
            if op.reuse is not None and self.ids:
                order_id = self.ids[op.reuse % len(self.ids)][0]
            else:
                order_id = self.next_id
                self.next_id += 1
            self.ids.append((order_id, op.member, op.market))
            return PlaceOrder(
                OrderId(order_id),
                MemberId(op.member),
                op.market,
                op.side,
                op.type,
                Amount(op.amount),
                None if op.price is None else Price(op.price),
                op.tif,
                op.post_only,
                created_at=self.ts,
            )
        member: int
        open_orders = [(o.order_id, o.member_id, o.market) for o in self.open_orders()]
        if open_orders and not op.stale:
            order_id, member, market = open_orders[op.pick % len(open_orders)]
        elif self.ids:
            order_id, member, market = self.ids[op.pick % len(self.ids)]
        else:
            order_id, member, market = 10**9, 1, "BTC-USD"
        if op.member is not None:
            member = op.member
        if isinstance(op, Cancel):
            return CancelOrder(OrderId(order_id), MemberId(member), market)
        price = None if op.price is None else Price(op.price)
        amount = None if op.amount is None else Amount(op.amount)
        return AmendOrder(OrderId(order_id), MemberId(member), market, price, amount)

    def run(self, op: Op) -> list[object]:
        """Apply one operation everywhere; returns every output, in order."""
        self.ts += 1_000
        out: list[object] = []
        if isinstance(op, Deposit | Withdraw):
            accounts = self.shard(op.member)
            try:
                if isinstance(op, Deposit):
                    accounts.deposit(MemberId(op.member), op.currency, op.amount, ref_id=self.ts)
                else:
                    accounts.withdraw(MemberId(op.member), op.currency, op.amount, ref_id=self.ts)
            except LedgerError as error:
                out.append(("refused", type(error).__name__))
            out += accounts.take_changes()
            out += accounts.take_entries()
            return out
        cmd = self.command(op)
        accounts = self.shard(cmd.member_id)
        forwarded = accounts.submit(cmd)
        out.append(forwarded)
        out += accounts.take_changes()
        out += accounts.take_entries()
        if isinstance(forwarded, OrderRejected):
            return out
        for event in self.engines[forwarded.market].process(forwarded, self.ts):
            out.append(event)
            for shard in self.shards:
                out += shard.apply(event)
                out += shard.take_entries()
        return out

    def open_orders(self) -> list[OrderLock]:
        """Open orders of every shard, by id."""
        return sorted((o for shard in self.shards for o in shard.open_orders()), key=lambda o: o.order_id)

    def snapshot(self) -> list[bytes]:
        return [shard.snapshot() for shard in self.shards] + [
            self.engines[symbol].snapshot() for symbol in sorted(self.engines)
        ]

    @classmethod
    def restore(cls, other: Exchange) -> Exchange:
        """A new exchange rebuilt from `other`'s snapshots (and its id bookkeeping)."""
        copy = cls(len(other.shards))
        copy.shards = [
            Accounts.restore(
                MARKETS, FEES, shard.snapshot(), market_buy_caps=MARKET_BUY_CAPS, record_entries=True
            )
            for shard in other.shards
        ]
        copy.engines = {
            symbol: MatchingEngine.restore(MARKETS[symbol], engine.snapshot())
            for symbol, engine in other.engines.items()
        }
        copy.ids = list(other.ids)
        copy.next_id = other.next_id
        copy.ts = other.ts
        return copy


def encode(outputs: list[object]) -> bytes:
    return msgspec.msgpack.encode(outputs)


__all__ = [
    "CURRENCIES",
    "FEES",
    "MARKETS",
    "MEMBERS",
    "Amend",
    "Cancel",
    "Deposit",
    "EngineEvent",
    "Exchange",
    "Op",
    "Place",
    "Withdraw",
    "encode",
    "ops",
]

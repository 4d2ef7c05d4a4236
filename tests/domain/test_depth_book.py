"""The depth book fed by the real matching engine: its levels are the engine's book aggregated by
price after every batch, a snapshot plus the later updates is a later snapshot, a repeated batch
changes nothing, and dump/restore resumes where it stopped."""

from __future__ import annotations

import random
from collections.abc import Iterable

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from bourse.domain.depth_book import DepthBook, DepthSnapshot, LevelUpdate, apply_level_updates
from bourse.domain.matching import MatchingEngine
from bourse.domain.orders import (
    AmendOrder,
    CancelOrder,
    EngineCommand,
    EngineEvent,
    OrderType,
    PlaceOrder,
    Side,
    TimeInForce,
)
from bourse.domain.values import Amount, MemberId, OrderId, Price
from tests.domain.engine_support import SYMBOL, amend, buy, cancel, make_market, market_order, sell

MARKET = make_market(min_amount=1, max_amount=30, max_price=110)


def levels(book: DepthBook) -> tuple[list[tuple[Price, Amount]], list[tuple[Price, Amount]]]:
    snapshot = book.snapshot()
    return snapshot.bids, snapshot.asks


class Flow:
    """An engine and a depth book fed the same batches, one batch per `send`."""

    def __init__(self) -> None:
        self.engine = MatchingEngine(MARKET)
        self.book = DepthBook(SYMBOL)
        self.seq = 0
        self.batches: list[tuple[int, list[EngineEvent]]] = []

    def send(self, *commands: EngineCommand, gap: int = 1) -> list[LevelUpdate]:
        return self.send_all(commands, gap)

    def send_all(self, commands: Iterable[EngineCommand], gap: int = 1) -> list[LevelUpdate]:
        """One batch of `commands`, each made after the previous one ran."""
        self.seq += gap
        events = [e for c in commands for e in self.engine.process(c, 1_000 + self.seq)]
        self.batches.append((self.seq, events))
        return self.book.apply(self.seq, events)

    def check(self) -> None:
        assert levels(self.book) == self.engine.depth(10_000)
        assert self.book.best_bid() == self.engine.best_bid()
        assert self.book.best_ask() == self.engine.best_ask()


def bid(price: int, amount: int) -> LevelUpdate:
    return LevelUpdate(Side.BUY, Price(price), Amount(amount))


def ask(price: int, amount: int) -> LevelUpdate:
    return LevelUpdate(Side.SELL, Price(price), Amount(amount))


# --------------------------------------------------------------------------- scripted


def test_resting_orders_make_levels_and_updates_carry_new_totals() -> None:
    flow = Flow()
    assert flow.send(buy(1, 100, 5)) == [bid(100, 5)]
    assert flow.send(buy(2, 100, 3), sell(3, 102, 4)) == [bid(100, 8), ask(102, 4)]
    assert flow.book.sequence == 2
    snapshot = flow.book.snapshot()
    assert snapshot == DepthSnapshot(SYMBOL, 2, [(Price(100), Amount(8))], [(Price(102), Amount(4))])
    flow.check()


def test_a_fill_lowers_the_makers_level_and_a_crossing_gtc_rests_only_its_remainder() -> None:
    flow = Flow()
    flow.send(sell(1, 101, 4), sell(2, 102, 4))
    # buy 6 up to 102: takes 4 at 101 and 2 at 102, nothing rests
    assert flow.send(buy(3, 102, 6)) == [ask(101, 0), ask(102, 2)]
    flow.check()
    # buy 5 at 103: takes the 2 left at 102, rests 3 at 103 (never shown at 5)
    assert flow.send(buy(4, 103, 5)) == [bid(103, 3), ask(102, 0)]
    flow.check()


def test_ioc_fok_market_and_post_only_orders_never_rest() -> None:
    flow = Flow()
    flow.send(sell(1, 101, 4))
    assert flow.send(buy(2, 100, 3, tif=TimeInForce.IOC)) == []
    assert flow.send(buy(3, 101, 9, tif=TimeInForce.FOK)) == []
    assert flow.send(buy(4, 101, 1, post_only=True)) == []
    assert flow.book.sequence == 1, "a batch that changes no level leaves the sequence"
    assert flow.book.applied_seq == 4
    assert flow.send(market_order(5, Side.BUY, 3, locked=10**9)) == [ask(101, 1)]
    assert flow.send(buy(6, 101, 2, tif=TimeInForce.IOC)) == [ask(101, 0)]
    flow.check()
    assert flow.book.resting_order_count() == 0


def test_amends_move_amounts_between_levels() -> None:
    flow = Flow()
    flow.send(buy(1, 100, 5), buy(2, 100, 2))
    assert flow.send(amend(1, amount=3)) == [bid(100, 5)], "a decrease keeps its level"
    assert flow.send(amend(1, price=99)) == [bid(100, 2), bid(99, 3)]
    assert flow.send(amend(2, price=99, amount=2)) == [bid(100, 0), bid(99, 5)]
    assert flow.send(amend(2, price=99)) == [], "an amend that changes nothing changes no level"
    flow.send(sell(3, 103, 4))
    # the amended bid (5 now) crosses: takes the 4 at 103 and rests 1 there; the ask level empties
    assert flow.send(amend(1, price=103, amount=5)) == [bid(103, 1), bid(99, 2), ask(103, 0)]
    flow.check()


def test_cancel_and_self_trade_remove_amounts() -> None:
    flow = Flow()
    flow.send(sell(1, 101, 4, member=7), sell(2, 101, 1))
    assert flow.send(cancel(2)) == [ask(101, 4)]
    # member 7 buys through its own ask: the resting ask is closed (self-trade), the buy rests
    assert flow.send(buy(3, 101, 2, member=7)) == [bid(101, 2), ask(101, 0)]
    flow.check()


def test_a_batch_at_or_below_the_applied_sequence_changes_nothing() -> None:
    flow = Flow()
    flow.send(buy(1, 100, 5), gap=5)
    seq, events = flow.batches[0]
    dumped = flow.book.dump()
    assert flow.book.apply(seq, events) == []
    assert flow.book.apply(seq - 1, events) == []
    assert flow.book.dump() == dumped
    assert flow.book.snapshot().sequence == 5


def test_snapshot_limit_and_unknown_orders() -> None:
    flow = Flow()
    flow.send(buy(1, 100, 1), buy(2, 99, 1), buy(3, 98, 1), sell(4, 105, 1))
    assert flow.book.snapshot(limit=2).bids == [(100, 1), (99, 1)]
    assert flow.book.snapshot(limit=0).asks == []
    # events about orders the book never saw (e.g. a book started mid-stream) are ignored
    other = Flow()
    other.engine = flow.engine
    assert other.send(cancel(1)) == []
    assert other.book.snapshot().bids == []


def test_dump_is_canonical_and_restore_round_trips() -> None:
    flow = Flow()
    flow.send(sell(5, 103, 2), buy(2, 100, 3), buy(9, 100, 1))
    restored = DepthBook.restore(flow.book.dump())
    assert restored.dump() == flow.book.dump()
    assert restored.snapshot() == flow.book.snapshot()
    assert (restored.applied_seq, restored.sequence) == (1, 1)


# --------------------------------------------------------------------------- random flows

MEMBERS = 4
PRICES = st.integers(95, 106)
AMOUNTS = st.integers(1, 12)
PICK = st.integers(0, 1_000)
"""Which open order a cancel or an amend names (by position, modulo the open orders); none
open: the newest id, which the engine refuses."""


def member_of(order_id: int) -> MemberId:
    """Few members, fixed per order: cancels and amends name the owner; orders self-trade."""
    return MemberId(order_id % MEMBERS + 1)


LIMIT_OPS = st.tuples(
    st.just("limit"),
    st.sampled_from(Side),
    PRICES,
    AMOUNTS,
    st.sampled_from([TimeInForce.GTC] * 4 + [TimeInForce.IOC, TimeInForce.FOK]),
    st.sampled_from([False] * 4 + [True]),
)
MARKET_OPS = st.tuples(
    st.just("market"),
    st.sampled_from(Side),
    AMOUNTS,
    st.sampled_from([TimeInForce.IOC, TimeInForce.FOK]),
    st.integers(0, 20 * 106 * MARKET.funds_factor),
)
CANCEL_OPS = st.tuples(st.just("cancel"), PICK)
AMEND_OPS = st.tuples(st.just("amend"), PICK, st.none() | PRICES, st.none() | st.integers(1, 16))
OPS = st.sampled_from([LIMIT_OPS] * 6 + [MARKET_OPS, CANCEL_OPS, AMEND_OPS, AMEND_OPS]).flatmap(
    lambda ops: ops
)
"""Few prices and members: orders cross, fill partly, self-trade, get amended and cancelled
(some of them closed already, or amended below what they executed: the engine rejects those)."""

Op = tuple[object, ...]
BATCHES = st.lists(
    st.tuples(st.lists(OPS, min_size=1, max_size=3), st.integers(1, 3)), min_size=1, max_size=40
)
"""Batches of 1..3 commands, each with the gap to the previous batch's sequence."""


class Commands:
    """Turns ops into engine commands: new orders get the next id, cancels and amends name an
    open order of `engine` (mostly: some amends are refused, e.g. below the executed amount)."""

    def __init__(self, engine: MatchingEngine) -> None:
        self.engine = engine
        self.last_id = 0

    def command(self, op: Op) -> EngineCommand:
        kind = op[0]
        if kind in ("cancel", "amend"):
            open_ids = sorted(view.order_id for view in self.engine.open_orders())
            pick = int(op[1])  # type: ignore[call-overload]
            oid = open_ids[pick % len(open_ids)] if open_ids else OrderId(max(1, self.last_id))
            if kind == "cancel":
                return CancelOrder(order_id=oid, member_id=member_of(oid), market=SYMBOL)
            price, amount = op[2], op[3]
            return AmendOrder(
                order_id=oid,
                member_id=member_of(oid),
                market=SYMBOL,
                price=None if price is None else Price(int(price)),  # type: ignore[call-overload]
                amount=None if amount is None else Amount(int(amount)),  # type: ignore[call-overload]
            )
        self.last_id += 1
        oid = OrderId(self.last_id)
        if kind == "limit":
            _, side, price, amount, tif, post_only = op
            return PlaceOrder(
                order_id=oid,
                member_id=member_of(oid),
                market=SYMBOL,
                side=side,  # type: ignore[arg-type]
                type=OrderType.LIMIT,
                amount=amount,  # type: ignore[arg-type]
                price=price,  # type: ignore[arg-type]
                tif=tif,  # type: ignore[arg-type]
                post_only=bool(post_only) and tif is TimeInForce.GTC,
            )
        _, side, amount, tif, locked = op
        return PlaceOrder(
            order_id=oid,
            member_id=member_of(oid),
            market=SYMBOL,
            side=side,  # type: ignore[arg-type]
            type=OrderType.MARKET,
            amount=amount,  # type: ignore[arg-type]
            tif=tif,  # type: ignore[arg-type]
            locked=locked,  # type: ignore[arg-type]
        )


def run(
    batches: list[tuple[list[Op], int]],
) -> tuple[Flow, list[tuple[int, list[LevelUpdate], DepthSnapshot]]]:
    flow = Flow()
    commands = Commands(flow.engine)
    seen: list[tuple[int, list[LevelUpdate], DepthSnapshot]] = []
    for ops, gap in batches:
        updates = flow.send_all((commands.command(op) for op in ops), gap=gap)
        flow.check()
        seen.append((flow.seq, updates, flow.book.snapshot()))
    return flow, seen


@settings(max_examples=200, deadline=None)
@given(batches=BATCHES)
def test_levels_equal_the_engines_book_after_every_batch(
    batches: list[tuple[list[Op], int]],
) -> None:
    _, seen = run(batches)  # run() checks the book after every batch
    for seq, updates, snapshot in seen:
        assert (snapshot.sequence == seq) == bool(updates)
        assert all(update.amount >= 0 for update in updates)


@settings(max_examples=200, deadline=None)
@given(batches=BATCHES)
def test_a_snapshot_plus_the_later_updates_equals_a_later_snapshot(
    batches: list[tuple[list[Op], int]],
) -> None:
    flow, seen = run(batches)
    final = flow.book.snapshot()
    start = DepthSnapshot(SYMBOL, 0, [], [])
    for cut in range(-1, len(seen)):
        local = start if cut < 0 else seen[cut][2]
        for seq, updates, _ in seen[cut + 1 :]:
            if seq > local.sequence and updates:  # what a client does with each published batch
                local = apply_level_updates(local, seq, updates)
        assert local == final


@settings(max_examples=200, deadline=None)
@given(batches=BATCHES, cut=st.integers(0, 40))
def test_repeats_change_nothing_and_restore_resumes(batches: list[tuple[list[Op], int]], cut: int) -> None:
    flow, _ = run(batches)
    cut = min(cut, len(flow.batches))
    replayed = DepthBook(SYMBOL)
    for seq, events in flow.batches[:cut]:
        replayed.apply(seq, events)
    resumed = DepthBook.restore(replayed.dump())
    for seq, events in flow.batches:  # everything again: the first `cut` are repeats
        updates = resumed.apply(seq, events)
        if seq <= (flow.batches[cut - 1][0] if cut else 0):
            assert updates == []
    assert resumed.dump() == flow.book.dump()
    assert msgspec.msgpack.encode(resumed.snapshot()) == msgspec.msgpack.encode(flow.book.snapshot())


def test_a_long_seeded_flow_keeps_levels_equal() -> None:
    """A deeper book than the examples reach: thousands of commands, checked every batch."""
    rng = random.Random(12)
    flow = Flow()
    for step in range(3_000):
        oid = OrderId(step + 1)
        roll = rng.random()
        member = MemberId(rng.randint(1, 20))
        command: EngineCommand
        if roll < 0.5 or step < 50:
            side = rng.choice((Side.BUY, Side.SELL))
            price = 100 + rng.randint(-8, 2) * (1 if side is Side.BUY else -1)
            command = PlaceOrder(
                order_id=oid,
                member_id=member,
                market=SYMBOL,
                side=side,
                type=OrderType.LIMIT,
                amount=Amount(rng.randint(1, 30)),
                price=Price(price),
                tif=rng.choice((TimeInForce.GTC,) * 5 + (TimeInForce.IOC,)),
            )
        else:
            views = list(flow.engine.open_orders())
            if not views:
                continue
            view = rng.choice(views)
            if roll < 0.7:
                command = CancelOrder(order_id=view.order_id, member_id=view.member_id, market=SYMBOL)
            else:
                command = AmendOrder(
                    order_id=view.order_id,
                    member_id=view.member_id,
                    market=SYMBOL,
                    price=Price(max(1, view.price + rng.randint(-3, 3))),
                )
        flow.send(command)
        flow.check()
    assert flow.book.level_count() > 5

"""Properties of the matching engine over random command sequences.

`CheckedEngine` runs every command through a `MatchingEngine` and checks its events against an
independent model: price-time priority of every fill, trades accounted in both orders, executed
never above amount, a market buy never spending more than its lock, one close per order, and
the book never crossed. A hypothesis state machine and a seeded soak test drive it; the state
machine also restores snapshots and replays the commands after them.
"""

from __future__ import annotations

import random
from collections import deque

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bourse.domain.matching import MatchingEngine, OpenOrder
from bourse.domain.orders import (
    AmendOrder,
    CancelOrder,
    CloseReason,
    EngineCommand,
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
from bourse.domain.values import Amount, MemberId, OrderId, Price
from tests.domain.engine_support import SYMBOL, encode, make_market

MARKET = make_market(min_amount=1, max_amount=30, max_price=110)
REMAINDER_REASONS = {CloseReason.IOC_REMAINDER, CloseReason.MARKET_REMAINDER}


class CheckedEngine:
    """A matching engine whose every output is checked against a simple model."""

    def __init__(self, recent_ids: int = 16) -> None:
        self.engine = MatchingEngine(MARKET, recent_ids=recent_ids)
        self.ts = 0
        self.next_trade_id = 1
        self.amount: dict[int, int] = {}
        self.member: dict[int, int] = {}
        self.traded: dict[int, int] = {}
        self.traded_funds: dict[int, int] = {}
        self.open: set[int] = set()
        self.closed: set[int] = set()
        self.recent: deque[int] = deque(maxlen=recent_ids)
        """Model of the engine's window of recently closed ids (duplicates within it are refused)."""
        self.log: list[tuple[EngineCommand, int, bytes]] = []
        self.trades = 0
        self.check_every_command = True

    # -- driving

    def run(self, command: EngineCommand) -> list[EngineEvent]:
        self.ts += 1
        queue = self._crossing_queue(command)
        events = self.engine.process(command, self.ts)
        self.log.append((command, self.ts, encode(events)))
        self._check(command, events, queue)
        if self.check_every_command:
            self.check_book()
        return events

    def _crossing_queue(self, command: EngineCommand) -> list[OpenOrder]:
        """The resting orders a taker may meet, in the order it must meet them."""
        if isinstance(command, PlaceOrder):
            side, price = command.side, command.price
        elif isinstance(command, AmendOrder) and command.order_id in self.open:
            view = self.engine.open_order(command.order_id)
            assert view is not None
            side, price = view.side, command.price if command.price is not None else view.price
        else:
            return []
        opposite = Side.SELL if side is Side.BUY else Side.BUY
        queue = [o for o in self.engine.open_orders() if o.side is opposite]
        if price is None:
            return queue
        if side is Side.BUY:
            return [o for o in queue if o.price <= price]
        return [o for o in queue if o.price >= price]

    # -- checks of one command's events

    def _check(self, command: EngineCommand, events: list[EngineEvent], queue: list[OpenOrder]) -> None:
        assert events, "every command answers with at least one event"
        if isinstance(events[0], OrderRejected):
            assert len(events) == 1
            rejected = events[0]
            assert (rejected.order_id, rejected.member_id) == (command.order_id, command.member_id)
            assert (
                rejected.command
                == {PlaceOrder: "place", CancelOrder: "cancel", AmendOrder: "amend"}[type(command)]
            )
            if rejected.reason is RejectReason.DUPLICATE_ORDER:
                assert command.order_id in self.open or command.order_id in self.recent
            elif (
                isinstance(command, CancelOrder | AmendOrder) and rejected.reason is RejectReason.ORDER_CLOSED
            ):
                assert command.order_id in self.recent
            return
        if isinstance(command, PlaceOrder):
            self._check_place(command, events, queue)
        elif isinstance(command, CancelOrder):
            (closed,) = events
            assert isinstance(closed, OrderClosed)
            assert (closed.status, closed.reason) == (OrderStatus.CANCELLED, CloseReason.CANCELLED)
            self._close(closed)
        else:
            self._check_amend(command, events, queue)

    def _check_place(self, command: PlaceOrder, events: list[EngineEvent], queue: list[OpenOrder]) -> None:
        accepted = events[0]
        assert isinstance(accepted, OrderAccepted)
        oid = command.order_id
        assert oid not in self.open, "an open id is never reused"
        assert oid not in self.recent, "a recently closed id is never reused"
        self.closed.discard(oid)  # an id forgotten by the window may start a new life
        assert accepted.received_at == self.ts
        self.amount[oid] = command.amount
        self.member[oid] = command.member_id
        self.traded[oid] = 0
        self.traded_funds[oid] = 0
        self.open.add(oid)
        taker_close = self._check_fills(oid, events[1:], queue)
        if command.type is OrderType.MARKET:
            assert taker_close is not None, "a market order never rests"
            if command.side is Side.BUY:
                assert self.traded_funds[oid] <= command.locked, "a market buy spends at most its lock"
        elif taker_close is None:
            assert command.tif is TimeInForce.GTC, "IOC and FOK never rest"
        if taker_close is not None and taker_close.reason is CloseReason.FOK_NOT_FILLED:
            assert self.traded[oid] == 0
        if taker_close is not None and taker_close.reason is CloseReason.POST_ONLY_WOULD_TRADE:
            assert len(events) == 2

    def _check_amend(self, command: AmendOrder, events: list[EngineEvent], queue: list[OpenOrder]) -> None:
        amended = events[0]
        assert isinstance(amended, OrderAmended)
        oid = command.order_id
        assert oid in self.open
        if command.amount is not None:
            assert amended.amount == command.amount
        if command.price is not None:
            assert amended.price == command.price
        assert amended.amount > self.traded[oid]
        assert amended.remaining == amended.amount - self.traded[oid]
        self.amount[oid] = amended.amount
        if amended.priority_kept:
            assert len(events) == 1
            return
        self._check_fills(oid, events[1:], queue)

    def _check_fills(
        self, taker: int, events: list[EngineEvent], queue: list[OpenOrder]
    ) -> OrderClosed | None:
        """Check the fill events of one taker; return its own OrderClosed if it closed."""
        i = 0  # position in the priority queue of crossing resting orders
        left = {o.order_id: o.remaining for o in queue}
        stopped = False  # a partial fill of a maker ends the matching
        taker_close: OrderClosed | None = None
        pending_trade: Trade | None = None
        for event in events:
            assert taker_close is None, "the taker's close is the last event"
            if isinstance(event, Trade):
                assert not stopped
                assert pending_trade is None
                assert i < len(queue), "a trade with an order that does not cross"
                maker = queue[i]
                assert event.maker_order_id == maker.order_id, "fills follow price-time priority"
                assert event.price == maker.price, "trades execute at the maker's price"
                assert event.taker_order_id == taker
                assert event.maker_member_id != event.taker_member_id, "no self trade"
                assert event.amount > 0
                assert event.funds == MARKET.funds(event.price, event.amount)
                assert event.trade_id == self.next_trade_id
                assert event.ts == self.ts
                self.next_trade_id += 1
                self.trades += 1
                for oid in (maker.order_id, taker):
                    self.traded[oid] += event.amount
                    self.traded_funds[oid] += event.funds
                    assert self.traded[oid] <= self.amount[oid], "executed never exceeds amount"
                left[maker.order_id] = Amount(left[maker.order_id] - event.amount)
                assert left[maker.order_id] >= 0
                if left[maker.order_id] == 0:
                    i += 1
                else:
                    stopped = True
                pending_trade = event
            elif isinstance(event, OrderUpdated):
                assert pending_trade is not None
                oid = event.order_id
                assert oid in (pending_trade.maker_order_id, pending_trade.taker_order_id)
                assert event.executed == self.traded[oid]
                assert event.remaining == self.amount[oid] - self.traded[oid]
                assert event.status is (
                    OrderStatus.EXECUTED if event.remaining == 0 else OrderStatus.PARTIALLY_FILLED
                )
                if oid == taker:
                    pending_trade = None
            elif isinstance(event, OrderClosed):
                assert pending_trade is None, "a trade is followed by both updates first"
                if event.order_id == taker:
                    taker_close = event
                    self._close(event)
                    continue
                if event.reason is CloseReason.SELF_TRADE:
                    assert not stopped
                    assert i < len(queue)
                    assert queue[i].order_id == event.order_id
                    assert queue[i].member_id == self.member[taker]
                    assert event.status is OrderStatus.CLOSED
                    i += 1
                else:
                    assert (event.status, event.reason) == (OrderStatus.EXECUTED, CloseReason.FILLED)
                    assert self.traded[event.order_id] == self.amount[event.order_id]
                self._close(event)
            else:
                raise AssertionError(f"unexpected event {event!r}")
        assert pending_trade is None
        exhausted = taker_close is not None and taker_close.reason in {
            CloseReason.FUNDS_EXHAUSTED,
            CloseReason.FOK_NOT_FILLED,
            CloseReason.POST_ONLY_WOULD_TRADE,
        }
        taker_left = self.amount[taker] - self.traded[taker]
        if taker_left and not exhausted:
            assert i == len(queue), "a taker with something left consumed all crossing liquidity"
        if taker_close is None:
            assert taker_left > 0
        elif taker_close.reason in REMAINDER_REASONS:
            assert taker_close.status is OrderStatus.CLOSED
        return taker_close

    def _close(self, closed: OrderClosed) -> None:
        oid = closed.order_id
        assert oid in self.open, "only an open order closes"
        assert oid not in self.closed, "an order closes exactly once"
        assert closed.executed == self.traded[oid], "trades are accounted in the order"
        assert closed.funds_spent == self.traded_funds[oid]
        assert closed.executed <= self.amount[oid]
        assert (closed.status is OrderStatus.EXECUTED) == (closed.executed == self.amount[oid])
        self.open.discard(oid)
        self.closed.add(oid)
        self.recent.append(oid)

    # -- invariants of the whole book

    def check_book(self) -> None:
        bid, ask = self.engine.best_bid(), self.engine.best_ask()
        assert bid is None or ask is None or bid < ask, "the book is never crossed"
        views = list(self.engine.open_orders())
        assert {v.order_id for v in views} == self.open
        assert self.engine.open_order_count() == len(self.open)
        for view in views:
            assert 0 <= view.executed < view.amount
            assert view.executed == self.traded[view.order_id]
            assert view.funds == self.traded_funds[view.order_id]
            assert view.amount == self.amount[view.order_id]
        bids, asks = self.engine.depth(1000)
        assert [p for p, _ in bids] == sorted({v.price for v in views if v.side is Side.BUY}, reverse=True)
        assert [p for p, _ in asks] == sorted({v.price for v in views if v.side is Side.SELL})
        assert sum(a for _, a in bids) + sum(a for _, a in asks) == sum(v.remaining for v in views)
        assert self.engine.next_trade_id == self.next_trade_id

    def check_replay(self, snapshot: bytes, start: int) -> MatchingEngine:
        """Restore `snapshot` (taken before log[start]) and replay: same events, same state."""
        restored = MatchingEngine.restore(MARKET, snapshot)
        for command, ts, out in self.log[start:]:
            assert encode(restored.process(command, ts)) == out, "replay differs from the straight run"
        assert restored.snapshot() == self.engine.snapshot()
        return restored


# --------------------------------------------------------------------------- state machine

SIDES = st.sampled_from([Side.BUY, Side.SELL])
PRICES = st.integers(92, 112)  # above 110 is invalid for MARKET
AMOUNTS = st.integers(0, 32)  # 0 and above 30 are invalid
MEMBERS = st.integers(1, 4)  # few members: self-trade prevention happens often


class MatchingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.checked = CheckedEngine(recent_ids=16)
        self.checked.check_every_command = False  # the invariant below checks the book
        self.next_id = 1
        self.checkpoint = self.checked.engine.snapshot()
        self.checkpoint_at = 0

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _known_id(self, data: st.DataObject) -> int:
        if self.checked.open and data.draw(st.integers(0, 9)) < 8:
            return data.draw(st.sampled_from(sorted(self.checked.open)))
        return data.draw(st.integers(1, self.next_id + 1))

    @rule(
        side=SIDES,
        price=PRICES,
        amount=AMOUNTS,
        member=MEMBERS,
        tif=st.sampled_from([TimeInForce.GTC, TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK]),
        post_only=st.booleans(),
    )
    def place_limit(
        self, side: Side, price: int, amount: int, member: int, tif: TimeInForce, post_only: bool
    ) -> None:
        self.checked.run(
            PlaceOrder(
                order_id=OrderId(self._new_id()),
                member_id=MemberId(member),
                market=SYMBOL,
                side=side,
                type=OrderType.LIMIT,
                amount=Amount(amount),
                price=Price(price),
                tif=tif,
                post_only=post_only and tif is TimeInForce.GTC,
            )
        )

    @rule(
        side=SIDES,
        amount=AMOUNTS,
        member=MEMBERS,
        locked=st.integers(0, 40 * 110 * MARKET.funds_factor),
        tif=st.sampled_from([TimeInForce.IOC, TimeInForce.FOK]),
    )
    def place_market(self, side: Side, amount: int, member: int, locked: int, tif: TimeInForce) -> None:
        self.checked.run(
            PlaceOrder(
                order_id=OrderId(self._new_id()),
                member_id=MemberId(member),
                market=SYMBOL,
                side=side,
                type=OrderType.MARKET,
                amount=Amount(amount),
                tif=tif,
                locked=locked,
            )
        )

    @rule(data=st.data(), side=SIDES, price=PRICES, amount=AMOUNTS)
    def place_with_a_used_id(self, data: st.DataObject, side: Side, price: int, amount: int) -> None:
        oid = data.draw(st.integers(1, self.next_id))
        self.checked.run(
            PlaceOrder(
                order_id=OrderId(oid),
                member_id=MemberId(1),
                market=SYMBOL,
                side=side,
                type=OrderType.LIMIT,
                amount=Amount(amount),
                price=Price(price),
            )
        )

    @rule(data=st.data(), wrong_member=st.booleans())
    def cancel(self, data: st.DataObject, wrong_member: bool) -> None:
        oid = self._known_id(data)
        member = self.checked.member.get(oid, 1) + (10 if wrong_member else 0)
        self.checked.run(CancelOrder(order_id=OrderId(oid), member_id=MemberId(member), market=SYMBOL))

    @rule(
        data=st.data(),
        price=st.none() | PRICES,
        amount=st.none() | AMOUNTS,
        delta=st.none() | st.integers(-8, 8),
    )
    def amend(self, data: st.DataObject, price: int | None, amount: int | None, delta: int | None) -> None:
        oid = self._known_id(data)
        if delta is not None and oid in self.checked.open:
            view = self.checked.engine.open_order(OrderId(oid))
            assert view is not None
            amount = view.amount + delta  # decreases keep priority; some fall below executed
        member = self.checked.member.get(oid, 1)
        self.checked.run(
            AmendOrder(
                order_id=OrderId(oid),
                member_id=MemberId(member),
                market=SYMBOL,
                price=None if price is None else Price(price),
                amount=None if amount is None else Amount(amount),
            )
        )

    @precondition(lambda self: len(self.checked.log) > self.checkpoint_at)
    @rule(switch=st.booleans())
    def restore_and_replay(self, switch: bool) -> None:
        restored = self.checked.check_replay(self.checkpoint, self.checkpoint_at)
        if switch:  # go on with the restored engine: it must behave like the original
            self.checked.engine = restored
        self.checkpoint = self.checked.engine.snapshot()
        self.checkpoint_at = len(self.checked.log)

    @invariant()
    def book_is_consistent(self) -> None:
        self.checked.check_book()


MatchingMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMatchingMachine = MatchingMachine.TestCase


# --------------------------------------------------------------------------- other properties

COMMAND = st.one_of(
    st.builds(
        PlaceOrder,
        order_id=st.integers(1, 40),
        member_id=MEMBERS,
        market=st.just(SYMBOL),
        side=SIDES,
        type=st.sampled_from(OrderType),
        amount=AMOUNTS,
        price=st.none() | PRICES,
        tif=st.sampled_from(TimeInForce),
        post_only=st.booleans(),
        locked=st.integers(0, 50_000),
    ),
    st.builds(CancelOrder, order_id=st.integers(1, 40), member_id=MEMBERS, market=st.just(SYMBOL)),
    st.builds(
        AmendOrder,
        order_id=st.integers(1, 40),
        member_id=MEMBERS,
        market=st.just(SYMBOL),
        price=st.none() | PRICES,
        amount=st.none() | AMOUNTS,
    ),
)


@settings(max_examples=200, deadline=None)
@given(commands=st.lists(COMMAND, max_size=60))
def test_same_commands_give_the_same_events_byte_for_byte(commands: list[EngineCommand]) -> None:
    first, second = MatchingEngine(MARKET), MatchingEngine(MARKET)
    for ts, command in enumerate(commands):
        assert encode(first.process(command, ts)) == encode(second.process(command, ts))
    assert first.snapshot() == second.snapshot()


@settings(max_examples=200, deadline=None)
@given(commands=st.lists(COMMAND, max_size=60), cut=st.integers(0, 60))
def test_snapshot_restore_and_replay_equals_a_straight_run(commands: list[EngineCommand], cut: int) -> None:
    straight = MatchingEngine(MARKET, recent_ids=8)
    events = [encode(straight.process(c, ts)) for ts, c in enumerate(commands)]
    first = MatchingEngine(MARKET, recent_ids=8)
    cut = min(cut, len(commands))
    for ts, command in enumerate(commands[:cut]):
        first.process(command, ts)
    resumed = MatchingEngine.restore(MARKET, first.snapshot())
    replayed = [encode(resumed.process(c, ts)) for ts, c in enumerate(commands[cut:], start=cut)]
    assert replayed == events[cut:]
    assert resumed.snapshot() == straight.snapshot()


def test_soak_thousands_of_random_commands_on_a_deep_book() -> None:
    """A larger book than the state machine reaches, every event still checked."""
    rng = random.Random(20240601)
    checked = CheckedEngine(recent_ids=64)
    snapshot, snapshot_at = checked.engine.snapshot(), 0
    next_id = 0
    for step in range(6_000):
        roll = rng.random()
        if roll < 0.45 or not checked.open:
            next_id += 1
            side = rng.choice((Side.BUY, Side.SELL))
            mid = 101
            price = mid - rng.randint(-2, 9) if side is Side.BUY else mid + rng.randint(-2, 9)
            tif = rng.choice((TimeInForce.GTC,) * 6 + (TimeInForce.IOC, TimeInForce.FOK))
            checked.run(
                PlaceOrder(
                    order_id=OrderId(next_id),
                    member_id=MemberId(rng.randint(1, 12)),
                    market=SYMBOL,
                    side=side,
                    type=OrderType.LIMIT,
                    amount=Amount(rng.randint(1, 30)),
                    price=Price(price),
                    tif=tif,
                    post_only=tif is TimeInForce.GTC and rng.random() < 0.1,
                )
            )
        elif roll < 0.5:
            next_id += 1
            side = rng.choice((Side.BUY, Side.SELL))
            checked.run(
                PlaceOrder(
                    order_id=OrderId(next_id),
                    member_id=MemberId(rng.randint(1, 12)),
                    market=SYMBOL,
                    side=side,
                    type=OrderType.MARKET,
                    amount=Amount(rng.randint(1, 30)),
                    locked=rng.randint(1, 30 * 100 * MARKET.funds_factor),
                )
            )
        elif roll < 0.6:
            oid = rng.choice(sorted(checked.open))
            checked.run(
                CancelOrder(order_id=OrderId(oid), member_id=MemberId(checked.member[oid]), market=SYMBOL)
            )
        else:
            oid = rng.choice(sorted(checked.open))
            view = checked.engine.open_order(OrderId(oid))
            assert view is not None
            new_price = view.price + rng.randint(-4, 4) if rng.random() < 0.8 else None
            new_amount = view.amount + rng.randint(-3, 3) if rng.random() < 0.3 else None
            if new_price is None and new_amount is None:
                new_price = view.price
            checked.run(
                AmendOrder(
                    order_id=OrderId(oid),
                    member_id=view.member_id,
                    market=SYMBOL,
                    price=None if new_price is None else Price(new_price),
                    amount=None if new_amount is None else Amount(new_amount),
                )
            )
        if step % 1_000 == 999:
            checked.check_replay(snapshot, snapshot_at)
            snapshot, snapshot_at = checked.engine.snapshot(), len(checked.log)
    assert checked.trades > 500, "the soak must actually trade"
    assert len(checked.open) > 20

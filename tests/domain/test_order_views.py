"""The order read models, fed by a real matching engine: statuses, fills, funds, depth, trades,
balances, rejections by the accounts stage, idempotence by sequence, bounded memory."""

from __future__ import annotations

import random

import msgspec
import pytest

from bourse.contracts.messages import EVENT_BATCH_DECODER, AccountsReport, EventBatch, encode
from bourse.domain.accounts import BalanceChanged
from bourse.domain.matching import MatchingEngine
from bourse.domain.order_views import BalanceView, MemberTrade, OrderViews, PublicTrade
from bourse.domain.orders import (
    CloseReason,
    EngineCommand,
    EngineEvent,
    OrderRejected,
    OrderStatus,
    OrderType,
    RejectReason,
    Side,
    TimeInForce,
)
from bourse.domain.values import Amount, MemberId, OrderId, Price, QuoteUnits, TradeId
from tests.domain.engine_support import (
    MARKET,
    SYMBOL,
    amend,
    buy,
    cancel,
    limit,
    make_market,
    market_order,
    sell,
)

FF = MARKET.funds_factor


class Feed:
    """A matching engine whose every input message becomes one `EventBatch` for the views."""

    def __init__(self, views: OrderViews | None = None, engine: MatchingEngine | None = None) -> None:
        self.engine = engine or MatchingEngine(MARKET)
        self.views = views or OrderViews()
        self.seq = 0
        self.batches: list[EventBatch] = []

    def send(self, *commands: EngineCommand) -> list[EngineEvent]:
        self.seq += 1
        ts = 1_000_000 + self.seq
        events = [event for command in commands for event in self.engine.process(command, ts)]
        batch = EventBatch(self.engine.market.symbol, self.seq, ts, events)
        self.batches.append(batch)
        assert self.views.apply_events(batch)
        return events


def report(
    seq: int,
    *,
    rejected: list[OrderRejected] | None = None,
    balances: list[BalanceChanged] | None = None,
    shard: int = 0,
) -> AccountsReport:
    return AccountsReport(shard, seq, rejected or [], balances or [], [])


def test_a_resting_limit_order_is_submitted_open_and_in_the_depth() -> None:
    feed = Feed()
    feed.send(buy(1, 100, 5, member=7))
    view = feed.views.order(MemberId(7), OrderId(1))
    assert view is not None
    assert (view.status, view.side, view.type, view.price, view.amount) == (
        OrderStatus.SUBMITTED,
        Side.BUY,
        OrderType.LIMIT,
        100,
        5,
    )
    assert (view.executed, view.remaining, view.funds) == (0, 5, 0)
    assert (view.created_at, view.received_at, view.updated_at) == (10, 1_000_001, 1_000_001)
    assert view.tif == TimeInForce.GTC
    assert [v.id for v in feed.views.open_orders(MemberId(7))] == [1]
    depth = feed.views.depth(SYMBOL, 10)
    assert (depth.bids, depth.asks, depth.last_price, depth.seq) == ([(100, 5)], [], None, 1)


def test_another_members_order_is_not_found() -> None:
    feed = Feed()
    feed.send(buy(1, 100, 5, member=7))
    assert feed.views.order(MemberId(8), OrderId(1)) is None
    assert feed.views.order(MemberId(7), OrderId(2)) is None
    assert feed.views.orders(MemberId(8)) == []


def test_a_partial_fill_updates_both_orders_funds_trades_and_depth() -> None:
    feed = Feed()
    feed.send(sell(1, 100, 10, member=1))
    feed.send(sell(2, 101, 4, member=1))
    feed.send(buy(3, 101, 6, member=2))

    maker = feed.views.order(MemberId(1), OrderId(1))
    taker = feed.views.order(MemberId(2), OrderId(3))
    assert maker is not None
    assert taker is not None
    assert (maker.status, maker.executed, maker.remaining, maker.funds) == (
        OrderStatus.PARTIALLY_FILLED,
        6,
        4,
        100 * 6 * FF,
    )
    assert (taker.status, taker.close_reason, taker.executed, taker.remaining, taker.funds) == (
        OrderStatus.EXECUTED,
        CloseReason.FILLED,
        6,
        0,
        100 * 6 * FF,
    )
    assert taker.updated_at == 1_000_003
    depth = feed.views.depth(SYMBOL, 10)
    assert depth.bids == []
    assert depth.asks == [(100, 4), (101, 4)]
    assert depth.last_price == 100
    assert feed.views.trades(SYMBOL) == [
        PublicTrade(TradeId(1), SYMBOL, Price(100), Amount(6), QuoteUnits(100 * 6 * FF), Side.BUY, 1_000_003)
    ]
    assert feed.views.member_trades(MemberId(1)) == [
        MemberTrade(
            TradeId(1),
            SYMBOL,
            Price(100),
            Amount(6),
            QuoteUnits(100 * 6 * FF),
            Side.SELL,
            OrderId(1),
            "maker",
            1_000_003,
        )
    ]
    assert feed.views.member_trades(MemberId(2), SYMBOL) == [
        MemberTrade(
            TradeId(1),
            SYMBOL,
            Price(100),
            Amount(6),
            QuoteUnits(100 * 6 * FF),
            Side.BUY,
            OrderId(3),
            "taker",
            1_000_003,
        )
    ]
    assert feed.views.member_trades(MemberId(2), "other") == []
    assert [v.id for v in feed.views.open_orders(MemberId(1))] == [2, 1]
    assert feed.views.open_orders(MemberId(2)) == []


def test_a_cancelled_order_leaves_the_open_orders_and_the_depth_but_stays_readable() -> None:
    feed = Feed()
    feed.send(sell(1, 100, 10, member=1))
    feed.send(buy(2, 100, 3, member=2))
    feed.send(cancel(1, member=1))
    view = feed.views.order(MemberId(1), OrderId(1))
    assert view is not None
    assert (view.status, view.close_reason, view.executed, view.remaining, view.funds) == (
        OrderStatus.CANCELLED,
        CloseReason.CANCELLED,
        3,
        7,
        300 * FF,
    )
    assert feed.views.open_orders(MemberId(1)) == []
    assert feed.views.depth(SYMBOL, 10).asks == []
    assert [v.id for v in feed.views.orders(MemberId(1), state="closed")] == [1]
    assert [v.id for v in feed.views.orders(MemberId(1), state="cancelled")] == [1]
    assert feed.views.orders(MemberId(1), state="open") == []


def test_a_rejected_cancel_changes_nothing() -> None:
    feed = Feed()
    feed.send(sell(1, 100, 10, member=1))
    feed.send(cancel(1, member=2))
    view = feed.views.order(MemberId(1), OrderId(1))
    assert view is not None
    assert view.status == OrderStatus.SUBMITTED
    assert feed.views.depth(SYMBOL, 10).asks == [(100, 10)]


def test_amends_move_the_depth_and_keep_the_fill_state() -> None:
    feed = Feed()
    feed.send(sell(1, 105, 10, member=1))
    feed.send(buy(2, 105, 4, member=2))
    feed.send(amend(1, price=107, member=1))
    view = feed.views.order(MemberId(1), OrderId(1))
    assert view is not None
    assert (view.price, view.amount, view.executed, view.remaining, view.status) == (
        107,
        10,
        4,
        6,
        OrderStatus.PARTIALLY_FILLED,
    )
    assert feed.views.depth(SYMBOL, 10).asks == [(107, 6)]
    feed.send(amend(1, amount=8, member=1))
    assert feed.views.depth(SYMBOL, 10).asks == [(107, 4)]
    # an amend whose new price crosses trades as a taker
    feed.send(buy(3, 100, 5, member=3))
    feed.send(amend(1, price=100, member=1))
    view = feed.views.order(MemberId(1), OrderId(1))
    assert view is not None
    assert (view.status, view.executed, view.remaining) == (OrderStatus.EXECUTED, 8, 0)
    assert feed.views.depth(SYMBOL, 10).bids == [(100, 1)]
    assert feed.views.depth(SYMBOL, 10).asks == []


def test_ioc_and_market_orders_never_show_in_the_depth() -> None:
    feed = Feed()
    feed.send(sell(1, 100, 3, member=1))
    feed.send(limit(2, Side.BUY, 101, 5, member=2, tif=TimeInForce.IOC))
    ioc = feed.views.order(MemberId(2), OrderId(2))
    assert ioc is not None
    assert (ioc.status, ioc.close_reason, ioc.executed, ioc.remaining) == (
        OrderStatus.CLOSED,
        CloseReason.IOC_REMAINDER,
        3,
        2,
    )
    feed.send(sell(3, 100, 2, member=1))
    feed.send(market_order(4, Side.BUY, 5, member=2, locked=10**9))
    market = feed.views.order(MemberId(2), OrderId(4))
    assert market is not None
    assert (market.type, market.price, market.status, market.close_reason, market.executed) == (
        OrderType.MARKET,
        None,
        OrderStatus.CLOSED,
        CloseReason.MARKET_REMAINDER,
        2,
    )
    depth = feed.views.depth(SYMBOL, 10)
    assert (depth.bids, depth.asks) == ([], [])


def test_self_trade_prevention_closes_the_resting_order_and_clears_its_level() -> None:
    feed = Feed()
    feed.send(sell(1, 100, 3, member=1))
    feed.send(buy(2, 100, 3, member=1))
    closed = feed.views.order(MemberId(1), OrderId(1))
    assert closed is not None
    assert (closed.status, closed.close_reason) == (OrderStatus.CLOSED, CloseReason.SELF_TRADE)
    assert feed.views.depth(SYMBOL, 10).asks == []
    assert feed.views.depth(SYMBOL, 10).bids == [(100, 3)]


def test_an_order_the_accounts_stage_refused_is_closed_with_its_reason() -> None:
    views = OrderViews()
    refused = OrderRejected(OrderId(9), MemberId(4), SYMBOL, RejectReason.INSUFFICIENT_FUNDS, "place")
    assert views.apply_report(report(1, rejected=[refused]), ts=555)
    view = views.order(MemberId(4), OrderId(9))
    assert view is not None
    assert (view.status, view.close_reason, view.reject_reason, view.updated_at) == (
        OrderStatus.CLOSED,
        CloseReason.REJECTED,
        RejectReason.INSUFFICIENT_FUNDS,
        555,
    )
    assert (view.side, view.type, view.price, view.amount) == (None, None, None, None)
    assert [v.id for v in views.orders(MemberId(4), state="closed")] == [9]
    assert views.orders(MemberId(4), state="open") == []


def test_duplicate_and_non_place_rejections_create_nothing_and_change_nothing() -> None:
    feed = Feed()
    feed.send(buy(1, 100, 5, member=7))
    feed.views.apply_report(
        report(
            1,
            rejected=[
                OrderRejected(OrderId(1), MemberId(7), SYMBOL, RejectReason.DUPLICATE_ORDER, "place"),
                OrderRejected(OrderId(1), MemberId(7), SYMBOL, RejectReason.INSUFFICIENT_FUNDS, "amend"),
                OrderRejected(OrderId(2), MemberId(7), SYMBOL, RejectReason.UNKNOWN_ORDER, "cancel"),
                OrderRejected(OrderId(3), MemberId(7), SYMBOL, RejectReason.DUPLICATE_ORDER, "place"),
            ],
        )
    )
    view = feed.views.order(MemberId(7), OrderId(1))
    assert view is not None
    assert view.status == OrderStatus.SUBMITTED
    assert [v.id for v in feed.views.orders(MemberId(7))] == [1]


def test_balances_keep_the_latest_change_per_currency() -> None:
    views = OrderViews()
    views.apply_report(
        report(
            1, balances=[BalanceChanged(MemberId(1), "usd", 100, 0), BalanceChanged(MemberId(1), "btc", 5, 0)]
        )
    )
    views.apply_report(
        report(
            2, balances=[BalanceChanged(MemberId(1), "usd", 60, 40), BalanceChanged(MemberId(2), "usd", 1, 0)]
        )
    )
    assert views.balances(MemberId(1)) == [BalanceView("btc", 5, 0), BalanceView("usd", 60, 40)]
    assert views.balances(MemberId(2)) == [BalanceView("usd", 1, 0)]
    assert views.balances(MemberId(3)) == []


def test_batches_at_or_below_the_applied_sequence_are_ignored() -> None:
    feed = Feed()
    feed.send(sell(1, 100, 10, member=1))
    feed.send(buy(2, 100, 4, member=2))
    for batch in feed.batches:
        assert not feed.views.apply_events(batch)
    maker = feed.views.order(MemberId(1), OrderId(1))
    assert maker is not None
    assert (maker.executed, maker.funds) == (4, 400 * FF)
    assert len(feed.views.trades(SYMBOL)) == 1
    assert feed.views.depth(SYMBOL, 10).asks == [(100, 6)]

    views = OrderViews()
    assert views.apply_report(report(5, balances=[BalanceChanged(MemberId(1), "usd", 1, 0)], shard=0))
    assert not views.apply_report(report(5, balances=[BalanceChanged(MemberId(1), "usd", 2, 0)], shard=0))
    assert not views.apply_report(report(4, balances=[BalanceChanged(MemberId(1), "usd", 3, 0)], shard=0))
    assert views.apply_report(report(1, balances=[BalanceChanged(MemberId(2), "usd", 4, 0)], shard=1))
    assert views.balances(MemberId(1)) == [BalanceView("usd", 1, 0)]
    assert views.accounts_seq() == {0: 5, 1: 1}


def test_order_lists_filter_page_and_put_the_most_recent_first() -> None:
    other = make_market(symbol="ETH-USD")
    views = OrderViews()
    btc, eth = Feed(views), Feed(views, MatchingEngine(other))
    for order_id in range(1, 7):
        btc.send(buy(order_id, 90 + order_id, 1, member=1))
    eth.send(limit(7, Side.BUY, 50, 1, member=1, market="ETH-USD"))
    btc.send(cancel(2, member=1), cancel(4, member=1))

    assert [v.id for v in views.orders(MemberId(1))] == [7, 6, 5, 4, 3, 2, 1]
    assert [v.id for v in views.orders(MemberId(1), market=SYMBOL)] == [6, 5, 4, 3, 2, 1]
    assert [v.id for v in views.orders(MemberId(1), market="ETH-USD")] == [7]
    assert [v.id for v in views.orders(MemberId(1), state="open", market=SYMBOL)] == [6, 5, 3, 1]
    assert [v.id for v in views.orders(MemberId(1), state="closed")] == [4, 2]
    assert [v.id for v in views.orders(MemberId(1), state="submitted", limit=2)] == [7, 6]
    assert [v.id for v in views.orders(MemberId(1), limit=3, before_id=OrderId(6))] == [5, 4, 3]
    assert [v.id for v in views.orders(MemberId(1), limit=3, before_id=OrderId(3))] == [2, 1]
    assert views.orders(MemberId(1), limit=0) == []
    assert [v.id for v in views.orders(MemberId(1), status=OrderStatus.CANCELLED)] == [4, 2]
    assert views.orders(MemberId(1), status=OrderStatus.CLOSED) == []
    assert views.orders(MemberId(1), state="open", status=OrderStatus.CANCELLED) == []
    with pytest.raises(ValueError, match="bogus"):
        views.orders(MemberId(1), state="bogus")
    assert views.depth("ETH-USD", 10).bids == [(50, 1)]
    assert views.depth(SYMBOL, 2).bids == [(96, 1), (95, 1)]
    assert views.depth("nowhere", 10).seq == 0


def test_closed_orders_are_bounded_per_member_open_orders_are_not() -> None:
    feed = Feed(OrderViews(closed_per_member=3))
    for order_id in range(1, 11):
        feed.send(buy(order_id, 100, 1, member=1))
    for order_id in range(1, 6):
        feed.send(cancel(order_id, member=1))
    assert [v.id for v in feed.views.orders(MemberId(1), state="closed")] == [5, 4, 3]
    assert feed.views.order(MemberId(1), OrderId(1)) is None
    assert feed.views.order(MemberId(1), OrderId(3)) is not None
    assert len(feed.views.orders(MemberId(1), state="open", limit=1000)) == 5
    assert feed.views.counts()["orders"] == 8


def test_market_trades_are_bounded_and_most_recent_first() -> None:
    feed = Feed(OrderViews(trades_per_market=3, trades_per_member=2))
    feed.send(sell(1, 100, 10, member=1))
    for order_id in range(2, 7):
        feed.send(buy(order_id, 100, 1, member=2))
    assert [t.id for t in feed.views.trades(SYMBOL)] == [5, 4, 3]
    assert [t.id for t in feed.views.trades(SYMBOL, 2)] == [5, 4]
    assert [t.id for t in feed.views.member_trades(MemberId(1), limit=10)] == [5, 4]
    assert feed.views.trades("nowhere") == []


def test_random_flow_matches_the_engine_and_a_replay_from_the_wire() -> None:
    """Many random commands in random batches: the views' open orders and depth equal the
    engine's own, and a fresh projection fed the encoded batches answers the same."""
    rng = random.Random(20260101)
    feed = Feed()
    next_id = 1
    live: list[tuple[int, int]] = []
    for _ in range(600):
        commands: list[EngineCommand] = []
        for _ in range(rng.randint(1, 5)):
            roll = rng.random()
            member = rng.randint(1, 6)
            if roll < 0.55 or not live:
                side = rng.choice([Side.BUY, Side.SELL])
                tif = rng.choice([TimeInForce.GTC] * 6 + [TimeInForce.IOC, TimeInForce.FOK])
                commands.append(
                    limit(next_id, side, rng.randint(95, 105), rng.randint(1, 20), member=member, tif=tif)
                )
                live.append((next_id, member))
                next_id += 1
            elif roll < 0.62:
                commands.append(
                    market_order(
                        next_id,
                        rng.choice([Side.BUY, Side.SELL]),
                        rng.randint(1, 10),
                        member=member,
                        locked=10**12,
                    )
                )
                next_id += 1
            else:
                resting = [(o.order_id, o.member_id) for o in feed.engine.open_orders()]
                order_id, owner = rng.choice(resting if resting and rng.random() < 0.9 else live)
                if roll < 0.75:
                    commands.append(cancel(order_id, member=owner))
                elif roll < 0.9:
                    commands.append(amend(order_id, price=rng.randint(95, 105), member=owner))
                else:
                    commands.append(amend(order_id, amount=rng.randint(1, 20), member=owner))
        feed.send(*commands)

        bids, asks = feed.engine.depth(1000)
        depth = feed.views.depth(SYMBOL, 1000)
        assert (depth.bids, depth.asks) == (bids, asks)

    open_in_engine = {order.order_id: order for order in feed.engine.open_orders()}
    open_in_views = {v.id: v for member in range(1, 7) for v in feed.views.open_orders(MemberId(member))}
    assert open_in_views.keys() == open_in_engine.keys()
    for order_id, order in open_in_engine.items():
        view = open_in_views[order_id]
        assert (view.member_id, view.price, view.amount, view.executed, view.remaining, view.funds) == (
            order.member_id,
            order.price,
            order.amount,
            order.executed,
            order.remaining,
            order.funds,
        )
        assert view.status == order.status

    replayed = OrderViews()
    for batch in feed.batches:
        assert replayed.apply_events(EVENT_BATCH_DECODER.decode(encode(batch)))
    for member in range(1, 7):
        assert msgspec.json.encode(replayed.orders(MemberId(member), limit=10_000)) == msgspec.json.encode(
            feed.views.orders(MemberId(member), limit=10_000)
        )
        assert replayed.member_trades(MemberId(member), limit=10_000) == feed.views.member_trades(
            MemberId(member), limit=10_000
        )
    assert replayed.depth(SYMBOL, 1000) == feed.views.depth(SYMBOL, 1000)
    assert replayed.trades(SYMBOL, 1000) == feed.views.trades(SYMBOL, 1000)
    assert feed.views.unknown_order_events == 0

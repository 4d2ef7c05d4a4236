"""Snapshots of the matching engine: what they keep, and what restore refuses."""

from __future__ import annotations

import msgspec
import pytest

from bourse.domain.matching import MatchingEngine
from bourse.domain.orders import EngineCommand, OrderRejected, RejectReason, Trade
from bourse.domain.values import OrderId
from tests.domain.engine_support import MARKET, buy, cancel, engine, make_market, of_type, sell


def busy_engine() -> MatchingEngine:
    e = engine(recent_ids=50)
    commands: list[EngineCommand] = [
        buy(1, 100, 5),
        buy(2, 100, 5),
        buy(3, 99, 5, post_only=True),
        sell(4, 103, 5),
        sell(5, 102, 5),
        sell(6, 100, 3),  # fills 3 of order 1
        cancel(5),
    ]
    for ts, command in enumerate(commands, start=1):
        e.process(command, ts)
    return e


def test_snapshot_of_an_empty_engine_restores_an_empty_engine() -> None:
    restored = MatchingEngine.restore(MARKET, engine().snapshot())
    assert restored.open_order_count() == 0
    assert restored.depth(10) == ([], [])
    assert restored.next_trade_id == 1


def test_restored_engine_has_the_same_orders_in_the_same_priority() -> None:
    original = busy_engine()
    restored = MatchingEngine.restore(MARKET, original.snapshot())
    assert list(restored.open_orders()) == list(original.open_orders())
    assert restored.depth(10) == original.depth(10)
    assert restored.snapshot() == original.snapshot()
    # time priority survives: order 1 (partly filled) still fills before order 2
    trades = of_type(restored.process(sell(7, 100, 4), 10), Trade)
    assert [(t.maker_order_id, t.amount) for t in trades] == [(1, 2), (2, 2)]


def test_restored_engine_goes_on_with_the_next_trade_id() -> None:
    original = busy_engine()
    restored = MatchingEngine.restore(MARKET, original.snapshot())
    (trade,) = of_type(restored.process(sell(8, 100, 1), 10), Trade)
    assert trade.trade_id == original.next_trade_id == 2


def test_restored_engine_still_refuses_recently_closed_ids() -> None:
    restored = MatchingEngine.restore(MARKET, busy_engine().snapshot())
    for oid in (5, 6):
        (rejected,) = restored.process(buy(oid, 90, 1), 10)
        assert isinstance(rejected, OrderRejected)
        assert rejected.reason is RejectReason.DUPLICATE_ORDER


def test_post_only_flag_survives_a_snapshot() -> None:
    restored = MatchingEngine.restore(MARKET, busy_engine().snapshot())
    view = restored.open_order(OrderId(3))
    assert view is not None
    assert view.post_only


def test_the_same_state_gives_the_same_snapshot_bytes() -> None:
    assert busy_engine().snapshot() == busy_engine().snapshot()


def test_restore_refuses_a_snapshot_of_another_market() -> None:
    with pytest.raises(ValueError, match="BTC-USD"):
        MatchingEngine.restore(make_market(symbol="ETH-USD"), busy_engine().snapshot())


def test_restore_refuses_an_unknown_snapshot_version() -> None:
    state = msgspec.msgpack.decode(busy_engine().snapshot())
    state["version"] = 99
    with pytest.raises(ValueError, match="version"):
        MatchingEngine.restore(MARKET, msgspec.msgpack.encode(state))


def test_restore_refuses_an_order_on_the_wrong_side() -> None:
    state = msgspec.msgpack.decode(busy_engine().snapshot())
    state["asks"].append(state["bids"][0])
    with pytest.raises(ValueError, match="wrong side"):
        MatchingEngine.restore(MARKET, msgspec.msgpack.encode(state))


def test_restore_refuses_bytes_that_are_not_a_snapshot() -> None:
    with pytest.raises(msgspec.DecodeError):
        MatchingEngine.restore(MARKET, b"not a snapshot")

"""Matching's input comes in segments (one MATCH message per accounts batch): a replay of the
accounts shard that cuts its batches differently must not match any command twice."""

from __future__ import annotations

from bourse.application.catalog import default_markets_file, load_catalog
from bourse.application.matching_stage import MarketShard
from bourse.contracts.messages import MATCH_BATCH_DECODER, MatchBatch, MatchSegment, encode
from bourse.domain.matching import MatchingEngine
from bourse.domain.orders import CancelOrder, OrderType, PlaceOrder, Side
from bourse.domain.values import Amount, MemberId, OrderId, Price

MARKET = load_catalog(default_markets_file()).markets["btc_usd"]
SECOND = 1_000_000_000


def _order(order_id: int, side: Side, price: int, amount: int = 10_000) -> PlaceOrder:
    return PlaceOrder(
        OrderId(order_id),
        MemberId(order_id % 7 + 1),
        MARKET.symbol,
        side,
        OrderType.LIMIT,
        Amount(amount),
        Price(price),
    )


SEGMENTS = [
    MatchSegment(10, [_order(1, Side.SELL, 5_000_000), _order(2, Side.SELL, 5_000_100)], "_INBOX.a"),
    MatchSegment(11, [_order(3, Side.BUY, 5_000_100, 15_000)], "_INBOX.b"),
    MatchSegment(
        12,
        [CancelOrder(OrderId(2), MemberId(2 % 7 + 1), MARKET.symbol), _order(4, Side.BUY, 4_999_000)],
        "_INBOX.a",
    ),
]


def _shard() -> MarketShard:
    return MarketShard(MatchingEngine(MARKET), accounts_shards=1)


def test_a_replay_cut_differently_matches_every_command_once() -> None:
    straight = _shard()
    whole = straight.process(1, SECOND, MatchBatch(0, SEGMENTS))
    assert whole.events is not None

    replayed = _shard()
    first = replayed.process(1, SECOND, MatchBatch(0, SEGMENTS[:2]))  # published before a crash
    again = replayed.process(2, SECOND, MatchBatch(0, SEGMENTS))  # the replay's wider batch
    assert first.events is not None
    assert again.events is not None
    assert first.events.events + again.events.events == whole.events.events
    assert replayed.engine.snapshot() == straight.engine.snapshot()
    assert set(again.outcomes) == {"_INBOX.a"}  # only segment 12's asker hears again
    assert [outcome.order_id for outcome in again.outcomes["_INBOX.a"]] == [2, 4]


def test_a_message_of_repeats_only_changes_nothing() -> None:
    shard = _shard()
    shard.process(1, SECOND, MatchBatch(0, SEGMENTS))
    before = shard.snapshot()
    out = shard.process(2, SECOND, MatchBatch(0, SEGMENTS[1:]))
    assert out.events is None
    assert out.outcomes == {}
    assert out.settlements == {}
    assert shard.last_seq == 2  # the input is consumed all the same
    assert (
        MarketShard.restore(MARKET, 1, shard.snapshot()).engine.snapshot()
        == MarketShard.restore(MARKET, 1, before).engine.snapshot()
    )


def test_segments_survive_the_wire() -> None:
    batch = MatchBatch(0, SEGMENTS)
    assert MATCH_BATCH_DECODER.decode(encode(batch)) == batch

"""One market's statistics as the service keeps them: over random order flows through the real
engine, drained in random groups, a client that takes a depth snapshot at any point and applies
the later depth updates by their `prev_seq` rule holds the service's book; trades are handed out
once each; candles and ticker equal the domain folds'; a repeated batch changes nothing; a
snapshot restores the same state."""

from __future__ import annotations

import itertools

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from bourse.application.market_statistics import MarketStatistics, MarketUpdates
from bourse.contracts.messages import DepthUpdate, EventBatch
from bourse.domain.candles import PERIODS, CandleBook
from bourse.domain.depth_book import DepthSnapshot
from bourse.domain.orders import EngineEvent, Trade
from bourse.domain.tickers import RollingTicker
from tests.domain.engine_support import SYMBOL
from tests.domain.test_depth_book import BATCHES, Commands, Flow, Op

SECOND_NS = 1_000_000_000


def batches_of(ops_batches: list[tuple[list[Op], int]]) -> list[EventBatch]:
    """The EVENTS batches a market's engine produces for these commands, 20 s apart."""
    flow = Flow()
    commands = Commands(flow.engine)
    out: list[EventBatch] = []
    for ops, gap in ops_batches:
        flow.seq += gap
        at = 1_710_115_200 * SECOND_NS + flow.seq * 20 * SECOND_NS
        events: list[EngineEvent] = [e for op in ops for e in flow.engine.process(commands.command(op), at)]
        out.append(EventBatch(SYMBOL, flow.seq, at, events))
    return out


def client_book(snapshot: DepthSnapshot, updates: list[DepthUpdate]) -> DepthSnapshot | None:
    """What a client does: drop updates it has, apply the next if its `prev_seq` is what it has
    (None: it saw a gap and would take a new snapshot)."""
    bids, asks = dict(snapshot.bids), dict(snapshot.asks)
    have = snapshot.sequence
    for update in updates:
        if update.seq <= have:
            continue
        if update.prev_seq > have:
            return None
        for levels, changes in ((bids, update.bids), (asks, update.asks)):
            for price, amount in changes:
                if amount:
                    levels[price] = amount
                else:
                    levels.pop(price, None)
        have = update.seq
    return DepthSnapshot(SYMBOL, have, sorted(bids.items(), reverse=True), sorted(asks.items()))


@settings(max_examples=150, deadline=None)
@given(batches=BATCHES, drains=st.lists(st.booleans(), min_size=40, max_size=40), cut=st.integers(0, 40))
def test_a_snapshot_plus_the_later_depth_updates_is_the_service_book(
    batches: list[tuple[list[Op], int]], drains: list[bool], cut: int
) -> None:
    stats = MarketStatistics(SYMBOL)
    drained: list[MarketUpdates] = []
    snapshot_at: DepthSnapshot | None = None
    published_before_snapshot = 0
    events = batches_of(batches)
    for i, batch in enumerate(events):
        assert stats.apply(batch)
        if drains[i % len(drains)] or i == len(events) - 1:
            drained.append(stats.drain())
        if i == min(cut, len(events) - 1):
            # a snapshot answered between two drains: the updates not yet drained are after it
            snapshot_at = stats.depth_snapshot()
            published_before_snapshot = len(drained)
    assert snapshot_at is not None
    depth_updates = [u.depth for u in drained if u.depth is not None]
    later = [u.depth for u in drained[published_before_snapshot:] if u.depth is not None]
    local = client_book(snapshot_at, later)
    assert local == stats.depth_snapshot()
    # from nothing, every update in order: no gap, the same book
    assert client_book(DepthSnapshot(SYMBOL, 0, [], []), depth_updates) == stats.depth_snapshot()
    for previous, update in itertools.pairwise(depth_updates):
        assert update.prev_seq == previous.seq


@settings(max_examples=100, deadline=None)
@given(batches=BATCHES, drains=st.lists(st.booleans(), min_size=40, max_size=40))
def test_trades_candles_and_ticker_are_the_domain_folds(
    batches: list[tuple[list[Op], int]], drains: list[bool]
) -> None:
    stats = MarketStatistics(SYMBOL)
    book, ticker = CandleBook(SYMBOL), RollingTicker(SYMBOL)
    trades: list[int] = []
    published: list[int] = []
    events = batches_of(batches)
    for i, batch in enumerate(events):
        stats.apply(batch)
        assert not stats.apply(batch)  # a repeat changes nothing
        book.apply(batch.seq, batch.received_at, batch.events)
        ticker.apply(batch.seq, batch.received_at, batch.events)
        trades += [e.trade_id for e in batch.events if isinstance(e, Trade)]
        if drains[i % len(drains)] or i == len(events) - 1:
            updates = stats.drain()
            if updates.trades is not None:
                published += [t.id for t in updates.trades.trades]
                assert updates.trades.seq == batch.seq
    assert published == trades
    ticker.set_best(stats.depth.best_bid(), stats.depth.best_ask())
    assert stats.current_ticker() == ticker.ticker()
    for period in PERIODS:
        assert stats.candles.candles(period) == book.candles(period)


@settings(max_examples=60, deadline=None)
@given(batches=BATCHES, cut=st.integers(0, 40))
def test_a_restored_snapshot_resumes_to_the_same_bytes(batches: list[tuple[list[Op], int]], cut: int) -> None:
    events = batches_of(batches)
    cut = min(cut, len(events))
    straight = MarketStatistics(SYMBOL)
    for batch in events:
        straight.apply(batch)
    straight.drain()
    first = MarketStatistics(SYMBOL)
    for batch in events[:cut]:
        first.apply(batch)
    first.drain()
    resumed = MarketStatistics.restore(first.snapshot())
    for batch in events:  # everything again: the first `cut` are repeats
        resumed.apply(batch)
    resumed.drain()
    assert resumed.snapshot() == straight.snapshot()
    assert msgspec.json.encode(resumed.current_ticker()) == msgspec.json.encode(straight.current_ticker())

"""What the pushers send, without I/O: channel names and their refusals; over random order flows
through the real engine and the statistics aggregate, a depth subscriber who joins at any point
and applies the messages it is sent holds the book; trades are batched and never dropped; the
ticker and k-lines are conflated; a gap in the updates makes every depth channel send a
snapshot; private messages go to their members only, in event order."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bourse.application.catalog import load_catalog
from bourse.application.market_statistics import MarketStatistics
from bourse.application.push_feeds import (
    FAST_MS,
    SLOW_MS,
    Channel,
    ChannelRefused,
    MarketFeeds,
    event_messages,
    parse_channel,
    report_messages,
)
from bourse.contracts.messages import AccountsReport, DepthUpdate
from bourse.contracts.push_protocol import DepthData, MyTradeData, OrderData, TickerData, TradesData
from bourse.domain.accounts import BalanceChanged
from bourse.domain.candles import Period
from bourse.domain.depth_book import DepthSnapshot
from bourse.domain.orders import Side, TimeInForce
from bourse.domain.values import MemberId
from tests.application.test_market_statistics import batches_of
from tests.domain.engine_support import MARKET, SYMBOL
from tests.domain.test_depth_book import BATCHES, Op, member_of

CATALOG = load_catalog()
MARKETS = {SYMBOL: MARKET}


@pytest.mark.parametrize(
    ("text", "channel"),
    [
        ("trades.btc_usd", Channel("trades", "btc_usd", None, SLOW_MS)),
        ("trades.btc_usd@100ms", Channel("trades", "btc_usd", None, FAST_MS)),
        ("depth.eth_usd@1000ms", Channel("depth", "eth_usd", None, SLOW_MS)),
        ("ticker.btc_usd", Channel("ticker", "btc_usd", None, SLOW_MS)),
        ("kline.1h.btc_usd", Channel("kline", "btc_usd", Period.H1, SLOW_MS)),
        ("orders", Channel("orders")),
        ("balances", Channel("balances")),
    ],
)
def test_channel_names_parse_and_name_their_speed(text: str, channel: Channel) -> None:
    parsed = parse_channel(text, CATALOG.markets)
    assert parsed == channel
    assert parse_channel(parsed.name, CATALOG.markets) == parsed


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("candles.btc_usd", "unknown_channel"),
        ("trades", "unknown_channel"),
        ("trades.btc_usd.x", "unknown_channel"),
        ("trades.doge_usd", "unknown_market"),
        ("kline.2m.btc_usd", "unknown_period"),
        ("ticker.btc_usd@100ms", "unknown_speed"),
        ("depth.btc_usd@10ms", "unknown_speed"),
    ],
)
def test_bad_channel_names_are_refused_with_a_stable_code(text: str, code: str) -> None:
    with pytest.raises(ChannelRefused) as refused:
        parse_channel(text, CATALOG.markets)
    assert refused.value.code == code


def limit(side: Side) -> Op:
    return ("limit", side, 100, 2, TimeInForce.GTC, False)


def applied(book: dict[str, dict[Decimal, Decimal]], data: DepthData) -> None:
    """A client's book: levels as decimals (what it parses from the strings)."""
    if data.snapshot:
        book["bids"], book["asks"] = {}, {}
    for side, levels in (("bids", data.bids), ("asks", data.asks)):
        for price, amount in levels:
            if Decimal(amount):
                book[side][Decimal(price)] = Decimal(amount)
            else:
                book[side].pop(Decimal(price), None)


@settings(max_examples=120, deadline=None)
@given(
    batches=BATCHES,
    drains=st.lists(st.booleans(), min_size=40, max_size=40),
    ticks=st.lists(st.booleans(), min_size=40, max_size=40),
    join=st.integers(0, 40),
)
def test_a_depth_subscriber_joining_at_any_point_holds_the_book(
    batches: list[tuple[list[Op], int]], drains: list[bool], ticks: list[bool], join: int
) -> None:
    stats = MarketStatistics(SYMBOL)
    feeds = MarketFeeds(MARKETS)
    feeds.load_depth(stats.depth_snapshot())
    channel = Channel("depth", SYMBOL, None, FAST_MS)
    client: dict[str, dict[Decimal, Decimal]] | None = None
    sequence = 0
    seqs: list[int] = []
    events = batches_of(batches)
    for i, batch in enumerate(events):
        stats.apply(batch)
        if drains[i % 40] or i == len(events) - 1:
            update = stats.drain().depth
            if update is not None:
                assert feeds.on_depth(update)
        if i == min(join, len(events) - 1) and client is None:
            topic = feeds.open(channel)
            first = feeds.first_message(topic)
            assert isinstance(first, DepthData)
            assert first.snapshot
            client = {"bids": {}, "asks": {}}
            applied(client, first)
            sequence = first.sequence
            seqs.append(topic.seq)
        if client is not None and (ticks[i % 40] or i == len(events) - 1):
            for topic, data in feeds.due(FAST_MS):
                assert isinstance(data, DepthData)
                seqs.append(topic.next_seq())
                if data.sequence <= sequence:
                    continue
                assert data.prev_sequence <= sequence, "a gap"
                applied(client, data)
                sequence = data.sequence
    assert client is not None
    final = stats.depth_snapshot()
    assert client == {
        "bids": {Decimal(MARKET.format_price(p)): Decimal(MARKET.format_amount(a)) for p, a in final.bids},
        "asks": {Decimal(MARKET.format_price(p)): Decimal(MARKET.format_amount(a)) for p, a in final.asks},
    }
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # the channel's sequence has no gap


def test_a_gap_in_the_updates_asks_for_a_snapshot_and_every_depth_channel_sends_it() -> None:
    feeds = MarketFeeds(MARKETS)
    feeds.load_depth(DepthSnapshot(SYMBOL, 5, [(MARKET.parse_price("100"), MARKET.parse_amount("1"))], []))
    topic = feeds.open(Channel("depth", SYMBOL, None, SLOW_MS))
    assert feeds.on_depth(
        DepthUpdate(SYMBOL, 6, 5, 0, [], [(MARKET.parse_price("101"), MARKET.parse_amount("2"))])
    )
    assert not feeds.on_depth(DepthUpdate(SYMBOL, 9, 8, 0, [], []))  # 7 and 8 missed
    assert feeds.due(SLOW_MS) == []  # nothing to send from a book that missed one
    feeds.load_depth(DepthSnapshot(SYMBOL, 9, [], [(MARKET.parse_price("101"), MARKET.parse_amount("3"))]))
    [(sent, data)] = feeds.due(SLOW_MS)
    assert sent is topic
    assert isinstance(data, DepthData)
    three = MARKET.format_amount(MARKET.parse_amount("3"))
    assert (data.snapshot, data.sequence, data.asks) == (
        True,
        9,
        [(MARKET.format_price(MARKET.parse_price("101")), three)],
    )


def test_trades_are_batched_never_dropped_and_ticker_and_klines_conflated() -> None:
    stats = MarketStatistics(SYMBOL)
    feeds = MarketFeeds(MARKETS)
    trades = feeds.open(Channel("trades", SYMBOL, None, FAST_MS))
    ticker = feeds.open(Channel("ticker", SYMBOL, None, SLOW_MS))
    minute = feeds.open(Channel("kline", SYMBOL, Period.M1, SLOW_MS))
    flow = batches_of([([limit(side)], 1) for side in (Side.SELL, Side.BUY, Side.SELL, Side.BUY)])
    for batch in flow:
        stats.apply(batch)
        updates = stats.drain()
        if updates.trades is not None:
            feeds.on_trades(updates.trades)
        if updates.ticker is not None:
            feeds.on_ticker(updates.ticker)
        for kline in updates.klines:
            feeds.on_kline(kline)
    fast = feeds.due(FAST_MS)
    assert [(t, type(d)) for t, d in fast] == [(trades, TradesData)]
    assert isinstance(fast[0][1], TradesData)
    assert len(fast[0][1].trades) == 2  # both trades in one message
    slow = dict(feeds.due(SLOW_MS))
    latest = slow[ticker]
    assert isinstance(latest, TickerData)
    assert latest.trades == 2  # the latest ticker only
    assert feeds.due(SLOW_MS) == []  # nothing new: nothing sent
    assert feeds.first_message(ticker) == slow[ticker]
    assert minute in slow


def test_private_messages_go_to_their_members_in_event_order() -> None:
    flow = batches_of([([limit(Side.SELL)], 1), ([limit(Side.BUY)], 1)])
    seller, buyer = member_of(1), member_of(2)  # the orders' ids are 1 and 2
    assert seller != buyer
    out = [m for batch in flow for m in event_messages(batch, MARKETS, {seller})]
    assert {member for member, _, _ in out} == {seller}
    kinds = [(kind, getattr(data, "event", None)) for _, kind, data in out]
    assert kinds[0] == ("orders", "accepted")
    assert ("my_trades", None) in kinds
    assert kinds[-1] == ("orders", "closed")
    trade = next(data for _, kind, data in out if kind == "my_trades")
    assert isinstance(trade, MyTradeData)
    assert (trade.role, trade.side) == ("maker", "sell")
    none = [m for batch in flow for m in event_messages(batch, MARKETS, set())]
    assert none == []


def test_balance_changes_and_refusals_of_the_accounts_stage_reach_their_member() -> None:
    report = AccountsReport(
        shard=0,
        seq=3,
        rejected=[],
        balances=[
            BalanceChanged(MemberId(1), "btc", 150_000_000, 50_000_000),
            BalanceChanged(MemberId(2), "usd", 1, 0),
        ],
        entries=[],
    )
    out = report_messages(report, 5_000_000, CATALOG.markets, CATALOG.currencies, {1})
    assert [(m, kind) for m, kind, _ in out] == [(1, "balances")]
    data = out[0][2]
    assert (data.currency, data.available, data.locked) == ("btc", "1.50000000", "0.50000000")  # type: ignore[attr-defined]
    assert not isinstance(data, OrderData)

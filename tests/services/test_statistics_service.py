"""The statistics service over real NATS: accounts and matching in one host, statistics in
another (so it restarts alone); orders sent as the gateway sends them; answers read over NATS
request/reply and public updates taken from the core NATS subjects a pusher subscribes to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from prometheus_client.parser import text_string_to_metric_families

from bourse.application.market_statistics import MarketStatistics
from bourse.contracts.messages import (
    DEPTH_SNAPSHOT_REPLY_DECODER,
    DEPTH_UPDATE_DECODER,
    EVENT_BATCH_DECODER,
    KLINE_UPDATE_DECODER,
    KLINES_REPLY_DECODER,
    QUERY_ERROR_DECODER,
    STATISTICS_POSITION_DECODER,
    TICKER_REPLY_DECODER,
    TICKER_UPDATE_DECODER,
    TRADES_UPDATE_DECODER,
    DepthUpdate,
    KlinesReply,
    json_encode,
)
from bourse.contracts.subjects import EVENTS, market_data_subject, statistics_subject
from bourse.domain.candles import PERIODS, Candle, Period
from bourse.domain.depth_book import DepthSnapshot
from bourse.domain.orders import OrderStatus, Side
from bourse.domain.tickers import Ticker
from bourse.runtime.host import ServiceHost
from bourse.services.statistics import Statistics
from tests.application.test_read_queries import BAD_KLINES_QUERIES
from tests.services.test_query_service import BTC_USD, Exchange, eventually, exchange, limit, status_is

T = TypeVar("T")
__all__ = ["exchange"]  # the fixture, shared with the query service's tests
price = BTC_USD.parse_price
amount = BTC_USD.parse_amount
FF = BTC_USD.funds_factor


class StatisticsRun:
    """The exchange plus a statistics host that can be stopped and started again."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.nc = exchange.nc
        self.ns = exchange.settings.namespace
        self.host: ServiceHost | None = None

    async def start(self) -> None:
        self.host = ServiceHost(self.exchange._ctx())
        await self.host.start([Statistics])

    async def stop(self) -> None:
        if self.host is not None:
            await self.host.stop()
            self.host = None

    @property
    def service(self) -> Statistics:
        assert self.host is not None
        service = self.host.running[0].service
        assert isinstance(service, Statistics)
        return service

    async def ask(self, endpoint: str, body: msgspec.Struct | dict[str, Any], market: str | None) -> Msg:
        data = json_encode(body)
        return await self.nc.request(statistics_subject(self.ns, endpoint, market), data, timeout=2.0)

    async def ticker(self, market: str = "btc_usd") -> Ticker:
        return TICKER_REPLY_DECODER.decode((await self.ask("ticker", {"market": market}, market)).data)

    async def klines(self, period: str = "1m", **args: Any) -> KlinesReply:
        body = {"market": "btc_usd", "period": period, **args}
        return KLINES_REPLY_DECODER.decode((await self.ask("klines", body, "btc_usd")).data)

    async def depth(self, limit: int | None = None) -> DepthSnapshot:
        reply = await self.ask("depth", {"market": "btc_usd", "limit": limit}, "btc_usd")
        return DEPTH_SNAPSHOT_REPLY_DECODER.decode(reply.data)


@pytest.fixture
async def run(exchange: Exchange) -> AsyncIterator[StatisticsRun]:
    statistics = StatisticsRun(exchange)
    await statistics.start()
    yield statistics
    await statistics.stop()


async def until(ask: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 10.0) -> T:
    """Ask until the answer passes `check`; an error reply (e.g. 503 not_ready while catching up)
    does not decode as the answer and is asked again."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        answer: Any
        try:
            answer = await ask()
            if check(answer):
                return answer  # type: ignore[no-any-return]
        except msgspec.ValidationError as exc:
            answer = exc
        assert asyncio.get_running_loop().time() < deadline, f"last answer: {answer!r}"
        await asyncio.sleep(0.02)


async def trade_script(exchange: Exchange) -> None:
    """Three trades: 0.2 at 50,000, 0.3 at 50,100 and 0.1 at 49,900; a bid of 0.5 at 49,000 and
    an ask of 0.7 at 50,200 left resting."""
    await exchange.send(
        limit(301, 1, Side.SELL, "50000", "0.2"),
        limit(302, 1, Side.SELL, "50100", "0.3"),
        limit(303, 1, Side.SELL, "50200", "0.7"),
        limit(304, 1, Side.BUY, "49900", "0.1"),
        limit(305, 1, Side.BUY, "49000", "0.5"),
    )
    await exchange.send(limit(306, 2, Side.BUY, "50000", "0.2"))
    await exchange.send(limit(307, 2, Side.BUY, "50100", "0.3"))
    await exchange.send(limit(308, 2, Side.SELL, "49900", "0.1"))
    await eventually(lambda: exchange.client.order(2, 308), status_is(OrderStatus.EXECUTED))


async def test_scripted_trades_give_hand_computed_candles_ticker_and_depth(run: StatisticsRun) -> None:
    ns = run.ns
    seen: dict[str, list[bytes]] = {}

    async def collect(msg: Msg) -> None:
        seen.setdefault(msg.subject, []).append(msg.data)

    await run.nc.subscribe(f"{ns}.md.>", cb=collect)
    await trade_script(run.exchange)
    ticker = await until(run.ticker, lambda t: t.trades == 3)

    volume = amount("0.6")
    quote = (
        price("50000") * amount("0.2") + price("50100") * amount("0.3") + price("49900") * amount("0.1")
    ) * FF
    assert (ticker.open, ticker.high, ticker.low, ticker.last) == (
        price("50000"),
        price("50100"),
        price("49900"),
        price("49900"),
    )
    assert (ticker.volume, ticker.quote_volume) == (volume, quote)
    assert (ticker.change, ticker.change_bp) == (price("49900") - price("50000"), -20)
    assert (ticker.best_bid, ticker.best_ask) == (price("49000"), price("50200"))

    klines = await run.klines("1m")
    assert len(klines.candles) == 1 or klines.candles[-1].trades < 3  # a minute boundary may cut them
    trades = sum(c.trades for c in klines.candles)
    assert trades == 3
    hour = (await run.klines("1h")).candles
    assert [(c.open, c.high, c.low, c.close, c.volume, c.quote_volume, c.trades) for c in hour[-1:]] == [
        (price("50000"), price("50100"), price("49900"), price("49900"), volume, quote, 3)
    ]

    depth = await run.depth()
    assert depth.bids == [(price("49000"), amount("0.5"))]
    assert depth.asks == [(price("50200"), amount("0.7"))]
    assert depth.sequence > 0

    # the public updates: the depth updates rebuild the book, the trades come once each, the
    # last ticker and k-line messages say what the queries say
    def decoded(channel: str, decoder: msgspec.msgpack.Decoder[T], period: str | None = None) -> list[T]:
        return [decoder.decode(d) for d in seen.get(market_data_subject(ns, channel, "btc_usd", period), [])]

    await until(lambda: asyncio.sleep(0.01), lambda _: bool(decoded("ticker", TICKER_UPDATE_DECODER)), 5.0)
    updates = decoded("depth", DEPTH_UPDATE_DECODER)
    assert apply_updates(DepthSnapshot("btc_usd", 0, [], []), updates) == depth
    published = [t for u in decoded("trades", TRADES_UPDATE_DECODER) for t in u.trades]
    assert [(t.price, t.amount) for t in published] == [
        (price("50000"), amount("0.2")),
        (price("50100"), amount("0.3")),
        (price("49900"), amount("0.1")),
    ]
    assert decoded("ticker", TICKER_UPDATE_DECODER)[-1].ticker == ticker
    last_hour = decoded("kline", KLINE_UPDATE_DECODER, "1h")[-1]
    assert (last_hour.period, last_hour.candles[-1]) == (Period.H1, hour[-1])


def apply_updates(snapshot: DepthSnapshot, updates: list[DepthUpdate]) -> DepthSnapshot:
    bids, asks = dict(snapshot.bids), dict(snapshot.asks)
    have = snapshot.sequence
    for update in updates:
        if update.seq <= have:
            continue
        assert update.prev_seq <= have, "a gap in the depth updates"
        for levels, changes in ((bids, update.bids), (asks, update.asks)):
            for p, a in changes:
                if a:
                    levels[p] = a
                else:
                    levels.pop(p, None)
        have = update.seq
    return DepthSnapshot(snapshot.market, have, sorted(bids.items(), reverse=True), sorted(asks.items()))


async def events_folded(nc: Client, ns: str) -> MarketStatistics:
    """The btc_usd statistics folded from every EVENTS message, as a fresh instance would."""
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        EVENTS.subject(ns, "btc_usd"),
        stream=EVENTS.name(ns),
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    stats = MarketStatistics("btc_usd")
    info = await js.stream_info(EVENTS.name(ns))
    read = 0
    while read < info.state.messages:
        for msg in await sub.fetch(100, timeout=2.0):
            stats.apply(EVENT_BATCH_DECODER.decode(msg.data))
            read += 1
    await sub.unsubscribe()
    return stats


def every_candle(stats: MarketStatistics) -> list[list[Candle]]:
    return [stats.candles.candles(period, limit=1000) for period in PERIODS]


async def test_a_restart_mid_stream_resumes_from_its_snapshot_and_changes_nothing(run: StatisticsRun) -> None:
    exchange = run.exchange
    await trade_script(exchange)
    await until(run.ticker, lambda t: t.trades == 3)
    await run.stop()  # saves its snapshot
    await exchange.send(limit(401, 1, Side.SELL, "50300", "0.4"))
    await exchange.send(limit(402, 2, Side.BUY, "50300", "0.4"))
    await eventually(lambda: exchange.client.order(2, 402), status_is(OrderStatus.EXECUTED))
    await run.start()
    restored = run.service
    ticker = await until(run.ticker, lambda t: t.trades == 4)
    fresh = await events_folded(run.nc, run.ns)
    stream = await run.nc.jetstream().stream_info(EVENTS.name(run.ns))
    assert 0 < restored.events.messages < stream.state.messages  # resumed after its snapshot
    assert ticker == fresh.current_ticker()
    mine = restored.stats["btc_usd"]
    assert msgspec.msgpack.encode(every_candle(mine)) == msgspec.msgpack.encode(every_candle(fresh))
    assert (await run.depth()) == fresh.depth_snapshot()


@pytest.mark.parametrize(("arguments", "code", "field"), BAD_KLINES_QUERIES)
async def test_bad_klines_queries_are_refused_with_the_rules_code(
    run: StatisticsRun, arguments: dict[str, Any], code: str, field: str
) -> None:
    market = arguments.get("market", "btc_usd")
    body = {"market": market, "period": "1m", **arguments}
    reply = await run.ask("klines", body, "btc_usd")
    headers = reply.headers or {}
    assert headers.get("Nats-Service-Error-Code") in ("400", "404")
    assert QUERY_ERROR_DECODER.decode(reply.data).code == code
    position = STATISTICS_POSITION_DECODER.decode((await run.ask("position", {}, "eth_usd")).data)
    assert position.markets == list(run.exchange.settings.catalog.markets)


async def test_an_instance_per_market_group_folds_and_answers_only_its_markets(exchange: Exchange) -> None:
    """Two groups, two durable consumers: each instance folds its markets and passes over the
    others' messages undecoded; a market's endpoints answer from its group's instance."""
    settings = exchange.settings
    hosts: list[ServiceHost] = []
    for markets in (["btc_usd"], ["eth_usd", "eth_btc"]):
        host = ServiceHost(exchange._ctx_with(statistics_markets=markets))
        await host.start([Statistics])
        hosts.append(host)
    try:
        run = StatisticsRun(exchange)
        await trade_script(exchange)
        await until(run.ticker, lambda t: t.trades == 3)
        btc, eth = (host.running[0].service for host in hosts)
        assert isinstance(btc, Statistics)
        assert isinstance(eth, Statistics)
        assert (btc.group, eth.group) == ("btc_usd", "eth_btc-eth_usd")
        assert list(btc.stats) == ["btc_usd"]
        assert btc.events.skipped == 0
        await until(lambda: asyncio.sleep(0.01, eth.events.skipped), lambda skipped: skipped > 0)
        assert eth.stats["eth_usd"].seq == 0  # nothing traded there
        assert (await run.ticker("eth_usd")).trades == 0
        assert settings.namespace == run.ns
    finally:
        for host in hosts:
            await host.stop()


async def test_the_statistics_service_exports_its_progress_as_prometheus_metrics(run: StatisticsRun) -> None:
    await trade_script(run.exchange)
    await until(run.ticker, lambda t: t.trades == 3)
    service = run.service
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(service.metrics())
        for sample in family.samples
    }
    assert samples[("bourse_statistics_watermark", ())] == service.events.watermark > 0
    assert (
        samples[("bourse_statistics_market_sequence", (("market", "btc_usd"),))]
        == service.stats["btc_usd"].seq
    )
    assert samples[("bourse_statistics_messages_published_total", ())] == service.published > 0
    assert samples[("bourse_statistics_publish_failures_total", ())] == 0

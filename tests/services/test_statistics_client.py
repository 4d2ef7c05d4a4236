"""The statistics service's client on a real NATS, against a small nats.micro responder that
answers as the statistics service does (JSON bodies; errors as nats.micro error headers with a
`QueryError` body): every reply decoded, every failure a `QueryFailed` with a stable code."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
import pytest
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service

from bourse.adapters.read_chain import NOT_FOLLOWED, Positions, statistics_positions
from bourse.adapters.statistics_client import StatisticsClient
from bourse.application.ports import QueryFailed
from bourse.contracts.messages import (
    KLINES_QUERY_DECODER,
    TICKER_QUERY_DECODER,
    DepthSnapshotQuery,
    KlinesQuery,
    KlinesReply,
    QueryError,
    StatisticsPosition,
    json_encode,
)
from bourse.contracts.subjects import statistics_subject
from bourse.domain.candles import Candle, Period
from bourse.domain.depth_book import DepthSnapshot
from bourse.domain.tickers import Ticker
from bourse.domain.values import Amount, Price, QuoteUnits


def a_ticker(market: str, last: int) -> Ticker:
    return Ticker(
        market=market,
        open_time=1_710_072_060_000,
        close_time=1_710_158_441_250,
        open=Price(last - 100),
        high=Price(last + 50),
        low=Price(last - 150),
        last=Price(last),
        volume=Amount(12_500_000),
        quote_volume=QuoteUnits(805_000_00000000),
        change=100,
        change_bp=16,
        trades=318,
        best_bid=Price(last - 1),
        best_ask=Price(last + 1),
        seq=1842,
    )


CANDLE = Candle(
    1_710_158_400_000, Price(100), Price(120), Price(90), Price(110), Amount(5), QuoteUnits(550), 3
)

Handler = Callable[[Request], Awaitable[None]]


@dataclass
class Responder:
    """The statistics endpoints of one fake instance; what it was asked is kept."""

    nc: Client
    namespace: str
    delay_s: float = 0.0
    asked: list[tuple[str, bytes]] = field(default_factory=list)
    service: Service | None = None

    async def start(self) -> None:
        self.service = await add_service(self.nc, name="fake-statistics", version="0.0.1")
        ns = self.namespace

        async def ticker(request: Request) -> None:
            self.asked.append(("ticker", request.data))
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            query = TICKER_QUERY_DECODER.decode(request.data)
            await request.respond(json_encode(a_ticker(query.market, 6_500_000)))

        async def klines(request: Request) -> None:
            self.asked.append(("klines", request.data))
            query = KLINES_QUERY_DECODER.decode(request.data)
            await request.respond(json_encode(KlinesReply(query.market, Period(query.period), [CANDLE])))

        async def depth(request: Request) -> None:
            self.asked.append(("depth", request.data))
            snapshot = DepthSnapshot("btc_usd", 77, [(Price(99), Amount(2))], [(Price(101), Amount(3))])
            await request.respond(json_encode(snapshot))

        async def position(request: Request) -> None:
            await request.respond(json_encode(StatisticsPosition(41, 40, ["btc_usd", "eth_usd"])))

        async def behind(request: Request) -> None:
            await request.respond(json_encode(StatisticsPosition(30, 40, ["eth_btc"])))

        async def not_ready(request: Request) -> None:
            message = "this instance is still reading the streams"
            await request.respond_error("503", message, json_encode(QueryError("not_ready", message)))

        async def unknown(request: Request) -> None:
            message = "no market 'doge_usd'"
            await request.respond_error("404", message, json_encode(QueryError("unknown_market", message)))

        async def garbled(request: Request) -> None:
            await request.respond(b'{"market": 1}')

        async def silent(request: Request) -> None:
            await asyncio.sleep(5)

        endpoints: dict[str, Handler] = {
            statistics_subject(ns, "ticker", "btc_usd"): ticker,
            statistics_subject(ns, "ticker", "eth_usd"): ticker,
            statistics_subject(ns, "ticker", "eth_btc"): ticker,
            statistics_subject(ns, "ticker", "ltc_usd"): not_ready,
            statistics_subject(ns, "ticker", "doge_usd"): unknown,
            statistics_subject(ns, "ticker", "garbled"): garbled,
            statistics_subject(ns, "ticker", "silent"): silent,
            statistics_subject(ns, "klines", "btc_usd"): klines,
            statistics_subject(ns, "depth", "btc_usd"): depth,
            statistics_subject(ns, "position", "btc_usd"): position,
            statistics_subject(ns, "position", "eth_usd"): position,
            statistics_subject(ns, "position", "eth_btc"): behind,
        }
        for i, (subject, handler) in enumerate(endpoints.items()):
            await self.service.add_endpoint(EndpointConfig(name=f"e{i}", subject=subject, handler=handler))

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()


@pytest.fixture
async def responder(nc: Client, namespace: str) -> AsyncIterator[Responder]:
    fake = Responder(nc, namespace)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def client(nc: Client, namespace: str) -> StatisticsClient:
    return StatisticsClient(nc, namespace, timeout=0.5)


async def test_each_endpoint_is_asked_on_its_market_subject_and_its_reply_decoded(
    client: StatisticsClient, responder: Responder
) -> None:
    assert await client.ticker("btc_usd") == a_ticker("btc_usd", 6_500_000)
    assert await client.klines("btc_usd", Period.H1, 1_000, 2_000_000, 7) == [CANDLE]
    asked = msgspec.json.decode(responder.asked[-1][1], type=KlinesQuery)
    assert asked == KlinesQuery("btc_usd", "1h", 1_000, 2_000_000, 7)
    snapshot = await client.depth_snapshot("btc_usd")
    assert (snapshot.sequence, snapshot.bids, snapshot.asks) == (77, [(99, 2)], [(101, 3)])
    assert msgspec.json.decode(responder.asked[-1][1], type=DepthSnapshotQuery).limit is None
    assert await client.position("btc_usd") == StatisticsPosition(41, 40, ["btc_usd", "eth_usd"])
    assert len(await client.positions(["btc_usd", "eth_usd"])) == 2
    # one group behind: the service is as far as its least advanced group
    watermark = statistics_positions(client, ["btc_usd", "eth_usd", "eth_btc"])
    assert await watermark() == Positions(30, NOT_FOLLOWED)


async def test_tickers_are_asked_concurrently_and_answered_in_the_order_asked(
    client: StatisticsClient, responder: Responder
) -> None:
    responder.delay_s = 0.2
    started = time.perf_counter()
    tickers = await client.tickers(["eth_btc", "btc_usd", "eth_usd"])
    elapsed = time.perf_counter() - started
    assert [ticker.market for ticker in tickers] == ["eth_btc", "btc_usd", "eth_usd"]
    assert elapsed < 0.45, f"three 0.2 s answers took {elapsed:.2f} s: not concurrent"
    assert await client.tickers([]) == []


async def test_an_error_reply_is_a_query_failed_with_the_services_status_and_code(
    client: StatisticsClient, responder: Responder
) -> None:
    with pytest.raises(QueryFailed) as failed:
        await client.ticker("ltc_usd")
    assert (failed.value.status, failed.value.code) == (503, "not_ready")
    with pytest.raises(QueryFailed) as failed:
        await client.ticker("doge_usd")
    assert (failed.value.status, failed.value.code, failed.value.message) == (
        404,
        "unknown_market",
        "no market 'doge_usd'",
    )


async def test_tickers_fail_with_the_first_failing_market_in_the_order_asked(
    client: StatisticsClient, responder: Responder
) -> None:
    with pytest.raises(QueryFailed) as failed:
        await client.tickers(["btc_usd", "doge_usd", "ltc_usd"])
    assert failed.value.code == "unknown_market"


async def test_no_instance_is_503_unavailable_a_silent_one_504_and_a_garbled_reply_503(
    client: StatisticsClient, responder: Responder
) -> None:
    with pytest.raises(QueryFailed) as failed:
        await client.ticker("nowhere")  # no endpoint on that market's subject
    assert (failed.value.status, failed.value.code) == (503, "unavailable")
    assert "statistics" in failed.value.message
    with pytest.raises(QueryFailed) as failed:
        await client.ticker("silent")
    assert (failed.value.status, failed.value.code) == (504, "timeout")
    with pytest.raises(QueryFailed) as failed:
        await client.ticker("garbled")
    assert (failed.value.status, failed.value.code) == (503, "unavailable")


async def test_without_any_statistics_service_every_read_is_unavailable(nc: Client, namespace: str) -> None:
    client = StatisticsClient(nc, namespace, timeout=0.5)
    for read in (
        client.ticker("btc_usd"),
        client.klines("btc_usd", Period.M1, None, None, 10),
        client.depth_snapshot("btc_usd", 5),
        client.position("btc_usd"),
    ):
        with pytest.raises(QueryFailed) as failed:
            await read
        assert failed.value.code == "unavailable"

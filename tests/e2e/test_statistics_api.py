"""The statistics routes through the real app (FastAPI, its error handlers and the read headers):
`GET /markets/{market}/ticker`, `GET /tickers` and `GET /markets/{market}/klines`, over a
`StatisticsReads` backed by the real domain folds (`CandleBook`, `RollingTicker`) fed with a
scripted trade sequence whose candles and ticker are computed by hand below; and through the
gateway's statistics chain, which answers from the freshest of its models."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import httpx
import pytest

from bourse.adapters.read_chain import NOT_FOLLOWED, Positions, ReadHeaders, ReadSource, ReadWatch
from bourse.application.catalog import load_catalog
from bourse.application.ports import QueryFailed, StatisticsReads
from bourse.domain.candles import MINUTE_MS, NS_PER_MS, Candle, CandleBook, Period
from bourse.domain.tickers import RollingTicker, Ticker
from bourse.domain.values import Amount, Price, QuoteUnits
from bourse.entrypoints.rest.app import create_app
from bourse.entrypoints.rest.deps import GatewayDeps
from tests.application.test_read_queries import BAD_KLINES_QUERIES
from tests.e2e.harness import expect_problem

T0 = 1_710_158_400_000
"""2024-03-11T12:00:00Z, in ms."""
TRADES = [
    # (ms after T0, price units (0.01 usd), amount units (1e-6 btc))
    (10_000, 6_500_000, 100_000),  # 65000.00 x 0.1
    (30_000, 6_510_000, 200_000),  # 65100.00 x 0.2
    (70_000, 6_490_000, 50_000),  # 64900.00 x 0.05, the next minute
]
NOW = T0 + 3 * MINUTE_MS + 5_000
"""The newest event time: two minutes without trades after the last one's."""


class Folds:
    """A `StatisticsReads` over the domain's folds, one `CandleBook` and `RollingTicker` per
    market; counts the reads that reach it."""

    def __init__(self, markets: Sequence[str]) -> None:
        self.books = {market: CandleBook(market) for market in markets}
        self.tickers_ = {market: RollingTicker(market) for market in markets}
        self.reads = 0
        self.raises: Exception | None = None

    def trade(self, market: str, at_ms: int, price: int, amount: int) -> None:
        funds = QuoteUnits(price * amount)  # btc_usd: 0.01 usd x 1e-6 btc = 1e-8 usd, its units
        ts = at_ms * NS_PER_MS
        self.books[market].add_trade(Price(price), Amount(amount), funds, ts)
        self.tickers_[market].add_trade(Price(price), Amount(amount), funds, ts)

    def advance(self, market: str, at_ms: int, *, seq: int) -> None:
        """An EVENTS batch `seq` without trades received at `at_ms`: time moves on."""
        self.books[market].apply(seq, at_ms * NS_PER_MS, [])
        self.tickers_[market].apply(seq, at_ms * NS_PER_MS, [])

    def _read(self) -> None:
        self.reads += 1
        if self.raises is not None:
            raise self.raises

    async def ticker(self, market: str) -> Ticker:
        self._read()
        return self.tickers_[market].ticker()

    async def tickers(self, markets: Sequence[str]) -> list[Ticker]:
        self._read()
        return [self.tickers_[market].ticker() for market in markets]

    async def klines(
        self, market: str, period: Period, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[Candle]:
        self._read()
        return self.books[market].candles(period, start_ms, end_ms, limit)


def scripted() -> Folds:
    folds = Folds(list(load_catalog().markets))
    for after_ms, price, amount in TRADES:
        folds.trade("btc_usd", T0 + after_ms, price, amount)
    folds.tickers_["btc_usd"].set_best(Price(6_480_000), Price(6_500_000))
    folds.advance("btc_usd", NOW, seq=57)
    return folds


def client_of(statistics: StatisticsReads | None) -> httpx.AsyncClient:
    """The gateway's app as it serves (FastAPI behind the read headers), in process; the order
    side is not used by these routes."""
    unused: Any = None
    deps = GatewayDeps(
        catalog=load_catalog(),
        intake=unused,
        ids=unused,
        verifier=unused,
        queries=unused,
        statistics=statistics,
    )
    app: Any = ReadHeaders(cast(Any, create_app(deps)))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test/api/v3")


@pytest.fixture
def folds() -> Folds:
    return scripted()


@pytest.fixture
async def http(folds: Folds) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(folds) as client:
        yield client


BTC_USD_TICKER = {
    "market": "btc_usd",
    "open_time": "2024-03-10T12:04:00.000000Z",  # the minute of NOW (12:03) - 23h59m
    "open_time_ms": T0 + 3 * MINUTE_MS - 1439 * MINUTE_MS,
    "close_time": "2024-03-11T12:03:05.000000Z",
    "close_time_ms": NOW,
    "open": "65000.00",
    "high": "65100.00",
    "low": "64900.00",
    "last": "64900.00",
    "volume": "0.350000",
    "quote_volume": "22765.00000000",  # 6500 + 13020 + 3245
    "change": "-100.00",
    "change_percent": "-0.15",  # -100 / 65000 = -0.1538 %
    "trades": 3,
    "best_bid": "64800.00",
    "best_ask": "65000.00",
    "sequence": 57,
}


async def test_the_ticker_is_the_last_24_hours_formatted_by_the_market(http: httpx.AsyncClient) -> None:
    response = await http.get("/markets/btc_usd/ticker")
    assert response.status_code == 200, response.text
    assert response.json() == BTC_USD_TICKER


async def test_a_market_without_trades_has_no_prices_and_no_window_yet(http: httpx.AsyncClient) -> None:
    ticker = (await http.get("/markets/eth_usd/ticker")).json()
    assert ticker["market"] == "eth_usd"
    for field in ("open", "high", "low", "last", "best_bid", "best_ask", "open_time", "close_time"):
        assert ticker[field] is None, field
    assert (ticker["volume"], ticker["change"], ticker["change_percent"], ticker["trades"]) == (
        "0.00000",  # eth_usd: amounts to 5 decimals
        "0.00",
        "0.00",
        0,
    )


async def test_tickers_list_every_market_of_the_catalog_in_its_order(http: httpx.AsyncClient) -> None:
    tickers = (await http.get("/tickers")).json()
    assert [ticker["market"] for ticker in tickers] == list(load_catalog().markets)
    assert tickers[0] == BTC_USD_TICKER
    assert tickers[1]["last"] is None


async def test_the_ticker_of_an_unknown_market_is_not_found(http: httpx.AsyncClient, folds: Folds) -> None:
    body = expect_problem(await http.get("/markets/doge_usd/ticker"), 404, "unknown_market")
    assert body["field"] == "market"
    assert folds.reads == 0


def minute(at: int, o: str, h: str, lo: str, c: str, volume: str, quote: str, trades: int) -> dict[str, Any]:
    """A 1m candle as the API shows it; `at` is minutes after T0."""
    open_ms = T0 + at * MINUTE_MS
    return {
        "open_time": f"2024-03-11T12:{at:02d}:00.000000Z",
        "open_time_ms": open_ms,
        "close_time": f"2024-03-11T12:{at:02d}:59.999000Z",
        "close_time_ms": open_ms + MINUTE_MS - 1,
        "open": o,
        "high": h,
        "low": lo,
        "close": c,
        "volume": volume,
        "quote_volume": quote,
        "trades": trades,
    }


MINUTES = [
    minute(0, "65000.00", "65100.00", "65000.00", "65100.00", "0.300000", "19520.00000000", 2),
    minute(1, "64900.00", "64900.00", "64900.00", "64900.00", "0.050000", "3245.00000000", 1),
    # no trades: the previous close, no volume, up to the minute of the newest event time
    minute(2, "64900.00", "64900.00", "64900.00", "64900.00", "0.000000", "0.00000000", 0),
    minute(3, "64900.00", "64900.00", "64900.00", "64900.00", "0.000000", "0.00000000", 0),
]


async def test_klines_are_gap_filled_candles_oldest_first(http: httpx.AsyncClient) -> None:
    response = await http.get("/markets/btc_usd/klines", params={"period": "1m"})
    assert response.status_code == 200, response.text
    assert response.json() == MINUTES

    hour = (await http.get("/markets/btc_usd/klines", params={"period": "1h"})).json()
    assert len(hour) == 1
    assert hour[0]["open_time"] == "2024-03-11T12:00:00.000000Z"
    assert hour[0]["close_time"] == "2024-03-11T12:59:59.999000Z"
    assert {k: hour[0][k] for k in ("open", "high", "low", "close", "volume", "quote_volume", "trades")} == {
        "open": "65000.00",
        "high": "65100.00",
        "low": "64900.00",
        "close": "64900.00",
        "volume": "0.350000",
        "quote_volume": "22765.00000000",
        "trades": 3,
    }


async def test_klines_page_from_start_or_back_from_end_with_times_as_ms_or_iso(
    http: httpx.AsyncClient,
) -> None:
    async def page(**params: str) -> list[Any]:
        response = await http.get("/markets/btc_usd/klines", params={"period": "1m", **params})
        assert response.status_code == 200, response.text
        result: list[Any] = response.json()
        return result

    assert await page(start="2024-03-11T12:01:00Z", limit="2") == MINUTES[1:3]
    assert await page(start=str(T0 + MINUTE_MS), limit="2") == MINUTES[1:3]
    assert await page(start="2024-03-11T13:01:00+01:00", end="2024-03-11T12:01:30") == MINUTES[1:2]
    assert await page(limit="2") == MINUTES[2:], "without start: the newest"
    assert await page(end=str(T0 + MINUTE_MS), limit="1") == MINUTES[1:2]
    assert await page(start=str(T0 + 10 * MINUTE_MS)) == [], "past the newest event time"
    assert await page(end=str(T0 - MINUTE_MS)) == [], "before the market's first trade"
    assert await page(limit="1000") == MINUTES


@pytest.mark.parametrize(("arguments", "code", "field"), BAD_KLINES_QUERIES)
async def test_a_bad_klines_query_is_the_rules_problem_and_changes_nothing(
    http: httpx.AsyncClient, folds: Folds, arguments: dict[str, Any], code: str, field: str
) -> None:
    before = (await http.get("/markets/btc_usd/klines", params={"period": "1m"})).json()
    reads = folds.reads
    query = {"market": "btc_usd", "period": "1m", **arguments}
    market = query.pop("market")
    response = await http.get(f"/markets/{market}/klines", params={k: str(v) for k, v in query.items()})
    body = expect_problem(response, 404 if code == "unknown_market" else 422, code)
    assert body["field"] == field
    assert folds.reads == reads, "refused before any model is asked"
    assert (await http.get("/markets/btc_usd/klines", params={"period": "1m"})).json() == before


async def test_a_klines_query_without_a_period_or_with_a_limit_not_a_number_is_refused(
    http: httpx.AsyncClient, folds: Folds
) -> None:
    response = await http.get("/markets/btc_usd/klines")
    assert expect_problem(response, 422, "invalid_request")["errors"][0]["field"] == "period"
    response = await http.get("/markets/btc_usd/klines", params={"period": "1m", "limit": "ten"})
    expect_problem(response, 422, "invalid_request")
    assert folds.reads == 0


async def test_a_failed_statistics_read_is_its_status_and_code(http: httpx.AsyncClient, folds: Folds) -> None:
    folds.raises = QueryFailed(503, "unavailable", "no statistics service instance answers")
    expect_problem(await http.get("/markets/btc_usd/ticker"), 503, "unavailable")
    expect_problem(await http.get("/tickers"), 503, "unavailable")
    folds.raises = QueryFailed(504, "timeout", "no answer")
    expect_problem(await http.get("/markets/btc_usd/klines", params={"period": "1m"}), 504, "timeout")


async def test_a_gateway_without_statistics_answers_503() -> None:
    async with client_of(None) as http:
        expect_problem(await http.get("/markets/btc_usd/ticker"), 503, "unavailable")
        expect_problem(await http.get("/markets/btc_usd/klines", params={"period": "1m"}), 503, "unavailable")


async def test_openapi_describes_the_statistics_routes_with_examples(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in ("/api/v3/markets/{market}/ticker", "/api/v3/tickers", "/api/v3/markets/{market}/klines"):
        get = paths[path]["get"]
        assert get["tags"] == ["markets"], path
        assert "security" not in get, f"{path} is public"
    params = {p["name"]: p for p in paths["/api/v3/markets/{market}/klines"]["get"]["parameters"]}
    assert params["period"]["required"] is True
    assert params["period"]["schema"]["enum"] == [p.value for p in Period]
    assert (params["limit"]["schema"]["minimum"], params["limit"]["schema"]["maximum"]) == (1, 1000)
    assert params["limit"]["schema"]["default"] == 500
    assert not params["start"]["required"]
    assert not params["end"]["required"]
    schemas = spec["components"]["schemas"]
    for name in ("TickerOut", "KlineOut"):
        for prop, schema in schemas[name]["properties"].items():
            assert schema.get("examples"), f"{name}.{prop} has no example"
    assert schemas["TickerOut"]["properties"]["last"]["examples"] == ["64800.00"]
    assert "sequence" in schemas["DepthOut"]["required"]


# ---------------------------------------------------------------------- through the read chain


class Chain:
    """The statistics chain as the gateway builds it (Redis, SQL, the statistics service), each
    model a `Folds`, their watermarks and the streams' positions set by the test."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.stream = Positions(10, 10)
        self.models = {"redis": scripted(), "sql": scripted(), "statistics": scripted()}
        self.applied: dict[str, Positions | None] = {
            "redis": Positions(10, 10),
            "sql": Positions(10, 10),
            "statistics": Positions(10, NOT_FOLLOWED),
        }
        self.watch = ReadWatch(
            [self.source(name) for name in self.models],
            self.streams,
            max_lag_s=1.0,
            interval_s=0.25,
            breaker_failures=3,
            breaker_reset_s=60.0,
            clock=lambda: self.now,
        )

    def source(self, label: str) -> ReadSource[StatisticsReads]:
        async def read() -> Positions | None:
            return self.applied[label]

        name = label if label == "statistics" else f"{label}-statistics"
        return ReadSource(name, self.models[label], read, label=label)

    async def streams(self) -> Positions:
        return self.stream

    async def moved_on(self, stream: Positions) -> None:
        """The streams reach `stream`, and more than max_lag passes."""
        self.stream = stream
        await self.watch.check()
        self.now += 1.25
        await self.watch.check()


async def test_statistics_come_from_the_first_fresh_model_and_say_which() -> None:
    chain = Chain()
    await chain.watch.check()
    statistics = chain.watch.statistics_chain("redis-statistics", "sql-statistics", "statistics")
    async with client_of(statistics) as http:
        response = await http.get("/markets/btc_usd/ticker")
        assert response.json() == BTC_USD_TICKER
        assert response.headers["bourse-read-source"] == "redis"
        assert "bourse-read-stale" not in response.headers

        # Redis is behind (its watermark stays while the streams move on): SQL answers
        chain.applied["sql"] = chain.applied["statistics"] = Positions(20, 20)
        await chain.moved_on(Positions(20, 20))
        response = await http.get("/markets/btc_usd/klines", params={"period": "1m"})
        assert response.json() == MINUTES
        assert response.headers["bourse-read-source"] == "sql"
        assert chain.models["redis"].reads == 1

        # Redis failing and SQL behind: the statistics service, fresh on EVENTS (it does not
        # follow ACCOUNTS, so the accounts stream moving on does not put it behind)
        chain.applied["redis"] = Positions(30, 25)
        chain.models["redis"].raises = RuntimeError("connection reset")
        chain.applied["statistics"] = Positions(30, NOT_FOLLOWED)
        await chain.moved_on(Positions(30, 25))
        response = await http.get("/tickers")
        assert response.status_code == 200, response.text
        assert response.headers["bourse-read-source"] == "statistics"
        assert "bourse-read-stale" not in response.headers
        assert chain.watch.sources["redis-statistics"].passed["failed"] == 1
        assert chain.watch.health()["statistics"]["applied"] == [30, None]

        # everything behind: the statistics service answers anyway, said to be stale
        await chain.moved_on(Positions(40, 25))
        response = await http.get("/markets/btc_usd/ticker")
        assert response.headers["bourse-read-source"] == "statistics"
        assert float(response.headers["bourse-read-stale"]) > 1.0

        # a bad query is refused before any model is asked: no read header
        reads = [model.reads for model in chain.models.values()]
        response = await http.get("/markets/btc_usd/klines", params={"period": "2m"})
        expect_problem(response, 422, "unknown_period")
        assert "bourse-read-source" not in response.headers
        assert [model.reads for model in chain.models.values()] == reads

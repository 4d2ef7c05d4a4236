"""The gateway's statistics reads on the real stack: tickers and k-lines from the cache's Redis
while it is up to date, from persistence's tables when Redis is away, the same answers from
both, and the read headers saying which answered."""

from __future__ import annotations

import httpx
from nats.aio.client import Client

from bourse.adapters.read_chain import StatisticsChain
from bourse.config.auth import issuer_for, key_ring_for
from bourse.config.settings import Settings
from bourse.runtime.process import BourseProcess
from bourse.services.cache import Cache
from bourse.services.gateway import Gateway
from bourse.services.persistence import Persistence
from tests.cache.conftest import RedisServer
from tests.cache.test_cache_gateway import SERVICES, cache_caught_up, running
from tests.conftest import free_port
from tests.e2e.harness import Exchange
from tests.persistence.helpers import until


async def test_statistics_are_read_from_redis_then_from_sql_alike(
    nc: Client, redis_settings: Settings, redis_server: RedisServer
) -> None:
    settings = redis_settings.model_copy(update={"http_port": free_port(), "demo_seed": True})
    process = BourseProcess(settings, [*SERVICES, Persistence], embedded_nats=False)
    try:
        await process.start()
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}/api/v3", timeout=10.0)
        exchange = Exchange(settings, nc, process, http, issuer_for(settings, key_ring_for(settings)))
        cache, gateway = running(process, Cache), running(process, Gateway)
        assert isinstance(cache, Cache)
        assert isinstance(gateway, Gateway)
        assert isinstance(gateway.statistics, StatisticsChain)
        watch = gateway.watch
        assert watch is not None
        alice, bob = exchange.member(1), exchange.member(2)

        await alice.limit("sell", "0.1", "50000")
        await bob.limit("buy", "0.04", "50000")
        await bob.limit("buy", "0.1", "49000")
        await exchange.settle()
        await cache_caught_up(nc, settings, cache)
        await watch.check()

        ticker = await http.get("/markets/btc_usd/ticker")
        assert ticker.status_code == 200, ticker.text
        assert ticker.headers["bourse-read-source"] == "redis"
        body = ticker.json()
        assert (body["last"], body["volume"], body["trades"]) == ("50000.00", "0.040000", 1)
        assert (body["best_bid"], body["best_ask"]) == ("49000.00", "50000.00")
        klines = await http.get("/markets/btc_usd/klines", params={"period": "1m"})
        assert klines.headers["bourse-read-source"] == "redis"
        (candle,) = klines.json()
        assert (candle["open"], candle["close"], candle["volume"], candle["trades"]) == (
            "50000.00",
            "50000.00",
            "0.040000",
            1,
        )
        tickers = await http.get("/tickers")
        assert [t["market"] for t in tickers.json()] == ["btc_usd", "eth_usd", "eth_btc"]

        # Redis away: the tables answer, the same
        await redis_server.stop()
        try:
            await until(lambda: not watch.fresh("redis-statistics"), what="the gateway noticed")
            await until(lambda: watch.fresh("sql-statistics"), what="the tables are up to date")
            from_sql = await http.get("/markets/btc_usd/ticker")
            assert from_sql.headers["bourse-read-source"] == "sql"
            assert from_sql.json() == body
            again = await http.get("/markets/btc_usd/klines", params={"period": "1m"})
            assert again.headers["bourse-read-source"] == "sql"
            assert again.json() == klines.json()
        finally:
            await redis_server.start()
        await http.aclose()
    finally:
        await process.stop()

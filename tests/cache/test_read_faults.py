"""The gateway's reads under faults (issue 10, items 6-8), each reproduced against the real
servers first: Redis behind the fault proxy (tests/faults/proxy.py) reset or black-holed,
persistence paused, the SQL tables emptied as by a rebuild. Whatever happens, a read is answered
by the next read model in the chain, never with a 5xx, never with a model that is behind or empty.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import httpx
import nats
import pytest
import uvloop
from nats.aio.client import Client
from redis.asyncio import Redis
from sqlalchemy import delete

from bourse.adapters.jetstream import remove_topology
from bourse.adapters.query_client import QueryClient
from bourse.adapters.sql.database import create_engine
from bourse.adapters.sql.models import applied_positions, balances, orders, trades
from bourse.adapters.sql.read_model import SqlReadModel
from bourse.config.auth import issuer_for, key_ring_for
from bourse.config.settings import Settings
from bourse.runtime.process import BourseProcess
from bourse.runtime.service import Service
from bourse.services.cache import Cache
from bourse.services.gateway import Gateway
from bourse.services.persistence import Persistence
from tests.cache.conftest import RedisServer, redis_url_of
from tests.conftest import free_port
from tests.e2e.harness import DEMO_BALANCES, SERVICES, Exchange
from tests.faults.proxy import ThreadedProxy

WITH_CACHE = [*SERVICES[:-1], Cache, SERVICES[-1]]
"""`bourse up` with Redis: the cache before the gateway."""
FAST_READS = {"read_max_lag_s": 0.5, "read_check_interval_s": 0.1, "read_breaker_reset_s": 1.0}


def service(exchange: Exchange, kind: type[Service]) -> Any:
    host = exchange.process.host
    assert host is not None
    return next(r.service for r in host.running if isinstance(r.service, kind))


@asynccontextmanager
async def running(
    settings: Settings, nc: Client, services: list[type[Service]], **overrides: Any
) -> AsyncIterator[Exchange]:
    update = {"http_port": free_port(), "demo_seed": True, **FAST_READS, **overrides}
    settings = settings.model_copy(update=update)
    process = BourseProcess(settings, services, embedded_nats=False)
    try:
        await process.start()
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}/api/v3", timeout=30.0)
        exchange = Exchange(settings, nc, process, http, issuer_for(settings, key_ring_for(settings)))
        try:
            await exchange.settle()
            yield exchange
        finally:
            await http.aclose()
    finally:
        await process.stop()


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[ThreadedProxy]:
    with ThreadedProxy("127.0.0.1", redis_server.port) as running_proxy:
        yield running_proxy


@pytest.fixture
async def proxied(redis_settings: Settings, proxy: ThreadedProxy) -> AsyncIterator[Settings]:
    """Settings whose Redis (cache and gateway) is reached through the proxy; keys cleaned after."""
    yield redis_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{proxy.port}/0"})
    redis = Redis.from_url(redis_url_of(redis_settings))
    keys = [key async for key in redis.scan_iter(match=f"{redis_settings.namespace}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


async def trade_a_little(exchange: Exchange) -> str:
    """Alice rests a bid, Bob fills part of it; returns the bid's id (open, partially filled)."""
    alice, bob = exchange.member(1), exchange.member(2)
    bid = await alice.limit("buy", "0.4", "40000")
    await bob.limit("sell", "0.1", "40000")
    await alice.limit("buy", "0.3", "39000")
    await exchange.settle()
    return bid


async def redis_answers(exchange: Exchange) -> None:
    """Wait until the gateway judges the cache fresh (caught up, watermark sampled)."""
    gateway: Gateway = service(exchange, Gateway)
    assert gateway.watch is not None
    watch = gateway.watch
    deadline = time.monotonic() + 15.0
    while not watch.fresh("redis"):
        assert time.monotonic() < deadline, f"redis fresh: {watch.health()}"
        await asyncio.sleep(0.1)
        await watch.check()


def source_of(response: httpx.Response) -> str | None:
    source: str | None = response.headers.get("bourse-read-source")
    return source


async def test_a_redis_connection_reset_under_uvloop_is_answered_by_the_next_model_never_a_5xx(
    proxied: Settings, proxy: ThreadedProxy
) -> None:
    """The gateway runs on uvloop, as `bourse` runs it (a thread with its own loop): there a reset
    Redis connection raises `RuntimeError`, which the old chain answered with a 500, three times
    for cancels that had been applied."""

    async def scenario() -> None:
        # the fault as uvloop shows it: a pooled connection reset by the proxy -> RuntimeError
        probe = Redis.from_url(redis_url_of(proxied))
        await probe.ping()
        proxy.set_state("refuse")
        await asyncio.sleep(0.05)  # the reset reaches the idle connection before it is used
        pipe = probe.pipeline(transaction=False)  # as RedisReadModel reads
        pipe.get("x")
        with pytest.raises(RuntimeError):
            await pipe.execute()
        await pipe.reset()  # type: ignore[no-untyped-call]
        proxy.set_state("up")
        await probe.aclose()

        nc = await nats.connect(servers=proxied.nats_servers)
        try:
            # checks far apart: the reads meet the reset before a watermark check does
            async with running(proxied, nc, WITH_CACHE, read_check_interval_s=5.0) as exchange:
                bid = await trade_a_little(exchange)
                alice = exchange.member(1)
                open_orders = await alice.orders(state="open")
                await redis_answers(exchange)
                http, headers = exchange.http, alice.headers
                before = {
                    "balances": await http.get("/balances", headers=headers),
                    "orders": await http.get("/orders", params={"state": "open"}, headers=headers),
                    "order": await http.get(f"/order/{bid}", headers=headers),
                    "depth": await http.get("/markets/btc_usd/depth"),
                    "trades": await http.get("/trades", headers=headers),
                }
                # (an open order's GET is confirmed by the freshest model, the query service)
                assert {source_of(r) for name, r in before.items() if name != "order"} == {"redis"}, (
                    "the cache answered"
                )

                proxy.set_state("refuse")  # every pooled connection reset, new ones refused
                await asyncio.sleep(0.05)
                reads = [
                    http.get(path, params=params, headers=headers)
                    for _ in range(5)
                    for path, params in [
                        ("/balances", {}),
                        ("/orders", {"state": "open"}),
                        (f"/order/{bid}", {}),
                        ("/markets/btc_usd/depth", {}),
                        ("/trades", {}),
                    ]
                ]
                # the reads first, then the cancels: a read overtaken by a cancel would rightly show
                # the order cancelled (under load the gathered cancels finished first, one run in two)
                answers = await asyncio.gather(*reads)
                cancels = [http.delete(f"/order/{order['id']}", headers=headers) for order in open_orders]
                answers += await asyncio.gather(*cancels)
                assert [r.status_code for r in answers if r.status_code >= 500] == [], [
                    r.text for r in answers if r.status_code >= 500
                ]
                for response in answers[: len(reads)]:
                    assert source_of(response) in {"sql", "query"}, response.headers
                names = list(before)
                for n, response in enumerate(answers[: len(reads)]):
                    assert response.json() == before[names[n % len(names)]].json()
                for response in answers[len(reads) :]:
                    assert response.status_code == 200, response.text
                    assert response.json()["status"] == "cancelled"
                await exchange.settle()
                assert await alice.orders(state="open") == []
                gateway: Gateway = service(exchange, Gateway)
                assert gateway.watch is not None
                assert gateway.watch.sources["redis"].passed["failed"] >= 1, "redis was asked and failed"
                proxy.set_state("up")
        finally:
            await remove_topology(nc.jetstream(), proxied.namespace)
            await nc.close()

    await asyncio.to_thread(uvloop.run, scenario())


async def read_for(
    http: httpx.AsyncClient, headers: dict[str, str], seconds: float, clients: int = 10
) -> tuple[list[float], list[httpx.Response]]:
    """`clients` members' apps reading /balances back to back for `seconds`."""
    latencies: list[float] = []
    answers: list[httpx.Response] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def client() -> None:
        while loop.time() < end:
            started = loop.time()
            answers.append(await http.get("/balances", headers=headers))
            latencies.append(loop.time() - started)

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, answers


async def test_a_black_holed_redis_costs_reads_no_timeout_and_the_pool_stays_bounded(
    nc: Client, proxied: Settings, proxy: ThreadedProxy
) -> None:
    settings = proxied.model_copy(update={"gateway_redis_max_connections": 8})
    async with running(settings, nc, WITH_CACHE) as exchange:
        await trade_a_little(exchange)
        await redis_answers(exchange)
        gateway: Gateway = service(exchange, Gateway)
        assert gateway._redis is not None
        pool: Any = gateway._redis.connection_pool
        headers = exchange.member(1).headers
        expected = (await exchange.http.get("/balances", headers=headers)).json()

        up, answers = await read_for(exchange.http, headers, 2.0)
        assert {source_of(r) for r in answers} == {"redis"}
        proxy.set_state("blackhole")
        down, answers = await read_for(exchange.http, headers, 4.0)
        opened = len(pool._available_connections) + len(pool._in_use_connections)
        print(
            f"\nGET /balances, 10 clients: redis up median {statistics.median(up) * 1000:.1f} ms "
            f"({len(up)} reads); black-holed median {statistics.median(down) * 1000:.1f} ms, "
            f"max {max(down) * 1000:.0f} ms ({len(down)} reads); pool {opened} connections"
        )
        assert [r.status_code for r in answers if r.status_code != 200] == []
        assert all(r.json() == expected for r in answers)
        assert gateway.watch is not None
        paid = gateway.watch.sources["redis"].passed["failed"]
        assert paid <= 20, f"{paid} of {len(down)} reads waited for Redis: the breaker keeps it out"
        assert statistics.median(down) < 0.5, "reads do not wait for Redis's timeout (2 s before)"
        assert max(down) < 2.0
        assert opened <= 8, "the pool is bounded"
        assert gateway.watch.sources["redis"].answered > 0
        redis_share = sum(source_of(r) == "redis" for r in answers)
        assert redis_share == 0, "a black-holed Redis answers nothing"

        proxy.set_state("up")  # back: the breaker lets a check through, the cache answers again
        await redis_answers(exchange)
        assert source_of(await exchange.http.get("/balances", headers=headers)) == "redis"


async def test_with_persistence_paused_a_just_placed_order_is_listed_and_balances_agree(
    nc: Client, settings: Settings
) -> None:
    async with running(settings, nc, SERVICES) as exchange:
        await trade_a_little(exchange)
        alice = exchange.member(1)
        locked_before = (await alice.balances())["usd"][1]
        persistence: Persistence = service(exchange, Persistence)
        host = exchange.process.host
        assert host is not None
        for item in host.running:
            if item.service is persistence:
                for loop in item.loops:  # paused: its consumers stop taking messages
                    await loop.stop()
        placed = await alice.limit("buy", "0.2", "38000")
        started = time.monotonic()
        deadline = started + FAST_READS["read_max_lag_s"] + 3 * FAST_READS["read_check_interval_s"] + 0.5

        sql = SqlReadModel.from_url(settings.effective_sql_url)
        try:  # the fault: the database does not have it
            assert placed not in {str(view.id) for view in await sql.orders(1, state="open")}
        finally:
            await sql.close()
        while True:
            response = await exchange.http.get("/orders", params={"state": "open"}, headers=alice.headers)
            assert response.status_code == 200
            if placed in {order["id"] for order in response.json()}:
                break
            assert time.monotonic() < deadline, "the database stayed in use while behind"
            await asyncio.sleep(0.05)
        listed_after = time.monotonic() - started
        assert source_of(response) == "query"
        assert "bourse-read-stale" not in response.headers
        # the balances agree with the query service's: the new bid's 0.2 * 38000 usd is locked
        balances = await exchange.http.get("/balances", headers=alice.headers)
        assert source_of(balances) == "query"
        usd = next(row for row in balances.json() if row["currency"] == "usd")
        assert Decimal(usd["locked"]) == locked_before + Decimal(7600)
        query = {b.currency: b for b in await QueryClient(nc, settings.namespace).balances(1)}
        assert query["usd"].locked > 0
        print(f"\npersistence paused: the new order listed after {listed_after:.2f} s")


async def test_while_the_sql_tables_are_rebuilt_balances_are_not_an_empty_200(
    nc: Client, settings: Settings
) -> None:
    async with running(settings, nc, SERVICES) as exchange:
        alice = exchange.member(1)
        gateway: Gateway = service(exchange, Gateway)
        assert gateway.watch is not None
        await gateway.watch.check()
        assert source_of(await exchange.http.get("/balances", headers=alice.headers)) == "sql"
        persistence: Persistence = service(exchange, Persistence)
        host = exchange.process.host
        assert host is not None
        for item in host.running:
            if item.service is persistence:  # the rebuild holds persistence's lock: it waits
                for loop in item.loops:
                    await loop.stop()
        engine = create_engine(settings.effective_sql_url)
        try:  # a rebuild under way: tables there, empty, no watermark yet
            async with engine.begin() as conn:
                for table in (orders, trades, balances, applied_positions):
                    await conn.execute(delete(table))  # type: ignore[arg-type]
        finally:
            await engine.dispose()
        assert gateway._sql is not None  # its model has seen a watermark once and answers on
        assert await gateway._sql.balances(1) == [], "the fault: the tables answer empty"
        await asyncio.sleep(2 * FAST_READS["read_check_interval_s"] + 0.1)
        response = await exchange.http.get("/balances", headers=alice.headers)
        assert response.status_code == 200
        assert source_of(response) == "query"
        got = {row["currency"]: Decimal(row["available"]) for row in response.json()}
        assert got == DEMO_BALANCES[1]

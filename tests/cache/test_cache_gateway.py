"""The gateway reads Redis first and the query service when Redis is away; orders go on either
way, and a cache whose Redis came back empty rebuilds itself from the streams."""

from __future__ import annotations

import time

import httpx
from nats.aio.client import Client
from redis.asyncio import Redis

from bourse.adapters.query_client import QueryClient
from bourse.adapters.read_chain import ReadChain
from bourse.adapters.redis_read_model import RedisReadModel
from bourse.config.auth import issuer_for, key_ring_for
from bourse.config.settings import Settings
from bourse.contracts.subjects import ACCOUNTS, EVENTS
from bourse.runtime.process import BourseProcess
from bourse.runtime.service import Service
from bourse.services.accounts import AccountsService
from bourse.services.auth import Auth
from bourse.services.cache import Cache
from bourse.services.gateway import Gateway
from bourse.services.ids import Ids
from bourse.services.matching import MatchingService
from bourse.services.query import Query
from tests.cache.conftest import RedisServer
from tests.cache.test_cache_service import assert_same_answers
from tests.conftest import free_port
from tests.e2e.harness import Exchange
from tests.persistence.helpers import until

SERVICES = [Auth, Ids, AccountsService, MatchingService, Query, Cache, Gateway]


def running(process: BourseProcess, kind: type[Service]) -> Service:
    assert process.host is not None
    for item in process.host.running:
        if isinstance(item.service, kind):
            return item.service
    raise AssertionError(f"no {kind.name}")


async def cache_caught_up(nc: Client, settings: Settings, cache: Cache) -> None:
    js, ns = nc.jetstream(), settings.namespace
    events = (await js.stream_info(EVENTS.name(ns))).state.last_seq
    accounts = (await js.stream_info(ACCOUNTS.name(ns))).state.last_seq
    await until(
        lambda: (
            cache.events.watermark >= events
            and cache.accounts.watermark >= accounts
            and bool(cache.health()["ok"])
            and bool(cache.health()["ready"])
        ),
        what=f"the cache caught up: {cache.health()}",
    )


async def test_reads_fall_back_while_redis_is_down(
    nc: Client, redis_settings: Settings, redis_server: RedisServer
) -> None:
    settings = redis_settings.model_copy(update={"http_port": free_port(), "demo_seed": True})
    process = BourseProcess(settings, SERVICES, embedded_nats=False)
    redis = Redis.from_url(redis_server.url)
    try:
        await process.start()
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}/api/v3", timeout=10.0)
        exchange = Exchange(settings, nc, process, http, issuer_for(settings, key_ring_for(settings)))
        cache = running(process, Cache)
        assert isinstance(cache, Cache)
        gateway = running(process, Gateway)
        assert isinstance(gateway, Gateway)
        reads = gateway.reads
        assert isinstance(reads, ReadChain)
        watch = gateway.watch
        assert watch is not None
        redis_answers = watch.sources["redis"]
        alice, bob = exchange.member(1), exchange.member(2)
        await exchange.settle()

        bid = await alice.limit("buy", "0.4", "40000")
        await bob.limit("sell", "0.1", "40000")
        await exchange.settle()
        await cache_caught_up(nc, settings, cache)
        await watch.check()
        answered = redis_answers.answered
        assert (await alice.order(bid))["status"] == "partially_filled"
        balances = await alice.balances()
        depth = (await http.get("/markets/btc_usd/depth")).json()
        assert redis_answers.answered == answered + 3, "Redis answered"

        # Redis down: the cache is unhealthy, reads come from the query service, orders go on
        await redis_server.stop()
        await until(lambda: not cache.health()["ok"], what="the cache noticed")
        assert not process.health()["ok"]
        started = time.perf_counter()
        assert await alice.balances() == balances
        assert (await alice.order(bid))["status"] == "partially_filled"
        assert (await http.get("/markets/btc_usd/depth")).json() == depth
        assert time.perf_counter() - started < 2.0, "the fallback is quick"
        assert redis_answers.answered == answered + 3, "Redis did not answer"
        later = await alice.limit("buy", "0.2", "39000")
        await bob.limit("sell", "0.05", "40000")
        await exchange.settle()
        assert (await alice.order(later))["status"] == "submitted"
        assert (await alice.order(bid))["status"] == "partially_filled"

        # Redis back, empty: the cache rebuilds from the streams and answers again
        await redis_server.start()
        await cache_caught_up(nc, settings, cache)
        assert cache.rebuilds == 1
        await until(lambda: watch.fresh("redis"), what="the gateway sees the cache again")
        answered = redis_answers.answered
        assert (await alice.order(later))["status"] == "submitted"
        assert (await alice.order(bid))["executed"] == "0.150000"
        assert redis_answers.answered == answered + 2, "Redis answered"
        await assert_same_answers(
            RedisReadModel(redis, settings.namespace), QueryClient(nc, settings.namespace), range(0)
        )
        assert process.health()["ok"]
        await http.aclose()
    finally:
        await process.stop()
        keys = [key async for key in redis.scan_iter(match=f"{settings.namespace}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()

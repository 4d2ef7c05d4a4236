"""The cache service follows the order pipeline into Redis: the Redis read model answers as the
query service does, a redelivery changes nothing, and a cache that starts on an empty Redis
rebuilds everything from the streams."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.client import Client
from redis.asyncio import Redis

from bourse.adapters.jetstream import ensure_topology
from bourse.adapters.query_client import QueryClient
from bourse.adapters.redis_read_model import RedisReadModel
from bourse.application.ports import QueryFailed
from bourse.config.settings import Settings
from bourse.runtime.host import ServiceHost
from bourse.services.cache import Cache
from bourse.services.query import Query
from tests.application.test_read_queries import BAD_READ_QUERIES, ask
from tests.cache.conftest import RedisServer, redis_url_of
from tests.persistence.helpers import CATALOG, Exchange, fetch_all, stream_last, until

MEMBERS = range(10, 16)


def cache_of(host: ServiceHost) -> Cache:
    for running in host.running:
        if isinstance(running.service, Cache):
            return running.service
    raise AssertionError("no cache service")


async def caught_up(exchange: Exchange, cache: Cache) -> None:
    js, ns = exchange.js, exchange.settings.namespace
    events, accounts = await stream_last(js, ns, "events"), await stream_last(js, ns, "accounts")
    await until(
        lambda: cache.events.watermark >= events and cache.accounts.watermark >= accounts,
        what="the cache caught up",
    )


async def redis_dump(redis: Redis, namespace: str) -> dict[str, Any]:
    """Every key of the namespace with its value."""
    found: dict[str, Any] = {}
    async for key in redis.scan_iter(match=f"{namespace}:*"):
        kind: Any = await redis.type(key)
        kind = kind.decode()
        if kind == "string":
            value: Any = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1)
        else:
            value = await redis.lrange(key, 0, -1)
        found[key.decode()] = value
    return found


async def assert_same_answers(reads: RedisReadModel, queries: QueryClient, members: range) -> None:
    for member in [*members, 1, 2, 3]:
        for state in (None, "open", "closed"):
            assert await reads.orders(member, state=state, limit=1000) == await queries.orders(
                member, state=state, limit=1000
            ), (member, state)
        assert await reads.orders(member, market="eth_usd", limit=7) == await queries.orders(
            member, market="eth_usd", limit=7
        )
        everything = await queries.orders(member, limit=1000)
        if len(everything) > 3:
            before = everything[2].id
            assert await reads.orders(member, limit=5, before_id=before) == await queries.orders(
                member, limit=5, before_id=before
            )
        for view in everything[:5]:
            assert await reads.order(member, view.id) == view
        assert await reads.balances(member) == await queries.balances(member)
        assert await reads.member_trades(member, limit=1000) == await queries.member_trades(
            member, limit=1000
        )
        assert await reads.member_trades(member, "btc_usd", 3) == await queries.member_trades(
            member, "btc_usd", 3
        )
    for market in CATALOG.markets:
        assert await reads.depth(market) == await queries.depth(market), market
        assert await reads.depth(market, 2) == await queries.depth(market, 2), market
        assert await reads.trades(market, 1000) == await queries.trades(market, 1000), market


async def test_cache_follows_the_pipeline_and_is_idempotent(nc: Client, redis_settings: Settings) -> None:
    ns = redis_settings.namespace
    exchange = Exchange(nc, redis_settings)
    redis = Redis.from_url(redis_url_of(redis_settings))
    reads = RedisReadModel(redis, ns)
    queries = QueryClient(nc, ns)
    try:
        await ensure_topology(exchange.js, ns)
        host = await exchange.start(Cache, Query)
        cache = cache_of(host)
        await exchange.fund(MEMBERS)
        await exchange.trade(MEMBERS, rounds=15)
        await exchange.settled()
        await caught_up(exchange, cache)
        await until(lambda: cache.health()["ready"], what="ready")
        assert (await queries.ready()).ready
        assert cache.health()["ok"], cache.health()
        assert sum([len(await reads.trades(m, 1000)) for m in CATALOG.markets]) > 10
        await assert_same_answers(reads, queries, MEMBERS)
        with_order = (await queries.orders(10, limit=1))[0]
        with pytest.raises(QueryFailed) as failed:
            await reads.order(11, with_order.id)
        assert (failed.value.status, failed.value.code) == (404, "order_not_found")
        for case, bad in BAD_READ_QUERIES.items():  # the reads' rule, as every reader says it
            if bad.code == "unknown_market":
                continue  # the Redis read model knows no markets: an unknown one finds nothing
            with pytest.raises(QueryFailed) as failed:
                await ask(reads, 10, bad)
            assert (failed.value.status, failed.value.code, failed.value.message) == (
                bad.status,
                bad.code,
                bad.message,
            ), case

        # redelivery of every batch, in other chunks: nothing changes
        before = await redis_dump(redis, ns)
        events = await fetch_all(exchange.js, ns, "events")
        reports = await fetch_all(exchange.js, ns, "accounts")
        for chunk in range(0, len(events), 7):
            await cache.write_events(events[chunk : chunk + 7])
        await cache.write_reports(reports)
        assert await redis_dump(redis, ns) == before
        # a cache that forgot its positions in memory reads them again and still skips everything
        cache.events.positions.clear()
        cache.accounts.positions.clear()
        await cache._load_positions()
        await cache.write_events(events)
        await cache.write_reports(reports)
        assert await redis_dump(redis, ns) == before

        # a cache starting on an empty Redis recreates its consumers from the first message
        await exchange.stop()
        keys = [key async for key in redis.scan_iter(match=f"{ns}:*")]
        await redis.delete(*keys)
        with pytest.raises(QueryFailed) as failed:
            await reads.balances(10)
        assert (failed.value.status, failed.value.code) == (503, "not_ready")
        host = await exchange.start(Cache, Query)
        cache = cache_of(host)
        await caught_up(exchange, cache)
        await until(lambda: cache.health()["ready"], what="ready again")
        assert await redis_dump(redis, ns) == before
    finally:
        await exchange.stop()
        keys = [key async for key in redis.scan_iter(match=f"{ns}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def test_unreachable_redis_is_unavailable() -> None:
    redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        with pytest.raises(QueryFailed) as failed:
            await RedisReadModel(redis, "nowhere").depth("btc_usd")
        assert (failed.value.status, failed.value.code) == (503, "unavailable")
    finally:
        await redis.aclose()


async def test_a_bad_read_is_refused_before_redis_is_asked() -> None:
    redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    reads = RedisReadModel(redis, "nowhere")
    try:
        for case, bad in BAD_READ_QUERIES.items():
            if bad.code == "unknown_market":
                continue
            with pytest.raises(QueryFailed) as failed:
                await ask(reads, 1, bad)
            assert (failed.value.status, failed.value.code) == (400, "invalid_request"), case
    finally:
        await redis.aclose()


async def test_cache_started_while_redis_is_down_catches_up(
    nc: Client, redis_settings: Settings, redis_server: RedisServer
) -> None:
    ns = redis_settings.namespace
    await redis_server.stop()
    exchange = Exchange(nc, redis_settings)
    try:
        host = await exchange.start(Cache, Query)
        cache = cache_of(host)
        assert not cache.health()["ok"]
        await exchange.fund(MEMBERS)
        await exchange.trade(MEMBERS, rounds=3)
        await exchange.settled()
        assert cache.events.watermark == 0
        await redis_server.start()
        await caught_up(exchange, cache)
        await until(lambda: bool(cache.health()["ok"] and cache.health()["ready"]), what="healthy and ready")
        redis = Redis.from_url(redis_server.url)
        try:
            await assert_same_answers(RedisReadModel(redis, ns), QueryClient(nc, ns), MEMBERS)
            keys = [key async for key in redis.scan_iter(match=f"{ns}:*")]
            await redis.delete(*keys)
        finally:
            await redis.aclose()
    finally:
        await exchange.stop()

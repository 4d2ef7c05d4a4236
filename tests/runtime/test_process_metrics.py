"""Every process serves its Prometheus metrics on its health port: the process's own families
(`bourse.adapters.metrics`: CPU and memory, consumers, endpoints, snapshots, writes, HTTP,
orders) once each, beside the services' own `bourse_<service>_*` text, and the counters follow
what the exchange did, exactly.

The whole exchange (the cache with a Redis of its own included) runs in one process, as
`bourse up --processes 1` runs it, on the machine's NATS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from bourse.config.settings import SecretUrl, Settings
from bourse.contracts.subjects import ACCOUNTS, EVENTS, MATCH, ORDERS, statistics_subject
from bourse.services.cache import Cache
from bourse.services.gateway import Gateway
from tests.cache.conftest import RedisServer
from tests.conftest import SYSTEM_NATS_URL, free_port
from tests.e2e.harness import SERVICES, Exchange
from tests.runtime.scrape import Scrape

WITH_CACHE = [*SERVICES[:-1], Cache, SERVICES[-1]]
assert SERVICES[-1] is Gateway


@pytest.fixture
def nats_url() -> str:
    """The machine's NATS only: what is tested is the exposition (the runtime runs on both)."""
    return SYSTEM_NATS_URL


@pytest.fixture
async def redis_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def exchange(settings: Settings, nc: Client, redis_server: RedisServer) -> AsyncIterator[Exchange]:
    update = {
        "http_port": free_port(),
        "health_port": free_port(),
        "demo_seed": True,
        "redis_url": SecretUrl(redis_server.url),
    }
    running = await Exchange.start(settings.model_copy(update=update), nc, WITH_CACHE)
    yield running
    await running.stop()


def health_url(exchange: Exchange) -> str:
    return f"http://127.0.0.1:{exchange.settings.health_port}"


async def last_seqs(exchange: Exchange) -> dict[str, int]:
    js, ns = exchange.nc.jetstream(), exchange.settings.namespace
    return {
        spec.kind: (await js.stream_info(spec.name(ns))).state.last_seq
        for spec in (ORDERS, MATCH, EVENTS, ACCOUNTS)
    }


async def test_each_family_is_served_once_with_its_labels_and_the_counters_follow_the_exchange(
    exchange: Exchange,
) -> None:
    alice, bob = exchange.member(1), exchange.member(2)
    ns, markets = exchange.settings.namespace, sorted(exchange.settings.catalog.markets)
    streams_before = await last_seqs(exchange)
    before = await Scrape.of(health_url(exchange))

    await alice.limit("sell", "0.1", "60000")
    await bob.limit("buy", "0.1", "60000")  # one trade
    refused = await bob.post_order({"market": "btc_usd", "side": "buy", "type": "limit", "amount": "1"})
    assert refused.status_code == 422  # no price: refused by the gateway, never in ORDERS
    for _ in range(3):
        reply = await exchange.nc.request(
            statistics_subject(ns, "ticker", "btc_usd"), b'{"market":"btc_usd"}'
        )
        assert reply.data
    await exchange.settle()
    streams = await last_seqs(exchange)
    moved_in = {kind: streams[kind] - streams_before[kind] for kind in streams}
    assert all(moved_in.values()), moved_in

    async def cache_caught_up() -> Scrape:
        while True:
            scrape = await Scrape.of(health_url(exchange))
            done = scrape.moved(before, "bourse_consumer_messages_total", service="cache")
            if done >= moved_in[EVENTS.kind] + moved_in[ACCOUNTS.kind]:
                return scrape
            await asyncio.sleep(0.05)

    after = await asyncio.wait_for(cache_caught_up(), 10.0)

    # one family per name, and the names the dashboards are built on
    names = [name for name, _ in after.families]
    assert len(names) == len(set(names)), sorted(name for name in names if names.count(name) > 1)
    expected = {
        "process_cpu_seconds": "counter",
        "process_resident_memory_bytes": "gauge",
        "process_open_fds": "gauge",
        "bourse_process_info": "gauge",
        "bourse_consumer_messages": "counter",
        "bourse_consumer_batches": "counter",
        "bourse_consumer_failures": "counter",
        "bourse_consumer_batch_size": "histogram",
        "bourse_consumer_batch_seconds": "histogram",
        "bourse_consumer_lag_messages": "gauge",
        "bourse_endpoint_requests": "counter",
        "bourse_endpoint_errors": "counter",
        "bourse_endpoint_processing_seconds": "counter",
        "bourse_snapshot_age_seconds": "gauge",
        "bourse_http_requests": "counter",
        "bourse_http_request_duration_seconds": "histogram",
        "bourse_orders": "counter",
        "bourse_order_to_trade_seconds": "histogram",
        "bourse_sql_write_seconds": "histogram",
        "bourse_redis_write_seconds": "histogram",
        "bourse_persistence_transactions": "counter",  # the services' own text, kept
        "bourse_statistics_watermark": "gauge",
    }
    assert {name: after.type_of(name) for name in expected} == expected

    # which services this process runs
    info = after.series("bourse_process_info")
    services = ",".join(service.name for service in WITH_CACHE)
    assert [dict(labels)["services"] for labels in info] == [services]
    assert list(info.values()) == [1.0]

    # consumers: every message of each stream handed over once, in batches, nothing left
    for service, kinds in {
        "accounts": [ORDERS.kind],
        "matching": [MATCH.kind],
        "persistence": [EVENTS.kind, ACCOUNTS.kind],
        "statistics": [EVENTS.kind],
        "cache": [EVENTS.kind, ACCOUNTS.kind],
    }.items():
        messages = after.moved(before, "bourse_consumer_messages_total", service=service)
        batches = after.moved(before, "bourse_consumer_batches_total", service=service)
        assert messages == sum(moved_in[kind] for kind in kinds), service
        assert 1 <= batches <= messages, service
        assert after.moved(before, "bourse_consumer_batch_size_count", service=service) == batches
        assert after.moved(before, "bourse_consumer_batch_size_sum", service=service) == messages
        assert after.moved(before, "bourse_consumer_batch_seconds_count", service=service) == batches
        assert after.moved(before, "bourse_consumer_failures_total", service=service) == 0
        assert after.label_values("bourse_consumer_lag_messages", "consumer", service=service)
    for service in ("accounts", "matching"):
        assert after.value("bourse_consumer_lag_messages", service=service) == 0

    # nats.micro endpoints, as nats.micro counts them
    ticker = {"service": "statistics", "endpoint": "ticker-btc_usd"}
    assert after.moved(before, "bourse_endpoint_requests_total", **ticker) == 3
    assert after.moved(before, "bourse_endpoint_processing_seconds_total", **ticker) > 0
    assert after.series("bourse_endpoint_errors_total", **ticker)

    # snapshots: every accounts shard, every market, the statistics group
    shards = {str(shard) for shard in range(exchange.settings.accounts_shards)}
    assert after.label_values("bourse_snapshot_age_seconds", "key", service="accounts") == shards
    assert after.label_values("bourse_snapshot_age_seconds", "key", service="matching") == set(markets)
    assert after.label_values("bourse_snapshot_age_seconds", "key", service="statistics") == {"all"}
    assert all(age >= 0 for age in after.series("bourse_snapshot_age_seconds").values())

    # writers: one observation per SQL transaction; Redis written
    transactions = after.moved(before, "bourse_persistence_transactions_total")
    assert transactions >= 2
    assert after.moved(before, "bourse_sql_write_seconds_count", service="persistence") == transactions
    assert after.moved(before, "bourse_redis_write_seconds_count", service="cache") >= 2

    # the trade, from its taker order's id to its market data
    assert after.moved(before, "bourse_order_to_trade_seconds_count") == 1
    assert 0 < after.moved(before, "bourse_order_to_trade_seconds_sum") < 10

    # orders and HTTP answers of the gateway
    assert after.moved(before, "bourse_orders_total", source="rest", outcome="accepted") == 2
    assert after.moved(before, "bourse_orders_total", source="rest", outcome="refused") == 1
    assert after.moved(before, "bourse_orders_total", source="rest") == 3
    place = {"method": "POST", "route": "/api/v3/order"}
    assert after.moved(before, "bourse_http_requests_total", code="201", **place) == 2
    assert after.moved(before, "bourse_http_requests_total", code="422", **place) == 1
    assert after.moved(before, "bourse_http_request_duration_seconds_count", **place) == 3

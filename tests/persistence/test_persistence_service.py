"""The persistence service over a real exchange (accounts + matching on the machine's NATS),
writing to MariaDB and to SQLite: what lands in the tables, group commit, repeats, lag."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from bourse.adapters.jetstream import stream_position
from bourse.adapters.sql.database import create_engine
from bourse.adapters.sql.store import order_view
from bourse.application.catalog import load_catalog
from bourse.config.settings import Settings
from bourse.contracts.messages import ACCOUNTS_REPORTS_DECODER, EVENT_BATCH_DECODER
from bourse.contracts.subjects import ACCOUNTS, EVENTS
from bourse.domain.order_views import BalanceView, OrderViews
from bourse.domain.orders import OrderStatus, OrderType, PlaceOrder, RejectReason, Side
from bourse.domain.values import MemberId, OrderId
from bourse.runtime.host import ServiceHost
from bourse.runtime.process import BourseProcess
from bourse.runtime.projection import RetryPolicy
from bourse.runtime.service import ServiceContext
from bourse.services.persistence import Persistence
from tests.conftest import free_port
from tests.persistence.helpers import Exchange, dump, fetch_all, stream_last, until

BTC_USD = load_catalog().markets["btc_usd"]


def persistence_of(host: ServiceHost) -> Persistence:
    for running in host.running:
        if isinstance(running.service, Persistence):
            return running.service
    raise AssertionError("no persistence service")


async def caught_up(exchange: Exchange, service: Persistence, timeout: float = 60.0) -> None:
    ns = exchange.settings.namespace
    events = await stream_last(exchange.js, ns, "events")
    accounts = await stream_last(exchange.js, ns, "accounts")
    await until(
        lambda: service.events.watermark >= events and service.accounts.watermark >= accounts,
        timeout,
        "persistence caught up",
    )


def limit(order_id: int, member: int, side: Side, price: str, amount: str) -> PlaceOrder:
    return PlaceOrder(
        OrderId(order_id),
        MemberId(member),
        "btc_usd",
        side,
        OrderType.LIMIT,
        BTC_USD.parse_amount(amount),
        BTC_USD.parse_price(price),
    )


async def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in (await conn.execute(text(sql))).all()]
    finally:
        await engine.dispose()


async def test_orders_trades_balances_and_ledger_of_a_trade_land_in_sql(
    exchange: Exchange, sql_url: str
) -> None:
    service = persistence_of(await exchange.start(Persistence))
    await exchange.send([limit(101, 1, Side.SELL, "50000", "0.5")], member=1)
    await exchange.send([limit(102, 2, Side.BUY, "50010", "0.2")], member=2)
    await exchange.send([limit(103, 3, Side.BUY, "100000", "6")], member=3)  # beyond carol's funds
    await exchange.settled()
    await caught_up(exchange, service)

    orders = {
        row[0]: row
        for row in await rows(
            sql_url, "SELECT id, status, executed, remaining, funds, close_reason, reject_reason FROM orders"
        )
    }
    assert orders[101][1:4] == (OrderStatus.PARTIALLY_FILLED, 200_000, 300_000)
    assert orders[102][1:4] == (OrderStatus.EXECUTED, 200_000, 0)
    assert orders[102][4] == 10_000 * 10**8
    assert orders[103][1] == OrderStatus.CLOSED
    assert orders[103][5:] == ("rejected", RejectReason.INSUFFICIENT_FUNDS)
    trades = await rows(
        sql_url, "SELECT market, trade_id, price, amount, maker_order_id, taker_order_id FROM trades"
    )
    assert trades == [("btc_usd", 1, BTC_USD.parse_price("50000"), 200_000, 101, 102)]
    balances = dict(
        ((member, currency), (available, locked))
        for member, currency, available, locked in await rows(
            sql_url, "SELECT member_id, currency, available, locked FROM balances WHERE member_id > 0"
        )
    )
    assert balances[(2, "btc")] == (10 * 10**8 + 20_000_000 - 40_000, 0)
    assert balances[(1, "btc")] == (10 * 10**8 - 50_000_000, 30_000_000)
    # every balance is the sum of its ledger entries
    sums = await rows(
        sql_url,
        "SELECT account, currency, bucket, SUM(delta) FROM ledger_entries WHERE account > 0 "
        "GROUP BY account, currency, bucket",
    )
    for account, currency, bucket, total in sums:
        available, locked = balances[(account, currency)]
        assert int(total) == (available if bucket == "available" else locked)
    members = await rows(sql_url, "SELECT id, email FROM members ORDER BY id")
    assert (1, "alice@example.com") in members
    assert service.health()["ok"]


async def started(exchange: Exchange) -> Persistence:
    """A persistence service started by hand (its consumers not running): tests feed it."""
    service = Persistence(ServiceContext(exchange.settings, exchange.nc, exchange.js))
    await service.start()
    return service


async def busy_streams(exchange: Exchange, members: int = 12, rounds: int = 30) -> None:
    """Run accounts and matching over a trading mix and wait until it has all come out."""
    await exchange.start()
    await exchange.fund(range(10, 10 + members))
    await exchange.trade(range(1, 4), rounds, paced=True)
    await exchange.trade(range(10, 10 + members), rounds, paced=True)
    await exchange.settled()
    await exchange.stop()


async def test_a_long_stream_is_written_in_few_transactions(exchange: Exchange, sql_url: str) -> None:
    await busy_streams(exchange, members=20, rounds=60)
    ns = exchange.settings.namespace
    events = await stream_last(exchange.js, ns, "events")
    reports = await stream_last(exchange.js, ns, "accounts")
    assert events > 2 * Persistence.BATCH
    service = persistence_of(await exchange.start(Persistence))
    await caught_up(exchange, service)
    transactions = service.events.transactions + service.accounts.transactions
    assert service.events.messages == events
    assert service.accounts.messages == reports
    # a transaction per batch of what has arrived: a stored backlog arrives in large batches,
    # though not always full ones (the consumer hands over what is there, not a fixed count)
    assert transactions * 20 <= events + reports, (transactions, events, reports)
    assert service.events.items > 5 * transactions
    counts = await rows(sql_url, "SELECT (SELECT COUNT(*) FROM orders), (SELECT COUNT(*) FROM trades)")
    assert counts[0][0] > 1000
    assert counts[0][1] > 50


async def test_the_same_messages_written_twice_leave_the_tables_as_they_were(
    exchange: Exchange, sql_url: str
) -> None:
    await busy_streams(exchange, members=4, rounds=10)
    ns = exchange.settings.namespace
    events = await fetch_all(exchange.js, ns, "events")
    reports = await fetch_all(exchange.js, ns, "accounts")
    service = await started(exchange)
    try:
        await service.write_events(events)
        await service.write_reports(reports)
        once = await dump(sql_url)
        await service.write_reports(reports)
        await service.write_events(events)
        # and in pieces, out of the batches they first came in
        for start in range(0, len(events), 7):
            await service.write_events(events[start : start + 7])
        assert await dump(sql_url) == once
        assert service.events.duplicates == 2 * len(events)
        # counted per report: an ACCOUNTS message holds the reports of one accounts batch
        assert service.accounts.duplicates == sum(
            len(ACCOUNTS_REPORTS_DECODER.decode(msg.data).reports) for msg in reports
        )
    finally:
        await service.stop()
    assert len(once["orders"]) > 100
    assert len(once["ledger_entries"]) > 100
    assert len(once["klines"]) >= 3 * 8  # and the k-lines with them: every period of 3 markets


async def test_a_batch_published_again_by_its_producer_is_skipped(exchange: Exchange, sql_url: str) -> None:
    """Beyond JetStream's duplicate window a replayed batch is a new stream message with the
    sequence of the old envelope: the position stored in SQL is what drops it."""
    await busy_streams(exchange, members=2, rounds=5)
    ns = exchange.settings.namespace
    events = await fetch_all(exchange.js, ns, "events")
    reports = await fetch_all(exchange.js, ns, "accounts")
    service = await started(exchange)
    try:
        await service.write_events(events)
        await service.write_reports(reports)
        before = await dump(sql_url)
        for msg in events[-3:]:
            await exchange.js.publish(msg.subject, msg.data)  # no Nats-Msg-Id: stored again
        for msg in reports[-3:]:
            await exchange.js.publish(msg.subject, msg.data)
        await service.write_events((await fetch_all(exchange.js, ns, "events"))[-3:])
        await service.write_reports((await fetch_all(exchange.js, ns, "accounts"))[-3:])
        after = await dump(sql_url)
    finally:
        await service.stop()
    assert service.events.duplicates == 3
    assert (
        service.accounts.duplicates
        == sum(  # counted per report
            len(ACCOUNTS_REPORTS_DECODER.decode(msg.data).reports) for msg in reports[-3:]
        )
    )
    positions = before.pop("applied_positions"), after.pop("applied_positions")
    assert after == before
    # only the watermarks moved on (past the repeats)
    assert [row for row in positions[0] if row[2] != "*"] == [row for row in positions[1] if row[2] != "*"]


async def test_persisted_orders_equal_the_query_service_projection(exchange: Exchange, sql_url: str) -> None:
    await busy_streams(exchange, members=6, rounds=12)
    ns = exchange.settings.namespace
    events = await fetch_all(exchange.js, ns, "events")
    reports = await fetch_all(exchange.js, ns, "accounts")
    views = OrderViews()
    for msg in events:
        views.apply_events(EVENT_BATCH_DECODER.decode(msg.data))
    for msg in reports:
        for report in ACCOUNTS_REPORTS_DECODER.decode(msg.data).reports:
            views.apply_report(report, stream_position(msg).timestamp_ns)
    service = await started(exchange)
    try:
        # interleaved as two consumers would: reports first (rejections), events after
        await service.write_reports(reports)
        await service.write_events(events)
    finally:
        await service.stop()
    stored = [order_view(row) for row in await rows(sql_url, "SELECT * FROM orders")]
    assert len(stored) == views.counts()["orders"]
    for view in stored:
        assert views.order(view.member_id, view.id) == view
    balances = await rows(
        sql_url, "SELECT member_id, currency, available, locked FROM balances WHERE member_id > 0"
    )
    for member, currency, available, locked in balances:
        assert BalanceView(currency, available, locked) in views.balances(member)


async def test_a_failing_write_is_retried_until_it_commits_and_health_says_so(
    exchange: Exchange, sql_url: str
) -> None:
    host = await exchange.start(Persistence)
    service = persistence_of(host)
    service.projection.retry = RetryPolicy(first_s=0.05, max_s=5.0)
    store = service.store
    real = store.upsert_orders
    failures = 0
    health: list[Mapping[str, Any]] = []

    async def flaky(conn: Any, views: Any) -> None:
        nonlocal failures
        if failures < 3:
            failures += 1
            health.append(service.health())
            raise OSError("database went away")
        await real(conn, views)

    store.upsert_orders = flaky  # type: ignore[method-assign]
    await exchange.send([limit(101, 1, Side.SELL, "50000", "0.5")], member=1)
    await exchange.send([limit(102, 2, Side.BUY, "50010", "0.2")], member=2)
    await exchange.settled()
    await caught_up(exchange, service)
    assert failures == 3
    assert not health[-1]["ok"]
    assert health[-1]["failing"] == ["persistence-events"]
    assert "database went away" in health[-1]["events"]["last_error"]
    assert service.health()["ok"]
    assert service.events.failures == 3
    stored = await rows(sql_url, "SELECT id, status FROM orders ORDER BY id")
    assert stored == [(101, "partially_filled"), (102, "executed")]
    assert len(await rows(sql_url, "SELECT * FROM trades")) == 1


async def test_lag_counts_what_the_streams_hold_beyond_the_database(exchange: Exchange, sql_url: str) -> None:
    await busy_streams(exchange, members=2, rounds=5)
    ns = exchange.settings.namespace
    events = await fetch_all(exchange.js, ns, "events")
    reports = await fetch_all(exchange.js, ns, "accounts")
    service = await started(exchange)
    try:
        await service.refresh_lag()
        lag = service.health()["lag"]
        assert lag["events"]["messages"] == len(events)
        assert lag["accounts"]["messages"] == len(reports)
        assert sum(lag["events"]["subjects"].values()) > 0
        assert f'bourse_persistence_lag_messages{{stream="{service.events.stream}"}} {len(events)}' in (
            service.metrics()
        )
        await service.write_events(events[: len(events) // 2])
        await service.refresh_lag()
        assert service.health()["lag"]["events"]["messages"] == len(events) - len(events) // 2
        await service.write_events(events[len(events) // 2 :])
        await service.write_reports(reports)
        await service.refresh_lag()
        lag = service.health()["lag"]
    finally:
        await service.stop()
    assert lag["events"] == {"messages": 0, "subjects": dict.fromkeys(lag["events"]["subjects"], 0)}
    assert lag["accounts"]["messages"] == 0
    assert set(lag["events"]["subjects"]) == {"btc_usd", "eth_usd", "eth_btc"}


async def test_the_health_port_serves_the_lag_in_healthz_and_as_prometheus_metrics(
    exchange: Exchange, sql_settings: Settings
) -> None:
    await busy_streams(exchange, members=2, rounds=3)
    port = free_port()
    process = BourseProcess(
        sql_settings.model_copy(update={"health_port": port}), [Persistence], embedded_nats=False
    )
    await process.start()
    try:
        assert process.host is not None
        service = persistence_of(process.host)
        await caught_up(exchange, service)
        await service.refresh_lag()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            health = (await client.get("/healthz")).json()
            metrics = await client.get("/metrics")
    finally:
        await process.stop()
    facts = health["services"]["persistence"]
    assert facts["ok"]
    assert facts["lag"]["events"]["messages"] == 0
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    stream = EVENTS.name(sql_settings.namespace)
    assert f'bourse_persistence_lag_messages{{stream="{stream}"}} 0' in metrics.text
    subject = f"{sql_settings.namespace}.events.btc_usd"
    assert f'bourse_persistence_subject_lag{{stream="{stream}",subject="{subject}"}} 0' in metrics.text
    # what a Prometheus server reads of it
    families = {family.name: family for family in text_string_to_metric_families(metrics.text)}
    assert families["bourse_persistence_lag_messages"].type == "gauge"
    assert families["bourse_persistence_subject_lag"].type == "gauge"
    for name in ("messages", "items", "rows", "duplicates", "transactions", "failures"):
        assert families[f"bourse_persistence_{name}"].type == "counter"
    samples = {
        (sample.name, sample.labels["stream"]): sample.value
        for family in families.values()
        if family.name.startswith("bourse_persistence_")  # beside the process's own families
        for sample in family.samples
        if "subject" not in sample.labels
    }
    accounts_stream = ACCOUNTS.name(sql_settings.namespace)
    assert samples[("bourse_persistence_lag_messages", stream)] == 0
    assert samples[("bourse_persistence_transactions_total", stream)] >= 1
    assert samples[("bourse_persistence_messages_total", accounts_stream)] >= 1
    assert samples[("bourse_persistence_failures_total", stream)] == 0


def test_each_persistence_instance_exposes_its_own_metrics(sql_settings: Settings) -> None:
    """Two instances in one process (or one test run) keep separate registries."""
    ctx = ServiceContext(sql_settings, None, None)  # type: ignore[arg-type]  # no I/O here
    first, second = Persistence(ctx), Persistence(ctx)
    first.events.transactions = 7
    second.events.transactions = 3
    stream = first.events.stream

    def transactions(service: Persistence) -> float:
        for family in text_string_to_metric_families(service.metrics()):
            for sample in family.samples:
                if sample.name == "bourse_persistence_transactions_total" and sample.labels == {
                    "stream": stream
                }:
                    return sample.value
        raise AssertionError("no bourse_persistence_transactions_total")

    assert transactions(first) == 7
    assert transactions(second) == 3
    assert len(list(text_string_to_metric_families(first.metrics()))) == 8  # 2 gauges, 6 counters


async def test_a_second_instance_on_the_same_database_refuses_to_start(
    exchange: Exchange, sql_url: str
) -> None:
    first = await started(exchange)
    second = Persistence(ServiceContext(exchange.settings, exchange.nc, exchange.js))
    second.LOCK_WAIT_S = 0.2
    try:
        with pytest.raises(RuntimeError, match="another persistence instance"):
            await second.start()
    finally:
        await second.stop()
        await first.stop()
    third = await started(exchange)  # the first one's lock went with it
    await third.stop()

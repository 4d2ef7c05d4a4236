"""`SqlReadModel` over the persistence tables answers as the query service does for the same
pipeline run (MariaDB and SQLite), refuses with 503 while the database is away or persistence
has applied nothing, and the gateway falls back to the query service when its database is gone."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client
from sqlalchemy import text

from bourse.adapters.query_client import QueryClient
from bourse.adapters.read_chain import ReadChain
from bourse.adapters.sql.database import create_engine, is_sqlite, sqlite_file, upgrade_url
from bourse.adapters.sql.read_model import SqlReadModel
from bourse.application.ports import QueryFailed
from bourse.config.auth import issuer_for, key_ring_for
from bourse.config.settings import Settings
from bourse.runtime.process import BourseProcess
from bourse.services.gateway import Gateway
from bourse.services.persistence import Persistence
from bourse.services.query import Query
from tests.application.test_read_queries import BAD_READ_QUERIES, ask
from tests.conftest import free_port
from tests.e2e.harness import SERVICES
from tests.e2e.harness import Exchange as HttpExchange
from tests.persistence.helpers import CATALOG, Exchange
from tests.persistence.test_persistence_service import caught_up, persistence_of

MEMBERS = range(10, 16)


async def assert_same_answers(reads: SqlReadModel, queries: QueryClient, members: range) -> None:
    for member in [*members, 1, 2, 3]:
        for state in (None, "open", "closed", "cancelled"):
            assert await reads.orders(member, state=state, limit=1000) == await queries.orders(
                member, state=state, limit=1000
            ), (member, state)
        for market in CATALOG.markets:
            assert await reads.orders(member, market=market, limit=7) == await queries.orders(
                member, market=market, limit=7
            ), (member, market)
            assert await reads.orders(member, market=market, state="open") == await queries.orders(
                member, market=market, state="open"
            ), (member, market)
            assert await reads.member_trades(member, market, 1000) == await queries.member_trades(
                member, market, 1000
            ), (member, market)
            assert await reads.member_trades(member, market, 3) == await queries.member_trades(
                member, market, 3
            ), (member, market)
        everything = await queries.orders(member, limit=1000)
        assert await reads.orders(member, limit=1000) == everything
        for page in (1, 5):
            for start in (0, 2, 7):
                if len(everything) > start:
                    before = everything[start].id
                    assert await reads.orders(member, limit=page, before_id=before) == await queries.orders(
                        member, limit=page, before_id=before
                    )
        for view in everything[:10]:
            assert await reads.order(member, view.id) == view
        assert await reads.balances(member) == await queries.balances(member)
        # across markets, trades of the same time may come in another order: same trades
        sql_all = await reads.member_trades(member, limit=1000)
        query_all = await queries.member_trades(member, limit=1000)
        assert Counter(sql_all) == Counter(query_all)
        assert [t.ts for t in sql_all] == sorted((t.ts for t in sql_all), reverse=True)
    for market in CATALOG.markets:
        assert await reads.depth(market) == await queries.depth(market), market
        assert await reads.depth(market, 2) == await queries.depth(market, 2), market
        assert await reads.trades(market, 1000) == await queries.trades(market, 1000), market
        assert await reads.trades(market, 4) == await queries.trades(market, 4), market


async def test_sql_reads_equal_the_query_service(exchange: Exchange, nc: Client, sql_url: str) -> None:
    ns = exchange.settings.namespace
    reads = SqlReadModel.from_url(sql_url, markets=CATALOG.markets)
    queries = QueryClient(nc, ns)
    try:
        host = await exchange.start(Persistence, Query)
        service = persistence_of(host)
        await exchange.fund(MEMBERS)
        await exchange.trade(MEMBERS, rounds=15)
        await exchange.settled()
        await caught_up(exchange, service)
        assert (await queries.ready()).ready
        assert sum([len(await reads.trades(m, 1000)) for m in CATALOG.markets]) > 10
        assert any([(await reads.depth(m)).bids for m in CATALOG.markets])
        await assert_same_answers(reads, queries, MEMBERS)

        with_order = (await queries.orders(10, limit=1))[0]
        for member, order_id in ((11, with_order.id), (10, 1)):
            with pytest.raises(QueryFailed) as failed:
                await reads.order(member, order_id)
            assert (failed.value.status, failed.value.code) == (404, "order_not_found")
        for case, bad in BAD_READ_QUERIES.items():  # the reads' rule, as every reader says it
            with pytest.raises(QueryFailed) as failed:
                await ask(reads, 10, bad)
            assert (failed.value.status, failed.value.code, failed.value.message) == (
                bad.status,
                bad.code,
                bad.message,
            ), case
        # the exchange (member 0) earns fees in several shards: its balance is their sum
        engine = create_engine(sql_url)
        try:
            async with engine.connect() as conn:
                sums = (
                    await conn.execute(
                        text(
                            "SELECT currency, SUM(available), SUM(locked) FROM balances"
                            " WHERE member_id = 0 GROUP BY currency ORDER BY currency"
                        )
                    )
                ).all()
        finally:
            await engine.dispose()
        assert [(b.currency, b.available, b.locked) for b in await reads.balances(0)] == [
            (c, int(a), int(lk)) for c, a, lk in sums
        ]
    finally:
        await reads.close()


async def test_not_ready_before_persistence_applied_anything_and_unavailable_without_database(
    sql_url: str, tmp_path: Path
) -> None:
    await upgrade_url(sql_url)
    reads = SqlReadModel.from_url(sql_url)
    try:
        with pytest.raises(QueryFailed) as failed:
            await reads.balances(1)
        assert (failed.value.status, failed.value.code) == (503, "not_ready")
    finally:
        await reads.close()

    gone = f"sqlite+aiosqlite:///{tmp_path}/nowhere/bourse.db"
    if not is_sqlite(sql_url):
        gone = sql_url.rsplit("/", 1)[0] + "/bourse_no_such_database"
    reads = SqlReadModel.from_url(gone)
    try:
        with pytest.raises(QueryFailed) as failed:
            await reads.order(1, 1)
        assert (failed.value.status, failed.value.code) == (503, "unavailable")
    finally:
        await reads.close()
    assert not (tmp_path / "nowhere" / "bourse.db").exists(), "a read created the database"


def remove_sqlite(url: str) -> None:
    path = sqlite_file(url)
    assert path is not None
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def test_gateway_reads_sql_first_and_the_query_service_when_the_database_is_gone(
    nc: Client, sql_settings: Settings, sql_url: str
) -> None:
    settings = sql_settings.model_copy(update={"http_port": free_port(), "demo_seed": True})
    assert Persistence in SERVICES
    process = BourseProcess(settings, SERVICES, embedded_nats=False)
    try:
        await process.start()
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}/api/v3", timeout=10.0)
        exchange = HttpExchange(settings, nc, process, http, issuer_for(settings, key_ring_for(settings)))
        try:
            await exchange.settle()
            alice, bob = exchange.member(1), exchange.member(2)
            ask = await alice.limit("sell", "0.5", "50000")
            assert (await alice.order(ask))["id"] == ask, "read right after the write"
            await bob.limit("buy", "0.2", "50000")
            await exchange.settle()
            assert process.host is not None
            gateway = next(r.service for r in process.host.running if isinstance(r.service, Gateway))
            assert isinstance(gateway, Gateway)
            reads = gateway.reads
            assert isinstance(reads, ReadChain)
            assert isinstance(reads.sources[0].model, SqlReadModel)
            assert gateway.watch is not None
            await gateway.watch.check()  # the watermark as persistence left it after settling
            passed = reads.passed
            before = await alice.order(ask)
            orders_before = await alice.orders()
            balances_before = await alice.balances()
            trades_before = await alice.trades()
            depth = await http.get("/markets/btc_usd/depth")
            public = await http.get("/markets/btc_usd/trades")
            assert depth.status_code == public.status_code == 200, (depth.text, public.text)
            assert depth.json()["asks"]
            assert public.json()
            assert reads.passed == passed, ("the database answered", gateway.watch.health())
            assert before["status"] == "partially_filled"

            # the database goes away: the SQLite file removed, the MariaDB database dropped
            if is_sqlite(sql_url):
                remove_sqlite(sql_url)
            else:
                engine = create_engine(sql_url)
                try:
                    async with engine.begin() as conn:
                        await conn.execute(text(f"DROP DATABASE {sql_url.rsplit('/', 1)[1]}"))
                finally:
                    await engine.dispose()
            assert await alice.order(ask) == before
            assert await alice.orders() == orders_before
            assert await alice.balances() == balances_before
            assert await alice.trades() == trades_before
            assert (await http.get("/markets/btc_usd/depth")).json() == depth.json()
            assert (await http.get("/markets/btc_usd/trades")).json() == public.json()
            assert reads.passed >= passed + 6
            assert (await http.get(f"/order/{int(ask) + 1}", headers=alice.headers)).status_code == 404
        finally:
            await http.aclose()
    finally:
        await process.stop()

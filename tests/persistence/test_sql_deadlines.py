"""Every SQL I/O has a deadline, proved against the machine's MariaDB behind the fault proxy
(tests/faults/proxy.py) black-holed: packets dropped, nothing refused, so only our own deadlines
can end a wait.

- the gateway's SQL reads answer 503 `unavailable` within their deadline (so the fallback chain
  asks the next read model) and read again once the database is back;
- persistence goes not ok within a bounded time (its transaction attempt's deadline, and the
  runtime's stalled consumer), and once the database is back writes everything it missed."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bourse.adapters.redis_read_model import FallbackReadModel
from bourse.adapters.sql.audit import audit_url
from bourse.adapters.sql.database import create_engine, upgrade_url
from bourse.adapters.sql.read_model import SqlReadModel
from bourse.application.ports import QueryFailed
from bourse.config.settings import Settings
from bourse.domain.orders import Side
from bourse.services.persistence import Persistence
from tests.faults.proxy import ThreadedProxy
from tests.persistence.helpers import MARIADB_URL, Exchange, fresh_database, until
from tests.persistence.test_persistence_service import caught_up, limit, persistence_of, rows

READ_DEADLINE_S = 1.0
WITHIN_S = READ_DEADLINE_S + 1.5
"""Generous: the deadline plus scheduling on a busy 2-core box; a hung read would take minutes."""


@pytest.fixture
async def mariadb_url(tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database("mariadb", str(tmp_path)) as url:
        yield url


@pytest.fixture
def proxy() -> Iterator[ThreadedProxy]:
    upstream = make_url(MARIADB_URL)
    with ThreadedProxy(upstream.host or "127.0.0.1", upstream.port or 3306) as running:
        yield running


def through(url: str, proxy: ThreadedProxy) -> str:
    """`url` with the proxy in front of its server."""
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


async def test_a_black_holed_database_answers_503_unavailable_within_the_read_deadline(
    mariadb_url: str, proxy: ThreadedProxy
) -> None:
    await upgrade_url(mariadb_url)
    engine = create_engine(mariadb_url)
    try:
        async with engine.begin() as conn:  # persistence has applied something: reads are ready
            await conn.execute(
                text(
                    "INSERT INTO applied_positions (consumer, stream, shard, seq, stream_seq, updated_at) "
                    "VALUES ('persistence-events', 'EVENTS', '*', 1, 1, 0)"
                )
            )
    finally:
        await engine.dispose()
    reads = SqlReadModel.from_url(through(mariadb_url, proxy), timeout_s=READ_DEADLINE_S)
    direct = SqlReadModel.from_url(mariadb_url)
    chain = FallbackReadModel(reads, direct)
    try:
        assert await reads.balances(1) == []  # a pooled connection now waits in the pool
        proxy.set_state("blackhole")
        reads_to_try: dict[str, Callable[[], Awaitable[object]]] = {
            "order": lambda: reads.order(1, 1),
            "orders": lambda: reads.orders(1),
            "balances": lambda: reads.balances(1),
            "depth": lambda: reads.depth("btc_usd"),
        }
        for name, read in reads_to_try.items():
            started = time.monotonic()
            with pytest.raises(QueryFailed) as failed:
                await read()
            took = time.monotonic() - started
            assert (failed.value.status, failed.value.code) == (503, "unavailable"), name
            assert took < WITHIN_S, f"{name} took {took:.2f} s"
            assert took >= READ_DEADLINE_S * 0.9, f"{name} failed before its deadline: {failed.value}"
        # the gateway's chain: the next read model answers, after at most one deadline
        started = time.monotonic()
        assert await chain.balances(1) == []
        assert time.monotonic() - started < WITHIN_S
        assert chain.fallbacks == 1

        proxy.set_state("up")
        assert await reads.balances(1) == []
        assert await reads.orders(1) == []
    finally:
        await reads.close()
        await direct.close()


async def test_persistence_goes_not_ok_while_its_database_is_black_holed_and_catches_up_after(
    nc: Client, settings: Settings, mariadb_url: str, proxy: ThreadedProxy
) -> None:
    deadline_s, stall_s = 1.5, 3.0
    settings = settings.model_copy(
        update={
            "sql_url": through(mariadb_url, proxy),
            "accounts_linger_s": 0.0,
            "sql_transaction_timeout_s": deadline_s,
            "consumer_stall_s": stall_s,
        }
    )
    exchange = Exchange(nc, settings)
    try:
        host = await exchange.start(Persistence)
        service = persistence_of(host)
        sent = []
        for n in range(10):  # resting asks and crossing bids: orders, trades, balances, ledger
            side, price = (Side.SELL, "50000") if n % 2 == 0 else (Side.BUY, "50010")
            sent.append(100 + n)
            await exchange.send([limit(100 + n, 1 + n % 2, side, price, "0.01")], member=1 + n % 2)
        await exchange.settled()
        await caught_up(exchange, service)
        assert host.health()["persistence"]["ok"]

        proxy.set_state("blackhole")
        black_holed = time.monotonic()
        for n in range(10, 20):
            side, price = (Side.SELL, "50000") if n % 2 == 0 else (Side.BUY, "50010")
            sent.append(100 + n)
            await exchange.send([limit(100 + n, 1 + n % 2, side, price, "0.01")], member=1 + n % 2)
        await exchange.settled()  # accounts and matching do not care
        await until(lambda: not host.health()["persistence"]["ok"], 30, "persistence not ok")
        noticed_s = time.monotonic() - black_holed
        # the first attempt's deadline ends it; at worst the stall threshold does
        assert noticed_s < stall_s + 5.0, noticed_s
        facts = host.health()["persistence"]
        assert facts["failing"] or facts.get("stalled"), facts
        await until(lambda: service.events.failures + service.accounts.failures >= 2, 30, "retries")
        assert "no commit within" in str(service.events.last_error or service.accounts.last_error)

        proxy.set_state("up")
        recovered = time.monotonic()
        await caught_up(exchange, service, timeout=60)
        await until(lambda: bool(host.health()["persistence"]["ok"]), 30, "persistence ok again")
        recovery_s = time.monotonic() - recovered
        assert recovery_s < 30, recovery_s
    finally:
        await exchange.stop()

    stored = await rows(mariadb_url, "SELECT id FROM orders ORDER BY id")
    assert [row[0] for row in stored] == sent, "an order is missing from SQL"
    assert len(await rows(mariadb_url, "SELECT trade_id FROM trades")) == 10
    report = await audit_url(mariadb_url)
    assert report.ok, report.lines()


async def test_persistence_starts_past_row_locks_left_by_a_killed_instance(
    nc: Client, settings: Settings, mariadb_url: str
) -> None:
    """A previous instance killed while its statement waited keeps its row locks until the server
    gives that statement up. The next instance's start (reading the positions, noting the demo
    members) is bounded and retried as the writes are, and its sessions give a lock wait up at
    the transaction deadline, not the server's 50 s: it starts once the locks go, instead of
    dying of `Lock wait timeout exceeded` (seen in the fault suite's kill-persistence)."""
    deadline_s = 1.0
    settings = settings.model_copy(
        update={"sql_url": mariadb_url, "sql_transaction_timeout_s": deadline_s, "demo_seed": True}
    )
    await upgrade_url(mariadb_url)
    blocker = create_engine(mariadb_url)
    exchange = Exchange(nc, settings)
    try:
        async with blocker.connect() as conn:
            await conn.execute(text("INSERT INTO members (id, email, created_at) VALUES (1, NULL, 0)"))
            await conn.commit()
            # the killed instance's open transaction: member 1's row locked, nothing committed
            await conn.execute(text("UPDATE members SET created_at = 1 WHERE id = 1"))
            started = time.monotonic()
            starting = asyncio.create_task(exchange.start(Persistence))
            await asyncio.sleep(3 * deadline_s)
            assert not starting.done(), "started although the row stayed locked"
            await conn.rollback()  # the server gave the dead statement up
        host = await asyncio.wait_for(starting, 30)
        waited_s = time.monotonic() - started
        assert waited_s >= 3 * deadline_s
        service = persistence_of(host)
        assert service.engine is not None
        async with service.engine.connect() as own:
            wait = (await own.execute(text("SELECT @@SESSION.innodb_lock_wait_timeout"))).scalar_one()
        assert int(wait) == math.ceil(deadline_s)
    finally:
        await exchange.stop()
        await blocker.dispose()

"""`bourse rebuild` and `bourse db reset` are safe by construction (issue 10, item 1): they take
the persistence lock before touching anything and refuse while a persistence service holds it;
they build new tables beside the live ones and swap them in at once, so a failure half way
leaves the live tables as they were. On MariaDB and SQLite."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest
from sqlalchemy import text

from bourse import cli
from bourse.adapters.sql.audit import audit_url
from bourse.adapters.sql.database import create_engine, head_revision, is_mysql, sqlite_file, upgrade_url
from bourse.adapters.sql.lock import LockHeld, PersistenceLock
from bourse.adapters.sql.staging import create_staging, drop_staging, staging_url, swap_in
from bourse.maintenance import rebuild_sql, reset_sql
from bourse.runtime.host import ServiceHost
from bourse.runtime.service import ServiceContext
from bourse.services.persistence import Persistence
from tests.persistence.helpers import Exchange, dump, scalar
from tests.persistence.test_persistence_service import busy_streams, caught_up, persistence_of


class Interrupted(Exception):
    """The operator's Ctrl-C, or anything else that stops a rebuild half way."""


async def staging_exists(url: str) -> bool:
    staging = staging_url(url)
    if is_mysql(staging):
        found = await scalar(
            url, f"SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = '{staging.database}'"
        )
        return bool(found)
    path = sqlite_file(staging)
    assert path is not None
    return path.exists()


async def command(monkeypatch: pytest.MonkeyPatch, exchange: Exchange, *argv: str) -> int:
    """`bourse ARGV...` as an operator runs it (its own event loop, settings from the environment)."""
    settings = exchange.settings
    monkeypatch.setenv("BOURSE_SQL_URL", settings.effective_sql_url)
    monkeypatch.setenv("BOURSE_NATS_URL", ",".join(settings.nats_servers))
    monkeypatch.setenv("BOURSE_NAMESPACE", settings.namespace)
    monkeypatch.setenv("BOURSE_DATA_DIR", str(settings.data_dir))
    return await asyncio.to_thread(cli.main, list(argv))


async def member_rows(url: str) -> None:
    """A schema with a few rows in it, written directly."""
    await upgrade_url(url)
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            for member in (1, 2, 3):
                await conn.execute(
                    text("INSERT INTO members (id, email, created_at) VALUES (:id, NULL, 0)"), {"id": member}
                )
    finally:
        await engine.dispose()


@pytest.mark.parametrize("argv", [("rebuild", "--yes"), ("db", "reset", "--yes")], ids=["rebuild", "reset"])
async def test_a_destructive_command_beside_a_running_persistence_is_refused_and_every_row_stays(
    exchange: Exchange,
    sql_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: tuple[str, ...],
) -> None:
    await busy_streams(exchange, members=4, rounds=6)
    service = persistence_of(await exchange.start(Persistence))
    await caught_up(exchange, service)
    before = await dump(sql_url)
    assert len(before["orders"]) > 20

    code = await command(monkeypatch, exchange, *argv)

    assert code == cli.LOCK_HELD
    err = capsys.readouterr().err
    assert "refused, nothing changed" in err
    assert "stop the persistence service" in err
    assert await dump(sql_url) == before
    assert not await staging_exists(sql_url)
    # the service still writes into its tables, and they still agree with the ledger
    await exchange.trade(range(1, 4), 4, paced=True)
    await exchange.settled()
    await caught_up(exchange, service)
    after = await dump(sql_url)
    assert set(before["trades"]) <= set(after["trades"])
    assert set(before["ledger_entries"]) < set(after["ledger_entries"])
    report = await audit_url(sql_url)
    assert report.ok, report.lines()


async def test_rebuild_and_reset_are_refused_while_another_process_holds_the_lock(
    exchange: Exchange, sql_url: str
) -> None:
    await member_rows(sql_url)
    before = await dump(sql_url)
    lock = PersistenceLock(sql_url)
    await lock.acquire()
    try:
        with pytest.raises(LockHeld, match="another persistence instance holds the lock"):
            await rebuild_sql(exchange.settings, lock_wait_s=0.1)
        with pytest.raises(LockHeld, match="another persistence instance holds the lock"):
            await reset_sql(sql_url, lock_wait_s=0.1)
    finally:
        await lock.release()
    assert await dump(sql_url) == before
    assert not await staging_exists(sql_url)


async def test_a_rebuild_that_fails_half_way_leaves_the_live_tables_as_they_were(
    exchange: Exchange, sql_url: str
) -> None:
    await busy_streams(exchange, members=6, rounds=12)
    host = ServiceHost(ServiceContext(exchange.settings, exchange.nc, exchange.js))
    await host.start([Persistence])
    try:
        await caught_up(exchange, persistence_of(host))
    finally:
        await host.stop()
    live = await dump(sql_url)
    calls: list[str] = []

    def interrupted(line: str) -> None:
        calls.append(line)
        if len(calls) == 2:  # a second into applying the streams to the new tables
            raise Interrupted

    with pytest.raises(Interrupted):
        await rebuild_sql(exchange.settings, progress=interrupted)

    assert len(calls) == 2
    assert await dump(sql_url) == live
    assert not await staging_exists(sql_url)
    report = await audit_url(sql_url)
    assert report.ok, report.lines()
    # the lock went with the failed run: a rebuild runs now, and gives the same tables
    lines: list[str] = []
    assert (await rebuild_sql(exchange.settings, progress=lines.append)).ok
    assert await dump(sql_url) == live


async def test_a_swap_that_fails_half_way_leaves_the_live_tables_as_they_were(sql_url: str) -> None:
    await member_rows(sql_url)
    live = await dump(sql_url)
    await create_staging(sql_url)
    staging = staging_url(sql_url)
    engine = create_engine(staging)
    try:
        async with engine.begin() as conn:  # the last table the swap replaces is missing
            await conn.execute(text("DROP TABLE alembic_version"))
    finally:
        await engine.dispose()

    with pytest.raises(Exception, match="alembic_version"):
        await swap_in(sql_url)

    assert await dump(sql_url) == live
    assert await scalar(sql_url, "SELECT version_num FROM alembic_version") == head_revision()
    await drop_staging(sql_url)
    assert not await staging_exists(sql_url)


async def test_db_reset_replaces_the_tables_by_empty_ones_at_the_newest_revision(sql_url: str) -> None:
    await member_rows(sql_url)

    revision = await reset_sql(sql_url)

    assert revision == head_revision()
    assert all(rows == [] for rows in (await dump(sql_url)).values())
    assert not await staging_exists(sql_url)


HOLDER = """
import asyncio, sys, time
from bourse.adapters.sql.lock import PersistenceLock

async def main() -> None:
    await PersistenceLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(600)

asyncio.run(main())
"""


async def test_a_lock_holder_killed_by_sigkill_blocks_no_one(sql_url: str) -> None:
    await upgrade_url(sql_url)
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, sql_url, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30.0) == b"held\n"
        with pytest.raises(LockHeld) as refused:
            await PersistenceLock(sql_url).acquire(wait_s=0.1)
        if not is_mysql(sql_url):
            assert f"pid {holder.pid}" in str(refused.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
    lock = PersistenceLock(sql_url)
    await lock.acquire(wait_s=10.0)
    assert lock.held
    await lock.release()

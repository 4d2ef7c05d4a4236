"""`bourse run persistence` killed with SIGKILL while it writes, then started again, leaves
exactly the tables an uninterrupted run writes: nothing twice, nothing skipped; and a database
emptied with `bourse db reset` is refilled from the streams as it was."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client

from bourse.cli import main
from bourse.config.settings import Settings
from bourse.runtime.host import ServiceHost
from bourse.runtime.service import ServiceContext
from bourse.services.persistence import Persistence
from tests.persistence.helpers import Exchange, dump, fresh_database, scalar, stream_last
from tests.persistence.test_persistence_service import busy_streams, caught_up, persistence_of


def spawn(settings: Settings, sql_url: str, folder: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BOURSE_NATS_URL": ",".join(settings.nats_servers),
        "BOURSE_NAMESPACE": settings.namespace,
        "BOURSE_SQL_URL": sql_url,
        "BOURSE_DATA_DIR": str(folder),
        "BOURSE_HEALTH_PORT": "0",
        "BOURSE_LOG_LEVEL": "WARNING",
    }
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "stderr.log", "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "bourse", "run", "persistence"],
            env=env,
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


async def watermarks(sql_url: str) -> tuple[int, int]:
    """(EVENTS, ACCOUNTS) watermarks stored in the database; 0 before the schema exists."""
    found = []
    for consumer in ("persistence-events", "persistence-accounts"):
        try:
            seq = await scalar(
                sql_url,
                f"SELECT stream_seq FROM applied_positions WHERE consumer = '{consumer}' AND shard = '*'",
            )
        except Exception:
            seq = None
        found.append(seq or 0)
    return found[0], found[1]


async def wait_for(
    sql_url: str, done: tuple[int, int], process: subprocess.Popen[bytes], timeout: float
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not all(mark >= target for mark, target in zip(await watermarks(sql_url), done, strict=True)):
        assert process.poll() is None, f"bourse run persistence exited with {process.returncode}"
        assert loop.time() < deadline, f"persistence did not reach {done}: {await watermarks(sql_url)}"
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_a_process_killed_while_writing_and_restarted_writes_what_an_uninterrupted_run_writes(
    exchange: Exchange, nc: Client, sql_url: str, tmp_path: Path
) -> None:
    ns = exchange.settings.namespace
    last = (0, 0)
    for _ in range(4):  # a busy box makes bigger accounts batches, so fewer ACCOUNTS messages
        await busy_streams(exchange, members=20, rounds=60)
        last = (await stream_last(exchange.js, ns, "events"), await stream_last(exchange.js, ns, "accounts"))
        if min(last) > 2 * Persistence.BATCH:
            break
    assert min(last) > 2 * Persistence.BATCH, "streams long enough to kill persistence mid-way"

    kind = "sqlite" if sql_url.startswith("sqlite") else "mariadb"
    async with fresh_database(kind, str(tmp_path / "reference")) as reference_url:
        reference = ServiceHost(
            ServiceContext(exchange.settings.model_copy(update={"sql_url": reference_url}), nc, exchange.js)
        )
        await reference.start([Persistence])
        await caught_up(exchange, persistence_of(reference))
        await reference.stop()
        expected = await dump(reference_url)

    first = spawn(exchange.settings, sql_url, tmp_path / "first")
    try:
        await wait_for(sql_url, (1, 0), first, timeout=60)  # its first transaction is in
        await asyncio.sleep(random.uniform(0.0, 0.15))
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
    at_kill = await watermarks(sql_url)
    assert at_kill != last, "killed too late: everything was written already"
    print(f"killed at {at_kill} of {last}")

    second = spawn(exchange.settings, sql_url, tmp_path / "second")
    try:
        await wait_for(sql_url, last, second, timeout=120)
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
    finally:
        if second.poll() is None:
            second.kill()
    assert await dump(sql_url) == expected


async def test_a_reset_database_is_refilled_from_the_streams_as_it_was(
    exchange: Exchange, sql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await busy_streams(exchange, members=4, rounds=10)
    service = persistence_of(await exchange.start(Persistence))
    await caught_up(exchange, service)
    await exchange.stop()
    before = await dump(sql_url)
    assert len(before["orders"]) > 50

    monkeypatch.setenv("BOURSE_SQL_URL", sql_url)
    assert await asyncio.to_thread(main, ["db", "reset"]) == 2  # not without --yes
    assert (await dump(sql_url))["orders"] == before["orders"]
    assert await asyncio.to_thread(main, ["db", "reset", "--yes"]) == 0
    assert all(rows == [] for rows in (await dump(sql_url)).values())

    service = persistence_of(await exchange.start(Persistence))  # resumes from an empty watermark
    await caught_up(exchange, service)
    await exchange.stop()
    assert await dump(sql_url) == before

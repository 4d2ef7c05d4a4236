"""Persistence benchmark: how fast the persistence service writes the pipeline's streams to SQL.

Run: `.venv/bin/python bench/persistence_bench.py [--commands N] [--per-message K] [--repeat R]
[--db mariadb,sqlite]`

1. A realistic stream is made without any service: the exchange-core mix of `bench/workload.py`
   (GTC and IOC orders, cancels, moves; 1000 members) goes through the accounts stage and the
   matching engine exactly as the services run them (`AccountsShard`, `MarketShard`), `K`
   commands per ORDERS message (the gateway's micro-batches), settlements fed back to accounts.
   What comes out is the `EventBatch`es and `AccountsReport`s those services would publish.
2. They are published to the EVENTS and ACCOUNTS streams of a fresh namespace on the NATS
   server (`--nats-url`, the machine's by default).
3. For each database, a fresh one (a new MariaDB database, a SQLite file in a temporary
   folder) and a `Persistence` service in this process drain both streams; the clock runs from
   the service's start (migrations included) until both watermarks reach the streams' ends.
   With `--repeat R`, R drains per database, each on a fresh database; the median is shown.

Printed: per database, messages, engine events, items (events + rejections, balance changes,
ledger entries), rows written, transactions, seconds, and the rates; CPU seconds of this
process (decoding, folding, SQLAlchemy, the driver) beside the wall time. The issue's target is
5000 events/s on MariaDB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.js.errors import NotFoundError
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bourse.adapters.jetstream import ensure_topology, remove_topology
from bourse.adapters.sql.database import create_engine
from bourse.application.accounts_stage import AccountsShard
from bourse.application.catalog import Catalog, MarketFees
from bourse.application.matching_stage import MarketShard
from bourse.config.settings import Settings
from bourse.contracts.messages import (
    AccountsBatch,
    AccountsItem,
    AccountsReports,
    Deposit,
    MatchBatch,
    MatchSegment,
    encode,
)
from bourse.contracts.subjects import ACCOUNTS, EVENTS
from bourse.domain.matching import MatchingEngine
from bourse.domain.values import MemberId
from bourse.runtime.host import ServiceHost
from bourse.runtime.service import ServiceContext
from bourse.services.persistence import Persistence
from workload import bench_market, generate

MEMBERS = 1000


@dataclass(slots=True)
class Streams:
    events: list[bytes]
    reports: list[bytes]
    engine_events: int
    items: int


def progress(message: str) -> None:
    print(f"\r  {message:<76}", end="", flush=True, file=sys.stderr)


def done_progress() -> None:
    print("\r" + " " * 80 + "\r", end="", flush=True, file=sys.stderr)


def make_streams(commands: int, per_message: int, seed: int) -> Streams:
    """Run the workload through accounts and matching, in memory, as the services would."""
    market = bench_market()
    catalog = Catalog(
        currencies={market.base.code: market.base, market.quote.code: market.quote},
        markets={market.symbol: market},
        fees={market.symbol: MarketFees(1000, 2000)},
    )
    workload = generate(commands, seed=seed, on_progress=lambda f: progress(f"workload {f:5.0%}"))
    shard = AccountsShard.empty(0, catalog, record_entries=True)
    engine = MarketShard(MatchingEngine(market), 1)
    out = Streams([], [], 0, 0)
    orders_seq = 0
    match_seq = 0

    def accounts(batch: AccountsBatch) -> list[MatchBatch]:
        nonlocal orders_seq
        orders_seq += 1
        result = shard.process(orders_seq, batch)
        if result.report is not None:
            report = result.report
            out.reports.append(encode(AccountsReports(report.shard, [report])))
            out.items += len(report.rejected) + len(report.balances) + len(report.entries)
        return [MatchBatch(0, [MatchSegment(orders_seq, cmds)]) for cmds in result.match.values()]

    def matching(batch: MatchBatch, ts: int) -> None:
        nonlocal match_seq
        match_seq += 1
        result = engine.process(match_seq, ts, batch)
        if result.events is not None:
            out.events.append(encode(result.events))
            out.engine_events += len(result.events.events)
            out.items += len(result.events.events)
        for items in result.settlements.values():
            accounts(AccountsBatch(items, origin=("matching", market.symbol, match_seq)))

    deposits: list[AccountsItem] = []
    for member in range(1, MEMBERS + 1):
        for code in (market.base.code, market.quote.code):
            deposits.append(Deposit(MemberId(member), code, 10**15, f"bench:{member}:{code}"))
    for start in range(0, len(deposits), 100):
        accounts(AccountsBatch(deposits[start : start + 100]))
    everything = workload.prefill + workload.commands
    for start in range(0, len(everything), per_message):
        chunk = everything[start : start + per_message]
        for match in accounts(AccountsBatch([command for command, _ in chunk])):
            matching(match, chunk[-1][1])
        if start % (per_message * 500) == 0:
            progress(f"accounts + matching {start / len(everything):5.0%}")
    done_progress()
    return out


async def publish(nc: Any, namespace: str, streams: Streams, symbol: str) -> None:
    js = nc.jetstream()
    await ensure_topology(js, namespace)
    subjects = [(EVENTS.subject(namespace, symbol), data) for data in streams.events]
    subjects += [(ACCOUNTS.subject(namespace, 0), data) for data in streams.reports]
    pending = []
    for i, (subject, data) in enumerate(subjects):
        pending.append(await js.publish_async(subject, data))
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending.clear()
            progress(f"publishing {i / len(subjects):5.0%}")
    await asyncio.gather(*pending)
    done_progress()


@contextlib.asynccontextmanager
async def database(kind: str, mariadb_url: str, folder: str) -> Any:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{folder}/bench.db"
        return
    name = f"bourse_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{mariadb_url}/mysql")
    async with admin.begin() as conn:
        await conn.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
    try:
        yield f"{mariadb_url}/{name}"
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        await admin.dispose()


async def drain(nc: Any, namespace: str, url: str, total_messages: int) -> dict[str, Any]:
    js = nc.jetstream()
    for durable, spec in (("persistence-events", EVENTS), ("persistence-accounts", ACCOUNTS)):
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(spec.name(namespace), durable)
    settings = Settings(
        nats_url="nats://unused", namespace=namespace, sql_url=url, demo_seed=False, _env_file=None
    )
    host = ServiceHost(ServiceContext(settings, nc, js))
    events_last = (await js.stream_info(EVENTS.name(namespace))).state.last_seq
    accounts_last = (await js.stream_info(ACCOUNTS.name(namespace))).state.last_seq
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    await host.start([Persistence])
    service = host.running[0].service
    assert isinstance(service, Persistence)
    while service.events.watermark < events_last or service.accounts.watermark < accounts_last:
        await asyncio.sleep(0.05)
        done = service.events.messages + service.accounts.messages
        elapsed = time.perf_counter() - t0
        progress(f"{service.store.dialect}: {done:,}/{total_messages:,} messages, {elapsed:5.1f} s")
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    done_progress()
    result = {
        "messages": service.events.messages + service.accounts.messages,
        "events": service.events.items,
        "items": service.events.items + service.accounts.items,
        "rows": service.events.rows + service.accounts.rows,
        "transactions": service.events.transactions + service.accounts.transactions,
        "failures": service.events.failures + service.accounts.failures,
        "seconds": elapsed,
        "cpu": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
    }
    await host.stop()
    return result


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell: the first left aligned, the others right aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)])


async def run(args: argparse.Namespace) -> int:
    print("bourse persistence benchmark")
    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    streams = make_streams(args.commands, args.per_message, args.seed)
    total = len(streams.events) + len(streams.reports)
    print(
        f"streams: {args.commands:,} commands of the exchange-core mix (+ prefill), {args.per_message} per "
        f"message -> {len(streams.events):,} EventBatch + {len(streams.reports):,} AccountsReport messages, "
        f"{streams.engine_events:,} engine events, {streams.items:,} items "
        f"(made in {time.perf_counter() - t0:.1f} s)"
    )
    nc = await nats.connect(args.nats_url)
    namespace = f"pb{uuid.uuid4().hex[:8]}"
    rows: list[list[str]] = []
    try:
        await publish(nc, namespace, streams, bench_market().symbol)
        with tempfile.TemporaryDirectory() as folder:
            for kind in args.db.split(","):
                runs: list[dict[str, Any]] = []
                for _ in range(args.repeat):
                    async with database(kind, args.mariadb_url, f"{folder}/{len(runs)}") as url:
                        runs.append(await drain(nc, namespace, url, total))
                runs.sort(key=lambda run: float(run["seconds"]))
                r = runs[len(runs) // 2]  # the median run
                seconds = r["seconds"]
                rows.append(
                    [
                        kind,
                        f"{r['messages']:,}",
                        f"{r['events']:,}",
                        f"{r['items']:,}",
                        f"{r['rows']:,}",
                        f"{r['transactions']:,}",
                        f"{seconds:.2f}",
                        f"{r['events'] / seconds:,.0f}",
                        f"{r['items'] / seconds:,.0f}",
                        f"{r['messages'] / seconds:,.0f}",
                        f"{r['cpu']:.2f}",
                    ]
                )
                spread = ", ".join(f"{run['seconds']:.2f}" for run in runs)
                print(f"  {kind}: {spread} s", file=sys.stderr)
    finally:
        await remove_topology(nc.jetstream(), namespace)  # streams, and the buckets too
        await nc.close()
    print()
    headers = ["database", "messages", "events", "items", "rows", "txns", "seconds"]
    headers += ["events/s", "items/s", "msgs/s", "cpu s"]
    print(table(headers, rows))
    print(
        "\nevents: engine events (EVENTS); items: + rejections, balance changes and ledger entries (ACCOUNTS)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--commands", type=int, default=50_000, help="commands of the timed mix (default 50,000)"
    )
    parser.add_argument("--per-message", type=int, default=8, help="commands per ORDERS message (default 8)")
    parser.add_argument("--db", default="mariadb,sqlite", help="databases, comma separated (mariadb, sqlite)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="drains per database; the median is shown")
    parser.add_argument(
        "--nats-url",
        default=os.environ.get("BOURSE_TEST_NATS_URL", "nats://127.0.0.1:4222"),
        help="NATS server",
    )
    parser.add_argument(
        "--mariadb-url",
        default=os.environ.get("BOURSE_TEST_MARIADB_URL", "mysql+asyncmy://root@127.0.0.1:3306"),
        help="MariaDB server URL without a database (a fresh database is made and dropped)",
    )
    args = parser.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())

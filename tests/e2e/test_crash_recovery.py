"""Crash recovery with real processes: the stateful stages are SIGKILLed mid-stream, again and
again, and every order acknowledged over HTTP is still processed exactly once.

Three `bourse run` processes share the machine's NATS under a fresh namespace, as in production:
`accounts`, `matching`, and `auth ids query gateway`. Clients post crossing limit orders (and a
few IOC orders and cancels) through the gateway while two chaos tasks, one per stage, SIGKILL
the accounts and the matching process three times each at random moments (sometimes both are
down at once) and restart them: twice soon after a start, once after a snapshot was saved under
load; one outage per stage outlasts the gateway's 2 s wait, so some orders are answered 202
while a stage is down. Nothing is stopped gracefully: a restarted stage resumes from its last
snapshot (or the beginning) and replays its input stream, re-publishing outputs that JetStream
must drop by their deterministic message ids.

At the end, once the pipeline is idle, the streams themselves are the evidence:

- every acknowledged order (201 or 202) appears exactly once as `accepted` (EVENTS) or as a
  rejection (the engine's on EVENTS, the accounts stage's on ACCOUNTS); every 422 refusal that
  names an order id appears exactly once as a rejection;
- no order is accepted or closed twice; no trade id repeats in a market;
- the trades of every order add up to its final executed amount;
- the balances (last value of each member and currency on ACCOUNTS, the exchange's fee account,
  member 0, included) add up to the demo deposits in every currency, none is negative, and the
  query service (GET /balances) says the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client

from bourse.adapters.query_client import QueryClient
from bourse.application.catalog import load_catalog
from bourse.config.auth import issuer_for, key_ring_for
from bourse.config.settings import Settings
from bourse.contracts.messages import ACCOUNTS_REPORTS_DECODER, EVENT_BATCH_DECODER, AccountsReport
from bourse.contracts.subjects import ACCOUNTS, EVENTS, MATCH, ORDERS, STREAMS
from bourse.domain.orders import OrderAccepted, OrderClosed, OrderRejected, OrderUpdated, Trade
from bourse.services.accounts import AccountsService
from bourse.services.matching import MatchingService
from tests.conftest import SYSTEM_NATS_URL, free_port
from tests.e2e.harness import delete_namespace

TAIL_S = 1.5
"""Seconds of load after the last restart."""
WORKERS = 6
KILLS_EACH = 3
"""SIGKILLs of the accounts process, and of the matching process."""
SEED = 20261125
SNAPSHOT_EVERY_S = max(AccountsService.SNAPSHOT_EVERY_S, MatchingService.SNAPSHOT_EVERY_S)

CATALOG = load_catalog()
MEMBERS = [member.id for member in CATALOG.demo_members]
DEPOSITS: Counter[str] = Counter()
for _member in CATALOG.demo_members:
    DEPOSITS.update(_member.balances)


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Proc:
    """One `bourse run` process, restartable with the same environment."""

    name: str
    services: list[str]
    env: dict[str, str]
    workdir: Path
    health_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts} ---\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bourse", "run", *self.services],
                env={**self.env, "BOURSE_HEALTH_PORT": str(self.health_port)},
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    async def healthy(self, http: httpx.AsyncClient, timeout_s: float = 60.0) -> None:
        # a bound, not a measure: a process start took over 20 s on a box at load 14
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process is not None
            assert self.process.poll() is None, f"{self.name} exited:\n{self.tail()}"
            with contextlib.suppress(httpx.HTTPError):
                response = await http.get(f"http://127.0.0.1:{self.health_port}/healthz")
                if response.status_code == 200:
                    return
            assert time.monotonic() < deadline, f"{self.name} not healthy in {timeout_s}s:\n{self.tail()}"
            await asyncio.sleep(0.05)

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class System:
    accounts: Proc
    matching: Proc
    front: Proc
    namespace: str
    api: str

    @property
    def procs(self) -> list[Proc]:
        return [self.accounts, self.matching, self.front]


@contextlib.contextmanager
def processes(tmp_path: Path, namespace: str) -> Iterator[System]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BOURSE_")}
    env.update(
        BOURSE_NATS_URL=SYSTEM_NATS_URL,
        BOURSE_NAMESPACE=namespace,
        BOURSE_DATA_DIR=str(tmp_path),
        BOURSE_HTTP_PORT=str(free_port()),
        BOURSE_PUSHER_PORT=str(free_port()),
        BOURSE_LOG_LEVEL="INFO",
    )
    system = System(
        Proc("accounts", ["accounts"], env, tmp_path),
        Proc("matching", ["matching"], env, tmp_path),
        Proc("front", ["auth", "ids", "query", "gateway"], env, tmp_path),
        namespace,
        f"http://127.0.0.1:{env['BOURSE_HTTP_PORT']}/api/v3",
    )
    try:
        yield system
    finally:
        for proc in system.procs:
            proc.kill()


@pytest.fixture
async def system_nc(namespace: str) -> AsyncIterator[Client]:
    client = await nats.connect(servers=[SYSTEM_NATS_URL])
    yield client
    await delete_namespace(client, namespace)
    await client.close()


# --- load and chaos -----------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the clients were told."""

    acknowledged: dict[int, int] = field(default_factory=dict)
    """order id -> HTTP status (201 or 202)"""
    refused: set[int] = field(default_factory=set)
    """order ids of 422 refusals made by the pipeline (insufficient funds...)"""
    statuses: Counter[str] = field(default_factory=Counter)
    resting: list[tuple[int, str]] = field(default_factory=list)
    slowest_s: float = 0.0


async def client_worker(
    index: int, api: str, tokens: dict[int, str], ledger: Ledger, stop: asyncio.Event
) -> None:
    rng = random.Random(SEED + index)
    async with httpx.AsyncClient(base_url=api, timeout=15.0) as http:
        while not stop.is_set():
            member = rng.choice(MEMBERS)
            headers = {"Authorization": f"Bearer {tokens[member]}"}
            if ledger.resting and rng.random() < 0.05:
                owner, cancel_id = ledger.resting.pop(rng.randrange(len(ledger.resting)))
                owner_headers = {"Authorization": f"Bearer {tokens[owner]}"}
                with contextlib.suppress(httpx.HTTPError):
                    response = await http.delete(f"/order/{cancel_id}", headers=owner_headers)
                    ledger.statuses[f"cancel {response.status_code}"] += 1
                continue
            side = rng.choice(("buy", "sell"))
            ioc = rng.random() < 0.1
            offset = rng.randint(0, 10) if ioc else rng.randint(-10, 3)
            price = 50_000 + (offset if side == "buy" else -offset) * 5
            body: dict[str, Any] = {
                "market": "btc_usd",
                "side": side,
                "type": "limit",
                "price": f"{price}.00",
                "amount": f"{rng.randint(1, 20) / 10_000:.4f}",
            }
            if ioc:
                body["time_in_force"] = "ioc"
            sent = time.monotonic()
            try:
                response = await http.post("/order", json=body, headers=headers)
                ledger.slowest_s = max(ledger.slowest_s, time.monotonic() - sent)
            except httpx.HTTPError as exc:
                ledger.statuses[f"place {type(exc).__name__}"] += 1
                continue
            ledger.statuses[f"place {response.status_code}"] += 1
            data = response.json()
            if response.status_code in (201, 202):
                order_id = int(data["id"])
                ledger.acknowledged[order_id] = response.status_code
                if data["status"] in ("submitted", "partially_filled") and not ioc:
                    ledger.resting.append((member, str(order_id)))
            elif response.status_code == 422 and "order_id" in data:
                ledger.refused.add(int(data["order_id"]))
            await asyncio.sleep(rng.uniform(0.0, 0.04))


async def chaos(proc: Proc, http: httpx.AsyncClient, seed: int) -> int:
    """SIGKILL the process at random moments and restart it after a random pause: soon after a
    start (it replays its input from the beginning or from an older snapshot), and at last after
    it has run long enough to save a snapshot under load (it restores it, then replays the tail).
    The accounts and the matching loops run at once, so their outages sometimes overlap."""
    rng = random.Random(seed)
    uptimes = [rng.uniform(0.3, 2.0) for _ in range(KILLS_EACH - 1)]
    uptimes.append(SNAPSHOT_EVERY_S + rng.uniform(1.0, 2.5))
    # one outage outlasts the gateway's wait for a decision (2 s): those orders are answered 202
    outages = [3.0] + [rng.uniform(0.1, 1.0) for _ in uptimes[1:]]
    for uptime, outage in zip(uptimes, outages, strict=True):
        await asyncio.sleep(uptime)
        proc.kill()
        await asyncio.sleep(outage)
        proc.start()
        await proc.healthy(http)
    return len(uptimes)


# --- reading the streams ------------------------------------------------------------------------


async def read_stream(nc: Client, subject: str) -> list[bytes]:
    js = nc.jetstream()
    sub = await js.subscribe(subject, ordered_consumer=True)
    found: list[bytes] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=2.0)
            except nats.errors.TimeoutError:
                break
            found.append(msg.data)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return found


async def settle(nc: Client, namespace: str, timeout_s: float = 20.0) -> None:
    """Until nothing is pending for accounts and matching and the query service has read all."""
    js = nc.jetstream()
    deadline = time.monotonic() + timeout_s
    quiet = 0
    while quiet < 3:
        assert time.monotonic() < deadline, "the pipeline did not settle"
        await asyncio.sleep(0.2)
        last = [(await js.stream_info(spec.name(namespace))).state.last_seq for spec in STREAMS]
        busy = False
        for spec in (ORDERS, MATCH):
            for consumer in await js.consumers_info(spec.name(namespace)):
                busy = busy or bool(consumer.num_pending or consumer.num_ack_pending)
        with contextlib.suppress(Exception):
            ready = await QueryClient(nc, namespace).ready()
            busy = busy or ready.events_seq < last[2] or ready.accounts_seq < last[3]
        again = [(await js.stream_info(spec.name(namespace))).state.last_seq for spec in STREAMS]
        quiet = quiet + 1 if not busy and last == again else 0


# --- the test -----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_sigkilled_stages_process_every_acknowledged_order_exactly_once(
    tmp_path: Path, namespace: str, system_nc: Client
) -> None:
    started = time.monotonic()
    settings = Settings(data_dir=tmp_path, namespace=namespace, _env_file=None)
    issuer = issuer_for(settings, key_ring_for(settings))  # the key exists before auth starts
    tokens: dict[int, str] = {member: issuer.issue(member) for member in MEMBERS}
    ledger = Ledger()
    with processes(tmp_path, namespace) as system:
        async with httpx.AsyncClient(timeout=5.0) as http:
            for proc in system.procs:
                proc.start()
            for proc in system.procs:
                await proc.healthy(http, timeout_s=30.0)
            await wait_seeded(http, system.api, tokens)

            stop = asyncio.Event()
            workers = [
                asyncio.create_task(client_worker(i, system.api, tokens, ledger, stop))
                for i in range(WORKERS)
            ]
            try:
                kills = await asyncio.gather(
                    chaos(system.accounts, http, SEED), chaos(system.matching, http, SEED + 1)
                )
                await asyncio.sleep(TAIL_S)
            finally:
                stop.set()
                await asyncio.gather(*workers)
            for proc in system.procs:
                await proc.healthy(http)
            await settle(system_nc, namespace)
            api_balances = await balances_over_http(http, system.api, tokens)
        restored = {
            proc.name: proc.log.read_text(errors="replace").count("snapshot restored")
            for proc in (system.accounts, system.matching)
        }
        logs = {proc.name: proc.tail() for proc in system.procs}

    assert list(kills) == [KILLS_EACH, KILLS_EACH]
    assert restored["accounts"] >= 1, logs["accounts"]
    assert restored["matching"] >= 1, logs["matching"]
    assert len(ledger.acknowledged) > 300, ledger.statuses
    assert ledger.statuses["place 202"] >= 1, "no order was acknowledged while a stage was down"
    assert not any(key.startswith("place 5") for key in ledger.statuses), (ledger.statuses, logs)

    event_data = await read_stream(system_nc, EVENTS.wildcard(namespace))
    report_data = await read_stream(system_nc, ACCOUNTS.wildcard(namespace))
    events = [EVENT_BATCH_DECODER.decode(data) for data in event_data]
    # a replay of accounts may repeat reports in a differently cut message: keep each (shard, seq) once
    unique: dict[tuple[int, int], AccountsReport] = {}
    for data in report_data:
        for report in ACCOUNTS_REPORTS_DECODER.decode(data).reports:
            unique.setdefault((report.shard, report.seq), report)
    reports = list(unique.values())

    accepted: Counter[int] = Counter()
    closed: Counter[int] = Counter()
    rejected: Counter[int] = Counter()
    executed: dict[int, int] = defaultdict(int)
    traded: dict[int, int] = defaultdict(int)
    trade_ids: dict[str, list[int]] = defaultdict(list)
    for batch in events:
        for event in batch.events:
            if isinstance(event, OrderAccepted):
                accepted[event.order_id] += 1
            elif isinstance(event, OrderRejected):
                if event.command == "place":
                    rejected[event.order_id] += 1
            elif isinstance(event, Trade):
                trade_ids[event.market].append(event.trade_id)
                traded[event.maker_order_id] += event.amount
                traded[event.taker_order_id] += event.amount
            elif isinstance(event, OrderUpdated | OrderClosed):
                executed[event.order_id] = max(executed[event.order_id], event.executed)
                if isinstance(event, OrderClosed):
                    closed[event.order_id] += 1
    balances: dict[tuple[int, str], tuple[int, int]] = {}
    for report in reports:
        for refusal in report.rejected:
            if refusal.command == "place":
                rejected[refusal.order_id] += 1
        for change in report.balances:
            balances[(change.member_id, change.currency)] = (change.available, change.locked)

    # every acknowledged order: exactly one of accepted / refused, whatever was killed when
    wrong = {
        order_id: (status, accepted[order_id], rejected[order_id])
        for order_id, status in ledger.acknowledged.items()
        if accepted[order_id] + rejected[order_id] != 1
    }
    assert not wrong, (
        f"{len(wrong)} acknowledged orders not processed exactly once: {list(wrong.items())[:10]}"
    )
    assert all(rejected[order_id] == 1 and not accepted[order_id] for order_id in ledger.refused)
    assert max(accepted.values()) == 1, "an order was accepted twice"
    assert not closed or max(closed.values()) == 1, "an order was closed twice"
    for market, ids in trade_ids.items():
        repeated = [trade_id for trade_id, count in Counter(ids).items() if count > 1]
        assert not repeated, f"{market}: trade ids repeated {repeated[:10]}"
    mismatched = {
        order_id: (traded[order_id], executed[order_id])
        for order_id in set(traded) | set(executed)
        if traded[order_id] != executed[order_id]
    }
    assert not mismatched, f"trades do not add up to executed amounts: {list(mismatched.items())[:10]}"
    assert sum(len(ids) for ids in trade_ids.values()) > 50, "too few trades to prove anything"

    # money is conserved, per currency, over the members and the exchange's fee account
    totals: Counter[str] = Counter()
    for (member, currency), (available, locked) in balances.items():
        assert available >= 0, (member, currency, available)
        assert locked >= 0, (member, currency, locked)
        totals[currency] += available + locked
    assert totals == DEPOSITS, {c: totals[c] - DEPOSITS[c] for c in DEPOSITS}
    assert {member: api_balances[member] for member in MEMBERS} == {
        member: {c: v for (m, c), v in balances.items() if m == member} for member in MEMBERS
    }

    print(
        f"\ncrash recovery ({namespace}): {time.monotonic() - started:.1f}s, "
        f"{KILLS_EACH} SIGKILLs each of accounts and matching, snapshot restores {restored}, "
        f"{len(ledger.acknowledged)} orders acknowledged "
        f"({sum(1 for s in ledger.acknowledged.values() if s == 202)} as 202), "
        f"{sum(len(ids) for ids in trade_ids.values())} trades, statuses {dict(ledger.statuses)}, "
        f"slowest POST {ledger.slowest_s:.2f}s"
    )


async def wait_seeded(
    http: httpx.AsyncClient, api: str, tokens: dict[int, str], timeout_s: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        response = await http.get(
            f"{api}/balances", headers={"Authorization": f"Bearer {tokens[MEMBERS[-1]]}"}
        )
        if response.status_code == 200 and response.json():
            return
        assert time.monotonic() < deadline, "the demo members were never credited"
        await asyncio.sleep(0.1)


def units(currency: str, text: str) -> int:
    """A decimal string of the API in ledger units (zero included, unlike order amounts)."""
    return int(Decimal(text).scaleb(CATALOG.currencies[currency].precision))


async def balances_over_http(
    http: httpx.AsyncClient, api: str, tokens: dict[int, str]
) -> dict[int, dict[str, tuple[int, int]]]:
    """Each member's balances as the query service answers them, in ledger units."""
    out: dict[int, dict[str, tuple[int, int]]] = {}
    for member in MEMBERS:
        response = await http.get(f"{api}/balances", headers={"Authorization": f"Bearer {tokens[member]}"})
        assert response.status_code == 200, response.text
        out[member] = {
            row["currency"]: (units(row["currency"], row["available"]), units(row["currency"], row["locked"]))
            for row in response.json()
        }
    return out

"""Scale-out, measured: 1, 2 and 3 instances of a service, each held to a fixed CPU share, under a
load above what they can carry; what they get through per second per instance count: orders
accepted (gateway, accounts shards), reads answered (query), messages delivered (pusher).

    .venv/bin/python bench/scale_out.py                                  # gateway, then accounts shards
    .venv/bin/python bench/scale_out.py --target gateway --instances 1,2,3 --gateway-cap 0.15
    .venv/bin/python bench/scale_out.py --target accounts --accounts-cap 0.08 --rounds 1 --duration 15
    .venv/bin/python bench/scale_out.py --target query                   # --query-cap 0.02
    .venv/bin/python bench/scale_out.py --target pusher                  # --pusher-cap 0.1

Time with the defaults (2 rounds x 3 counts, 20 s warm-up, 3 windows of 15 s), on this 2-core
box: about 8 minutes for query (a system is up in 15 s, the open orders placed), 9 for pusher
(up in 25 s, the crowd connected); gateway and accounts about 20 together. The default stays
gateway then accounts (all four would take about 37 minutes); `--target` repeats for more.

What runs, per instance count n (a fresh system each time, in a temporary folder; `--rounds`
systems per count, in alternating order 1, 2, 3 then 3, 2, 1, so a drift in the machine's other
work falls on every count):

- a nats-server of the wheel (JetStream; `sync_interval` the NATS default unless `--nats-fsync`,
  so the shared server stays light) and the services the order path needs, one `bourse run`
  process each (`accounts`, `matching`, `auth`, `ids`; `statistics` for the pusher target; for
  every target but the gateway's, `--gateways` gateway processes: 2 for accounts, 3 for query,
  1 for pusher), all uncapped: "the rest" (`layout`);
- n instances of the target, each its own process in its own CPU cgroup capped at
  `--gateway-cap` / `--accounts-cap` / `--query-cap` / `--pusher-cap` cores (`cpu.cfs_quota_us` /
  `cpu.max`, over a 10 ms period so a throttled instance waits at most a few ms; longer below 0.1
  cores, the kernel's smallest quota being 1 ms: 50 ms at the query's 0.02): gateway instances
  each on their own HTTP port (the generator spreads its connections over them, no load
  balancer); accounts instances are member shards (`BOURSE_ACCOUNTS_SHARDS=n`,
  `BOURSE_ACCOUNTS_SHARD_IDS=[i]`, every process told n); query instances share the queue group
  of their endpoints (NATS spreads the gateways' requests over them); pusher instances each
  listen on their own WebSocket port. The cap is set once the instances are ready for the load
  (healthy; for query, the open orders applied; for pusher, the crowd connected): start-up at
  0.15 cores would take a minute and is not what is measured. The instances' caps add up to
  less than what the rest leaves free, so instances never fight for a core.
- The rest, and the load generator (this process, and the pusher target's client processes),
  run in cgroups of their own with a high `cpu.shares` / `cpu.weight`: other work on a shared
  box does not starve the system under test.

The load, per target:

- gateway, accounts: `--connections` keep-alive HTTP connections per target instance (the lean
  client of `bourse.sizing.lean_http`), each sending POST /order on its own schedule at
  `--offered` orders/s in all, far above capacity; a connection sends when its previous answer
  has come, so the offered rate is never reached and each connection keeps one order in flight:
  the instances are saturated and what is measured is their capacity. Orders are the mix of
  `bourse.sizing.workload` (limit orders in a band where a share trades, some market orders) for
  `--members` funded demo members, spread evenly over the accounts shards.
- query: first `--open-orders` resting orders (beyond the band: they stay open) for random
  members, until every instance has applied them; then the same closed loop (`--connections`
  per query instance, over the uncapped gateways) of REST reads the gateway sends to the query
  service, in equal shares (`READS`): a member's open orders (GET /orders?state=open&limit=20),
  balances (GET /balances), a market's depth (GET /markets/<m>/depth?limit=20), each for a
  random member's token. No persistence runs, so the gateway's SQL tables have no watermark and
  its read chain passes them by: every read is a query request (each instance's own
  `bourse_endpoint_requests_total` shows them, and how NATS spreads them). The query cap is low
  (0.02) because a read costs the query service ~35 µs of CPU and an uncapped gateway ~450 µs
  (FastAPI, the token, the NATS request): at 0.02 three instances answer ~1,800 reads/s and the
  three gateways need about a core between them, which this box has; at 0.05 one instance
  answered ~1,350 reads/s and three would have needed more gateway CPU than the box has.
- pusher: the order flow of the gateway target at a fixed `--flow` orders/s (60, whatever n) on
  `--flow-connections` connections through the uncapped gateway, so the statistics service
  publishes market data; and `--ws-connections` WebSocket clients per pusher instance (a crowd
  of `bourse.sizing.crowd` client processes per instance: each client counts its frames and
  decodes only the control ones), every client holding the ticker, the trades@100ms and the
  depth@100ms of the three markets (`public_channels`). The crowd size makes one instance the
  bottleneck: uncapped, one pusher sends those 500 clients about 20,000 messages/s (40 per
  client, 0.24 cores), more than twice what it delivers at 0.1 cores (~9,000/s at ~11 µs per
  message), so at its cap it is throttled in every period and delivers what its cap allows (the
  conflated 100 ms channels send fewer, fuller messages when the ticks run late). How we know
  the instance, not the clients, is the limit: each instance is at 100 % of its cap and
  throttled in every period, while each client process uses under 0.1 cores of CPU (`load side`
  in the table, per window in the output) and the messages the clients count match what the
  pushers say they delivered.

Measured, per window (`--windows` consecutive windows of `--duration` s after `--warmup` s, in
each system): the throughput per second, per instance (orders accepted, 201/202; reads
answered, 200; for the pusher target the instances' own `bourse_pusher_messages_delivered_total`
from their /metrics, beside the messages the clients received and the order flow's rate); p50/p99
of the requests from the send (POST /order, the GET reads; none for the pusher's market data);
each instance's CPU (its /proc utime+stime over the window, in cores, against its cap), how often
it was throttled, and its CPU per order, read or message; each process of the rest (its busiest
must stay well under a core, or the rest is the limit), the load side (this process and the
client processes), the machine's busy share. /proc counts CPU in 10 ms ticks: at 0.02 cores a
window under 15 s reads the cap to within ±10 %. The table has the medians of all windows;
reports/ gets `scale-out-<time>.json`, `.png` (throughput and latency per instance count) and
`.md` (the table).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from bourse.config.auth import issuer_for, key_ring_for
from bourse.config.settings import Settings
from bourse.runtime.nats_server import EmbeddedNatsServer, die_with_parent, nats_server_binary
from bourse.sizing.crowd import Crowd, CrowdStats, User
from bourse.sizing.lean_http import LeanHttpConnection, build_request
from bourse.sizing.loadgen import LoadGenerator
from bourse.sizing.probes import cpu_seconds, machine_busy, raise_nofile, scrape
from bourse.sizing.workload import OrderMaker, encode, write_markets_file

REPO = Path(__file__).resolve().parent.parent
REPORTS = REPO / "reports"
PERIOD_US = 10_000
"""CFS period of the caps: a throttled instance waits at most period - quota (8.5 ms at 0.15)."""
MIN_QUOTA_US = 1000
"""The kernel's smallest quota: below 0.1 cores the period grows (20 ms at 0.05) to keep the share."""
SHARES = 8
"""Weight of each of the bench's groups against its siblings (cpu.shares 8 x 1024, cpu.weight 8 x 100)."""
PARENT_SHARES = 16
"""Weight of the bench's parent group against the machine's other work (each process outside a
group weighs 1): with ten busy processes around, the bench still gets about 60 % of the machine."""
ACCEPTED = (201, 202)
MARKETS = ["btc_usd", "eth_usd", "eth_btc"]
ORDER_PATH = "/api/v3/order"
LOAD_GENERATOR = "load generator"
CLIENTS = "clients"
"""Label prefix of the pusher target's crowd processes (`clients-<instance>.<process>`)."""
INSTANCE_COUNTERS = {
    "pusher": "bourse_pusher_messages_delivered_total",
    "query": "bourse_endpoint_requests_total",
}
"""What an instance counts of its own work, read off its /metrics: a pusher's messages delivered
(the pusher target's throughput), a query instance's nats.micro requests (how the reads spread
over the instances, and proof that they reach them)."""


@dataclass(frozen=True, slots=True)
class TargetSpec:
    unit: str
    """What the throughput counts: orders, reads, messages."""
    verb: str
    """What became of them: accepted, answered, delivered."""
    latency: str | None
    """The requests p50/p99 time, None where no request is timed (the pusher's market data)."""
    gateways: int
    """Uncapped gateways in the rest by default (the gateway target's instances are its own)."""

    @property
    def what(self) -> str:
        return f"{self.unit} {self.verb}"


TARGETS: dict[str, TargetSpec] = {
    "gateway": TargetSpec("orders", "accepted", "POST /order", 0),
    "accounts": TargetSpec("orders", "accepted", "POST /order", 2),
    "query": TargetSpec("reads", "answered", "GET reads", 3),
    "pusher": TargetSpec("messages", "delivered", None, 1),
}

QUERY_CAP = 0.02
"""Cores per query instance: one answers ~550 reads/s at ~35 µs each; three need about a core of
uncapped gateways (~450 µs a read), which this box has beside them."""
PUSHER_CAP = 0.1
"""Cores per pusher instance: ~9,000 messages/s at ~11 µs each."""
WS_CONNECTIONS = 500
"""Clients per pusher instance: uncapped, one pusher sends them ~20,000 messages/s, more than twice
what it can at `PUSHER_CAP`."""


# --- CPU cgroups ------------------------------------------------------------------------------


class CpuGroups:
    """Child cgroups of the cpu controller for this run: cgroup v2 (cpu.max, cpu.weight) where
    the unified hierarchy has the cpu controller, else cgroup v1 (cpu.cfs_quota_us, cpu.shares).
    Made under one parent named after this process, removed at the end."""

    def __init__(self) -> None:
        v2 = Path("/sys/fs/cgroup")
        controllers = v2 / "cgroup.controllers"
        v1 = self._v1_mount()
        if controllers.exists() and "cpu" in controllers.read_text().split():
            self.version, base = 2, v2
        elif v1 is not None:
            self.version, base = 1, v1
        else:
            raise SystemExit(
                "no writable cpu cgroup controller (v2 /sys/fs/cgroup/cgroup.controllers without cpu, "
                "no v1 cpu hierarchy): run as root on a machine with cgroups to cap instances"
            )
        self.root = base
        self.parent = base / f"bourse-scale-out-{os.getpid()}"
        try:
            if self.version == 2:
                self._enable(base)
            self.parent.mkdir()
            if self.version == 2:
                self._enable(self.parent)
                (self.parent / "cpu.weight").write_text(str(100 * PARENT_SHARES))
            else:
                (self.parent / "cpu.shares").write_text(str(1024 * PARENT_SHARES))
        except OSError as exc:
            raise SystemExit(f"cannot create a cgroup under {base}: {exc}") from exc
        self.groups: dict[str, Path] = {}

    @staticmethod
    def _v1_mount() -> Path | None:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, point, kind, options, *_ = line.split()
            if kind == "cgroup" and "cpu" in options.split(","):
                return Path(point)
        return None

    @staticmethod
    def _enable(path: Path) -> None:
        control = path / "cgroup.subtree_control"
        if "cpu" not in control.read_text().split():
            control.write_text("+cpu")

    def create(self, name: str) -> Path:
        path = self.parent / name
        path.mkdir(exist_ok=True)
        if self.version == 2:
            (path / "cpu.weight").write_text(str(100 * SHARES))
        else:
            (path / "cpu.shares").write_text(str(1024 * SHARES))
            (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        self.groups[name] = path
        return path

    def cap(self, name: str, cores: float | None) -> None:
        """At most `cores` of CPU for the group (None: no limit)."""
        path = self.groups[name]
        period = PERIOD_US if cores is None else max(PERIOD_US, math.ceil(MIN_QUOTA_US / cores))
        quota = -1 if cores is None else round(cores * period)
        if self.version == 2:
            (path / "cpu.max").write_text(f"{'max' if quota < 0 else quota} {period}")
        else:
            (path / "cpu.cfs_quota_us").write_text("-1")
            (path / "cpu.cfs_period_us").write_text(str(period))
            (path / "cpu.cfs_quota_us").write_text(str(quota))

    def join(self, name: str, pid: int) -> None:
        (self.groups[name] / "cgroup.procs").write_text(str(pid))

    def joiner(self, name: str) -> Callable[[], None]:
        """For Popen's preexec_fn: the child enters the group before it runs anything."""
        procs = str(self.groups[name] / "cgroup.procs")

        def enter() -> None:
            with open(procs, "w") as out:
                out.write(str(os.getpid()))
            die_with_parent()

        return enter

    def throttling(self, name: str) -> tuple[int, int]:
        """(periods, throttled periods) of the group so far."""
        stats = {}
        for line in (self.groups[name] / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            stats[key] = int(value)
        return stats.get("nr_periods", 0), stats.get("nr_throttled", 0)

    def remove(self) -> None:
        """Back to the root group (this process), then remove the groups (empty by now)."""
        with contextlib.suppress(OSError):
            (self.root / "cgroup.procs").write_text(str(os.getpid()))
        for path in list(self.groups.values()):
            for _ in range(300):
                try:
                    path.rmdir()
                    break
                except OSError:  # a process still exiting
                    time.sleep(0.1)
        with contextlib.suppress(OSError):
            self.parent.rmdir()


# --- the system -------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class Spawn:
    """One `bourse run <service>` process of a system: its label, its cgroup, its own settings
    (the client-facing ports are added when it is started)."""

    label: str
    service: str
    group: str
    env: dict[str, str] = field(default_factory=dict)


def layout(target: str, n: int, gateways: int) -> list[list[Spawn]]:
    """The processes of a system with n instances of `target`, in steps (each healthy before the
    next starts): accounts first (its start makes the demo deposits, ahead of any order in each
    shard); then matching, auth, ids (and statistics, whose updates the pushers send); then the
    gateways and the query or pusher instances. Instance i is in group `instance<i>`, the rest in
    `rest`; `gateways` uncapped gateways serve every target but the gateway's own."""

    def instances(service: str) -> list[Spawn]:
        return [Spawn(f"{service}-{i}", service, f"instance{i}") for i in range(n)]

    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {sorted(TARGETS)}")
    if target == "accounts":
        first = [
            Spawn(f"accounts-{i}", "accounts", f"instance{i}", {"BOURSE_ACCOUNTS_SHARD_IDS": f"[{i}]"})
            for i in range(n)
        ]
    else:
        first = [Spawn("accounts", "accounts", "rest")]
    second = [Spawn(name, name, "rest") for name in ("matching", "auth", "ids")]
    if target == "pusher":
        second.append(Spawn("statistics", "statistics", "rest"))
    if target == "gateway":
        last = instances("gateway")
    else:
        last = [Spawn(f"gateway-{i}", "gateway", "rest") for i in range(gateways)]
        if target in ("query", "pusher"):
            last += instances(target)
    return [first, second, last]


@dataclass(slots=True)
class Proc:
    label: str
    process: subprocess.Popen[bytes]
    health_port: int | None
    group: str
    service: str = ""
    port: int | None = None
    """Where clients reach it: a gateway's HTTP port, a pusher's WebSocket port."""
    log: Path | None = None

    def tail(self, lines: int = 15) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass(slots=True)
class System:
    workdir: Path
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    def instances(self) -> list[Proc]:
        return [proc for proc in self.procs if proc.group.startswith("instance")]

    def rest(self) -> list[Proc]:
        return [proc for proc in self.procs if proc.group == "rest"]

    def of(self, service: str) -> list[Proc]:
        return [proc for proc in self.procs if proc.service == service]


def spawn_service(system: System, groups: CpuGroups, spawn: Spawn) -> Proc:
    extra = dict(spawn.env)
    port = None
    if spawn.service == "gateway":
        port = free_port()
        extra["BOURSE_HTTP_PORT"] = str(port)
    elif spawn.service == "pusher":
        port = free_port()
        extra["BOURSE_PUSHER_PORT"] = str(port)
    health = free_port()
    env = {**system.env, "BOURSE_HEALTH_PORT": str(health), "BOURSE_INSTANCE": spawn.label, **extra}
    log = system.workdir / f"{spawn.label}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bourse", "run", spawn.service],
            env=env,
            cwd=system.workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=groups.joiner(spawn.group),
        )
    proc = Proc(spawn.label, process, health, spawn.group, spawn.service, port, log)
    system.procs.append(proc)
    return proc


def start_nats(system: System, groups: CpuGroups, fsync: bool) -> str:
    server = EmbeddedNatsServer(system.workdir / "nats", free_port(), free_port(), sync_always=fsync)
    server.data_dir.mkdir(parents=True, exist_ok=True)
    config = server.data_dir / "nats-server.conf"
    config.write_text(server.config_text())
    log = (server.data_dir / "nats-server.log").open("wb")
    process = subprocess.Popen(
        [str(nats_server_binary()), "-c", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=groups.joiner("rest"),
    )
    log.close()
    system.procs.append(Proc("nats-server", process, None, "rest", "nats-server"))
    return server.url


async def wait_healthy(client: httpx.AsyncClient, procs: Sequence[Proc], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = [proc for proc in procs if proc.health_port is not None]
    while pending:
        for proc in list(pending):
            if proc.process.poll() is not None:
                raise RuntimeError(f"{proc.label} exited ({proc.process.returncode}):\n{proc.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                response = await client.get(f"http://127.0.0.1:{proc.health_port}/healthz", timeout=2.0)
                if response.status_code == 200:
                    pending.remove(proc)
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"not healthy within {timeout:.0f}s: {[proc.label for proc in pending]}")
        await asyncio.sleep(0.3)


async def wait_nats(url: str, timeout: float) -> None:
    host, port = url.removeprefix("nats://").split(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def stop(system: System) -> None:
    for proc in reversed(system.procs):
        if proc.process.poll() is None:
            proc.process.send_signal(signal.SIGTERM)
    for proc in system.procs:
        try:
            proc.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.process.kill()
            proc.process.wait()


async def start_system(args: argparse.Namespace, target: str, n: int, groups: CpuGroups) -> System:
    workdir = Path(tempfile.mkdtemp(prefix=f"bourse-scale-{target}{n}-"))
    markets = workdir / "markets.toml"
    write_markets_file(markets, args.members, header="generated by bench/scale_out.py")
    env = {key: value for key, value in os.environ.items() if not key.startswith("BOURSE_")}
    shards = n if target == "accounts" else 1
    env.update(
        BOURSE_DATA_DIR=str(workdir),
        BOURSE_NAMESPACE=f"scale{uuid.uuid4().hex[:8]}",
        BOURSE_MARKETS_FILE=str(markets),
        BOURSE_LOG_LEVEL="WARNING",
        BOURSE_ACCOUNTS_SHARDS=str(shards),
        BOURSE_PUSHER_PORT="0",
        BOURSE_PUSHER_CONNECTIONS_PER_IP_PER_S="1000000",  # the whole crowd comes from 127.0.0.1
    )
    key_ring_for(Settings(data_dir=workdir, _env_file=None))  # before any process: tokens made here verify
    system = System(workdir, env)
    nats_url = start_nats(system, groups, args.nats_fsync)
    await wait_nats(nats_url, 15.0)
    env["BOURSE_NATS_URL"] = nats_url
    async with httpx.AsyncClient() as client:
        for step in layout(target, n, args.gateways[target]):
            for spawn in step:
                spawn_service(system, groups, spawn)
            await wait_healthy(client, system.procs, 120.0)
    return system


# --- the load ---------------------------------------------------------------------------------


class Requests(Protocol):
    """What a load connection sends next (the whole request's bytes) and which answers count."""

    what: str
    """How its good answers are counted: orders accepted, reads answered."""
    ok: tuple[int, ...]

    def __call__(self, netloc: str) -> bytes: ...


def bearer(token: str, json_body: bool = False) -> bytes:
    """The header lines of a member's request (`build_request`'s `headers`)."""
    lines = f"Authorization: Bearer {token}\r\n"
    if json_body:
        lines += "Content-Type: application/json\r\n"
    return lines.encode()


class OrderRequests:
    """POST /order: the mix of `bourse.sizing.workload` (limit orders in a band where a share
    trades, 5 % market orders) for random funded members."""

    what = "orders accepted"
    ok: tuple[int, ...] = ACCEPTED

    def __init__(self, tokens: dict[int, str], maker: OrderMaker) -> None:
        self.maker = maker
        self.headers = {member: bearer(token, json_body=True) for member, token in tokens.items()}

    def __call__(self, netloc: str) -> bytes:
        maker = self.maker
        member = maker.member()
        body = maker.market_order() if maker.rng.random() < 0.05 else maker.limit()
        return build_request("POST", netloc, ORDER_PATH, self.headers[member], encode(body))


READS = ("open_orders", "balances", "depth")
"""The reads of the query target, in equal shares: each is answered by the query service."""
READ_LIMIT = 20


def read_path(kind: str, market: str) -> str:
    """The REST path of one read: a member's open orders (GET /orders?state=open), balances, or a
    market's depth; the gateway asks the query service for each (no persistence runs, so the
    SQL tables have no watermark and the read chain passes them by)."""
    if kind == "open_orders":
        return f"/api/v3/orders?state=open&limit={READ_LIMIT}"
    if kind == "balances":
        return "/api/v3/balances"
    if kind == "depth":
        return f"/api/v3/markets/{market}/depth?limit={READ_LIMIT}"
    raise ValueError(f"unknown read {kind!r}; known: {READS}")


class ReadRequests:
    """The reads of `READS` in equal shares, each for a random funded member (a random market
    for the depth). Seeded: the same arguments give the same sequence."""

    what = "reads answered"
    ok: tuple[int, ...] = (200,)

    def __init__(self, tokens: dict[int, str], markets: Sequence[str], seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.members = sorted(tokens)
        self.markets = list(markets)
        self.headers = {member: bearer(token) for member, token in tokens.items()}

    def path(self) -> tuple[int, str]:
        """(member, path) of the next read."""
        rng = self.rng
        return rng.choice(self.members), read_path(rng.choice(READS), rng.choice(self.markets))

    def __call__(self, netloc: str) -> bytes:
        member, path = self.path()
        return build_request("GET", netloc, path, self.headers[member])


@dataclass(slots=True)
class Load:
    """`connections` keep-alive connections spread over `ports`, each sending on its own
    schedule at `offered` requests/s in all; a connection sends when its previous answer has
    come, so above capacity each keeps one request in flight (a closed loop)."""

    ports: list[int]
    connections: int
    offered: float
    requests: Requests
    timeout: float = 10.0
    sent: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)
    stopping: bool = False

    async def client(self, index: int, start: float) -> None:
        port = self.ports[index % len(self.ports)]
        netloc = f"127.0.0.1:{port}"
        period = self.connections / self.offered
        slot = start + period * index / self.connections
        connection: LeanHttpConnection | None = None
        try:
            while not self.stopping:
                delay = slot - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if connection is None or connection.closed:
                    connection = await LeanHttpConnection.open("127.0.0.1", port)
                raw = self.requests(netloc)
                sent = time.perf_counter()
                try:
                    code, _ = await connection.request(raw, self.timeout)
                except Exception:
                    code = 0
                self.sent.append(sent)
                self.done.append(time.perf_counter())
                self.codes.append(code)
                slot += period  # behind schedule (above capacity): the next one goes at once
        finally:
            if connection is not None:
                connection.close()

    def between(self, lo: float, hi: float) -> tuple[list[float], int, int]:
        """(latencies of the good answers in [lo, hi), their count, refused or failed)."""
        latencies, refused = [], 0
        ok = self.requests.ok
        for sent, done, code in zip(self.sent, self.done, self.codes, strict=False):
            if lo <= done < hi:
                if code in ok:
                    latencies.append(done - sent)
                else:
                    refused += 1
        return latencies, len(latencies), refused


def public_channels(markets: Sequence[str]) -> list[str]:
    """What each client of the pusher target holds: the ticker, the trades and the depth (both at
    100 ms) of every market."""
    return [
        name
        for market in markets
        for name in (f"ticker.{market}", f"trades.{market}@100ms", f"depth.{market}@100ms")
    ]


async def place_resting(port: int, tokens: dict[int, str], count: int, seed: int) -> int:
    """`count` resting orders (beyond the band: they stay open) for random members through one
    gateway, so the query target's reads find open orders and depth; how many rest."""
    generator = LoadGenerator(
        f"http://127.0.0.1:{port}/api/v3", tokens, OrderMaker(MARKETS, len(tokens), seed=seed), seed=seed
    )
    try:
        return await generator.prepare_resting(count, concurrency=32)
    finally:
        generator.close()


async def wait_applied(client: httpx.AsyncClient, procs: Sequence[Proc], timeout: float) -> None:
    """Until every query instance shows the same stream positions applied, twice in a row half a
    second apart (what was placed is in every instance)."""
    deadline = time.monotonic() + timeout
    last: list[str] = []
    while time.monotonic() < deadline:
        seen = []
        for proc in procs:
            response = await client.get(f"http://127.0.0.1:{proc.health_port}/healthz", timeout=5.0)
            seen.append(json.dumps(response.json()["services"]["query"]["position"], sort_keys=True))
        if len(set(seen)) == 1 and seen == last:
            return
        last = seen
        await asyncio.sleep(0.5)
    raise RuntimeError(f"query instances did not catch up within {timeout:.0f}s: {last}")


async def connect_crowds(args: argparse.Namespace, system: System) -> list[Crowd]:
    """A crowd (its own client processes) per pusher instance, `--ws-connections` each, every
    client holding `public_channels`: the same load on every instance."""
    pushers = system.of("pusher")
    channels = tuple(public_channels(MARKETS))
    users = [User(None, channels)] * args.ws_connections
    crowds: list[Crowd] = []
    try:
        for _ in pushers:
            crowds.append(await Crowd.start(len(users)))

        def report(stats: CrowdStats) -> None:
            print(f"    connecting: {stats.ready} subscribed, {stats.failed} failed", flush=True)

        found = await asyncio.gather(
            *(
                crowd.connect(f"ws://127.0.0.1:{proc.port}/ws", users, 120.0, report)
                for crowd, proc in zip(crowds, pushers, strict=True)
            )
        )
    except BaseException:
        await asyncio.gather(*(crowd.stop() for crowd in crowds), return_exceptions=True)
        raise
    for proc, stats in zip(pushers, found, strict=True):
        if stats.ready < len(users):
            await asyncio.gather(*(crowd.stop() for crowd in crowds), return_exceptions=True)
            raise RuntimeError(
                f"{proc.label}: {stats.ready} of {len(users)} clients subscribed "
                f"({stats.failed} failed, errors {stats.errors}, closed {stats.closed})"
            )
    return crowds


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


@dataclass(slots=True)
class Mark:
    at: float
    cpu: dict[str, float | None]
    throttling: dict[str, tuple[int, int]]
    machine: tuple[int, int]
    counted: dict[str, float] = field(default_factory=dict)
    """Per pusher or query instance, its own counter (`INSTANCE_COUNTERS`)."""
    received: int = 0
    """Messages the crowds have received."""


async def mark(system: System, groups: CpuGroups, client: httpx.AsyncClient, crowds: Sequence[Crowd]) -> Mark:
    counting = [proc for proc in system.instances() if proc.service in INSTANCE_COUNTERS]
    scraped = await asyncio.gather(*(scrape(client, proc.health_port or 0) for proc in counting))
    messages = await received(crowds)
    own = os.times()
    cpu: dict[str, float | None] = {proc.label: cpu_seconds(proc.process.pid) for proc in system.procs}
    cpu[LOAD_GENERATOR] = own.user + own.system
    for i, crowd in enumerate(crowds):
        for j, pid in enumerate(crowd.pids()):
            cpu[f"{CLIENTS}-{i}.{j}"] = cpu_seconds(pid)
    throttling = {proc.group: groups.throttling(proc.group) for proc in system.instances()}
    return Mark(
        time.perf_counter(),
        cpu,
        throttling,
        machine_busy(),
        {
            proc.label: found.get(INSTANCE_COUNTERS[proc.service], math.nan)
            for proc, found in zip(counting, scraped, strict=True)
        },
        messages,
    )


def is_load_side(label: str) -> bool:
    return label == LOAD_GENERATOR or label.startswith(f"{CLIENTS}-")


def window_result(
    target: str, system: System, load: Load, before: Mark, after: Mark, n: int, cap: float
) -> dict[str, Any]:
    """One window's figures. The throughput: the load's good answers (orders accepted, reads
    answered), or for the pusher target the messages the instances delivered (their own
    counters), beside what the clients received and the order flow's rate. `instance_per_s`:
    each pusher's messages or query instance's requests per second, by its own counter."""
    wall = after.at - before.at
    latencies, done, failed = load.between(before.at, after.at)
    timed: list[float] | None = latencies
    per_instance = {label: (after.counted[label] - before.counted[label]) / wall for label in after.counted}
    extra: dict[str, Any] = {"instance_per_s": per_instance} if per_instance else {}
    if target == "pusher":
        extra |= {
            "clients_received_per_s": (after.received - before.received) / wall,
            "flow_orders_per_s": done / wall,
            "flow_refused_or_failed": failed,
        }
        done_per_s, timed, failed = sum(per_instance.values()), None, 0
    else:
        done_per_s = done / wall
    cores = {
        label: (end - start) / wall
        for label, end in after.cpu.items()
        if end is not None and (start := before.cpu.get(label)) is not None
    }
    instances = [proc.label for proc in system.instances()]
    rest = {
        label: value for label, value in cores.items() if label not in instances and not is_load_side(label)
    }
    throttled = {}
    for group, (periods, hits) in after.throttling.items():
        p0, h0 = before.throttling[group]
        throttled[group] = (hits - h0) / max(periods - p0, 1)
    busy = (after.machine[0] - before.machine[0]) / max(after.machine[1] - before.machine[1], 1)
    return {
        "seconds": wall,
        "per_s": done_per_s,
        "per_instance_per_s": done_per_s / n,
        "refused_or_failed": failed,
        "p50_ms": None if timed is None else percentile(timed, 50) * 1000,
        "p99_ms": None if timed is None else percentile(timed, 99) * 1000,
        "instance_cores": {label: cores.get(label) for label in instances},
        "instance_cap_used": {label: (cores.get(label) or 0.0) / cap for label in instances},
        "instance_us_per_unit": sum(cores.get(label) or 0.0 for label in instances)
        / max(done_per_s, 1e-9)
        * 1e6,
        "throttled_share": throttled,
        "rest_cores": rest,
        "load_cores": {label: value for label, value in cores.items() if is_load_side(label)},
        "machine_busy": busy,
        **extra,
    }


async def received(crowds: Sequence[Crowd]) -> int:
    """Messages the crowds have received so far."""
    return sum(stats.messages for stats in await asyncio.gather(*(crowd.stats() for crowd in crowds)))


async def progress(load: Load, crowds: Sequence[Crowd], start: float, every: float) -> None:
    seen = await received(crowds)
    while not load.stopping:
        await asyncio.sleep(every)
        now = time.perf_counter()
        latencies, done, refused = load.between(now - every, now)
        line = (
            f"    t={now - start:5.1f}s  {load.requests.what} {done / every:7.0f}/s  "
            f"refused/failed {refused:4d}  p50 {percentile(latencies, 50) * 1000:6.1f} ms  "
            f"p99 {percentile(latencies, 99) * 1000:6.1f} ms  ({len(load.codes)} answers)"
        )
        if crowds:
            total = await received(crowds)
            line += f"  clients received {(total - seen) / every:7.0f} messages/s"
            seen = total
        print(line, flush=True)


def make_load(
    args: argparse.Namespace, target: str, n: int, gateways: list[int], tokens: dict[int, str]
) -> Load:
    """The query target's reads or the orders, saturating (`--connections` per instance, offered
    `--offered`); for the pusher target the order flow, at `--flow` orders/s whatever n."""
    if target == "query":
        return Load(gateways, args.connections * n, args.offered, ReadRequests(tokens, MARKETS, seed=n))
    orders = OrderRequests(tokens, OrderMaker(MARKETS, args.members, seed=n))
    if target == "pusher":
        return Load(gateways, args.flow_connections, args.flow, orders)
    return Load(gateways, args.connections * n, args.offered, orders)


def window_line(target: str, n: int, w: dict[str, Any]) -> str:
    spec = TARGETS[target]
    line = (
        f"  {target} x{n} window: {w['per_s']:.0f} {spec.what}/s ({w['per_instance_per_s']:.0f} per instance)"
    )
    if "instance_per_s" in w:
        counter = INSTANCE_COUNTERS[target].removeprefix("bourse_")
        line += f", {counter} " + ", ".join(f"{value:.0f}/s" for value in w["instance_per_s"].values())
    if w["p50_ms"] is not None:
        line += f", {spec.latency} p50 {w['p50_ms']:.1f} ms, p99 {w['p99_ms']:.1f} ms"
    if "flow_orders_per_s" in w:
        line += (
            f", clients received {w['clients_received_per_s']:.0f} messages/s, "
            f"order flow {w['flow_orders_per_s']:.0f} orders/s"
        )
    busiest = max(w["rest_cores"].items(), key=lambda kv: kv[1])
    load = max(w["load_cores"].items(), key=lambda kv: kv[1])
    return (
        line
        + ", instances at "
        + ", ".join(f"{used:.0%}" for used in w["instance_cap_used"].values())
        + " of their cap (throttled "
        + ", ".join(f"{share:.0%}" for share in w["throttled_share"].values())
        + f"), busiest of the rest {busiest[0]} {busiest[1]:.2f} cores, "
        + f"load side {sum(w['load_cores'].values()):.2f} cores (busiest {load[0]} {load[1]:.2f}), "
        + f"machine {w['machine_busy']:.0%} busy"
    )


async def run_count(args: argparse.Namespace, target: str, n: int, groups: CpuGroups) -> list[dict[str, Any]]:
    """A fresh system with n capped instances of the target, saturated: one result per window."""
    cap = args.caps[target]
    print(f"  {target} x{n}: starting ({cap:g} cores each)", flush=True)
    began = time.monotonic()
    system = await start_system(args, target, n, groups)
    crowds: list[Crowd] = []
    try:
        settings = Settings(data_dir=system.workdir, _env_file=None)
        issuer = issuer_for(settings, key_ring_for(settings))
        tokens = {member: issuer.issue(member, ttl_s=3600) for member in range(1, args.members + 1)}
        gateways = [proc.port for proc in system.of("gateway") if proc.port is not None]
        async with httpx.AsyncClient() as client:
            if target == "query":
                resting = await place_resting(gateways[0], tokens, args.open_orders, seed=n)
                await wait_applied(client, system.of("query"), 60.0)
                print(f"  {target} x{n}: {resting} open orders placed and in every instance", flush=True)
            if target == "pusher":
                crowds = await connect_crowds(args, system)
            for i in range(n):  # once the instances are ready for the load (start-up is not measured)
                groups.cap(f"instance{i}", cap)
            load = make_load(args, target, n, gateways, tokens)
            start = time.perf_counter()
            clients = [asyncio.create_task(load.client(i, start)) for i in range(load.connections)]
            print(
                f"  {target} x{n}: up in {time.monotonic() - began:.0f}s; {load.connections} "
                f"connections over {len(gateways)} gateway port(s), offered {load.offered:.0f}/s "
                f"({load.requests.what})"
                + (f"; {args.ws_connections} WebSocket clients per pusher" if crowds else "")
                + f"; warm-up {args.warmup:.0f}s",
                flush=True,
            )
            ticker = asyncio.create_task(progress(load, crowds, start, args.progress))
            await asyncio.sleep(args.warmup)
            windows = []
            for _ in range(args.windows):
                before = await mark(system, groups, client, crowds)
                await asyncio.sleep(args.duration)
                after = await mark(system, groups, client, crowds)
                windows.append(window_result(target, system, load, before, after, n, cap))
                print(window_line(target, n, windows[-1]), flush=True)
            load.stopping = True
            ticker.cancel()
            await asyncio.gather(*clients, ticker, return_exceptions=True)
        for proc in system.procs:
            if proc.process.poll() is not None:
                raise RuntimeError(f"{proc.label} died during the run ({proc.process.returncode})")
        return windows
    finally:
        await asyncio.gather(*(crowd.stop() for crowd in crowds), return_exceptions=True)
        stop(system)
        print(f"  {target} x{n}: done in {time.monotonic() - began:.0f}s", flush=True)
        if args.keep:
            print(f"  kept {system.workdir}")
        else:
            shutil.rmtree(system.workdir, ignore_errors=True)


def summarize(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the windows (None for a figure no window has: the pusher's latency)."""

    def median(key: str) -> float | None:
        values = [w[key] for w in windows if w.get(key) is not None]
        return float(statistics.median(values)) if values else None

    def median_of(key: str, fold: Callable[[Sequence[float]], float]) -> float:
        return float(statistics.median(fold(list(w[key].values())) for w in windows))

    summary = {
        "per_s": median("per_s"),
        "per_instance_per_s": median("per_instance_per_s"),
        "p50_ms": median("p50_ms"),
        "p99_ms": median("p99_ms"),
        "instance_us_per_unit": median("instance_us_per_unit"),
        "cap_used": median_of("instance_cap_used", statistics.mean),
        "throttled_share": median_of("throttled_share", statistics.mean),
        "rest_cores": median_of("rest_cores", sum),
        "rest_busiest_cores": median_of("rest_cores", max),
        "load_cores": median_of("load_cores", sum),
        "load_busiest_cores": median_of("load_cores", max),
        "machine_busy": median("machine_busy"),
        "refused_or_failed": sum(w["refused_or_failed"] for w in windows),
    }
    for key in ("clients_received_per_s", "flow_orders_per_s"):
        if any(key in w for w in windows):
            summary[key] = median(key)
    return summary


# --- output -----------------------------------------------------------------------------------


def figure(value: float | None, spec: str) -> str:
    return "n/a" if value is None or value != value else format(value, spec)


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| target | instances | cap per instance (cores) | what | per s | per instance | "
        "vs 1 instance x n | p50 ms | p99 ms | instance CPU / cap | instance µs each | throttled periods | "
        "rest (cores, busiest process) | load side (cores, busiest process) | machine busy |",
        "| --- | ---: | ---: | --- |" + " ---: |" * 11,
    ]
    for target, runs in results.items():
        spec = TARGETS[target]
        one = runs[0]["summary"]["per_instance_per_s"] if runs else 0.0
        for run in runs:
            s, n = run["summary"], run["instances"]
            lines.append(
                f"| {target} | {n} | {run['cap_cores']:g} | {spec.what} | {s['per_s']:.0f} | "
                f"{s['per_instance_per_s']:.0f} | "
                f"{s['per_s'] / max(one * n, 1e-9):.0%} | {figure(s['p50_ms'], '.1f')} | "
                f"{figure(s['p99_ms'], '.1f')} | "
                f"{s['cap_used']:.0%} | {s['instance_us_per_unit']:.0f} | {s['throttled_share']:.0%} | "
                f"{s['rest_cores']:.2f}, {s['rest_busiest_cores']:.2f} | "
                f"{s['load_cores']:.2f}, {s['load_busiest_cores']:.2f} | {s['machine_busy']:.0%} |"
            )
    return "\n".join(lines)


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.5), squeeze=False)
    for ax, (target, runs) in zip(axes[0], results.items(), strict=True):
        spec = TARGETS[target]
        counts = [run["instances"] for run in runs]
        total = [run["summary"]["per_s"] for run in runs]
        ideal = [runs[0]["summary"]["per_s"] * n for n in counts] if runs else []
        ax.bar(counts, total, color="tab:blue", alpha=0.7, label=f"{spec.what}/s")
        ax.plot(counts, ideal, "k--", label="1 instance x n")
        for n, value in zip(counts, total, strict=True):
            ax.annotate(f"{value:.0f}", (n, value), ha="center", va="bottom")
        ax.set_xticks(counts)
        cap = runs[0]["cap_cores"] if runs else 0.0
        ax.set_xlabel(f"{target} instances, each capped at {cap:g} cores")
        ax.set_ylabel(f"{spec.what}/s")
        ax.set_ylim(0, max([*total, *ideal, 1.0]) * 1.3)  # room for the legend above the bars
        handles = ax.get_legend_handles_labels()
        if spec.latency is None:
            ax.set_title(f"{target}: throughput")
        else:
            ax.set_title(f"{target}: throughput and {spec.latency} latency")
            other = ax.twinx()
            other.plot(
                counts, [run["summary"]["p50_ms"] for run in runs], "o-", color="tab:green", label="p50"
            )
            other.plot(counts, [run["summary"]["p99_ms"] for run in runs], "o-", color="tab:red", label="p99")
            other.set_ylabel("ms")
            other.set_ylim(bottom=0)
            more = other.get_legend_handles_labels()
            handles = (handles[0] + more[0], handles[1] + more[1])
        ax.legend(handles[0], handles[1], loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--target",
        action="append",
        choices=tuple(TARGETS),
        help="gateway, accounts, query, pusher; repeat for several (default: gateway, then accounts)",
    )
    parser.add_argument("--instances", default="1,2,3", help="instance counts (1,2,3)")
    parser.add_argument("--gateway-cap", type=float, default=0.15, help="cores per gateway instance (0.15)")
    parser.add_argument("--accounts-cap", type=float, default=0.05, help="cores per accounts shard (0.05)")
    parser.add_argument(
        "--query-cap", type=float, default=QUERY_CAP, help=f"cores per query instance ({QUERY_CAP})"
    )
    parser.add_argument(
        "--pusher-cap", type=float, default=PUSHER_CAP, help=f"cores per pusher instance ({PUSHER_CAP})"
    )
    parser.add_argument(
        "--offered", type=float, default=5000.0, help="offered orders or reads/s, above capacity (5000)"
    )
    parser.add_argument("--connections", type=int, default=32, help="connections per target instance (32)")
    parser.add_argument(
        "--gateways",
        type=int,
        help="uncapped gateways for the accounts, query and pusher targets (2, 3 and 1)",
    )
    parser.add_argument("--members", type=int, default=1000, help="funded demo members (1000)")
    parser.add_argument(
        "--open-orders", type=int, default=2000, help="query target: resting orders placed first (2000)"
    )
    parser.add_argument(
        "--flow", type=float, default=60.0, help="pusher target: orders/s through the rest, whatever n (60)"
    )
    parser.add_argument(
        "--flow-connections", type=int, default=8, help="pusher target: connections of the order flow (8)"
    )
    parser.add_argument(
        "--ws-connections",
        type=int,
        default=WS_CONNECTIONS,
        help=f"pusher target: WebSocket clients per pusher instance ({WS_CONNECTIONS})",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=20.0,
        help="seconds of load before measuring (20: token caches, batching)",
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measured window (15)")
    parser.add_argument("--windows", type=int, default=3, help="measured windows per system (3)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="systems per count, in alternating order; medians of all windows (2)",
    )
    parser.add_argument("--progress", type=float, default=5.0, help="seconds between progress lines (5)")
    parser.add_argument("--nats-fsync", action="store_true", help="nats-server with sync_interval: always")
    parser.add_argument("--keep", action="store_true", help="keep each run's folder (logs)")
    args = parser.parse_args(argv)
    args.targets = list(dict.fromkeys(args.target or ["gateway", "accounts"]))
    args.counts = [int(part) for part in args.instances.split(",")]
    args.caps = {
        "gateway": args.gateway_cap,
        "accounts": args.accounts_cap,
        "query": args.query_cap,
        "pusher": args.pusher_cap,
    }
    args.gateways = {
        target: spec.gateways if args.gateways is None else args.gateways for target, spec in TARGETS.items()
    }
    caps = [args.caps[target] for target in args.targets]
    if any(not 0.01 <= cap <= 1.0 for cap in caps) or any(n < 1 for n in args.counts):
        parser.error("caps must be in [0.01, 1] cores and instance counts positive")
    if max(caps) * max(args.counts) > (os.cpu_count() or 1) / 2:
        parser.error("the instances' caps must leave at least half the machine to the rest")
    if any(args.gateways[target] < 1 for target in args.targets if target != "gateway"):
        parser.error("--gateways must be at least 1")
    return args


async def run(args: argparse.Namespace, groups: CpuGroups) -> dict[str, list[dict[str, Any]]]:
    groups.create("rest")
    groups.create("loadgen")
    for i in range(max(args.counts)):
        groups.create(f"instance{i}")
    groups.join("loadgen", os.getpid())
    results: dict[str, list[dict[str, Any]]] = {}
    for target in args.targets:
        began = time.monotonic()
        print(f"{target}: instances {args.counts}, each capped at {args.caps[target]:g} cores", flush=True)
        windows: dict[int, list[dict[str, Any]]] = {n: [] for n in args.counts}
        for round_ in range(args.rounds):
            # alternate the order (1,2,3 then 3,2,1): a drift in the box's other load falls on every count
            for n in args.counts if round_ % 2 == 0 else list(reversed(args.counts)):
                for i in range(max(args.counts)):
                    groups.cap(f"instance{i}", None)
                print(f"  round {round_ + 1} of {args.rounds}", flush=True)
                windows[n] += await run_count(args, target, n, groups)
        results[target] = [
            {
                "instances": n,
                "cap_cores": args.caps[target],
                "unit": TARGETS[target].unit,
                "windows": found,
                "summary": summarize(found),
            }
            for n, found in windows.items()
        ]
        print(f"{target}: {time.monotonic() - began:.0f}s", flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    groups = CpuGroups()
    print(f"cgroup v{groups.version} at {groups.parent}", flush=True)
    try:
        try:
            import uvloop

            results = uvloop.run(run(args, groups))
        except ImportError:
            results = asyncio.run(run(args, groups))
    finally:
        groups.remove()
    text = table(results)
    print("\n" + text)
    REPORTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = REPORTS / f"scale-out-{stamp}"
    options = {
        key: value for key, value in vars(args).items() if isinstance(value, int | float | str | list | dict)
    }
    facts = {"when": stamp, "cgroup": f"v{groups.version}", "cpus": os.cpu_count(), "options": options}
    base.with_suffix(".json").write_text(json.dumps({**facts, "results": results}, indent=2) + "\n")
    base.with_suffix(".md").write_text(text + "\n")
    drawn = plot(results, base.with_suffix(".png"))
    print(f"\nreports: {base}.json, {base}.md" + (f", {base}.png" if drawn else " (no matplotlib: no plot)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

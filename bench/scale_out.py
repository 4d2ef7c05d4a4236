"""Scale-out, measured: 1, 2 and 3 instances of a service, each held to a fixed CPU share, under a
load above what they can carry; accepted orders per second per instance count.

    .venv/bin/python bench/scale_out.py                                  # gateway, then accounts shards
    .venv/bin/python bench/scale_out.py --target gateway --instances 1,2,3 --gateway-cap 0.15
    .venv/bin/python bench/scale_out.py --target accounts --accounts-cap 0.08 --rounds 1 --duration 15

What runs, per instance count n (a fresh system each time, in a temporary folder; `--rounds`
systems per count, in alternating order 1, 2, 3 then 3, 2, 1, so a drift in the machine's other
work falls on every count):

- a nats-server of the wheel (JetStream; `sync_interval` the NATS default unless `--nats-fsync`,
  so the shared server stays light) and the services the order path needs, one `bourse run`
  process each (`accounts`, `matching`, `auth`, `ids`; for the accounts target also `--gateways`
  gateway processes), all uncapped: "the rest";
- n instances of the target, each its own process in its own CPU cgroup capped at
  `--gateway-cap` / `--accounts-cap` cores (`cpu.cfs_quota_us` / `cpu.max`, over a 10 ms period
  so a throttled instance waits at most a few ms; longer below 0.1 cores, the kernel's smallest
  quota being 1 ms): gateway instances each on their own HTTP port (the generator spreads its
  connections over them, no load balancer); accounts instances are member shards
  (`BOURSE_ACCOUNTS_SHARDS=n`, `BOURSE_ACCOUNTS_SHARD_IDS=[i]`, every process told n). The cap is
  set once the instance is healthy (start-up at 0.15 cores would take a minute); the instances'
  caps add up to less than what the rest leaves free, so instances never fight for a core.
- The rest, and the load generator (this process), run in cgroups of their own with a high
  `cpu.shares` / `cpu.weight`: other work on a shared box does not starve the system under test.

The load: `--connections` keep-alive HTTP connections per target instance (the lean client of
`bourse.sizing.lean_http`), each sending POST /order on its own schedule at `--offered` orders/s
in all, far above capacity; a connection sends when its previous answer has come, so the offered
rate is never reached and each connection keeps one order in flight: the instances are saturated
and what is measured is their capacity. Orders are the mix of `bourse.sizing.workload` (limit
orders in a band where a share trades, some market orders) for `--members` funded demo members,
spread evenly over the accounts shards.

Measured, per window (`--windows` consecutive windows of `--duration` s after `--warmup` s, in
each system): orders accepted (201/202) per second, per instance, p50/p99 of POST /order from the
send; each instance's CPU (its /proc utime+stime over the window, in cores, against its cap), how
often it was throttled, and its CPU per order; each process of the rest (its busiest must stay
well under a core, or the rest is the limit), the machine's busy share. The table has the medians
of all windows; reports/ gets `scale-out-<time>.json`, `.png` (throughput and latency per
instance count) and `.md` (the table).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
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
from typing import Any

import httpx

from bourse.config.auth import issuer_for, key_ring_for
from bourse.config.settings import Settings
from bourse.runtime.nats_server import EmbeddedNatsServer, die_with_parent, nats_server_binary
from bourse.sizing.lean_http import LeanHttpConnection, build_request
from bourse.sizing.probes import cpu_seconds, machine_busy, raise_nofile
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


@dataclass(slots=True)
class Proc:
    label: str
    process: subprocess.Popen[bytes]
    health_port: int | None
    group: str
    http_port: int | None = None
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


def spawn_service(
    system: System, groups: CpuGroups, label: str, services: Sequence[str], group: str, **extra: str
) -> Proc:
    health = free_port()
    env = {**system.env, "BOURSE_HEALTH_PORT": str(health), "BOURSE_INSTANCE": label, **extra}
    log = system.workdir / f"{label}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bourse", "run", *services],
            env=env,
            cwd=system.workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=groups.joiner(group),
        )
    http = int(extra["BOURSE_HTTP_PORT"]) if "BOURSE_HTTP_PORT" in extra else None
    proc = Proc(label, process, health, group, http, log)
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
    system.procs.append(Proc("nats-server", process, None, "rest"))
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
    )
    key_ring_for(Settings(data_dir=workdir, _env_file=None))  # before any process: tokens made here verify
    system = System(workdir, env)
    nats_url = start_nats(system, groups, args.nats_fsync)
    await wait_nats(nats_url, 15.0)
    env["BOURSE_NATS_URL"] = nats_url
    async with httpx.AsyncClient() as client:
        # accounts first: its start creates the demo deposits, ahead of any order in each shard
        if target == "accounts":
            for i in range(n):
                spawn_service(
                    system,
                    groups,
                    f"accounts-{i}",
                    ["accounts"],
                    f"instance{i}",
                    BOURSE_ACCOUNTS_SHARD_IDS=f"[{i}]",
                )
        else:
            spawn_service(system, groups, "accounts", ["accounts"], "rest")
        await wait_healthy(client, system.procs, 120.0)
        for service in ("matching", "auth", "ids"):
            spawn_service(system, groups, service, [service], "rest")
        await wait_healthy(client, system.procs, 120.0)
        if target == "gateway":
            for i in range(n):
                spawn_service(
                    system,
                    groups,
                    f"gateway-{i}",
                    ["gateway"],
                    f"instance{i}",
                    BOURSE_HTTP_PORT=str(free_port()),
                )
        else:
            for i in range(args.gateways):
                spawn_service(
                    system, groups, f"gateway-{i}", ["gateway"], "rest", BOURSE_HTTP_PORT=str(free_port())
                )
        await wait_healthy(client, system.procs, 120.0)
    for i in range(n):
        groups.cap(f"instance{i}", args.caps[target])
    return system


# --- the load ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Load:
    ports: list[int]
    connections: int
    offered: float
    tokens: dict[int, str]
    maker: OrderMaker
    timeout: float = 10.0
    sent: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)
    stopping: bool = False
    headers: dict[int, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.headers = {
            member: f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n".encode()
            for member, token in self.tokens.items()
        }

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
                member = self.maker.member()
                body = self.maker.market_order() if self.maker.rng.random() < 0.05 else self.maker.limit()
                raw = build_request("POST", netloc, "/api/v3/order", self.headers[member], encode(body))
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
        """(latencies of accepted orders answered in [lo, hi), accepted, refused or failed)."""
        latencies, refused = [], 0
        for sent, done, code in zip(self.sent, self.done, self.codes, strict=False):
            if lo <= done < hi:
                if code in ACCEPTED:
                    latencies.append(done - sent)
                else:
                    refused += 1
        return latencies, len(latencies), refused


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


def mark(system: System, groups: CpuGroups) -> Mark:
    own = os.times()
    cpu: dict[str, float | None] = {proc.label: cpu_seconds(proc.process.pid) for proc in system.procs}
    cpu["load generator"] = own.user + own.system
    throttling = {proc.group: groups.throttling(proc.group) for proc in system.instances()}
    return Mark(time.perf_counter(), cpu, throttling, machine_busy())


def window_result(
    system: System, load: Load, before: Mark, after: Mark, n: int, cap: float
) -> dict[str, Any]:
    wall = after.at - before.at
    latencies, accepted, refused = load.between(before.at, after.at)
    cores = {
        label: (end - start) / wall
        for label, end in after.cpu.items()
        if end is not None and (start := before.cpu.get(label)) is not None
    }
    instances = [proc.label for proc in system.instances()]
    rest = {
        label: value for label, value in cores.items() if label not in instances and label != "load generator"
    }
    throttled = {}
    for group, (periods, hits) in after.throttling.items():
        p0, h0 = before.throttling[group]
        throttled[group] = (hits - h0) / max(periods - p0, 1)
    busy = (after.machine[0] - before.machine[0]) / max(after.machine[1] - before.machine[1], 1)
    return {
        "seconds": wall,
        "accepted_per_s": accepted / wall,
        "per_instance_per_s": accepted / wall / n,
        "refused_or_failed": refused,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "instance_cores": {label: cores.get(label) for label in instances},
        "instance_cap_used": {label: (cores.get(label) or 0.0) / cap for label in instances},
        "instance_us_per_order": sum(cores.get(label) or 0.0 for label in instances)
        / max(accepted / wall, 1e-9)
        * 1e6,
        "throttled_share": throttled,
        "rest_cores": rest,
        "load_generator_cores": cores.get("load generator"),
        "machine_busy": busy,
    }


async def progress(load: Load, start: float, every: float) -> None:
    seen = 0
    while not load.stopping:
        await asyncio.sleep(every)
        now = time.perf_counter()
        latencies, accepted, refused = load.between(now - every, now)
        seen = len(load.codes)
        print(
            f"    t={now - start:5.1f}s  accepted {accepted / every:7.0f}/s  refused/failed {refused:4d}  "
            f"p50 {percentile(latencies, 50) * 1000:6.1f} ms  "
            f"p99 {percentile(latencies, 99) * 1000:6.1f} ms  "
            f"({seen} answers)",
            flush=True,
        )


async def run_count(args: argparse.Namespace, target: str, n: int, groups: CpuGroups) -> list[dict[str, Any]]:
    """A fresh system with n capped instances of the target, saturated: one result per window."""
    cap = args.caps[target]
    print(f"  {target} x{n}: starting ({cap:g} cores each)", flush=True)
    system = await start_system(args, target, n, groups)
    try:
        settings = Settings(data_dir=system.workdir, _env_file=None)
        issuer = issuer_for(settings, key_ring_for(settings))
        tokens = {member: issuer.issue(member, ttl_s=3600) for member in range(1, args.members + 1)}
        gateways = [proc.http_port for proc in system.procs if proc.http_port is not None]
        connections = args.connections * n
        load = Load(
            gateways,
            connections,
            args.offered,
            tokens,
            OrderMaker(["btc_usd", "eth_usd", "eth_btc"], args.members, seed=n),
        )
        start = time.perf_counter()
        print(
            f"  {target} x{n}: up; {connections} connections over {len(gateways)} gateway port(s), "
            f"offered {args.offered:.0f} orders/s; warm-up {args.warmup:.0f}s",
            flush=True,
        )
        clients = [asyncio.create_task(load.client(i, start)) for i in range(connections)]
        ticker = asyncio.create_task(progress(load, start, args.progress))
        await asyncio.sleep(args.warmup)
        windows = []
        for _ in range(args.windows):
            before = mark(system, groups)
            await asyncio.sleep(args.duration)
            after = mark(system, groups)
            windows.append(window_result(system, load, before, after, n, cap))
            w = windows[-1]
            print(
                f"  {target} x{n} window: {w['accepted_per_s']:.0f} orders/s "
                f"({w['per_instance_per_s']:.0f} per instance), "
                f"p50 {w['p50_ms']:.1f} ms, p99 {w['p99_ms']:.1f} ms, instances at "
                + ", ".join(f"{used:.0%}" for used in w["instance_cap_used"].values())
                + f" of their cap, busiest of the rest {max(w['rest_cores'].items(), key=lambda kv: kv[1])}, "
                f"machine {w['machine_busy']:.0%} busy",
                flush=True,
            )
        load.stopping = True
        ticker.cancel()
        await asyncio.gather(*clients, ticker, return_exceptions=True)
        for proc in system.procs:
            if proc.process.poll() is not None:
                raise RuntimeError(f"{proc.label} died during the run ({proc.process.returncode})")
        return windows
    finally:
        stop(system)
        if args.keep:
            print(f"  kept {system.workdir}")
        else:
            shutil.rmtree(system.workdir, ignore_errors=True)


def summarize(windows: list[dict[str, Any]]) -> dict[str, Any]:
    def median(key: str) -> float:
        return float(statistics.median(w[key] for w in windows))

    rest_busiest = statistics.median(max(w["rest_cores"].values()) for w in windows)
    return {
        "accepted_per_s": median("accepted_per_s"),
        "per_instance_per_s": median("per_instance_per_s"),
        "p50_ms": median("p50_ms"),
        "p99_ms": median("p99_ms"),
        "instance_us_per_order": median("instance_us_per_order"),
        "cap_used": statistics.median(statistics.mean(w["instance_cap_used"].values()) for w in windows),
        "throttled_share": statistics.median(statistics.mean(w["throttled_share"].values()) for w in windows),
        "rest_cores": statistics.median(sum(w["rest_cores"].values()) for w in windows),
        "rest_busiest_cores": rest_busiest,
        "machine_busy": median("machine_busy"),
        "refused_or_failed": sum(w["refused_or_failed"] for w in windows),
    }


# --- output -----------------------------------------------------------------------------------


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| target | instances | cap per instance (cores) | accepted orders/s | per instance | "
        "vs 1 instance x n | p50 ms | p99 ms | instance CPU / cap | instance µs/order | throttled periods | "
        "rest (cores, busiest process) | machine busy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for target, runs in results.items():
        one = runs[0]["summary"]["per_instance_per_s"] if runs else 0.0
        for run in runs:
            s, n = run["summary"], run["instances"]
            lines.append(
                f"| {target} | {n} | {run['cap_cores']:g} | {s['accepted_per_s']:.0f} | "
                f"{s['per_instance_per_s']:.0f} | "
                f"{s['accepted_per_s'] / (one * n):.0%} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
                f"{s['cap_used']:.0%} | {s['instance_us_per_order']:.0f} | {s['throttled_share']:.0%} | "
                f"{s['rest_cores']:.2f}, {s['rest_busiest_cores']:.2f} | {s['machine_busy']:.0%} |"
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
        counts = [run["instances"] for run in runs]
        total = [run["summary"]["accepted_per_s"] for run in runs]
        ideal = [runs[0]["summary"]["accepted_per_s"] * n for n in counts] if runs else []
        ax.bar(counts, total, color="tab:blue", alpha=0.7, label="accepted orders/s")
        ax.plot(counts, ideal, "k--", label="1 instance x n")
        for n, value in zip(counts, total, strict=True):
            ax.annotate(f"{value:.0f}", (n, value), ha="center", va="bottom")
        ax.set_xticks(counts)
        cap = runs[0]["cap_cores"] if runs else 0.0
        ax.set_xlabel(f"{target} instances, each capped at {cap:g} cores")
        ax.set_ylabel("orders/s accepted")
        ax.set_ylim(0, max([*total, *ideal, 1.0]) * 1.3)  # room for the legend above the bars
        ax.set_title(f"{target}: throughput and POST /order latency")
        other = ax.twinx()
        other.plot(counts, [run["summary"]["p50_ms"] for run in runs], "o-", color="tab:green", label="p50")
        other.plot(counts, [run["summary"]["p99_ms"] for run in runs], "o-", color="tab:red", label="p99")
        other.set_ylabel("ms")
        other.set_ylim(bottom=0)
        handles = ax.get_legend_handles_labels()
        more = other.get_legend_handles_labels()
        ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--target", action="append", choices=("gateway", "accounts"), help="gateway, accounts (default: both)"
    )
    parser.add_argument("--instances", default="1,2,3", help="instance counts (1,2,3)")
    parser.add_argument("--gateway-cap", type=float, default=0.15, help="cores per gateway instance (0.15)")
    parser.add_argument("--accounts-cap", type=float, default=0.05, help="cores per accounts shard (0.05)")
    parser.add_argument(
        "--offered", type=float, default=5000.0, help="offered orders/s, above capacity (5000)"
    )
    parser.add_argument("--connections", type=int, default=32, help="connections per target instance (32)")
    parser.add_argument(
        "--gateways", type=int, default=2, help="uncapped gateways for the accounts target (2)"
    )
    parser.add_argument("--members", type=int, default=1000, help="funded demo members (1000)")
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
    args.targets = args.target or ["gateway", "accounts"]
    args.counts = [int(part) for part in args.instances.split(",")]
    args.caps = {"gateway": args.gateway_cap, "accounts": args.accounts_cap}
    if any(not 0.01 <= cap <= 1.0 for cap in args.caps.values()) or any(n < 1 for n in args.counts):
        parser.error("caps must be in [0.01, 1] cores and instance counts positive")
    if max(args.caps.values()) * max(args.counts) > (os.cpu_count() or 1) / 2:
        parser.error("the instances' caps must leave at least half the machine to the rest")
    return args


async def run(args: argparse.Namespace, groups: CpuGroups) -> dict[str, list[dict[str, Any]]]:
    groups.create("rest")
    groups.create("loadgen")
    for i in range(max(args.counts)):
        groups.create(f"instance{i}")
    groups.join("loadgen", os.getpid())
    results: dict[str, list[dict[str, Any]]] = {}
    for target in args.targets:
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
            {"instances": n, "cap_cores": args.caps[target], "windows": found, "summary": summarize(found)}
            for n, found in windows.items()
        ]
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
    options = {key: value for key, value in vars(args).items() if isinstance(value, int | float | str | list)}
    facts = {"when": stamp, "cgroup": f"v{groups.version}", "cpus": os.cpu_count(), "options": options}
    base.with_suffix(".json").write_text(json.dumps({**facts, "results": results}, indent=2) + "\n")
    base.with_suffix(".md").write_text(text + "\n")
    drawn = plot(results, base.with_suffix(".png"))
    print(f"\nreports: {base}.json, {base}.md" + (f", {base}.png" if drawn else " (no matplotlib: no plot)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

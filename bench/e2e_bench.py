"""End-to-end benchmark: the whole order pipeline as real processes, driven over HTTP.

    .venv/bin/python bench/e2e_bench.py --rate 1000 --duration 20
    .venv/bin/python bench/e2e_bench.py --mode split --rate 1000 --duration 30 --clients 50
    .venv/bin/python bench/e2e_bench.py --mode split --rate 500 --profile   # py-spy per process
    .venv/bin/python bench/e2e_bench.py --mode split --nats-url nats://127.0.0.1:4222

What runs:

- `--mode up` (default): `bourse up` with its embedded NATS (JetStream with
  `sync_interval: always`, in a temporary data folder, free ports), in as many processes as it
  chooses (`--processes`, passed on; default: its own, cores + 1 up to 4). The CPU is one figure
  per process: the supervisor, each of its `bourse run` children (labelled by their services,
  `accounts+matching`), the nats-server.
- `--mode split`: one `bourse run SERVICE` process per service (`bourse services` lists them),
  so the CPU of each service is measured on its own. Without `--nats-url` the
  bench starts its own nats-server from the wheel, configured like the embedded one; with it,
  the services use that server under a unique `BOURSE_NAMESPACE` (removed at the end).

The markets file is the default one with `--members` demo members (1000 by default), so funds
locking is spread over many accounts as it would be. Every member gets a token from the key
ring of the data folder (what `bourse token N` does).

The load: `--clients` keep-alive HTTP connections (`bourse.sizing.lean_http`, on httptools: a fraction of
aiohttp's CPU per request, so the CPU goes to the system under test), each sending on its own
schedule so that together they post `--rate` orders per second, plus cancels (`--cancel-share` of all
requests). A connection sends at its scheduled time, or when its previous answer came if that
is later; `post_order` latency is measured from the send, `post_order_from_schedule` from the
scheduled time, so a stalled server cannot hide behind a waiting client (no coordinated
omission). The mix: limit orders around a mid price in three markets (buys below and sells above
it, overlapping so that a share trades), a few IOC orders that cross, and cancels of orders that
rest. An event listener on `<ns>.events.>` (core NATS) timestamps each order's first trade and
its `accepted` event, so order-to-trade latency is measured at the client's clock; after the
run, the streams' own timestamps split an order's way into gateway, accounts and matching.

CPU: each server process's utime+stime (`/proc/<pid>/stat`) at the start and the end of the
measured window, divided by the orders placed in it: microseconds of CPU per order, per process.

Results: a table on stdout, and `reports/e2e-<time>-<mode>.json` and `.html` (with plots).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
import nats
from nats.aio.msg import Msg

from bourse.adapters.jetstream import remove_topology, stream_position
from bourse.config.auth import issuer_for, key_ring_for
from bourse.config.settings import Settings
from bourse.contracts.messages import ACCOUNTS_BATCH_DECODER, EVENT_BATCH_DECODER, MATCH_BATCH_DECODER
from bourse.contracts.subjects import EVENTS, MATCH, ORDERS, STREAMS
from bourse.domain.orders import OrderAccepted, PlaceOrder, Trade
from bourse.services import services_for
from bourse.sizing.lean_http import LeanHttpConnection, build_request
from bourse.sizing.probes import cpu_seconds, machine_busy
from bourse.sizing.workload import BAND, CROSS, MIXES
from bourse.sizing.workload import write_markets_file as write_markets_file  # ws_bench, amqp_bench use it
from otlp_sink import OtlpSink

REPO = Path(__file__).resolve().parent.parent
REPORTS = REPO / "reports"
SUCCESS = ("200", "201", "202")


# --- workload ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Action:
    kind: str
    """"place" or "cancel"."""
    member: int
    body: bytes = b""
    order_id: str = ""


class Workload:
    """Chooses each client's next command. Seeded: the same options give the same sequence."""

    def __init__(self, members: int, cancel_share: float, ioc_share: float, seed: int) -> None:
        self.members = members
        self.cancel_share = cancel_share
        self.ioc_share = ioc_share
        self.rng = random.Random(seed)
        self.weights = [mix.weight for mix in MIXES]

    def next(self, resting: list[tuple[str, int]]) -> Action:
        rng = self.rng
        if resting and rng.random() < self.cancel_share:
            order_id, member = resting.pop(rng.randrange(len(resting)))
            return Action("cancel", member, order_id=order_id)
        mix = rng.choices(MIXES, self.weights)[0]
        side = "buy" if rng.random() < 0.5 else "sell"
        ioc = rng.random() < self.ioc_share
        # IOC orders are aggressive: they cross the spread, fill what they can, close the rest
        offset = rng.randint(CROSS, BAND) if ioc else rng.randint(-BAND, CROSS)
        price = mix.mid + (offset if side == "buy" else -offset) * mix.step
        amount = rng.randint(mix.amount_min, mix.amount_max) * mix.amount_unit
        body: dict[str, Any] = {
            "market": mix.symbol,
            "side": side,
            "type": "limit",
            "price": f"{price:.{mix.price_decimals}f}",
            "amount": f"{amount:.{mix.amount_decimals}f}",
        }
        if ioc:
            body["time_in_force"] = "ioc"
        return Action("place", rng.randint(1, self.members), body=msgspec.json.encode(body))


# --- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def rss_mb(pid: int) -> float | None:
    fields = proc_stat(pid)
    return None if fields is None else int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = proc_stat(int(stat.parent.name))
        if fields is not None and int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


@dataclass(slots=True)
class Server:
    label: str
    process: subprocess.Popen[bytes]
    health_port: int
    log: Path


@dataclass(slots=True)
class System:
    """The bourse processes under test, and where to reach them."""

    mode: str
    workdir: Path
    namespace: str
    nats_url: str
    api: str
    external_nats: bool
    servers: list[Server] = field(default_factory=list)
    own_nats: subprocess.Popen[bytes] | None = None

    def measured(self) -> dict[str, int]:
        """Label -> pid of every process whose CPU counts (services and our nats-server)."""
        pids = {server.label: server.process.pid for server in self.servers}
        if self.own_nats is not None:
            pids["nats-server"] = self.own_nats.pid
        for server in self.servers:
            for child in children_of(server.process.pid):
                if process_name(child).startswith("nats-server"):
                    pids["nats-server"] = child
                elif "run" in (argv := command_line(child)):  # a child of `bourse up --processes N`
                    pids["+".join(argv[argv.index("run") + 1 :])] = child
        return pids


def base_env(workdir: Path, namespace: str, markets: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BOURSE_")}
    env.update(
        BOURSE_DATA_DIR=str(workdir),
        BOURSE_NAMESPACE=namespace,
        BOURSE_MARKETS_FILE=str(markets),
        BOURSE_LOG_LEVEL="WARNING",
    )
    return env


def spawn(label: str, args: Sequence[str], env: dict[str, str], workdir: Path, health_port: int) -> Server:
    log = workdir / f"{label.replace(' ', '_')}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bourse", *args],
            env={**env, "BOURSE_HEALTH_PORT": str(health_port)},
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Server(label, process, health_port, log)


def start_own_nats(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A nats-server configured like `bourse up`'s embedded one (fsync before every ack)."""
    from bourse.runtime.nats_server import EmbeddedNatsServer, nats_server_binary

    port, monitor = free_port(), free_port()
    server = EmbeddedNatsServer(workdir / "nats", port, monitor)
    server.data_dir.mkdir(parents=True, exist_ok=True)
    config = server.data_dir / "nats-server.conf"
    config.write_text(server.config_text())
    with (server.data_dir / "nats-server.log").open("wb") as out:
        process = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return process, server.url


async def start_system(args: argparse.Namespace, workdir: Path) -> System:
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    markets = workdir / "markets.toml"
    write_markets_file(markets, args.members)
    env = base_env(workdir, namespace, markets)
    if args.sql_url:
        env["BOURSE_SQL_URL"] = args.sql_url
    for setting in args.set:
        name, _, value = setting.partition("=")
        env[f"BOURSE_{name.upper()}"] = value
    if args.trace_ratio is not None:  # every server exports its spans to the bench's receiver
        env.update(
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=args.trace_endpoint,
            OTEL_TRACES_SAMPLER="parentbased_traceidratio",
            OTEL_TRACES_SAMPLER_ARG=str(args.trace_ratio),
        )
    http_port = free_port()
    env["BOURSE_HTTP_PORT"] = str(http_port)
    env["BOURSE_PUSHER_PORT"] = "0"  # any free port: the bench drives no WebSocket
    api = f"http://127.0.0.1:{http_port}/api/v3"
    # the signing key exists before any process starts, so tokens made here verify there
    key_ring_for(Settings(data_dir=workdir, _env_file=None))
    if args.mode == "up":
        if args.nats_url:
            env["BOURSE_NATS_URL"] = args.nats_url
            nats_url = args.nats_url
        else:
            nats_port = free_port()
            env["BOURSE_EMBEDDED_NATS_PORT"] = str(nats_port)
            env["BOURSE_EMBEDDED_NATS_MONITOR_PORT"] = str(free_port())
            nats_url = f"nats://127.0.0.1:{nats_port}"
        system = System("up", workdir, namespace, nats_url, api, external_nats=bool(args.nats_url))
        processes = ["--processes", args.processes] if args.processes else []
        system.servers.append(spawn("bourse up", ["up", *processes], env, workdir, free_port()))
    else:
        own: subprocess.Popen[bytes] | None = None
        if args.nats_url:
            nats_url = args.nats_url
        else:
            own, nats_url = start_own_nats(workdir)
            await wait_for_nats(nats_url, 15.0)
        env["BOURSE_NATS_URL"] = nats_url
        system = System("split", workdir, namespace, nats_url, api, external_nats=bool(args.nats_url))
        system.own_nats = own
        configured = Settings(
            redis_url=env.get("BOURSE_REDIS_URL"), rabbitmq_url=env.get("BOURSE_RABBITMQ_URL"), _env_file=None
        )
        for service in services_for(configured):  # what `bourse up` would run, one process each
            if service.name in args.skip:
                continue
            system.servers.append(spawn(service.name, ["run", service.name], env, workdir, free_port()))
    return system


async def _quiet(_exc: Exception) -> None:
    pass


async def wait_for_nats(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            nc = await nats.connect(url, allow_reconnect=False, connect_timeout=1, error_cb=_quiet)
            await nc.close()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def wait_healthy(system: System, session: aiohttp.ClientSession, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(system.servers)
    while pending:
        for server in list(pending):
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.label} exited ({server.process.returncode}): {tail(server.log)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"http://127.0.0.1:{server.health_port}/healthz") as resp:
                    if resp.status == 200:
                        pending.remove(server)
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"not healthy in {timeout}s: {[s.label for s in pending]}")
        await asyncio.sleep(0.2)


async def wait_seeded(
    api: str, session: aiohttp.ClientSession, tokens: dict[int, str], members: int, timeout: float
) -> None:
    """Until the last demo member's deposits show in the read model (seeding goes in member order)."""
    deadline = time.monotonic() + timeout
    headers = {"authorization": f"Bearer {tokens[members]}"}
    while True:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{api}/balances", headers=headers) as resp:
                if resp.status == 200 and await resp.json():
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"demo members not seeded within {timeout}s")
        await asyncio.sleep(0.2)


def tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def stop_system(system: System) -> None:
    for server in reversed(system.servers):
        if server.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGTERM)
    for server in system.servers:
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
    if system.own_nats is not None:
        system.own_nats.terminate()
        try:
            system.own_nats.wait(timeout=10)
        except subprocess.TimeoutExpired:
            system.own_nats.kill()
            system.own_nats.wait()


async def remove_namespace(url: str, namespace: str) -> None:
    nc = await nats.connect(url)
    try:
        await remove_topology(nc.jetstream(), namespace)
    finally:
        await nc.close()


# --- measurement ------------------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    kind: str
    scheduled: float
    sent: float
    done: float
    status: str
    """HTTP status, with the problem `code` when not a success, or `exc:<Type>`."""
    order_id: int = 0


async def stream_times(nc: Any, subject: str, limit_s: float = 30.0) -> list[tuple[int, bytes]]:
    """(stored at, ns; payload) of every message of a stream subject, read with an ordered consumer."""
    js = nc.jetstream()
    found: list[tuple[int, bytes]] = []
    sub = await js.subscribe(subject, ordered_consumer=True)
    deadline = time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except Exception:
                break
            found.append((stream_position(msg).timestamp_ns, msg.data))
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return found


async def stage_trace(nc: Any, namespace: str, sent_wall: dict[int, float]) -> dict[str, dict[str, float]]:
    """Where an order's time goes, from the streams' own timestamps (server clock = this clock):
    POST sent -> in ORDERS (gateway) -> in MATCH (accounts) -> in EVENTS (matching)."""
    in_orders: dict[int, int] = {}
    for ts, data in await stream_times(nc, ORDERS.wildcard(namespace)):
        for item in ACCOUNTS_BATCH_DECODER.decode(data).items:
            if isinstance(item, PlaceOrder):
                in_orders.setdefault(item.order_id, ts)
    in_match: dict[int, int] = {}
    for ts, data in await stream_times(nc, MATCH.wildcard(namespace)):
        for segment in MATCH_BATCH_DECODER.decode(data).segments:
            for command in segment.commands:
                if isinstance(command, PlaceOrder):
                    in_match.setdefault(command.order_id, ts)
    in_events: dict[int, int] = {}
    for ts, data in await stream_times(nc, EVENTS.wildcard(namespace)):
        for event in EVENT_BATCH_DECODER.decode(data).events:
            if isinstance(event, OrderAccepted):
                in_events.setdefault(event.order_id, ts)
    gateway, accounts, matching = [], [], []
    for order_id, sent in sent_wall.items():
        if order_id in in_orders:
            gateway.append(in_orders[order_id] / 1e9 - sent)
            if order_id in in_match:
                accounts.append((in_match[order_id] - in_orders[order_id]) / 1e9)
                if order_id in in_events:
                    matching.append((in_events[order_id] - in_match[order_id]) / 1e9)
    return {
        "POST sent -> stored in ORDERS (gateway)": summary_ms(gateway),
        "ORDERS -> stored in MATCH (accounts)": summary_ms(accounts),
        "MATCH -> stored in EVENTS (matching)": summary_ms(matching),
    }


class EventListener:
    """Times, at this process's clock, each order's first `accepted` and first trade as taker."""

    def __init__(self) -> None:
        self.accepted: dict[int, float] = {}
        self.first_trade: dict[int, float] = {}
        self.trades = 0
        self.batches = 0
        self.trade_ids: set[tuple[str, int]] = set()

    async def on_message(self, msg: Msg) -> None:
        now = time.perf_counter()
        batch = EVENT_BATCH_DECODER.decode(msg.data)
        self.batches += 1
        for event in batch.events:
            if isinstance(event, Trade):
                self.trades += 1
                self.first_trade.setdefault(event.taker_order_id, now)
            elif isinstance(event, OrderAccepted):
                self.accepted.setdefault(event.order_id, now)


def command_rate(args: argparse.Namespace) -> float:
    """Requests per second: `--rate` orders, plus the cancels (a share of all commands)."""
    rate: float = args.rate / (1.0 - args.cancel_share)
    return rate


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def summary_ms(values: Iterable[float]) -> dict[str, float]:
    ordered = sorted(values)
    out = {"count": float(len(ordered))}
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9)):
        out[name] = percentile(ordered, q) * 1000
    out["max"] = ordered[-1] * 1000 if ordered else float("nan")
    out["mean"] = sum(ordered) / len(ordered) * 1000 if ordered else float("nan")
    return out


class LoadRun:
    def __init__(self, args: argparse.Namespace, api: str, tokens: dict[int, str]) -> None:
        self.args = args
        url = urlsplit(api)
        self.host, self.port, self.prefix = url.hostname or "127.0.0.1", url.port or 80, url.path
        self.netloc = url.netloc
        self.headers = {
            member: f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n".encode()
            for member, token in tokens.items()
        }
        self.samples: list[Sample] = []
        self.workload = Workload(args.members, args.cancel_share, args.ioc_share, args.seed)
        self.stopping = False
        self.window = (0.0, 0.0)
        self.max_lag = 0.0

    async def client(self, index: int, start: float, end: float) -> None:
        """One keep-alive connection sending on its own schedule (rate / clients per second).

        A request goes out at its scheduled time, or as soon as the previous one has returned
        if that is later: `post_order` latency is measured from the send (what the server
        takes), `post_order_from_schedule` from the scheduled time (what a client that wanted
        to send then would see, so a stall shows even though this client waited)."""
        period = self.args.clients / command_rate(self.args)
        resting: list[tuple[str, int]] = []
        connection: LeanHttpConnection | None = None
        slot = start + period * index / self.args.clients
        try:
            while slot < end:
                delay = slot - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if connection is None or connection.closed:
                    connection = await LeanHttpConnection.open(self.host, self.port)
                await self.send(connection, self.workload.next(resting), slot, resting)
                slot += period
        finally:
            if connection is not None:
                connection.close()

    async def send(
        self, connection: LeanHttpConnection, action: Action, scheduled: float, resting: list[tuple[str, int]]
    ) -> None:
        sent = time.perf_counter()
        self.max_lag = max(self.max_lag, sent - scheduled)
        headers = self.headers[action.member]
        order_id = 0
        if action.kind == "place":
            raw = build_request("POST", self.netloc, f"{self.prefix}/order", headers, action.body)
        else:
            raw = build_request("DELETE", self.netloc, f"{self.prefix}/order/{action.order_id}", headers)
        try:
            code, data = await connection.request(raw, self.args.timeout)
            status = str(code)
            if code in (200, 201, 202):
                body = msgspec.json.decode(data)
                order_id = int(body["id"])
                if action.kind == "place" and body.get("status") in ("submitted", "partially_filled"):
                    resting.append((body["id"], action.member))
            else:
                with contextlib.suppress(Exception):
                    status += f" {msgspec.json.decode(data).get('code')}"
        except Exception as exc:
            status = f"exc:{type(exc).__name__}"
        self.samples.append(Sample(action.kind, scheduled, sent, time.perf_counter(), status, order_id))

    async def progress(self, start: float, end: float, listener: EventListener) -> None:
        seen = 0
        trades = 0
        last = start
        print(f"{'t(s)':>5} {'sent/s':>7} {'ok/s':>7} {'err':>5} {'p50ms':>7} {'p99ms':>7} {'trades/s':>8}")
        while not self.stopping:
            await asyncio.sleep(self.args.progress)
            now = time.perf_counter()
            batch = self.samples[seen:]
            seen += len(batch)
            interval = max(now - last, 1e-9)
            latencies = sorted(s.done - s.sent for s in batch)
            ok = sum(1 for s in batch if s.status[:3] in ("201", "202", "200"))
            print(
                f"{now - start:5.1f} {len(batch) / interval:7.0f} {ok / interval:7.0f} "
                f"{len(batch) - ok:5d} {percentile(latencies, 50) * 1000:7.1f} "
                f"{percentile(latencies, 99) * 1000:7.1f} {(listener.trades - trades) / interval:8.0f}",
                flush=True,
            )
            trades = listener.trades
            last = now
            if now > end + self.args.timeout:
                return

    def plan(self) -> tuple[float, float]:
        """(start, end) of the load; the measured window is after the warm-up."""
        start = time.perf_counter() + 0.2
        end = start + self.args.warmup + self.args.duration
        self.window = (start + self.args.warmup, end)
        return start, end

    async def run(self, listener: EventListener, start: float, end: float) -> None:
        ticker = asyncio.create_task(self.progress(start, end, listener))
        await asyncio.gather(*(self.client(i, start, end) for i in range(self.args.clients)))
        self.stopping = True
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker


def start_profilers(args: argparse.Namespace, pids: dict[str, int]) -> dict[str, tuple[Path, Any]]:
    """py-spy on every Python server process for the measured window (raw collapsed stacks)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    REPORTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    running: dict[str, tuple[Path, Any]] = {}
    for label, pid in pids.items():
        if label == "nats-server":
            continue
        out = REPORTS / f"e2e-{stamp}-{args.mode}-{label.replace(' ', '_')}.stacks"
        command = [spy, "record", "--pid", str(pid), "--duration", str(int(args.duration)), "--rate", "200"]
        command += ["--format", "raw", "--nolineno", "--gil", "--nonblocking", "--output", str(out)]
        running[label] = (
            out,
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        )
    return running


def finish_profilers(running: dict[str, tuple[Path, Any]]) -> dict[str, Any]:
    profiles: dict[str, Any] = {}
    for label, (path, process) in running.items():
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if path.exists():
            profiles[label] = summarize_stacks(path)
    return profiles


PACKAGES = (
    ("bourse/domain", "bourse.domain"),
    ("bourse/application", "bourse.application"),
    ("bourse/contracts", "bourse.contracts"),
    ("bourse/entrypoints", "bourse.entrypoints"),
    ("bourse/services", "bourse.services"),
    ("bourse/adapters", "bourse.adapters"),
    ("bourse/runtime", "bourse.runtime"),
    ("bourse/", "bourse (other)"),
    ("nats/", "nats-py"),
    ("h11", "h11"),
    ("uvicorn", "uvicorn"),
    ("starlette", "starlette"),
    ("fastapi", "fastapi"),
    ("pydantic", "pydantic"),
    ("anyio", "anyio"),
    ("msgspec", "msgspec"),
    ("jwt", "pyjwt"),
    ("asyncio", "asyncio"),
    ("logging", "logging"),
)


def frame_package(frame: str) -> str:
    for marker, name in PACKAGES:
        if marker in frame:
            return name
    return frame.rsplit("(", 1)[-1].rstrip(")") or "?"


def summarize_stacks(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive samples per function, and self samples per package (the leaf's)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame.strip() for frame in stack.split(";") if frame.strip()]
        if frames and frames[0].startswith(("process ", "thread ")):
            frames = frames[1:]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        packages[frame_package(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, count / max(total, 1)) for name, count in counter.most_common(top)]

    return {
        "file": str(path),
        "samples": total,
        "self": share(own),
        "inclusive": share(inclusive),
        "packages": share(packages),
    }


@dataclass(slots=True)
class CpuMark:
    at: float
    processes: dict[str, float | None]
    loadgen: float
    machine: tuple[int, int]


def cpu_mark(pids: dict[str, int]) -> CpuMark:
    times = os.times()
    return CpuMark(
        time.perf_counter(),
        {label: cpu_seconds(pid) for label, pid in pids.items()},
        times.user + times.system,
        machine_busy(),
    )


async def health_facts(system: System, session: aiohttp.ClientSession) -> dict[str, Any]:
    """Every process's /healthz services (for the stages' own handler CPU counters)."""
    facts: dict[str, Any] = {}
    for server in system.servers:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with session.get(f"http://127.0.0.1:{server.health_port}/healthz") as resp:
                facts.update((await resp.json()).get("services", {}))
    return facts


async def quiesce(listener: EventListener, *, idle_s: float = 1.0, limit_s: float = 15.0) -> None:
    """Until no engine event arrived for `idle_s` (the pipeline has drained)."""
    deadline = time.monotonic() + limit_s
    last = (-1, time.monotonic())
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if listener.batches != last[0]:
            last = (listener.batches, time.monotonic())
        elif time.monotonic() - last[1] >= idle_s:
            return


async def stream_counts(nc: Any, namespace: str) -> dict[str, int]:
    """Messages stored so far in each of the namespace's streams."""
    js = nc.jetstream()
    counts = {}
    for spec in STREAMS:
        with contextlib.suppress(Exception):
            info = await js.stream_info(spec.name(namespace))
            counts[spec.kind] = int(info.state.last_seq)
    return counts


def batching(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per consumer: stream messages delivered per fetch in the window; gateway: orders per publish."""
    out: dict[str, dict[str, float]] = {}

    def consumers(facts: dict[str, Any]) -> dict[str, dict[str, Any]]:
        found = {}
        for service in facts.values():
            if isinstance(service, dict):
                for consumer in service.get("consumers", []):
                    found[consumer["durable"]] = consumer
        return found

    prior = consumers(before)
    for durable, stats in consumers(after).items():
        old = prior.get(durable, {"delivered": 0, "batches": 0})
        fetches = stats["batches"] - old["batches"]
        delivered = stats["delivered"] - old["delivered"]
        out[durable] = {"fetches": fetches, "messages": delivered, "per_fetch": delivered / max(fetches, 1)}
    gateway_before, gateway_after = before.get("gateway", {}), after.get("gateway", {})
    if "orders_published" in gateway_after:
        published = gateway_after["batches_published"] - gateway_before.get("batches_published", 0)
        orders = gateway_after["orders_published"] - gateway_before.get("orders_published", 0)
        out["gateway intake"] = {
            "fetches": published,
            "messages": orders,
            "per_fetch": orders / max(published, 1),
        }
    return out


def stage_cpu(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, facts in after.items():
        if isinstance(facts, dict) and "cpu_s" in facts:
            prior = before.get(name, {}).get("cpu_s", 0.0)
            out[name] = float(facts["cpu_s"]) - float(prior)
    return out


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bourse-e2e-"))
    system: System | None = None
    try:
        print(f"starting: mode {args.mode}, {args.members} demo members, data in {workdir}", flush=True)
        system = await start_system(args, workdir)
        ring = key_ring_for(Settings(data_dir=workdir, _env_file=None))
        issuer = issuer_for(Settings(data_dir=workdir, _env_file=None), ring)
        tokens = {member: issuer.issue(member) for member in range(1, args.members + 1)}
        async with aiohttp.ClientSession() as session:
            await wait_healthy(system, session, 60.0)
            await wait_seeded(system.api, session, tokens, args.members, 60.0)
            pids = system.measured()
            print(
                "up: "
                + ", ".join(f"{label} pid {pid}" for label, pid in pids.items())
                + f"; api {system.api}",
                flush=True,
            )
            nc = await nats.connect(system.nats_url)
            listener = EventListener()
            await nc.subscribe(EVENTS.wildcard(system.namespace), cb=listener.on_message)
            load = LoadRun(args, system.api, tokens)
            print(
                f"load: {args.rate:.0f} orders/s + {command_rate(args) - args.rate:.0f} cancels/s "
                f"for {args.duration}s (+{args.warmup}s warm-up), {args.clients} clients",
                flush=True,
            )
            start, end = load.plan()
            runner = asyncio.create_task(load.run(listener, start, end))
            await asyncio.sleep(max(load.window[0] - time.perf_counter(), 0.0))
            health_before = await health_facts(system, session)
            streams_before = await stream_counts(nc, system.namespace)
            before = cpu_mark(pids)
            profilers = start_profilers(args, pids) if args.profile else {}
            await runner
            profiles = finish_profilers(profilers)
            await quiesce(listener)
            after = cpu_mark(pids)
            health_after = await health_facts(system, session)
            streams_after = await stream_counts(nc, system.namespace)
            offset = time.time() - time.perf_counter()
            lo, hi = load.window
            sent_wall = {
                s.order_id: s.sent + offset
                for s in load.samples
                if s.kind == "place" and s.order_id and lo <= s.scheduled < hi
            }
            trace = await stage_trace(nc, system.namespace, sent_wall)
            await nc.drain()
        result = analyse(args, system, load, listener, before, after, stage_cpu(health_before, health_after))
        result["profiles"] = profiles
        result["latency_ms"].update(trace)
        ok = max(result["orders"]["ok"], 1)
        result["stream_messages_per_order"] = {
            name: (streams_after[name] - streams_before.get(name, 0)) / ok for name in streams_after
        }
        result["batching"] = batching(health_before, health_after)
        return result
    finally:
        if system is not None:
            stop_system(system)
            if system.external_nats:
                with contextlib.suppress(Exception):
                    await remove_namespace(system.nats_url, system.namespace)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def analyse(
    args: argparse.Namespace,
    system: System,
    load: LoadRun,
    listener: EventListener,
    before: CpuMark,
    after: CpuMark,
    stages: dict[str, float],
) -> dict[str, Any]:
    lo, hi = load.window
    window = [s for s in load.samples if lo <= s.scheduled < hi]
    places = [s for s in window if s.kind == "place"]
    cancels = [s for s in window if s.kind == "cancel"]
    ok_places = [s for s in places if s.status[:3] in ("201", "202")]
    ok_cancels = [s for s in cancels if s.status[:3] == "200"]
    statuses = Counter(f"{s.kind} {s.status}" for s in window)
    elapsed = hi - lo
    to_trade = [
        listener.first_trade[s.order_id] - s.sent for s in ok_places if s.order_id in listener.first_trade
    ]
    to_accept = [listener.accepted[s.order_id] - s.sent for s in ok_places if s.order_id in listener.accepted]
    wall = after.at - before.at
    orders = max(len(ok_places), 1)
    commands = max(len(ok_places) + len(ok_cancels), 1)
    cpu: dict[str, dict[str, float | None]] = {}
    for label, start_s in before.processes.items():
        end_s = after.processes.get(label)
        if start_s is None or end_s is None:
            cpu[label] = {"cpu_s": None, "us_per_order": None, "cores": None}
            continue
        used = end_s - start_s
        cpu[label] = {
            "cpu_s": used,
            "us_per_order": used / orders * 1e6,
            "us_per_command": used / commands * 1e6,
            "cores": used / wall,
        }
    loadgen = after.loadgen - before.loadgen
    busy = (after.machine[0] - before.machine[0]) / max(after.machine[1] - before.machine[1], 1)
    late = sum(1 for s in window if s.sent - s.scheduled > 0.005)
    ours = sum(values["cpu_s"] or 0.0 for values in cpu.values()) + loadgen
    cpus = os.cpu_count() or 1
    others = max(busy * cpus * wall - ours, 0.0) / wall
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": {
            key: value
            for key, value in vars(args).items()
            if isinstance(value, int | float | str | list | None)
        },
        "mode": system.mode,
        "nats": "external " + system.nats_url if system.external_nats else "own (sync_interval: always)",
        "machine": {"cpus": cpus, "busy_share": busy, "other_processes_cores": others},
        "window_s": elapsed,
        "drain_s": wall - elapsed,
        "orders": {
            "sent": len(places),
            "ok": len(ok_places),
            "rate_ok": sum(1 for s in ok_places if s.done < hi) / elapsed,
            "rate_sent": sum(1 for s in places if s.sent < hi) / elapsed,
            "scheduled_rate": len(places) / elapsed,
            "status_201": sum(1 for s in ok_places if s.status == "201"),
            "status_202": sum(1 for s in ok_places if s.status == "202"),
        },
        "cancels": {"sent": len(cancels), "ok": len(ok_cancels)},
        "statuses": dict(statuses.most_common()),
        "latency_ms": {
            "post_order": summary_ms(s.done - s.sent for s in ok_places),
            "post_order_from_schedule": summary_ms(s.done - s.scheduled for s in ok_places),
            "delete_order": summary_ms(s.done - s.sent for s in ok_cancels),
            "order_to_trade_event": summary_ms(to_trade),
            "order_to_accepted_event": summary_ms(to_accept),
        },
        "trades": {
            "events_total": listener.trades,
            "orders_with_trade_in_window": len(to_trade),
            "share_of_orders_trading_as_taker": len(to_trade) / orders,
        },
        "loadgen": {"late_sends_over_5ms": late, "max_send_lag_ms": load.max_lag * 1000},
        "cpu": cpu,
        "cpu_loadgen": {"cpu_s": loadgen, "us_per_order": loadgen / orders * 1e6, "cores": loadgen / wall},
        "stage_handler_cpu_s": stages,
        "rss_mb": {label: rss_mb(pid) for label, pid in system.measured().items()},
        "_samples": window,
        "_to_trade": to_trade,
    }


# --- output -----------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or value != value else f"{value:,.{digits}f}"


def tracing_line(result: dict[str, Any]) -> str:
    tracing = result.get("tracing") or {}
    if tracing.get("ratio") is None:
        return "tracing: off"
    return (
        f"tracing: on, sampling {tracing['ratio']}; {tracing['spans_exported']} spans exported "
        f"in {tracing['exports']} OTLP requests"
    )


def render_text(result: dict[str, Any]) -> str:
    o, lat = result["orders"], result["latency_ms"]
    lines = [
        "",
        f"mode {result['mode']}, nats {result['nats']}, {result['options']['clients']} clients, "
        f"target {result['options']['rate']:.0f} orders/s, window {result['window_s']:.1f}s "
        f"(+{result['drain_s']:.1f}s drain), machine busy {result['machine']['busy_share']:.0%} "
        f"of {result['machine']['cpus']} cpus ({result['machine']['other_processes_cores']:.2f} cores "
        "used by processes outside the benchmark)",
        tracing_line(result),
        f"orders: {o['ok']} ok of {o['sent']} sent; achieved {o['rate_ok']:.0f} orders/s ok within the "
        f"window (scheduled {o['scheduled_rate']:.0f}/s) "
        f"(201: {o['status_201']}, 202: {o['status_202']}); "
        f"cancels: {result['cancels']['ok']} ok of {result['cancels']['sent']}",
        f"trades: {result['trades']['events_total']} events; "
        f"{result['trades']['share_of_orders_trading_as_taker']:.0%} of orders traded as taker",
        "",
        f"{'latency (ms)':<42} {'count':>7} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>7}",
    ]
    for name, values in lat.items():
        lines.append(
            f"{name:<42} {int(values['count']):>7} {fmt(values['p50']):>7} {fmt(values['p90']):>7} "
            f"{fmt(values['p99']):>7} {fmt(values['p99.9']):>7} {fmt(values['max']):>7}"
        )
    lines += ["", f"{'cpu':<30} {'cpu s':>8} {'cores':>6} {'us/order':>9} {'us/command':>10}"]
    total = 0.0
    for label, values in result["cpu"].items():
        if values["cpu_s"] is not None:
            total += values["us_per_order"]
        lines.append(
            f"{label:<30} {fmt(values['cpu_s'], 2):>8} {fmt(values['cores'], 2):>6} "
            f"{fmt(values['us_per_order'], 0):>9} {fmt(values.get('us_per_command'), 0):>10}"
        )
    lines.append(f"{'total (servers)':<30} {'':>8} {'':>6} {fmt(total, 0):>9}")
    g = result["cpu_loadgen"]
    lines.append(
        f"{'load generator':<30} {fmt(g['cpu_s'], 2):>8} {fmt(g['cores'], 2):>6} "
        f"{fmt(g['us_per_order'], 0):>9}"
    )
    if result["stage_handler_cpu_s"]:
        ok = max(o["ok"], 1)
        lines.append(
            "stage handlers (their own cpu_s counters, us/order): "
            + ", ".join(f"{name} {cpu / ok * 1e6:.0f}" for name, cpu in result["stage_handler_cpu_s"].items())
        )
    errors = {key: count for key, count in result["statuses"].items() if key.split()[1][:3] not in SUCCESS}
    lines.append("errors: " + (", ".join(f"{key}: {count}" for key, count in errors.items()) or "none"))
    lg = result["loadgen"]
    lines.append(
        f"load generator: {lg['late_sends_over_5ms']} sends >5 ms behind schedule "
        "(previous answer late, or the generator slow), "
        f"max lag {lg['max_send_lag_ms']:.1f} ms"
    )
    if result.get("stream_messages_per_order"):
        lines.append(
            "stream messages stored per order: "
            + ", ".join(f"{name} {count:.2f}" for name, count in result["stream_messages_per_order"].items())
        )
    if result.get("batching"):
        lines.append(
            "messages per fetch (per publish for the gateway): "
            + ", ".join(
                f"{name} {stats['per_fetch']:.1f}"
                for name, stats in result["batching"].items()
                if stats["messages"]
            )
        )
    for label, profile in result.get("profiles", {}).items():
        lines += ["", f"profile of {label}: {profile['samples']} samples ({profile['file']})"]
        lines.append(
            "  self by package: " + ", ".join(f"{name} {part:.0%}" for name, part in profile["packages"][:12])
        )
        lines.append("  self by function:")
        lines += [f"    {part:6.1%}  {name}" for name, part in profile["self"][:15]]
        lines.append("  inclusive by function:")
        lines += [f"    {part:6.1%}  {name}" for name, part in profile["inclusive"][:25]]
    return "\n".join(lines)


def plot_png(result: dict[str, Any]) -> bytes | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    samples: list[Sample] = result["_samples"]
    ok = [s for s in samples if s.kind == "place" and s.status[:3] in ("201", "202")]
    if not ok:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    quantiles = [50, 75, 90, 95, 99, 99.5, 99.9, 99.99]
    xs = [1 / (1 - q / 100) for q in quantiles]
    series = {
        "POST /order": sorted(s.done - s.sent for s in ok),
        "order to trade event": sorted(result["_to_trade"]),
    }
    for name, values in series.items():
        if values:
            left.plot(xs, [percentile(values, q) * 1000 for q in quantiles], marker="o", label=name)
    left.set_xscale("log")
    left.set_xticks(xs, [f"p{q:g}" for q in quantiles])
    left.set_ylabel("ms")
    left.set_title("latency by percentile")
    left.grid(True, alpha=0.3)
    left.legend()
    t0 = min(s.scheduled for s in ok)
    seconds: dict[int, list[float]] = {}
    for s in ok:  # by the second the answer came: what was achieved, not what was scheduled
        seconds.setdefault(int(s.done - t0), []).append(s.done - s.sent)
    ts = sorted(seconds)
    right.plot(ts, [len(seconds[t]) for t in ts], color="tab:gray", label="orders/s ok")
    right.set_ylim(bottom=0)
    right.set_xlabel("s (answers of orders scheduled in the window)")
    right.set_ylabel("orders/s answered 201/202 (gray)")
    other = right.twinx()
    other.plot(ts, [percentile(sorted(seconds[t]), 50) * 1000 for t in ts], color="tab:blue", label="p50")
    other.plot(ts, [percentile(sorted(seconds[t]), 99) * 1000 for t in ts], color="tab:red", label="p99")
    other.set_ylabel("POST /order ms")
    other.legend(loc="upper right")
    right.set_title("throughput and latency per second")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write_reports(result: dict[str, Any], text: str) -> tuple[Path, Path]:
    REPORTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = REPORTS / f"e2e-{stamp}-{result['mode']}"
    public = {key: value for key, value in result.items() if not key.startswith("_")}
    json_path = base.with_suffix(".json")
    json_path.write_text(json.dumps(public, indent=2, default=str) + "\n")
    png = plot_png(result)
    image = ""
    if png is not None:
        base.with_suffix(".png").write_bytes(png)
        image = f'<img alt="latency plots" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    html_path = base.with_suffix(".html")
    html_path.write_text(
        "<!doctype html><meta charset='utf-8'><title>bourse end-to-end benchmark</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{background:#f5f5f5;padding:1em}"
        "img{max-width:100%}</style>"
        f"<h1>bourse end-to-end benchmark, {escape(result['when'])}</h1>"
        f"<pre>{escape(text)}</pre>{image}"
        f"<h2>Raw result</h2><pre>{escape(json.dumps(public, indent=2, default=str))}</pre>"
    )
    return json_path, html_path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="POST /order per second; cancels come on top (1000)"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds (20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring (3)")
    parser.add_argument("--clients", type=int, default=100, help="concurrent keep-alive connections (100)")
    parser.add_argument("--mode", choices=("up", "split"), default="up")
    parser.add_argument(
        "--nats-url", default=None, help="use this NATS (unique namespace) instead of our own"
    )
    parser.add_argument(
        "--processes", default=None, metavar="N", help="up mode: `bourse up --processes N` (default: its own)"
    )
    parser.add_argument(
        "--members", type=int, default=1000, help="demo members the orders spread over (1000)"
    )
    parser.add_argument("--cancel-share", type=float, default=0.1, help="share of commands that cancel (0.1)")
    parser.add_argument("--ioc-share", type=float, default=0.05, help="share of orders that are IOC (0.05)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds (10)")
    parser.add_argument("--progress", type=float, default=2.0, help="seconds between progress lines (2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--skip", action="append", default=[], metavar="SERVICE", help="split mode: do not run this service"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy every server process during the window"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder (logs)")
    parser.add_argument(
        "--trace-ratio",
        type=float,
        default=None,
        metavar="R",
        help="tracing on, sampling this share of orders (0, 0.01, 1), spans exported over OTLP to a "
        "receiver in the bench (not counted as server CPU); default: tracing off",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every service, e.g. --set ACCOUNTS_LINGER_S=0.002 (BOURSE_ is added)",
    )
    parser.add_argument(
        "--sql-url",
        default=None,
        help="persistence database (BOURSE_SQL_URL), e.g. mysql+asyncmy://root@127.0.0.1:3306/bench; "
        "default SQLite in the data folder. Check it afterwards with `bourse audit`",
    )
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.clients <= 0 or args.duration <= 0 or args.members < 1:
        parser.error("rate, clients, duration and members must be positive")
    if not 0.0 <= args.cancel_share < 1.0 or not 0.0 <= args.ioc_share <= 1.0:
        parser.error("--cancel-share must be in [0, 1), --ioc-share in [0, 1]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with OtlpSink(keep=False) as sink:
        args.trace_endpoint = sink.endpoint
        try:
            import uvloop

            result = uvloop.run(run_bench(args))
        except ImportError:
            result = asyncio.run(run_bench(args))
        result["tracing"] = {"ratio": args.trace_ratio, "spans_exported": sink.count, "exports": sink.exports}
    text = render_text(result)
    print(text)
    json_path, html_path = write_reports(result, text)
    print(f"\nreport: {html_path}\nresult: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

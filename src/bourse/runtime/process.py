"""One bourse process: (optionally) the embedded NATS server, a NATS connection, the JetStream
topology, a set of services and the health endpoint; stopped cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import nats
from nats.aio.client import Client

from bourse.adapters.cancellation import cancel_and_wait
from bourse.adapters.http_server import HttpServer
from bourse.adapters.jetstream import ensure_topology
from bourse.adapters.metrics import exposition
from bourse.config.production import check_production
from bourse.config.settings import Settings, mask_url
from bourse.contracts.subjects import STREAMS
from bourse.runtime.dashboard import ASGIApp, Dashboard, process_scrape, read_streams
from bourse.runtime.health import HealthApp
from bourse.runtime.host import ServiceHost
from bourse.runtime.nats_server import EmbeddedNatsServer
from bourse.runtime.service import Service, ServiceContext

log = logging.getLogger(__name__)

DASHBOARD_TICK_S = 1.0


async def connect_nats(settings: Settings, name: str) -> Client:
    async def on_disconnected() -> None:
        log.warning("nats disconnected")

    async def on_reconnected() -> None:
        log.info("nats reconnected")

    async def on_error(exc: Exception) -> None:
        log.warning("nats error", extra={"error": repr(exc)})

    return await nats.connect(
        servers=settings.nats_servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        error_cb=on_error,
    )


async def close_nats(nc: Client, drain_s: float = 5.0) -> None:
    """Drain the connection (in-flight messages go out, subscriptions finish), or close it if
    draining does not finish in time."""
    if nc.is_closed:
        return
    try:
        await asyncio.wait_for(nc.drain(), drain_s)
    except Exception:
        await nc.close()


def freeze_startup_heap() -> None:
    """Move what start-up made (modules, settings, snapshots) out of the collector's sight.

    Imports leave ~10^5-10^6 long-lived objects; the first full collection under load walked
    them all and stopped the event loop for 80-100 ms (seen as POST p99 spikes in the e2e
    bench). Frozen, they are never scanned again; what is made later is collected as usual."""
    gc.collect()
    gc.freeze()


class BourseProcess:
    """Start with `start()`, stop with `stop()`; `run()` does both around a signal wait."""

    def __init__(self, settings: Settings, services: Sequence[type[Service]], *, embedded_nats: bool) -> None:
        self.settings = settings
        self.services = services
        self.nats_server = (
            EmbeddedNatsServer(
                settings.data_dir / "nats",
                settings.embedded_nats_port,
                settings.embedded_nats_monitor_port,
            )
            if embedded_nats
            else None
        )
        self.nc: Client | None = None
        self.host: ServiceHost | None = None
        self.health_server: HttpServer | None = None
        self.dashboard: Dashboard | None = None
        self._dashboard_feed: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        """Start everything; with production settings that hold a development default, raise
        `ProductionSettingsRefused` before anything starts or connects."""
        check_production(self.settings)
        if self.nats_server is not None:
            await self.nats_server.start()
        names = ",".join(service.name for service in self.services)
        self.nc = await connect_nats(self.settings, f"bourse[{names}]")
        js = self.nc.jetstream()
        await ensure_topology(js, self.settings.namespace, self.settings.stream_replicas)
        self.host = ServiceHost(ServiceContext(self.settings, self.nc, js))
        await self.host.start(self.services)
        if self.settings.health_port:
            app: ASGIApp = HealthApp(self.health, self.metrics)
            if self.nats_server is not None:  # `bourse up` in one process: this is the whole system
                self.dashboard = Dashboard(self.links)
                app = self.dashboard.app(app)
                self._dashboard_feed = asyncio.create_task(self._feed_dashboard(), name="dashboard")
            self.health_server = HttpServer(app, self.settings.health_host, self.settings.health_port)
            await self.health_server.start()

    async def _feed_dashboard(self) -> None:
        """Once a second, what the supervisor's poll gives the dashboard when there are children:
        this process's metrics, the embedded NATS server's CPU and memory, the streams."""
        assert self.dashboard is not None
        assert self.nc is not None
        assert self.nats_server is not None
        dashboard, label = self.dashboard, ", ".join(service.name for service in self.services)
        names = [spec.name(self.settings.namespace) for spec in STREAMS]
        while True:
            await asyncio.sleep(DASHBOARD_TICK_S)
            try:
                streams = await read_streams(self.nc, names)
                scrapes = [
                    process_scrape(label, str(os.getpid()), self.metrics(), os.getpid(), dashboard.facts)
                ]
                if (pid := self.nats_server.pid) is not None:
                    scrapes.append(process_scrape("nats-server", str(pid), "", pid, dashboard.facts))
                dashboard.series.add(time.time(), scrapes, streams)
            except Exception:
                log.exception("dashboard tick failed")

    def health(self) -> Mapping[str, Any]:
        services = dict(self.host.health()) if self.host else {}
        nats_ok = self.nc is not None and self.nc.is_connected
        ok = nats_ok and all(facts.get("ok") for facts in services.values())
        return {"ok": ok, "nats": "connected" if nats_ok else "disconnected", "services": services}

    def metrics(self) -> str:
        """The process's families (`bourse.adapters.metrics`: CPU, memory, consumers, endpoints,
        HTTP...), then each service's own."""
        return exposition() + (self.host.metrics() if self.host else "")

    def links(self) -> dict[str, str]:
        links = dict(self.host.links()) if self.host else {}
        if self.health_server is not None:
            links["health"] = f"{self.health_server.url}/healthz"
            if self.dashboard is not None:
                links["dashboard"] = f"{self.health_server.url}/dashboard"
        if self.nats_server is not None:
            links["nats"] = self.nats_server.url
            links["nats monitoring"] = self.nats_server.monitor_url
        else:
            links["nats"] = ", ".join(mask_url(url) for url in self.settings.nats_servers)
        return links

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        if self._dashboard_feed is not None:
            await cancel_and_wait([self._dashboard_feed])
        if self.health_server is not None:
            await self.health_server.stop()
        if self.host is not None:
            await self.host.stop()
        if self.nc is not None:
            await close_nats(self.nc)
        if self.nats_server is not None:
            await self.nats_server.stop()

    async def run(self, on_ready: Callable[[BourseProcess], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            freeze_startup_heap()
            if on_ready is not None:
                on_ready(self)
            await self._stop.wait()
            log.info("stopping")
        finally:
            await self.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def print_links(process: BourseProcess, out: TextIO = sys.stdout) -> None:
    names = ", ".join(service.name for service in process.services)
    print(f"bourse is up: {names}", file=out)
    for label, url in process.links().items():
        print(f"  {label:<16} {url}", file=out)
    print("Press Ctrl-C to stop.", file=out, flush=True)

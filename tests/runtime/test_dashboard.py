"""The dashboard's adapters: its routes in front of the health endpoint, the vendored files in
the package, and the streams' facts read from a real JetStream."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
from nats.aio.client import Client
from nats.js.api import ConsumerConfig

from bourse.adapters.jetstream import ensure_topology
from bourse.application.dashboard_series import ProcessScrape
from bourse.config.settings import Settings
from bourse.contracts.subjects import ORDERS, STREAMS
from bourse.runtime.dashboard import Dashboard, ProcessFacts, process_scrape, read_streams
from bourse.runtime.health import HealthApp

NATS_MONITORING = "http://127.0.0.1:18222"


def client(dashboard: Dashboard) -> httpx.AsyncClient:
    health = HealthApp(lambda: {"ok": True}, lambda: "bourse_up 1\n")
    app: Any = dashboard.app(health)  # plain ASGI, typed with dicts where httpx says MutableMapping
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_the_page_its_files_and_its_series_are_served_beside_the_health_endpoint() -> None:
    dashboard = Dashboard(lambda: {"nats monitoring": NATS_MONITORING})
    dashboard.series.add(1.0, [ProcessScrape("gateway", "run-0", [])], None)
    async with client(dashboard) as http:
        page = await http.get("/dashboard")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        # everything the page loads is served here: no CDN (the network may be closed)
        assert '<script src="/dashboard/static/uPlot.iife.min.js">' in page.text
        assert '<link rel="stylesheet" href="/dashboard/static/uPlot.min.css">' in page.text
        assert "https://" not in page.text.split("<body>")[1]
        script = await http.get("/dashboard/static/uPlot.iife.min.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert script.text.startswith("/*! https://github.com/leeoniya/uPlot")
        assert (await http.get("/dashboard/static/uPlot.min.css")).text.startswith(".uplot")
        assert "MIT" in (await http.get("/dashboard/static/uPlot.LICENSE")).text
        assert (await http.get("/dashboard/static/../dashboard.py")).status_code == 404
        assert (await http.get("/dashboard/nothing")).status_code == 404

        series = await http.get("/dashboard/series")
        assert series.headers["cache-control"] == "no-store"
        body: dict[str, Any] = json.loads(series.text)
        assert body["t"] == [1.0]
        assert body["links"] == {"nats monitoring": NATS_MONITORING}
        assert body["latest"]["orders"] == {"accepted": None, "refused": None}

        # the health endpoint is untouched
        assert (await http.get("/healthz")).json() == {"ok": True}
        assert (await http.get("/metrics")).text == "bourse_up 1\n"


def test_a_process_without_process_metrics_gets_them_from_proc() -> None:
    facts = ProcessFacts()
    bare = process_scrape(
        "gateway", "run-0", 'bourse_orders_total{outcome="accepted"} 3\n', os.getpid(), facts
    )
    names = {sample.name for sample in bare.samples}
    assert names == {"bourse_orders_total", "process_cpu_seconds_total", "process_resident_memory_bytes"}
    # its own process_* win: no second reading of /proc
    own = process_scrape("gateway", "run-0", "process_cpu_seconds_total 12.5\n", os.getpid(), facts)
    assert [(s.name, s.value) for s in own.samples] == [("process_cpu_seconds_total", 12.5)]


async def test_stream_facts_come_from_jetstream(settings: Settings, nc: Client) -> None:
    js = nc.jetstream()
    await ensure_topology(js, settings.namespace)
    ns = settings.namespace
    for n in range(3):
        await js.publish(ORDERS.subject(ns, 0), f"order {n}".encode())
    await js.add_consumer(ORDERS.name(ns), ConsumerConfig(durable_name="accounts-0", ack_wait=30))
    names = [spec.name(ns) for spec in STREAMS]

    facts = await read_streams(nc, [*names, f"{ns.upper()}_MISSING"])
    assert facts is not None
    assert [stream.name for stream in facts] == names  # the missing one is left out
    orders = facts[0]
    assert orders.messages == 3
    assert orders.bytes > 0
    (consumer,) = orders.consumers
    assert (consumer.name, consumer.durable, consumer.num_pending, consumer.num_ack_pending) == (
        "accounts-0",
        True,
        3,
        0,
    )
    assert await read_streams(nc, [f"{ns.upper()}_MISSING"]) is None

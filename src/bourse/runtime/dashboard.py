"""The live dashboard of `bourse up`: `GET /dashboard` on the supervisor's health port, a page
that polls `GET /dashboard/series` every second and plots it with uPlot (vendored in
`dashboard_static/`, so it works on a closed network: no CDN, no build step).

The figures are those of the metrics: the supervisor already reads every child's `/metrics`
once a second, and the same text is parsed here (only the families the dashboard plots, filtered
before the parser sees them, so the cost stays small however much a process exposes) into the
pure `bourse.application.dashboard_series`, which keeps five minutes of history. Two things come
from elsewhere, because no child can see them:

- the supervisor's own and the embedded nats-server's CPU and memory, and a child's when its
  exposition has no `process_*` family, from `/proc` through prometheus-client's
  `ProcessCollector` (the same `process_cpu_seconds_total` it would expose);
- each JetStream stream's messages and bytes and each consumer's pending counts, from the
  JetStream API over the supervisor's NATS connection (two requests per stream, a one-second
  timeout): what NATS itself holds, beside what the services report of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.resources import files
from typing import Any, Final

import msgspec
from nats.aio.client import Client
from nats.js.api import ConsumerInfo
from prometheus_client import ProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from bourse.application.dashboard_series import (
    CPU,
    SAMPLE_NAMES,
    ConsumerFacts,
    DashboardSeries,
    ProcessScrape,
    Sample,
    StreamFacts,
)
from bourse.runtime.health import Receive, Send

log = logging.getLogger(__name__)

STREAMS_TIMEOUT_S: Final = 1.0
STATIC_FILES: Final = {
    "uPlot.iife.min.js": b"text/javascript; charset=utf-8",
    "uPlot.min.css": b"text/css; charset=utf-8",
    "uPlot.LICENSE": b"text/plain; charset=utf-8",
}
PAGE: Final = "dashboard.html"
ASGIApp = Callable[[dict[str, Any], Receive, Send], Any]


def parse_samples(text: str, names: frozenset[str] = SAMPLE_NAMES) -> list[Sample]:
    """The samples of `names` in a Prometheus text exposition. Lines of other families (and the
    comments) are dropped before parsing: prometheus-client's parser is pure Python, and a
    process's exposition is mostly families the dashboard does not plot."""
    wanted = [line for line in text.splitlines() if _sample_name(line) in names]
    if not wanted:
        return []
    return [
        Sample(sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families("\n".join(wanted) + "\n")
        for sample in family.samples
        if sample.name in names
    ]


def _sample_name(line: str) -> str:
    end = len(line)
    for stop in ("{", " "):
        found = line.find(stop)
        if found != -1:
            end = min(end, found)
    return line[:end]


class ProcessFacts:
    """`process_*` samples of any local process by pid, read from `/proc` (one collector per pid;
    a pid no longer asked for is forgotten)."""

    def __init__(self) -> None:
        self._collectors: dict[int, ProcessCollector] = {}

    def samples(self, pid: int) -> list[Sample]:
        collector = self._collectors.get(pid)
        if collector is None:
            collector = self._collectors[pid] = ProcessCollector(registry=None, pid=lambda: pid)
        return [
            Sample(sample.name, sample.labels, sample.value)
            for family in collector.collect()
            for sample in family.samples
            if sample.name in SAMPLE_NAMES
        ]

    def keep_only(self, pids: Iterable[int]) -> None:
        keep = set(pids)
        self._collectors = {pid: c for pid, c in self._collectors.items() if pid in keep}


def process_scrape(
    label: str, instance: str, metrics: str, pid: int | None, facts: ProcessFacts
) -> ProcessScrape:
    """A process's scrape for the dashboard: its exposition's samples, with `/proc`'s
    `process_*` when the exposition has none (a process without the ProcessCollector)."""
    samples = parse_samples(metrics)
    if pid is not None and not any(sample.name == CPU for sample in samples):
        samples += facts.samples(pid)
    return ProcessScrape(label, instance, samples)


async def read_streams(nc: Client, names: Sequence[str]) -> list[StreamFacts] | None:
    """Each named stream's size and its consumers' pending counts, from the JetStream API; a
    stream that does not answer (NATS away, a stream not made yet) is left out, and None when none
    does: the dashboard never fails the supervisor's poll."""
    jsm = nc.jsm(timeout=STREAMS_TIMEOUT_S)

    async def one(name: str) -> StreamFacts:
        info, consumers = await asyncio.gather(jsm.stream_info(name), jsm.consumers_info(name))
        return StreamFacts(
            name,
            info.state.messages,
            info.state.bytes,
            tuple(sorted((_consumer(consumer) for consumer in consumers), key=_consumer_order)),
        )

    found = await asyncio.gather(*(one(name) for name in names), return_exceptions=True)
    for facts in found:
        if isinstance(facts, BaseException):
            log.debug("stream facts unread", extra={"error": repr(facts)})
    return [facts for facts in found if isinstance(facts, StreamFacts)] or None


def _consumer(info: ConsumerInfo) -> ConsumerFacts:
    durable = bool(info.config.durable_name) if info.config is not None else False
    return ConsumerFacts(info.name, durable, info.num_pending or 0, info.num_ack_pending or 0)


def _consumer_order(consumer: ConsumerFacts) -> tuple[bool, str]:
    return not consumer.durable, consumer.name


class Dashboard:
    """The series (`series.add()` once a tick, by the supervisor's poll) and the page (`app()`)."""

    def __init__(self, links: Callable[[], Mapping[str, str]]) -> None:
        self.series = DashboardSeries()
        self.links = links
        self.facts = ProcessFacts()
        self.supervisor_instance = str(os.getpid())

    def payload(self) -> bytes:
        snapshot = self.series.snapshot()
        snapshot["links"] = dict(self.links())
        return msgspec.json.encode(snapshot)

    def app(self, fallback: ASGIApp) -> DashboardApp:
        return DashboardApp(self, fallback)


class DashboardApp:
    """ASGI in front of another app (the health endpoint): `/dashboard`, `/dashboard/series` and
    `/dashboard/static/<file>` here, every other path there. The files are read once, at start,
    and served from memory by name (no path from the request reaches the file system)."""

    def __init__(self, dashboard: Dashboard, fallback: ASGIApp) -> None:
        self.dashboard = dashboard
        self.fallback = fallback
        static = files("bourse.runtime") / "dashboard_static"
        self.page = (static / PAGE).read_bytes()
        self.static = {
            f"/dashboard/static/{name}": (content_type, (static / name).read_bytes())
            for name, content_type in STATIC_FILES.items()
        }

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/dashboard"):
            await self.fallback(scope, receive, send)
            return
        if path in ("/dashboard", "/dashboard/"):
            await _send(send, 200, b"text/html; charset=utf-8", self.page)
        elif path == "/dashboard/series":
            await _send(send, 200, b"application/json", self.dashboard.payload(), cache=b"no-store")
        elif path in self.static:
            content_type, body = self.static[path]
            await _send(send, 200, content_type, body, cache=b"max-age=3600")
        else:
            await _send(send, 404, b"text/plain; charset=utf-8", b"not found")


async def _send(
    send: Send, status: int, content_type: bytes, body: bytes, cache: bytes = b"no-cache"
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", cache),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

"""The process's Prometheus metrics: one registry for the whole process, its families named once.

A process may run several services (`bourse up` groups them), and an exposition may hold a
family only once, so every `bourse_*` family that more than one service could feed lives here,
with a `service` label where it is per service, and each process serves this registry on its
health port's `/metrics` (`exposition()`) beside the services' own `bourse_<service>_*` text.
The names are a contract with the dashboards: see the table in docs/architecture.md
(Observability).

Two kinds of family:

- updated where the thing happens (`Histogram`s and the order and HTTP counters): a histogram
  can only be observed then. Their label children are looked up once and kept by the caller
  (`ConsumerMeter`, `write_seconds`), so the hot path pays one observe, not a label lookup;
- read at scrape time (`SCRAPED`: consumer and endpoint counters, lag, snapshot ages, which
  services run): the counts already exist in the objects that keep them for /healthz, so the
  hot path pays nothing for them. An object that feeds these registers a `SampleSource` while
  it runs (`SCRAPED.watch`) and removes it when it stops, so a stopped service's series go
  with it. Samples of one family and labels from several sources are added up: two instances
  of a service in one process (tests do that) still make one valid exposition.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated
"""No `*_created` series beside each counter and histogram: they double the series and no
dashboard reads them (process-wide: the services' own collectors never emit them either)."""

REGISTRY: Final = CollectorRegistry(auto_describe=True)
"""Every family of this module, the process's CPU, memory and file descriptors
(`process_*`), the interpreter (`python_info`) and its collector (`python_gc_*`)."""
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds a client waits for something (an HTTP answer, a trade's market data): 1 ms to 10 s."""
WORK_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Seconds a piece of work takes (a batch in its handler, a transaction): 0.5 ms to 5 s."""
BATCH_SIZE_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)

# ---------------------------------------------------------------- updated where it happens

CONSUMER_BATCH_SIZE: Final = Histogram(
    "bourse_consumer_batch_size",
    "JetStream messages per batch handed to the handler.",
    ["service", "consumer"],
    buckets=BATCH_SIZE_BUCKETS,
    registry=REGISTRY,
)
CONSUMER_BATCH_SECONDS: Final = Histogram(
    "bourse_consumer_batch_seconds",
    "Wall time of a batch in its handler (its retries included).",
    ["service", "consumer"],
    buckets=WORK_BUCKETS,
    registry=REGISTRY,
)
HTTP_REQUESTS: Final = Counter(
    "bourse_http_requests",
    "HTTP requests answered, by method, route template (`other`: no route) and status code.",
    ["method", "route", "code"],
    registry=REGISTRY,
)
HTTP_REQUEST_SECONDS: Final = Histogram(
    "bourse_http_request_duration_seconds",
    "From the request's arrival to its last body byte handed to the server.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
ORDERS: Final = Counter(
    "bourse_orders",
    "New orders placed, by entry point and how they were answered.",
    ["source", "outcome"],
    registry=REGISTRY,
)
ORDER_TO_TRADE_SECONDS: Final = Histogram(
    "bourse_order_to_trade_seconds",
    "Per trade: from the taker order's id time to its market data publish.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
SQL_WRITE_SECONDS: Final = Histogram(
    "bourse_sql_write_seconds",
    "Wall time of one committed SQL transaction.",
    ["service"],
    buckets=WORK_BUCKETS,
    registry=REGISTRY,
)
REDIS_WRITE_SECONDS: Final = Histogram(
    "bourse_redis_write_seconds",
    "Wall time of one Redis MULTI/EXEC.",
    ["service"],
    buckets=WORK_BUCKETS,
    registry=REGISTRY,
)

OrderSource = Literal["rest", "amqp"]
OrderOutcome = Literal["accepted", "refused", "pending", "failed"]
"""accepted: durable and the funds locked; refused: nothing placed (invalid, unauthorised, no
funds, a repeated client order id); pending: durable, not decided in time; failed: our side
failed (not made durable, or not known whether it was)."""

_order_counters: dict[tuple[OrderSource, OrderOutcome], Counter] = {}


def count_order(source: OrderSource, outcome: OrderOutcome) -> None:
    """One new order answered (REST) or settled (RabbitMQ): `bourse_orders_total`."""
    counter = _order_counters.get((source, outcome))
    if counter is None:
        counter = _order_counters[(source, outcome)] = ORDERS.labels(source, outcome)
    counter.inc()


def observe_order_to_trade(seconds: float) -> None:
    ORDER_TO_TRADE_SECONDS.observe(seconds)


def sql_write_seconds(service: str) -> Histogram:
    """The service's `bourse_sql_write_seconds` child: keep it, `observe()` or `time()` it."""
    return SQL_WRITE_SECONDS.labels(service)


def redis_write_seconds(service: str) -> Histogram:
    """The service's `bourse_redis_write_seconds` child: keep it, `observe()` or `time()` it."""
    return REDIS_WRITE_SECONDS.labels(service)


class ConsumerMeter:
    """One consumer's histograms, their children looked up once: a batch costs two observes."""

    __slots__ = ("_seconds", "_size")

    def __init__(self, service: str, consumer: str) -> None:
        self._size = CONSUMER_BATCH_SIZE.labels(service, consumer)
        self._seconds = CONSUMER_BATCH_SECONDS.labels(service, consumer)

    def batch(self, size: int, seconds: float) -> None:
        self._size.observe(size)
        self._seconds.observe(seconds)


# ---------------------------------------------------------------- read at scrape time


@dataclass(frozen=True, slots=True)
class Family:
    """A family whose samples are read when scraped. `name` is the exposed name (a counter's
    ends in `_total`)."""

    name: str
    kind: Literal["counter", "gauge"]
    documentation: str
    labels: tuple[str, ...]

    def metric(self) -> CounterMetricFamily | GaugeMetricFamily:
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labels)


class Sample(NamedTuple):
    family: Family
    labels: tuple[str, ...]
    value: float


SampleSource = Callable[[], Iterable[Sample]]

PROCESS_INFO: Final = Family(
    "bourse_process_info", "gauge", "The services this process runs (always 1).", ("services", "instance")
)
CONSUMER_MESSAGES: Final = Family(
    "bourse_consumer_messages_total",
    "counter",
    "JetStream messages handed to the consumer's handler.",
    ("service", "consumer"),
)
CONSUMER_BATCHES: Final = Family(
    "bourse_consumer_batches_total", "counter", "Batches handed to the handler.", ("service", "consumer")
)
CONSUMER_FAILURES: Final = Family(
    "bourse_consumer_failures_total",
    "counter",
    "Failed receives and failed handler attempts.",
    ("service", "consumer"),
)
CONSUMER_LAG: Final = Family(
    "bourse_consumer_lag_messages",
    "gauge",
    "Messages still pending in the stream for the consumer, as of its last delivered message.",
    ("service", "consumer"),
)
ENDPOINT_REQUESTS: Final = Family(
    "bourse_endpoint_requests_total", "counter", "Requests to a nats.micro endpoint.", ("service", "endpoint")
)
ENDPOINT_ERRORS: Final = Family(
    "bourse_endpoint_errors_total",
    "counter",
    "Requests whose nats.micro handler raised.",
    ("service", "endpoint"),
)
ENDPOINT_PROCESSING_SECONDS: Final = Family(
    "bourse_endpoint_processing_seconds_total",
    "counter",
    "Time spent in a nats.micro endpoint's handler.",
    ("service", "endpoint"),
)
SNAPSHOT_AGE: Final = Family(
    "bourse_snapshot_age_seconds",
    "gauge",
    "Seconds since a stage shard's (market's, group's) last snapshot was saved by this process,"
    " or since the service started when it has saved none yet.",
    ("service", "key"),
)
SCRAPED_FAMILIES: Final = (
    PROCESS_INFO,
    CONSUMER_MESSAGES,
    CONSUMER_BATCHES,
    CONSUMER_FAILURES,
    CONSUMER_LAG,
    ENDPOINT_REQUESTS,
    ENDPOINT_ERRORS,
    ENDPOINT_PROCESSING_SECONDS,
    SNAPSHOT_AGE,
)


class ScrapedFamilies(Collector):
    """The families read at scrape time, each emitted once whatever number of sources feed it."""

    def __init__(self, families: Iterable[Family]) -> None:
        self.families = tuple(families)
        self._sources: dict[int, SampleSource] = {}
        self._next = 0
        self._lock = threading.Lock()
        """Scrapes run in the event loop, but a test or a tool may collect from a thread."""

    def watch(self, source: SampleSource) -> Callable[[], None]:
        """Read `source` at every scrape until the returned function is called."""
        with self._lock:
            key = self._next
            self._next += 1
            self._sources[key] = source

        def unwatch() -> None:
            with self._lock:
                self._sources.pop(key, None)

        return unwatch

    def describe(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.metric()

    def collect(self) -> Iterator[Metric]:
        values: dict[Family, dict[tuple[str, ...], float]] = {family: {} for family in self.families}
        with self._lock:
            sources = list(self._sources.values())
        for source in sources:
            try:
                for family, labels, value in source():
                    found = values[family]
                    found[labels] = found.get(labels, 0.0) + value
            except Exception:  # one broken source must not take every other metric with it
                log.exception("metrics source failed")
        for family, samples in values.items():
            metric = family.metric()
            for labels, value in samples.items():
                metric.add_metric(list(labels), value)
            yield metric


SCRAPED: Final = ScrapedFamilies(SCRAPED_FAMILIES)
REGISTRY.register(SCRAPED)


def snapshot_age_samples(service: str, ages: Mapping[str, float]) -> Iterator[Sample]:
    """`bourse_snapshot_age_seconds` from a schedule's ages by snapshot name (`<service>.<key>`)."""
    prefix = f"{service}."
    for name, age in ages.items():
        key = name[len(prefix) :] if name.startswith(prefix) else name
        yield Sample(SNAPSHOT_AGE, (service, key), age)


def exposition() -> str:
    """This process's registry in the Prometheus text format."""
    return generate_latest(REGISTRY).decode()

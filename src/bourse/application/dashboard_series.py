"""The live dashboard's figures, decided without I/O: successive scrapes of every process's
Prometheus samples (and the JetStream streams' facts) in, a bounded history of plot series out.

`bourse up`'s supervisor reads each child's `/metrics` once a second anyway (for its own
`/metrics`); the dashboard is a view of those same samples, so what it plots is what Prometheus
and Grafana would compute from them (metric names: the issue's metrics contract):

| chart | from |
| --- | --- |
| orders/s by outcome | rate of `bourse_orders_total{outcome}`, summed over sources and processes |
| POST order p50/p99 | bucket increases of `bourse_http_request_duration_seconds` (POST /api/v3/order) |
| order -> trade p50/p99 | bucket increases of `bourse_order_to_trade_seconds` |
| CPU per process | rate of `process_cpu_seconds_total` in % of a core, named by the process's services |
| memory per process | `process_resident_memory_bytes` |
| lag per consumer | `bourse_consumer_lag_messages{service,consumer}` |
| connected users | sum of `bourse_pusher_connections` |
| stream messages, NATS pending | JetStream's own stream and consumer info (`StreamFacts`) |

Rates are taken per process between its last two scrapes, as Prometheus' `rate()` does: a
counter that went down, or a process whose `instance` changed (a restarted child: every counter
starts again from zero), counts its whole current value as the increase. A labelled series that
appears between two scrapes (the first refused order) counts from zero too. A process that
missed scrapes is compared with its last one over the longer interval; one seen for the first time
gives no rate until its next scrape.

Quantiles are Prometheus' `histogram_quantile` over the bucket increases of the last
`quantile_ticks` intervals (5 s by default): one second of a light load holds too few requests
for a p99 that means anything, and five still follow the load within seconds.

A figure whose metric family no process exposes is `None` ("no data" on the page, and named in
`absent`): the dashboard works on any mix of services and versions.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

ORDERS: Final = "bourse_orders_total"
HTTP_BUCKETS: Final = "bourse_http_request_duration_seconds_bucket"
ORDER_TO_TRADE_BUCKETS: Final = "bourse_order_to_trade_seconds_bucket"
CPU: Final = "process_cpu_seconds_total"
MEMORY: Final = "process_resident_memory_bytes"
LAG: Final = "bourse_consumer_lag_messages"
CONNECTIONS: Final = "bourse_pusher_connections"

SAMPLE_NAMES: Final = frozenset({ORDERS, HTTP_BUCKETS, ORDER_TO_TRADE_BUCKETS, CPU, MEMORY, LAG, CONNECTIONS})
"""The only samples read: a scrape may be filtered down to these before it is parsed."""
COUNTERS: Final = frozenset({ORDERS, HTTP_BUCKETS, ORDER_TO_TRADE_BUCKETS, CPU})
"""The cumulative ones (histogram buckets included): read as increases between scrapes."""

ORDER_ROUTE: Final = "/api/v3/order"
OUTCOMES: Final = ("accepted", "refused", "pending", "failed")
QUANTILES: Final = (("p50", 0.5), ("p99", 0.99))

CHARTS: Final = (
    "orders",
    "post_latency_ms",
    "order_to_trade_ms",
    "cpu_percent",
    "memory_mb",
    "consumer_lag",
    "nats_pending",
    "stream_messages",
    "users",
)
"""The plots, in page order; each is a set of named series over the shared time axis."""

EPHEMERAL: Final = "ephemeral"
"""The name all of a stream's unnamed consumers (the pushers' ordered consumers, whose names are
random and change with every reconnect) are summed under."""

Labels = tuple[tuple[str, str], ...]
Key = tuple[str, Labels]
Value = float | None


@dataclass(frozen=True, slots=True)
class Sample:
    """One line of a Prometheus exposition: a sample name (`_bucket`, `_total` included)."""

    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class ProcessScrape:
    """What one process exposed at one scrape."""

    label: str
    """Which process: the services it runs ("accounts, matching"), also the series' name."""
    instance: str
    """This run of the process: a new value means it restarted and its counters began at zero."""
    samples: Sequence[Sample]


@dataclass(frozen=True, slots=True)
class ConsumerFacts:
    name: str
    durable: bool
    num_pending: int
    """Messages of the stream not yet delivered to this consumer."""
    num_ack_pending: int
    """Delivered and not yet acknowledged."""


@dataclass(frozen=True, slots=True)
class StreamFacts:
    name: str
    messages: int
    bytes: int
    consumers: tuple[ConsumerFacts, ...] = ()


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' `histogram_quantile`: `buckets` maps each upper bound (`math.inf` included)
    to the cumulative count at or below it. Linear inside the bucket the rank falls in (from 0 for
    the first); a rank in the `+Inf` bucket answers the highest finite bound. None without
    observations or without the `+Inf` bucket (then the total is unknown)."""
    items = sorted(buckets.items())
    if not items or items[-1][0] != math.inf or items[-1][1] <= 0:
        return None
    rank = q * items[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in items:
        count = max(count, below)  # increases summed over resets may dent the cumulative shape
        if count >= rank and count > below:
            if upper == math.inf:
                return lower
            if upper <= 0:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def _key(sample: Sample) -> Key:
    return sample.name, tuple(sorted(sample.labels.items()))


@dataclass(slots=True)
class _Seen:
    instance: str
    at: float
    values: dict[Key, float]


@dataclass(slots=True)
class _Tick:
    at: float
    values: dict[str, dict[str, Value]]


@dataclass(slots=True)
class _Interval:
    """What one process's counters did since its previous scrape."""

    seconds: float
    increases: dict[Key, float]
    restarted: bool
    """Its counters began again from zero (a new instance, or one of them went down)."""


@dataclass(slots=True)
class DashboardSeries:
    """The history behind the page: `add()` once a tick, `snapshot()` when the page asks."""

    keep_s: float = 300.0
    """How much history the plots show (older ticks are dropped)."""
    max_ticks: int = 1200
    """A bound on the ticks kept whatever their spacing."""
    quantile_ticks: int = 5
    """Intervals the latency quantiles are computed over."""
    _ticks: deque[_Tick] = field(init=False)
    _seen: dict[str, _Seen] = field(default_factory=dict, init=False)
    _windows: dict[str, deque[dict[float, float]]] = field(default_factory=dict, init=False)
    _streams: tuple[StreamFacts, ...] | None = field(default=None, init=False)
    _absent: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        self._ticks = deque(maxlen=self.max_ticks)

    def add(
        self, at: float, processes: Sequence[ProcessScrape], streams: Sequence[StreamFacts] | None
    ) -> None:
        """One tick: `at` in Unix seconds (the plots' time axis), the processes that answered
        this time (one that did not keeps its last scrape to be compared with later), and the
        streams' facts (None when they could not be read)."""
        intervals: dict[str, _Interval] = {}
        for process in processes:
            current = {_key(sample): sample.value for sample in process.samples}
            seen = self._seen.get(process.label)
            interval = self._interval(seen, process.instance, at, current)
            if interval is not None:
                intervals[process.label] = interval
            same_run = seen is not None and seen.instance == process.instance
            if seen is not None and same_run and not (interval is not None and interval.restarted):
                current = {**seen.values, **current}  # a series missing from one scrape keeps its count
            self._seen[process.label] = _Seen(process.instance, at, current)
        present = {name for process in processes for name, _labels in (_key(s) for s in process.samples)}
        values: dict[str, dict[str, Value]] = {
            "orders": self._orders(intervals, ORDERS in present),
            "post_latency_ms": self._quantiles(
                "post", HTTP_BUCKETS, intervals, HTTP_BUCKETS in present, method="POST", route=ORDER_ROUTE
            ),
            "order_to_trade_ms": self._quantiles(
                "order_to_trade", ORDER_TO_TRADE_BUCKETS, intervals, ORDER_TO_TRADE_BUCKETS in present
            ),
            "cpu_percent": {
                label: round(_sum(interval.increases, CPU) / interval.seconds * 100, 2)
                for label, interval in intervals.items()
                if any(name == CPU for name, _ in interval.increases)
            },
            "memory_mb": {
                process.label: round(_sum(self._seen[process.label].values, MEMORY) / 1e6, 1)
                for process in processes
                if any(sample.name == MEMORY for sample in process.samples)
            },
            "consumer_lag": _gauges(processes, LAG, ("service", "consumer")),
            "users": {"connected": _sum_gauge(processes, CONNECTIONS)},
        }
        self._streams = None if streams is None else tuple(streams)
        if streams is not None:
            values["stream_messages"] = {stream.name: float(stream.messages) for stream in streams}
            values["nats_pending"] = _pending(streams)
        self._absent = tuple(sorted(SAMPLE_NAMES - present))
        self._ticks.append(_Tick(at, values))
        while self._ticks and self._ticks[0].at < at - self.keep_s:
            self._ticks.popleft()

    @staticmethod
    def _interval(
        seen: _Seen | None, instance: str, at: float, current: Mapping[Key, float]
    ) -> _Interval | None:
        if seen is None or at <= seen.at:
            return None
        counters = [key for key in current if key[0] in COUNTERS]
        restarted = seen.instance != instance or any(
            current[key] < seen.values.get(key, 0.0) for key in counters
        )
        increases = {
            key: current[key] if restarted else current[key] - seen.values.get(key, 0.0) for key in counters
        }
        return _Interval(at - seen.at, increases, restarted)

    @staticmethod
    def _orders(intervals: Mapping[str, _Interval], present: bool) -> dict[str, Value]:
        if not present or not intervals:
            return dict.fromkeys(OUTCOMES[:2])
        rates = dict.fromkeys(OUTCOMES[:2], 0.0)
        for interval in intervals.values():
            for (name, labels), increase in interval.increases.items():
                if name == ORDERS:
                    outcome = dict(labels).get("outcome", "")
                    rates[outcome] = rates.get(outcome, 0.0) + increase / interval.seconds
        return {outcome: round(rate, 2) for outcome, rate in rates.items()}

    def _quantiles(
        self, window: str, name: str, intervals: Mapping[str, _Interval], present: bool, **match: str
    ) -> dict[str, Value]:
        """p50 and p99 in ms of the histogram's increases over the last `quantile_ticks`
        intervals (`match`: the labels a bucket must have)."""
        ticks = self._windows.setdefault(window, deque(maxlen=self.quantile_ticks))
        if not present:
            ticks.clear()
            return dict.fromkeys(label for label, _q in QUANTILES)
        if intervals:
            buckets: dict[float, float] = {}
            for interval in intervals.values():
                for (sample, labels), increase in interval.increases.items():
                    if sample != name:
                        continue
                    tags = dict(labels)
                    if all(tags.get(label) == value for label, value in match.items()):
                        le = float(tags.get("le", "+Inf"))
                        buckets[le] = buckets.get(le, 0.0) + increase
            ticks.append(buckets)
        total: dict[float, float] = {}
        for buckets in ticks:
            for le, count in buckets.items():
                total[le] = total.get(le, 0.0) + count
        result: dict[str, Value] = {}
        for label, q in QUANTILES:
            seconds = histogram_quantile(q, total)
            result[label] = None if seconds is None else round(seconds * 1000, 3)
        return result

    def snapshot(self) -> dict[str, Any]:
        """The page's JSON: the time axis `t`, per chart its series as columns over `t` (None
        where a series had no value: a gap in the plot), the newest value of each (`latest`),
        the newest stream facts and the families no process exposes."""
        ticks = list(self._ticks)
        charts: dict[str, dict[str, list[Value]]] = {}
        latest: dict[str, dict[str, Value]] = {}
        for chart in CHARTS:
            names = _ordered(tick.values.get(chart, {}) for tick in ticks)
            charts[chart] = {name: [tick.values.get(chart, {}).get(name) for tick in ticks] for name in names}
            last = ticks[-1].values.get(chart, {}) if ticks else {}
            latest[chart] = {name: last.get(name) for name in names}
        return {
            "t": [round(tick.at, 3) for tick in ticks],
            "charts": charts,
            "latest": latest,
            "streams": None
            if self._streams is None
            else [
                {
                    "name": stream.name,
                    "messages": stream.messages,
                    "bytes": stream.bytes,
                    "consumers": [
                        {
                            "name": consumer.name,
                            "durable": consumer.durable,
                            "num_pending": consumer.num_pending,
                            "num_ack_pending": consumer.num_ack_pending,
                        }
                        for consumer in stream.consumers
                    ],
                }
                for stream in self._streams
            ],
            "absent": list(self._absent),
        }


def _ordered(rows: Iterable[Mapping[str, Value]]) -> list[str]:
    """Series names in the order they first appeared (a plot's colours stay put)."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)


def _sum(values: Mapping[Key, float], name: str) -> float:
    return sum(value for (sample, _labels), value in values.items() if sample == name)


def _sum_gauge(processes: Sequence[ProcessScrape], name: str) -> Value:
    found = [sample.value for process in processes for sample in process.samples if sample.name == name]
    return float(sum(found)) if found else None


def _gauges(processes: Sequence[ProcessScrape], name: str, labels: Sequence[str]) -> dict[str, Value]:
    """A gauge per label set, named by those labels' values ("accounts/orders")."""
    series: dict[str, Value] = {}
    for process in processes:
        for sample in process.samples:
            if sample.name == name:
                key = "/".join(sample.labels.get(label, "") for label in labels)
                series[key] = (series.get(key) or 0.0) + sample.value
    return series


def _pending(streams: Sequence[StreamFacts]) -> dict[str, Value]:
    """Each durable consumer's `num_pending`, the unnamed ones of a stream summed."""
    series: dict[str, Value] = {}
    for stream in streams:
        for consumer in stream.consumers:
            key = f"{stream.name}/{consumer.name if consumer.durable else EPHEMERAL}"
            series[key] = (series.get(key) or 0.0) + consumer.num_pending
    return series

"""The Grafana dashboard's queries and the metric contract they are held to (issue 14)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "bourse.json"

# --- the metric contract ------------------------------------------------------------------------

METRICS: dict[str, str] = {
    # prometheus_client's process collector, in every process
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_start_time_seconds": "gauge",
    # every process (runtime)
    "bourse_process_info": "gauge",
    "bourse_consumer_messages": "counter",
    "bourse_consumer_batches": "counter",
    "bourse_consumer_failures": "counter",
    "bourse_consumer_batch_size": "histogram",
    "bourse_consumer_batch_seconds": "histogram",
    "bourse_consumer_lag_messages": "gauge",
    "bourse_endpoint_requests": "counter",
    "bourse_endpoint_errors": "counter",
    "bourse_endpoint_processing_seconds": "counter",
    "bourse_snapshot_age_seconds": "gauge",
    # gateway and amqp-ingress; statistics' order to trade
    "bourse_http_requests": "counter",
    "bourse_http_request_duration_seconds": "histogram",
    "bourse_orders": "counter",
    "bourse_order_to_trade_seconds": "histogram",
    # writers
    "bourse_sql_write_seconds": "histogram",
    "bourse_redis_write_seconds": "histogram",
    # pusher
    "bourse_pusher_connections": "gauge",
    "bourse_pusher_members": "gauge",
    "bourse_pusher_channels": "gauge",
    "bourse_pusher_messages_delivered": "counter",
    "bourse_pusher_slow_consumers_closed": "counter",
    "bourse_pusher_connections_refused": "counter",
    "bourse_pusher_orders_cancelled_on_disconnect": "counter",
    "bourse_pusher_handler_cpu_seconds": "counter",
    # statistics
    "bourse_statistics_watermark": "gauge",
    "bourse_statistics_market_sequence": "gauge",
    "bourse_statistics_messages_published": "counter",
    "bourse_statistics_publish_failures": "counter",
    "bourse_statistics_handler_cpu_seconds": "counter",
    # persistence
    "bourse_persistence_lag_messages": "gauge",
    "bourse_persistence_subject_lag": "gauge",
    **{
        f"bourse_persistence_{name}": "counter"
        for name in ("messages", "items", "rows", "duplicates", "transactions", "failures")
    },
}
"""Metric families by type: the contract of issue 14 between the services' metrics and this
dashboard (the issue's metric list; the pusher's, statistics' and persistence's as
docs/architecture.md lists them). Family names as prometheus-client gives them: a counter's
samples add `_total`, a histogram's `_bucket`, `_sum` and `_count`."""

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def sample_names(families: dict[str, str]) -> set[str]:
    """The sample (series) names that metric families of these types expose."""
    return {name + suffix for name, kind in families.items() for suffix in SUFFIXES.get(kind, ("",))}


# --- PromQL -------------------------------------------------------------------------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
PROMQL_WORDS |= {"offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords or
    label names (matchers, ranges, strings and `by (...)`-like label lists removed first)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if not call and word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def load_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels") or [])
    return found


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets") or []]


def dashboard_metrics(dashboard: dict[str, Any]) -> set[str]:
    """Every metric name the dashboard's queries select."""
    return set().union(*(metric_names(expr) for expr in expressions(dashboard)))


def promql_for_prometheus(expr: str) -> str:
    """A dashboard expression with Grafana's interval variables replaced, as Grafana sends it."""
    return re.sub(r"\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval)\}", "1m", expr)

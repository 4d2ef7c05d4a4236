"""The dashboard's series from hand-written metric texts: rates, histogram quantiles from bucket
increases, counter resets (a restarted child), absent families, the bounded history."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest

from bourse.application.dashboard_series import (
    SAMPLE_NAMES,
    ConsumerFacts,
    DashboardSeries,
    ProcessScrape,
    StreamFacts,
    histogram_quantile,
)
from bourse.runtime.dashboard import parse_samples
from tests.deploy.dashboard import documented_metrics

GATEWAY = "query, statistics, gateway"
T0 = 1_700_000_000.0


def scrape(text: str, label: str = GATEWAY, instance: str = "run-0") -> ProcessScrape:
    return ProcessScrape(label, instance, parse_samples(text))


def orders(accepted: float, refused: float | None = None, amqp: float = 0.0) -> str:
    lines = [
        "# HELP bourse_orders_total New orders answered, by source and outcome.",
        "# TYPE bourse_orders_total counter",
        f'bourse_orders_total{{source="rest",outcome="accepted"}} {accepted}',
        f'bourse_orders_total{{source="amqp",outcome="accepted"}} {amqp}',
    ]
    if refused is not None:
        lines.append(f'bourse_orders_total{{source="rest",outcome="refused"}} {refused}')
    return "\n".join(lines) + "\n"


def post_histogram(counts: Mapping[str, float], route: str = "/api/v3/order", method: str = "POST") -> str:
    """Cumulative bucket counts by `le`, as prometheus-client writes them."""
    lines = ["# TYPE bourse_http_request_duration_seconds histogram"]
    labels = f'method="{method}",route="{route}"'
    for le, count in counts.items():
        lines.append(f'bourse_http_request_duration_seconds_bucket{{{labels},le="{le}"}} {count}')
    lines.append(f"bourse_http_request_duration_seconds_count{{{labels}}} {count}")
    lines.append(f"bourse_http_request_duration_seconds_sum{{{labels}}} 1.5")
    return "\n".join(lines) + "\n"


def latest(series: DashboardSeries, chart: str) -> dict[str, float | None]:
    found: dict[str, float | None] = series.snapshot()["latest"][chart]
    return found


def test_orders_per_second_by_outcome_summed_over_sources() -> None:
    series = DashboardSeries()
    series.add(T0, [scrape(orders(10, amqp=2))], None)
    assert latest(series, "orders") == {"accepted": None, "refused": None}  # one scrape: no rate yet
    # 2 s later: 20 more by REST, 6 more by AMQP, and the first refusal (a series that appears counts from 0)
    series.add(T0 + 2, [scrape(orders(30, refused=4, amqp=8))], None)
    assert latest(series, "orders") == {"accepted": 13.0, "refused": 2.0}


def test_orders_of_several_processes_add_up() -> None:
    series = DashboardSeries()
    series.add(T0, [scrape(orders(0), "a"), scrape(orders(0), "b")], None)
    series.add(T0 + 1, [scrape(orders(5), "a"), scrape(orders(7), "b")], None)
    assert latest(series, "orders")["accepted"] == 12.0


def test_post_latency_quantiles_come_from_the_bucket_increases_of_post_order_only() -> None:
    before = {"0.005": 10, "0.01": 10, "0.025": 10, "+Inf": 10}
    after = {"0.005": 10, "0.01": 60, "0.025": 110, "+Inf": 110}  # 50 in (5, 10] ms, 50 in (10, 25] ms
    noise_before = {"0.005": 0, "0.01": 0, "0.025": 0, "+Inf": 0}
    noise_after = {"0.005": 0, "0.01": 0, "0.025": 0, "+Inf": 1000}  # slow GETs must not count
    series = DashboardSeries()
    series.add(T0, [scrape(post_histogram(before) + post_histogram(noise_before, method="GET"))], None)
    series.add(T0 + 1, [scrape(post_histogram(after) + post_histogram(noise_after, method="GET"))], None)
    # p50: rank 50 of 100 increases ends the (5, 10] bucket: 10 ms; the 10 observations from before the
    # first scrape do not count (they would pull p50 down to the first bucket)
    # p99: rank 99, 49 into the 50 of (10, 25]: 10 + 15 * 49 / 50 = 24.7 ms
    assert latest(series, "post_latency_ms") == {"p50": pytest.approx(10.0), "p99": pytest.approx(24.7)}


def test_quantiles_cover_the_last_five_intervals_then_say_no_data_when_idle() -> None:
    series = DashboardSeries(quantile_ticks=5)
    series.add(T0, [scrape(post_histogram({"0.01": 0, "0.1": 0, "+Inf": 0}))], None)
    series.add(T0 + 1, [scrape(post_histogram({"0.01": 100, "0.1": 100, "+Inf": 100}))], None)
    fast = latest(series, "post_latency_ms")["p99"]
    assert fast is not None
    assert fast <= 10.0
    series.add(T0 + 2, [scrape(post_histogram({"0.01": 100, "0.1": 200, "+Inf": 200}))], None)
    mixed = latest(series, "post_latency_ms")["p99"]
    assert mixed is not None
    assert 10.0 < mixed <= 100.0  # the window holds both intervals
    for tick in range(3, 8):  # five intervals without a request push both out
        series.add(T0 + tick, [scrape(post_histogram({"0.01": 100, "0.1": 200, "+Inf": 200}))], None)
    assert latest(series, "post_latency_ms") == {"p50": None, "p99": None}


def test_order_to_trade_quantiles_ignore_labels() -> None:
    def text(fast: int, slow: int) -> str:
        return (
            "# TYPE bourse_order_to_trade_seconds histogram\n"
            f'bourse_order_to_trade_seconds_bucket{{le="0.005"}} {fast}\n'
            f'bourse_order_to_trade_seconds_bucket{{le="0.05"}} {fast + slow}\n'
            f'bourse_order_to_trade_seconds_bucket{{le="+Inf"}} {fast + slow}\n'
            f"bourse_order_to_trade_seconds_count {fast + slow}\n"
        )

    series = DashboardSeries()
    series.add(T0, [scrape(text(0, 0), "statistics")], None)
    series.add(T0 + 1, [scrape(text(98, 2), "statistics")], None)
    found = latest(series, "order_to_trade_ms")
    assert found["p50"] == pytest.approx(5 * 50 / 98, abs=1e-3)
    assert found["p99"] == pytest.approx(5 + 45 * 0.5, abs=1e-3)  # rank 99: half way into (5, 50]


def test_a_restarted_child_counts_from_zero_instead_of_going_negative() -> None:
    series = DashboardSeries()
    series.add(T0, [scrape(orders(100), instance="run-0")], None)
    series.add(T0 + 1, [scrape(orders(110), instance="run-0")], None)
    assert latest(series, "orders")["accepted"] == 10.0
    # the child died and came back: a new instance whose counter holds 6 since its start, 2 s after
    series.add(T0 + 3, [scrape(orders(6), instance="run-1")], None)
    assert latest(series, "orders")["accepted"] == 3.0
    series.add(T0 + 4, [scrape(orders(16), instance="run-1")], None)
    assert latest(series, "orders")["accepted"] == 10.0


def test_a_new_instance_whose_counter_is_already_higher_still_counts_from_zero() -> None:
    series = DashboardSeries()
    series.add(T0, [scrape(orders(5), instance="run-0")], None)
    series.add(T0 + 2, [scrape(orders(40), instance="run-1")], None)  # not 35: the new run did 40
    assert latest(series, "orders")["accepted"] == 20.0


def test_a_counter_that_went_down_in_the_same_instance_is_a_reset() -> None:
    series = DashboardSeries()
    series.add(T0, [scrape(orders(50))], None)
    series.add(T0 + 1, [scrape(orders(4))], None)
    assert latest(series, "orders")["accepted"] == 4.0


def test_a_process_that_missed_a_scrape_is_compared_with_its_last_one() -> None:
    series = DashboardSeries()
    series.add(T0, [scrape(orders(0), "a"), scrape(orders(0), "b")], None)
    series.add(T0 + 1, [scrape(orders(10), "a")], None)  # b's /metrics did not answer
    assert latest(series, "orders")["accepted"] == 10.0
    series.add(T0 + 2, [scrape(orders(20), "a"), scrape(orders(30), "b")], None)
    assert latest(series, "orders")["accepted"] == 10.0 + 15.0  # b: 30 over 2 s


def test_a_series_missing_from_one_scrape_keeps_its_count() -> None:
    series = DashboardSeries()
    series.add(T0, [scrape(orders(10, refused=5))], None)
    series.add(T0 + 1, [scrape(orders(20))], None)
    series.add(T0 + 2, [scrape(orders(30, refused=6))], None)
    assert latest(series, "orders") == {"accepted": 10.0, "refused": 1.0}  # not 6 (counted from 0)


def test_cpu_memory_users_and_lag_per_process() -> None:
    def text(cpu: float, rss: float, connections: int, lag: int) -> str:
        return (
            "# TYPE process_cpu_seconds_total counter\n"
            f"process_cpu_seconds_total {cpu}\n"
            f"process_resident_memory_bytes {rss}\n"
            f"process_open_fds 12\n"
            f"bourse_pusher_connections {connections}\n"
            f'bourse_consumer_lag_messages{{service="accounts",consumer="accounts-0"}} {lag}\n'
        )

    series = DashboardSeries()
    series.add(T0, [scrape(text(1.0, 50e6, 3, 0), "pusher"), scrape(text(7.0, 80e6, 4, 9), "accounts")], None)
    series.add(
        T0 + 0.5, [scrape(text(1.25, 51e6, 3, 0), "pusher"), scrape(text(7.4, 80e6, 6, 2), "accounts")], None
    )
    assert latest(series, "cpu_percent") == {"pusher": 50.0, "accounts": 80.0}
    assert latest(series, "memory_mb") == {"pusher": 51.0, "accounts": 80.0}
    assert latest(series, "users") == {"connected": 9.0}
    assert latest(series, "consumer_lag") == {"accounts/accounts-0": 2.0}


def test_absent_families_are_no_data_and_named() -> None:
    series = DashboardSeries()
    series.add(T0, [scrape("process_cpu_seconds_total 1\n")], None)
    series.add(T0 + 1, [scrape("process_cpu_seconds_total 1.1\n")], None)
    snapshot = series.snapshot()
    assert snapshot["latest"]["orders"] == {"accepted": None, "refused": None}
    assert snapshot["latest"]["post_latency_ms"] == {"p50": None, "p99": None}
    assert snapshot["latest"]["users"] == {"connected": None}
    assert snapshot["latest"]["consumer_lag"] == {}
    assert snapshot["streams"] is None
    assert "bourse_orders_total" in snapshot["absent"]
    assert "process_cpu_seconds_total" not in snapshot["absent"]
    assert snapshot["latest"]["cpu_percent"] == {GATEWAY: pytest.approx(10.0)}


def test_stream_facts_give_sizes_and_pending_with_unnamed_consumers_summed() -> None:
    streams = [
        StreamFacts(
            "B_ORDERS",
            120,
            9000,
            (ConsumerFacts("accounts", True, 3, 1), ConsumerFacts("x1", False, 2, 0)),
        ),
        StreamFacts(
            "B_EVENTS",
            80,
            7000,
            (
                ConsumerFacts("query", True, 0, 0),
                ConsumerFacts("o1", False, 4, 0),
                ConsumerFacts("o2", False, 1, 0),
            ),
        ),
    ]
    series = DashboardSeries()
    series.add(T0, [], streams)
    snapshot = series.snapshot()
    assert snapshot["latest"]["stream_messages"] == {"B_ORDERS": 120.0, "B_EVENTS": 80.0}
    assert snapshot["latest"]["nats_pending"] == {
        "B_ORDERS/accounts": 3.0,
        "B_ORDERS/ephemeral": 2.0,
        "B_EVENTS/query": 0.0,
        "B_EVENTS/ephemeral": 5.0,
    }
    assert snapshot["streams"][0]["consumers"][0] == {
        "name": "accounts",
        "durable": True,
        "num_pending": 3,
        "num_ack_pending": 1,
    }
    series.add(T0 + 1, [], None)  # NATS did not answer: no table rather than a stale one
    assert series.snapshot()["streams"] is None


def test_series_are_columns_over_the_time_axis_with_gaps_and_the_history_is_bounded() -> None:
    series = DashboardSeries(keep_s=10)
    series.add(T0, [scrape("process_cpu_seconds_total 0\n", "a")], None)
    series.add(T0 + 1, [scrape("process_cpu_seconds_total 0.5\n", "a")], None)
    series.add(
        T0 + 2,
        [scrape("process_cpu_seconds_total 1\n", "a"), scrape("process_cpu_seconds_total 0\n", "b")],
        None,
    )
    series.add(
        T0 + 3,
        [scrape("process_cpu_seconds_total 1\n", "a"), scrape("process_cpu_seconds_total 0.2\n", "b")],
        None,
    )
    snapshot = series.snapshot()
    assert snapshot["t"] == [T0, T0 + 1, T0 + 2, T0 + 3]
    assert snapshot["charts"]["cpu_percent"] == {"a": [None, 50.0, 50.0, 0.0], "b": [None, None, None, 20.0]}
    for tick in range(4, 30):
        series.add(T0 + tick, [], None)
    snapshot = series.snapshot()
    assert snapshot["t"][0] == T0 + 19
    assert len(snapshot["t"]) == 11
    assert snapshot["charts"]["cpu_percent"] == {}  # gone with the ticks that had it


def test_histogram_quantile_edges() -> None:
    assert histogram_quantile(0.5, {}) is None
    assert histogram_quantile(0.5, {0.1: 5.0}) is None  # no +Inf: the total is unknown
    assert histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    assert histogram_quantile(0.99, {0.1: 1.0, 1.0: 1.0, math.inf: 10.0}) == 1.0  # in +Inf: the top bound
    assert histogram_quantile(0.5, {0.1: 10.0, math.inf: 10.0}) == pytest.approx(0.05)  # from 0
    # a dented shape (increases summed over a reset) is read as if monotonic
    assert histogram_quantile(0.5, {0.1: 10.0, 0.2: 8.0, math.inf: 10.0}) == pytest.approx(0.05)


def test_parse_samples_reads_only_the_dashboards_families() -> None:
    text = (
        "# HELP python_gc_objects_collected_total Objects collected during gc\n"
        "# TYPE python_gc_objects_collected_total counter\n"
        'python_gc_objects_collected_total{generation="0"} 123.0\n'
        'bourse_orders_totally_other{a="b"} 1\n'
        'bourse_orders_total{source="rest",outcome="refused"} 2.0\n'
        'bourse_consumer_lag_messages{service="a,b",consumer="x \\"y\\""} 7\n'
        "bourse_http_request_duration_seconds_sum 3\n"
    )
    samples = parse_samples(text)
    assert [(s.name, dict(s.labels), s.value) for s in samples] == [
        ("bourse_orders_total", {"source": "rest", "outcome": "refused"}, 2.0),
        ("bourse_consumer_lag_messages", {"service": "a,b", "consumer": 'x "y"'}, 7.0),
    ]
    assert parse_samples("") == []


def test_every_sample_the_dashboard_reads_is_in_the_documented_metrics_contract() -> None:
    assert documented_metrics() >= SAMPLE_NAMES

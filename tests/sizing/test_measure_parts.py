"""The measure's arithmetic and readings, without a system: counters read from /metrics text,
the idle subtracted from a window, a window disturbed by other work, the active floor, the
pusher's cost per message from two runs, the crowd's channels spread over its users."""

from __future__ import annotations

import os

import pytest

from bourse.sizing.crowd import crowd_users
from bourse.sizing.measure import (
    COUNTERS,
    Idle,
    Mark,
    active_floor,
    between,
    fan_out_cost,
)
from bourse.sizing.probes import cpu_seconds, metric_sums, rss_bytes
from bourse.sizing.profile import ActionCost
from bourse.sizing.scenario import Channel, load_scenario

METRICS = """# HELP bourse_pusher_messages_delivered_total Messages written to connections, by kind.
# TYPE bourse_pusher_messages_delivered_total counter
bourse_pusher_messages_delivered_total{kind="ticker"} 10.0
bourse_pusher_messages_delivered_total{kind="trades"} 32.0
bourse_order_to_trade_seconds_count 7.0
bourse_order_to_trade_seconds_sum 0.25
process_cpu_seconds_total 1.5
"""


def test_metric_text_is_summed_by_name_and_kept_per_labelled_sample() -> None:
    sums = metric_sums(METRICS)
    assert sums["bourse_pusher_messages_delivered_total"] == 42.0
    assert sums['bourse_pusher_messages_delivered_total{kind="trades"}'] == 32.0
    assert sums["bourse_order_to_trade_seconds_count"] == 7.0
    assert "# HELP" not in "".join(sums)


def test_this_process_cpu_and_memory_are_read_from_proc() -> None:
    assert (cpu_seconds(os.getpid()) or 0.0) > 0
    assert (rss_bytes(os.getpid()) or 0) > 0
    assert cpu_seconds(2**22 + 7) is None  # beyond pid_max: gone


def test_an_actions_window_is_charged_only_what_idling_would_not_have_spent() -> None:
    ticker = 'bourse_pusher_messages_delivered_total{kind="ticker"}'
    before = Mark(
        0.0, {"gateway": 1.0, "pusher": 2.0}, {COUNTERS["trades"]: 5.0, ticker: 10.0}, {}, {"ORDERS": 100}
    )
    after = Mark(
        10.0, {"gateway": 3.0, "pusher": 2.5}, {COUNTERS["trades"]: 25.0, ticker: 70.0}, {}, {"ORDERS": 900}
    )
    window = between(before, after)
    assert window.seconds == 10.0
    assert window.cpu_s == {"gateway": 2.0, "pusher": 0.5}
    assert window.counts["trades"] == 20.0
    assert window.counts["stream_bytes"] == 800.0
    assert window.counts["ws_ticker"] == 60.0  # per channel kind, what plan scales by holders
    idle = Idle(cores={"gateway": 0.05, "pusher": 0.05}, rates={"trades": 0.0})
    cpu, counts = idle.excess(window)
    assert cpu == pytest.approx({"gateway": 1.5, "pusher": 0.0})
    assert counts["trades"] == 20.0


def test_a_window_is_disturbed_when_other_work_took_the_machine() -> None:
    # 10 s: the system used 2.5 CPU s, the tools 1.0; the machine was busy 4.0 s, then 9.0 s
    before = Mark(0.0, {"gateway": 1.0, "matching": 1.0}, {}, {}, {}, machine_s=100.0, tools_s=5.0)
    quiet = Mark(10.0, {"gateway": 3.0, "matching": 1.5}, {}, {}, {}, machine_s=104.0, tools_s=6.0)
    busy = Mark(10.0, {"gateway": 3.0, "matching": 1.5}, {}, {}, {}, machine_s=109.0, tools_s=6.0)
    assert between(before, quiet).other_cores == pytest.approx(0.05)
    assert not between(before, quiet).disturbed
    assert between(before, busy).other_cores == pytest.approx(0.55)
    assert between(before, busy).disturbed


def _cost(rate: float, cpu_us: dict[str, float]) -> ActionCost:
    return ActionCost(rate=rate, sent=int(rate * 10), cpu_us=cpu_us, nats_messages=10, nats_bytes=1e3)


def test_the_active_floor_is_each_services_median_cpu_over_the_low_rate_windows() -> None:
    lows = [
        _cost(100, {"accounts": 1200.0, "persistence": 2000.0, "auth": 0.0}),
        _cost(100, {"accounts": 1800.0, "persistence": 1900.0, "auth": 0.0}),  # one more snapshot
        _cost(100, {"accounts": 1100.0, "persistence": 2100.0, "auth": 0.0}),
    ]
    assert active_floor(lows) == pytest.approx({"accounts": 0.12, "persistence": 0.2})


def test_the_pusher_cost_per_message_is_what_the_crowd_adds_per_message_it_gets() -> None:
    alone = ActionCost(
        rate=100,
        sent=1000,
        cpu_us={"pusher": 50.0},
        nats_messages=10,
        nats_bytes=1e3,
        induced={"ws_messages": 0.0},
    )
    crowd = ActionCost(
        rate=100,
        sent=1000,
        cpu_us={"pusher": 550.0},
        nats_messages=10,
        nats_bytes=1e3,
        induced={"ws_messages": 50.0},
    )
    assert fan_out_cost(alone, crowd) == pytest.approx(10.0)
    assert fan_out_cost(alone, alone) == 0.0


def test_the_crowd_holds_each_channel_as_the_scenario_spreads_it() -> None:
    scenario = load_scenario().scaled(users=1000)
    tokens = {member: f"token-{member}" for member in range(1, scenario.traders + 1)}
    users = crowd_users(scenario, tokens)
    assert len(users) == 1000
    holders = scenario.holders()
    for channel, count in holders.items():
        held = sum(1 for user in users if any(name.split(".")[0] == channel for name in user.channels))
        assert held == count, channel
    traders = [user for user in users if user.token is not None]
    assert len(traders) == holders[Channel.ORDERS] == scenario.traders
    assert all("orders" in user.channels for user in traders)
    assert {name.split(".")[1] for user in users for name in user.channels if "." in name} == set(
        scenario.markets
    )

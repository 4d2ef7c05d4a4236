"""`bourse size measure --quick` on the real local stack (a nats-server from the wheel, one
`bourse run` process per service, SQLite, a crowd of WebSocket users): the issue's acceptance
test. Every per-action figure must be positive, and at the step they were measured at they must
add up to the CPU measured there within 10 %; below it, the active floor must account for what
rate x cost does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from bourse.sizing.measure import MeasureOptions, measure
from bourse.sizing.profile import NATS, Profile, Step, load_profile, save_profile
from bourse.sizing.scenario import COMMANDS, ORDER_ACTIONS, Action, load_scenario

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def quick_profile() -> Profile:
    lines: list[str] = []

    def say(line: str) -> None:  # shown with -s, and in the report of a failure
        lines.append(line)
        print(line, flush=True)

    options = MeasureOptions.for_scenario(load_scenario(), quick=True)
    profile = await measure(options, say)
    assert any("step" in line for line in lines)  # the progress display said what it did
    return profile


async def test_a_quick_measure_gives_every_action_a_positive_cost(quick_profile: Profile) -> None:
    assert set(quick_profile.actions) == set(Action)
    for action, cost in quick_profile.actions.items():
        assert cost.sent > 0, action
        assert cost.rate > 0, action
        assert cost.total_us > 0, action
        assert cost.cpu_us["gateway"] > 0, action  # no RabbitMQ: every action came over REST
        assert all(us >= 0 for us in cost.cpu_us.values()), action
    for action in ORDER_ACTIONS:
        cost = quick_profile.actions[action]
        for service in ("accounts", "matching", "persistence", NATS):
            # every order costs these services: per order, or as the floor of their batches
            assert cost.cpu_us[service] > 0 or quick_profile.active_cores.get(service, 0.0) > 0, (
                action,
                service,
            )
        assert cost.nats_messages > 0, action
        assert cost.induced["stream_bytes"] > 0, action
        assert cost.induced["sql_rows"] > 0, action


async def test_the_per_action_costs_add_up_to_the_measured_cpu_within_ten_percent(
    quick_profile: Profile,
) -> None:
    """At the step the costs were measured at, idle + the sum of rate x cost per service is the
    CPU measured there within 10 % (the issue's bar), and so is the prediction (the larger of
    that sum and the active floor, per service)."""
    assert quick_profile.steps, "no step was measured"
    full = quick_profile.scenario.rates(1.0)
    flow = sum(full[action] for action in COMMANDS)  # every order command went at the commands' rate
    basis = quick_profile.actions[Action.PLACE_LIMIT].rate / flow  # the load the costs were taken at
    step = min(quick_profile.steps, key=lambda step: abs(step.load - basis))
    assert step.load == pytest.approx(basis, rel=0.1)
    assert step.orders_per_s > 0
    measured = sum(step.cores.values())
    assert measured > sum(quick_profile.idle_cores.values())
    costs = sum(quick_profile.idle_cores.values()) + sum(
        rate * us / 1e6
        for action, rate in _achieved(quick_profile, step).items()
        for us in quick_profile.actions[action].cpu_us.values()
    )
    assert costs == pytest.approx(measured, rel=0.10), f"step {step.load:.0%}: measured {step.cores}"
    predicted = sum(step.predicted_cores.values())
    assert predicted == pytest.approx(measured, rel=0.10), (
        f"step {step.load:.0%}: measured {step.cores}, predicted {step.predicted_cores}"
    )


async def test_below_the_measured_load_the_active_floor_keeps_the_prediction_from_falling_short(
    quick_profile: Profile,
) -> None:
    """At the lower step, rate x cost alone falls short (the first measures: -26 to -75 %): the
    services spend their active floor. With it the prediction does not fall short by more than
    25 %. It may read high: that one 5 s window of the whole mix reads 0.69 to 1.04 cores from
    run to run at the same settings (the floor, a median of three windows, moves less), and
    over-predicting below the measured load is the side a plan should err on; at most +50 %."""
    assert sum(quick_profile.active_cores.values()) > 0
    lower = min(quick_profile.steps, key=lambda step: step.load)
    assert not lower.past_knee
    measured = sum(lower.cores.values())
    predicted = sum(lower.predicted_cores.values())
    assert 0.75 * measured <= predicted <= 1.5 * measured, (
        f"step {lower.load:.0%}: measured {lower.cores}, predicted {lower.predicted_cores}"
    )


def _achieved(profile: Profile, step: Step) -> dict[Action, float]:
    """The action rates of a step: its scenario's rates at its load, scaled to the orders it
    achieved (a profile keeps the orders/s achieved, not each action's rate)."""
    rates = profile.scenario.rates(step.load)
    asked = profile.scenario.orders_per_s(step.load)
    return {action: rate * step.orders_per_s / asked for action, rate in rates.items()}


async def test_the_crowd_costs_are_measured(quick_profile: Profile) -> None:
    crowd = quick_profile.crowd
    assert crowd.users == quick_profile.scenario.users == 200
    assert crowd.memory_per_user_bytes > 0
    assert crowd.ws_message_cpu_us > 0
    assert crowd.stream_bytes_per_order > 0
    assert set(crowd.memory_per_open_order_bytes) == {"accounts", "matching", "query"}
    assert sum(crowd.memory_per_open_order_bytes.values()) > 0


async def test_the_profile_round_trips_and_says_how_it_was_measured(
    quick_profile: Profile, tmp_path: Path
) -> None:
    path = tmp_path / "profile.json"
    save_profile(quick_profile, path)
    assert load_profile(path) == quick_profile
    assert "one action at a time" in quick_profile.method
    assert "sent over REST" in quick_profile.method  # no RabbitMQ URL was given
    assert "quick" in quick_profile.method
    assert quick_profile.machine.cpus >= 1

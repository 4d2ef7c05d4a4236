"""`bourse size validate`'s choices and arithmetic, without a system: which load it runs (what was
asked; the brief's if the profile held it; else the largest load the profile's steps held), and
how it sets the prediction against the measurement per service."""

from __future__ import annotations

import math

import msgspec
import pytest

from bourse.cli import build_parser
from bourse.sizing.validate import DEFAULT_ORDERS_PER_S, Target, Validation, choose_target
from tests.sizing.synthetic import SCENARIO, synthetic_profile


def test_the_load_asked_for_is_the_load_validated() -> None:
    target = choose_target(synthetic_profile(), 500.0, 2000)
    assert (target.orders_per_s, target.users) == (500.0, 2000)
    assert choose_target(synthetic_profile(), None, 3000).orders_per_s == DEFAULT_ORDERS_PER_S


def test_without_steps_the_profiles_full_load_is_validated() -> None:
    target = choose_target(synthetic_profile(steps=False), None, None)
    assert (target.orders_per_s, target.users) == (SCENARIO.orders_per_s(), SCENARIO.users)


def test_a_full_load_the_steps_carried_is_validated() -> None:
    target = choose_target(synthetic_profile(), None, None)  # its steps carried up to 200 %
    assert target.orders_per_s == pytest.approx(100.0)
    assert target.users == 1000
    assert "full load" in target.why


def test_below_a_full_load_the_largest_step_within_the_limits_is_validated() -> None:
    profile = synthetic_profile()
    short = [  # from 100 % on, the latency or the errors passed the limits
        msgspec.structs.replace(step, past_knee=step.load >= 1.0) for step in profile.steps
    ]
    target = choose_target(msgspec.structs.replace(profile, steps=short, knee_load=0.5), None, None)
    assert target.orders_per_s == pytest.approx(50.0)
    assert target.load == 0.5  # run as the step ran: every rate at 50 %, the whole crowd
    assert target.users == SCENARIO.users
    assert "held within the scenario's limits" in target.why


def test_when_no_step_held_the_largest_step_that_carried_its_orders_is_validated() -> None:
    profile = synthetic_profile()
    steps = [  # every step past the limits; from 100 % on, far fewer orders sent than asked
        msgspec.structs.replace(
            step, past_knee=True, orders_per_s=step.orders_per_s * (1.0 if step.load < 1 else 0.5)
        )
        for step in profile.steps
    ]
    target = choose_target(msgspec.structs.replace(profile, steps=steps, knee_load=None), None, None)
    assert target.load == 0.5
    assert "largest load this machine carried" in target.why


def test_the_error_per_service_is_the_prediction_against_the_measurement() -> None:
    validation = Validation(
        target=Target(100.0, 1000, "as asked"),
        scenario=SCENARIO,
        predicted={"gateway": 0.30, "accounts": 0.10, "ids": 0.01},
        measured={"gateway": 0.25, "accounts": 0.10, "ids": 0.0},
        runs=[{}, {}, {}],
        orders_per_s=99.0,
    )
    assert validation.error("gateway") == pytest.approx(0.2)
    assert validation.error("accounts") == 0.0
    assert math.isinf(validation.error("ids"))
    assert validation.total_error == pytest.approx(0.06 / 0.35)
    table = validation.table()
    assert "gateway" in table
    assert "+20%" in table
    assert table.count("outside ±25 %") == 1  # ids: nothing measured


def test_the_size_group_has_measure_and_validate() -> None:
    parser = build_parser()
    measure = parser.parse_args(["size", "measure", "--quick", "--redis-url", "redis://127.0.0.1:6379/0"])
    assert measure.quick
    assert measure.redis_url == "redis://127.0.0.1:6379/0"
    validate = parser.parse_args(["size", "validate", "--orders-per-s", "500", "--users", "2000"])
    assert (validate.orders_per_s, validate.users, validate.repeats) == (500.0, 2000, 3)

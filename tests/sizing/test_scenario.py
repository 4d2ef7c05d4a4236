"""Scenarios: the shipped files load, rates follow the user model, bad files are refused with
their name."""

from __future__ import annotations

from pathlib import Path

import pytest

from bourse.sizing.scenario import DEFAULT_SCENARIO, SCENARIOS_DIR, Action, Channel, load_scenario


def test_the_default_scenario_is_the_briefs_ten_thousand_users_and_a_thousand_orders_a_second() -> None:
    brief = load_scenario()
    assert brief.users == 10_000
    assert brief.orders_per_s() == pytest.approx(1000)
    assert brief.holders()[Channel.TICKER] == 10_000
    assert brief.holders()[Channel.ORDERS] == brief.traders == 1000


def test_every_shipped_scenario_loads_and_places_orders() -> None:
    files = sorted(SCENARIOS_DIR.glob("*.toml"))
    assert DEFAULT_SCENARIO in files
    assert len(files) >= 3
    for path in files:
        assert load_scenario(path).orders_per_s() > 0, path


def test_rates_scale_with_the_load_and_split_limit_orders_by_source() -> None:
    brief = load_scenario()
    full, half = brief.rates(1.0), brief.rates(0.5)
    for action in Action:
        assert half[action] == pytest.approx(full[action] / 2)
    limit = brief.traders * brief.trading.limit_per_s
    assert full[Action.AMQP_ORDER] == pytest.approx(limit * brief.trading.amqp_share)
    assert full[Action.PLACE_LIMIT] + full[Action.AMQP_ORDER] == pytest.approx(limit)


def test_scaled_keeps_the_mix_for_another_crowd() -> None:
    brief = load_scenario()
    big = brief.scaled(users=200_000, orders_per_s=5000)
    assert big.users == 200_000
    assert big.orders_per_s() == pytest.approx(5000)
    ratio = big.rates()[Action.CANCEL] / big.rates()[Action.PLACE_MARKET]
    assert ratio == pytest.approx(brief.rates()[Action.CANCEL] / brief.rates()[Action.PLACE_MARKET])


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('name = "x"\nusers = 0', "users"),
        ('name = "x"\n[trading]\nshare = 1.5', "shares"),
        ('name = "x"\n[trading]\nlimit_per_s = -1', "negative"),
        ('name = "x"\n[trading]\nlimt_per_s = 1', "unknown field"),
        ('name = "x"\n[channels]\nsmoke = 1', "smoke"),
        ('name = "x"\n[steps]\nloads = []', "loads"),
        ("users = ", "scenario"),
    ],
)
def test_a_bad_scenario_is_refused_with_its_file_and_reason(
    tmp_path: Path, text: str, complaint: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=complaint) as refused:
        load_scenario(path)
    assert str(path) in str(refused.value)

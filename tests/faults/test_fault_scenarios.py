"""The short fault scenarios in CI (`tests.faults.scenarios.CI_SCENARIOS`): each runs once (the
first test that needs it), under a smaller load than the full suite, and each promise is its
own test so that one broken promise does not hide the others.

Every promise must hold under every fault: no acknowledged order lost, no duplicate trade, no
overfill, money conserved, `bourse audit` clean, nothing left open or locked once every order is
cancelled, every answer true, the read models agreeing once settled, no 500, and no 5xx at all
when only a read model's server (MariaDB, Redis) fails.
"""

from __future__ import annotations

import pytest

from tests.faults.scenarios import CI_SCENARIOS, SCENARIOS
from tests.faults.suite import Options, Result, render, run_scenario

pytestmark = pytest.mark.slow

CI_OPTIONS = Options(rate=100.0, members=100, warmup_s=2.0, duration_s=10.0, tail_s=5.0, quiet=True)
OFF_THE_ORDER_PATH = {"mariadb-refuse", "mariadb-blackhole", "redis-refuse", "redis-blackhole"}
"""Faults of a read model's server: orders, cancels and reads must go on without a 5xx."""

_results: dict[str, Result] = {}


async def outcome(name: str) -> Result:
    if name not in _results:
        _results[name] = await run_scenario(SCENARIOS[name], CI_OPTIONS)
        print("\n" + render(_results[name]))
    return _results[name]


@pytest.mark.parametrize("name", CI_SCENARIOS)
async def test_no_acknowledged_order_is_lost(name: str) -> None:
    result = await outcome(name)
    assert result.findings.acked > 100, render(result)
    assert not result.findings.lost, render(result)


@pytest.mark.parametrize("name", CI_SCENARIOS)
async def test_every_consumer_catches_up(name: str) -> None:
    result = await outcome(name)
    assert result.findings.settle_s is not None, render(result)


@pytest.mark.parametrize("name", CI_SCENARIOS)
async def test_no_duplicate_trade_and_no_overfill(name: str) -> None:
    result = await outcome(name)
    assert result.findings.trades > 50, render(result)
    assert result.findings.duplicate_trades == 0, render(result)
    assert result.findings.overfilled == 0, render(result)


@pytest.mark.parametrize("name", CI_SCENARIOS)
async def test_money_is_conserved_and_the_audit_clean(name: str) -> None:
    result = await outcome(name)
    assert not result.findings.conservation, render(result)
    assert result.findings.negative == 0, render(result)
    assert result.findings.audit_ok, result.findings.audit_output


@pytest.mark.parametrize("name", CI_SCENARIOS)
async def test_nothing_is_left_open_or_locked(name: str) -> None:
    result = await outcome(name)
    assert result.findings.locked_idle == 0, render(result)
    assert result.findings.open_left == 0, render(result)
    assert result.findings.locked_left == 0, render(result)


@pytest.mark.parametrize("name", CI_SCENARIOS)
async def test_every_answer_is_true(name: str) -> None:
    result = await outcome(name)
    assert not result.findings.lies, render(result)


@pytest.mark.parametrize("name", CI_SCENARIOS)
async def test_the_read_models_agree_once_settled(name: str) -> None:
    result = await outcome(name)
    assert not result.findings.read_diffs, render(result)


@pytest.mark.parametrize("name", CI_SCENARIOS)
async def test_no_internal_server_error(name: str) -> None:
    result = await outcome(name)
    assert result.findings.internal_errors == 0, render(result)


@pytest.mark.parametrize("name", [name for name in CI_SCENARIOS if name in OFF_THE_ORDER_PATH])
async def test_no_5xx_when_a_read_model_server_fails(name: str) -> None:
    result = await outcome(name)
    assert result.findings.server_errors == 0, render(result)
    assert result.recover_s is not None, render(result)

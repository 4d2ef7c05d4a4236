"""The plan's HTML report: three plots drawn inline, the plan table, nothing fetched from
elsewhere (it must open offline); and `bourse size plan --html` writing it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bourse.cli import main
from bourse.sizing.plan import Plan, make_plan, plan_scenario
from bourse.sizing.profile import Profile, save_profile
from bourse.sizing.report import FIGURES, html_report, plan_lines
from bourse.sizing.scenario import Scenario, Trading
from tests.sizing.synthetic import LIMIT_US, SCENARIO, synthetic_profile


def plan_of(profile: Profile) -> Plan:
    return make_plan(profile, plan_scenario(SCENARIO, users=2000, orders_per_s=9000, reads_per_s=0))


@pytest.fixture(scope="module")
def page() -> str:
    """The report of the synthetic profile, drawn once for the tests that only read it."""
    profile = synthetic_profile()
    return html_report(plan_of(profile), profile, "synthetic.json")


def figure(page: str, name: str) -> str:
    found = re.search(rf"<figure id='{name}'>(.*?)</figure>", page, re.DOTALL)
    assert found, name
    return found.group(1)


def test_the_report_holds_the_three_plots_and_the_plan(page: str) -> None:
    assert FIGURES == ("cost-per-action", "latency-against-load", "cpu-against-load")
    for name in FIGURES:
        assert figure(page, name).lstrip().startswith("<svg"), name
    cost = figure(page, "cost-per-action")
    assert "place_limit" in cost
    assert "read_depth" in cost
    for service in LIMIT_US:  # stacked by service, each in the legend
        assert service in cost, service
    assert "knee (1.5x)" in figure(page, "latency-against-load")
    assert "p99 limit" in figure(page, "latency-against-load")
    assert "predicted (sum)" in figure(page, "cpu-against-load")
    table = re.search(r"<table id='plan'>.*?</table>", page, re.DOTALL)
    assert table
    for service in LIMIT_US:
        assert f"<td>{service}</td>" in table.group(0), service
    assert "3 instances" in table.group(0)  # gateway: 1.8 cores at 0.6
    assert "market 6,000/s" in table.group(0)


def test_the_report_fetches_nothing(page: str) -> None:
    assert "<script" not in page
    assert "<link" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "url(http" not in page
    assert "<metadata>" not in page


def test_a_profile_without_stepped_runs_still_gives_three_figures() -> None:
    profile = synthetic_profile(steps=False)
    page = html_report(plan_of(profile), profile, "synthetic.json")
    for name in FIGURES:
        assert "<svg" in figure(page, name), name
    assert "no stepped runs" in figure(page, "latency-against-load")
    assert "no stepped runs" in figure(page, "cpu-against-load")


def test_the_text_names_actions_the_profile_did_not_cost() -> None:
    profile = synthetic_profile()  # costs limit orders and depth reads only
    trading = Trading(share=0.1, limit_per_s=1.0, market_per_s=0.0, cancel_per_s=0.5, amend_per_s=0.1)
    plan = make_plan(profile, Scenario(name="x", users=1000, markets=["a_b"], trading=trading))
    assert set(plan.unmeasured) == {"cancel", "amqp_order", "amend", "read_balances", "read_orders"}
    text = "\n".join(plan_lines(plan, profile, "synthetic.json"))
    assert "NOT IN THE PROFILE" in text
    assert "cancel 50/s" in text
    assert text.endswith("FITS, but for the actions the profile has no cost for (above)")


def test_the_cli_writes_the_report_with_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, report = tmp_path / "profile.json", tmp_path / "out" / "plan.html"
    report.parent.mkdir()
    save_profile(synthetic_profile(), path)
    argv = ["size", "plan", "--orders-per-s", "5000", "--users", "200000", "--profile", str(path)]
    assert main([*argv, "--html", str(report)]) == 0
    assert f"report: {report}" in capsys.readouterr().out
    page = report.read_text()
    assert page.startswith("<!doctype html>")
    for name in FIGURES:
        assert f"<figure id='{name}'><svg" in page, name
    assert "<table id='plan'>" in page

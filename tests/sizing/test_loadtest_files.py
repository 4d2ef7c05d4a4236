"""The external load tools (loadtest/) drive the scenario's user model: the Locust file's users act
at the scenario's per-user rates with task weights in the scenario's proportions, artillery's
flows add up to the scenario's rates, and both name only routes the gateway's OpenAPI document has.

Locust is imported in a child process: it monkey-patches the standard library (gevent) on import,
which the rest of the test session must not inherit."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest
import yaml

from bourse.config.settings import Settings
from bourse.entrypoints.rest.app import create_app
from bourse.entrypoints.rest.deps import GatewayDeps
from bourse.sizing import workload
from bourse.sizing.scenario import DEFAULT_SCENARIO, SCENARIOS_DIR, Action, Scenario, load_scenario

LOADTEST = Path(__file__).resolve().parents[2] / "loadtest"
SCENARIO_FILES = sorted(SCENARIOS_DIR.glob("*.toml"))


def load_module(name: str) -> ModuleType:
    """A loadtest/ script as a module (the folder is no package: Locust and artillery run files)."""
    sys.path.insert(0, str(LOADTEST))
    try:
        spec = importlib.util.spec_from_file_location(name, LOADTEST / f"{name}.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(LOADTEST))


user_model = load_module("user_model")
artillery_config = load_module("artillery_config")


def rest_rates(scenario: Scenario, load: float = 1.0) -> dict[Action, float]:
    """The scenario's rates as HTTP tools send them: RabbitMQ's limit orders over REST."""
    rates = scenario.rates(load)
    rates[Action.PLACE_LIMIT] += rates.pop(Action.AMQP_ORDER)
    return rates


def openapi_routes() -> set[tuple[str, str]]:
    none = cast(Any, None)  # building the document touches no dependency but the catalog
    deps = GatewayDeps(
        catalog=Settings(_env_file=None).catalog, intake=none, ids=none, verifier=none, queries=none
    )
    paths: dict[str, dict[str, Any]] = create_app(deps).openapi()["paths"]
    return {(method, path) for path, methods in paths.items() for method in methods}


def route_of(method: str, url: str, routes: set[tuple[str, str]]) -> tuple[str, str] | None:
    """The OpenAPI route a concrete or templated URL hits ({{ var }} and {param} match one segment)."""
    path = url.split("?", 1)[0]
    for route_method, route in routes:
        pattern = re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(route))
        concrete = re.sub(r"\{\{\s*\w+\s*\}\}", "x", path)
        if route_method == method and re.fullmatch(pattern, concrete):
            return route_method, route
    return None


def locust_classes(scenario_file: Path) -> dict[str, Any]:
    """What the locustfile defines for a scenario, read in a child process."""
    probe = (
        "import json, sys, collections\n"
        f"sys.path.insert(0, {str(LOADTEST)!r})\n"
        "import locustfile\n"
        "out = {}\n"
        "for cls in (locustfile.Trader, locustfile.Watcher):\n"
        "    counts = collections.Counter(task.__name__ for task in cls.tasks)\n"
        "    out[cls.__name__] = {'weight': cls.weight, 'abstract': cls.abstract, 'rate': cls.RATE_PER_S,\n"
        "        'tasks': dict(counts), 'wait': cls.wait_time.__name__}\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "BOURSE_SCENARIO": str(scenario_file)}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


@pytest.mark.parametrize("scenario_file", SCENARIO_FILES, ids=lambda path: path.stem)
def test_the_locustfile_imports_and_its_task_weights_follow_the_scenarios_rates(scenario_file: Path) -> None:
    scenario = load_scenario(scenario_file)
    classes = locust_classes(scenario_file)
    crowds = {"Trader": scenario.traders, "Watcher": scenario.users - scenario.traders}
    sent: dict[str, float] = {}
    for name, facts in classes.items():
        assert facts["weight"] == crowds[name], f"{name}: Locust splits -u by these weights"
        if facts["abstract"]:
            assert crowds[name] == 0
            continue
        assert facts["wait"] == "wait_time_func"  # constant_throughput's: each user keeps its rate
        total = sum(facts["tasks"].values())
        for task, count in facts["tasks"].items():
            sent[task] = sent.get(task, 0.0) + crowds[name] * facts["rate"] * count / total
    expected = rest_rates(scenario)
    assert set(sent) == {action.value for action, rate in expected.items() if rate > 0}
    for action, rate in expected.items():
        if rate > 0:
            assert sent[action.value] == pytest.approx(rate, rel=0.005), action


@pytest.mark.parametrize("scenario_file", SCENARIO_FILES, ids=lambda path: path.stem)
def test_the_tools_crowd_sends_the_scenarios_rates_with_rabbitmqs_share_over_rest(
    scenario_file: Path,
) -> None:
    scenario = load_scenario(scenario_file)
    for load in scenario.steps.loads:
        crowd = user_model.crowd_rates(scenario, load)
        for action, rate in rest_rates(scenario, load).items():
            assert crowd[action] == pytest.approx(rate), action


def test_the_committed_artillery_scenario_is_the_one_generated_from_the_brief() -> None:
    committed = (LOADTEST / "artillery.yml").read_text()
    assert committed == artillery_config.render(load_scenario(), DEFAULT_SCENARIO), (
        "loadtest/artillery.yml is stale: run .venv/bin/python loadtest/artillery_config.py"
    )


def requests_of(flow: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(method, spec) for step in flow for method, spec in step.items() if method != "function"]


def test_artillerys_flows_add_up_to_the_briefs_orders_cancels_amends_and_reads() -> None:
    document = yaml.safe_load((LOADTEST / "artillery.yml").read_text())
    scenario = load_scenario()
    flows = document["scenarios"]
    weight = sum(flow["weight"] for flow in flows)
    by_phase = {phase["arrivalRate"] for phase in document["config"]["phases"]}
    full = next(p["arrivalRate"] for p in document["config"]["phases"] if p["name"].startswith("1 x"))
    assert len(by_phase) == len(scenario.steps.loads)
    per_s: dict[str, float] = {}
    for flow in flows:
        arrivals = full * flow["weight"] / weight
        for method, spec in requests_of(flow["flow"]):
            hook = spec.get("beforeRequest", "")
            kind = {
                "limitBody": "place_limit",
                "restingBody": "place_limit",
                "marketBody": "place_market",
                "amendBody": "amend",
            }.get(hook)
            if kind is None:
                kind = {"delete": "cancel"}.get(method) or flow["name"]
            per_s[kind] = per_s.get(kind, 0.0) + arrivals
    for action, rate in rest_rates(scenario).items():
        assert per_s.get(action.value, 0.0) == pytest.approx(rate, rel=0.01), action


def test_the_artillery_scenario_and_the_locust_file_name_only_routes_of_the_openapi_document() -> None:
    routes = openapi_routes()
    document = yaml.safe_load((LOADTEST / "artillery.yml").read_text())
    named = [
        (method, spec["url"]) for flow in document["scenarios"] for method, spec in requests_of(flow["flow"])
    ]
    named += list(user_model.ROUTES.values())
    assert named
    missing = [(method, url) for method, url in named if route_of(method, url, routes) is None]
    assert not missing, f"not in the gateway's OpenAPI document: {missing}"
    assert route_of("get", "/api/v3/no/such/route", routes) is None


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (artillery runs on it)")
def test_the_artillery_processor_parses_and_prices_orders_as_the_workload_does() -> None:
    script = (
        f"const p = require({str(LOADTEST / 'processor.js')!r});"
        "console.log(JSON.stringify({mixes: p.MIXES, band: p.BAND, cross: p.CROSS,"
        " gap: p.RESTING_GAP, span: p.RESTING_SPAN, hooks: Object.keys(p)}));"
    )
    done = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    expected = [
        {
            "symbol": mix.symbol,
            "weight": mix.weight,
            "mid": mix.mid,
            "step": mix.step,
            "priceDecimals": mix.price_decimals,
            "amountMin": mix.amount_min,
            "amountMax": mix.amount_max,
            "amountUnit": mix.amount_unit,
            "amountDecimals": mix.amount_decimals,
        }
        for mix in workload.MIXES
    ]
    assert found["mixes"] == expected
    assert (found["band"], found["cross"]) == (workload.BAND, workload.CROSS)
    assert (found["gap"], found["span"]) == (workload.RESTING_GAP, workload.RESTING_SPAN)
    document = yaml.safe_load((LOADTEST / "artillery.yml").read_text())
    used = {step["function"] for flow in document["scenarios"] for step in flow["flow"] if "function" in step}
    used |= {
        spec["beforeRequest"]
        for flow in document["scenarios"]
        for _, spec in requests_of(flow["flow"])
        if "beforeRequest" in spec
    }
    assert used <= set(found["hooks"])

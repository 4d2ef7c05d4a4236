"""The live dashboard as a person sees it: a real `bourse up` (three supervised processes), orders
flowing over REST, and the page opened in headless Chromium (Debian's `chromium`, driven by
Playwright for Python; Playwright's own browser download cannot work on a closed network, and
`.ci/run` installs the package). The figures must appear, and move between two readings.

Not skipped when Chromium is missing: the test fails and says how to install it, since a skip in
CI would hide that the page was never opened."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from bourse.config.auth import issuer_for, key_ring_for
from bourse.config.settings import Settings
from tests.conftest import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BANNER_END = "Press Ctrl-C to stop."
FIGURES = (
    "orders-accepted",
    "orders-refused",
    "post-p50",
    "post-p99",
    "cpu-total",
    "users",
    "stream-messages",
)
"""The figures that must show a number while orders flow (order->trade too, once its metric exists)."""
ORDER = {"market": "btc_usd", "type": "limit", "price": "50000", "amount": "0.001"}
TOO_BIG = {**ORDER, "side": "sell", "amount": "1000"}
"""More BTC than a demo member has: refused (422 insufficient_funds), an `outcome="refused"`."""


def _env(tmp_path: Path, http_port: int, health_port: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BOURSE_")}
    env.update(
        BOURSE_DATA_DIR=str(tmp_path),
        BOURSE_HTTP_PORT=str(http_port),
        BOURSE_PUSHER_PORT=str(free_port()),
        BOURSE_HEALTH_PORT=str(health_port),
        BOURSE_EMBEDDED_NATS_PORT=str(free_port()),
        BOURSE_EMBEDDED_NATS_MONITOR_PORT=str(free_port()),
    )
    return env


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class OrderFlow:
    """Orders placed continuously from a thread, about 30 a second: alice sells what bob buys at
    the same price (each pair trades), and one order in ten is refused."""

    def __init__(self, api: str, alice: str, bob: str) -> None:
        self.api = api
        self.headers = [{"Authorization": f"Bearer {token}"} for token in (alice, bob)]
        self.codes: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="order-flow", daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.api, timeout=10.0) as client:
            turn = 0
            while not self._stop.is_set():
                alice, bob = self.headers
                for headers, body in (
                    (alice, {**ORDER, "side": "sell"}),
                    (bob, {**ORDER, "side": "buy"}),
                    *([(alice, TOO_BIG)] if turn % 5 == 0 else []),
                ):
                    code = client.post("/order", headers=headers, json=body).status_code
                    self.codes[code] = self.codes.get(code, 0) + 1
                turn += 1
                self._stop.wait(0.06)

    @contextmanager
    def running(self) -> Iterator[OrderFlow]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=15)


def _figures(page: Page) -> dict[str, str]:
    found: dict[str, str] = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('.figure .value')]
              .map((node) => [node.dataset.testid, node.textContent]))"""
    )
    return found


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _all_numbers(testids: tuple[str, ...]) -> str:
    """A page predicate: every one of these figures shows a number."""
    ids = ", ".join(f"'{testid}'" for testid in testids)
    return f"""() => [{ids}].every((id) => {{
        const text = document.querySelector(`[data-testid="${{id}}"]`).textContent.replace(/,/g, '');
        return text !== '' && !Number.isNaN(Number(text));
    }})"""


@pytest.mark.slow
def test_the_dashboard_shows_the_figures_and_they_move_while_orders_flow(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`, the step "
            "in .ci/run) to run the dashboard's browser test"
        )
    http_port, health_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    env = _env(data_dir, http_port, health_port)
    api = f"http://127.0.0.1:{http_port}/api/v3"
    process = subprocess.Popen(
        [sys.executable, "-m", "bourse", "up", "--processes", "3"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        banner = []
        while (line := process.stdout.readline()) and line.strip() != BANNER_END:
            banner.append(line)
        links = {}
        for line in banner[1:]:
            label, url = line.strip().rsplit(maxsplit=1)
            links[label] = url
        dashboard = links["dashboard"]
        assert dashboard == f"http://127.0.0.1:{health_port}/dashboard", banner
        _wait_for(lambda: httpx.get(links["health"]).status_code == 200, "healthy")
        settings = Settings(data_dir=data_dir, _env_file=None)  # the key ring `bourse up` made there
        issuer = issuer_for(settings, key_ring_for(settings))
        alice, bob = issuer.issue(1), issuer.issue(2)
        _wait_for(
            lambda: bool(httpx.get(f"{api}/balances", headers={"Authorization": f"Bearer {bob}"}).json()),
            "demo balances",
        )

        with OrderFlow(api, alice, bob).running() as flow, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.goto(dashboard)
            page.wait_for_function(_all_numbers(FIGURES), timeout=20_000)
            series = httpx.get(f"{dashboard}/series").json()
            if "bourse_order_to_trade_seconds_bucket" not in series["absent"]:
                page.wait_for_function(_all_numbers(("trade-p50", "trade-p99")), timeout=10_000)
            first, first_t = _figures(page), float(page.get_attribute("#status", "data-t") or 0)
            first_points = page.evaluate("() => plots.orders.plot.data[0].length")

            # what each figure says
            assert _number(first["orders-accepted"]) > 0, first
            assert _number(first["post-p99"]) >= _number(first["post-p50"]) > 0, first
            assert _number(first["cpu-total"]) > 0, first
            assert _number(first["stream-messages"]) > 0, first
            for chart in ("orders", "post_latency_ms", "cpu_percent", "stream_messages", "nats_pending"):
                assert page.locator(f'[data-testid="chart-{chart}"] canvas').count() >= 1, chart
            processes = page.locator('[data-testid="process"] td:first-child').all_inner_texts()
            assert {"supervisor", "nats-server", "pusher, gateway"} <= set(processes), processes
            orders_stream = page.get_by_test_id("stream-BOURSE_ORDERS-messages").inner_text()
            assert _number(orders_stream) > 0
            assert page.get_by_test_id("consumer-BOURSE_ORDERS-accounts-0").count() == 1
            assert (
                page.get_by_test_id("link-nats-monitoring").get_attribute("href") == links["nats monitoring"]
            )

            page.wait_for_function(
                f"() => Number(document.querySelector('#status').dataset.t) > {first_t + 3}"
            )
            second = _figures(page)
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            browser.close()

        # the figures move: updated, more messages in the streams, the rates and latencies remeasured
        assert _number(second["stream-messages"]) > _number(first["stream-messages"]), (first, second)
        moving = ("orders-accepted", "post-p50", "post-p99", "cpu-total")
        assert [second[key] for key in moving] != [first[key] for key in moving], (first, second)
        assert all(second[key] not in ("no data", "…") for key in FIGURES), second
        assert set(flow.codes) <= {201, 422}, flow.codes
        assert flow.codes.get(422, 0) > 0, flow.codes
        assert first_points > 0

        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

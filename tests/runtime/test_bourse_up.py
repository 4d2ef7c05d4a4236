"""`bourse up` as a user runs it: a real process, the embedded NATS from the wheel, Ctrl-C; in one
process (`--processes 1`) and supervised in two (children restarted when they die)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import free_port


def _children_of(pid: int) -> list[int]:
    children = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(status.parent.name))
    return children


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_bourse_up_in_one_process_serves_the_api_and_exits_zero_on_ctrl_c(tmp_path: Path) -> None:
    http_port, health_port = free_port(), free_port()
    env = {
        **os.environ,
        "BOURSE_DATA_DIR": str(tmp_path),
        "BOURSE_HTTP_PORT": str(http_port),
        "BOURSE_HEALTH_PORT": str(health_port),
        "BOURSE_PUSHER_PORT": str(free_port()),
        "BOURSE_EMBEDDED_NATS_PORT": str(free_port()),
        "BOURSE_EMBEDDED_NATS_MONITOR_PORT": str(free_port()),
    }
    env.pop("BOURSE_NATS_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "bourse", "up", "--processes", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # like a terminal: Ctrl-C goes to the whole process group
    )
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline()]
        while not banner[-1].startswith("Press Ctrl-C") and len(banner) < 20:
            banner.append(process.stdout.readline())
        assert banner[0].startswith("bourse is up"), banner
        deadline = time.monotonic() + 20
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{health_port}/healthz")
                if health.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "bourse up never became healthy"
            time.sleep(0.1)
        markets = httpx.get(f"http://127.0.0.1:{http_port}/api/v3/markets").json()
        assert {market["id"] for market in markets} >= {"btc_usd", "eth_usd", "eth_btc"}
        docs = httpx.get(f"http://127.0.0.1:{http_port}/api/v3/docs")
        assert docs.status_code == 200
        # its live dashboard, as with children: this process and the NATS server, the streams
        assert ["dashboard", f"http://127.0.0.1:{health_port}/dashboard"] in [line.split() for line in banner]
        page = httpx.get(f"http://127.0.0.1:{health_port}/dashboard")
        assert page.status_code == 200
        assert "uPlot" in page.text

        def dashboard_shows_the_process_nats_and_the_streams() -> bool:
            series = httpx.get(f"http://127.0.0.1:{health_port}/dashboard/series").json()
            cpu = series["latest"].get("cpu_percent", {})
            return "nats-server" in cpu and len(cpu) >= 2 and bool(series["streams"])

        _wait_for(dashboard_shows_the_process_nats_and_the_streams, "the dashboard's figures", 15)
        children = _children_of(process.pid)
        assert children, "the embedded nats-server should be a child process"

        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=20) == 0, process.stderr.read() if process.stderr else ""
        time.sleep(0.2)
        assert not [pid for pid in children if _alive(pid)], "a child process was left behind"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


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


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


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


def _token(env: dict[str, str], member: int) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bourse", "token", str(member)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.mark.slow
def test_bourse_up_in_two_processes_trades_restarts_a_killed_child_and_exits_zero_on_ctrl_c(
    tmp_path: Path,
) -> None:
    http_port, health_port = free_port(), free_port()
    env = _env(tmp_path, http_port, health_port)
    api = f"http://127.0.0.1:{http_port}/api/v3"
    healthz = f"http://127.0.0.1:{health_port}/healthz"
    process = subprocess.Popen(
        [sys.executable, "-m", "bourse", "up", "--processes", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # like a terminal: Ctrl-C goes to the whole process group
    )
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline() for _ in range(4)]
        assert banner[0].startswith("bourse is up in 2 processes: "), banner
        assert banner[1].split() == ["api", api], banner
        label, websocket = banner[3].split()
        assert (label, websocket) == ("websocket", f"ws://127.0.0.1:{env['BOURSE_PUSHER_PORT']}/ws"), banner
        _wait_for(lambda: httpx.get(healthz).status_code == 200, "healthy")
        health = httpx.get(healthz).json()
        assert [p["services"] for p in health["processes"]] == [
            ["accounts", "matching", "persistence"],
            ["query", "statistics", "auth", "ids", "pusher", "gateway"],
        ]
        assert set(health["services"]) == {
            "accounts",
            "matching",
            "persistence",
            "query",
            "statistics",
            "pusher",
            "auth",
            "ids",
            "gateway",
        }

        children = _children_of(process.pid)
        runs = {pid: _cmdline(pid) for pid in children if "run" in _cmdline(pid)}
        assert len(runs) == 2, runs
        assert len(children) == 3, "two bourse children and the embedded nats-server"

        markets = httpx.get(f"{api}/markets").json()
        assert {market["id"] for market in markets} >= {"btc_usd", "eth_usd", "eth_btc"}

        # a trade between two demo members, tokens from `bourse token` on the same data folder
        alice = {"Authorization": f"Bearer {_token(env, 1)}"}
        bob = {"Authorization": f"Bearer {_token(env, 2)}"}
        _wait_for(lambda: bool(httpx.get(f"{api}/balances", headers=bob).json()), "demo balances")
        order = {"market": "btc_usd", "type": "limit"}
        sell = httpx.post(
            f"{api}/order", headers=alice, json={**order, "side": "sell", "price": "50000", "amount": "0.5"}
        )
        assert sell.status_code == 201, sell.text
        buy = httpx.post(
            f"{api}/order", headers=bob, json={**order, "side": "buy", "price": "50100", "amount": "0.2"}
        )
        assert buy.status_code == 201, buy.text
        assert buy.json()["status"] == "executed", buy.text
        _wait_for(lambda: len(httpx.get(f"{api}/markets/btc_usd/trades").json()) == 1, "the trade")
        trade = httpx.get(f"{api}/markets/btc_usd/trades").json()[0]
        assert (trade["price"], trade["amount"]) == ("50000.00", "0.200000")

        # the pusher at the banner's address: the market's ticker, pushed
        with connect(websocket, open_timeout=5) as ws:
            ws.send(json.dumps({"op": "subscribe", "channels": ["ticker.btc_usd"], "id": 1}))
            assert json.loads(ws.recv(timeout=5)) == {
                "type": "subscribed", "id": 1, "channels": ["ticker.btc_usd@1000ms"]
            }  # fmt: skip
            pushed = json.loads(ws.recv(timeout=5))
            assert (pushed["channel"], pushed["data"]["last"]) == ("ticker.btc_usd@1000ms", "50000.00")

        # SIGKILL the gateway's process: the supervisor starts it again and the API answers
        (gateway,) = [pid for pid, cmdline in runs.items() if "gateway" in cmdline]
        os.kill(gateway, signal.SIGKILL)
        _wait_for(lambda: httpx.get(healthz).status_code == 503, "the loss to show", timeout=5)
        _wait_for(lambda: httpx.get(healthz).status_code == 200, "healthy again", timeout=60)
        restarted = httpx.get(healthz).json()["processes"][1]
        assert restarted["restarts"] == 1
        assert restarted["pid"] != gateway
        assert httpx.get(f"{api}/markets").status_code == 200
        trades = httpx.get(f"{api}/markets/btc_usd/trades").json()
        assert [t["id"] for t in trades] == [trade["id"]], "the query read model rebuilt from the streams"
        sell_again = httpx.post(
            f"{api}/order", headers=alice, json={**order, "side": "sell", "price": "50000", "amount": "0.1"}
        )
        assert sell_again.status_code == 201, sell_again.text

        children = _children_of(process.pid)
        assert len(children) == 3
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=40) == 0, process.stderr.read() if process.stderr else ""
        time.sleep(0.2)
        assert not [pid for pid in children if _alive(pid)], "a child process was left behind"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for pid in _children_of(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

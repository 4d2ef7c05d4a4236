"""`bourse up` as a user runs it: a real process, the embedded NATS from the wheel, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

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
def test_bourse_up_serves_the_api_and_exits_zero_on_ctrl_c(tmp_path: Path) -> None:
    http_port, health_port = free_port(), free_port()
    env = {
        **os.environ,
        "BOURSE_DATA_DIR": str(tmp_path),
        "BOURSE_HTTP_PORT": str(http_port),
        "BOURSE_HEALTH_PORT": str(health_port),
        "BOURSE_EMBEDDED_NATS_PORT": str(free_port()),
        "BOURSE_EMBEDDED_NATS_MONITOR_PORT": str(free_port()),
    }
    env.pop("BOURSE_NATS_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "bourse", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # like a terminal: Ctrl-C goes to the whole process group
    )
    try:
        banner = [process.stdout.readline() for _ in range(3)] if process.stdout else []
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

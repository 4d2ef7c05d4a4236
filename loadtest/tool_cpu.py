"""CPU per request of a load tool on this machine: runs the tool's command, and over a window
after its warm-up reads the CPU of the tool's whole process tree (/proc: utime + stime of the
process and every descendant) and the requests the gateway counted in the same window
(`bourse_http_requests_total` on the health port of the running `bourse up`).

    .venv/bin/python loadtest/tool_cpu.py --health-port 8001 --warmup 10 --window 30 -- \\
        .venv/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 \\
        --headless -u 1500 -r 300 -t 60s

The gateway's count, not the tool's own, is the denominator: the same for every tool, and only
requests that reached the server count. Start-up (imports, spawning users) falls in the warm-up,
outside the window. Several repeats of the same command give the median."""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree(root: int) -> list[int]:
    """`root` and every process descending from it, alive now."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def requests_counted(health_port: int) -> float:
    """The gateway's bourse_http_requests_total, summed over routes and statuses."""
    with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("bourse_http_requests_total"):
            total += float(line.rpartition(" ")[2])
    return total


def measure(
    command: Sequence[str], health_port: int, warmup: float, window: float
) -> tuple[float, float, float]:
    """(CPU seconds of the tool in the window, requests counted, window seconds)."""
    tool = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        time.sleep(warmup)
        if tool.poll() is not None:
            raise SystemExit(f"the tool exited during the warm-up ({tool.returncode}): {' '.join(command)}")
        before_cpu, before_requests, start = (
            cpu_seconds(tree(tool.pid)),
            requests_counted(health_port),
            time.monotonic(),
        )
        while time.monotonic() - start < window:
            time.sleep(min(5.0, window - (time.monotonic() - start)))
            print(f"  {time.monotonic() - start:5.1f}s of {window:.0f}s", file=sys.stderr, flush=True)
        after_cpu, after_requests = cpu_seconds(tree(tool.pid)), requests_counted(health_port)
        elapsed = time.monotonic() - start
        if tool.poll() is not None:
            raise SystemExit("the tool ended inside the window: give it a longer run than warm-up + window")
    finally:
        if tool.poll() is None:
            os.killpg(tool.pid, signal.SIGINT)
            try:
                tool.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(tool.pid, signal.SIGKILL)
                tool.wait()
    used = sum(after_cpu[pid] - before_cpu.get(pid, 0.0) for pid in after_cpu)
    return used, after_requests - before_requests, elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--health-port", type=int, default=8001, help="the running bourse up's health port")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the tool's command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the tool's command after --")
    per_request = []
    for repeat in range(1, args.repeats + 1):
        used, requests, elapsed = measure(command, args.health_port, args.warmup, args.window)
        per_request.append(used / max(requests, 1) * 1e6)
        print(
            f"run {repeat}: {requests:.0f} requests in {elapsed:.1f}s ({requests / elapsed:.0f}/s), "
            f"tool CPU {used:.2f}s ({used / elapsed:.2f} cores): {per_request[-1]:.0f} us per request",
            flush=True,
        )
    print(
        f"median of {len(per_request)}: {statistics.median(per_request):.0f} us of the tool's CPU per request"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

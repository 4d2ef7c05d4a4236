"""What `bourse size measure` reads off a running system without adding to its work: a process's
CPU time and resident memory from /proc, a service's counters from its /metrics text, the NATS
server's totals from its monitoring /varz. Each reading is a snapshot; the measure takes one at
each end of a window and works with the differences."""

from __future__ import annotations

import asyncio
import os
import platform
import resource
import subprocess
from pathlib import Path

import httpx

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process, all its threads (utime + stime of /proc/<pid>/stat);
    None once it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process (/proc/<pid>/statm)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError):
        return None


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of every CPU together (/proc/stat), to tell how loaded the box was."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(repo: Path) -> str:
    """The checkout's commit, or `unknown` outside git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head


def metric_sums(text: str) -> dict[str, float]:
    """Prometheus text -> the sum of every sample of each name, whatever its labels
    (`bourse_pusher_messages_delivered_total` over all its kinds), and each labelled sample as
    written (`bourse_pusher_messages_delivered_total{kind="trades"}`); a histogram's `_count` and
    `_sum` are names of their own."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        head, _, value = line.rpartition(" ")
        name = head.split("{", 1)[0].strip()
        try:
            number = float(value)
        except ValueError:
            continue
        if number == number:  # NaN adds nothing
            sums[name] = sums.get(name, 0.0) + number
            if "{" in head:
                sums[head.strip()] = number
    return sums


async def scrape(client: httpx.AsyncClient, port: int, tries: int = 3) -> dict[str, float]:
    """A process's /metrics on its health port, summed by name; {} when it does not answer
    `tries` times (a window whose closing read is missing would count nothing for it)."""
    for attempt in range(tries):
        try:
            response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0)
        except httpx.HTTPError:
            response = None
        if response is not None and response.status_code == 200:
            return metric_sums(response.text)
        if attempt + 1 < tries:
            await asyncio.sleep(0.1)
    return {}


async def varz(client: httpx.AsyncClient, monitor_url: str | None) -> dict[str, float]:
    """The NATS server's message and byte totals (in_msgs, out_msgs, in_bytes, out_bytes);
    {} without a monitoring URL or an answer."""
    if monitor_url is None:
        return {}
    try:
        response = await client.get(f"{monitor_url.rstrip('/')}/varz", timeout=5.0)
        data = response.json()
    except (httpx.HTTPError, ValueError):
        return {}
    return {key: float(data.get(key, 0)) for key in ("in_msgs", "out_msgs", "in_bytes", "out_bytes")}


def raise_nofile() -> int:
    """RLIMIT_NOFILE soft limit up to the hard one (10,000 connections need 10,000 files)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]

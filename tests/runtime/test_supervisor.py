"""`bourse up`'s supervisor: how many processes, which services go together, and how soon a
crashed child is started again."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from bourse.cli import build_parser
from bourse.config.settings import Settings
from bourse.runtime.supervisor import (
    BACKOFF_FIRST_S,
    BANNER_END,
    Child,
    RestartBackoff,
    Supervisor,
    auto_processes,
    group_services,
)
from bourse.services import SERVICES, services_for

START_ORDER = [service.name for service in services_for(Settings(redis_url=None, _env_file=None))]
"""`bourse up` without Redis: no cache service."""
WITH_CACHE = [service.name for service in services_for(Settings(redis_url="redis://x", _env_file=None))]


def test_auto_is_one_process_more_than_cores_up_to_four() -> None:
    assert [auto_processes(cores) for cores in (1, 2, 3, 4, 8, 64)] == [1, 3, 4, 4, 4, 4]


def test_one_process_runs_everything_in_start_order() -> None:
    assert group_services(START_ORDER, 1) == [START_ORDER]


def test_groups_balance_the_measured_cpu_and_keep_the_start_order() -> None:
    assert START_ORDER == ["accounts", "matching", "persistence", "query", "auth", "ids", "gateway"]
    assert group_services(START_ORDER, 2) == [
        ["accounts", "matching", "persistence"],
        ["query", "auth", "ids", "gateway"],
    ]
    assert group_services(START_ORDER, 3) == [
        ["accounts", "matching"],
        ["persistence", "query", "auth", "ids"],
        ["gateway"],
    ]
    assert group_services(START_ORDER, 4) == [
        ["accounts", "matching"],
        ["persistence"],
        ["query", "auth", "ids"],
        ["gateway"],
    ]


def test_the_cache_runs_only_with_a_redis_url() -> None:
    assert "cache" in SERVICES
    assert "cache" not in START_ORDER
    assert WITH_CACHE == ["accounts", "matching", "persistence", "cache", "query", "auth", "ids", "gateway"]
    assert [
        service.name for service in services_for(Settings(redis_url=None, _env_file=None), ["cache"])
    ] == ["cache"]
    assert group_services(WITH_CACHE, 2) == [
        ["accounts", "matching", "persistence"],
        ["cache", "query", "auth", "ids", "gateway"],
    ]


@pytest.mark.parametrize("processes", range(1, 10))
@pytest.mark.parametrize("order", [START_ORDER, WITH_CACHE], ids=["without-redis", "with-redis"])
def test_every_service_runs_once_in_at_most_that_many_groups(processes: int, order: list[str]) -> None:
    groups = group_services(order, processes)
    assert [name for group in groups for name in group] == order
    assert len(groups) == min(processes, len(order))
    assert all(groups)
    assert groups[-1][-1] == "gateway"  # the gateway starts last and stops first


def test_unknown_services_get_a_middling_weight() -> None:
    assert group_services(["a", "b", "c", "d"], 2, weights={}) == [["a", "b"], ["c", "d"]]
    assert group_services([], 3) == []


def test_processes_option() -> None:
    parser = build_parser()
    assert parser.parse_args(["up"]).processes == "auto"
    assert parser.parse_args(["up", "--processes", "3"]).processes == "3"
    with pytest.raises(SystemExit):
        parser.parse_args(["up", "--processes", "0"])


def test_repeated_crashes_never_keep_a_child_down_longer_than_the_backoff_cap() -> None:
    """The issue's case: accounts+matching killed every 5 s (up about 4 s each time) were kept
    down 15 s at a time; now at most `restart_backoff_max_s` (4 s) however long the crash loop."""
    settings = Settings(_env_file=None)
    backoff = RestartBackoff(BACKOFF_FIRST_S, settings.restart_backoff_max_s, settings.restart_reset_after_s)
    delays = [backoff.next_delay(up_s=4.0) for _ in range(50)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == settings.restart_backoff_max_s == 4.0
    # a child that was up long enough crashed for another reason: no penalty from the old loop
    assert backoff.next_delay(up_s=settings.restart_reset_after_s) == BACKOFF_FIRST_S
    assert backoff.next_delay(up_s=0.0) == 2 * BACKOFF_FIRST_S


class FakeChildren(Supervisor):
    """Children that print the banner, stay up `up_s`, then exit 1 (a crash)."""

    up_s = 0.0

    def child_command(self, child: Child) -> list[str]:
        script = (
            f"import time; print({BANNER_END!r}, flush=True); time.sleep({self.up_s}); raise SystemExit(1)"
        )
        return [sys.executable, "-c", script]


@pytest.mark.parametrize(("up_s", "expected"), [(0.05, [0.5, 1.0, 1.0, 1.0]), (1.0, [0.5, 0.5, 0.5])])
async def test_a_crashing_child_is_restarted_with_a_capped_backoff_reset_by_a_healthy_run(
    tmp_path: Path, up_s: float, expected: list[float]
) -> None:
    """Short runs: the pause doubles up to the cap (1 s here). Runs longer than
    `restart_reset_after_s` (0.5 s here) past the banner: every restart pauses the first step."""
    settings = Settings(
        _env_file=None, data_dir=tmp_path, restart_backoff_max_s=1.0, restart_reset_after_s=0.5
    )
    supervisor = FakeChildren(settings, [["fake"]], embedded_nats=False)
    supervisor.up_s = up_s
    child = supervisor.children[0]
    delays: list[float] = []
    await supervisor._spawn(child)
    await supervisor._wait_ready(child)
    watcher = asyncio.create_task(supervisor._watch(child))
    try:
        async with asyncio.timeout(60):
            while len(delays) < len(expected):
                await asyncio.sleep(0.01)
                if child.restarts > len(delays):  # the pause it waited before that restart
                    delays.append(child.restart_delay_s)
    finally:
        supervisor._stopping = True
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await supervisor._terminate(child)
    assert delays == expected

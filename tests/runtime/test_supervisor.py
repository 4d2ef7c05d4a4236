"""`bourse up`'s supervisor: how many processes, which services go together, when a child is up
(its services answer on NATS), its health (their `$SRV.STATS`), and how soon a crashed child is
started again. The children run a fake service on the real service host, against real NATS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from bourse.cli import build_parser
from bourse.config.settings import Settings
from bourse.runtime.host import INSTANCE_KEY, ServiceHost, micro_name
from bourse.runtime.service import ServiceContext
from bourse.runtime.supervisor import (
    BACKOFF_FIRST_S,
    Child,
    RestartBackoff,
    Supervisor,
    SupervisorError,
    auto_processes,
    group_services,
)
from bourse.services import SERVICES, services_for
from tests.runtime.fake_child import FAKE_LINK, SICK, Fake

START_ORDER = [service.name for service in services_for(Settings(redis_url=None, _env_file=None))]
"""`bourse up` without Redis: no cache service."""
WITH_CACHE = [service.name for service in services_for(Settings(redis_url="redis://x", _env_file=None))]


def test_auto_is_one_process_more_than_cores_up_to_four() -> None:
    assert [auto_processes(cores) for cores in (1, 2, 3, 4, 8, 64)] == [1, 3, 4, 4, 4, 4]


def test_one_process_runs_everything_in_start_order() -> None:
    assert group_services(START_ORDER, 1) == [START_ORDER]


def test_groups_balance_the_measured_cpu_and_keep_the_start_order() -> None:
    assert START_ORDER == [
        "accounts", "matching", "persistence", "query", "statistics", "auth", "ids", "pusher", "gateway"
    ]  # fmt: skip
    assert group_services(START_ORDER, 2) == [
        ["accounts", "matching", "persistence"],
        ["query", "statistics", "auth", "ids", "pusher", "gateway"],
    ]
    assert group_services(START_ORDER, 3) == [
        ["accounts", "matching"],
        ["persistence", "query", "statistics", "auth", "ids"],
        ["pusher", "gateway"],
    ]
    assert group_services(START_ORDER, 4) == [
        ["accounts", "matching"],
        ["persistence"],
        ["query", "statistics", "auth", "ids", "pusher"],
        ["gateway"],
    ]


def test_the_cache_runs_only_with_a_redis_url() -> None:
    assert "cache" in SERVICES
    assert "cache" not in START_ORDER
    assert WITH_CACHE == [
        "accounts", "matching", "persistence", "cache", "query", "statistics", "auth", "ids", "pusher",
        "gateway",
    ]  # fmt: skip
    assert [
        service.name for service in services_for(Settings(redis_url=None, _env_file=None), ["cache"])
    ] == ["cache"]
    assert group_services(WITH_CACHE, 2) == [
        ["accounts", "matching", "persistence", "cache"],
        ["query", "statistics", "auth", "ids", "pusher", "gateway"],
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
    """Children that run `tests/runtime/fake_child.py` with `args`: a `fake` service on the real
    service host, registered with nats.micro as `bourse run` does."""

    args: tuple[str, ...] = ()

    def child_command(self, child: Child) -> list[str]:
        return [sys.executable, str(Path(__file__).with_name("fake_child.py")), *self.args]

    def child_env(self, child: Child) -> dict[str, str]:
        env = super().child_env(child)
        env["BOURSE_DATA_DIR"] = str(self.settings.data_dir)
        return env


def fake_children(settings: Settings, *args: str, **changes: Any) -> FakeChildren:
    supervisor = FakeChildren(settings.model_copy(update=changes), [["fake"]], embedded_nats=False)
    supervisor.args = args
    return supervisor


async def instances(nc: Client, namespace: str) -> list[dict[str, Any]]:
    """Every instance of the fake service that answers `$SRV.PING` within 0.3 s."""
    inbox = await nc.subscribe(nc.new_inbox())
    await nc.publish(f"$SRV.PING.{micro_name(namespace, 'fake')}", b"", reply=inbox.subject)
    found = []
    with contextlib.suppress(TimeoutError):
        while True:
            msg = await inbox.next_msg(timeout=0.3)
            if msg.data:
                found.append(json.loads(msg.data))
    await inbox.unsubscribe()
    return found


async def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    give_up = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < give_up, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_child_is_ready_once_its_services_answer_on_nats_with_its_instance_label(
    settings: Settings, nc: Client
) -> None:
    """The child prints the old banner at once but registers its service 1.5 s later: ready then,
    with the instance's id and links from its nats.micro answer."""
    supervisor = fake_children(settings, "--banner", "--register-after", "1.5")
    try:
        await supervisor.start()
        child = supervisor.children[0]
        assert child.ready
        assert child.ready_at is not None
        assert child.ready_at - child.started_at >= 1.5
        (instance,) = await instances(nc, settings.namespace)
        assert instance["metadata"][INSTANCE_KEY] == child.instance
        assert instance["metadata"]["pid"] == str(child.process.pid if child.process else None)
        assert child.instances == {"fake": instance["id"]}
        assert supervisor.links()["fake"] == FAKE_LINK  # from its metadata, for the banner
    finally:
        await supervisor.stop()


async def test_a_child_that_prints_the_old_banner_but_never_registers_is_not_ready(
    settings: Settings, nc: Client
) -> None:
    """Not even while another instance of the same service answers elsewhere on the NATS."""
    elsewhere = ServiceHost(
        ServiceContext(settings.model_copy(update={"instance": "elsewhere"}), nc, nc.jetstream())
    )
    await elsewhere.start([Fake])
    supervisor = fake_children(settings, "--banner", "--register-after", "never")
    supervisor.ready_timeout_s = 3.0
    try:
        with pytest.raises(SupervisorError, match=r"fake was not up within 3\.0s"):
            await supervisor.start()
        child = supervisor.children[0]
        assert child.alive
        assert not child.ready
        assert [i["metadata"][INSTANCE_KEY] for i in await instances(nc, settings.namespace)] == ["elsewhere"]
    finally:
        await supervisor.stop()
        await elsewhere.stop()
    assert not supervisor.children[0].alive


async def test_a_child_that_exits_before_it_is_up_fails_the_start(settings: Settings, nc: Client) -> None:
    supervisor = fake_children(settings, "--register-after", "never", "--crash-after", "0.2")
    try:
        with pytest.raises(SupervisorError, match="fake exited with 1 before it was up"):
            await supervisor.start()
    finally:
        await supervisor.stop()


async def test_health_comes_from_stats_and_a_killed_child_is_restarted(
    settings: Settings, nc: Client
) -> None:
    supervisor = fake_children(settings)
    try:
        await supervisor.start()
        child = supervisor.children[0]
        assert child.process is not None
        first = child.process.pid
        health = supervisor.health()
        assert health["ok"], health
        assert health["services"]["fake"]["pid"] == first
        assert health["processes"][0]["state"] == "running"
        # /metrics is HTTP: the child's health port may open just after its service answers
        await eventually(lambda: f'bourse_fake_up{{pid="{first}"}} 1' in supervisor.metrics(), "metrics", 5)

        # the service says it is not ok: the supervisor learns it from $SRV.STATS
        (settings.data_dir / SICK).touch()
        await eventually(lambda: not supervisor.health()["ok"], "not ok", timeout=5)
        health = supervisor.health()
        assert health["services"]["fake"]["ok"] is False
        assert health["processes"][0]["state"] == "running"
        (settings.data_dir / SICK).unlink()
        await eventually(lambda: supervisor.health()["ok"], "ok again", timeout=5)

        os.kill(first, signal.SIGKILL)
        await eventually(lambda: not supervisor.health()["ok"], "the loss to show", timeout=5)
        await eventually(lambda: child.restarts == 1 and supervisor.health()["ok"], "restarted and ok")
        second = child.process.pid if child.process else None
        assert second != first
        assert supervisor.health()["services"]["fake"]["pid"] == second
        await eventually(lambda: f'bourse_fake_up{{pid="{second}"}} 1' in supervisor.metrics(), "metrics", 5)
        assert [i["metadata"]["pid"] for i in await instances(nc, settings.namespace)] == [str(second)]
    finally:
        await supervisor.stop()


@pytest.mark.parametrize("nats_url", ["system"], indirect=True)
@pytest.mark.parametrize(("up_s", "expected"), [(0.05, [0.5, 1.0, 1.0, 1.0]), (1.0, [0.5, 0.5, 0.5])])
async def test_a_crashing_child_is_restarted_with_a_capped_backoff_reset_by_a_healthy_run(
    settings: Settings, nc: Client, up_s: float, expected: list[float]
) -> None:
    """Children up `up_s` (answering on NATS), then crashing. Short runs: the pause doubles up to
    the cap (1 s here). Runs longer than `restart_reset_after_s` (0.5 s here) since they were up:
    every restart pauses the first step."""
    supervisor = fake_children(
        settings, "--crash-after", str(up_s), restart_backoff_max_s=1.0, restart_reset_after_s=0.5
    )
    child = supervisor.children[0]
    delays: list[float] = []
    try:
        await supervisor.start()
        async with asyncio.timeout(60):
            while len(delays) < len(expected):
                await asyncio.sleep(0.01)
                if child.restarts > len(delays):  # the pause it waited before that restart
                    delays.append(child.restart_delay_s)
    finally:
        await supervisor.stop()
    assert delays == expected

"""The faults, one per scenario. Each runs for its window (`duration` seconds) under the load
and returns with the fault lifted (services started again, proxies up, NATS back); the suite
then restores anything else, lets the load run on to measure the recovery, and checks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tests.faults.system import SERVICE_NAMES, FaultSystem

Fault = Callable[[FaultSystem, float], Awaitable[float | None]]
"""Runs the fault for its window; returns when (time.monotonic()) the fault was last lifted if
that was before the window's end (a killed service started again, NATS back), else None."""

KILL_DOWN_S = 2.0
"""How long a SIGKILLed service stays down before it is started again."""
KILL_EVERY_S = 5.0
"""A service is SIGKILLed this often during its scenario (as in the issue's runs)."""
NATS_SHORT_S = 5.0


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    fault: Fault
    min_duration_s: float = 0.0
    """The window is at least this long whatever `--duration` says (an outage longer than a
    timeout is the point of some scenarios)."""


async def _until(deadline: float) -> None:
    await asyncio.sleep(max(deadline - time.monotonic(), 0.0))


def kill_every(service: str) -> Fault:
    async def fault(system: FaultSystem, duration: float) -> float | None:
        deadline = time.monotonic() + duration
        lifted: float | None = None
        while time.monotonic() + KILL_DOWN_S < deadline:
            started = time.monotonic()
            system.kill(service)
            await asyncio.sleep(KILL_DOWN_S)
            system.restart(service)
            lifted = time.monotonic()
            await _until(min(started + KILL_EVERY_S, deadline))
        return lifted

    return fault


def pause(service: str) -> Fault:
    async def fault(system: FaultSystem, duration: float) -> float | None:
        system.pause(service)
        try:
            await asyncio.sleep(duration)
        finally:
            system.resume(service)
        return None

    return fault


def proxy(name: str, state: str) -> Fault:
    async def fault(system: FaultSystem, duration: float) -> float | None:
        system.proxy(name, state)
        try:
            await asyncio.sleep(duration)
        finally:
            system.proxy(name, "up")
        return None

    return fault


def nats_down(down_s: float | None) -> Fault:
    """SIGKILL the nats-server, start it again on its store after `down_s` (None: the whole
    window), then let the rest of the window run."""

    async def fault(system: FaultSystem, duration: float) -> float | None:
        deadline = time.monotonic() + duration
        system.nats.kill()
        await asyncio.sleep(duration if down_s is None else min(down_s, duration))
        system.nats.start()
        lifted = time.monotonic()
        await system.nats.ready()
        await _until(deadline)
        return lifted

    return fault


async def no_fault(_system: FaultSystem, duration: float) -> float | None:
    await asyncio.sleep(duration)
    return None


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario("baseline", "no fault: the load alone", no_fault),
        *(
            Scenario(
                f"kill-{service}",
                f"kill -9 of {service} every {KILL_EVERY_S:.0f} s, down {KILL_DOWN_S:.0f} s",
                kill_every(service),
            )
            for service in SERVICE_NAMES
        ),
        Scenario("stop-accounts", "accounts SIGSTOPped for the window, then SIGCONT", pause("accounts")),
        Scenario(
            "nats-restart",
            f"nats-server killed -9, restarted on its store after {NATS_SHORT_S:.0f} s",
            nats_down(NATS_SHORT_S),
        ),
        Scenario(
            "nats-outage",
            "nats-server killed -9 for the whole window (at least 30 s), restarted on its store",
            nats_down(None),
            min_duration_s=30.0,
        ),
        Scenario("mariadb-refuse", "MariaDB connections refused (RST)", proxy("mariadb", "refuse")),
        Scenario("mariadb-blackhole", "MariaDB black-holed (packets dropped)", proxy("mariadb", "blackhole")),
        Scenario("redis-refuse", "Redis connections refused (RST)", proxy("redis", "refuse")),
        Scenario("redis-blackhole", "Redis black-holed (packets dropped)", proxy("redis", "blackhole")),
        Scenario(
            "rabbitmq-cut", "the ingress's RabbitMQ connection cut (refused)", proxy("rabbitmq", "refuse")
        ),
        Scenario(
            "rabbitmq-blackhole",
            "the ingress's RabbitMQ black-holed (packets dropped)",
            proxy("rabbitmq", "blackhole"),
        ),
        Scenario(
            "persistence-paused",
            "persistence SIGSTOPped for the window (at least 30 s)",
            pause("persistence"),
            min_duration_s=30.0,
        ),
    )
}

CI_SCENARIOS = ["kill-accounts", "kill-cache", "nats-restart", "mariadb-blackhole", "redis-refuse"]
"""The short ones `tests/faults/test_fault_scenarios.py` runs (in CI)."""

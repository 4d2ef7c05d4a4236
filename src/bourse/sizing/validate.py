"""`bourse size validate`: run the plan's prediction on this machine and compare, per service,
the CPU it predicted with the CPU measured.

The load is the plan's (`plan_scenario`: the profile's user model scaled to `users` placing
`orders_per_s`), by default the profile's full load (the brief's 1,000 orders/s and 10,000
users) or, when this machine did not carry it in the profile's steps, the largest step it
carried (where the profile's costs were measured). The system is
started as `measure` starts it (one process per service, the crowd connected), the mix is
driven for `repeats` windows, and per service the median of the measured cores is set against
the plan's prediction (`plan.measured_cores`) for the rates achieved: if the generator fell short
of the target, the comparison is still of the same load."""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from bourse.sizing.loadgen import percentile
from bourse.sizing.measure import (
    DELIVERED,
    INTERRUPTED,
    Measurement,
    MeasureOptions,
    Run,
    run_async,
    running,
    say_line,
    servers_from,
    share,
)
from bourse.sizing.plan import measured_cores, plan_scenario
from bourse.sizing.profile import Profile, load_profile
from bourse.sizing.scenario import ORDER_ACTIONS, Action, Scenario
from bourse.sizing.system import Servers

DEFAULT_ORDERS_PER_S = 1000.0
DEFAULT_USERS = 10_000
TOLERANCE = 0.25
"""The issue's bound on the error per service."""


@dataclass(frozen=True, slots=True)
class Target:
    orders_per_s: float
    users: int
    why: str
    load: float | None = None
    """A step of the profile's scenario to run as it ran (every rate at this share, the crowd
    whole); None: the plan's scenario for `orders_per_s` and `users` (reads per user kept)."""


def choose_target(profile: Profile, orders_per_s: float | None, users: int | None) -> Target:
    """The load to validate: what was asked (the brief's 1,000 orders/s and 10,000 users for what
    was not); else the profile's full load (the brief's, for the brief) if its steps held it
    within the scenario's limits; else the largest step they held (the knee); else, if none
    held, the largest step that carried its orders."""
    if orders_per_s is not None or users is not None:
        return Target(
            orders_per_s if orders_per_s is not None else DEFAULT_ORDERS_PER_S,
            users if users is not None else DEFAULT_USERS,
            "as asked",
        )
    scenario = profile.scenario
    full = Target(
        scenario.orders_per_s(), scenario.users, f"the full load of the profile's scenario ({scenario.name})"
    )
    if not profile.steps:
        return full
    held = [s for s in profile.steps if not s.past_knee]
    if any(step.load >= 1.0 for step in held):
        return full
    if held:
        best = max(held, key=lambda step: step.load)
        why = "the largest load this machine held within the scenario's limits"
    else:
        carried = [s for s in profile.steps if s.orders_per_s >= DELIVERED * scenario.orders_per_s(s.load)]
        best = max(carried or profile.steps, key=lambda step: step.load)
        why = "no step held within the limits: the largest load this machine carried"
    return Target(
        scenario.orders_per_s(best.load),
        scenario.users,
        f"{why} in the profile's steps ({share(best.load)} of its scenario, every rate at that share)",
        load=best.load,
    )


@dataclass(slots=True)
class Validation:
    target: Target
    scenario: Scenario
    predicted: dict[str, float]
    """Per service, cores the plan predicts for the rates achieved (median run)."""
    measured: dict[str, float]
    """Per service, the median of the measured cores over the runs."""
    runs: list[dict[str, float]] = field(default_factory=list)
    orders_per_s: float = 0.0
    post_p99_ms: float = 0.0
    errors: float = 0.0

    def error(self, service: str) -> float:
        measured = self.measured.get(service, 0.0)
        return (self.predicted.get(service, 0.0) - measured) / measured if measured > 0 else math.inf

    @property
    def services(self) -> list[str]:
        return sorted(set(self.predicted) | set(self.measured))

    @property
    def total_error(self) -> float:
        measured = sum(self.measured.values())
        return (sum(self.predicted.values()) - measured) / measured if measured > 0 else math.inf

    def table(self) -> str:
        lines = [
            f"validated: {self.orders_per_s:,.0f} orders/s achieved (target {self.target.orders_per_s:,.0f}, "
            f"{self.target.why}), {self.scenario.users:,} users; median of {len(self.runs)} runs; "
            f"POST /order p99 {self.post_p99_ms:.0f} ms, errors {self.errors:.1%}",
            f"{'service':<14}{'predicted':>10}{'measured':>10}{'error':>8}",
        ]
        for service in self.services:
            error = self.error(service)
            mark = "" if abs(error) <= TOLERANCE else "  outside ±25 %"
            lines.append(
                f"{service:<14}{self.predicted.get(service, 0.0):>10.3f}"
                f"{self.measured.get(service, 0.0):>10.3f}"
                f"{error:>+8.0%}{mark}"
            )
        lines.append(
            f"{'total':<14}{sum(self.predicted.values()):>10.3f}{sum(self.measured.values()):>10.3f}"
            f"{self.total_error:>+8.0%}"
        )
        return "\n".join(lines)


async def validate(
    profile: Profile,
    target: Target,
    servers: Servers,
    say: Callable[[str], None],
    *,
    window_s: float = 20.0,
    warmup_s: float = 3.0,
    repeats: int = 3,
    keep: bool = False,
) -> Validation:
    if target.load is not None:
        scenario = profile.scenario
        rates = scenario.rates(target.load)
    else:
        scenario = plan_scenario(profile.scenario, users=target.users, orders_per_s=target.orders_per_s)
        rates = scenario.rates()
    say(
        f"validating {target.orders_per_s:,.0f} orders/s and {target.users:,} users ({target.why}); "
        f"the plan predicts {sum(measured_cores(profile, scenario, rates).values()):.2f} cores"
    )
    options = MeasureOptions(
        scenario=scenario, servers=servers, window_s=window_s, warmup_s=warmup_s, keep=keep
    )
    async with running(options, say) as m:
        await m.measure_crowd(scenario.users)
        await m.hold_open_orders()
        await m.warm_up(rates)
        await m.measure_idle()
        return await _runs(m, profile, target, scenario, rates, repeats)


async def _runs(
    m: Measurement,
    profile: Profile,
    target: Target,
    scenario: Scenario,
    rates: dict[Action, float],
    repeats: int,
) -> Validation:
    o = m.options
    runs: list[dict[str, float]] = []
    achieved_runs: list[dict[Action, float]] = []
    p99s: list[float] = []
    errors: list[float] = []
    need = math.ceil(rates[Action.CANCEL] * (o.warmup_s + o.window_s) * 1.2) + 20
    orders = sum(rates[a] for a in ORDER_ACTIONS)
    for index in range(1, repeats + 1):
        label = f"run {index}/{repeats}"

        async def attempt(label: str = label) -> Run:
            if len(m.generator.resting) < need:
                await m.generator.prepare_resting(need - len(m.generator.resting))
            await m.settle()
            m.say(f"{label}: the mix at {orders:,.0f} orders/s for {o.window_s:g} s")
            return await m.drive(label, rates)

        run = await m.undisturbed(label, attempt)
        achieved = dict.fromkeys(rates, 0.0)
        for sample in run.samples:
            achieved[sample.action] += 1 / run.window.seconds
        cores = run.window.cores()
        predicted = measured_cores(profile, scenario, achieved)
        posts = [s.done - s.sent for s in run.samples if s.is_post_order and not s.failed]
        failed = sum(1 for s in run.samples if s.failed) / max(len(run.samples), 1)
        runs.append(cores)
        achieved_runs.append(achieved)
        p99s.append(percentile(posts, 99) * 1000)
        errors.append(failed)
        m.say(
            f"{label}: {sum(achieved[a] for a in ORDER_ACTIONS):,.0f} orders/s, p99 {p99s[-1]:.0f} ms: "
            f"{sum(cores.values()):.2f} cores measured, "
            f"{sum(predicted.values()):.2f} predicted"
        )
    services = sorted({name for cores in runs for name in cores})
    measured = {name: statistics.median(cores.get(name, 0.0) for cores in runs) for name in services}
    median_rates = {a: statistics.median(r[a] for r in achieved_runs) for a in rates}
    return Validation(
        target=target,
        scenario=scenario,
        predicted=measured_cores(profile, scenario, median_rates),
        measured=measured,
        runs=runs,
        orders_per_s=sum(median_rates[a] for a in ORDER_ACTIONS),
        post_p99_ms=statistics.median(p99s),
        errors=statistics.median(errors),
    )


def validate_command(args: argparse.Namespace) -> int:
    """`bourse size validate` (its options: `bourse.sizing.commands`)."""
    try:
        profile = load_profile(args.profile)
    except ValueError as exc:
        print(f"bourse size validate: {exc}", file=sys.stderr)
        return 2
    target = choose_target(profile, args.orders_per_s, args.users)
    servers = servers_from(args)
    try:
        result = run_async(
            validate(
                profile,
                target,
                servers,
                say_line,
                window_s=args.window,
                repeats=args.repeats,
                keep=args.keep,
            )
        )
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"bourse size validate: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bourse size validate: interrupted; the system was stopped", file=sys.stderr)
        return INTERRUPTED
    print()
    print(result.table())
    return 0

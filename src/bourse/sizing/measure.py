"""`bourse size measure`: what each micro-action costs each service, measured on a running system
under a scenario's user model, and how the system holds as the whole mix is stepped up.

The method is the profile's (`bourse.sizing.profile.METHOD`): one action at a time. The system
runs one process per service (`system.py`), the scenario's crowd holds its WebSocket channels
(`crowd.py`), and:

1. idle: the crowd connected, nothing driven: each service's idle CPU (and the idle rates of
   every counter, NATS messages included);
2. per action, alone, at its full-load rate (`scenario.rates(1.0)`, at least `min_rate` so a rare
   action still measures): per service (CPU over the window - idle CPU) / actions sent, and what
   it set off, from the services' own counters (trades, SQL rows, Redis writes, WebSocket
   messages delivered, JetStream bytes) and the NATS server's /varz. Cancels and amends work on
   resting orders placed beforehand, outside the window;
3. crowd costs: pusher memory per connected user (resident memory with the crowd - without),
   pusher CPU per message delivered, memory per open order in accounts, matching and query
   (resident memory after resting N more orders), stream bytes per order;
4. steps: the whole mix at each of `scenario.steps.loads` (the crowd held throughout), until
   POST /order's p99 or the share of failed or late requests passes the scenario's limits (the
   knee is found, not guessed); each step records the measured cores per service next to the
   profile's prediction for the rates achieved, which is the check that the costs add up.

CPU is process CPU time (utime + stime), not wall time: other work on a shared box slows the
system down but does not add to its processes' CPU."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import httpx
import msgspec
import nats
from nats.aio.client import Client

from bourse.adapters.amqp import url_user
from bourse.config.amqp import amqp_topology
from bourse.config.settings import Settings
from bourse.sizing.crowd import Crowd, CrowdStats, crowd_users
from bourse.sizing.loadgen import AmqpPublisher, LoadGenerator, Sample, percentile, window_samples
from bourse.sizing.plan import DEFAULT_OPEN_ORDERS_PER_TRADER
from bourse.sizing.probes import (
    CLK_TCK,
    cpu_model,
    cpu_seconds,
    git_commit,
    machine_busy,
    rss_bytes,
    scrape,
    varz,
)
from bourse.sizing.profile import (
    METHOD,
    RABBITMQ,
    ActionCost,
    Machine,
    Profile,
    Step,
    save_profile,
)
from bourse.sizing.profile import (
    Crowd as CrowdCosts,
)
from bourse.sizing.scenario import COMMANDS, ORDER_ACTIONS, Action, Channel, Scenario
from bourse.sizing.system import Servers, SystemUnderTest, start_system, stop_system, stream_bytes
from bourse.sizing.workload import OrderMaker

PROFILE_VERSION = 1
INTERRUPTED = 130
"""Exit code after Ctrl-C or SIGTERM (the system under test is stopped first)."""
QUICK_USERS = 200
QUICK_ORDERS_PER_S = 150.0
QUICK_WINDOW_S = 5.0
"""A quick run's windows: at 3 s the same action's cost moved by 10-15 % from run to run."""
OPEN_ORDER_SERVICES = ("accounts", "matching", "query")
COUNTERS = {
    "trades": "bourse_order_to_trade_seconds_count",
    "sql_rows": "bourse_persistence_rows_total",
    "redis_writes": "bourse_redis_write_seconds_count",
    "ws_messages": "bourse_pusher_messages_delivered_total",
    "orders": "bourse_orders_total",
    "http_requests": "bourse_http_requests_total",
}
"""Induced counts: the name each is read under, summed over every service's /metrics."""
TRADES_DELIVERED = 'bourse_pusher_messages_delivered_total{kind="trades"}'
PUBLIC_KINDS = ("ticker", "trades", "depth", "kline")
"""Pusher message kinds counted per action as `ws_<kind>` (what `plan` scales by holders)."""
REPO = Path(__file__).resolve().parents[3]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MeasureOptions:
    scenario: Scenario
    servers: Servers = field(default_factory=Servers)
    quick: bool = False
    window_s: float = 20.0
    warmup_s: float = 3.0
    min_rate: float = 50.0
    """REST reads go at this rate at least, so a rare one sends enough to stand out of the noise
    (at 20/s, the pusher's idle wobble with 10,000 connections made 300-800 µs per read)."""
    open_orders: int = 20_000
    """Resting orders placed to measure the memory per open order."""
    settle_s: float = 60.0
    """At most this long between phases for the pipeline to drain (CPU back near idle)."""
    keep: bool = False
    """Keep the data folder (the services' logs)."""

    @classmethod
    def for_scenario(cls, scenario: Scenario, *, quick: bool = False, **overrides: object) -> MeasureOptions:
        """The full measure of a scenario (its windows of `steps.step_s`), or the quick look: a
        crowd of 200, at most 150 orders/s, 5 s windows, two steps."""
        if not quick:
            options = cls(scenario=scenario, window_s=scenario.steps.step_s)
        else:
            small = scenario.scaled(
                users=min(scenario.users, QUICK_USERS),
                orders_per_s=min(scenario.orders_per_s(), QUICK_ORDERS_PER_S),
            )
            steps = msgspec.structs.replace(small.steps, loads=[0.5, 1.0], step_s=QUICK_WINDOW_S)
            options = cls(
                scenario=msgspec.structs.replace(small, steps=steps),
                quick=True,
                window_s=QUICK_WINDOW_S,
                warmup_s=1.0,
                min_rate=50.0,
                open_orders=1_000,
                settle_s=2.0,
            )
        return dataclasses.replace(options, **overrides) if overrides else options  # type: ignore[arg-type]


@dataclass(slots=True)
class Mark:
    """The system at one instant: each process's CPU, each service's counters, NATS totals."""

    at: float
    cpu: dict[str, float | None]
    counters: dict[str, float]
    nats: dict[str, float]
    streams: dict[str, int]
    machine_s: float = 0.0
    """Busy CPU seconds of the whole machine (/proc/stat)."""
    tools_s: float = 0.0
    """CPU seconds of the measuring tools: this process (the load generator) and the crowd's."""


@dataclass(slots=True)
class Window:
    seconds: float
    cpu_s: dict[str, float]
    counts: dict[str, float]
    """Induced counts (COUNTERS' keys, `stream_bytes`, `nats_messages`, `nats_bytes`,
    `trades_delivered`) over the window."""

    other_cores: float = 0.0
    """Cores the machine spent on work that is neither the system nor the measuring tools."""

    def cores(self) -> dict[str, float]:
        return {name: used / self.seconds for name, used in self.cpu_s.items()}

    @property
    def disturbed(self) -> bool:
        return self.other_cores > DISTURBED_CORES


def between(before: Mark, after: Mark) -> Window:
    cpu = {}
    for name, start in before.cpu.items():
        end = after.cpu.get(name)
        if start is not None and end is not None:
            cpu[name] = end - start
    names = {**COUNTERS, "trades_delivered": TRADES_DELIVERED}
    names.update({f"ws_{kind}": f'{COUNTERS["ws_messages"]}{{kind="{kind}"}}' for kind in PUBLIC_KINDS})
    counts = {
        key: after.counters.get(name, 0.0) - before.counters.get(name, 0.0) for key, name in names.items()
    }
    counts["stream_bytes"] = float(sum(after.streams.values()) - sum(before.streams.values()))
    if before.nats and after.nats:
        counts["nats_messages"] = sum(after.nats[k] - before.nats[k] for k in ("in_msgs", "out_msgs"))
        counts["nats_bytes"] = sum(after.nats[k] - before.nats[k] for k in ("in_bytes", "out_bytes"))
    seconds = after.at - before.at
    other = after.machine_s - before.machine_s - sum(cpu.values()) - (after.tools_s - before.tools_s)
    return Window(seconds, cpu, counts, other_cores=max(other, 0.0) / seconds if seconds > 0 else 0.0)


@dataclass(slots=True)
class Idle:
    cores: dict[str, float]
    rates: dict[str, float]
    """Per second, each count with nothing driven (heartbeats, snapshots, the crowd's pings)."""

    def excess(self, window: Window) -> tuple[dict[str, float], dict[str, float]]:
        """(CPU seconds, counts) of the window beyond what idling would have done in it."""
        cpu = {name: used - self.cores.get(name, 0.0) * window.seconds for name, used in window.cpu_s.items()}
        counts = {
            key: value - self.rates.get(key, 0.0) * window.seconds for key, value in window.counts.items()
        }
        return cpu, counts


@dataclass(slots=True)
class Run:
    """A load driven for a warm-up and a measured window, and what the window saw."""

    window: Window
    samples: list[Sample]
    start: float
    end: float
    unsent: int = 0
    """Requests the generator could not send in time, over the whole drive."""


@dataclass(slots=True)
class Measurement:
    """The state of a measure as it goes (what the profile is made of)."""

    options: MeasureOptions
    system: SystemUnderTest
    crowd: Crowd
    generator: LoadGenerator
    nc: Client
    http: httpx.AsyncClient
    say: Callable[[str], None]
    notes: list[str] = field(default_factory=list)
    idle: Idle | None = None
    pusher_rss_per_user: float = 0.0
    costs: dict[Action, ActionCost] = field(default_factory=dict)
    trades_delivered_per_trade: float = 0.0
    crowd_connected: bool = True
    basis: float = 1.0
    """The load the costs were measured at (`cost_basis`)."""

    # ---------------------------------------------------------------------- readings

    async def mark(self) -> Mark:
        pids = self.system.pids()
        at = time.perf_counter()
        cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        machine_s = machine_busy()[0] / CLK_TCK
        tools_s = (cpu_seconds(os.getpid()) or 0.0) + self.crowd.cpu_seconds()
        ports = self.system.health_ports()
        scraped, nats_totals, streams = await asyncio.gather(
            asyncio.gather(*(scrape(self.http, port) for port in ports.values())),
            varz(self.http, self.system.nats_monitor_url),
            stream_bytes(self.nc, self.system.namespace),
        )
        counters: dict[str, float] = {}
        for service, metrics in zip(ports, scraped, strict=True):
            if not metrics:
                self.say(f"  {service}: its /metrics did not answer: its counts in this window are lost")
            for name, value in metrics.items():
                counters[name] = counters.get(name, 0.0) + value
        return Mark(at, cpu, counters, nats_totals, streams, machine_s, tools_s)

    async def settle(self) -> None:
        """Until the services' CPU over half a second is back near idle (what an action set off
        downstream is done; a step past the knee leaves a backlog that took over 15 s to drain,
        and measured into the next step), at most `settle_s`."""
        pids = self.system.pids()
        quiet = sum(self.idle.cores.values()) * 1.5 + 0.06 if self.idle is not None else UNKNOWN_IDLE
        started = time.monotonic()
        used = 0.0
        while time.monotonic() < started + self.options.settle_s:
            before = {name: cpu_seconds(pid) or 0.0 for name, pid in pids.items()}
            await asyncio.sleep(0.5)
            used = sum((cpu_seconds(pid) or 0.0) - before[name] for name, pid in pids.items()) / 0.5
            if used <= quiet:
                if time.monotonic() - started > 5.0:
                    self.say(f"  settled in {time.monotonic() - started:.0f} s")
                return
        self.say(f"  still {used:.2f} cores busy after {self.options.settle_s:g} s: going on")

    async def drive(self, label: str, rates: dict[Action, float]) -> Run:
        """Drive `rates` for the warm-up and the window; the window's marks are taken around it
        while the load runs. A progress line every 5 s of a long window."""
        o = self.options
        first = len(self.generator.samples)
        unsent = sum(self.generator.unsent.values())
        runner = asyncio.create_task(self.generator.run(rates, o.warmup_s + o.window_s + 0.3))
        try:
            await asyncio.sleep(o.warmup_s)
            before = await self.mark()
            end = before.at + o.window_s
            while (left := end - time.perf_counter()) > 0:
                await asyncio.sleep(min(left, 5.0))
                self.system.check_alive()
                if o.window_s >= 10 and end - time.perf_counter() > 1.0:
                    seen = window_samples(self.generator.samples[first:], before.at, time.perf_counter())
                    self.say(f"  {label}: {_sample_line(seen, time.perf_counter() - before.at)}")
            after = await self.mark()
            await runner
        finally:
            if not runner.done():
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner
        samples = window_samples(self.generator.samples[first:], before.at, after.at)
        unsent = sum(self.generator.unsent.values()) - unsent
        return Run(between(before, after), samples, before.at, after.at, unsent)

    async def undisturbed(self, label: str, attempt: Callable[[], Awaitable[Run]]) -> Run:
        """`attempt` (set-up and a driven window) again while other work on the machine took more
        than `DISTURBED_CORES` in the window, `DISTURBED_TRIES` times at most: a starved system
        batches more and spends less per action, which is not what it costs (a quick measure
        beside a bench read -39 %). The least disturbed window is kept, and the profile says so
        if even that one was disturbed."""
        runs: list[Run] = []
        for _ in range(DISTURBED_TRIES):
            run = await attempt()
            runs.append(run)
            if not run.window.disturbed:
                return run
            self.say(f"  {label}: other work took {run.window.other_cores:.2f} cores of the machine: again")
            await self.settle()
        best = min(runs, key=lambda run: run.window.other_cores)
        self.notes.append(f"{label}: measured with {best.window.other_cores:.2f} cores of other work")
        return best

    # ---------------------------------------------------------------------- phases

    async def measure_idle(self, label: str = "idle") -> Idle:
        o = self.options
        await self.settle()
        before = await self.mark()
        await asyncio.sleep(o.window_s)
        after = await self.mark()
        window = between(before, after)
        self.idle = Idle(
            window.cores(), {key: value / window.seconds for key, value in window.counts.items()}
        )
        total = sum(self.idle.cores.values())
        self.say(f"{label} {window.seconds:.1f} s: {total:.2f} cores ({_cores_text(self.idle.cores)})")
        return self.idle

    async def measure_action(self, action: Action, rate: float, *, label: str = "") -> ActionCost:
        """One action alone at `rate`: per service, its CPU over the idle measured last, per
        action sent. Cancels and amends get resting orders of their own first, market orders
        a book to take from (both placed outside the window)."""
        assert self.idle is not None
        o = self.options
        label = label or str(action)
        window = o.warmup_s + o.window_s + 0.3
        wanted = 0
        if action is Action.CANCEL:
            wanted = math.ceil(rate * window * 1.15) + 20
        elif action is Action.AMEND:
            wanted = min(math.ceil(rate * window * 1.15) + 20, 2_000)  # an order may be amended again
        elif action is Action.PLACE_MARKET:
            wanted = math.ceil(rate * window * MARKET_FILLS) + 20  # what the market orders will take

        async def attempt() -> Run:
            if wanted:
                self.generator.resting.clear()  # fresh orders known to rest
                placed = await self.generator.prepare_resting(wanted)
                self.say(f"{label}: {placed:,} resting orders placed first")
                await self.settle()
            self.say(f"{label}: driving {rate:,.0f}/s alone for {o.window_s:g} s (+{o.warmup_s:g} s warm-up)")
            return await self.drive(label, {action: rate})

        run = await self.undisturbed(label, attempt)
        sent = len(run.samples)
        if sent == 0:
            raise RuntimeError(f"{label}: nothing was sent in the window")
        cpu, counts = self.idle.excess(run.window)
        nats = {key: counts.pop(key, 0.0) for key in ("nats_messages", "nats_bytes")}
        cpu_us = {name: max(used, 0.0) / sent * 1e6 for name, used in cpu.items()}
        induced = {key: max(value, 0.0) / sent for key, value in counts.items() if key != "trades_delivered"}
        cost = ActionCost(
            rate=sent / run.window.seconds,
            sent=sent,
            cpu_us=cpu_us,
            nats_messages=max(nats["nats_messages"], 0.0) / sent,
            nats_bytes=max(nats["nats_bytes"], 0.0) / sent,
            induced=induced,
        )
        if action is Action.PLACE_LIMIT and self.crowd_connected and counts.get("trades", 0.0) > 0:
            self.trades_delivered_per_trade = max(counts.get("trades_delivered", 0.0), 0.0) / counts["trades"]
        failed = sum(1 for s in run.samples if s.failed)
        self.say(
            f"{label}: {cost.rate:,.0f}/s, {sent:,} sent, {failed} failed, p99 "
            f"{percentile([s.done - s.sent for s in run.samples], 99) * 1000:.0f} ms: "
            f"{cost.total_us:,.0f} µs/action ({_us_text(cpu_us)}); {cost.nats_messages:.1f} NATS msgs, "
            + ", ".join(f"{key} {value:.2f}" for key, value in induced.items() if value)
        )
        await self.settle()
        return cost

    async def measure_own_batches(self, action: Action, rate: float) -> ActionCost:
        """The services only `action` passes through (`OWN_BATCHES`: the RabbitMQ ingress and
        the broker) batch it alone, whatever the other commands do: their cost is taken with
        it alone at its own rate, the stages' (which every command shares) stay as measured at
        the commands' rate. At the commands' rate the ingress measured 0.8 ms per order, and 2.9
        in the mix at its own 18/s."""
        shared = self.costs[action]
        own = await self.measure_action(action, max(rate, MIN_OWN_RATE), label=f"{action} at its own rate")
        cpu_us = {
            name: own.cpu_us.get(name, 0.0) if name in OWN_BATCHES else us
            for name, us in shared.cpu_us.items()
        }
        return msgspec.structs.replace(shared, cpu_us=cpu_us)

    async def warm_up(self, rates: dict[Action, float]) -> None:
        """The mix at `rates` for a window, not measured: a fresh system's first orders pay for
        first uses (code paths, caches, the first snapshots, the database's pages); measured,
        they made the first step cost twice what the next one did per order."""
        o = self.options
        self.say(
            f"warm-up: the mix, {sum(rates.values()):,.0f} actions/s for {o.window_s:g} s (not measured)"
        )
        await self.generator.prepare_resting(math.ceil(rates.get(Action.CANCEL, 0.0) * o.window_s) + 20)
        await self.generator.run(rates, o.window_s)
        await self.settle()

    async def measure_without_crowd(self, rate: float) -> ActionCost:
        """With the crowd gone: idle, then limit orders at `rate`. What the pusher spends per
        order with nobody to deliver to is the part of its cost that is not fan-out."""
        await self.crowd.stop()
        self.crowd_connected = False
        self.say("crowd: disconnected")
        await self.settle()
        await self.measure_idle("idle without the crowd")
        return await self.measure_action(Action.PLACE_LIMIT, rate, label="place_limit without the crowd")

    async def measure_crowd(self, users: int) -> CrowdStats:
        """Connect the crowd; the pusher's resident memory per user from before to after."""
        pusher = self.system.service("pusher")
        before = rss_bytes(pusher.process.pid) if pusher is not None else None
        scenario = self.options.scenario
        holders = ", ".join(f"{channel} {count:,}" for channel, count in scenario.holders().items())
        self.say(f"crowd: connecting {users:,} users in {len(self.crowd.children)} processes ({holders})")
        started = time.monotonic()
        stats = await self.crowd.connect(
            self.system.ws_url,
            crowd_users(scenario, self.system.tokens),
            timeout=max(60.0, users / 50),
            progress=lambda s: self.say(f"crowd: {s.held:,} held, {s.ready:,} subscribed, {s.failed} failed"),
        )
        if stats.ready < users:
            self.notes.append(f"crowd: {stats.ready} of {users} users subscribed ({stats.failed} failed)")
        await asyncio.sleep(2.0)
        after = rss_bytes(pusher.process.pid) if pusher is not None else None
        if before is not None and after is not None and stats.held:
            self.pusher_rss_per_user = max(after - before, 0) / stats.held
        self.say(
            f"crowd: {stats.ready:,} of {users:,} subscribed in {time.monotonic() - started:.0f} s "
            f"({stats.errors or 'no errors'}); "
            f"pusher +{self.pusher_rss_per_user * stats.held / 2**20:.0f} MB, "
            f"{self.pusher_rss_per_user / 1024:.1f} KB per user"
        )
        return stats

    async def measure_open_orders(self, count: int) -> dict[str, float]:
        """Resident memory per open order in the services that hold them: RSS after resting
        `count` more orders (beyond the band, so they stay) minus before."""
        await self.settle()
        pids = {name: p.process.pid for name in OPEN_ORDER_SERVICES if (p := self.system.service(name))}
        before = {name: rss_bytes(pid) or 0 for name, pid in pids.items()}
        self.generator.resting.clear()
        placed = await self.generator.prepare_resting(count)
        await self.settle()
        await asyncio.sleep(1.0)
        after = {name: rss_bytes(pid) or 0 for name, pid in pids.items()}
        per_order = {name: max(after[name] - before[name], 0) / max(placed, 1) for name in pids}
        self.say(
            f"open orders: {placed:,} more resting: "
            + ", ".join(f"{name} {value:,.0f} B" for name, value in per_order.items())
            + " per order"
        )
        return per_order

    async def hold_open_orders(self) -> None:
        """Rest the plan's open orders (`DEFAULT_OPEN_ORDERS_PER_TRADER` per trader) for the rest
        of the run: the stages snapshot their state every 5 s, so their CPU grows with it, and
        the costs, the steps and `validate` must all see the state a plan assumes."""
        opens = DEFAULT_OPEN_ORDERS_PER_TRADER * self.options.scenario.traders
        self.say(f"the plan's open orders: {opens:,} resting ({DEFAULT_OPEN_ORDERS_PER_TRADER} per trader)")
        await self.generator.prepare_resting(opens)
        self.generator.resting.clear()  # they stay: the state, not a stock for cancels

    async def measure_step(self, load: float) -> StepRun:
        o = self.options
        scenario = o.scenario
        rates = scenario.rates(load)
        need = math.ceil(rates[Action.CANCEL] * (o.warmup_s + o.window_s) * 1.2) + 20
        label = f"step {share(load)}"

        async def attempt() -> Run:
            if len(self.generator.resting) < need:
                await self.generator.prepare_resting(need - len(self.generator.resting))
            await self.settle()
            self.say(
                f"{label}: the whole mix, {scenario.orders_per_s(load):,.0f} orders/s and "
                f"{sum(rates.values()):,.0f} actions/s, for {o.window_s:g} s"
            )
            return await self.drive(label, rates)

        run = await self.undisturbed(label, attempt)
        unsent = run.unsent
        achieved: dict[Action, float] = dict.fromkeys(rates, 0.0)
        for sample in run.samples:
            achieved[sample.action] += 1 / run.window.seconds
        limits = scenario.steps
        posts = [s.done - s.sent for s in run.samples if s.is_post_order and not s.failed]
        late = sum(1 for s in run.samples if s.sent - s.scheduled > limits.max_p99_ms / 1000)
        failed = sum(1 for s in run.samples if s.failed)
        error_share = (failed + late + unsent) / max(len(run.samples) + unsent, 1)
        p50, p99 = percentile(posts, 50) * 1000, percentile(posts, 99) * 1000
        past = not posts or p99 > limits.max_p99_ms or error_share > limits.max_error_share
        delivered = sum(achieved[a] for a in ORDER_ACTIONS) >= DELIVERED * scenario.orders_per_s(
            load
        ) and failed <= (1 - DELIVERED) * max(len(run.samples), 1)
        step = StepRun(load, achieved, run.window.cores(), p50, p99, error_share, past, delivered)
        self.say(
            f"{label}: {step.orders_per_s:,.0f} orders/s, POST /order p50 {p50:.0f} ms p99 {p99:.0f} ms, "
            f"{failed} failed + {late} late + {unsent} unsent of {len(run.samples) + unsent:,}: "
            f"{sum(step.cores.values()):.2f} cores" + ("  <- past the knee" if past else "")
        )
        await self.settle()
        return step


@dataclass(frozen=True, slots=True)
class StepRun:
    """A step as driven; it becomes a `Step` once the costs are known to predict it from."""

    load: float
    achieved: dict[Action, float]
    """Actions/s sent in the window."""
    cores: dict[str, float]
    post_p50_ms: float
    post_p99_ms: float
    error_share: float
    past_knee: bool
    delivered: bool
    """The orders/s asked for were sent (DELIVERED of them at least) and answered: the load was
    carried, whatever its latency (a busy machine's other work slows answers, not our CPU)."""

    @property
    def orders_per_s(self) -> float:
        return sum(self.achieved.get(action, 0.0) for action in ORDER_ACTIONS)

    def step(self, profile: Profile, users: int) -> Step:
        return Step(
            load=self.load,
            orders_per_s=self.orders_per_s,
            users=users,
            cores=self.cores,
            predicted_cores=profile.predicted_cores(self.achieved),
            post_p50_ms=self.post_p50_ms,
            post_p99_ms=self.post_p99_ms,
            error_share=self.error_share,
            past_knee=self.past_knee,
        )


def cost_basis(runs: list[StepRun]) -> float:
    """The load the costs are measured at: the full load (1.0), or, when the machine did not
    carry it, the largest step that delivered its orders; the smallest step if none did.
    Batching makes a command's cost fall as the load rises, so costs are taken at the rates the
    plan is for, as far as this machine can drive them."""
    delivered = [run.load for run in runs if run.delivered]
    return min(max(delivered), 1.0) if delivered else min(run.load for run in runs)


def share(load: float) -> str:
    """A load as a share of the scenario: 25%, 12.5%."""
    return f"{load * 100:.3g}%"


def active_floor(lows: list[ActionCost]) -> dict[str, float]:
    """Per service, the CPU (cores over idle) it spends while order commands flow, however few:
    the median over `lows` (limit orders alone at half the commands' rate, `LOW_SHARE`, where
    the stages already run batch after batch) of its CPU. The median, because a window that
    catches one more of the stages' 5 s snapshots than the next read up to 25 % more in a
    quick run."""
    services = {service for low in lows for service in low.cpu_us}
    floors = {
        service: statistics.median(low.cpu_us.get(service, 0.0) * low.rate / 1e6 for low in lows)
        for service in services
    }
    return {service: floor for service, floor in floors.items() if floor > 0}


def fan_out_cost(alone: ActionCost, crowd: ActionCost) -> float:
    """Pusher CPU µs per WebSocket message delivered: the same orders with and without the
    crowd, the difference of the pusher's cost per order over the difference of the messages
    delivered per order (the part that grows with the crowd)."""
    messages = crowd.induced.get("ws_messages", 0.0) - alone.induced.get("ws_messages", 0.0)
    extra = crowd.cpu_us.get("pusher", 0.0) - alone.cpu_us.get("pusher", 0.0)
    return max(extra, 0.0) / messages if messages > 0 else 0.0


def _cores_text(cores: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in sorted(cores.items(), key=lambda kv: -kv[1]))


def _us_text(cpu_us: dict[str, float]) -> str:
    return ", ".join(
        f"{name} {value:,.0f}" for name, value in sorted(cpu_us.items(), key=lambda kv: -kv[1]) if value >= 1
    )


def _sample_line(samples: list[Sample], seconds: float) -> str:
    latencies = [s.done - s.sent for s in samples]
    failed = sum(1 for s in samples if s.failed)
    return (
        f"{len(samples) / max(seconds, 1e-9):,.0f}/s so far, p50 {percentile(latencies, 50) * 1000:.0f} ms, "
        f"p99 {percentile(latencies, 99) * 1000:.0f} ms, {failed} failed"
    )


async def amqp_publisher(system: SystemUnderTest) -> AmqpPublisher | None:
    """With a RabbitMQ URL, a publisher to the ingress's exchange (the scenario's RabbitMQ orders
    go there); without one, None (they go over REST)."""
    url = system.servers.rabbitmq_url
    if not url:
        return None
    topology = amqp_topology(Settings(namespace=system.namespace, rabbitmq_url=url, _env_file=None))
    return await AmqpPublisher.connect(url, topology.exchange, topology.routing_key, url_user(url))


def machine() -> Machine:
    return Machine(
        cpus=os.cpu_count() or 1,
        cpu_model=cpu_model(),
        python=platform.python_version(),
        commit=git_commit(REPO),
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def describe_method(options: MeasureOptions, notes: list[str], basis: float) -> str:
    o = options
    lines = [
        METHOD,
        f"the steps come first and find the knee; the costs are then measured at {share(basis)} of the "
        "scenario (the full load, or the largest step the machine carried): each order command (limit, "
        "market, cancel, amend, RabbitMQ) alone at the rate of all the order commands there, since they "
        "share the stages' batches and the pushers' ticks (so each pays the share of a batch it pays in "
        "the mix; alone at its own small rate a command paid a whole batch, +77 % at the brief's first "
        f"step); REST reads alone at their own rate (at least {o.min_rate:g}/s)",
        f"windows of {o.window_s:g} s after {o.warmup_s:g} s of warm-up; per-service costs below zero "
        "(noise) are counted as 0",
        f"the active floor: limit orders also alone at half the commands' rate, right after, "
        f"{FLOOR_WINDOWS} windows; per service the median of its CPU there is the least it spends "
        "while any order command flows (its consumers run batch after batch however few orders "
        "come); a prediction is idle + the larger of the floor and the sum of rate x cost",
        "the pusher's cost per WebSocket message: limit orders at the same rate with and without the crowd",
        f"system: one process per service; {o.servers.describe()}",
        f"steps: the crowd of {o.scenario.users:,} users held throughout, the actions at the step's share",
    ]
    if o.servers.rabbitmq_url is None:
        lines.append("amqp_order: no RabbitMQ URL given, so these orders were sent over REST (POST /order)")
    if o.quick:
        lines.append("quick: a small crowd, short windows, two steps: a first look, not a reference")
    return "; ".join(lines + notes)


async def measure(options: MeasureOptions, say: Callable[[str], None]) -> Profile:
    """Run the whole measure and return the profile (the caller writes it)."""
    scenario = options.scenario
    say(
        f"scenario {scenario.name}: {scenario.users:,} users ({scenario.traders:,} traders), "
        f"{scenario.orders_per_s():,.0f} orders/s at full load; windows {options.window_s:g} s "
        f"(+{options.warmup_s:g} s warm-up)"
    )
    async with running(options, say) as m:
        return await _phases(m)


@contextlib.asynccontextmanager
async def running(options: MeasureOptions, say: Callable[[str], None]) -> AsyncIterator[Measurement]:
    """The system under test, its crowd connected and a load generator ready, as one
    `Measurement`; everything stopped in reverse order on the way out (`measure` and
    `validate` both run in one)."""
    scenario = options.scenario
    traders = max(scenario.traders, 1)
    system = await start_system(options.servers, traders, say, keep=options.keep)
    crowd: Crowd | None = None
    generator: LoadGenerator | None = None
    amqp: AmqpPublisher | None = None
    nc: Client | None = None
    try:
        crowd = await Crowd.start(scenario.users)
        amqp = await amqp_publisher(system)
        generator = LoadGenerator(
            system.api,
            system.tokens,
            OrderMaker(scenario.markets, traders),
            amqp=amqp,
        )
        nc = await nats.connect(system.nats_url)
        async with httpx.AsyncClient() as http:
            yield Measurement(options, system, crowd, generator, nc, http, say)
    finally:
        if generator is not None:
            generator.close()
        if amqp is not None:
            with contextlib.suppress(Exception):
                await amqp.close()
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        if crowd is not None:
            await crowd.stop()
        say("stopping the system")
        await stop_system(system, keep=options.keep)
        if options.keep:
            say(f"kept the data folder and logs: {system.workdir}")


DELIVERED = 0.9
UNKNOWN_IDLE = 0.35
"""Cores under which the system counts as settled before its idle is measured (the crowd of
10,000 alone keeps the pusher at 0.06-0.09)."""
OWN_BATCHES = frozenset({"amqp-ingress", RABBITMQ})
"""Services one action alone passes through (RabbitMQ orders): they batch it by its own rate."""
MIN_OWN_RATE = 5.0
DISTURBED_CORES = 0.3
"""A window in which other work on the machine took more than this is measured again."""
DISTURBED_TRIES = 3
LOW_SHARE = 0.5
"""Limit orders are also driven at this share of the commands' rate, right after the full rate:
each service's CPU there is its active floor (`active_floor`)."""
FLOOR_WINDOWS = 3
"""Windows at the low rate; the floor is their median."""
KNEE_HALVINGS = 3
"""When the scenario's first step already passes the limits, the load is halved this many times
at most to find one that holds (the knee is found, not assumed to be below the first step)."""
MARKET_FILLS = 2.2
"""Resting orders placed per market order to come, so the book does not run dry in the window
(a market order of the mix takes about 1.7)."""


async def _phases(m: Measurement) -> Profile:
    o = m.options
    scenario = o.scenario
    await m.measure_crowd(scenario.users)
    await m.hold_open_orders()
    await m.warm_up(scenario.rates(scenario.steps.loads[0]))
    idle = await m.measure_idle()
    runs: list[StepRun] = []
    for load in scenario.steps.loads:
        run = await m.measure_step(load)
        runs.append(run)
        if run.past_knee:
            break
    load = runs[0].load
    for _ in range(KNEE_HALVINGS):  # the first step already passed: look below it
        if any(not run.past_knee for run in runs):
            break
        load /= 2
        m.say(f"the first step passed the limits: trying {share(load)}")
        runs.insert(0, await m.measure_step(load))
    held = [run.load for run in runs if not run.past_knee]
    knee = max(held) if held else None
    limits = scenario.steps
    where = f"{share(knee)} of the scenario" if knee is not None else "the first step already passed it"
    m.say(f"knee: {where} (limits {limits.max_p99_ms:g} ms p99, {limits.max_error_share:.0%} errors)")
    basis = cost_basis(runs)
    m.basis = basis
    rates = scenario.rates(basis)
    flow = sum(rates[action] for action in COMMANDS)
    m.say(
        f"costs at {share(basis)} of the scenario (the full load, or what was carried): each order command "
        f"alone at the commands' rate there, {flow:,.0f}/s; each REST read alone at its own rate"
    )
    lows: list[ActionCost] = []
    for action in Action:
        rate = flow if action in COMMANDS else max(rates[action], o.min_rate)
        m.costs[action] = await m.measure_action(action, rate)
        if action is Action.PLACE_LIMIT:  # right after, so that both see the same system
            per_trade = m.trades_delivered_per_trade  # as delivered at the commands' rate
            for index in range(1, FLOOR_WINDOWS + 1):
                label = f"{action} at half that rate ({index}/{FLOOR_WINDOWS})"
                lows.append(await m.measure_action(action, rate * LOW_SHARE, label=label))
            m.trades_delivered_per_trade = per_trade
    if o.servers.rabbitmq_url and rates[Action.AMQP_ORDER] > 0:
        m.costs[Action.AMQP_ORDER] = await m.measure_own_batches(Action.AMQP_ORDER, rates[Action.AMQP_ORDER])
    main = m.costs[Action.PLACE_LIMIT]
    active = active_floor(lows)
    per_order = await m.measure_open_orders(o.open_orders)
    alone = await m.measure_without_crowd(main.rate)
    m.say(f"active floor while orders flow: {sum(active.values()):.2f} cores ({_cores_text(active)})")
    trades_holders = scenario.holders().get(Channel.TRADES, 0)
    crowd_costs = CrowdCosts(
        users=m.crowd.users,
        ws_message_cpu_us=fan_out_cost(alone, main),
        memory_per_user_bytes=m.pusher_rss_per_user,
        memory_per_open_order_bytes=per_order,
        stream_bytes_per_order=main.induced.get("stream_bytes", 0.0),
        ws_messages_per_trade=m.trades_delivered_per_trade / trades_holders if trades_holders else 0.0,
    )
    profile = Profile(
        version=PROFILE_VERSION,
        scenario=scenario,
        machine=machine(),
        method=describe_method(o, m.notes, basis),
        idle_cores=idle.cores,
        actions=dict(m.costs),
        crowd=crowd_costs,
        knee_load=knee,
        active_cores=active,
    )
    steps = [run.step(profile, m.crowd.users) for run in runs]
    for step in steps:
        measured, predicted = sum(step.cores.values()), sum(step.predicted_cores.values())
        m.say(
            f"step {share(step.load)}: {measured:.2f} cores measured, {predicted:.2f} predicted "
            f"({(predicted - measured) / max(measured, 1e-9):+.0%})"
        )
    return msgspec.structs.replace(profile, steps=steps)


# --------------------------------------------------------------------------------- output


SHORT = {
    "accounts": "accts",
    "matching": "match",
    "persistence": "persist",
    "statistics": "stats",
    "amqp-ingress": "amqp",
    "nats-server": "nats",
    "gateway": "gatew",
    "rabbitmq": "rabbit",
}


def cost_table(profile: Profile) -> str:
    """The cost per action per service (CPU µs), NATS messages and what each action set off."""
    services = profile.services
    head = (
        f"{'action':<14}"
        + "".join(f"{SHORT.get(s, s)[:7]:>8}" for s in services)
        + f"{'total':>8}{'nats':>6}"
    )
    lines = [
        "CPU µs per action, per service (idle subtracted), and NATS messages per action; active: the "
        "least each service spends while any order command flows",
        head,
    ]
    for action, cost in profile.actions.items():
        lines.append(
            f"{action!s:<14}"
            + "".join(f"{cost.cpu_us.get(s, 0.0):>8,.0f}" for s in services)
            + f"{cost.total_us:>8,.0f}{cost.nats_messages:>6.1f}"
        )
    for label, cores in (("idle (cores)", profile.idle_cores), ("active (cores)", profile.active_cores)):
        lines.append(
            f"{label:<14}"
            + "".join(f"{cores.get(s, 0.0):>8.3f}" for s in services)
            + f"{sum(cores.values()):>8.3f}"
        )
    lines += [
        "",
        "induced per action: "
        + "; ".join(
            f"{action} " + ", ".join(f"{k} {v:.2f}" for k, v in cost.induced.items() if v)
            for action, cost in profile.actions.items()
        ),
    ]
    c = profile.crowd
    lines += [
        "",
        f"crowd of {c.users:,}: pusher {c.memory_per_user_bytes / 1024:.1f} KB per user, "
        f"{c.ws_message_cpu_us:.1f} µs per WebSocket message; stream bytes per order "
        f"{c.stream_bytes_per_order:,.0f}; per open order "
        + ", ".join(f"{k} {v:,.0f} B" for k, v in c.memory_per_open_order_bytes.items()),
    ]
    if profile.steps:
        lines += [
            "",
            f"{'step':>6}{'orders/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'errors':>8}{'cores':>8}"
            f"{'predicted':>10}{'diff':>7}",
        ]
        for step in profile.steps:
            measured, predicted = sum(step.cores.values()), sum(step.predicted_cores.values())
            lines.append(
                f"{share(step.load):>6}{step.orders_per_s:>10,.0f}{step.post_p50_ms:>8.0f}{step.post_p99_ms:>8.0f}"
                f"{step.error_share:>8.1%}{measured:>8.2f}{predicted:>10.2f}"
                f"{(predicted - measured) / max(measured, 1e-9):>+7.0%}"
                + ("  past the knee" if step.past_knee else "")
            )
        knee = (
            f"{share(profile.knee_load)} of the scenario"
            if profile.knee_load is not None
            else "below the first step"
        )
        lines.append(f"knee: {knee}")
    return "\n".join(lines)


def write_report(profile: Profile, path: Path, source: str) -> Path | None:
    """The HTML report of the profile (`bourse.sizing.report`) with the plan for its own scenario;
    None when the report cannot be drawn here (matplotlib missing)."""
    from bourse.sizing.plan import make_plan, plan_scenario
    from bourse.sizing.report import html_report

    scenario = profile.scenario
    target = plan_scenario(scenario, users=scenario.users, orders_per_s=scenario.orders_per_s())
    try:
        path.write_text(html_report(make_plan(profile, target), profile, source))
    except ImportError:
        return None
    return path


def say_line(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def run_measure(options: MeasureOptions, out: Path) -> int:
    """The CLI's entry: measure, write the profile (and the report), print the table."""

    async def main() -> Profile:
        task = asyncio.current_task()
        if task is not None:  # SIGTERM stops the system as Ctrl-C does
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await measure(options, say_line)

    try:
        profile = run_async(main())
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"bourse size measure: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bourse size measure: interrupted; the system was stopped, nothing written", file=sys.stderr)
        return INTERRUPTED
    out.parent.mkdir(parents=True, exist_ok=True)
    save_profile(profile, out)
    print()
    print(cost_table(profile))
    print(f"\nprofile: {out}")
    html = write_report(profile, out.with_suffix(".html"), str(out))
    if html is not None:
        print(f"report: {html}")
    return 0


def run_async(coro: Awaitable[T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


def servers_from(args: argparse.Namespace) -> Servers:
    return Servers(
        nats_url=args.nats_url,
        nats_monitor_url=args.nats_monitor_url,
        sql_url=args.sql_url,
        redis_url=args.redis_url,
        rabbitmq_url=args.rabbitmq_url,
    )


def measure_command(args: argparse.Namespace) -> int:
    """`bourse size measure` (its options: `bourse.sizing.commands`)."""
    from bourse.sizing.scenario import load_scenario

    try:
        scenario = load_scenario(args.scenario)
    except ValueError as exc:
        print(f"bourse size measure: {exc}", file=sys.stderr)
        return 2
    overrides: dict[str, object] = {"servers": servers_from(args), "keep": args.keep}
    if args.window is not None:
        overrides["window_s"] = args.window
    options = MeasureOptions.for_scenario(scenario, quick=args.quick, **overrides)
    suffix = "-quick" if args.quick else ""
    out = args.out if args.out is not None else Path(f"profile-{scenario.name}{suffix}.json")
    return run_measure(options, out)

"""A sizing plan: from a measured profile and a target load to cores, instances, shards and market
groups per service, with where a single writer caps the load, what NATS, SQL and Redis carry,
memory, stream storage, and what moving each service off Python would save.

Pure arithmetic over a `Profile` and a `Scenario` (no I/O; an import contract keeps it so):
`bourse size plan` reads the files and prints, `bourse.sizing.report` draws.

How the numbers are made:

- The scenario is scaled to the target (`plan_scenario`): same behaviour per user, the users
  asked for, per-trader rates scaled to the orders asked for, REST reads rescaled to a total if
  one is given.
- CPU per service is the profile's prediction (`Profile.predicted_cores`: idle + the sum of
  rate x cost per action, or idle + the active floor where that is more; a service planned on
  several processes pays idle and at least the floor in each), corrected for the size of the
  crowd (`websocket_load`), then multiplied by the factor of a service rewritten off Python
  (`--rewrite`).
- Each service then scales by its kind (`SCALING`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import msgspec

from bourse.contracts.subjects import STREAMS
from bourse.sizing.profile import NATS, RABBITMQ, Profile
from bourse.sizing.scenario import PRIVATE_CHANNELS, Action, Channel, Scenario

READ_ACTIONS = (Action.READ_DEPTH, Action.READ_BALANCES, Action.READ_ORDERS)
PUSHER = "pusher"
MAX_PER_HOLDER_PER_S = {Channel.TRADES: 10.0, Channel.DEPTH: 10.0, Channel.TICKER: 1.0, Channel.KLINE: 1.0}
"""The most messages a second one holder gets from a public channel, whatever the trade rate: the
pushers send trades and depth at most every 100 ms tick, tickers and k-lines at most each second
(docs/architecture.md, WebSocket pushers)."""
DEFAULT_OPEN_ORDERS_PER_TRADER = 10
REWRITE_FACTOR = 0.1
"""The CPU share a service keeps once rewritten off Python, for the ranking `plan` always prints.
An assumption (a compiled rewrite of a NATS-bound service), set per service with `--rewrite`."""
RETENTION_DAYS = max(stream.max_age_s for stream in STREAMS) / 86_400


class Scaling(StrEnum):
    """How a service meets more load."""

    INSTANCES = "instances"
    MEMBER_SHARDS = "shards"
    MARKET_GROUPS = "groups"
    ONE_WRITER = "writer"
    SERVER = "server"


SCALING: dict[str, Scaling] = {
    "gateway": Scaling.INSTANCES,
    "query": Scaling.INSTANCES,
    "pusher": Scaling.INSTANCES,
    "amqp-ingress": Scaling.INSTANCES,
    "auth": Scaling.INSTANCES,
    "ids": Scaling.INSTANCES,
    "accounts": Scaling.MEMBER_SHARDS,
    "matching": Scaling.MARKET_GROUPS,
    "statistics": Scaling.MARKET_GROUPS,
    "persistence": Scaling.ONE_WRITER,
    "cache": Scaling.ONE_WRITER,
    NATS: Scaling.SERVER,
    RABBITMQ: Scaling.SERVER,
}
"""Why each service scales as it does (docs/architecture.md, Order flow and Processes):

- instances: stateless. Every instance serves the same queue group (NATS is the address), so any
  instance takes any request and instances add capacity. Each is one Python process (one event
  loop, one GIL), so one instance carries at most one core: instances = ceil(cores / headroom).
- shards (accounts): a single writer per member shard; members are spread over the shards, so
  shards = ceil(cores / headroom), but one member's orders all go through one shard: a member
  cannot place more than headroom x 1e6 / (µs per order) orders a second.
- groups (matching, statistics): a market's book and aggregates are one writer's state; markets
  are grouped per process, groups = ceil(cores / headroom), never more groups than markets, and
  one market is capped at headroom x 1e6 / (µs per order in the service) orders a second.
- writer (persistence, cache): one writer per database / Redis, which stores the last applied
  stream position with the data in the same transaction; a second writer needs a second store
  (not built). One instance; the whole exchange is capped at headroom x 1e6 / (µs per order).
- server (nats-server, the RabbitMQ broker): not Python, multi-threaded (Go; Erlang with a
  scheduler per core): one server uses several cores (each node of a replicated cluster does
  about this work)."""
SERVER_KINDS = {NATS: "Go, multi-threaded", RABBITMQ: "Erlang, one scheduler per core"}

UNIT_NAMES = {
    Scaling.INSTANCES: ("instance", "instances"),
    Scaling.MEMBER_SHARDS: ("shard", "shards"),
    Scaling.MARKET_GROUPS: ("group", "groups"),
    Scaling.ONE_WRITER: ("writer", "writers"),
    Scaling.SERVER: ("core", "cores"),
}

WHOLE_STATE_PER_INSTANCE = frozenset({"query"})
"""Services whose every instance holds every open order (the query read model is rebuilt by each
instance from the streams); the others' open orders are split over their shards or groups."""


def _ceil(value: float) -> int:
    """Ceil that does not turn 1.8 / 0.6 = 3.0000000000000004 into 4."""
    return max(1, math.ceil(value - 1e-9))


@dataclass(frozen=True, slots=True)
class WebSocketLoad:
    """WebSocket messages a second at the plan, and how many the profile's action costs miss.

    The model, from what a profile measures with its own crowd:
    - the trades channel: every trade goes to every holder of its market's channel, so its
      messages = trades/s x holders of `trades` x `Crowd.ws_messages_per_trade` (messages of the
      trades channel delivered per trade per holder, as measured);
    - the other public channels (`ticker`, `depth`, `kline`): per action, the messages of the
      channel it set off (`induced["ws_<channel>"]`, e.g. `ws_ticker`) times the plan's holders
      over the measured holders of that channel. A profile without those figures cannot scale
      them: they stay as measured, and the channels are listed in `unscaled`;
    - no holder gets more than `MAX_PER_HOLDER_PER_S` of a public channel (the pushers conflate);
    - everything else an action set off (`induced["ws_messages"]` less the public channels above:
      the member's own orders, trades and balances) goes to one member whatever the crowd, so it
      is taken as measured per action.
    The profile's per-action costs already hold the public messages delivered to the crowd it was
    measured with, so the pusher's CPU is corrected by `extra_per_s` (public messages at the plan
    less those to the measured crowd at the plan's rates; negative for a smaller crowd), at
    `Crowd.ws_message_cpu_us` each."""

    messages_per_s: float
    market_data_per_s: float
    """Public channels' messages a second at the plan."""
    extra_per_s: float
    trades_per_s: float
    by_channel: dict[Channel, float] = field(default_factory=dict)
    """Public messages a second per channel held at the plan."""
    unscaled: tuple[Channel, ...] = ()
    """Public channels held that the profile gives no per-channel figure for (kept as measured)."""


@dataclass(frozen=True, slots=True)
class ServicePlan:
    service: str
    scaling: Scaling
    cores: float
    """CPU cores at the plan (after any rewrite factor)."""
    python_cores: float
    """CPU cores as measured (before any rewrite factor)."""
    units: int
    """Instances, shards, groups, writers, or the NATS server's cores at the headroom."""
    us_per_order: float
    """CPU µs per order placed, the scenario's mix of actions (without idle)."""
    cap_orders_per_s: float | None
    """Orders/s one market (groups), one member (shards) or the whole exchange (writer) can take."""
    fits: bool
    memory_bytes: float
    """Resident memory across all its units (connections for the pusher, open orders)."""
    memory_per_unit_bytes: float
    rewrite: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def unit_name(self) -> str:
        one, many = UNIT_NAMES[self.scaling]
        return one if self.units == 1 else many


@dataclass(frozen=True, slots=True)
class Saving:
    """What rewriting one service off Python at `factor` of its CPU would save."""

    service: str
    factor: float
    cores_saved: float
    units_before: int
    units_after: int


@dataclass(frozen=True, slots=True)
class Plan:
    scenario: Scenario
    headroom: float
    cores_per_machine: int
    rates: dict[Action, float]
    orders_per_s: float
    websocket: WebSocketLoad
    services: list[ServicePlan]
    hot_market_share: float
    open_orders: int
    nats_messages_per_s: float
    nats_bytes_per_s: float
    sql_rows_per_s: float
    redis_writes_per_s: float
    stream_bytes_per_day: float
    savings: list[Saving] = field(default_factory=list)
    unmeasured: dict[Action, float] = field(default_factory=dict)
    """Actions the scenario drives that the profile has no cost for (left out of every figure)."""

    @property
    def total_cores(self) -> float:
        return sum(service.cores for service in self.services)

    @property
    def provisioned_cores(self) -> float:
        """Cores to provision so that every service runs at the headroom."""
        return self.total_cores / self.headroom

    @property
    def machines(self) -> int:
        return _ceil(self.provisioned_cores / self.cores_per_machine)

    @property
    def hot_market_orders_per_s(self) -> float:
        return self.orders_per_s * self.hot_market_share

    @property
    def memory_bytes(self) -> float:
        return sum(service.memory_bytes for service in self.services)

    @property
    def stream_bytes_kept(self) -> float:
        """JetStream storage at this rate once the streams hold their full retention (per replica)."""
        return self.stream_bytes_per_day * RETENTION_DAYS

    @property
    def fits(self) -> bool:
        return all(service.fits for service in self.services)

    def service(self, name: str) -> ServicePlan:
        for service in self.services:
            if service.service == name:
                return service
        raise KeyError(name)


def plan_scenario(
    base: Scenario, *, users: int, orders_per_s: float, reads_per_s: float | None = None
) -> Scenario:
    """The base behaviour for `users` placing `orders_per_s`; with `reads_per_s`, the three REST
    reads rescaled to that total, their mix kept."""
    if orders_per_s <= 0 or users < 1:
        raise ValueError("a plan needs orders/s > 0 and users >= 1")
    scenario = base.scaled(users=users, orders_per_s=orders_per_s)
    if reads_per_s is None:
        return scenario
    if reads_per_s < 0:
        raise ValueError("reads/s must not be negative")
    rates = scenario.rates()
    now = sum(rates[action] for action in READ_ACTIONS)
    if now <= 0:
        if reads_per_s == 0:
            return scenario
        raise ValueError(
            f"scenario {base.name!r} reads nothing over REST: no mix to rescale to {reads_per_s}/s"
        )
    factor = reads_per_s / now
    r = scenario.reading
    reading = msgspec.structs.replace(
        r,
        depth_per_s=r.depth_per_s * factor,
        balances_per_s=r.balances_per_s * factor,
        orders_per_s=r.orders_per_s * factor,
    )
    return msgspec.structs.replace(scenario, reading=reading)


def _induced(profile: Profile, rates: Mapping[Action, float], what: str) -> float:
    return sum(
        rate * cost.induced.get(what, 0.0)
        for action, rate in rates.items()
        if (cost := profile.actions.get(action)) is not None
    )


def measured_holders(profile: Profile) -> dict[Channel, int]:
    """The channel holders the profile was measured with (its scenario at its crowd's size)."""
    return profile.scenario.holders(profile.crowd.users / profile.scenario.users)


def websocket_load(profile: Profile, scenario: Scenario, rates: Mapping[Action, float]) -> WebSocketLoad:
    """WebSocket messages a second for `scenario` at `rates` (the model: `WebSocketLoad`)."""
    trades = _induced(profile, rates, "trades")
    holders, measured_at = scenario.holders(), measured_holders(profile)
    by_channel: dict[Channel, float] = {}
    measured = 0.0
    unscaled: list[Channel] = []
    for channel, count in holders.items():
        if channel in PRIVATE_CHANNELS:
            continue
        then = measured_at.get(channel, 0)
        if channel is Channel.TRADES:
            per_holder = trades * profile.crowd.ws_messages_per_trade
            sent_then = per_holder * then
        else:
            sent_then = _induced(profile, rates, f"ws_{channel}")
            per_holder = sent_then / then if then else 0.0
            if not then or not any(f"ws_{channel}" in cost.induced for cost in profile.actions.values()):
                unscaled.append(channel)
        cap = MAX_PER_HOLDER_PER_S.get(channel, max(MAX_PER_HOLDER_PER_S.values()))
        by_channel[channel] = min(per_holder, cap) * count
        measured += sent_then
    market_data = sum(by_channel.values())
    extra = market_data - measured
    return WebSocketLoad(
        messages_per_s=max(0.0, _induced(profile, rates, "ws_messages") + extra),
        market_data_per_s=market_data,
        extra_per_s=extra,
        trades_per_s=trades,
        by_channel=by_channel,
        unscaled=tuple(unscaled),
    )


def measured_cores(profile: Profile, scenario: Scenario, rates: Mapping[Action, float]) -> dict[str, float]:
    """CPU cores per service at `rates` on the profile's machine, Python as it is:
    `Profile.predicted_cores` with the pusher corrected for the crowd. The pusher's fan-out of
    market data follows `websocket_load`; its idle (heartbeats every 10 s and protocol pings to
    each connection) scales with connected users. Every other idle is one process's
    (`_service_plan` adds one per extra process)."""
    ws = websocket_load(profile, scenario, rates)
    cores = profile.predicted_cores(dict(rates), max(ws.extra_per_s, 0.0))
    if PUSHER in cores:
        idle = profile.idle_cores.get(PUSHER, 0.0)
        fewer = min(ws.extra_per_s, 0.0) * profile.crowd.ws_message_cpu_us / 1e6
        crowd = idle * (scenario.users / profile.crowd.users - 1)
        cores[PUSHER] = max(cores[PUSHER] + fewer + crowd, 0.0)
    return cores


def _units(scaling: Scaling, cores: float, headroom: float, markets: int) -> int:
    needed = _ceil(cores / headroom)
    if scaling is Scaling.MARKET_GROUPS:
        return min(needed, markets)
    if scaling is Scaling.ONE_WRITER:
        return 1
    return needed


@dataclass(frozen=True, slots=True)
class _Target:
    """What every service of one plan is sized against."""

    scenario: Scenario
    profile: Profile
    orders_per_s: float
    headroom: float
    hot_market_share: float
    open_orders: int


def _market_limit(cores: float, cap: float | None, t: _Target) -> tuple[bool, list[str]]:
    """Market groups: never more groups than markets, and the hottest market within one writer."""
    fits = True
    notes: list[str] = []
    needed, markets = _ceil(cores / t.headroom), len(t.scenario.markets)
    if needed > markets:
        fits = False
        notes.append(
            f"needs {needed} groups at headroom {t.headroom:g} but there are {markets} markets: "
            "one market per group and still over the headroom"
        )
    if cap is not None:
        hot = t.orders_per_s * t.hot_market_share
        fits = fits and hot <= cap
        notes.append(
            f"the hottest market ({t.hot_market_share:.0%} of orders, {hot:,.0f} orders/s) "
            f"{'fits' if hot <= cap else 'DOES NOT FIT'} its single writer's cap of {cap:,.0f} orders/s"
        )
    return fits, notes


def _member_limit(cap: float | None, t: _Target) -> tuple[bool, list[str]]:
    """Member shards: a member's orders all go through its shard (members trade alike here)."""
    if cap is None or t.scenario.traders == 0:
        return True, []
    member = t.orders_per_s / t.scenario.traders
    verdict = "fits" if member <= cap else "DOES NOT FIT"
    return member <= cap, [
        f"one member ({member:,.2f} orders/s) {verdict} a shard's cap of {cap:,.0f} orders/s"
    ]


def _writer_limit(cores: float, cap: float | None, t: _Target) -> tuple[bool, list[str]]:
    """One writer per store: the whole exchange goes through it."""
    capped = f"caps the exchange at {cap:,.0f} orders/s" if cap is not None else "has no per-order cost"
    if cores <= t.headroom:
        return True, [f"one writer per store, {cores / t.headroom:.0%} of its headroom: {capped}"]
    return False, [
        f"PASSES THE HEADROOM ({cores:.2f} cores > {t.headroom:g}): one writer per store {capped}; "
        "beyond it, a store per market group (not built) or a rewrite off Python"
    ]


PER_PROCESS_FLOOR = frozenset({Scaling.INSTANCES, Scaling.MEMBER_SHARDS, Scaling.MARKET_GROUPS})


def _spread_cores(name: str, cores: float, units: int, profile: Profile) -> float:
    """The cores of `name` planned at `cores` in one process, spread over `units` processes with
    equal shares: each pays its idle and at least the active floor. The pusher's idle is its
    connections' (already scaled to the crowd and spread over its instances), counted once."""
    idle = profile.idle_cores.get(name, 0.0)
    floor = profile.active_cores.get(name, 0.0)
    load = max(cores - idle, 0.0)
    idles = idle if name == PUSHER else units * idle
    return idles + max(load, units * floor)


def _memory(name: str, units: int, t: _Target) -> float:
    per_copy = t.profile.crowd.memory_per_open_order_bytes.get(name, 0.0) * t.open_orders
    memory = per_copy * (units if name in WHOLE_STATE_PER_INSTANCE else 1)
    if name == PUSHER:
        memory += t.scenario.users * t.profile.crowd.memory_per_user_bytes
    return memory


def _service_plan(name: str, python_cores: float, factor: float | None, t: _Target) -> ServicePlan:
    scaling = SCALING.get(name, Scaling.INSTANCES)
    notes: list[str] = []
    if name not in SCALING:
        notes.append("kind unknown to the plan: planned as a stateless service")
    kept = 1.0 if factor is None else factor
    cores = python_cores * kept
    if factor is not None:
        notes.append(
            f"rewritten off Python at {factor:g}x its CPU (an assumption): "
            f"{python_cores:.2f} cores as measured"
        )
    idle = t.profile.idle_cores.get(name, 0.0)
    us = max(python_cores - idle, 0.0) * kept * 1e6 / t.orders_per_s
    cap = t.headroom * 1e6 / us if us > 0 else None
    units = _units(scaling, cores, t.headroom, len(t.scenario.markets))
    if scaling in PER_PROCESS_FLOOR and units > 1:
        cores = _spread_cores(name, python_cores, units, t.profile) * kept
        units = _units(scaling, cores, t.headroom, len(t.scenario.markets))
        notes.append(f"each {UNIT_NAMES[scaling][0]} pays its own idle, and at least its active floor")
    fits = True
    limits: list[str] = []
    if scaling is Scaling.MARKET_GROUPS:
        fits, limits = _market_limit(cores, cap, t)
    elif scaling is Scaling.MEMBER_SHARDS:
        fits, limits = _member_limit(cap, t)
    elif scaling is Scaling.ONE_WRITER:
        fits, limits = _writer_limit(cores, cap, t)
    elif scaling is Scaling.SERVER:
        kind = SERVER_KINDS.get(name, "multi-threaded")
        limits = [f"{kind}: one server of {units} cores at headroom {t.headroom:g}"]
    capped = scaling in (Scaling.MARKET_GROUPS, Scaling.MEMBER_SHARDS, Scaling.ONE_WRITER)
    memory = _memory(name, units, t)
    return ServicePlan(
        service=name,
        scaling=scaling,
        cores=cores,
        python_cores=python_cores,
        units=units,
        us_per_order=us,
        cap_orders_per_s=cap if capped else None,
        fits=fits,
        memory_bytes=memory,
        memory_per_unit_bytes=memory / units,
        rewrite=factor,
        notes=(*notes, *limits),
    )


def rewrite_savings(
    services: list[ServicePlan], headroom: float, markets: int, factor: float = REWRITE_FACTOR
) -> list[Saving]:
    """Per Python service, the cores a rewrite at `factor` x its measured CPU would save, most first:
    the first step of the transition is the one that saves most. nats-server is Go already."""
    savings = [
        Saving(
            service=s.service,
            factor=factor,
            cores_saved=s.python_cores * (1 - factor),
            units_before=_units(s.scaling, s.python_cores, headroom, markets),
            units_after=_units(s.scaling, s.python_cores * factor, headroom, markets),
        )
        for s in services
        if s.scaling is not Scaling.SERVER
    ]
    return sorted(savings, key=lambda saving: (-saving.cores_saved, saving.service))


def make_plan(
    profile: Profile,
    scenario: Scenario,
    *,
    headroom: float = 0.6,
    open_orders: int | None = None,
    hot_market_share: float | None = None,
    rewrites: Mapping[str, float] | None = None,
    cores_per_machine: int = 8,
) -> Plan:
    """The plan for `scenario` (already scaled to the target, see `plan_scenario`)."""
    if not 0 < headroom <= 1:
        raise ValueError("headroom must be in (0, 1]: the share of a core an instance is planned at")
    if cores_per_machine < 1:
        raise ValueError("cores per machine must be 1 or more")
    share = 1 / len(scenario.markets) if hot_market_share is None else hot_market_share
    if not 0 < share <= 1:
        raise ValueError("the hot market's share of orders must be in (0, 1]")
    rewrites = dict(rewrites or {})
    for name, factor in rewrites.items():
        if name not in profile.services:
            raise ValueError(
                f"--rewrite {name}: no such service in the profile ({', '.join(profile.services)})"
            )
        if factor <= 0:
            raise ValueError(f"--rewrite {name}={factor:g}: the factor must be > 0")
    opens = DEFAULT_OPEN_ORDERS_PER_TRADER * scenario.traders if open_orders is None else open_orders
    if opens < 0:
        raise ValueError("open orders must not be negative")
    rates = scenario.rates()
    orders = scenario.orders_per_s()
    if orders <= 0:
        raise ValueError(f"scenario {scenario.name!r} places no orders")
    cores = measured_cores(profile, scenario, rates)
    target = _Target(scenario, profile, orders, headroom, share, opens)
    services = [
        _service_plan(name, cores.get(name, 0.0), rewrites.get(name), target)
        for name in sorted(set(profile.services) | set(cores))
    ]
    nats_messages = sum(
        rate * profile.actions[a].nats_messages for a, rate in rates.items() if a in profile.actions
    )
    nats_bytes = sum(
        rate * profile.actions[a].nats_bytes for a, rate in rates.items() if a in profile.actions
    )
    return Plan(
        scenario=scenario,
        headroom=headroom,
        cores_per_machine=cores_per_machine,
        rates=rates,
        orders_per_s=orders,
        websocket=websocket_load(profile, scenario, rates),
        services=services,
        hot_market_share=share,
        open_orders=opens,
        nats_messages_per_s=nats_messages,
        nats_bytes_per_s=nats_bytes,
        sql_rows_per_s=_induced(profile, rates, "sql_rows"),
        redis_writes_per_s=_induced(profile, rates, "redis_writes"),
        stream_bytes_per_day=orders * profile.crowd.stream_bytes_per_order * 86_400,
        savings=rewrite_savings(services, headroom, len(scenario.markets)),
        unmeasured={a: rate for a, rate in rates.items() if rate > 0 and a not in profile.actions},
    )

"""A measured profile: what each micro-action costs each service, and how the system held up as
the load was stepped up. `bourse size measure` writes one; `bourse size plan` reads one (the
project ships the reference machine's, `reference_profile.json`, so a plan needs no measuring).

The method (written into every profile, `METHOD`): one action at a time. With the system idle
but for the scenario's connected crowd, each action is driven alone, and each service's CPU over
the window, less its idle CPU, divided by the actions sent, is that action's cost in that service
(CPU is read from each service's own process: `measure` runs one process per service).
Everything an action sets off downstream (the accounts lock, the match, the trades it makes, the
rows, the pushes) is inside its cost, and what it set off is counted too (`induced`). Isolating
is sound where costs add up: each action's work is done by the same code whatever else runs.
Batching is the one way actions share work (a stage's batch, a pusher's 100 ms tick, pays its
fixed cost once for every command in it): so each order command (limit, market, cancel, amend,
RabbitMQ) is driven at the rate of all the order commands at full load (or at the largest load
the machine carried), where it pays the share of a batch it pays in the mix; alone at its own
small rate each would pay a whole batch (the first measure of the brief predicted +77 % that
way). REST reads, not batched, go at their own rate.

A stage's CPU is not proportional to the orders it carries: each consumer takes what has
arrived while it worked on the last batch, so from a few orders a second up it runs batch after
batch, and a larger flow makes larger batches more than more of them. On the reference machine
the whole system spent 0.9 cores at 86 limit orders a second, 1.1 at 173 and 1.2 at 518 (the
machine saturated there). So each service has an active floor (`Profile.active_cores`): its CPU
with limit orders alone at half the commands' rate. A prediction per service is idle + the
larger of that floor and the sum of rate x cost (the costs taken at the commands' rate). Above
the measured load the sum stays linear while the real cost per order keeps falling: a plan far
above the load a profile was measured at over-provisions (it errs on the side of more cores).

The stepped runs then check the sum: at each step the predicted CPU per service (idle, plus the
floor, plus the sum of rate x cost) is compared with what was measured (`Step.predicted_cores`
vs `Step.cores`)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from bourse.sizing.scenario import COMMANDS, Action, Scenario

REFERENCE_PROFILE = Path(__file__).with_name("reference_profile.json")

METHOD = (
    "one action at a time over an idle system holding the scenario's connected crowd, at the "
    "full load (or the largest load the machine carried): each order command alone at the rate of "
    "all the order commands (they share the stages' batches), each REST read alone at its own rate; "
    "per service, (CPU over the window - idle CPU) / actions sent; downstream work (locks, matches, "
    "trades, rows, pushes) is inside the cost and counted in `induced`; limit orders alone at half "
    "the commands' rate give each service's active floor (the least it spends while orders flow); "
    "a prediction is idle + the larger of the floor and the sum of rate x cost; stepped runs of "
    "the whole mix compare the prediction with the measurement"
)

NATS = "nats-server"
"""The NATS server's CPU, profiled like a service."""
RABBITMQ = "rabbitmq"
"""The local RabbitMQ broker's CPU, profiled like a service when orders come through it."""


class Machine(msgspec.Struct, frozen=True):
    cpus: int
    cpu_model: str
    python: str
    commit: str
    measured_at: str
    """ISO-8601 UTC."""


class ActionCost(msgspec.Struct, frozen=True):
    rate: float
    """Actions/s it was driven at."""
    sent: int
    """Actions sent in the window (the divisor)."""
    cpu_us: dict[str, float]
    """Per service (and `nats-server`), CPU microseconds per action."""
    nats_messages: float
    """NATS messages (published into the server and delivered out of it) per action."""
    nats_bytes: float
    induced: dict[str, float] = msgspec.field(default_factory=dict)
    """Per action, what it set off: `trades`, `sql_rows`, `redis_writes`, `ws_messages`,
    `stream_bytes` (JetStream storage), ..."""

    @property
    def total_us(self) -> float:
        return sum(self.cpu_us.values())


class Crowd(msgspec.Struct, frozen=True):
    """What connected users cost beyond the actions they drive."""

    users: int
    """Connected during the measure."""
    ws_message_cpu_us: float
    """Pusher CPU per WebSocket message written to a connection (market data fan-out)."""
    memory_per_user_bytes: float
    """Pusher resident memory per connected user (with the scenario's channels)."""
    memory_per_open_order_bytes: dict[str, float]
    """Per service that holds open orders (accounts, matching, query), resident bytes per order."""
    stream_bytes_per_order: float
    """JetStream storage per order placed (ORDERS + MATCH + EVENTS + ACCOUNTS)."""
    ws_messages_per_trade: float
    """Market-data messages delivered per trade per holder of the trades channel, as measured."""


class Step(msgspec.Struct, frozen=True):
    load: float
    """Share of the scenario."""
    orders_per_s: float
    """Orders placed per second (accepted or refused), as achieved."""
    users: int
    cores: dict[str, float]
    """Measured CPU cores per service."""
    predicted_cores: dict[str, float]
    """The profile's prediction for the rates achieved."""
    post_p50_ms: float
    post_p99_ms: float
    error_share: float
    past_knee: bool


class Profile(msgspec.Struct, frozen=True):
    version: int
    scenario: Scenario
    machine: Machine
    method: str
    idle_cores: dict[str, float]
    """Per service, CPU cores with the crowd connected and no action driven."""
    actions: dict[Action, ActionCost]
    crowd: Crowd
    steps: list[Step] = msgspec.field(default_factory=list)
    knee_load: float | None = None
    """The last step within the limits (None: the first step already passed them)."""
    active_cores: dict[str, float] = msgspec.field(default_factory=dict)
    """Per service, the least CPU (cores over idle) it spends while any order command flows, per
    process: its consumers run batch after batch however few orders come."""

    @property
    def services(self) -> list[str]:
        names = set(self.idle_cores)
        for cost in self.actions.values():
            names.update(cost.cpu_us)
        return sorted(names)

    def predicted_cores(self, rates: dict[Action, float], ws_messages_per_s: float = 0.0) -> dict[str, float]:
        """CPU cores per service for these action rates in one process each: idle + the sum of
        rate x cost (+ the pusher's fan-out for `ws_messages_per_s` market-data messages
        written), or idle + the active floor where that is more and order commands flow."""
        load: dict[str, float] = {}
        for action, rate in rates.items():
            cost = self.actions.get(action)
            if cost is None or rate <= 0:
                continue
            for service, us in cost.cpu_us.items():
                load[service] = load.get(service, 0.0) + rate * us / 1e6
        if ws_messages_per_s > 0:
            load["pusher"] = load.get("pusher", 0.0) + ws_messages_per_s * self.crowd.ws_message_cpu_us / 1e6
        if any(rates.get(action, 0.0) > 0 for action in COMMANDS):
            for service, floor in self.active_cores.items():
                load[service] = max(load.get(service, 0.0), floor)
        cores = dict(self.idle_cores)
        for service, used in load.items():
            cores[service] = cores.get(service, 0.0) + used
        return cores


def save_profile(profile: Profile, path: Path) -> None:
    path.write_bytes(msgspec.json.format(msgspec.json.encode(profile), indent=2) + b"\n")


def load_profile(path: Path | str | None = None) -> Profile:
    """A profile file; the reference machine's without a path."""
    source = Path(path) if path is not None else REFERENCE_PROFILE
    try:
        return msgspec.json.decode(source.read_bytes(), type=Profile)
    except (OSError, msgspec.DecodeError) as exc:
        raise ValueError(f"profile {source}: {exc}") from exc

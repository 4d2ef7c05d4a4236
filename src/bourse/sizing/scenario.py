"""A user model, read from a small TOML file: how many users are connected, what share of them
trade and how fast, what everyone reads over REST and which WebSocket channels they hold, which
way orders come in, and how the load is stepped up to find the knee.

Rates are per user (or per trader) so that one file describes any size of crowd; `rates(load)`
turns it into actions per second for the whole crowd at a share of the target (`load` 1.0 = the
scenario as written). The default scenario is the brief's: 10,000 connected users, 1,000 of them
trading one order a second, so 1,000 orders/s in total."""

from __future__ import annotations

import tomllib
from enum import StrEnum
from pathlib import Path

import msgspec

SCENARIOS_DIR = Path(__file__).with_name("scenarios")
DEFAULT_SCENARIO = SCENARIOS_DIR / "brief.toml"


class Action(StrEnum):
    """A micro-action a user drives; what it sets off downstream (trades, rows, pushes) is
    counted per action in the profile."""

    PLACE_LIMIT = "place_limit"
    PLACE_MARKET = "place_market"
    CANCEL = "cancel"
    AMEND = "amend"
    AMQP_ORDER = "amqp_order"
    """A limit order through RabbitMQ instead of REST."""
    READ_DEPTH = "read_depth"
    READ_BALANCES = "read_balances"
    READ_ORDERS = "read_orders"


ORDER_ACTIONS = (Action.PLACE_LIMIT, Action.PLACE_MARKET, Action.AMQP_ORDER)
"""The actions that place a new order (what `orders/s` counts)."""
COMMANDS = (Action.PLACE_LIMIT, Action.PLACE_MARKET, Action.CANCEL, Action.AMEND, Action.AMQP_ORDER)
"""Order commands: they go through the order intake, ORDERS, accounts and matching, and share
those stages' batches (and the pushers' ticks)."""


class Channel(StrEnum):
    """WebSocket channels a user may hold (the pushers' channels, one market each)."""

    TICKER = "ticker"
    TRADES = "trades"
    DEPTH = "depth"
    KLINE = "kline"
    ORDERS = "orders"
    """Private: the member's order updates (traders only)."""
    BALANCES = "balances"
    """Private: the member's balance changes (traders only)."""


PRIVATE_CHANNELS = frozenset({Channel.ORDERS, Channel.BALANCES})


class Trading(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What each trader does per second."""

    share: float = 0.1
    """Of the connected users, the share that trades."""
    limit_per_s: float = 0.8
    market_per_s: float = 0.05
    cancel_per_s: float = 0.1
    amend_per_s: float = 0.05
    amqp_share: float = 0.15
    """Of the limit orders, the share that comes through RabbitMQ (the rest over REST)."""


class Reading(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What each connected user reads over REST per second (traders and watchers alike)."""

    depth_per_s: float = 0.005
    balances_per_s: float = 0.002
    orders_per_s: float = 0.002


class Steps(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How `bourse size measure` steps the load up, and where it stops (the knee)."""

    loads: list[float] = msgspec.field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0])
    """Shares of the scenario's rates, in order."""
    step_s: float = 20.0
    """Measured seconds per step (after a few seconds of warm-up)."""
    max_p99_ms: float = 250.0
    """A step whose POST /order p99 passes this is past the knee."""
    max_error_share: float = 0.01
    """... as is one whose share of failed or late requests passes this."""


class Scenario(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    description: str = ""
    users: int = 10_000
    """Connected users (each holds a WebSocket connection with its channels)."""
    markets: list[str] = msgspec.field(default_factory=lambda: ["btc_usd", "eth_usd", "eth_btc"])
    trading: Trading = Trading()
    reading: Reading = Reading()
    channels: dict[Channel, float] = msgspec.field(
        default_factory=lambda: {Channel.TICKER: 1.0, Channel.TRADES: 0.3, Channel.DEPTH: 0.3}
    )
    """Per channel, the share of users holding it (private ones: of the traders)."""
    steps: Steps = Steps()

    def __post_init__(self) -> None:
        shares = [self.trading.share, self.trading.amqp_share, *self.channels.values()]
        if self.users < 1 or not self.markets:
            raise ValueError("a scenario needs users (>= 1) and at least one market")
        if any(not 0.0 <= share <= 1.0 for share in shares):
            raise ValueError("shares (trading.share, trading.amqp_share, channels) must be in [0, 1]")
        trading, reading = msgspec.structs.asdict(self.trading), msgspec.structs.asdict(self.reading)
        rates = [*trading.values(), *reading.values()]
        if any(rate < 0 for rate in rates):
            raise ValueError("rates must not be negative")
        if not self.steps.loads or any(load <= 0 for load in self.steps.loads):
            raise ValueError("steps.loads must be positive shares of the scenario")

    @property
    def traders(self) -> int:
        return round(self.users * self.trading.share)

    def rates(self, load: float = 1.0) -> dict[Action, float]:
        """Actions per second of the whole crowd at `load` times the scenario."""
        t, r = self.trading, self.reading
        traders, users = self.traders * load, self.users * load
        return {
            Action.PLACE_LIMIT: traders * t.limit_per_s * (1 - t.amqp_share),
            Action.AMQP_ORDER: traders * t.limit_per_s * t.amqp_share,
            Action.PLACE_MARKET: traders * t.market_per_s,
            Action.CANCEL: traders * t.cancel_per_s,
            Action.AMEND: traders * t.amend_per_s,
            Action.READ_DEPTH: users * r.depth_per_s,
            Action.READ_BALANCES: users * r.balances_per_s,
            Action.READ_ORDERS: users * r.orders_per_s,
        }

    def orders_per_s(self, load: float = 1.0) -> float:
        rates = self.rates(load)
        return sum(rates[action] for action in ORDER_ACTIONS)

    def holders(self, load: float = 1.0) -> dict[Channel, int]:
        """Per channel, how many connected users hold it at `load` (the crowd grows with it)."""
        return {
            channel: round((self.traders if channel in PRIVATE_CHANNELS else self.users) * load * share)
            for channel, share in self.channels.items()
        }

    def scaled(self, *, users: int | None = None, orders_per_s: float | None = None) -> Scenario:
        """The same behaviour for another crowd: `users` connected, and per-trader rates scaled
        so the crowd places `orders_per_s` (the mix of actions kept)."""
        scenario = self if users is None else msgspec.structs.replace(self, users=users)
        if orders_per_s is None:
            return scenario
        now = scenario.orders_per_s()
        if now <= 0:
            raise ValueError("the scenario places no orders: nothing to scale")
        factor = orders_per_s / now
        t = scenario.trading
        trading = msgspec.structs.replace(
            t,
            limit_per_s=t.limit_per_s * factor,
            market_per_s=t.market_per_s * factor,
            cancel_per_s=t.cancel_per_s * factor,
            amend_per_s=t.amend_per_s * factor,
        )
        return msgspec.structs.replace(scenario, trading=trading)


def load_scenario(path: Path | str | None = None) -> Scenario:
    """A scenario file (TOML); the brief's without a path. A bad file raises ValueError naming it."""
    source = Path(path) if path is not None else DEFAULT_SCENARIO
    try:
        raw = tomllib.loads(source.read_text())
        return msgspec.convert(raw, Scenario, strict=True)
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError, ValueError) as exc:
        raise ValueError(f"scenario {source}: {exc}") from exc

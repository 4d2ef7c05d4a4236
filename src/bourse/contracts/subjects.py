"""Every JetStream stream, subject and bucket the system uses, declared in one place.

Subjects are `<namespace>.<kind>.<shard>`; streams and buckets are `<NAMESPACE>_<KIND>`. The
namespace lets several deployments (or test runs) share one NATS.
Creating them is the NATS adapter's work (`bourse.adapters.jetstream.ensure_topology`).
"""

from __future__ import annotations

from dataclasses import dataclass

DUPLICATE_WINDOW_S = 600.0
"""How long JetStream remembers a Nats-Msg-Id. Replays after a restart fall well within it;
consumers that write elsewhere also check the stream sequence, so older duplicates are harmless."""


@dataclass(frozen=True, slots=True)
class StreamSpec:
    kind: str
    description: str
    max_age_s: float = 7 * 24 * 3600.0

    def name(self, namespace: str) -> str:
        return f"{namespace.upper()}_{self.kind.upper()}"

    def subject(self, namespace: str, shard: str | int) -> str:
        return f"{namespace}.{self.kind}.{shard}"

    def wildcard(self, namespace: str) -> str:
        return f"{namespace}.{self.kind}.>"


ORDERS = StreamSpec("orders", "Order commands from the gateway and RabbitMQ ingress, by member shard")
MATCH = StreamSpec("match", "Order commands with funds locked, from accounts to matching, by market")
EVENTS = StreamSpec("events", "Matching engine events (accepted, trades, updates, closes), by market")
ACCOUNTS = StreamSpec(
    "accounts", "Balance changes and ledger entries from the accounts stage, by member shard"
)

STREAMS: tuple[StreamSpec, ...] = (ORDERS, MATCH, EVENTS, ACCOUNTS)


@dataclass(frozen=True, slots=True)
class BucketSpec:
    kind: str
    description: str
    ttl_s: float = 0.0
    history: int = 1

    def name(self, namespace: str) -> str:
        return f"{namespace.upper()}_{self.kind.upper()}"


ID_LEASES = BucketSpec("id_leases", "Worker ids leased by order-id generators", ttl_s=30.0)

BUCKETS: tuple[BucketSpec, ...] = (ID_LEASES,)

SNAPSHOTS = BucketSpec("snapshots", "Newest snapshot of each stateful stage shard, with its input sequence")
"""An object store (snapshots outgrow a KV value): one object per stage shard, e.g. `matching.btc_usd`."""

OBJECT_STORES: tuple[BucketSpec, ...] = (SNAPSHOTS,)


def member_shard(member_id: int, shards: int) -> int:
    """The accounts shard (and ORDERS subject) that owns a member."""
    return member_id % shards


def accounts_consumer(shard: int) -> str:
    """Durable consumer of an accounts shard on ORDERS (its position tells what is processed)."""
    return f"accounts-{shard}"


def matching_consumer(market: str) -> str:
    """Durable consumer of a market's matching engine on MATCH."""
    return f"matching-{market}"


def service_subject(namespace: str, service: str, endpoint: str) -> str:
    """Core NATS request/reply subject of a service endpoint (queries, not commands)."""
    return f"{namespace}.svc.{service}.{endpoint}"


MARKET_DATA = "md"
"""Core NATS subjects of public market data (not streams: at most once, the latest state wins),
published by the statistics service for the pushers: `<ns>.md.<channel>.<market>`, and for
k-lines `<ns>.md.kline.<period>.<market>`. Messages: `bourse.contracts.messages.DepthUpdate`,
`TradesUpdate`, `TickerUpdate`, `KlineUpdate`."""
DEPTH_CHANNEL = "depth"
TRADES_CHANNEL = "trades"
TICKER_CHANNEL = "ticker"
KLINE_CHANNEL = "kline"


def market_data_subject(namespace: str, channel: str, market: str, period: str | None = None) -> str:
    """Where a market's public updates of `channel` are published; `market` may be `*`."""
    if channel == KLINE_CHANNEL:
        if period is None:
            raise ValueError("a k-line subject names its period")
        return f"{namespace}.{MARKET_DATA}.{channel}.{period}.{market}"
    return f"{namespace}.{MARKET_DATA}.{channel}.{market}"


def statistics_consumer(group: str) -> str:
    """Durable consumer of a statistics instance on EVENTS: one per market group (`all`, or the
    group's markets), since each group folds and publishes its markets once."""
    return f"statistics-{group}"


STATISTICS_SERVICE = "statistics"
STATISTICS_MARKET_ENDPOINTS = ("ticker", "klines", "depth", "position")
"""Endpoints of the statistics service, answered per market by the instance whose group holds the
market: `<ns>.svc.statistics.<endpoint>.<market>` (`position` too: a group's lag is its own)."""


def statistics_subject(namespace: str, endpoint: str, market: str | None = None) -> str:
    """Request subject of a statistics endpoint of `market` (None: the endpoint's name alone)."""
    base = service_subject(namespace, STATISTICS_SERVICE, endpoint)
    return base if market is None else f"{base}.{market}"

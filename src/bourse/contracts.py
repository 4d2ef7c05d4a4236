"""Every message that crosses a process boundary, in one place.

Engine commands and events are the domain's own structs (`bourse.domain.orders`); this module
adds the envelopes that carry them between stages, one envelope per stream message. A stage
turns one input message into at most one output message per destination, so an output's
`Nats-Msg-Id` (`<stage>:<shard>:<input-seq>[:<destination>]`) is the same on a replay, and
JetStream drops the repeat. Every envelope also names its origin (stage, shard, sequence), so a
consumer drops repeats older than JetStream's duplicate window too.

All envelopes are msgpack on the wire (`encode` / the `*_DECODER`s below).
"""

from __future__ import annotations

import msgspec

from bourse.domain.accounts import BalanceChanged
from bourse.domain.ledger import LedgerEntry
from bourse.domain.orders import (
    AmendOrder,
    CancelOrder,
    OrderAccepted,
    OrderAmended,
    OrderClosed,
    OrderRejected,
    OrderStatus,
    OrderUpdated,
    PlaceOrder,
    RejectReason,
    Trade,
)


class Deposit(msgspec.Struct, frozen=True, tag_field="kind", tag="deposit"):
    """Credit a member (demo seeding, or a wallet service). `ref` makes it idempotent."""

    member_id: int
    currency: str
    amount: int
    ref: str


AccountsItem = (
    PlaceOrder
    | CancelOrder
    | AmendOrder
    | Deposit
    | OrderAccepted
    | OrderRejected
    | Trade
    | OrderUpdated
    | OrderAmended
    | OrderClosed
)


class AccountsBatch(msgspec.Struct, frozen=True):
    """Input of an accounts shard (stream ORDERS, subject `<ns>.orders.<shard>`).

    From the gateway or the RabbitMQ ingress: order commands (with `reply_to`, a core NATS
    subject where the accounts decision is sent). From matching: the engine events about this
    shard's members, with `origin = ("matching", market, input_seq)` so a replayed batch is
    applied once."""

    items: list[AccountsItem]
    reply_to: str | None = None
    origin: tuple[str, str, int] | None = None


class MatchBatch(msgspec.Struct, frozen=True):
    """Input of a market's matching engine (stream MATCH, subject `<ns>.match.<market>`):
    commands whose funds the accounts shard `shard` locked while processing its input `seq`."""

    commands: list[PlaceOrder | CancelOrder | AmendOrder]
    shard: int
    seq: int
    reply_to: str | None = None


EngineEventItem = OrderAccepted | OrderRejected | Trade | OrderUpdated | OrderAmended | OrderClosed


class EventBatch(msgspec.Struct, frozen=True):
    """Output of a market's matching engine (stream EVENTS, subject `<ns>.events.<market>`):
    the events caused by its input message `seq`, received at `received_at` (ns)."""

    market: str
    seq: int
    received_at: int
    events: list[EngineEventItem]


class AccountsReport(msgspec.Struct, frozen=True):
    """Output of an accounts shard (stream ACCOUNTS, subject `<ns>.accounts.<shard>`): what its
    input `seq` changed: orders it refused (they never reach matching), balances as they are
    now, and the ledger entries."""

    shard: int
    seq: int
    rejected: list[OrderRejected]
    balances: list[BalanceChanged]
    entries: list[LedgerEntry]


class Decision(msgspec.Struct, frozen=True, array_like=True):
    """The accounts stage's answer about one command: forwarded to matching, or refused."""

    order_id: int
    command: str
    accepted: bool
    reason: RejectReason | None = None
    existing_order_id: int | None = None
    """For a resubmitted `client_order_id`: the order the first submission created."""


class Decisions(msgspec.Struct, frozen=True, tag_field="kind", tag="decisions"):
    """Sent (core NATS, best effort) to an `AccountsBatch.reply_to`."""

    items: list[Decision]


class Outcome(msgspec.Struct, frozen=True, array_like=True):
    """Where a command left its order in the engine, sent to `MatchBatch.reply_to`."""

    order_id: int
    command: str
    status: OrderStatus | None
    executed: int
    reason: RejectReason | None = None


class Outcomes(msgspec.Struct, frozen=True, tag_field="kind", tag="outcomes"):
    items: list[Outcome]


encode = msgspec.msgpack.Encoder().encode

ACCOUNTS_BATCH_DECODER = msgspec.msgpack.Decoder(AccountsBatch)
MATCH_BATCH_DECODER = msgspec.msgpack.Decoder(MatchBatch)
EVENT_BATCH_DECODER = msgspec.msgpack.Decoder(EventBatch)
ACCOUNTS_REPORT_DECODER = msgspec.msgpack.Decoder(AccountsReport)
REPLY_DECODER = msgspec.msgpack.Decoder(Decisions | Outcomes)
"""A gateway's reply inbox hears both: the accounts decision, then the engine outcome."""

"""Every message that crosses a process boundary, in one place.

Engine commands and events are the domain's own structs (`bourse.domain.orders`); this module
adds the envelopes that carry them between stages, one envelope per stream message. A stage
turns one input message into at most one output message per destination, so an output's
`Nats-Msg-Id` (`<stage>:<shard>:<input-seq>[:<destination>]`) is the same on a replay, and
JetStream drops the repeat; the exceptions are `MatchBatch` and `AccountsReports`, one per
fetched batch of accounts, whose parts say which input sequence each came from. Every envelope
also names its origin (stage, shard, sequence), so a consumer drops repeats older than
JetStream's duplicate window too.

All envelopes are msgpack on the wire (`encode` / the `*_DECODER`s below). Prices, amounts,
funds and ids are typed as in the domain (`bourse.domain.values`): plain integers on the wire.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from bourse.domain.accounts import BalanceChanged
from bourse.domain.candles import Candle, Period
from bourse.domain.depth_book import DepthSnapshot
from bourse.domain.ledger import LedgerEntry
from bourse.domain.order_views import BalanceView, DepthView, MemberTrade, OrderView, PublicTrade
from bourse.domain.orders import (
    CLIENT_ORDER_ID_MAX,
    CLIENT_ORDER_ID_PATTERN,
    AmendOrder,
    CancelOrder,
    CloseReason,
    OrderAccepted,
    OrderAmended,
    OrderClosed,
    OrderRejected,
    OrderStatus,
    OrderType,
    OrderUpdated,
    PlaceOrder,
    RejectReason,
    Side,
    TimeInForce,
    Trade,
)
from bourse.domain.tickers import Ticker
from bourse.domain.values import Amount, MemberId, OrderId, Price


class Deposit(msgspec.Struct, frozen=True, tag_field="kind", tag="deposit"):
    """Credit a member (demo seeding, or a wallet service). `ref` makes it idempotent."""

    member_id: MemberId
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


def item_order_ids(item: AccountsItem) -> tuple[int, ...]:
    """The orders an item is about (both sides of a trade; none for a deposit): which orders'
    traces a message carrying it continues."""
    if isinstance(item, Trade):
        return (item.taker_order_id, item.maker_order_id)
    if isinstance(item, Deposit):
        return ()
    return (item.order_id,)


class AccountsBatch(msgspec.Struct, frozen=True):
    """Input of an accounts shard (stream ORDERS, subject `<ns>.orders.<shard>`).

    From the gateway or the RabbitMQ ingress: order commands (with `reply_to`, a core NATS
    subject where the accounts decision is sent). From matching: the engine events about this
    shard's members, with `origin = ("matching", market, input_seq)` so a replayed batch is
    applied once."""

    items: list[AccountsItem]
    reply_to: str | None = None
    origin: tuple[str, str, int] | None = None
    deadline_ns: int | None = None
    """Commands only: if the stream stored this message after this time (ns since the epoch,
    the stream's own timestamp), accounts refuses every command in it as `expired`. The
    sender stops waiting at the deadline, so a message that arrives later (a client library's
    reconnect buffer, a slow retry) cannot become an order its client was never told of."""

    def order_ids(self) -> list[int]:
        return [oid for item in self.items for oid in item_order_ids(item)]


class MatchSegment(msgspec.Struct, frozen=True):
    """The commands for one market whose funds an accounts shard locked while processing its
    input `seq`, and who asked for them."""

    seq: int
    commands: list[PlaceOrder | CancelOrder | AmendOrder]
    reply_to: str | None = None


class MatchBatch(msgspec.Struct, frozen=True):
    """Input of a market's matching engine (stream MATCH, subject `<ns>.match.<market>`): one
    message per batch the accounts shard `shard` fetched, its segments in input order.

    A replay of the accounts shard may cut its batches differently, so a message may repeat
    segments an earlier one carried: matching keeps, per accounts shard, the last segment it
    matched and skips the repeats. One message per fetched batch instead of one per input
    message is what keeps stored (fsynced) messages per order low under load."""

    shard: int
    segments: list[MatchSegment]

    def order_ids(self) -> list[int]:
        return [command.order_id for segment in self.segments for command in segment.commands]


EngineEventItem = OrderAccepted | OrderRejected | Trade | OrderUpdated | OrderAmended | OrderClosed


class EventBatch(msgspec.Struct, frozen=True):
    """Output of a market's matching engine (stream EVENTS, subject `<ns>.events.<market>`):
    the events caused by its input message `seq`, received at `received_at` (ns)."""

    market: str
    seq: int
    received_at: int
    events: list[EngineEventItem]

    def order_ids(self) -> list[int]:
        return [oid for event in self.events for oid in item_order_ids(event)]


class AccountsReport(msgspec.Struct, frozen=True):
    """What an accounts shard's input `seq` changed: orders it refused (they never reach
    matching), balances as they are now, and the ledger entries (carried in `AccountsReports`)."""

    shard: int
    seq: int
    rejected: list[OrderRejected]
    balances: list[BalanceChanged]
    entries: list[LedgerEntry]


class AccountsReports(msgspec.Struct, frozen=True):
    """Output of an accounts shard (stream ACCOUNTS, subject `<ns>.accounts.<shard>`): one
    message per batch it fetched, with a report per input message in input order.

    A replay of the shard may cut its batches differently, so a message may repeat reports an
    earlier one carried: consumers skip a report whose `seq` they have applied for its shard."""

    shard: int
    reports: list[AccountsReport]


class Decision(msgspec.Struct, frozen=True, array_like=True):
    """The accounts stage's answer about one command: forwarded to matching, or refused."""

    order_id: OrderId
    command: str
    accepted: bool
    reason: RejectReason | None = None
    existing_order_id: OrderId | None = None
    """For a resubmitted `client_order_id`: the order the first submission created."""


class Decisions(msgspec.Struct, frozen=True, tag_field="kind", tag="decisions"):
    """Sent (core NATS, best effort) to an `AccountsBatch.reply_to`."""

    items: list[Decision]


class Outcome(msgspec.Struct, frozen=True, array_like=True):
    """Where a command left its order in the engine, sent to `MatchBatch.reply_to`."""

    order_id: OrderId
    command: str
    status: OrderStatus | None
    executed: Amount
    reason: RejectReason | None = None
    """Why the engine refused the command (then `status` is None)."""
    close_reason: CloseReason | None = None
    """Why the order ended, when the command left it final (filled, ioc_remainder, ...)."""


class Outcomes(msgspec.Struct, frozen=True, tag_field="kind", tag="outcomes"):
    items: list[Outcome]


encode = msgspec.msgpack.Encoder().encode

ACCOUNTS_BATCH_DECODER = msgspec.msgpack.Decoder(AccountsBatch)
MATCH_BATCH_DECODER = msgspec.msgpack.Decoder(MatchBatch)
EVENT_BATCH_DECODER = msgspec.msgpack.Decoder(EventBatch)
ACCOUNTS_REPORTS_DECODER = msgspec.msgpack.Decoder(AccountsReports)
REPLY_DECODER = msgspec.msgpack.Decoder(Decisions | Outcomes)
"""A gateway's reply inbox hears both: the accounts decision, then the engine outcome."""


# queries
#
# Request and reply bodies of the `query` service's endpoints (core NATS request/reply on
# `<ns>.svc.query.<endpoint>`), JSON encoded (`json_encode`, the `*_QUERY_DECODER`s). Quantities
# are integers on the market's grid, like every other contract; the gateway formats them.
# A query that fails is answered with the nats.micro error headers, `Nats-Service-Error-Code`
# (an HTTP-like status: "400", "404", "503") and `Nats-Service-Error` (a message), and a
# `QueryError` body whose `code` is stable and machine-readable (see docs/architecture.md).

PositiveMemberId = Annotated[MemberId, msgspec.Meta(ge=1, le=2**63 - 1)]
"""A member id a request names: 1 or more (0 is the exchange's own account), a signed 64-bit
integer (a larger one could not be encoded into ORDERS: a RabbitMQ message naming one failed
every delivery, and failed the other commands of its intake batch with it)."""


class OrderQuery(msgspec.Struct, frozen=True):
    """`order` -> `OrderView`, or `order_not_found` (also when the order is another member's)."""

    member_id: PositiveMemberId
    order_id: OrderId


class OrdersQuery(msgspec.Struct, frozen=True):
    """`orders` -> `OrdersReply`: a member's orders, most recent (highest id) first."""

    member_id: PositiveMemberId
    market: str | None = None
    state: str | None = None
    """"open", "closed" (every final status) or one status name."""
    status: OrderStatus | None = None
    """Exactly this status (the way to ask for `closed` alone)."""
    limit: int = 100
    """1..`READ_MAX_LIMIT`: the query service checks it, with the other arguments, by the rule every
    reader shares (`bourse.application.read_queries`), so every reader says the same."""
    before_id: OrderId | None = None
    """Only orders with a lower id: pass the last id of the previous page."""


class OrdersReply(msgspec.Struct, frozen=True):
    orders: list[OrderView]


class BalancesQuery(msgspec.Struct, frozen=True):
    """`balances` -> `BalancesReply`."""

    member_id: PositiveMemberId


class BalancesReply(msgspec.Struct, frozen=True):
    member_id: MemberId
    balances: list[BalanceView]
    """One per currency the member ever held, sorted by currency code."""


class DepthQuery(msgspec.Struct, frozen=True):
    """`depth` -> `DepthView` (bids and asks best first, `[price, amount]` per level)."""

    market: str
    limit: int = 50
    """Price levels per side, checked as `OrdersQuery.limit` is."""


class TradesQuery(msgspec.Struct, frozen=True):
    """`trades` -> `TradesReply`: a market's recent trades, most recent first."""

    market: str
    limit: int = 100
    """Checked as `OrdersQuery.limit` is."""


class TradesReply(msgspec.Struct, frozen=True):
    market: str
    trades: list[PublicTrade]


class MemberTradesQuery(msgspec.Struct, frozen=True):
    """`member_trades` -> `MemberTradesReply`: a member's recent trades, most recent first."""

    member_id: PositiveMemberId
    market: str | None = None
    limit: int = 100
    """Checked as `OrdersQuery.limit` is."""


class MemberTradesReply(msgspec.Struct, frozen=True):
    member_id: MemberId
    trades: list[MemberTrade]


class QueryReady(msgspec.Struct, frozen=True):
    """`ready` (any body) -> whether the answering instance has caught up with the streams."""

    ready: bool
    events_seq: int
    """EVENTS stream sequence applied so far."""
    events_target: int
    """EVENTS stream's last sequence when the instance started: ready once both are reached."""
    accounts_seq: int
    accounts_target: int


class QueryError(msgspec.Struct, frozen=True):
    code: str
    """`invalid_request`, `order_not_found`, `unknown_market` or `not_ready`."""
    message: str


# The statistics service: queries (JSON, as the query service's) and public market data (msgpack,
# core NATS, `bourse.contracts.subjects.market_data_subject`). Every update names its market, the
# market's EVENTS batch sequence that caused it (`seq`) and the engine time of that batch (`time`,
# ms since the epoch): a subscriber drops what it has seen, and a depth subscriber sees a gap.


class TickerQuery(msgspec.Struct, frozen=True):
    """`ticker.<market>` -> `Ticker`."""

    market: str


class KlinesQuery(msgspec.Struct, frozen=True):
    """`klines.<market>` -> `KlinesReply`; the arguments are checked by
    `bourse.application.read_queries.check_klines_query` (times in ms since the epoch)."""

    market: str
    period: str
    start: int | str | None = None
    """Ms since the epoch, or text the check parses (ISO-8601), as the REST query takes it."""
    end: int | str | None = None
    limit: int = 500


class KlinesReply(msgspec.Struct, frozen=True):
    market: str
    period: Period
    candles: list[Candle]


class DepthSnapshotQuery(msgspec.Struct, frozen=True):
    """`depth.<market>` -> `DepthSnapshot`: the levels a depth subscriber starts from."""

    market: str
    limit: int | None = None
    """Levels per side; None: every level (a local book needs them all)."""


class StatisticsPosition(msgspec.Struct, frozen=True):
    """`position.<market>` -> how far the instance of the market's group is: the EVENTS stream
    sequence every message up to which is applied, and the stream's last sequence when it started
    (ready once reached); `markets`: its group."""

    events_seq: int
    events_target: int
    markets: list[str]


class DepthUpdate(msgspec.Struct, frozen=True):
    """Levels whose total changed: `(price, new total amount)`, 0 removes the level. `prev_seq` is
    the `seq` of the market's previous depth update: a subscriber that did not see it missed one."""

    market: str
    seq: int
    prev_seq: int
    time: int
    bids: list[tuple[Price, Amount]]
    asks: list[tuple[Price, Amount]]


class TradesUpdate(msgspec.Struct, frozen=True):
    """The market's trades since the last update, oldest first."""

    market: str
    seq: int
    time: int
    trades: list[PublicTrade]


class TickerUpdate(msgspec.Struct, frozen=True):
    market: str
    seq: int
    time: int
    ticker: Ticker


class KlineUpdate(msgspec.Struct, frozen=True):
    """The candles of one period changed since the last update, oldest first (the open one last)."""

    market: str
    seq: int
    time: int
    period: Period
    candles: list[Candle]


json_encode = msgspec.json.Encoder().encode

ORDER_QUERY_DECODER = msgspec.json.Decoder(OrderQuery)
ORDERS_QUERY_DECODER = msgspec.json.Decoder(OrdersQuery)
BALANCES_QUERY_DECODER = msgspec.json.Decoder(BalancesQuery)
DEPTH_QUERY_DECODER = msgspec.json.Decoder(DepthQuery)
TRADES_QUERY_DECODER = msgspec.json.Decoder(TradesQuery)
MEMBER_TRADES_QUERY_DECODER = msgspec.json.Decoder(MemberTradesQuery)
QUERY_ERROR_DECODER = msgspec.json.Decoder(QueryError)

ORDER_REPLY_DECODER = msgspec.json.Decoder(OrderView)
ORDERS_REPLY_DECODER = msgspec.json.Decoder(OrdersReply)
BALANCES_REPLY_DECODER = msgspec.json.Decoder(BalancesReply)
DEPTH_REPLY_DECODER = msgspec.json.Decoder(DepthView)
TRADES_REPLY_DECODER = msgspec.json.Decoder(TradesReply)
MEMBER_TRADES_REPLY_DECODER = msgspec.json.Decoder(MemberTradesReply)
QUERY_READY_DECODER = msgspec.json.Decoder(QueryReady)
TICKER_QUERY_DECODER = msgspec.json.Decoder(TickerQuery)
KLINES_QUERY_DECODER = msgspec.json.Decoder(KlinesQuery)
DEPTH_SNAPSHOT_QUERY_DECODER = msgspec.json.Decoder(DepthSnapshotQuery)
TICKER_REPLY_DECODER = msgspec.json.Decoder(Ticker)
KLINES_REPLY_DECODER = msgspec.json.Decoder(KlinesReply)
DEPTH_SNAPSHOT_REPLY_DECODER = msgspec.json.Decoder(DepthSnapshot)
STATISTICS_POSITION_DECODER = msgspec.json.Decoder(StatisticsPosition)
DEPTH_UPDATE_DECODER = msgspec.msgpack.Decoder(DepthUpdate)
TRADES_UPDATE_DECODER = msgspec.msgpack.Decoder(TradesUpdate)
TICKER_UPDATE_DECODER = msgspec.msgpack.Decoder(TickerUpdate)
KLINE_UPDATE_DECODER = msgspec.msgpack.Decoder(KlineUpdate)


# RabbitMQ order messages
#
# What a publisher sends to the ingress (`amqp-ingress`, JSON, one command per message): the REST
# body plus `command` and `member_id`; the AMQP `message_id` property is the idempotency key of a
# create (see docs/architecture.md, "RabbitMQ ingress"). Money is decimal strings, as in the API.

ClientOrderIdText = Annotated[
    str, msgspec.Meta(min_length=1, max_length=CLIENT_ORDER_ID_MAX, pattern=CLIENT_ORDER_ID_PATTERN)
]
"""The REST API's `client_order_id` rule (`bourse.entrypoints.rest.schemas.ClientOrderId`)."""
DecimalText = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
OrderIdText = str | int
"""An order id as the API writes it (a string of digits), or as an integer."""


class AmqpCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="command", tag="create"):
    """`POST /order`'s body (`bourse.entrypoints.rest.schemas.OrderIn`) for member `member_id`."""

    member_id: PositiveMemberId
    market: str
    side: Side
    amount: DecimalText
    type: OrderType = OrderType.LIMIT
    price: DecimalText | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    client_order_id: ClientOrderIdText | None = None
    """Unset: the message id is the client order id, so a redelivery is the same order."""


class AmqpCancel(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="command", tag="cancel"):
    """`DELETE /order/{order_id}`; `market` is optional (the accounts shard knows the order's)."""

    member_id: PositiveMemberId
    order_id: OrderIdText
    market: str | None = None


class AmqpAmend(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="command", tag="amend"):
    """`PATCH /order/{order_id}`'s body (`AmendIn`); `market` is required here: the ingress reads no
    order state, and the new price and amount are parsed on the market's grid."""

    member_id: PositiveMemberId
    order_id: OrderIdText
    market: str
    price: DecimalText | None = None
    amount: DecimalText | None = None


AmqpCommand = AmqpCreate | AmqpCancel | AmqpAmend


class AmqpReply(msgspec.Struct, frozen=True, omit_defaults=True):
    """Sent to the message's `reply_to` (default exchange), with its `correlation_id` (or, if it
    has none, its `message_id`). `status`: `accepted` (funds locked and passed to the engine;
    `order_status` and `executed` say where the engine left the order if it answered in time),
    `rejected` (`code`, `message`; nothing changed), `duplicate` (a create whose client order id
    was used: `order_id` is the first order's), or `submitted` (durable, no decision within
    `BOURSE_AMQP_REPLY_TIMEOUT_S`: it will be processed)."""

    message_id: str
    command: str
    status: str
    order_id: str | None = None
    client_order_id: str | None = None
    code: str | None = None
    message: str | None = None
    order_status: OrderStatus | None = None
    executed: str | None = None


AMQP_COMMAND_DECODER = msgspec.json.Decoder(AmqpCommand)
AMQP_REPLY_DECODER = msgspec.json.Decoder(AmqpReply)

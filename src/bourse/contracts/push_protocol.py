"""The pushers' WebSocket protocol: JSON text frames, in the style of the large exchanges' public
streams. `docs/asyncapi.yaml` documents it; `tests/services/test_push_protocol_doc.py` checks the
document against these structs and against what the service really sends.

A client sends operations (`op`): `subscribe` / `unsubscribe` a list of channels, `auth` with a
member JWT (the REST API's tokens), `ping`, `cancel_on_disconnect`. Each gets one answer naming
its `id` (the client's, echoed): `subscribed`, `unsubscribed`, `authenticated`, `pong`,
`cancel_on_disconnect`, or `error` with a stable `code`. Channel data comes as `ChannelMessage`:
the channel's name, its sequence (`seq`, +1 per message of that channel on this connection, no
gaps) and the data; private messages also carry the stream position they come from, which a
client that reconnects gives back (`auth.resume`) to be sent what it missed.

Money is a decimal string on the market's grid, as in the REST API; times are the engine's, in
ms since the epoch.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

Id = Annotated[int, msgspec.Meta(ge=0, le=2**53)] | str | None
"""The client's request id, echoed in the answer."""
ChannelNames = Annotated[
    list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(min_length=1, max_length=64)
]


class Subscribe(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op", tag="subscribe"):
    channels: ChannelNames
    id: Id = None


class Unsubscribe(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op", tag="unsubscribe"):
    channels: ChannelNames
    id: Id = None


class ResumeFrom(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A private message's place in the streams, which a client that reconnects gives back (the
    last one it processed): the pusher sends the member's private messages after it, then the
    live ones. One stream message may hold several of a member's messages (a fill: `my_trades`
    and `orders`): `*_part` is the message's place among them (1, 2, ...), 0 for the last one
    (the whole stream message is then processed)."""

    events: Annotated[int, msgspec.Meta(ge=0)] = 0
    accounts: Annotated[int, msgspec.Meta(ge=0)] = 0
    events_part: Annotated[int, msgspec.Meta(ge=0)] = 0
    accounts_part: Annotated[int, msgspec.Meta(ge=0)] = 0


class Auth(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op", tag="auth"):
    token: Annotated[str, msgspec.Meta(max_length=4096)]
    resume: ResumeFrom | None = None
    id: Id = None


class Ping(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op", tag="ping"):
    id: Id = None


class CancelOnDisconnect(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op", tag="cancel_on_disconnect"
):
    """Opt in (or out): when the member's last connection that opted in drops, their open
    orders are cancelled through the normal command path."""

    enabled: bool
    id: Id = None


ClientFrame = Subscribe | Unsubscribe | Auth | Ping | CancelOnDisconnect
CLIENT_FRAME_DECODER = msgspec.json.Decoder(ClientFrame)


# ---------------------------------------------------------------------- server -> client


class Subscribed(msgspec.Struct, frozen=True, tag_field="type", tag="subscribed"):
    id: Id
    channels: list[str]
    """The channels as the server names them (the speed made explicit: `trades.btc_usd@1000ms`)."""


class Unsubscribed(msgspec.Struct, frozen=True, tag_field="type", tag="unsubscribed"):
    id: Id
    channels: list[str]


class Authenticated(msgspec.Struct, frozen=True, tag_field="type", tag="authenticated"):
    id: Id
    member_id: int
    expires_at: int
    """ms since the epoch: the private subscriptions end then, with an `error` `token_expired`."""
    position: ResumeFrom
    """The private stream positions the live messages follow."""


class Pong(msgspec.Struct, frozen=True, tag_field="type", tag="pong"):
    id: Id
    time: int


class CancelOnDisconnectSet(msgspec.Struct, frozen=True, tag_field="type", tag="cancel_on_disconnect"):
    id: Id
    enabled: bool


class Error(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="type", tag="error"):
    code: str
    message: str
    id: Id = None
    channel: str | None = None


class Heartbeat(msgspec.Struct, frozen=True, tag_field="type", tag="heartbeat"):
    time: int


class ChannelMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    channel: str
    seq: int
    data: Any
    position: ResumeFrom | None = None
    """Private channels: the stream positions this message comes from."""


ServerFrame = Subscribed | Unsubscribed | Authenticated | Pong | CancelOnDisconnectSet | Error | Heartbeat


# ---------------------------------------------------------------------- channel data


class TradeData(msgspec.Struct, frozen=True):
    id: int
    price: str
    amount: str
    funds: str
    taker_side: str
    time: int


class TradesData(msgspec.Struct, frozen=True):
    market: str
    trades: list[TradeData]


class TickerData(msgspec.Struct, frozen=True):
    market: str
    open_time: int
    close_time: int
    open: str | None
    high: str | None
    low: str | None
    last: str | None
    volume: str
    quote_volume: str
    change: str
    change_percent: str
    trades: int
    best_bid: str | None
    best_ask: str | None
    sequence: int


class CandleData(msgspec.Struct, frozen=True):
    open_time: int
    open: str
    high: str
    low: str
    close: str
    volume: str
    quote_volume: str
    trades: int


class KlineData(msgspec.Struct, frozen=True):
    market: str
    period: str
    candles: list[CandleData]


class DepthData(msgspec.Struct, frozen=True):
    """`snapshot`: every level (then the levels are the book); else the levels whose total
    changed (0 removes). `sequence` is the statistics depth sequence the levels reach;
    `prev_sequence` the one of the previous depth message: a client holding a book at sequence S
    drops a message whose `sequence` <= S, applies it if `prev_sequence` <= S, and otherwise
    missed one and subscribes again for a snapshot."""

    market: str
    snapshot: bool
    sequence: int
    prev_sequence: int
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]


class OrderData(msgspec.Struct, frozen=True, omit_defaults=True):
    """One change of one of the member's orders: `event` is accepted, updated (a fill: executed,
    remaining, status), amended (price, amount, remaining), closed (status, reason, executed,
    funds) or rejected (reason: refused by the accounts stage or the engine)."""

    event: str
    order_id: str
    market: str
    time: int
    side: str | None = None
    type: str | None = None
    price: str | None = None
    amount: str | None = None
    executed: str | None = None
    remaining: str | None = None
    funds: str | None = None
    status: str | None = None
    reason: str | None = None
    client_order_id: str | None = None


class MyTradeData(msgspec.Struct, frozen=True):
    id: int
    market: str
    order_id: str
    side: str
    role: str
    price: str
    amount: str
    funds: str
    time: int


class BalanceData(msgspec.Struct, frozen=True):
    currency: str
    available: str
    locked: str


encode_frame = msgspec.json.Encoder().encode

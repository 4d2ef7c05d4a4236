"""The matching stage's state machine: one market, a pure function of its MATCH input.

Repeats after an accounts replay are skipped by each accounts shard's input sequence; the
engine's receive time is the input message's stream timestamp, so a replay produces the same
events and the same settlements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from bourse.contracts.messages import (
    AccountsItem,
    EngineEventItem,
    EventBatch,
    MatchBatch,
    Outcome,
)
from bourse.contracts.subjects import member_shard
from bourse.domain.matching import MatchingEngine
from bourse.domain.money import Market
from bourse.domain.orders import (
    CancelOrder,
    CloseReason,
    OrderAccepted,
    OrderAmended,
    OrderClosed,
    OrderRejected,
    OrderStatus,
    OrderUpdated,
    PlaceOrder,
    Trade,
)
from bourse.domain.values import Amount

_NOTHING_EXECUTED: Final = Amount(0)


@dataclass(slots=True)
class MarketOutput:
    events: EventBatch | None = None
    settlements: dict[int, list[AccountsItem]] = field(default_factory=dict)
    outcomes: dict[str, list[Outcome]] = field(default_factory=dict)
    """By the subject of whoever asked."""


class _MarketState(msgspec.Struct, frozen=True):
    last_seq: int
    applied: dict[int, int]
    engine: bytes


class MarketShard:
    """The deterministic state machine of one market: `process(seq, received_at, batch)`."""

    def __init__(self, engine: MatchingEngine, accounts_shards: int) -> None:
        self.engine = engine
        self.accounts_shards = accounts_shards
        self.last_seq = 0
        self._applied: dict[int, int] = {}
        """Per accounts shard, the last of its input sequences whose commands were matched."""

    @property
    def market(self) -> Market:
        return self.engine.market

    def process(self, seq: int, received_at: int, batch: MatchBatch) -> MarketOutput:
        out = MarketOutput()
        if seq <= self.last_seq:
            return out
        self.last_seq = seq
        events: list[EngineEventItem] = []
        process = self.engine.process
        applied = self._applied.get(batch.shard, 0)
        for segment in batch.segments:
            if segment.seq <= applied:
                continue  # carried by an earlier message: the accounts shard replayed
            applied = segment.seq
            outcomes = out.outcomes.setdefault(segment.reply_to, []) if segment.reply_to else None
            for command in segment.commands:
                produced = process(command, received_at)
                events.extend(produced)
                if outcomes is not None:
                    outcomes.append(_outcome(command, produced))
        if applied == self._applied.get(batch.shard, 0):
            return out
        self._applied[batch.shard] = applied
        shards = self.accounts_shards
        settlements = out.settlements
        for event in events:
            if isinstance(event, OrderUpdated):
                continue  # accounts needs fills as trades, not per-order updates
            if isinstance(event, Trade):
                maker, taker = (
                    member_shard(event.maker_member_id, shards),
                    member_shard(event.taker_member_id, shards),
                )
                settlements.setdefault(maker, []).append(event)
                if taker != maker:
                    settlements.setdefault(taker, []).append(event)
            else:
                settlements.setdefault(member_shard(event.member_id, shards), []).append(event)
        out.events = EventBatch(self.market.symbol, seq, received_at, events)
        return out

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(
            _MarketState(self.last_seq, dict(sorted(self._applied.items())), self.engine.snapshot())
        )

    @classmethod
    def restore(cls, market: Market, accounts_shards: int, data: bytes) -> MarketShard:
        state = msgspec.msgpack.decode(data, type=_MarketState)
        shard = cls(MatchingEngine.restore(market, state.engine), accounts_shards)
        shard.last_seq = state.last_seq
        shard._applied = dict(state.applied)
        return shard


def _outcome(command: PlaceOrder | CancelOrder | Any, events: Sequence[EngineEventItem]) -> Outcome:
    kind = (
        "place"
        if isinstance(command, PlaceOrder)
        else "cancel"
        if isinstance(command, CancelOrder)
        else "amend"
    )
    status: OrderStatus | None = None
    executed = _NOTHING_EXECUTED
    close_reason: CloseReason | None = None
    for event in events:
        if getattr(event, "order_id", None) != command.order_id:
            continue
        if isinstance(event, OrderRejected):
            return Outcome(command.order_id, kind, None, _NOTHING_EXECUTED, event.reason)
        if isinstance(event, OrderAccepted):
            status = OrderStatus.SUBMITTED
        elif isinstance(event, OrderUpdated):
            status, executed = event.status, event.executed
        elif isinstance(event, OrderAmended):
            executed = Amount(event.amount - event.remaining)
            status = OrderStatus.PARTIALLY_FILLED if executed else OrderStatus.SUBMITTED
        elif isinstance(event, OrderClosed):
            status, executed, close_reason = event.status, event.executed, event.reason
    return Outcome(command.order_id, kind, status, executed, None, close_reason)

"""matching: one order book per market, price-time priority; a single writer per market.

Input: the MATCH stream subject of the market (commands whose funds are locked, in segments
per accounts input message; repeats after an accounts replay are skipped). Output, per input
message: one `EventBatch` on EVENTS (for persistence, cache, statistics, pushers), one
`AccountsBatch` per accounts shard concerned (settlement), and the outcomes to the gateway that
asked. The engine's receive time is the input message's stream timestamp, so a replay after a
crash produces the same bytes and the same message ids, and JetStream drops the repeats.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg

from bourse.adapters.jetstream import (
    Outgoing,
    SnapshotSchedule,
    SnapshotStore,
    publish_durably,
    stream_position,
)
from bourse.contracts import (
    MATCH_BATCH_DECODER,
    AccountsBatch,
    AccountsItem,
    EngineEventItem,
    EventBatch,
    MatchBatch,
    Outcome,
    Outcomes,
    encode,
)
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
from bourse.runtime.service import Service, ServiceContext, StreamConsumer
from bourse.topology import EVENTS, MATCH, ORDERS, matching_consumer, member_shard


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
    executed = 0
    close_reason: CloseReason | None = None
    for event in events:
        if getattr(event, "order_id", None) != command.order_id:
            continue
        if isinstance(event, OrderRejected):
            return Outcome(command.order_id, kind, None, 0, event.reason)
        if isinstance(event, OrderAccepted):
            status = OrderStatus.SUBMITTED
        elif isinstance(event, OrderUpdated):
            status, executed = event.status, event.executed
        elif isinstance(event, OrderAmended):
            executed = event.amount - event.remaining
            status = OrderStatus.PARTIALLY_FILLED if executed else OrderStatus.SUBMITTED
        elif isinstance(event, OrderClosed):
            status, executed, close_reason = event.status, event.executed, event.reason
    return Outcome(command.order_id, kind, status, executed, None, close_reason)


class MatchingService(Service):
    name = "matching"
    description = "Order book per market, price-time priority; single writer per market"

    SNAPSHOT_EVERY_S = 5.0

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        catalog = ctx.catalog
        self.symbols = ctx.settings.matching_markets or list(catalog.markets)
        self.markets: dict[str, MarketShard] = {}
        self.snapshots = SnapshotStore(ctx.js, ctx.namespace)
        self.schedule = SnapshotSchedule(self.snapshots, self.SNAPSHOT_EVERY_S)
        self._unpublished: set[str] = set()
        self._processed = 0
        self._cpu_s = 0.0

    async def start(self) -> None:
        shards = self.ctx.settings.accounts_shards
        for symbol in self.symbols:
            market = self.ctx.catalog.markets[symbol]
            snapshot = await self.snapshots.load(f"matching.{symbol}")
            if snapshot is None:
                self.markets[symbol] = MarketShard(MatchingEngine(market), shards)
            else:
                self.markets[symbol] = MarketShard.restore(market, shards, snapshot.state)
                self.log.info("snapshot restored", extra={"market": symbol, "seq": snapshot.seq})
            self.schedule.restart_clock(f"matching.{symbol}")

    def consumers(self) -> Sequence[StreamConsumer]:
        return [
            StreamConsumer(
                MATCH,
                matching_consumer(symbol),
                MATCH.subject(self.ctx.namespace, symbol),
                self._handler(symbol),
                resume_after=self._resume_after(symbol),
            )
            for symbol in self.symbols
        ]

    def _resume_after(self, symbol: str) -> Any:
        return lambda: self.markets[symbol].last_seq

    def _handler(self, symbol: str) -> Any:
        async def handle(messages: Sequence[Msg]) -> None:
            await self._handle(symbol, messages)

        return handle

    async def _handle(self, symbol: str, messages: Sequence[Msg]) -> None:
        shard = self.markets[symbol]
        ns = self.ctx.namespace
        outgoing: list[Outgoing] = []
        replies: dict[str, list[Outcome]] = {}
        self._unpublished.add(symbol)
        started = time.process_time()
        for msg in messages:
            position = stream_position(msg)
            try:
                batch = MATCH_BATCH_DECODER.decode(msg.data)
            except msgspec.DecodeError as exc:
                # only the accounts stage writes this stream: a bad message is a bug, not a reason to stop
                self.log.error(
                    "undecodable input skipped",
                    extra={"market": symbol, "seq": position.seq, "error": str(exc)},
                )
                batch = MatchBatch(shard=-1, segments=[])
            out = shard.process(position.seq, position.timestamp_ns, batch)
            seq = position.seq
            if out.events is not None:
                outgoing.append(
                    Outgoing(EVENTS.subject(ns, symbol), encode(out.events), f"matching:{symbol}:{seq}")
                )
            for accounts_shard, items in sorted(out.settlements.items()):
                outgoing.append(
                    Outgoing(
                        ORDERS.subject(ns, accounts_shard),
                        encode(AccountsBatch(items, origin=("matching", symbol, seq))),
                        f"matching:{symbol}:{seq}:{accounts_shard}",
                    )
                )
            for asker, outcomes in out.outcomes.items():
                replies.setdefault(asker, []).extend(outcomes)
        self._cpu_s += time.process_time() - started
        self._processed += len(messages)
        # Answer before the outputs are stored: the input is durable and this stage is
        # deterministic, so a crash now replays to the very same answer and outputs.
        # one reply per asker per fetched batch, whatever number of its messages it held
        for subject, outcomes in replies.items():
            await self.ctx.nc.publish(subject, encode(Outcomes(outcomes)))
        await publish_durably(self.ctx.js, outgoing)
        self._unpublished.discard(symbol)
        # only a state whose outputs are all published may be saved: replay starts after it
        if self.schedule.due(f"matching.{symbol}"):
            self.schedule.save_in_background(f"matching.{symbol}", shard.last_seq, shard.snapshot())

    async def save_snapshot(self, symbol: str) -> None:
        """Only a state whose outputs are all published may be saved: replay starts after it."""
        if symbol in self._unpublished:
            return
        shard = self.markets[symbol]
        await self.schedule.save_now(f"matching.{symbol}", shard.last_seq, shard.snapshot())

    async def stop(self) -> None:
        for symbol in self.markets:
            await self.save_snapshot(symbol)
        await self.schedule.drain()

    def health(self) -> Mapping[str, Any]:
        return {
            "markets": {symbol: shard.last_seq for symbol, shard in self.markets.items()},
            "open_orders": {
                symbol: shard.engine.open_order_count() for symbol, shard in self.markets.items()
            },
            "messages": self._processed,
            "snapshots": self.schedule.health(),
            "cpu_s": round(self._cpu_s, 3),
        }

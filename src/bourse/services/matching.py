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
from bourse.application.matching_stage import MarketShard
from bourse.contracts.messages import (
    MATCH_BATCH_DECODER,
    AccountsBatch,
    MatchBatch,
    Outcome,
    Outcomes,
    encode,
)
from bourse.contracts.subjects import EVENTS, MATCH, ORDERS, matching_consumer
from bourse.domain.matching import MatchingEngine
from bourse.runtime.service import Service, ServiceContext, StreamConsumer


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

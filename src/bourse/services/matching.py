"""matching: one order book per market, price-time priority; a single writer per market.

Input: the MATCH stream subject of the market (commands whose funds are locked, in segments
per accounts input message; repeats after an accounts replay are skipped). Output, per input
message: one `EventBatch` on EVENTS (for persistence, cache, statistics, pushers), one
`AccountsBatch` per accounts shard concerned (settlement), and the outcomes to the gateway that
asked. The engine's receive time is the input message's stream timestamp, so a replay after a
crash produces the same bytes and the same message ids, and JetStream drops the repeats.

A composition: the pure state machine of one market (`bourse.application.matching_stage`), run
by the stateful-stage shell (`bourse.runtime.stage`); this module says how outputs are encoded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bourse.adapters.jetstream import Outgoing
from bourse.adapters.metrics import Sample, snapshot_age_samples
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
from bourse.runtime.stage import Positioned, StageOutputs, StatefulStage


class MatchingService(Service):
    name = "matching"
    description = "Order book per market, price-time priority; single writer per market"

    SNAPSHOT_EVERY_S = 5.0

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        self.stage: StatefulStage[str, MarketShard, MatchBatch] = StatefulStage(
            self,
            stream=MATCH,
            keys=ctx.settings.matching_markets or list(ctx.catalog.markets),
            key_label="market",
            durable=matching_consumer,
            decoder=MATCH_BATCH_DECODER,
            undecodable=MatchBatch(shard=-1, segments=[]),
            load=self._load,
            step=self._step,
            snapshot_every_s=self.SNAPSHOT_EVERY_S,
        )

    def _load(self, symbol: str, state: bytes | None) -> MarketShard:
        market = self.ctx.catalog.markets[symbol]
        shards = self.ctx.settings.accounts_shards
        if state is None:
            return MarketShard(MatchingEngine(market), shards)
        return MarketShard.restore(market, shards, state)

    async def start(self) -> None:
        await self.stage.start()

    def consumers(self) -> Sequence[StreamConsumer]:
        return self.stage.consumers()

    def _step(
        self, symbol: str, shard: MarketShard, inputs: Sequence[Positioned[MatchBatch]]
    ) -> StageOutputs:
        """Per input message: one EVENTS message and one settlement message per accounts shard
        concerned, named by the input sequence; one reply per asker per fetched batch."""
        ns = self.ctx.namespace
        outputs = StageOutputs()
        replies: dict[str, list[Outcome]] = {}
        for item in inputs:
            seq = item.seq
            out = shard.process(seq, item.timestamp_ns, item.value)
            if out.events is not None:
                outputs.outgoing.append(
                    Outgoing(EVENTS.subject(ns, symbol), encode(out.events), f"matching:{symbol}:{seq}")
                )
            for accounts_shard, items in sorted(out.settlements.items()):
                outputs.outgoing.append(
                    Outgoing(
                        ORDERS.subject(ns, accounts_shard),
                        encode(AccountsBatch(items, origin=("matching", symbol, seq))),
                        f"matching:{symbol}:{seq}:{accounts_shard}",
                    )
                )
            for asker, outcomes in out.outcomes.items():
                replies.setdefault(asker, []).extend(outcomes)
        outputs.replies = [(subject, encode(Outcomes(outcomes))) for subject, outcomes in replies.items()]
        return outputs

    async def stop(self) -> None:
        await self.stage.stop()

    def health(self) -> Mapping[str, Any]:
        machines = self.stage.machines
        return {
            "markets": self.stage.positions(),
            "open_orders": {symbol: shard.engine.open_order_count() for symbol, shard in machines.items()},
            **self.stage.health(),
        }

    def samples(self) -> Iterable[Sample]:
        return snapshot_age_samples(self.name, self.stage.schedule.ages())

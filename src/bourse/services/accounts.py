"""accounts: member balances, sharded by member. Locks funds before matching, settles trades and
releases locks after it, keeps the double-entry ledger.

A composition: the pure state machine of one member shard (`bourse.application.accounts_stage`),
run by the stateful-stage shell (`bourse.runtime.stage`) over its ORDERS subject; this module
only says how a batch's outputs are encoded and where they go.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bourse.adapters.jetstream import Outgoing
from bourse.adapters.metrics import Sample, snapshot_age_samples
from bourse.application.accounts_stage import AccountsShard
from bourse.contracts.messages import (
    ACCOUNTS_BATCH_DECODER,
    AccountsBatch,
    AccountsReport,
    AccountsReports,
    Decision,
    Decisions,
    Deposit,
    MatchBatch,
    MatchSegment,
    encode,
)
from bourse.contracts.subjects import ACCOUNTS, MATCH, ORDERS, accounts_consumer, member_shard
from bourse.runtime.service import Service, ServiceContext, StreamConsumer
from bourse.runtime.stage import Positioned, StageOutputs, StatefulStage


class AccountsService(Service):
    name = "accounts"
    description = "Balances and ledger by member shard: lock on order, settle trades, release on close"

    SNAPSHOT_EVERY_S = 5.0

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.stage: StatefulStage[int, AccountsShard, AccountsBatch] = StatefulStage(
            self,
            stream=ORDERS,
            keys=settings.accounts_shard_ids or list(range(settings.accounts_shards)),
            key_label="shard",
            durable=accounts_consumer,
            decoder=ACCOUNTS_BATCH_DECODER,
            undecodable=AccountsBatch([]),
            load=self._load,
            step=self._step,
            snapshot_every_s=self.SNAPSHOT_EVERY_S,
            linger_s=settings.accounts_linger_s,
        )

    def _load(self, shard_id: int, state: bytes | None) -> AccountsShard:
        catalog, cap = self.ctx.catalog, self.ctx.settings.max_open_orders_per_member
        if state is None:
            return AccountsShard.empty(shard_id, catalog, record_entries=True, max_open_orders_per_member=cap)
        return AccountsShard.restore(
            shard_id, catalog, state, record_entries=True, max_open_orders_per_member=cap
        )

    async def start(self) -> None:
        await self.stage.start()
        if self.ctx.settings.demo_seed:
            await self._seed_demo_members()

    async def _seed_demo_members(self) -> None:
        """Credit the demo members' starting balances once (deposits are idempotent by ref)."""
        settings, js = self.ctx.settings, self.ctx.js
        for member in self.ctx.catalog.demo_members:
            shard = member_shard(member.id, settings.accounts_shards)
            if shard not in self.stage.machines:
                continue
            deposits: list[Any] = [
                Deposit(member.id, currency, amount, f"demo:{member.id}:{currency}")
                for currency, amount in sorted(member.balances.items())
            ]
            await js.publish(
                ORDERS.subject(self.ctx.namespace, shard),
                encode(AccountsBatch(deposits)),
                headers={"Nats-Msg-Id": f"seed:{member.id}"},
            )

    def consumers(self) -> Sequence[StreamConsumer]:
        return self.stage.consumers()

    def _step(
        self, shard_id: int, shard: AccountsShard, inputs: Sequence[Positioned[AccountsBatch]]
    ) -> StageOutputs:
        """One MATCH message per market per fetched batch, named by the input range it covers; one
        ACCOUNTS report message; one reply per asker, whatever number of its messages it held."""
        ns = self.ctx.namespace
        replies: dict[str, list[Decision]] = {}
        segments: dict[str, list[MatchSegment]] = {}
        reports: list[AccountsReport] = []
        for item in inputs:
            batch = item.value
            out = shard.process(item.seq, batch, item.timestamp_ns)
            for market, commands in out.match.items():
                segments.setdefault(market, []).append(MatchSegment(item.seq, commands, batch.reply_to))
            if out.report is not None:
                reports.append(out.report)
            if batch.reply_to and out.decisions:
                replies.setdefault(batch.reply_to, []).extend(out.decisions)
        outputs = StageOutputs(
            replies=[(subject, encode(Decisions(decisions))) for subject, decisions in replies.items()]
        )
        for market, parts in sorted(segments.items()):
            outputs.outgoing.append(
                Outgoing(
                    MATCH.subject(ns, market),
                    encode(MatchBatch(shard_id, parts)),
                    f"accounts:{shard_id}:{parts[0].seq}-{parts[-1].seq}:{market}",
                )
            )
        if reports:
            outputs.outgoing.append(
                Outgoing(
                    ACCOUNTS.subject(ns, shard_id),
                    encode(AccountsReports(shard_id, reports)),
                    f"accounts:{shard_id}:{reports[0].seq}-{reports[-1].seq}",
                )
            )
        return outputs

    async def stop(self) -> None:
        await self.stage.stop()

    def health(self) -> Mapping[str, Any]:
        return {"shards": self.stage.positions(), **self.stage.health()}

    def samples(self) -> Iterable[Sample]:
        return snapshot_age_samples(self.name, self.stage.schedule.ages())

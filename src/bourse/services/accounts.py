"""accounts: member balances, sharded by member. Locks funds before matching, settles trades and
releases locks after it, keeps the double-entry ledger.

Each shard is a single writer over one input stream subject (`<ns>.orders.<shard>`) that carries,
in one order, the members' commands and the matching engine's events about them, so the shard's
state is a pure function of that stream (`AccountsShard`). The service around it reads the
stream in batches, publishes the outputs with deterministic message ids, acks, and snapshots.
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


class AccountsService(Service):
    name = "accounts"
    description = "Balances and ledger by member shard: lock on order, settle trades, release on close"

    SNAPSHOT_EVERY_S = 5.0

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.shard_ids = settings.accounts_shard_ids or list(range(settings.accounts_shards))
        self.shards: dict[int, AccountsShard] = {}
        self.snapshots = SnapshotStore(ctx.js, ctx.namespace)
        self.schedule = SnapshotSchedule(self.snapshots, self.SNAPSHOT_EVERY_S)
        self._unpublished: set[int] = set()
        self._processed = 0
        self._cpu_s = 0.0

    async def start(self) -> None:
        catalog = self.ctx.catalog
        for shard_id in self.shard_ids:
            snapshot = await self.snapshots.load(f"accounts.{shard_id}")
            if snapshot is None:
                shard = AccountsShard.empty(shard_id, catalog, record_entries=True)
            else:
                shard = AccountsShard.restore(shard_id, catalog, snapshot.state, record_entries=True)
                self.log.info("snapshot restored", extra={"shard": shard_id, "seq": shard.last_seq})
            self.shards[shard_id] = shard
            self.schedule.restart_clock(f"accounts.{shard_id}")
        if self.ctx.settings.demo_seed:
            await self._seed_demo_members()

    async def _seed_demo_members(self) -> None:
        """Credit the demo members' starting balances once (deposits are idempotent by ref)."""
        settings, js = self.ctx.settings, self.ctx.js
        for member in self.ctx.catalog.demo_members:
            shard = member_shard(member.id, settings.accounts_shards)
            if shard not in self.shards:
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
        return [
            StreamConsumer(
                ORDERS,
                accounts_consumer(shard_id),
                ORDERS.subject(self.ctx.namespace, shard_id),
                self._handler(shard_id),
                resume_after=self._resume_after(shard_id),
                linger_s=self.ctx.settings.accounts_linger_s,
            )
            for shard_id in self.shard_ids
        ]

    def _resume_after(self, shard_id: int) -> Any:
        return lambda: self.shards[shard_id].last_seq

    def _handler(self, shard_id: int) -> Any:
        async def handle(messages: Sequence[Msg]) -> None:
            await self._handle(shard_id, messages)

        return handle

    async def _handle(self, shard_id: int, messages: Sequence[Msg]) -> None:
        shard = self.shards[shard_id]
        ns = self.ctx.namespace
        outgoing: list[Outgoing] = []
        replies: dict[str, list[Decision]] = {}
        segments: dict[str, list[MatchSegment]] = {}
        reports: list[AccountsReport] = []
        self._unpublished.add(shard_id)
        started = time.process_time()
        for msg in messages:
            position = stream_position(msg)
            seq = position.seq
            try:
                batch = ACCOUNTS_BATCH_DECODER.decode(msg.data)
            except msgspec.DecodeError as exc:
                # only our own services write this stream: a bad message is a bug, not a reason to stop
                self.log.error(
                    "undecodable input skipped", extra={"shard": shard_id, "seq": seq, "error": str(exc)}
                )
                batch = AccountsBatch([])
            out = shard.process(seq, batch, position.timestamp_ns)
            for market, commands in out.match.items():
                segments.setdefault(market, []).append(MatchSegment(seq, commands, batch.reply_to))
            if out.report is not None:
                reports.append(out.report)
            if batch.reply_to and out.decisions:
                replies.setdefault(batch.reply_to, []).extend(out.decisions)
        # one MATCH message per market per fetched batch, named by the input range it covers
        for market, parts in sorted(segments.items()):
            outgoing.append(
                Outgoing(
                    MATCH.subject(ns, market),
                    encode(MatchBatch(shard_id, parts)),
                    f"accounts:{shard_id}:{parts[0].seq}-{parts[-1].seq}:{market}",
                )
            )
        if reports:
            outgoing.append(
                Outgoing(
                    ACCOUNTS.subject(ns, shard_id),
                    encode(AccountsReports(shard_id, reports)),
                    f"accounts:{shard_id}:{reports[0].seq}-{reports[-1].seq}",
                )
            )
        self._cpu_s += time.process_time() - started
        self._processed += len(messages)
        # Answer before the outputs are stored: the input is durable and this stage is
        # deterministic, so a crash now replays to the very same answer and outputs.
        # one reply per asker per fetched batch, whatever number of its messages it held
        for subject, decisions in replies.items():
            await self.ctx.nc.publish(subject, encode(Decisions(decisions)))
        await publish_durably(self.ctx.js, outgoing)
        self._unpublished.discard(shard_id)
        # only a state whose outputs are all published may be saved: replay starts after it
        if self.schedule.due(f"accounts.{shard_id}"):
            self.schedule.save_in_background(f"accounts.{shard_id}", shard.last_seq, shard.snapshot())

    async def save_snapshot(self, shard_id: int) -> None:
        """Only a state whose outputs are all published may be saved: replay starts after it."""
        if shard_id in self._unpublished:
            return
        shard = self.shards[shard_id]
        await self.schedule.save_now(f"accounts.{shard_id}", shard.last_seq, shard.snapshot())

    async def stop(self) -> None:
        for shard_id in self.shards:
            await self.save_snapshot(shard_id)
        await self.schedule.drain()

    def health(self) -> Mapping[str, Any]:
        return {
            "shards": {str(shard_id): shard.last_seq for shard_id, shard in self.shards.items()},
            "messages": self._processed,
            "snapshots": self.schedule.health(),
            "cpu_s": round(self._cpu_s, 3),
        }

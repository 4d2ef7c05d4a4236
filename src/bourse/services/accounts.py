"""accounts: member balances, sharded by member. Locks funds before matching, settles trades and
releases locks after it, keeps the double-entry ledger.

Each shard is a single writer over one input stream subject (`<ns>.orders.<shard>`) that carries,
in one order, the members' commands and the matching engine's events about them, so the shard's
state is a pure function of that stream (`AccountsShard`). The service around it reads the
stream in batches, publishes the outputs with deterministic message ids, acks, and snapshots.
"""

from __future__ import annotations

import time
from collections import deque
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
from bourse.catalog import Catalog
from bourse.contracts import (
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
from bourse.domain.accounts import Accounts, BalanceChanged, FeeSchedule
from bourse.domain.orders import (
    AmendOrder,
    CancelOrder,
    OrderRejected,
    PlaceOrder,
    RejectReason,
    command_kind,
)
from bourse.runtime.service import Service, ServiceContext, StreamConsumer
from bourse.topology import ACCOUNTS, MATCH, ORDERS, accounts_consumer, member_shard

CLIENT_ID_MEMORY = 1_000_000
"""How many (member, client_order_id) pairs a shard remembers to make resubmission idempotent."""


def fee_schedule(catalog: Catalog) -> FeeSchedule:
    return FeeSchedule(
        markets={symbol: (fees.maker_ppm, fees.taker_ppm) for symbol, fees in catalog.fees.items()}
    )


@dataclass(slots=True)
class ShardOutput:
    match: dict[str, list[PlaceOrder | CancelOrder | AmendOrder]] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    report: AccountsReport | None = None


class _ShardState(msgspec.Struct, frozen=True):
    last_seq: int
    applied: dict[str, int]
    deposits: list[str]
    client_ids: list[tuple[int, str, int]]
    accounts: bytes


class AccountsShard:
    """The deterministic state machine of one shard: `process(seq, batch)` for each input message."""

    def __init__(self, shard: int, accounts: Accounts) -> None:
        self.shard = shard
        self.accounts = accounts
        self.last_seq = 0
        self._applied: dict[str, int] = {}
        """Per market, the last matching input sequence whose events were applied."""
        self._deposits: set[str] = set()
        self._client_ids: dict[tuple[int, str], int] = {}
        self._client_order: deque[tuple[int, str]] = deque()

    def process(self, seq: int, batch: AccountsBatch, stored_at_ns: int = 0) -> ShardOutput:
        """Apply one input message; `stored_at_ns` is the stream's timestamp of it (the same on
        every replay), checked against the batch's deadline."""
        out = ShardOutput()
        if seq <= self.last_seq:
            return out
        self.last_seq = seq
        if batch.deadline_ns is not None and stored_at_ns > batch.deadline_ns:
            out.decisions.extend(
                Decision(item.order_id, command_kind(item), False, RejectReason.EXPIRED)
                for item in batch.items
                if isinstance(item, PlaceOrder | CancelOrder | AmendOrder)
            )
            return out
        rejected: list[OrderRejected] = []
        balances: dict[tuple[int, str], BalanceChanged] = {}
        accounts = self.accounts
        if batch.origin is not None:
            _stage, market, origin_seq = batch.origin
            if origin_seq <= self._applied.get(market, 0):
                return out
            self._applied[market] = origin_seq
        for item in batch.items:
            if isinstance(item, PlaceOrder | CancelOrder | AmendOrder):
                self._command(item, out, rejected)
            elif isinstance(item, Deposit):
                if item.ref in self._deposits or item.amount <= 0 or item.member_id <= 0:
                    continue  # a repeat, or nothing a member could own: skipped on every replay alike
                if item.currency not in accounts.currencies:
                    continue
                self._deposits.add(item.ref)
                accounts.deposit(item.member_id, item.currency, item.amount, seq)
            else:
                for change in accounts.apply(item):
                    balances[(change.member_id, change.currency)] = change
        for change in accounts.take_changes():
            balances[(change.member_id, change.currency)] = change
        entries = accounts.take_entries()
        if rejected or balances or entries:
            out.report = AccountsReport(self.shard, seq, rejected, list(balances.values()), entries)
        return out

    def _command(
        self, cmd: PlaceOrder | CancelOrder | AmendOrder, out: ShardOutput, rejected: list[OrderRejected]
    ) -> None:
        kind = command_kind(cmd)
        if not cmd.market and not isinstance(cmd, PlaceOrder):
            # cancel/amend by id alone: the shard knows the market of its members' open orders
            lock = self.accounts.order_lock(cmd.order_id)
            if lock is not None and lock.member_id == cmd.member_id:
                cmd = msgspec.structs.replace(cmd, market=lock.market)
        client_key: tuple[int, str] | None = None
        if isinstance(cmd, PlaceOrder) and cmd.client_order_id is not None:
            client_key = (cmd.member_id, cmd.client_order_id)
            first = self._client_ids.get(client_key)
            if first is not None:
                # reported, not only answered: a sender that stopped waiting (202) has told its
                # client this order id, which must then read as refused, not unknown
                reason = RejectReason.CLIENT_ORDER_ID_TAKEN
                rejected.append(OrderRejected(cmd.order_id, cmd.member_id, cmd.market, reason, kind))
                out.decisions.append(Decision(cmd.order_id, kind, False, reason, first))
                return
        result = self.accounts.submit(cmd)
        if isinstance(result, OrderRejected):
            rejected.append(result)
            out.decisions.append(Decision(cmd.order_id, kind, False, result.reason))
            return
        if client_key is not None:
            self._remember_client_id(client_key, cmd.order_id)
        out.match.setdefault(cmd.market, []).append(result)
        out.decisions.append(Decision(cmd.order_id, kind, True))

    def _remember_client_id(self, key: tuple[int, str], order_id: int) -> None:
        if len(self._client_order) >= CLIENT_ID_MEMORY:
            self._client_ids.pop(self._client_order.popleft(), None)
        self._client_ids[key] = order_id
        self._client_order.append(key)

    def snapshot(self) -> bytes:
        state = _ShardState(
            last_seq=self.last_seq,
            applied=dict(sorted(self._applied.items())),
            deposits=sorted(self._deposits),
            client_ids=[
                (member, client_id, self._client_ids[(member, client_id)])
                for member, client_id in self._client_order
            ],
            accounts=self.accounts.snapshot(),
        )
        return msgspec.msgpack.encode(state)

    @classmethod
    def restore(cls, shard: int, catalog: Catalog, data: bytes, *, record_entries: bool) -> AccountsShard:
        state = msgspec.msgpack.decode(data, type=_ShardState)
        accounts = Accounts.restore(
            catalog.markets, fee_schedule(catalog), state.accounts, record_entries=record_entries
        )
        restored = cls(shard, accounts)
        restored.last_seq = state.last_seq
        restored._applied = dict(state.applied)
        restored._deposits = set(state.deposits)
        for member, client_id, order_id in state.client_ids:
            restored._remember_client_id((member, client_id), order_id)
        return restored

    @classmethod
    def empty(cls, shard: int, catalog: Catalog, *, record_entries: bool) -> AccountsShard:
        return cls(shard, Accounts(catalog.markets, fee_schedule(catalog), record_entries=record_entries))


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

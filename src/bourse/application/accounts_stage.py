"""The accounts stage's state machine: one member shard, a pure function of its input stream.

Each shard is a single writer over one input stream subject (`<ns>.orders.<shard>`) that carries,
in one order, the members' commands and the matching engine's events about them, so the shard's
state and outputs are a pure function of that stream.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import msgspec

from bourse.application.catalog import Catalog
from bourse.contracts.messages import (
    AccountsBatch,
    AccountsReport,
    Decision,
    Deposit,
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
from bourse.domain.values import MemberId, OrderId

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
    client_ids: list[tuple[MemberId, str, OrderId]]
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
        self._client_ids: dict[tuple[MemberId, str], OrderId] = {}
        self._client_order: deque[tuple[MemberId, str]] = deque()

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
        balances: dict[tuple[MemberId, str], BalanceChanged] = {}
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
        client_key: tuple[MemberId, str] | None = None
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

    def _remember_client_id(self, key: tuple[MemberId, str], order_id: OrderId) -> None:
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
    def restore(
        cls,
        shard: int,
        catalog: Catalog,
        data: bytes,
        *,
        record_entries: bool,
        max_open_orders_per_member: int | None = None,
    ) -> AccountsShard:
        """The shard in the state `snapshot()` saved. The cap on open orders is configuration, not
        state: a changed one applies to the commands after the snapshot (stop the stage cleanly,
        which saves a snapshot of everything decided, before changing it, so no decision already
        published is made again under another cap)."""
        state = msgspec.msgpack.decode(data, type=_ShardState)
        accounts = Accounts.restore(
            catalog.markets,
            fee_schedule(catalog),
            state.accounts,
            record_entries=record_entries,
            max_open_orders_per_member=max_open_orders_per_member,
        )
        restored = cls(shard, accounts)
        restored.last_seq = state.last_seq
        restored._applied = dict(state.applied)
        restored._deposits = set(state.deposits)
        for member, client_id, order_id in state.client_ids:
            restored._remember_client_id((member, client_id), order_id)
        return restored

    @classmethod
    def empty(
        cls,
        shard: int,
        catalog: Catalog,
        *,
        record_entries: bool,
        max_open_orders_per_member: int | None = None,
    ) -> AccountsShard:
        accounts = Accounts(
            catalog.markets,
            fee_schedule(catalog),
            record_entries=record_entries,
            max_open_orders_per_member=max_open_orders_per_member,
        )
        return cls(shard, accounts)

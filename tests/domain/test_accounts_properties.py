"""Properties of the accounts stage over random command sequences, matched by the real engine:
determinism, snapshot + restore + replay = straight run, balanced entries, sharding."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from bourse.domain.ledger import LedgerEntry
from tests.domain.accounts_checks import (
    assert_accounts_consistent,
    assert_entries_balance,
    assert_journal_matches,
)
from tests.domain.exchange_driver import CURRENCIES, MEMBERS, Deposit, Exchange, Op, Place, encode, ops

# Start every run with some money so that most orders pass the funds check.
FUNDING: list[Op] = [Deposit(member, currency, 3_000) for member in MEMBERS for currency in CURRENCIES]
FUNDING += [Deposit(member, "USD", 300_000) for member in MEMBERS]

sequences = st.lists(ops, min_size=10, max_size=60)


@settings(max_examples=60, deadline=None)
@given(sequences, st.data())
def test_snapshot_restore_and_replay_equals_a_straight_run(operations: list[Op], data: st.DataObject) -> None:
    operations = FUNDING + operations
    cut = data.draw(st.integers(0, len(operations)), label="cut")

    straight = Exchange()
    outputs = [encode(straight.run(op)) for op in operations]

    again = Exchange()
    assert [encode(again.run(op)) for op in operations] == outputs  # deterministic

    first = Exchange()
    for op in operations[:cut]:
        first.run(op)
    restored = Exchange.restore(first)
    assert restored.snapshot() == first.snapshot()
    assert [encode(restored.run(op)) for op in operations[cut:]] == outputs[cut:]
    assert restored.snapshot() == straight.snapshot()


@settings(max_examples=60, deadline=None)
@given(sequences)
def test_every_operation_books_balanced_entries_that_rebuild_every_balance(operations: list[Op]) -> None:
    exchange = Exchange()
    journal: list[LedgerEntry] = []
    for op in FUNDING + operations:
        entries = [out for out in exchange.run(op) if isinstance(out, LedgerEntry)]
        assert_entries_balance(entries)
        journal += entries
        assert_accounts_consistent(exchange.accounts)
    assert_journal_matches(exchange.accounts.ledger, journal)


@settings(max_examples=60, deadline=None)
@given(sequences)
def test_accounts_sharded_by_member_give_every_member_the_same_balances(operations: list[Op]) -> None:
    # a shard only knows its own members' order ids: reusing another member's id is a duplicate
    # for one stage but not for the other; ids are unique by construction (the ids service)
    operations = [replace(op, reuse=None) if isinstance(op, Place) else op for op in operations]
    whole = Exchange()
    sharded = Exchange(shards=2)
    for op in FUNDING + operations:
        whole.run(op)
        sharded.run(op)
        for shard in sharded.shards:
            assert_accounts_consistent(shard)
    # the same commands reach the engines, so the books are the same
    assert [e.snapshot() for e in whole.engines.values()] == [e.snapshot() for e in sharded.engines.values()]
    ledger = whole.accounts.ledger
    merged: dict[tuple[int, str], tuple[int, int]] = {}
    for shard in sharded.shards:
        for account, currency, available, locked in shard.ledger.balances():
            prev = merged.get((account, currency), (0, 0))
            merged[(account, currency)] = (prev[0] + available, prev[1] + locked)
    assert merged == {(a, c): (av, lk) for a, c, av, lk in ledger.balances()}
    for currency in CURRENCIES:
        # each shard settles its half of a cross-shard trade against clearing; the halves cancel out
        assert sum(shard.ledger.clearing(currency) for shard in sharded.shards) == 0
        assert ledger.clearing(currency) == 0
        assert sum(shard.ledger.world(currency) for shard in sharded.shards) == ledger.world(currency)
    for member in MEMBERS:
        owner = sharded.shard(member)
        for currency in CURRENCIES:
            assert owner.ledger.balance(member, currency) == ledger.balance(member, currency)

"""Invariant checks shared by the ledger, accounts and exchange tests (not a test module).

They read the ledger and the accounts stage through their public API only, so that they prove
the invariants rather than repeat the code under test.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from bourse.domain.accounts import Accounts
from bourse.domain.ledger import Bucket, Ledger, LedgerEntry


def assert_conserved(ledger: Ledger, currencies: Iterable[str]) -> None:
    """Members + exchange + world + clearing sum to zero for every currency."""
    for currency in currencies:
        total = ledger.total(currency)
        assert total + ledger.world(currency) + ledger.clearing(currency) == 0, currency
        # The world never holds more than it put in, counting what is in transit: a member may
        # withdraw what a buy half credited before its sell half has reached clearing, so the
        # world alone can be positive for a while (hypothesis found it), world + clearing not.
        assert ledger.world(currency) + ledger.clearing(currency) <= 0, currency


def assert_no_negative(ledger: Ledger) -> None:
    for account, currency, available, locked in ledger.balances():
        assert available >= 0, (account, currency, available)
        assert locked >= 0, (account, currency, locked)


def assert_entries_balance(entries: Iterable[LedgerEntry]) -> None:
    """The entries of one operation (or of any number of whole operations) sum to zero per
    currency."""
    sums: dict[str, int] = defaultdict(int)
    for entry in entries:
        assert entry.delta != 0, entry
        sums[entry.currency] += entry.delta
    assert all(total == 0 for total in sums.values()), dict(sums)


def assert_journal_matches(ledger: Ledger, journal: Iterable[LedgerEntry]) -> None:
    """Summing every entry ever recorded gives back every balance: the entries are a complete
    journal of the ledger (a persistence layer can rebuild balances from them)."""
    sums: dict[tuple[int, str, Bucket], int] = defaultdict(int)
    for entry in journal:
        sums[(entry.account, entry.currency, entry.bucket)] += entry.delta
    for account, currency, available, locked in ledger.balances():
        assert sums.pop((account, currency, Bucket.AVAILABLE), 0) == available, (account, currency)
        assert sums.pop((account, currency, Bucket.LOCKED), 0) == locked, (account, currency)
    world = {key: value for key, value in sums.items() if key[0] == -1}
    clearing = {key: value for key, value in sums.items() if key[0] == -2}
    for (_, currency, bucket), value in world.items():
        assert bucket is Bucket.AVAILABLE
        assert value == ledger.world(currency)
        del sums[(-1, currency, bucket)]
    for (_, currency, bucket), value in clearing.items():
        assert bucket is Bucket.AVAILABLE
        assert value == ledger.clearing(currency)
        del sums[(-2, currency, bucket)]
    assert all(value == 0 for value in sums.values()), dict(sums)


def assert_locks_match_orders(accounts: Accounts) -> None:
    """Each member's locked balance of each currency is the sum of the locks of their open
    orders; no order has a negative lock."""
    expected: dict[tuple[int, str], int] = defaultdict(int)
    for lock in accounts.open_orders():
        assert lock.locked >= 0, lock
        assert lock.remaining >= 0, lock
        market = accounts.markets[lock.market]
        currency = market.quote.code if lock.side == "buy" else market.base.code
        expected[(lock.member_id, currency)] += lock.locked
    for account, currency, _, locked in accounts.ledger.balances():
        assert locked == expected.pop((account, currency), 0), (account, currency)
    assert all(value == 0 for value in expected.values()), dict(expected)


def assert_accounts_consistent(accounts: Accounts) -> None:
    ledger = accounts.ledger
    assert_conserved(ledger, accounts.currencies)
    assert_no_negative(ledger)
    assert_locks_match_orders(accounts)

"""The double-entry ledger: every rule, then properties over random operation sequences."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bourse.domain.ledger import (
    CLEARING_ACCOUNT,
    EXCHANGE_MEMBER,
    PPM,
    WORLD_ACCOUNT,
    Balance,
    Bucket,
    InsufficientFundsError,
    InvalidAmountError,
    InvalidFeeRateError,
    Ledger,
    LedgerEntry,
    LedgerError,
    RefType,
    fee_for,
)
from bourse.domain.values import MemberId, OrderId, QuoteUnits, TradeId
from tests.domain.accounts_checks import (
    assert_conserved,
    assert_entries_balance,
    assert_journal_matches,
    assert_no_negative,
)

BTC = "BTC"
USD = "USD"


def funded(**balances: int) -> Ledger:
    """A ledger where member 1 holds `a_btc`/`a_usd` and member 2 `b_btc`/`b_usd` available."""
    ledger = Ledger()
    for key, amount in balances.items():
        member = {"a": 1, "b": 2}[key[0]]
        ledger.deposit(MemberId(member), key[2:].upper(), amount, ref_id=0)
    return ledger


def state(ledger: Ledger) -> bytes:
    return msgspec.msgpack.encode(ledger.dump())


# --- deposits and withdrawals ---


def test_deposit_credits_available_and_is_booked_against_the_world() -> None:
    ledger = Ledger()
    entries: list[LedgerEntry] = []
    ledger.deposit(MemberId(1), USD, 500, ref_id=7, entries=entries)
    assert ledger.balance(1, USD) == Balance(500, 0)
    assert ledger.world(USD) == -500
    assert entries == [
        LedgerEntry(WORLD_ACCOUNT, USD, Bucket.AVAILABLE, -500, RefType.DEPOSIT, 7),
        LedgerEntry(1, USD, Bucket.AVAILABLE, 500, RefType.DEPOSIT, 7),
    ]


@pytest.mark.parametrize("amount", [0, -1])
def test_deposit_of_a_non_positive_amount_is_refused(amount: int) -> None:
    ledger = Ledger()
    with pytest.raises(InvalidAmountError):
        ledger.deposit(MemberId(1), USD, amount, ref_id=1)
    assert list(ledger.balances()) == []
    assert ledger.world(USD) == 0


def test_withdraw_debits_available_to_the_world() -> None:
    ledger = funded(a_usd=500)
    entries: list[LedgerEntry] = []
    ledger.withdraw(MemberId(1), USD, 200, ref_id=9, entries=entries)
    assert ledger.balance(1, USD) == Balance(300, 0)
    assert ledger.world(USD) == -300
    assert_entries_balance(entries)
    assert {e.ref_type for e in entries} == {RefType.WITHDRAWAL}


def test_withdraw_more_than_available_is_refused_and_changes_nothing() -> None:
    ledger = funded(a_usd=500)
    ledger.lock(MemberId(1), USD, 400, order_id=OrderId(1))
    before = state(ledger)
    with pytest.raises(InsufficientFundsError) as info:
        ledger.withdraw(MemberId(1), USD, 101, ref_id=1)
    assert (info.value.needed, info.value.held, info.value.bucket) == (101, 100, Bucket.AVAILABLE)
    assert state(ledger) == before
    with pytest.raises(InsufficientFundsError):
        ledger.withdraw(MemberId(2), USD, 1, ref_id=2)
    assert state(ledger) == before


# --- locks ---


def test_lock_moves_available_to_locked_and_unlock_moves_it_back() -> None:
    ledger = funded(a_usd=500)
    entries: list[LedgerEntry] = []
    ledger.lock(MemberId(1), USD, 300, order_id=OrderId(42), entries=entries)
    assert ledger.balance(1, USD) == Balance(200, 300)
    ledger.unlock(MemberId(1), USD, 100, order_id=OrderId(42), entries=entries)
    assert ledger.balance(1, USD) == Balance(300, 200)
    assert [(e.bucket, e.delta) for e in entries] == [
        (Bucket.AVAILABLE, -300),
        (Bucket.LOCKED, 300),
        (Bucket.LOCKED, -100),
        (Bucket.AVAILABLE, 100),
    ]
    assert all(e.ref_type is RefType.ORDER and e.ref_id == 42 for e in entries)
    assert_entries_balance(entries)


def test_lock_more_than_available_is_refused_with_a_clear_error_and_changes_nothing() -> None:
    ledger = funded(a_usd=500)
    before = state(ledger)
    with pytest.raises(InsufficientFundsError, match=r"account 1: available USD is 500, 501 needed"):
        ledger.lock(MemberId(1), USD, 501, order_id=OrderId(1))
    assert state(ledger) == before
    with pytest.raises(InsufficientFundsError):
        ledger.lock(MemberId(3), USD, 1, order_id=OrderId(2))
    assert state(ledger) == before


def test_unlock_more_than_locked_is_refused_and_changes_nothing() -> None:
    ledger = funded(a_usd=500)
    ledger.lock(MemberId(1), USD, 100, order_id=OrderId(1))
    before = state(ledger)
    with pytest.raises(InsufficientFundsError):
        ledger.unlock(MemberId(1), USD, 101, order_id=OrderId(1))
    assert state(ledger) == before


def test_locking_or_unlocking_zero_does_nothing_and_negative_is_refused() -> None:
    ledger = funded(a_usd=5)
    entries: list[LedgerEntry] = []
    ledger.lock(MemberId(1), USD, 0, order_id=OrderId(1), entries=entries)
    ledger.unlock(MemberId(1), USD, 0, order_id=OrderId(1), entries=entries)
    assert entries == []
    assert ledger.balance(1, USD) == Balance(5, 0)
    with pytest.raises(InvalidAmountError):
        ledger.lock(MemberId(1), USD, -1, order_id=OrderId(1))
    with pytest.raises(InvalidAmountError):
        ledger.unlock(MemberId(1), USD, -1, order_id=OrderId(1))
    assert ledger.balance(1, USD) == Balance(5, 0)


def test_ledger_errors_share_one_base_class() -> None:
    assert issubclass(InsufficientFundsError, LedgerError)
    assert issubclass(InvalidAmountError, LedgerError)
    assert issubclass(InvalidFeeRateError, LedgerError)


# --- fees ---


def test_fee_is_the_rate_in_parts_per_million_rounded_down() -> None:
    assert fee_for(1_000_000, 1_000) == 1_000  # 0.1 %
    assert fee_for(999, 1_000) == 0  # 0.999 units: rounded down to 0
    assert fee_for(1_999, 1_000) == 1  # 1.999 units: rounded down to 1
    assert fee_for(12_345, 2_500) == 30  # 30.8625
    assert fee_for(10, PPM) == 10
    assert fee_for(10, 0) == 0


@given(gross=st.integers(0, 10**24), rate=st.integers(0, PPM))
def test_fee_rounding_never_creates_or_destroys_units(gross: int, rate: int) -> None:
    fee = fee_for(gross, rate)
    assert 0 <= fee <= gross
    assert (gross - fee) + fee == gross
    # rounded down: the exact fee is in [fee, fee + 1)
    assert fee * PPM <= gross * rate < (fee + 1) * PPM


# --- trades ---


def test_settle_trade_moves_locked_funds_to_the_other_side_less_fees() -> None:
    ledger = funded(a_usd=1_000_000, b_btc=50_000)
    ledger.lock(MemberId(1), USD, 1_000_000, order_id=OrderId(10))  # member 1 buys
    ledger.lock(MemberId(2), BTC, 50_000, order_id=OrderId(20))  # member 2 sells
    entries: list[LedgerEntry] = []
    buyer_fee, seller_fee = ledger.settle_trade(
        trade_id=TradeId(5),
        base=BTC,
        quote=USD,
        buyer=MemberId(1),
        seller=MemberId(2),
        base_amount=40_000,
        quote_amount=QuoteUnits(600_000),
        buyer_fee_ppm=2_000,  # 0.2 % of 40_000 BTC units = 80
        seller_fee_ppm=1_500,  # 0.15 % of 600_000 USD units = 900
        entries=entries,
    )
    assert (buyer_fee, seller_fee) == (80, 900)
    assert ledger.balance(1, USD) == Balance(0, 400_000)
    assert ledger.balance(1, BTC) == Balance(39_920, 0)
    assert ledger.balance(2, BTC) == Balance(0, 10_000)
    assert ledger.balance(2, USD) == Balance(599_100, 0)
    assert ledger.balance(EXCHANGE_MEMBER, BTC) == Balance(80, 0)
    assert ledger.balance(EXCHANGE_MEMBER, USD) == Balance(900, 0)
    assert_entries_balance(entries)
    assert all(e.ref_type is RefType.TRADE and e.ref_id == 5 for e in entries)
    assert len(entries) == 6
    assert_conserved(ledger, [BTC, USD])


def test_settle_trade_without_fees_books_no_fee_entries() -> None:
    ledger = funded(a_usd=10, b_btc=10)
    ledger.lock(MemberId(1), USD, 10, order_id=OrderId(1))
    ledger.lock(MemberId(2), BTC, 10, order_id=OrderId(2))
    entries: list[LedgerEntry] = []
    assert ledger.settle_trade(
        TradeId(1), BTC, USD, MemberId(1), MemberId(2), 10, QuoteUnits(10), 0, 0, entries
    ) == (0, 0)
    assert len(entries) == 4
    assert ledger.balance(EXCHANGE_MEMBER, BTC) == Balance(0, 0)


def test_settle_trade_between_a_member_and_itself_only_pays_the_fees() -> None:
    ledger = Ledger()
    ledger.deposit(MemberId(1), USD, 1_000, ref_id=1)
    ledger.deposit(MemberId(1), BTC, 1_000, ref_id=2)
    ledger.lock(MemberId(1), USD, 1_000, order_id=OrderId(1))
    ledger.lock(MemberId(1), BTC, 1_000, order_id=OrderId(2))
    ledger.settle_trade(
        TradeId(1), BTC, USD, MemberId(1), MemberId(1), 1_000, QuoteUnits(1_000), 10_000, 10_000
    )
    assert ledger.balance(1, BTC) == Balance(990, 0)
    assert ledger.balance(1, USD) == Balance(990, 0)
    assert_conserved(ledger, [BTC, USD])


@pytest.mark.parametrize(("base_amount", "quote_amount"), [(11, 10), (10, 11)])
def test_settle_trade_spending_more_than_locked_is_refused_and_changes_nothing(
    base_amount: int, quote_amount: int
) -> None:
    ledger = funded(a_usd=100, b_btc=100)
    ledger.lock(MemberId(1), USD, 10, order_id=OrderId(1))
    ledger.lock(MemberId(2), BTC, 10, order_id=OrderId(2))
    before = state(ledger)
    with pytest.raises(InsufficientFundsError) as info:
        ledger.settle_trade(
            TradeId(1), BTC, USD, MemberId(1), MemberId(2), base_amount, QuoteUnits(quote_amount), 0, 0
        )
    assert info.value.bucket is Bucket.LOCKED
    assert state(ledger) == before


@pytest.mark.parametrize("rate", [-1, PPM + 1])
def test_settle_refuses_a_fee_rate_outside_0_to_one_million_ppm(rate: int) -> None:
    ledger = funded(a_usd=100, b_btc=100)
    ledger.lock(MemberId(1), USD, 10, order_id=OrderId(1))
    ledger.lock(MemberId(2), BTC, 10, order_id=OrderId(2))
    before = state(ledger)
    with pytest.raises(InvalidFeeRateError):
        ledger.settle_trade(TradeId(1), BTC, USD, MemberId(1), MemberId(2), 10, QuoteUnits(10), rate, 0)
    with pytest.raises(InvalidFeeRateError):
        ledger.settle_trade(TradeId(1), BTC, USD, MemberId(1), MemberId(2), 10, QuoteUnits(10), 0, rate)
    with pytest.raises(InvalidFeeRateError):
        ledger.settle_buy(TradeId(1), BTC, USD, MemberId(1), 10, QuoteUnits(10), rate)
    with pytest.raises(InvalidFeeRateError):
        ledger.settle_sell(TradeId(1), BTC, USD, MemberId(2), 10, QuoteUnits(10), rate)
    assert state(ledger) == before


def test_settle_refuses_non_positive_amounts() -> None:
    ledger = funded(a_usd=100, b_btc=100)
    ledger.lock(MemberId(1), USD, 10, order_id=OrderId(1))
    ledger.lock(MemberId(2), BTC, 10, order_id=OrderId(2))
    with pytest.raises(InvalidAmountError):
        ledger.settle_trade(TradeId(1), BTC, USD, MemberId(1), MemberId(2), 0, QuoteUnits(10), 0, 0)
    with pytest.raises(InvalidAmountError):
        ledger.settle_buy(TradeId(1), BTC, USD, MemberId(1), 10, QuoteUnits(-1), 0)
    with pytest.raises(InvalidAmountError):
        ledger.settle_sell(TradeId(1), BTC, USD, MemberId(2), -1, QuoteUnits(10), 0)


def test_half_trades_of_two_shards_add_up_to_the_whole_trade() -> None:
    whole = funded(a_usd=1_000, b_btc=1_000)
    whole.lock(MemberId(1), USD, 1_000, order_id=OrderId(1))
    whole.lock(MemberId(2), BTC, 1_000, order_id=OrderId(2))
    whole.settle_trade(TradeId(3), BTC, USD, MemberId(1), MemberId(2), 700, QuoteUnits(900), 1_000, 3_000)

    buyer_shard = funded(a_usd=1_000)
    buyer_shard.lock(MemberId(1), USD, 1_000, order_id=OrderId(1))
    seller_shard = funded(b_btc=1_000)
    seller_shard.lock(MemberId(2), BTC, 1_000, order_id=OrderId(2))
    buy_entries: list[LedgerEntry] = []
    sell_entries: list[LedgerEntry] = []
    assert (
        buyer_shard.settle_buy(TradeId(3), BTC, USD, MemberId(1), 700, QuoteUnits(900), 1_000, buy_entries)
        == 0
    )  # 0.7 rounded down
    assert (
        seller_shard.settle_sell(TradeId(3), BTC, USD, MemberId(2), 700, QuoteUnits(900), 3_000, sell_entries)
        == 2
    )  # 2.7

    assert_entries_balance(buy_entries)  # each half balances on its own, through clearing
    assert_entries_balance(sell_entries)
    for currency in (BTC, USD):
        assert buyer_shard.clearing(currency) + seller_shard.clearing(currency) == 0
        assert_conserved(buyer_shard, [currency])
        assert_conserved(seller_shard, [currency])
    merged = dict(((a, c), (av, lk)) for a, c, av, lk in buyer_shard.balances())
    for a, c, av, lk in seller_shard.balances():
        prev = merged.get((a, c), (0, 0))
        merged[(a, c)] = (prev[0] + av, prev[1] + lk)
    assert merged == {(a, c): (av, lk) for a, c, av, lk in whole.balances()}
    assert {e.account for e in buy_entries} >= {CLEARING_ACCOUNT}


def test_half_trade_spending_more_than_locked_is_refused_and_changes_nothing() -> None:
    ledger = funded(a_usd=100, b_btc=100)
    ledger.lock(MemberId(1), USD, 10, order_id=OrderId(1))
    ledger.lock(MemberId(2), BTC, 10, order_id=OrderId(2))
    before = state(ledger)
    with pytest.raises(InsufficientFundsError):
        ledger.settle_buy(TradeId(1), BTC, USD, MemberId(1), 5, QuoteUnits(11), 0)
    with pytest.raises(InsufficientFundsError):
        ledger.settle_sell(TradeId(1), BTC, USD, MemberId(2), 11, QuoteUnits(5), 0)
    assert state(ledger) == before


def test_entries_are_only_built_when_asked_for() -> None:
    ledger = funded(a_usd=100)
    ledger.lock(MemberId(1), USD, 10, order_id=OrderId(1))  # no list given: nothing to collect, nothing fails
    entries: list[LedgerEntry] = []
    ledger.lock(MemberId(1), USD, 10, order_id=OrderId(2), entries=entries)
    assert len(entries) == 2


def test_dump_and_load_give_back_the_same_ledger() -> None:
    ledger = funded(a_usd=100, b_btc=100)
    ledger.lock(MemberId(1), USD, 10, order_id=OrderId(1))
    ledger.lock(MemberId(2), BTC, 10, order_id=OrderId(2))
    ledger.settle_buy(TradeId(1), BTC, USD, MemberId(1), 5, QuoteUnits(10), 1000)
    copy = Ledger.load(ledger.dump())
    assert copy.dump() == ledger.dump()
    assert copy.clearing(USD) == ledger.clearing(USD) == 10
    assert copy.world(BTC) == -100


# --- properties over random operation sequences ---

MEMBERS = (1, 2, 3)
CURRENCIES = (BTC, USD)

_member = st.sampled_from(MEMBERS)
_currency = st.sampled_from(CURRENCIES)
_rate = st.integers(0, PPM)

op = st.one_of(
    st.tuples(st.sampled_from(["deposit", "withdraw"]), _member, _currency, st.integers(1, 500)),
    st.tuples(st.sampled_from(["lock", "unlock"]), _member, _currency, st.integers(0, 500)),
    st.tuples(st.just("trade"), _member, _member, st.integers(1, 300), st.integers(1, 300), _rate, _rate),
    st.tuples(
        st.sampled_from(["buy_half", "sell_half"]),
        _member,
        st.integers(1, 300),
        st.integers(1, 300),
        st.integers(0, 50_000),
    ),
)


def apply_op(ledger: Ledger, n: int, operation: tuple[object, ...], entries: list[LedgerEntry]) -> None:
    match operation:
        case ("deposit", int(member), str(currency), int(amount)):
            ledger.deposit(MemberId(member), currency, amount, n, entries)
        case ("withdraw", int(member), str(currency), int(amount)):
            ledger.withdraw(MemberId(member), currency, amount, n, entries)
        case ("lock", int(member), str(currency), int(amount)):
            ledger.lock(MemberId(member), currency, amount, OrderId(n), entries)
        case ("unlock", int(member), str(currency), int(amount)):
            ledger.unlock(MemberId(member), currency, amount, OrderId(n), entries)
        case ("trade", int(buyer), int(seller), int(base), int(quote), int(buyer_ppm), int(seller_ppm)):
            ledger.settle_trade(
                TradeId(n),
                BTC,
                USD,
                MemberId(buyer),
                MemberId(seller),
                base,
                QuoteUnits(quote),
                buyer_ppm,
                seller_ppm,
                entries,
            )
        case ("buy_half", int(buyer), int(base), int(quote), int(ppm)):
            ledger.settle_buy(TradeId(n), BTC, USD, MemberId(buyer), base, QuoteUnits(quote), ppm, entries)
        case ("sell_half", int(seller), int(base), int(quote), int(ppm)):
            ledger.settle_sell(TradeId(n), BTC, USD, MemberId(seller), base, QuoteUnits(quote), ppm, entries)
        case _:
            raise AssertionError(operation)


@settings(max_examples=150, deadline=None)
@given(st.lists(op, max_size=60))
def test_any_operation_sequence_conserves_money_keeps_balances_non_negative_and_balances_entries(
    operations: list[tuple[object, ...]],
) -> None:
    ledger = Ledger()
    journal: list[LedgerEntry] = []
    for n, operation in enumerate(operations):
        before = state(ledger)
        entries: list[LedgerEntry] = []
        try:
            apply_op(ledger, n, operation, entries)
        except LedgerError:
            assert state(ledger) == before  # a refused operation changes nothing
            assert entries == []
        assert_entries_balance(entries)
        journal += entries
        assert_conserved(ledger, CURRENCIES)
        assert_no_negative(ledger)
    assert_journal_matches(ledger, journal)
    assert Ledger.load(ledger.dump()).dump() == ledger.dump()

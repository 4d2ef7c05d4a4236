"""Double-entry ledger: member balances (available, locked) per currency.

Every balance is an integer of ledger units of its currency (see `bourse.domain.money`). Every
operation is a set of `LedgerEntry`s whose deltas sum to zero per currency, so that money is never
created or destroyed inside the exchange:

- members have ids > 0; the exchange itself is `EXCHANGE_MEMBER` (0) and receives the fees;
- deposits and withdrawals are booked against `WORLD_ACCOUNT` (-1), the outside world, whose
  balance is minus everything that came in (it is the only place money enters or leaves);
- a half trade (`settle_buy` / `settle_sell`, used when the other side's member is handled by another
  accounts shard) is booked against `CLEARING_ACCOUNT` (-2); the two halves of one trade cancel out
  there, so the clearing balances summed over all shards are zero once every shard has settled.

Invariants (checked by tests): for every currency, the sum over members and the exchange of
available + locked, plus world, plus clearing, is zero; no member or exchange bucket is ever
negative; an operation that cannot be done raises and changes nothing.

Fees are integer parts-per-million rates, see `fee_for`.

Types (`bourse.domain.values`): members are `MemberId`s, orders `OrderId`s, trades `TradeId`s, the
quote side of a trade `QuoteUnits`. Balances, locks and the base side of a trade stay plain `int`:
ledger units of whichever currency the balance is in. An account (`LedgerEntry.account`) is a
plain `int` too, a member id or one of the system accounts below, and so is `LedgerEntry.ref_id`
(an order id, a trade id or a deposit's reference).

Speed: balances live in one dict keyed by (account, currency) whose values are 2-item lists
[available, locked] mutated in place. Entries are only built when the caller passes a list to
append them to.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from typing import NamedTuple

import msgspec

from bourse.domain.values import MemberId, OrderId, QuoteUnits, TradeId

EXCHANGE_MEMBER = MemberId(0)
"""The exchange's own account: receives every fee."""
WORLD_ACCOUNT = -1
"""The outside world: counterparty of deposits and withdrawals."""
CLEARING_ACCOUNT = -2
"""Counterparty of half trades settled by different accounts shards."""

PPM = 1_000_000
"""Fee rates are in parts per million: 1_000 ppm = 0.1 %."""


class Bucket(StrEnum):
    AVAILABLE = "available"
    LOCKED = "locked"


class RefType(StrEnum):
    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"
    ORDER = "order"
    """Lock or release of funds for an order; ref_id is the order id."""
    TRADE = "trade"
    """Settlement of a trade, fees included; ref_id is the trade id."""


class LedgerEntry(msgspec.Struct, frozen=True, gc=False):
    """One line of the ledger. The entries of one operation sum to zero per currency."""

    account: int
    """Member id, or EXCHANGE_MEMBER, WORLD_ACCOUNT, CLEARING_ACCOUNT."""
    currency: str
    bucket: Bucket
    delta: int
    ref_type: RefType
    ref_id: int


class Balance(NamedTuple):
    available: int
    locked: int


class LedgerError(Exception):
    """An operation the ledger refuses. Nothing was changed."""


class InvalidAmountError(LedgerError, ValueError):
    def __init__(self, amount: int) -> None:
        super().__init__(f"amount must be a positive integer, got {amount!r}")
        self.amount = amount


class InvalidFeeRateError(LedgerError, ValueError):
    def __init__(self, rate_ppm: int) -> None:
        super().__init__(f"fee rate must be between 0 and {PPM} ppm, got {rate_ppm!r}")
        self.rate_ppm = rate_ppm


class InsufficientFundsError(LedgerError):
    """The bucket holds less than the operation needs."""

    def __init__(self, account: int, currency: str, bucket: Bucket, needed: int, held: int) -> None:
        super().__init__(f"account {account}: {bucket.value} {currency} is {held}, {needed} needed")
        self.account = account
        self.currency = currency
        self.bucket = bucket
        self.needed = needed
        self.held = held


def fee_for(gross: int, rate_ppm: int) -> int:
    """Fee on `gross` ledger units at `rate_ppm` parts per million, rounded down (toward zero).

    Rounding rule: the exact fee gross * rate / 1e6 is rounded down to a whole ledger unit, in the
    member's favour (a trade too small to owe a whole unit pays none). The member is credited
    `gross - fee` and the exchange `fee`: the two always add up to `gross`, so rounding never
    creates or destroys a unit. With 0 <= rate_ppm <= 1e6, 0 <= fee <= gross.
    """
    return gross * rate_ppm // PPM


_AVAILABLE = Bucket.AVAILABLE
_LOCKED = Bucket.LOCKED
_DEPOSIT = RefType.DEPOSIT
_WITHDRAWAL = RefType.WITHDRAWAL
_ORDER = RefType.ORDER
_TRADE = RefType.TRADE


class Ledger:
    """Balances of members and of the exchange, changed only by balanced operations.

    Each mutating method takes an optional `entries` list; when given, the operation's
    `LedgerEntry`s are appended to it (for the persistence layer), otherwise none are built.
    """

    __slots__ = ("_balances", "_clearing", "_world")

    def __init__(self) -> None:
        self._balances: dict[tuple[int, str], list[int]] = {}
        self._world: dict[str, int] = {}
        self._clearing: dict[str, int] = {}

    # --- queries ---

    def balance(self, account: int, currency: str) -> Balance:
        bal = self._balances.get((account, currency))
        if bal is None:
            return Balance(0, 0)
        return Balance(bal[0], bal[1])

    def available(self, account: int, currency: str) -> int:
        bal = self._balances.get((account, currency))
        return 0 if bal is None else bal[0]

    def locked(self, account: int, currency: str) -> int:
        bal = self._balances.get((account, currency))
        return 0 if bal is None else bal[1]

    def world(self, currency: str) -> int:
        """Balance of the outside world: minus (deposits - withdrawals). Never positive together
        with `clearing`: a half trade's credit can be withdrawn before its other half arrives."""
        return self._world.get(currency, 0)

    def clearing(self, currency: str) -> int:
        """Balance of the clearing account: nonzero only while half trades await their other half."""
        return self._clearing.get(currency, 0)

    def balances(self) -> Iterator[tuple[int, str, int, int]]:
        """(account, currency, available, locked) of every member and the exchange, sorted."""
        for (account, currency), bal in sorted(self._balances.items()):
            yield account, currency, bal[0], bal[1]

    def currencies(self) -> set[str]:
        out = {currency for _, currency in self._balances}
        out.update(self._world)
        out.update(self._clearing)
        return out

    def total(self, currency: str) -> int:
        """Sum of available + locked over members and the exchange: equals -world - clearing."""
        return sum(bal[0] + bal[1] for (_, cur), bal in self._balances.items() if cur == currency)

    # --- operations ---

    def _get(self, account: int, currency: str) -> list[int]:
        key = (account, currency)
        bal = self._balances.get(key)
        if bal is None:
            bal = self._balances[key] = [0, 0]
        return bal

    def deposit(
        self,
        member: MemberId,
        currency: str,
        amount: int,
        ref_id: int,
        entries: list[LedgerEntry] | None = None,
    ) -> None:
        """Credit `amount` to the member's available balance, from the world."""
        if amount <= 0:
            raise InvalidAmountError(amount)
        self._get(member, currency)[0] += amount
        self._world[currency] = self._world.get(currency, 0) - amount
        if entries is not None:
            entries.append(LedgerEntry(WORLD_ACCOUNT, currency, _AVAILABLE, -amount, _DEPOSIT, ref_id))
            entries.append(LedgerEntry(member, currency, _AVAILABLE, amount, _DEPOSIT, ref_id))

    def withdraw(
        self,
        member: MemberId,
        currency: str,
        amount: int,
        ref_id: int,
        entries: list[LedgerEntry] | None = None,
    ) -> None:
        """Debit `amount` from the member's available balance, to the world. Raises
        `InsufficientFundsError` (nothing changed) if the member has less available."""
        if amount <= 0:
            raise InvalidAmountError(amount)
        bal = self._balances.get((member, currency))
        held = 0 if bal is None else bal[0]
        if bal is None or held < amount:
            raise InsufficientFundsError(member, currency, _AVAILABLE, amount, held)
        bal[0] = held - amount
        self._world[currency] = self._world.get(currency, 0) + amount
        if entries is not None:
            entries.append(LedgerEntry(member, currency, _AVAILABLE, -amount, _WITHDRAWAL, ref_id))
            entries.append(LedgerEntry(WORLD_ACCOUNT, currency, _AVAILABLE, amount, _WITHDRAWAL, ref_id))

    def lock(
        self,
        member: MemberId,
        currency: str,
        amount: int,
        order_id: OrderId,
        entries: list[LedgerEntry] | None = None,
    ) -> None:
        """Move `amount` from available to locked for an order. Raises `InsufficientFundsError`
        (nothing changed) if the member has less available. Locking 0 does nothing."""
        if amount <= 0:
            if amount == 0:
                return
            raise InvalidAmountError(amount)
        bal = self._balances.get((member, currency))
        if bal is None or bal[0] < amount:
            raise InsufficientFundsError(member, currency, _AVAILABLE, amount, 0 if bal is None else bal[0])
        bal[0] -= amount
        bal[1] += amount
        if entries is not None:
            entries.append(LedgerEntry(member, currency, _AVAILABLE, -amount, _ORDER, order_id))
            entries.append(LedgerEntry(member, currency, _LOCKED, amount, _ORDER, order_id))

    def unlock(
        self,
        member: MemberId,
        currency: str,
        amount: int,
        order_id: OrderId,
        entries: list[LedgerEntry] | None = None,
    ) -> None:
        """Move `amount` from locked back to available (an order's lock released). Raises
        `InsufficientFundsError` (nothing changed) if less is locked. Unlocking 0 does nothing."""
        if amount <= 0:
            if amount == 0:
                return
            raise InvalidAmountError(amount)
        bal = self._balances.get((member, currency))
        if bal is None or bal[1] < amount:
            raise InsufficientFundsError(member, currency, _LOCKED, amount, 0 if bal is None else bal[1])
        bal[1] -= amount
        bal[0] += amount
        if entries is not None:
            entries.append(LedgerEntry(member, currency, _LOCKED, -amount, _ORDER, order_id))
            entries.append(LedgerEntry(member, currency, _AVAILABLE, amount, _ORDER, order_id))

    def settle_trade(
        self,
        trade_id: TradeId,
        base: str,
        quote: str,
        buyer: MemberId,
        seller: MemberId,
        base_amount: int,
        quote_amount: QuoteUnits,
        buyer_fee_ppm: int,
        seller_fee_ppm: int,
        entries: list[LedgerEntry] | None = None,
    ) -> tuple[int, int]:
        """Settle a whole trade: the seller's locked base goes to the buyer's available balance
        less the buyer's fee, the buyer's locked quote to the seller's available balance less the
        seller's fee, the fees to the exchange. Returns (buyer_fee in base, seller_fee in quote).

        Raises `InsufficientFundsError` (nothing changed) if the seller has less base locked or the
        buyer less quote locked than the trade moves. Buyer and seller may be the same member.
        """
        if base_amount <= 0:
            raise InvalidAmountError(base_amount)
        if quote_amount <= 0:
            raise InvalidAmountError(quote_amount)
        if not 0 <= buyer_fee_ppm <= PPM:
            raise InvalidFeeRateError(buyer_fee_ppm)
        if not 0 <= seller_fee_ppm <= PPM:
            raise InvalidFeeRateError(seller_fee_ppm)
        balances = self._balances
        seller_base = balances.get((seller, base))
        if seller_base is None or seller_base[1] < base_amount:
            held = 0 if seller_base is None else seller_base[1]
            raise InsufficientFundsError(seller, base, _LOCKED, base_amount, held)
        buyer_quote = balances.get((buyer, quote))
        if buyer_quote is None or buyer_quote[1] < quote_amount:
            held = 0 if buyer_quote is None else buyer_quote[1]
            raise InsufficientFundsError(buyer, quote, _LOCKED, quote_amount, held)
        buyer_fee = base_amount * buyer_fee_ppm // PPM
        seller_fee = quote_amount * seller_fee_ppm // PPM
        seller_base[1] -= base_amount
        buyer_quote[1] -= quote_amount
        self._get(buyer, base)[0] += base_amount - buyer_fee
        self._get(seller, quote)[0] += quote_amount - seller_fee
        if buyer_fee:
            self._get(EXCHANGE_MEMBER, base)[0] += buyer_fee
        if seller_fee:
            self._get(EXCHANGE_MEMBER, quote)[0] += seller_fee
        if entries is not None:
            entries.append(LedgerEntry(seller, base, _LOCKED, -base_amount, _TRADE, trade_id))
            entries.append(LedgerEntry(buyer, base, _AVAILABLE, base_amount - buyer_fee, _TRADE, trade_id))
            if buyer_fee:
                entries.append(LedgerEntry(EXCHANGE_MEMBER, base, _AVAILABLE, buyer_fee, _TRADE, trade_id))
            entries.append(LedgerEntry(buyer, quote, _LOCKED, -quote_amount, _TRADE, trade_id))
            entries.append(
                LedgerEntry(seller, quote, _AVAILABLE, quote_amount - seller_fee, _TRADE, trade_id)
            )
            if seller_fee:
                entries.append(LedgerEntry(EXCHANGE_MEMBER, quote, _AVAILABLE, seller_fee, _TRADE, trade_id))
        return buyer_fee, seller_fee

    def settle_buy(
        self,
        trade_id: TradeId,
        base: str,
        quote: str,
        buyer: MemberId,
        base_amount: int,
        quote_amount: QuoteUnits,
        fee_ppm: int,
        entries: list[LedgerEntry] | None = None,
    ) -> int:
        """The buyer's half of a trade whose seller another shard settles: the buyer's locked
        quote goes to clearing, the base comes from clearing to the buyer less the fee, which goes
        to the exchange. Returns the fee (base units). Raises `InsufficientFundsError` (nothing changed)
        if the buyer has less quote locked."""
        return self._settle_half(
            trade_id, base, quote, buyer, base_amount, quote_amount, fee_ppm, entries, True
        )

    def settle_sell(
        self,
        trade_id: TradeId,
        base: str,
        quote: str,
        seller: MemberId,
        base_amount: int,
        quote_amount: QuoteUnits,
        fee_ppm: int,
        entries: list[LedgerEntry] | None = None,
    ) -> int:
        """The seller's half of a trade whose buyer another shard settles: the seller's locked
        base goes to clearing, the quote comes from clearing to the seller less the fee, which goes
        to the exchange. Returns the fee (quote units). Raises `InsufficientFundsError` (nothing
        changed) if the seller has less base locked."""
        return self._settle_half(
            trade_id, base, quote, seller, base_amount, quote_amount, fee_ppm, entries, False
        )

    def _settle_half(
        self,
        trade_id: TradeId,
        base: str,
        quote: str,
        member: MemberId,
        base_amount: int,
        quote_amount: QuoteUnits,
        fee_ppm: int,
        entries: list[LedgerEntry] | None,
        buy: bool,
    ) -> int:
        """One member's half of a trade (`settle_buy` if `buy`, else `settle_sell`): what the
        member pays (quote for a buy, base for a sell) goes from its locked balance to clearing,
        what it gets comes from clearing to its available balance less the fee (in that
        currency), which goes to the exchange. Returns the fee."""
        if base_amount <= 0:
            raise InvalidAmountError(base_amount)
        if quote_amount <= 0:
            raise InvalidAmountError(quote_amount)
        if not 0 <= fee_ppm <= PPM:
            raise InvalidFeeRateError(fee_ppm)
        paid_amount: int  # ledger units of `paid`
        got_amount: int
        if buy:
            paid = quote
            paid_amount = quote_amount
            got = base
            got_amount = base_amount
        else:
            paid = base
            paid_amount = base_amount
            got = quote
            got_amount = quote_amount
        held = self._balances.get((member, paid))
        if held is None or held[1] < paid_amount:
            raise InsufficientFundsError(member, paid, _LOCKED, paid_amount, 0 if held is None else held[1])
        fee = got_amount * fee_ppm // PPM
        held[1] -= paid_amount
        clearing = self._clearing
        clearing[paid] = clearing.get(paid, 0) + paid_amount
        clearing[got] = clearing.get(got, 0) - got_amount
        self._get(member, got)[0] += got_amount - fee
        if fee:
            self._get(EXCHANGE_MEMBER, got)[0] += fee
        if entries is not None:
            entries.append(LedgerEntry(member, paid, _LOCKED, -paid_amount, _TRADE, trade_id))
            entries.append(LedgerEntry(CLEARING_ACCOUNT, paid, _AVAILABLE, paid_amount, _TRADE, trade_id))
            entries.append(LedgerEntry(CLEARING_ACCOUNT, got, _AVAILABLE, -got_amount, _TRADE, trade_id))
            entries.append(LedgerEntry(member, got, _AVAILABLE, got_amount - fee, _TRADE, trade_id))
            if fee:
                entries.append(LedgerEntry(EXCHANGE_MEMBER, got, _AVAILABLE, fee, _TRADE, trade_id))
        return fee

    # --- snapshot ---

    def dump(self) -> LedgerState:
        """The whole state as plain data, canonically ordered (same balances → same value)."""
        return LedgerState(
            balances=[(a, c, av, lk) for a, c, av, lk in self.balances()],
            world=sorted(self._world.items()),
            clearing=sorted(self._clearing.items()),
        )

    @classmethod
    def load(cls, state: LedgerState) -> Ledger:
        ledger = cls()
        for account, currency, available, locked in state.balances:
            if available < 0 or locked < 0:
                raise ValueError(f"negative balance for account {account} {currency} in ledger state")
            ledger._balances[(account, currency)] = [available, locked]
        ledger._world = dict(state.world)
        ledger._clearing = dict(state.clearing)
        return ledger


class LedgerState(msgspec.Struct, frozen=True, array_like=True):
    balances: list[tuple[int, str, int, int]]
    world: list[tuple[str, int]]
    clearing: list[tuple[str, int]]

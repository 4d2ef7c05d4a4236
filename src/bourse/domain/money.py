"""Precise money: currencies, markets and the integer scales the engine works in.

The engine and the ledger never see a float or a Decimal. A market's amounts are integers in
units of 10**-amount_precision of the base currency, its prices integers in units of
10**-price_precision of the quote currency, and ledger balances integers in units of
10**-precision of each currency. A market is only valid if `amount_precision + price_precision
<= quote.precision`, so that price * amount is always an exact number of quote units.

Parsing is strict: the API takes decimal strings, and anything that would need rounding is an
error, not a silent change of the member's order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bourse.domain.values import Amount, Price, QuoteUnits

_DECIMAL = re.compile(r"(?P<sign>[+-]?)(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?")


class MoneyError(ValueError):
    """A value the exchange cannot accept as money. `code` is stable and machine-readable."""

    code = "invalid_number"

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class NotANumber(MoneyError):
    code = "not_a_number"


class TooPrecise(MoneyError):
    code = "too_precise"


class NotPositive(MoneyError):
    code = "not_positive"


class TooLarge(MoneyError):
    code = "too_large"


class TooSmall(MoneyError):
    code = "too_small"


MAX_SCALED = 10**18 - 1
"""Largest scaled integer accepted anywhere: fits a signed 64-bit column and DECIMAL(36, 18)."""
_ONE_AMOUNT = Amount(1)
_MAX_AMOUNT = Amount(MAX_SCALED)
_MAX_PRICE = Price(MAX_SCALED)
_NO_MIN_NOTIONAL = QuoteUnits(0)


def parse_scaled(text: str, precision: int, *, field_name: str = "value") -> int:
    """Parse a positive decimal string into an integer of units of 10**-precision.

    Trailing zeros beyond the precision are fine ("1.500" at precision 1); any other digit
    there is `TooPrecise`. Exponents, spaces, NaN and infinities are `NotANumber`.
    """
    if not isinstance(text, str):
        raise NotANumber(field_name, 'must be a decimal string such as "1.25"')
    match = _DECIMAL.fullmatch(text)
    if match is None or (not match["int"] and not match["frac"]):
        raise NotANumber(field_name, f"{text!r} is not a decimal number")
    frac = match["frac"] or ""
    if len(frac) > precision:
        if frac[precision:].strip("0"):
            raise TooPrecise(field_name, f"{text!r} has more than {precision} decimal places")
        frac = frac[:precision]
    digits = (match["int"] or "0") + frac.ljust(precision, "0")
    if len(digits.lstrip("0")) > 18:
        raise TooLarge(field_name, f"{text!r} is too large")
    value = int(digits)
    if match["sign"] == "-" and value:
        value = -value
    if value <= 0:
        raise NotPositive(field_name, f"{text!r} must be greater than zero")
    if value > MAX_SCALED:
        raise TooLarge(field_name, f"{text!r} is too large")
    return value


def format_scaled(value: int, precision: int) -> str:
    """Format an integer of units of 10**-precision as a plain decimal string, trailing zeros kept
    so that every value of one field has the same number of decimals."""
    sign = "-" if value < 0 else ""
    digits = str(abs(value)).rjust(precision + 1, "0")
    if precision == 0:
        return sign + digits
    return f"{sign}{digits[:-precision]}.{digits[-precision:]}"


@dataclass(frozen=True, slots=True)
class Currency:
    code: str
    precision: int
    """Decimal places of the ledger's integer unit for this currency."""

    def parse(self, text: str, field_name: str = "amount") -> int:
        return parse_scaled(text, self.precision, field_name=field_name)

    def format(self, units: int) -> str:
        return format_scaled(units, self.precision)


@dataclass(frozen=True, slots=True)
class Market:
    """A currency pair and the integer grid its orders live on."""

    symbol: str
    base: Currency
    quote: Currency
    amount_precision: int
    price_precision: int
    min_amount: Amount = _ONE_AMOUNT
    """Smallest order amount, in amount units."""
    max_amount: Amount = _MAX_AMOUNT
    max_price: Price = _MAX_PRICE
    min_notional: QuoteUnits = _NO_MIN_NOTIONAL
    """Smallest value of a limit order, price x amount, in ledger units of the quote currency
    (0: no minimum). Market orders have no price to value them by: `min_amount` bounds them."""
    _base_factor: int = field(init=False, repr=False, compare=False)
    _funds_factor: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.amount_precision > self.base.precision:
            raise ValueError(f"{self.symbol}: amount precision exceeds {self.base.code} precision")
        if self.amount_precision + self.price_precision > self.quote.precision:
            raise ValueError(
                f"{self.symbol}: amount precision + price precision exceeds {self.quote.code} precision"
            )
        if not 1 <= self.min_amount <= self.max_amount:
            raise ValueError(f"{self.symbol}: min_amount must be between 1 and max_amount")
        if not 0 <= self.min_notional <= MAX_SCALED:
            raise ValueError(f"{self.symbol}: min_notional must be between 0 and {MAX_SCALED}")
        object.__setattr__(self, "_base_factor", 10 ** (self.base.precision - self.amount_precision))
        object.__setattr__(
            self,
            "_funds_factor",
            10 ** (self.quote.precision - self.amount_precision - self.price_precision),
        )

    def base_units(self, amount: Amount) -> int:
        """Ledger units of the base currency for a market amount."""
        return amount * self._base_factor

    def funds(self, price: Price, amount: Amount) -> QuoteUnits:
        """Exact ledger units of the quote currency for `amount` at `price`."""
        return QuoteUnits(price * amount * self._funds_factor)

    def below_min_notional(self, price: Price, amount: Amount) -> bool:
        """Whether a limit order of `amount` at `price` is worth less than the market's minimum."""
        return price * amount * self._funds_factor < self.min_notional

    @property
    def funds_factor(self) -> int:
        """Quote units per (price unit x amount unit); the engine inlines it on the hot path."""
        return self._funds_factor

    def parse_amount(self, text: str) -> Amount:
        amount = Amount(parse_scaled(text, self.amount_precision, field_name="amount"))
        if amount < self.min_amount:
            raise TooSmall("amount", f"{text!r} is below the minimum {self.format_amount(self.min_amount)}")
        if amount > self.max_amount:
            raise TooLarge("amount", f"{text!r} is above the maximum {self.format_amount(self.max_amount)}")
        return amount

    def parse_price(self, text: str) -> Price:
        price = Price(parse_scaled(text, self.price_precision, field_name="price"))
        if price > self.max_price:
            raise TooLarge("price", f"{text!r} is above the maximum {self.format_price(self.max_price)}")
        return price

    # The formatters take any int on the grid (an `Amount`, or a sum or difference of them).

    def format_amount(self, amount: int) -> str:
        return format_scaled(amount, self.amount_precision)

    def format_price(self, price: int) -> str:
        return format_scaled(price, self.price_precision)

    def format_funds(self, units: int) -> str:
        return self.quote.format(units)

"""Money: strict parsing of decimal strings into integer units, formatting back, market grids."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bourse.domain.money import (
    MAX_SCALED,
    Currency,
    Market,
    MoneyError,
    NotANumber,
    NotPositive,
    TooLarge,
    TooPrecise,
    TooSmall,
    format_scaled,
    parse_scaled,
)
from bourse.domain.values import Amount, Price

BTC = Currency("BTC", 8)
USD = Currency("USD", 8)
JPY = Currency("JPY", 0)


def btc_usd(*, min_amount: int = 1, max_amount: int = MAX_SCALED, max_price: int = MAX_SCALED) -> Market:
    return Market(
        "BTC-USD",
        BTC,
        USD,
        amount_precision=4,
        price_precision=2,
        min_amount=Amount(min_amount),
        max_amount=Amount(max_amount),
        max_price=Price(max_price),
    )


# --------------------------------------------------------------------------- parse_scaled


@pytest.mark.parametrize(
    ("text", "precision", "units"),
    [
        ("1.25", 2, 125),
        ("1", 2, 100),
        ("1.", 2, 100),
        (".5", 2, 50),
        ("0.01", 2, 1),
        ("+3.5", 2, 350),
        ("007.50", 2, 750),
        ("12", 0, 12),
        ("0.00000001", 8, 1),
        ("123456.78901234", 8, 12345678901234),
    ],
)
def test_decimal_strings_parse_into_exact_integer_units(text: str, precision: int, units: int) -> None:
    assert parse_scaled(text, precision) == units


def test_trailing_zeros_beyond_the_precision_are_accepted() -> None:
    assert parse_scaled("1.500", 1) == 15
    assert parse_scaled("2.000000", 0) == 2


@pytest.mark.parametrize(("text", "precision"), [("1.234", 2), ("0.001", 2), ("1.5", 0), ("1.0000001", 6)])
def test_a_digit_beyond_the_precision_is_too_precise_never_rounded(text: str, precision: int) -> None:
    with pytest.raises(TooPrecise) as info:
        parse_scaled(text, precision, field_name="price")
    assert info.value.code == "too_precise"
    assert info.value.field == "price"
    assert str(info.value).startswith("price: ")


@pytest.mark.parametrize("text", ["0", "0.00", "-0", "+0.0", ".0", "0."])
def test_zero_is_not_positive(text: str) -> None:
    with pytest.raises(NotPositive) as info:
        parse_scaled(text, 2)
    assert info.value.code == "not_positive"


@pytest.mark.parametrize("text", ["-1", "-0.01", "-123.45"])
def test_negative_amounts_are_not_positive(text: str) -> None:
    with pytest.raises(NotPositive):
        parse_scaled(text, 2)


def test_the_largest_scaled_value_is_accepted_and_one_more_is_too_large() -> None:
    assert parse_scaled("999999999999999999", 0) == MAX_SCALED
    assert parse_scaled("9999999999.99999999", 8) == MAX_SCALED
    for text, precision in (("1000000000000000000", 0), ("10000000000", 8), ("1" + "0" * 40, 2)):
        with pytest.raises(TooLarge) as info:
            parse_scaled(text, precision)
        assert info.value.code == "too_large"


def test_leading_zeros_do_not_count_towards_the_size_limit() -> None:
    assert parse_scaled("0" * 30 + "5", 2) == 500


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        " 1",
        "1 ",
        ".",
        "-",
        "+",
        "+-1",
        "1e5",
        "1E-2",
        "NaN",
        "nan",
        "inf",
        "-Infinity",
        "0x10",
        "1_000",
        "1,5",
        "1.2.3",
        "abc",
        "١٢",  # Arabic-Indic digits: only ASCII digits are money
        "\uff11",  # fullwidth one
        "12\n",
    ],
)
def test_junk_is_not_a_number(text: str) -> None:
    with pytest.raises(NotANumber) as info:
        parse_scaled(text, 2, field_name="amount")
    assert info.value.code == "not_a_number"
    assert info.value.field == "amount"


@pytest.mark.parametrize("value", [1, 1.5, None, b"1", True])
def test_only_strings_are_parsed(value: object) -> None:
    with pytest.raises(NotANumber):
        parse_scaled(value, 2)  # type: ignore[arg-type]


def test_every_money_error_is_a_value_error_with_a_stable_code() -> None:
    codes = {cls: cls.code for cls in (NotANumber, TooPrecise, NotPositive, TooLarge, TooSmall)}
    assert len(set(codes.values())) == len(codes)
    for cls in codes:
        assert issubclass(cls, MoneyError)
        assert issubclass(cls, ValueError)


@settings(max_examples=300)
@given(st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("9999999999"), places=8))
def test_parsing_agrees_with_decimal_arithmetic(value: Decimal) -> None:
    assert parse_scaled(format(value, "f"), 8) == int(value.scaleb(8))


@settings(max_examples=300)
@given(st.integers(1, MAX_SCALED), st.integers(0, 18))
def test_format_then_parse_is_the_identity(units: int, precision: int) -> None:
    assert parse_scaled(format_scaled(units, precision), precision) == units


# --------------------------------------------------------------------------- format_scaled


@pytest.mark.parametrize(
    ("units", "precision", "text"),
    [
        (125, 2, "1.25"),
        (5, 2, "0.05"),
        (100, 2, "1.00"),
        (0, 2, "0.00"),
        (-5, 2, "-0.05"),
        (-12345, 2, "-123.45"),
        (100, 0, "100"),
        (0, 0, "0"),
        (-7, 0, "-7"),
        (1, 8, "0.00000001"),
        (MAX_SCALED, 8, "9999999999.99999999"),
    ],
)
def test_formatting_keeps_every_decimal_of_the_precision(units: int, precision: int, text: str) -> None:
    assert format_scaled(units, precision) == text


# --------------------------------------------------------------------------- Currency and Market


def test_currency_parses_and_formats_in_its_own_precision() -> None:
    assert USD.parse("12.5") == 1_250_000_000
    assert USD.format(1_250_000_000) == "12.50000000"
    assert JPY.parse("100") == 100
    with pytest.raises(TooPrecise) as info:
        JPY.parse("1.5")
    assert info.value.field == "amount"


def test_market_amounts_and_prices_live_on_their_own_grids() -> None:
    market = btc_usd()
    assert market.parse_amount("0.5") == 5000
    assert market.parse_price("30000.25") == 3000025
    assert market.format_amount(5000) == "0.5000"
    assert market.format_price(3000025) == "30000.25"
    with pytest.raises(TooPrecise):
        market.parse_amount("0.00001")
    with pytest.raises(TooPrecise):
        market.parse_price("1.001")


def test_funds_are_exact_quote_units_of_price_times_amount() -> None:
    market = btc_usd()
    # 0.5 BTC at 30000.25 USD = 15000.125 USD = 1500012500000 units of 1e-8 USD
    assert market.funds(Price(3000025), Amount(5000)) == 1_500_012_500_000
    assert market.format_funds(market.funds(Price(3000025), Amount(5000))) == "15000.12500000"
    assert market.funds_factor == 100
    assert market.funds(Price(1), Amount(1)) == market.funds_factor


def test_base_units_rescale_market_amounts_to_the_ledger() -> None:
    market = btc_usd()
    assert market.base_units(Amount(5000)) == 50_000_000  # 0.5 BTC in satoshi
    assert BTC.format(market.base_units(Amount(5000))) == "0.50000000"


def test_amount_below_the_market_minimum_is_too_small() -> None:
    market = btc_usd(min_amount=10)
    assert market.parse_amount("0.0010") == 10
    with pytest.raises(TooSmall) as info:
        market.parse_amount("0.0009")
    assert info.value.code == "too_small"
    assert "0.0010" in str(info.value)


def test_amount_above_the_market_maximum_is_too_large() -> None:
    market = btc_usd(max_amount=100_0000)
    assert market.parse_amount("100") == 100_0000
    with pytest.raises(TooLarge):
        market.parse_amount("100.0001")


def test_price_above_the_market_maximum_is_too_large() -> None:
    market = btc_usd(max_price=1_000_000_00)
    assert market.parse_price("1000000") == 1_000_000_00
    with pytest.raises(TooLarge) as info:
        market.parse_price("1000000.01")
    assert info.value.field == "price"


def test_market_parsing_refuses_zero_negative_and_junk() -> None:
    market = btc_usd()
    with pytest.raises(NotPositive):
        market.parse_amount("0")
    with pytest.raises(NotPositive):
        market.parse_price("-1")
    with pytest.raises(NotANumber):
        market.parse_amount("one")


def test_a_market_whose_grid_cannot_be_settled_exactly_is_refused() -> None:
    with pytest.raises(ValueError, match="amount precision exceeds BTC"):
        Market("BTC-USD", BTC, USD, amount_precision=9, price_precision=0)
    with pytest.raises(ValueError, match="exceeds USD precision"):
        Market("BTC-USD", BTC, USD, amount_precision=5, price_precision=4)
    assert Market("BTC-USD", BTC, USD, amount_precision=4, price_precision=4).funds_factor == 1


@pytest.mark.parametrize(("min_amount", "max_amount"), [(0, 10), (11, 10), (-1, 10)])
def test_a_market_with_impossible_amount_limits_is_refused(min_amount: int, max_amount: int) -> None:
    with pytest.raises(ValueError, match="min_amount"):
        btc_usd(min_amount=min_amount, max_amount=max_amount)


def test_markets_compare_by_their_definition() -> None:
    assert btc_usd() == btc_usd()
    assert btc_usd(min_amount=2) != btc_usd()

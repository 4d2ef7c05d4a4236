"""The markets file: currencies, markets, fees and demo members, loaded into domain types.

One file describes what the exchange trades; every service loads the same one, so they agree
on precisions without asking each other.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bourse.domain.money import MAX_SCALED, Currency, Market, parse_scaled
from bourse.domain.values import Amount, MemberId, Price, QuoteUnits


class CatalogError(ValueError):
    """The markets file is inconsistent; the message names the offending entry."""


@dataclass(frozen=True, slots=True)
class MarketFees:
    maker_ppm: int
    taker_ppm: int


@dataclass(frozen=True, slots=True)
class DemoMember:
    id: MemberId
    email: str
    balances: Mapping[str, int]
    """Starting balances in ledger units, per currency code."""


@dataclass(frozen=True, slots=True)
class Catalog:
    currencies: Mapping[str, Currency]
    markets: Mapping[str, Market]
    fees: Mapping[str, MarketFees]
    demo_members: tuple[DemoMember, ...] = field(default=())

    def market(self, symbol: str) -> Market | None:
        return self.markets.get(symbol)


def default_markets_file() -> Path:
    return Path(str(resources.files("bourse") / "config" / "markets.toml"))


def load_catalog(path: Path | None = None) -> Catalog:
    source = path or default_markets_file()
    try:
        raw = tomllib.loads(source.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"cannot read markets file {source}: {exc}") from exc
    return parse_catalog(raw)


def parse_catalog(raw: Mapping[str, Any]) -> Catalog:
    currencies = {
        code: Currency(code=code, precision=_int(spec, "precision", f"currency {code}"))
        for code, spec in raw.get("currencies", {}).items()
    }
    markets: dict[str, Market] = {}
    fees: dict[str, MarketFees] = {}
    for symbol, spec in raw.get("markets", {}).items():
        where = f"market {symbol}"
        base, quote = _currency(currencies, spec, "base", where), _currency(currencies, spec, "quote", where)
        ap, pp = _int(spec, "amount_precision", where), _int(spec, "price_precision", where)
        try:
            markets[symbol] = Market(
                symbol=symbol,
                base=base,
                quote=quote,
                amount_precision=ap,
                price_precision=pp,
                min_amount=Amount(_scaled(spec, "min_amount", ap, 1)),
                max_amount=Amount(_scaled(spec, "max_amount", ap, MAX_SCALED)),
                max_price=Price(_scaled(spec, "max_price", pp, MAX_SCALED)),
                min_notional=QuoteUnits(_scaled(spec, "min_notional", quote.precision, 0)),
            )
        except ValueError as exc:
            raise CatalogError(f"{where}: {exc}") from exc
        fees[symbol] = MarketFees(
            maker_ppm=_int(spec, "maker_fee_ppm", where, default=0),
            taker_ppm=_int(spec, "taker_fee_ppm", where, default=0),
        )
    members = []
    for spec in raw.get("demo_members", []):
        where = f"demo member {spec.get('id')}"
        balances = {
            code: _currency(currencies, {"c": code}, "c", where).parse(str(value), f"{where} {code}")
            for code, value in spec.get("balances", {}).items()
        }
        members.append(
            DemoMember(
                id=MemberId(_int(spec, "id", where)), email=str(spec.get("email", "")), balances=balances
            )
        )
    return Catalog(currencies=currencies, markets=markets, fees=fees, demo_members=tuple(members))


def _int(spec: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = spec.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CatalogError(f"{where}: {key} must be a non-negative integer")
    return value


def _currency(currencies: Mapping[str, Currency], spec: Mapping[str, Any], key: str, where: str) -> Currency:
    code = spec.get(key)
    if not isinstance(code, str) or code not in currencies:
        raise CatalogError(f"{where}: unknown currency {code!r} for {key}")
    return currencies[code]


def _scaled(spec: Mapping[str, Any], key: str, precision: int, default: int) -> int:
    if key not in spec:
        return default
    return parse_scaled(str(spec[key]), precision, field_name=key)

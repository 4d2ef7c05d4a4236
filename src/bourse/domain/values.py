"""The exchange's typed integers: prices, amounts, quote units and ids, distinct to mypy.

Every quantity the engine and the ledger handle is an `int` (see `bourse.domain.money`), so to
Python a price and an amount are the same thing. These `NewType`s make them different things to
the type checker, at no runtime cost: at runtime each value is still a plain `int` (msgspec
encodes and decodes a NewType field as its `int`), and nothing is wrapped or converted.

Values are made typed where they enter: the parsers of `bourse.domain.money` (`Market.parse_price`,
`Market.parse_amount`), `bourse.application.order_requests` (order ids of requests) and the id
generator of `bourse.domain.order_ids`; decoded messages carry them from their fields. Arithmetic
on them gives a plain `int`: code that promises a `Price` or an `Amount` wraps its result back
(`Amount(a - b)`); the matching engine's inner loops use `typing.cast`, the cheapest way to do it
(a NewType call is a Python-level call in CPython 3.11).

Ledger balances and locks stay plain `int`: they are units of whichever currency the balance is
in (base or quote), see `bourse.domain.ledger`.
"""

from __future__ import annotations

from typing import NewType

__all__ = ["Amount", "MemberId", "OrderId", "Price", "QuoteUnits", "TradeId"]

Price = NewType("Price", int)
"""A limit or trade price: quote currency per one unit of the base currency, as an integer of
units of 10**-price_precision of the market (`Market.parse_price`, `Market.format_price`)."""

Amount = NewType("Amount", int)
"""An order or trade amount of the base currency, as an integer of units of
10**-amount_precision of the market (`Market.parse_amount`, `Market.format_amount`); not base
ledger units (`Market.base_units` converts)."""

QuoteUnits = NewType("QuoteUnits", int)
"""Funds: an amount of the quote currency in its ledger units, 10**-precision of the currency
(`Market.funds(price, amount)`, `Trade.funds`, `OrderClosed.funds_spent`)."""

OrderId = NewType("OrderId", int)
"""An order's id: a positive 64-bit snowflake (`bourse.domain.order_ids`), time ordered."""

MemberId = NewType("MemberId", int)
"""A member's id: positive; 0 is the exchange's own account (`bourse.domain.ledger.EXCHANGE_MEMBER`)."""

TradeId = NewType("TradeId", int)
"""A trade's id: per market, from 1, one more per trade (unique together with the market symbol)."""

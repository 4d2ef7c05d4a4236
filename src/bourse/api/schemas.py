"""Response and request bodies of the REST API. Money is a decimal string, never a float."""

from __future__ import annotations

from pydantic import BaseModel, Field

from bourse.catalog import MarketFees
from bourse.domain.money import Market, format_scaled


class MarketOut(BaseModel):
    id: str = Field(examples=["btc_usd"])
    base_unit: str
    quote_unit: str
    amount_precision: int
    price_precision: int
    min_amount: str = Field(examples=["0.0001"])
    max_amount: str
    max_price: str
    maker_fee: str = Field(
        description="Fraction of the amount received, as a decimal string", examples=["0.001"]
    )
    taker_fee: str

    @classmethod
    def of(cls, market: Market, fees: MarketFees) -> MarketOut:
        return cls(
            id=market.symbol,
            base_unit=market.base.code,
            quote_unit=market.quote.code,
            amount_precision=market.amount_precision,
            price_precision=market.price_precision,
            min_amount=market.format_amount(market.min_amount),
            max_amount=market.format_amount(market.max_amount),
            max_price=market.format_price(market.max_price),
            maker_fee=format_scaled(fees.maker_ppm, 6),
            taker_fee=format_scaled(fees.taker_ppm, 6),
        )


class Problem(BaseModel):
    """An error (RFC 9457). `code` is stable; `detail` is for people."""

    type: str
    title: str
    status: int
    code: str
    detail: str

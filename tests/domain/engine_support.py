"""Builders and checks shared by the matching engine tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import msgspec

from bourse.domain.matching import MatchingEngine
from bourse.domain.money import Currency, Market
from bourse.domain.orders import (
    AmendOrder,
    CancelOrder,
    EngineEvent,
    OrderType,
    PlaceOrder,
    Side,
    TimeInForce,
)
from bourse.domain.values import Amount, MemberId, OrderId, Price

SYMBOL = "BTC-USD"
BTC = Currency("BTC", 8)
USD = Currency("USD", 8)


def make_market(
    *, min_amount: int = 1, max_amount: int = 1_000_000, max_price: int = 1_000_000, symbol: str = SYMBOL
) -> Market:
    """Amounts in 0.0001 BTC, prices in 0.01 USD, so one (price unit x amount unit) is 100 USD units."""
    return Market(
        symbol,
        BTC,
        USD,
        amount_precision=4,
        price_precision=2,
        min_amount=Amount(min_amount),
        max_amount=Amount(max_amount),
        max_price=Price(max_price),
    )


MARKET = make_market()


def engine(market: Market = MARKET, *, recent_ids: int = 100_000) -> MatchingEngine:
    return MatchingEngine(market, recent_ids=recent_ids)


def limit(
    order_id: int,
    side: Side,
    price: int | None,
    amount: int,
    *,
    member: int | None = None,
    tif: TimeInForce = TimeInForce.GTC,
    post_only: bool = False,
    market: str = SYMBOL,
    locked: int = 0,
) -> PlaceOrder:
    return PlaceOrder(
        order_id=OrderId(order_id),
        member_id=MemberId(order_id if member is None else member),
        market=market,
        side=side,
        type=OrderType.LIMIT,
        amount=Amount(amount),
        price=None if price is None else Price(price),
        tif=tif,
        post_only=post_only,
        locked=locked,
        created_at=order_id * 10,
    )


def buy(order_id: int, price: int, amount: int, **kw: object) -> PlaceOrder:
    return limit(order_id, Side.BUY, price, amount, **kw)  # type: ignore[arg-type]


def sell(order_id: int, price: int, amount: int, **kw: object) -> PlaceOrder:
    return limit(order_id, Side.SELL, price, amount, **kw)  # type: ignore[arg-type]


def market_order(
    order_id: int,
    side: Side,
    amount: int,
    *,
    locked: int = 0,
    member: int | None = None,
    tif: TimeInForce = TimeInForce.IOC,
    price: int | None = None,
) -> PlaceOrder:
    return PlaceOrder(
        order_id=OrderId(order_id),
        member_id=MemberId(order_id if member is None else member),
        market=SYMBOL,
        side=side,
        type=OrderType.MARKET,
        amount=Amount(amount),
        price=None if price is None else Price(price),
        tif=tif,
        locked=locked,
    )


def cancel(order_id: int, member: int | None = None) -> CancelOrder:
    return CancelOrder(
        order_id=OrderId(order_id), member_id=MemberId(order_id if member is None else member), market=SYMBOL
    )


def amend(
    order_id: int, *, price: int | None = None, amount: int | None = None, member: int | None = None
) -> AmendOrder:
    return AmendOrder(
        order_id=OrderId(order_id),
        member_id=MemberId(order_id if member is None else member),
        market=SYMBOL,
        price=None if price is None else Price(price),
        amount=None if amount is None else Amount(amount),
    )


E = TypeVar("E", bound=EngineEvent)


def of_type(events: Sequence[EngineEvent], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


def kinds(events: Sequence[EngineEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


_encoder = msgspec.msgpack.Encoder()


def encode(events: Sequence[EngineEvent]) -> bytes:
    return _encoder.encode(list(events))

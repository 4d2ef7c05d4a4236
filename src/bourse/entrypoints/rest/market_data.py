"""Public market data and the member's balances and trades, from the read model."""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter

from bourse.application.read_queries import (
    DEPTH_DEFAULT_LIMIT,
    MEMBER_TRADES_DEFAULT_LIMIT,
    TRADES_DEFAULT_LIMIT,
    check_depth_query,
    check_member_trades_query,
    check_trades_query,
)
from bourse.entrypoints.rest.deps import Deps, Member
from bourse.entrypoints.rest.orders import PROBLEMS, ReadLimit, iso, query, read_refused
from bourse.entrypoints.rest.schemas import BalanceOut, DepthOut, MemberTradeOut, TradeOut

router = APIRouter(prefix="/api/v3")


MARKET_IN_PATH: Final = {"market": 404}
"""A market read refused for its market is not found, as `GET /markets/{market}` is; refused for
another argument (`limit`), a 422 (`read_refused`)."""


@router.get("/markets/{market}/depth", tags=["markets"], responses=PROBLEMS)
async def get_depth(market: str, deps: Deps, limit: ReadLimit = DEPTH_DEFAULT_LIMIT) -> DepthOut:
    """Aggregated order book, best levels first: `[price, amount]`; `limit` levels per side, and
    the market's engine input `sequence` they include (it only grows: a client drops an answer
    older than one it has). The arguments are checked by the rule every reader shares
    (`bourse.application.read_queries`)."""
    with read_refused(MARKET_IN_PATH):
        check_depth_query(market, limit=limit, markets=deps.catalog.markets)
    found = deps.catalog.markets[market]
    depth = await query(deps, deps.queries.depth(market, limit))
    return DepthOut(
        market=market,
        bids=[(found.format_price(p), found.format_amount(a)) for p, a in depth.bids],
        asks=[(found.format_price(p), found.format_amount(a)) for p, a in depth.asks],
        last_price=found.format_price(depth.last_price) if depth.last_price is not None else None,
        sequence=depth.seq,
    )


@router.get("/markets/{market}/trades", tags=["markets"], responses=PROBLEMS)
async def get_trades(market: str, deps: Deps, limit: ReadLimit = TRADES_DEFAULT_LIMIT) -> list[TradeOut]:
    """Recent trades of the market, most recent first; the arguments checked as the depth's."""
    with read_refused(MARKET_IN_PATH):
        check_trades_query(market, limit=limit, markets=deps.catalog.markets)
    found = deps.catalog.markets[market]
    trades = await query(deps, deps.queries.trades(market, limit))
    return [
        TradeOut(
            id=trade.id,
            market=market,
            price=found.format_price(trade.price),
            amount=found.format_amount(trade.amount),
            funds=found.format_funds(trade.funds),
            taker_side=trade.taker_side,
            created_at=iso(trade.ts),
        )
        for trade in trades
    ]


@router.get("/balances", tags=["account"], responses=PROBLEMS)
async def get_balances(member: Member, deps: Deps) -> list[BalanceOut]:
    """The member's balance of every currency: available and locked in open orders."""
    balances = await query(deps, deps.queries.balances(member))
    currencies = deps.catalog.currencies
    return [
        BalanceOut(
            currency=balance.currency,
            available=currencies[balance.currency].format(balance.available),
            locked=currencies[balance.currency].format(balance.locked),
        )
        for balance in balances
        if balance.currency in currencies
    ]


@router.get("/trades", tags=["account"], responses=PROBLEMS)
async def get_member_trades(
    member: Member,
    deps: Deps,
    market: str | None = None,
    limit: ReadLimit = MEMBER_TRADES_DEFAULT_LIMIT,
) -> list[MemberTradeOut]:
    """The member's own trades, most recent first; the arguments checked by the rule every reader
    shares (a bad one is a 422)."""
    with read_refused({}):
        check_member_trades_query(market=market, limit=limit, markets=deps.catalog.markets)
    trades = await query(deps, deps.queries.member_trades(member, market, limit))
    out = []
    for trade in trades:
        found = deps.catalog.markets[trade.market]
        out.append(
            MemberTradeOut(
                id=trade.id,
                market=trade.market,
                order_id=str(trade.order_id),
                side=trade.side,
                role=trade.role,
                price=found.format_price(trade.price),
                amount=found.format_amount(trade.amount),
                funds=found.format_funds(trade.funds),
                created_at=iso(trade.ts),
            )
        )
    return out

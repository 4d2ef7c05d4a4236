"""Public market data and the member's balances and trades, from the read model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from bourse.contracts.messages import QUERY_MAX_LIMIT
from bourse.domain.money import Market
from bourse.entrypoints.rest.deps import Deps, GatewayDeps, Member
from bourse.entrypoints.rest.errors import ApiError
from bourse.entrypoints.rest.orders import PROBLEMS, iso, market_or_422, query
from bourse.entrypoints.rest.schemas import BalanceOut, DepthOut, MemberTradeOut, TradeOut

router = APIRouter(prefix="/api/v3")


def market_or_404(deps: GatewayDeps, symbol: str) -> Market:
    """A market named in the path: unknown is a 404, as for GET /markets/{market}."""
    found = deps.catalog.market(symbol)
    if found is None:
        raise ApiError(404, "unknown_market", f"no market {symbol!r}")
    return found


@router.get("/markets/{market}/depth", tags=["markets"], responses=PROBLEMS)
async def get_depth(
    market: str, deps: Deps, limit: Annotated[int, Query(ge=1, le=QUERY_MAX_LIMIT)] = 50
) -> DepthOut:
    """Aggregated order book, best levels first: `[price, amount]`."""
    found = market_or_404(deps, market)
    depth = await query(deps, deps.queries.depth(market, limit))
    return DepthOut(
        market=market,
        bids=[(found.format_price(p), found.format_amount(a)) for p, a in depth.bids],
        asks=[(found.format_price(p), found.format_amount(a)) for p, a in depth.asks],
        last_price=found.format_price(depth.last_price) if depth.last_price is not None else None,
    )


@router.get("/markets/{market}/trades", tags=["markets"], responses=PROBLEMS)
async def get_trades(
    market: str, deps: Deps, limit: Annotated[int, Query(ge=1, le=QUERY_MAX_LIMIT)] = 100
) -> list[TradeOut]:
    """Recent trades of the market, most recent first."""
    found = market_or_404(deps, market)
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
    limit: Annotated[int, Query(ge=1, le=QUERY_MAX_LIMIT)] = 100,
) -> list[MemberTradeOut]:
    """The member's own trades, most recent first."""
    if market is not None:
        market_or_422(deps, market)
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

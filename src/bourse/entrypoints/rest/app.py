"""The FastAPI application of the gateway. Routes parse and format; decisions happen downstream."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from bourse import __version__
from bourse.entrypoints.rest import market_data, orders, statistics
from bourse.entrypoints.rest.api_docs import install_docs
from bourse.entrypoints.rest.deps import GatewayDeps
from bourse.entrypoints.rest.errors import ApiError, install_error_handlers
from bourse.entrypoints.rest.schemas import MarketOut, Problem

PROBLEM_RESPONSES: dict[int | str, dict[str, object]] = {
    404: {"model": Problem, "content": {"application/problem+json": {}}},
}


def create_app(deps: GatewayDeps) -> FastAPI:
    app = FastAPI(
        title="bourse",
        version=__version__,
        description="Exchange back end: orders, markets, balances. Amounts and prices are decimal strings.",
        docs_url=None,  # ours, from the package's assets: install_docs below
        redoc_url=None,
        openapi_url="/api/v3/openapi.json",
    )
    app.state.deps = deps
    catalog = deps.catalog
    install_error_handlers(app)
    install_docs(app, "/api/v3/docs")
    router = APIRouter(prefix="/api/v3")

    @router.get("/markets", tags=["markets"])
    async def list_markets() -> list[MarketOut]:
        """Every market with its precisions, limits and fees."""
        return [MarketOut.of(market, catalog.fees[symbol]) for symbol, market in catalog.markets.items()]

    @router.get("/markets/{market}", tags=["markets"], responses=PROBLEM_RESPONSES)
    async def get_market(market: str) -> MarketOut:
        found = catalog.market(market)
        if found is None:
            raise ApiError(404, "unknown_market", f"no market {market!r}")
        return MarketOut.of(found, catalog.fees[market])

    app.include_router(router)
    app.include_router(orders.router)
    app.include_router(market_data.router)
    app.include_router(statistics.router)
    return app

"""The FastAPI application of the gateway. Routes parse and format; decisions happen downstream."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from bourse import __version__
from bourse.api.errors import ApiError, install_error_handlers
from bourse.api.schemas import MarketOut, Problem
from bourse.catalog import Catalog

PROBLEM_RESPONSES: dict[int | str, dict[str, object]] = {
    404: {"model": Problem, "content": {"application/problem+json": {}}},
}


def create_app(catalog: Catalog) -> FastAPI:
    app = FastAPI(
        title="bourse",
        version=__version__,
        description="Exchange back end: orders, markets, balances. Amounts and prices are decimal strings.",
        docs_url="/api/v3/docs",
        redoc_url=None,
        openapi_url="/api/v3/openapi.json",
    )
    install_error_handlers(app)
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
    return app

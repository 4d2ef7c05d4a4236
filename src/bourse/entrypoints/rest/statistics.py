"""Market statistics, public: the 24-hour tickers and the k-lines, read through the gateway's
statistics chain (the cache's Redis, the SQL tables, then the statistics service: the same rule
as the other reads, with the same `Bourse-Read-*` headers). Money is formatted by the market."""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import APIRouter, Query

from bourse.application.ports import StatisticsReads
from bourse.application.push_feeds import candle_data, ticker_data
from bourse.application.read_queries import KLINES_DEFAULT_LIMIT, UNKNOWN_MARKET, check_klines_query
from bourse.domain.candles import PERIODS, Candle
from bourse.domain.money import Market
from bourse.domain.tickers import Ticker
from bourse.entrypoints.rest.deps import Deps, GatewayDeps
from bourse.entrypoints.rest.errors import ApiError
from bourse.entrypoints.rest.market_data import MARKET_IN_PATH
from bourse.entrypoints.rest.orders import PROBLEMS, ReadLimit, iso_ms, query, read_refused
from bourse.entrypoints.rest.schemas import KlineOut, TickerOut

router = APIRouter(prefix="/api/v3", tags=["markets"])

PERIOD_NAMES: Final = [period.value for period in PERIODS]

KlinePeriod = Annotated[
    str,
    Query(
        description="The candles' period",
        examples=["1m"],
        json_schema_extra={"enum": PERIOD_NAMES},
    ),
]
"""Documented with its values, checked by the rule (`unknown_period`), not by FastAPI, so a bad
one is the rule's problem with its code and field."""

KlineTime = Annotated[
    str | None,
    Query(
        description="Milliseconds since the epoch, or ISO-8601 (UTC when it names no offset)",
        examples=["1710158400000", "2024-03-11T12:00:00Z"],
    ),
]


def statistics_of(deps: GatewayDeps) -> StatisticsReads:
    if deps.statistics is None:
        raise ApiError(503, "unavailable", "market statistics are not served by this gateway")
    return deps.statistics


def market_in_path(deps: GatewayDeps, market: str) -> Market:
    """The market a path names; not found (404 `unknown_market`, as the depth's) otherwise."""
    found = deps.catalog.market(market)
    if found is None:
        raise ApiError(404, UNKNOWN_MARKET, f"no market {market!r}", field="market")
    return found


def ticker_out(market: Market, ticker: Ticker) -> TickerOut:
    """The ticker as the pushers format it (`ticker_data`), with ISO times."""
    data = ticker_data(market, ticker)
    seen = ticker.close_time > 0  # nothing of the stream seen yet: no window either
    return TickerOut(
        market=data.market,
        open_time=iso_ms(data.open_time) if seen else None,
        open_time_ms=data.open_time if seen else None,
        close_time=iso_ms(data.close_time) if seen else None,
        close_time_ms=data.close_time if seen else None,
        open=data.open,
        high=data.high,
        low=data.low,
        last=data.last,
        volume=data.volume,
        quote_volume=data.quote_volume,
        change=data.change,
        change_percent=data.change_percent,
        trades=data.trades,
        best_bid=data.best_bid,
        best_ask=data.best_ask,
        sequence=data.sequence,
    )


def kline_out(market: Market, candle: Candle, length_ms: int) -> KlineOut:
    """The candle as the pushers format it (`candle_data`), with its close time and ISO times."""
    data = candle_data(market, candle)
    close_ms = data.open_time + length_ms - 1
    return KlineOut(
        open_time=iso_ms(data.open_time),
        open_time_ms=data.open_time,
        close_time=iso_ms(close_ms),
        close_time_ms=close_ms,
        open=data.open,
        high=data.high,
        low=data.low,
        close=data.close,
        volume=data.volume,
        quote_volume=data.quote_volume,
        trades=data.trades,
    )


@router.get("/markets/{market}/ticker", responses=PROBLEMS)
async def get_ticker(market: str, deps: Deps) -> TickerOut:
    """The market's rolling 24-hour ticker: open, high, low, last, volumes, change, trade count
    and the best bid and ask. Times are the stream's (engine time), never a server clock."""
    found = market_in_path(deps, market)
    return ticker_out(found, await query(deps, statistics_of(deps).ticker(market)))


@router.get("/tickers", responses=PROBLEMS)
async def get_tickers(deps: Deps) -> list[TickerOut]:
    """Every market's ticker, in the order of `GET /markets`, read from one source."""
    markets = deps.catalog.markets
    symbols = list(markets)
    tickers = await query(deps, statistics_of(deps).tickers(symbols))
    return [ticker_out(markets[symbol], ticker) for symbol, ticker in zip(symbols, tickers, strict=True)]


@router.get("/markets/{market}/klines", responses=PROBLEMS)
async def get_klines(
    market: str,
    deps: Deps,
    period: KlinePeriod,
    start: KlineTime = None,
    end: KlineTime = None,
    limit: ReadLimit = KLINES_DEFAULT_LIMIT,
) -> list[KlineOut]:
    """Candles oldest first, without holes (an interval without trades repeats the previous
    close with zero volume), from the market's first trade on. With `start`, the first `limit`
    intervals from it; else the newest `limit` up to `end` (or now). A range of more than 1000
    intervals is refused (`range_too_large`); page on from the last `open_time_ms` + 1."""
    with read_refused(MARKET_IN_PATH):
        checked = check_klines_query(
            market, period=period, start=start, end=end, limit=limit, markets=deps.catalog.markets
        )
    found = deps.catalog.markets[market]
    candles = await query(
        deps,
        statistics_of(deps).klines(market, checked.period, checked.start_ms, checked.end_ms, checked.limit),
    )
    length_ms = checked.period.length_ms
    return [kline_out(found, candle, length_ms) for candle in candles]

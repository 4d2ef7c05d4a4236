"""Asking the `statistics` service over NATS request/reply: tickers, k-lines, depth snapshots and
how far it is, the gateway's (and any caller's) side.

The statistics service answers as the query service does (JSON bodies, nats.micro error headers
with a `QueryError` body), so both clients share one request/reply, `query_client.ask`. Its
market endpoints are per market (`<ns>.svc.statistics.<ticker|klines|depth>.<market>`): the
instance whose market group holds the market answers; `position` is one subject for all."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TypeVar

import msgspec
from nats.aio.client import Client

from bourse.adapters.query_client import ask
from bourse.contracts.messages import (
    DEPTH_SNAPSHOT_REPLY_DECODER,
    KLINES_REPLY_DECODER,
    STATISTICS_POSITION_DECODER,
    TICKER_REPLY_DECODER,
    DepthSnapshotQuery,
    KlinesQuery,
    StatisticsPosition,
    TickerQuery,
)
from bourse.contracts.subjects import STATISTICS_SERVICE, statistics_subject
from bourse.domain.candles import Candle, Period
from bourse.domain.depth_book import DepthSnapshot
from bourse.domain.tickers import Ticker

R = TypeVar("R")

STATISTICS_TIMEOUT_S = 2.0


class StatisticsClient:
    """The statistics service from the caller's side, a `StatisticsReads` (the last model of the
    gateway's statistics chain). Every failure (an error reply, no instance, a timeout, a reply
    that does not decode) is raised as `QueryFailed`."""

    def __init__(self, nc: Client, namespace: str, *, timeout: float = STATISTICS_TIMEOUT_S) -> None:
        self.nc = nc
        self.namespace = namespace
        self.timeout = timeout

    async def ticker(self, market: str) -> Ticker:
        return await self._ask("ticker", market, TickerQuery(market), TICKER_REPLY_DECODER)

    async def tickers(self, markets: Sequence[str]) -> list[Ticker]:
        """Every market's ticker, asked concurrently (each market may be another instance's); the
        first market's failure, in `markets` order, once all have answered or failed (none is
        left running)."""
        answers = await asyncio.gather(*(self.ticker(market) for market in markets), return_exceptions=True)
        tickers: list[Ticker] = []
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            tickers.append(answer)
        return tickers

    async def klines(
        self, market: str, period: Period, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[Candle]:
        query = KlinesQuery(market, period.value, start_ms, end_ms, limit)
        return (await self._ask("klines", market, query, KLINES_REPLY_DECODER)).candles

    async def depth_snapshot(self, market: str, limit: int | None = None) -> DepthSnapshot:
        """The levels (`limit` per side; None: all, what a local book needs) and the sequence
        they reflect: apply the depth updates above it."""
        query = DepthSnapshotQuery(market, limit)
        return await self._ask("depth", market, query, DEPTH_SNAPSHOT_REPLY_DECODER)

    async def position(self, market: str) -> StatisticsPosition:
        """How far the instance of `market`'s group has applied EVENTS (its watermark)."""
        return await self._ask("position", market, None, STATISTICS_POSITION_DECODER)

    async def positions(self, markets: Sequence[str]) -> list[StatisticsPosition]:
        """`position()` of every market's group, asked concurrently; the first failure raised."""
        return list(await asyncio.gather(*(self.position(market) for market in markets)))

    async def _ask(
        self,
        endpoint: str,
        market: str | None,
        body: msgspec.Struct | None,
        decoder: msgspec.json.Decoder[R],
    ) -> R:
        subject = statistics_subject(self.namespace, endpoint, market)
        return await ask(self.nc, subject, body, decoder, timeout=self.timeout, service=STATISTICS_SERVICE)

"""The gateway's reads answered from the persistence service's tables (`bourse.adapters.sql`):
the methods of `QueryClient`, with the same return types and errors.

- 404 `order_not_found`: no such order, or another member's;
- 400 `invalid_request`, 404 `unknown_market`: a read `bourse.application.read_queries` refuses
  (a limit out of 1..1000, a market not in `markets` when given; for orders also an unknown
  state, a before_id that is no order id);
- 503 `unavailable`: the database cannot be reached or read (server down, database dropped,
  SQLite file removed, tables missing), or did not answer within the read's deadline
  (`timeout_s`, the `sql_read_timeout_s` setting: a black-holed server must not hold a request
  for as long as its client waits, and the gateway then asks the next read model);
- 503 `not_ready`: persistence has applied nothing yet (no watermark row).

Each read is one connection and a few indexed statements: orders by `(member_id, status, id)` or
`(member_id, market, id)`, depth by `(market, status, id)` summed per price in SQL, trades by
their key or the member indexes. A member's balance is the sum of its rows over the accounts
shards (the exchange, member 0, earns fees in every shard)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bourse.adapters.sql.database import create_engine, sqlite_file
from bourse.adapters.sql.models import (
    WATERMARK,
    applied_positions,
    balances,
    klines,
    market_statistics,
    orders,
    trades,
)
from bourse.adapters.sql.store import KLINE_VALUES, kline_candle, order_view
from bourse.application.ports import QueryFailed
from bourse.application.read_queries import (
    KLINES_DEFAULT_LIMIT,
    check_depth_query,
    check_klines_query,
    check_member_trades_query,
    check_orders_query,
    check_trades_query,
)
from bourse.domain.candles import MINUTE_MS, Candle, Period, fill_gaps, page_bounds
from bourse.domain.order_views import (
    UNLISTED_REASON,
    BalanceView,
    DepthView,
    MemberTrade,
    OrderView,
    PublicTrade,
)
from bourse.domain.orders import OrderStatus, OrderType, Side, TimeInForce
from bourse.domain.tickers import WINDOW_MINUTES, RollingTicker, Ticker
from bourse.domain.values import Amount, Price, QuoteUnits

T = TypeVar("T")

EVENTS_CONSUMER = "persistence-events"
"""The persistence service's EVENTS consumer (`bourse.services.persistence.EVENTS_DURABLE`)."""

CONNECT_TIMEOUT_S = 2
READ_TIMEOUT_S = 1.0
"""The default deadline of one read (`Settings.sql_read_timeout_s`)."""
OPEN_STATUSES = (OrderStatus.SUBMITTED.value, OrderStatus.PARTIALLY_FILLED.value)


def read_engine(url: str, timeout_s: float = READ_TIMEOUT_S) -> AsyncEngine:
    """An engine for reads that fails fast when a MariaDB/MySQL server is away: connecting and
    waiting for a pooled connection are bounded; each read's own deadline (`SqlReadModel._read`)
    bounds the whole, statements included (cancelled, asyncmy closes the connection)."""
    if make_url(url).get_backend_name() in {"mysql", "mariadb"}:
        connect_args = {"connect_timeout": CONNECT_TIMEOUT_S}
        return create_engine(url, connect_args=connect_args, pool_timeout=timeout_s)
    return create_engine(url, pool_timeout=timeout_s)


class SqlReadModel:
    """Reads of the persistence tables; see the module docstring. `markets`, when given, are
    the known markets (others answer 404 `unknown_market`, as the query service does);
    `timeout_s` is the deadline of each read."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        markets: Collection[str] | None = None,
        timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.engine = engine
        self.timeout_s = timeout_s
        self.markets = None if markets is None else frozenset(markets)
        self._file = sqlite_file(engine.url)
        self._ready = False

    @classmethod
    def from_url(
        cls, url: str, *, markets: Collection[str] | None = None, timeout_s: float = READ_TIMEOUT_S
    ) -> SqlReadModel:
        return cls(read_engine(url, timeout_s), markets=markets, timeout_s=timeout_s)

    async def close(self) -> None:
        await self.engine.dispose()

    async def _read(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        if self._file is not None and not self._file.exists():
            # Connecting would create an empty file: a removed database is unreachable.
            raise QueryFailed(503, "unavailable", f"no database file {self._file}")
        try:
            async with asyncio.timeout(self.timeout_s), self.engine.connect() as conn:
                if not self._ready:
                    found = await conn.execute(
                        select(applied_positions.c.seq).where(applied_positions.c.shard == WATERMARK).limit(1)
                    )
                    if found.first() is None:
                        raise QueryFailed(503, "not_ready", "persistence has applied nothing yet")
                    self._ready = True
                return await work(conn)
        except TimeoutError:
            raise QueryFailed(503, "unavailable", f"sql: no answer within {self.timeout_s} s") from None
        except (SQLAlchemyError, OSError) as exc:
            raise QueryFailed(503, "unavailable", f"sql: {type(exc).__name__}: {exc}") from None

    async def order(self, member_id: int, order_id: int) -> OrderView:
        async def work(conn: AsyncConnection) -> Any:
            result = await conn.execute(
                select(orders).where(orders.c.id == order_id, orders.c.member_id == member_id)
            )
            return result.first()

        row = await self._read(work)
        if row is None:
            raise QueryFailed(404, "order_not_found", f"no order {order_id}")
        return order_view(row)

    async def orders(
        self,
        member_id: int,
        *,
        market: str | None = None,
        state: str | None = None,
        status: OrderStatus | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[OrderView]:
        statuses = check_orders_query(
            member_id,
            market=market,
            state=state,
            status=status,
            limit=limit,
            before_id=before_id,
            markets=self.markets,
        ).statuses
        if statuses is not None and not statuses:
            return []
        query = select(orders).where(orders.c.member_id == member_id)
        # not a refused resubmission (`order_views.listed`): readable by its id, no order of the member
        query = query.where(
            or_(orders.c.reject_reason.is_(None), orders.c.reject_reason != UNLISTED_REASON.value)
        )
        if market is not None:
            query = query.where(orders.c.market == market)
        if statuses is not None:
            query = query.where(orders.c.status.in_(sorted(s.value for s in statuses)))
        if before_id is not None:
            query = query.where(orders.c.id < before_id)
        query = query.order_by(orders.c.id.desc()).limit(limit)

        async def work(conn: AsyncConnection) -> list[OrderView]:
            return [order_view(row) for row in (await conn.execute(query)).all()]

        return await self._read(work)

    async def balances(self, member_id: int) -> list[BalanceView]:
        query = (
            select(balances.c.currency, func.sum(balances.c.available), func.sum(balances.c.locked))
            .where(balances.c.member_id == member_id)
            .group_by(balances.c.currency)
            .order_by(balances.c.currency)
        )

        async def work(conn: AsyncConnection) -> list[BalanceView]:
            return [
                BalanceView(currency, _int(available), _int(locked))
                for currency, available, locked in (await conn.execute(query)).all()
            ]

        return await self._read(work)

    async def depth(self, market: str, limit: int = 50) -> DepthView:
        check_depth_query(market, limit=limit, markets=self.markets)

        def side(value: Side) -> Select[Any]:
            best = orders.c.price.desc() if value is Side.BUY else orders.c.price.asc()
            return (
                select(orders.c.price, func.sum(orders.c.remaining))
                .where(
                    orders.c.market == market,
                    orders.c.status.in_(OPEN_STATUSES),
                    orders.c.side == value.value,
                    orders.c.type == OrderType.LIMIT.value,
                    orders.c.tif == TimeInForce.GTC.value,
                    orders.c.remaining > 0,
                )
                .group_by(orders.c.price)
                .order_by(best)
                .limit(limit)
            )

        async def work(conn: AsyncConnection) -> DepthView:
            bids = [(Price(int(p)), Amount(_int(a))) for p, a in (await conn.execute(side(Side.BUY))).all()]
            asks = [(Price(int(p)), Amount(_int(a))) for p, a in (await conn.execute(side(Side.SELL))).all()]
            last = (
                await conn.execute(
                    select(trades.c.price)
                    .where(trades.c.market == market)
                    .order_by(trades.c.trade_id.desc())
                    .limit(1)
                )
            ).scalar()
            last_price = None if last is None else Price(int(last))
            return DepthView(market, bids, asks, last_price, await _position(conn, market))

        return await self._read(work)

    async def trades(self, market: str, limit: int = 100) -> list[PublicTrade]:
        check_trades_query(market, limit=limit, markets=self.markets)
        query = (
            select(
                trades.c.trade_id,
                trades.c.market,
                trades.c.price,
                trades.c.amount,
                trades.c.funds,
                trades.c.taker_side,
                trades.c.ts,
            )
            .where(trades.c.market == market)
            .order_by(trades.c.trade_id.desc())
            .limit(limit)
        )

        async def work(conn: AsyncConnection) -> list[PublicTrade]:
            return [
                PublicTrade(trade_id, m, price, amount, funds, Side(taker_side), ts)
                for trade_id, m, price, amount, funds, taker_side, ts in (await conn.execute(query)).all()
            ]

        return await self._read(work)

    async def member_trades(
        self, member_id: int, market: str | None = None, limit: int = 100
    ) -> list[MemberTrade]:
        """Most recent first (by time, then trade id); a trade with oneself is listed twice,
        the taker's side first, as the query service does."""
        check_member_trades_query(market=market, limit=limit, markets=self.markets)

        def mine(role: str) -> Select[Any]:
            member_column = trades.c.maker_member_id if role == "maker" else trades.c.taker_member_id
            order_column = trades.c.maker_order_id if role == "maker" else trades.c.taker_order_id
            where = [member_column == member_id]
            if market is not None:
                where.append(trades.c.market == market)
            return (
                select(
                    trades.c.trade_id,
                    trades.c.market,
                    trades.c.price,
                    trades.c.amount,
                    trades.c.funds,
                    trades.c.taker_side,
                    order_column,
                    trades.c.ts,
                )
                .where(and_(*where))
                .order_by(trades.c.ts.desc(), trades.c.trade_id.desc())
                .limit(limit)
            )

        async def work(conn: AsyncConnection) -> list[MemberTrade]:
            found: list[tuple[tuple[int, str, int, int], MemberTrade]] = []
            for role in ("maker", "taker"):
                for trade_id, m, price, amount, funds, taker_side, order_id, ts in (
                    await conn.execute(mine(role))
                ).all():
                    taker = Side(taker_side)
                    side = taker if role == "taker" else (Side.SELL if taker is Side.BUY else Side.BUY)
                    funds = QuoteUnits(_int(funds))
                    trade = MemberTrade(trade_id, m, price, amount, funds, side, order_id, role, ts)
                    found.append(((ts, m, trade_id, role == "taker"), trade))
            found.sort(key=lambda pair: pair[0], reverse=True)
            return [trade for _, trade in found[:limit]]

        return await self._read(work)

    # ------------------------------------------------------------------ statistics

    async def ticker(self, market: str) -> Ticker:
        """The 24-hour ticker from the market's 1m k-lines in the window, its statistics row
        (newest event time, last price), the depth's best prices and its EVENTS position, all
        read on one connection (`RollingTicker.from_minutes`: what the fold answers)."""
        self._known(market)
        return await self._read(lambda conn: self._ticker(conn, market))

    async def tickers(self, markets: Sequence[str]) -> list[Ticker]:
        for market in markets:
            self._known(market)

        async def work(conn: AsyncConnection) -> list[Ticker]:
            return [await self._ticker(conn, market) for market in markets]

        return await self._read(work)

    def _known(self, market: str) -> None:
        """404 `unknown_market` as for the other reads of a market (the depth's check, whose
        default limit passes)."""
        check_depth_query(market, markets=self.markets)

    async def _ticker(self, conn: AsyncConnection, market: str) -> Ticker:
        found = (
            await conn.execute(
                select(market_statistics.c.time_ms, market_statistics.c.last_price).where(
                    market_statistics.c.market == market
                )
            )
        ).first()
        time_ms, last = (0, None) if found is None else (int(found[0]), found[1])
        minutes: list[Candle] = []
        if found is not None:
            minute = time_ms - time_ms % MINUTE_MS
            query = (
                select(*KLINE_VALUES)
                .where(
                    klines.c.market == market,
                    klines.c.period == Period.M1.value,
                    klines.c.open_time >= minute - (WINDOW_MINUTES - 1) * MINUTE_MS,
                    klines.c.open_time <= minute,
                )
                .order_by(klines.c.open_time)
            )
            minutes = [kline_candle(row) for row in (await conn.execute(query)).all()]
        best_bid = (await conn.execute(_best(market, Side.BUY))).scalar()
        best_ask = (await conn.execute(_best(market, Side.SELL))).scalar()
        seq = await _position(conn, market)
        return RollingTicker.from_minutes(
            market,
            seq=seq,
            time_ms=time_ms,
            last=None if last is None else Price(int(last)),
            best_bid=None if best_bid is None else Price(int(best_bid)),
            best_ask=None if best_ask is None else Price(int(best_ask)),
            minutes=minutes,
        ).ticker()

    async def klines(
        self,
        market: str,
        period: Period,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = KLINES_DEFAULT_LIMIT,
    ) -> list[Candle]:
        """Gap-filled candles, oldest first: the page `page_bounds` names between the oldest
        stored candle and the market's newest event time, filled by `fill_gaps` from the rows in
        it and the last row before it (the rule of `CandleBook.candles`)."""
        check_klines_query(
            market, period=period.value, start=start_ms, end=end_ms, limit=limit, markets=self.markets
        )
        mine = (klines.c.market == market, klines.c.period == period.value)

        async def work(conn: AsyncConnection) -> list[Candle]:
            # two scalar subqueries: each an index lookup (MIN on the key's prefix)
            oldest, time_ms = (
                await conn.execute(
                    select(
                        select(func.min(klines.c.open_time)).where(*mine).scalar_subquery(),
                        select(market_statistics.c.time_ms)
                        .where(market_statistics.c.market == market)
                        .scalar_subquery(),
                    )
                )
            ).one()
            if oldest is None or time_ms is None:
                return []
            bounds = page_bounds(period, int(oldest), int(time_ms), start_ms, end_ms, limit)
            if bounds is None:
                return []
            lo, hi = bounds
            inside = await conn.execute(
                select(*KLINE_VALUES)
                .where(*mine, klines.c.open_time >= lo, klines.c.open_time <= hi)
                .order_by(klines.c.open_time)
            )
            stored = [kline_candle(row) for row in inside.all()]
            before = None
            if not stored or stored[0].open_time != lo:
                row = (
                    await conn.execute(
                        select(*KLINE_VALUES)
                        .where(*mine, klines.c.open_time < lo)
                        .order_by(klines.c.open_time.desc())
                        .limit(1)
                    )
                ).first()
                before = None if row is None else kline_candle(row)
            return fill_gaps(period, lo, hi, stored, before)

        return await self._read(work)


def _best(market: str, side: Side) -> Select[Any]:
    """The best price of one side of the depth (as `SqlReadModel.depth` sums it)."""
    best = func.max(orders.c.price) if side is Side.BUY else func.min(orders.c.price)
    return select(best).where(
        orders.c.market == market,
        orders.c.status.in_(OPEN_STATUSES),
        orders.c.side == side.value,
        orders.c.type == OrderType.LIMIT.value,
        orders.c.tif == TimeInForce.GTC.value,
        orders.c.remaining > 0,
    )


async def _position(conn: AsyncConnection, market: str) -> int:
    """The last EVENTS batch of `market` persistence applied (0: none)."""
    seq = (
        await conn.execute(
            select(applied_positions.c.seq).where(
                applied_positions.c.consumer == EVENTS_CONSUMER, applied_positions.c.shard == market
            )
        )
    ).scalar()
    return int(seq or 0)


def _int(value: Any) -> int:
    return value if type(value) is int else int(value)

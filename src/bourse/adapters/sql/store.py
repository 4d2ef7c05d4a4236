"""Batched, idempotent writes of the persistence service, and the reads it needs.

Every write is a bulk statement executed once per transaction with all its rows (executemany),
in the dialect's own upsert:

- MariaDB/MySQL: `INSERT ... ON DUPLICATE KEY UPDATE`;
- SQLite: `INSERT ... ON CONFLICT (key) DO UPDATE` / `DO NOTHING`.

*Upserts* replace a row by its key (orders, balances, positions); *inserts if absent* keep the
row already there (trades, ledger entries, members, orders made from a rejection), so writing
the same rows twice leaves the tables as they were.

Each statement is built with SQLAlchemy's dialect constructs and compiled once; rows are plain
tuples in the table's column order handed to the driver's `executemany`, which spares
SQLAlchemy's per-row parameter processing (the largest CPU cost of the service otherwise). Values
need no conversion: integers, strings (`StrEnum`s are strings), booleans and None.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, and_, or_, select
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from bourse.adapters.sql import models
from bourse.domain.accounts import BalanceChanged
from bourse.domain.candles import Candle, Period, candle_row
from bourse.domain.ledger import LedgerEntry
from bourse.domain.order_views import OrderView
from bourse.domain.orders import CloseReason, OrderStatus, OrderType, RejectReason, Side, TimeInForce, Trade
from bourse.domain.values import Amount, QuoteUnits

Row = tuple[Any, ...]
"""Values of a table's columns, in the table's order."""

IN_CHUNK = 500
"""Ids per `IN (...)` list when loading orders (SQLite allows 32766 parameters, older ones 999)."""

orders = cast(Table, models.orders)
trades = cast(Table, models.trades)
balances = cast(Table, models.balances)
ledger_entries = cast(Table, models.ledger_entries)
members = cast(Table, models.members)
applied_positions = cast(Table, models.applied_positions)
klines = cast(Table, models.klines)
market_statistics = cast(Table, models.market_statistics)


@dataclass(frozen=True, slots=True)
class Position:
    seq: int
    """Producer's input sequence (envelope `seq`) of the last message applied."""
    stream_seq: int
    """Stream sequence of that message."""


def order_row(view: OrderView) -> Row:
    """A row of `orders`, in column order."""
    return (
        view.id,
        view.member_id,
        view.market,
        view.side,
        view.type,
        view.price,
        view.amount,
        view.executed,
        view.remaining,
        view.funds,
        view.status,
        view.close_reason,
        view.reject_reason,
        view.tif,
        view.post_only,
        view.client_order_id,
        view.created_at,
        view.received_at,
        view.updated_at,
    )


def order_view(row: Sequence[Any]) -> OrderView:
    """An `OrderView` from a row of `orders` selected with every column, in table order."""
    (
        id_,
        member_id,
        market,
        side,
        type_,
        price,
        amount,
        executed,
        remaining,
        funds,
        status,
        close_reason,
        reject_reason,
        tif,
        post_only,
        client_order_id,
        created_at,
        received_at,
        updated_at,
    ) = row
    return OrderView(
        id=id_,
        member_id=member_id,
        market=market,
        side=None if side is None else Side(side),
        type=None if type_ is None else OrderType(type_),
        price=price,
        amount=amount,
        executed=executed,
        remaining=remaining,
        funds=funds,
        status=OrderStatus(status),
        close_reason=None if close_reason is None else CloseReason(close_reason),
        reject_reason=None if reject_reason is None else RejectReason(reject_reason),
        tif=None if tif is None else TimeInForce(tif),
        post_only=bool(post_only),
        client_order_id=client_order_id,
        created_at=created_at,
        received_at=received_at,
        updated_at=updated_at,
    )


def trade_row(trade: Trade) -> Row:
    """A row of `trades`, in column order."""
    return (
        trade.market,
        trade.trade_id,
        trade.price,
        trade.amount,
        trade.funds,
        trade.maker_order_id,
        trade.maker_member_id,
        trade.taker_order_id,
        trade.taker_member_id,
        trade.taker_side,
        trade.ts,
    )


def balance_row(change: BalanceChanged, shard: int, seq: int, ts: int) -> Row:
    """A row of `balances`, in column order."""
    return (change.member_id, change.currency, shard, change.available, change.locked, seq, ts)


def ledger_row(entry: LedgerEntry, shard: int, seq: int, n: int, ts: int) -> Row:
    """A row of `ledger_entries`, in column order."""
    return (
        shard,
        seq,
        n,
        entry.account,
        entry.currency,
        entry.bucket,
        entry.delta,
        entry.ref_type,
        entry.ref_id,
        ts,
    )


def member_row(member_id: int, email: str | None, created_at: int) -> Row:
    """A row of `members`, in column order."""
    return (member_id, email, created_at)


@dataclass(frozen=True, slots=True)
class MarketStatistics:
    """A market's row of `market_statistics`: where its stored candles stand."""

    time_ms: int
    """The newest event time folded (ms): a `CandleBook.resume` starts there."""
    last_price: int | None


def kline_row(market: str, period: Period, candle: Candle) -> Row:
    """A row of `klines`, in column order."""
    return (market, period.value, *candle_row(candle))


def kline_candle(row: Sequence[Any]) -> Candle:
    """A `Candle` from the columns open_time .. trades of a row of `klines`."""
    open_time, open_, high, low, close, volume, quote_volume, trades_ = row
    return Candle(
        int(open_time),
        open_,
        high,
        low,
        close,
        Amount(volume if type(volume) is int else int(volume)),
        QuoteUnits(quote_volume if type(quote_volume) is int else int(quote_volume)),
        int(trades_),
    )


KLINE_VALUES = (
    klines.c.open_time,
    klines.c.open,
    klines.c.high,
    klines.c.low,
    klines.c.close,
    klines.c.volume,
    klines.c.quote_volume,
    klines.c.trades,
)
"""The columns `kline_candle` reads, in its order."""


class SqlStore:
    """The statements, built for the engine's dialect; every method runs inside the caller's
    transaction (`async with store.engine.begin() as conn`)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        if self.dialect not in {"sqlite", "mysql", "mariadb"}:
            raise ValueError(f"unsupported database {self.dialect!r}: MariaDB/MySQL or SQLite")
        self._statements: dict[str, tuple[Table, Insert]] = {
            "upsert_orders": (orders, self.upsert(orders)),
            "insert_orders": (orders, self.insert_absent(orders)),
            "insert_trades": (trades, self.insert_absent(trades)),
            "upsert_balances": (balances, self.upsert(balances)),
            "insert_ledger": (ledger_entries, self.insert_absent(ledger_entries)),
            "insert_members": (members, self.insert_absent(members)),
            "upsert_member_emails": (members, self.upsert(members, ("email",))),
            "upsert_positions": (applied_positions, self.upsert(applied_positions)),
            "upsert_klines": (klines, self.upsert(klines)),
            "upsert_market_statistics": (market_statistics, self.upsert(market_statistics)),
        }
        self._sql: dict[str, str] = {}

    def sql(self, name: str) -> str:
        """The SQL of a statement, compiled on first use (the dialect knows its server then:
        MariaDB and MySQL differ in their upsert syntax)."""
        text = self._sql.get(name)
        if text is None:
            table, statement = self._statements[name]
            compiled = statement.compile(dialect=self.engine.dialect)
            columns = tuple(column.name for column in table.columns)
            if tuple(compiled.positiontup or ()) != columns:
                raise AssertionError(
                    f"{name}: parameters {compiled.positiontup} are not the columns {columns}"
                )
            text = self._sql[name] = str(compiled)
        return text

    # ------------------------------------------------------------------ statements

    def upsert(self, table: Table, columns: Iterable[str] | None = None) -> Insert:
        """Insert, or replace `columns` (default: every column outside the key) of the row
        with the same key."""
        keys = [column.name for column in table.primary_key.columns]
        names = (
            list(columns) if columns is not None else [c.name for c in table.columns if c.name not in keys]
        )
        if self.dialect == "sqlite":
            lite = sqlite.insert(table)
            return lite.on_conflict_do_update(
                index_elements=keys, set_={name: lite.excluded[name] for name in names}
            )
        my = mysql.insert(table)
        return my.on_duplicate_key_update({name: my.inserted[name] for name in names})

    def insert_absent(self, table: Table) -> Insert:
        """Insert, or keep the row with the same key as it is."""
        if self.dialect == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing()
        key = next(iter(table.primary_key.columns)).name
        return mysql.insert(table).on_duplicate_key_update({key: table.c[key]})

    # ------------------------------------------------------------------ reads

    async def positions(self, conn: AsyncConnection, consumer: str, stream: str) -> dict[str, Position]:
        result = await conn.execute(
            select(applied_positions.c.shard, applied_positions.c.seq, applied_positions.c.stream_seq).where(
                applied_positions.c.consumer == consumer, applied_positions.c.stream == stream
            )
        )
        return {shard: Position(seq, stream_seq) for shard, seq, stream_seq in result.all()}

    async def positions_and_statistics(
        self, conn: AsyncConnection, consumer: str, stream: str
    ) -> tuple[dict[str, Position], dict[str, MarketStatistics]]:
        """`positions()` of the EVENTS consumer and, in the same statement, each market's
        `market_statistics` row (written in the transactions that move its position)."""
        ap, ms = applied_positions, market_statistics
        result = await conn.execute(
            select(ap.c.shard, ap.c.seq, ap.c.stream_seq, ms.c.time_ms, ms.c.last_price)
            .select_from(ap.outerjoin(ms, ms.c.market == ap.c.shard))
            .where(ap.c.consumer == consumer, ap.c.stream == stream)
        )
        positions: dict[str, Position] = {}
        statistics: dict[str, MarketStatistics] = {}
        for shard, seq, stream_seq, time_ms, last_price in result.all():
            positions[shard] = Position(seq, stream_seq)
            if time_ms is not None:
                statistics[shard] = MarketStatistics(time_ms, last_price)
        return positions, statistics

    async def load_klines(
        self, conn: AsyncConnection, keys: Iterable[tuple[str, Period, int]]
    ) -> dict[tuple[str, Period, int], Candle]:
        """The stored candles of `keys` (market, period, open time) that exist."""
        wanted = sorted(set(keys))
        found: dict[tuple[str, Period, int], Candle] = {}
        for start in range(0, len(wanted), IN_CHUNK // 4):
            chunk = wanted[start : start + IN_CHUNK // 4]
            where = or_(
                *(
                    and_(klines.c.market == m, klines.c.period == p.value, klines.c.open_time == t)
                    for m, p, t in chunk
                )
            )
            result = await conn.execute(select(klines.c.market, klines.c.period, *KLINE_VALUES).where(where))
            for market, period, *values in result.all():
                candle = kline_candle(values)
                found[(market, Period(period), candle.open_time)] = candle
        return found

    async def load_orders(self, conn: AsyncConnection, ids: Iterable[int]) -> dict[int, OrderView]:
        wanted = sorted(ids)
        found: dict[int, OrderView] = {}
        for start in range(0, len(wanted), IN_CHUNK):
            chunk = wanted[start : start + IN_CHUNK]
            result = await conn.execute(select(orders).where(orders.c.id.in_(chunk)))
            for row in result.all():
                view = order_view(row)
                found[view.id] = view
        return found

    # ------------------------------------------------------------------ writes

    async def write(self, conn: AsyncConnection, name: str, rows: Sequence[Row]) -> None:
        """One bulk statement for all `rows` (nothing when there are none)."""
        if rows:
            await conn.exec_driver_sql(self.sql(name), list(rows))

    async def upsert_orders(self, conn: AsyncConnection, views: Iterable[OrderView]) -> None:
        await self.write(conn, "upsert_orders", [order_row(view) for view in views])

    async def insert_orders_if_absent(self, conn: AsyncConnection, views: Iterable[OrderView]) -> None:
        await self.write(conn, "insert_orders", [order_row(view) for view in views])

    async def insert_trades(self, conn: AsyncConnection, rows: Iterable[Trade]) -> None:
        await self.write(conn, "insert_trades", [trade_row(trade) for trade in rows])

    async def upsert_balances(self, conn: AsyncConnection, rows: Sequence[Row]) -> None:
        """Rows made by `balance_row`."""
        await self.write(conn, "upsert_balances", rows)

    async def insert_ledger(self, conn: AsyncConnection, rows: Sequence[Row]) -> None:
        """Rows made by `ledger_row`."""
        await self.write(conn, "insert_ledger", rows)

    async def insert_members(self, conn: AsyncConnection, rows: Sequence[Row]) -> None:
        """Rows made by `member_row`."""
        await self.write(conn, "insert_members", rows)

    async def upsert_member_emails(self, conn: AsyncConnection, rows: Sequence[Row]) -> None:
        """Rows made by `member_row`: a member's email is set, the rest kept if it exists."""
        await self.write(conn, "upsert_member_emails", rows)

    async def upsert_klines(self, conn: AsyncConnection, rows: Sequence[Row]) -> None:
        """Rows made by `kline_row`: each replaces the stored candle of its interval."""
        await self.write(conn, "upsert_klines", rows)

    async def upsert_market_statistics(self, conn: AsyncConnection, rows: Sequence[Row]) -> None:
        """Rows (market, time_ms, last_price)."""
        await self.write(conn, "upsert_market_statistics", rows)

    async def save_positions(
        self,
        conn: AsyncConnection,
        consumer: str,
        stream: str,
        positions: Mapping[str, Position],
        now: int,
    ) -> None:
        rows = [
            (consumer, stream, shard, position.seq, position.stream_seq, now)
            for shard, position in positions.items()
        ]
        await self.write(conn, "upsert_positions", rows)

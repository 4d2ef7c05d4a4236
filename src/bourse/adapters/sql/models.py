"""The SQL schema of the persistence service: SQLAlchemy 2 typed models, one schema for
MariaDB/MySQL and SQLite. No business rules here: rows are what the streams said.

Numbers are integers on the grids of `bourse.domain.money`, never floats and never rescaled:

- prices, amounts, executed and remaining amounts are below `MAX_SCALED` (10**18): `BIGINT`;
- balances, ledger deltas and funds (quote units, price * amount) can add up beyond 2**63:
  `Units`, a `DECIMAL(38, 0)` on MariaDB/MySQL (exact, and `SUM` stays exact), a 64-bit
  `INTEGER` on SQLite, which has no exact wider type (a value beyond 2**63 - 1 fails to write
  there instead of being rounded: 92 billion whole units of an 8-decimal currency);
- times are nanoseconds since the epoch: `BIGINT`.

The decimal a person reads is `value * 10**-precision`, the precision coming from the markets
file (amount and price precision of the market, precision of the currency). There are no
foreign keys: each stream is written by its own consumer, in its own order, and `bourse audit`
checks that the tables agree.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Boolean, Dialect, Index, Numeric, String, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

MYSQL_TABLE_ARGS: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}

MARKET = 32
CURRENCY = 16
PERIOD = 8
ENUM = 24
"""Length of the columns holding a `StrEnum` value (status, side, reasons...)."""


class Units(TypeDecorator[int]):
    """An integer number of units that may exceed 64 bits: DECIMAL(38, 0) on MariaDB/MySQL,
    INTEGER on SQLite; always a Python `int` on both sides."""

    impl = Numeric(38, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(38, 0))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return value if type(value) is int else int(Decimal(value))


class Base(DeclarativeBase):
    pass


class Member(Base):
    """Every member (and the exchange, id 0) that ever held a balance."""

    __tablename__ = "members"
    __table_args__ = (MYSQL_TABLE_ARGS,)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    email: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[int] = mapped_column(BigInteger, default=0)
    """When the member's first balance change was stored in the ACCOUNTS stream (ns)."""


class BalanceRow(Base):
    """A balance as its accounts shard last reported it. Members belong to one shard; the
    exchange (member 0) earns fees in every shard, so its balance is the sum of its rows."""

    __tablename__ = "balances"
    __table_args__ = (MYSQL_TABLE_ARGS,)

    member_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    currency: Mapped[str] = mapped_column(String(CURRENCY), primary_key=True)
    shard: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    available: Mapped[int] = mapped_column(Units)
    locked: Mapped[int] = mapped_column(Units)
    seq: Mapped[int] = mapped_column(BigInteger)
    """The accounts shard's input sequence of the report that set it."""
    updated_at: Mapped[int] = mapped_column(BigInteger)


class LedgerRow(Base):
    """One ledger line (`bourse.domain.ledger.LedgerEntry`), keyed by where it came from: the
    `n`-th entry of the report for input `seq` of accounts shard `shard`."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        Index("ix_ledger_account_currency", "account", "currency"),
        MYSQL_TABLE_ARGS,
    )

    shard: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    account: Mapped[int] = mapped_column(BigInteger)
    """Member id, 0 the exchange, -1 the outside world, -2 clearing (see `bourse.domain.ledger`)."""
    currency: Mapped[str] = mapped_column(String(CURRENCY))
    bucket: Mapped[str] = mapped_column(String(ENUM))
    delta: Mapped[int] = mapped_column(Units)
    ref_type: Mapped[str] = mapped_column(String(ENUM))
    ref_id: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[int] = mapped_column(BigInteger)


class OrderRow(Base):
    """One row per order, rewritten as its events arrive (`bourse.domain.order_views.OrderView`)."""

    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_member_status_id", "member_id", "status", "id"),
        Index("ix_orders_member_market_id", "member_id", "market", "id"),
        Index("ix_orders_market_status_id", "market", "status", "id"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    member_id: Mapped[int] = mapped_column(BigInteger)
    market: Mapped[str] = mapped_column(String(MARKET))
    side: Mapped[str | None] = mapped_column(String(ENUM))
    """Null only for an order the accounts stage refused (it never reached the engine)."""
    type: Mapped[str | None] = mapped_column(String(ENUM))
    price: Mapped[int | None] = mapped_column(BigInteger)
    amount: Mapped[int | None] = mapped_column(BigInteger)
    executed: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    funds: Mapped[int] = mapped_column(Units)
    status: Mapped[str] = mapped_column(String(ENUM))
    close_reason: Mapped[str | None] = mapped_column(String(ENUM))
    reject_reason: Mapped[str | None] = mapped_column(String(ENUM))
    tif: Mapped[str | None] = mapped_column(String(ENUM))
    post_only: Mapped[bool] = mapped_column(Boolean)
    client_order_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class TradeRow(Base):
    """One row per trade; `trade_id` counts per market from 1."""

    __tablename__ = "trades"
    __table_args__ = (
        Index("ix_trades_maker_order", "maker_order_id"),
        Index("ix_trades_taker_order", "taker_order_id"),
        Index("ix_trades_maker_member", "maker_member_id", "market", "trade_id"),
        Index("ix_trades_taker_member", "taker_member_id", "market", "trade_id"),
        MYSQL_TABLE_ARGS,
    )

    market: Mapped[str] = mapped_column(String(MARKET), primary_key=True)
    trade_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    price: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    funds: Mapped[int] = mapped_column(Units)
    maker_order_id: Mapped[int] = mapped_column(BigInteger)
    maker_member_id: Mapped[int] = mapped_column(BigInteger)
    taker_order_id: Mapped[int] = mapped_column(BigInteger)
    taker_member_id: Mapped[int] = mapped_column(BigInteger)
    taker_side: Mapped[str] = mapped_column(String(ENUM))
    ts: Mapped[int] = mapped_column(BigInteger)


class AppliedPosition(Base):
    """How far a consumer has applied a stream, written in the same transaction as the data.

    `shard` is a market (EVENTS) or an accounts shard (ACCOUNTS): `seq` is the producer's input
    sequence carried by the envelope (`EventBatch.seq`, `AccountsReport.seq`), and a message at
    or below it is a repeat. `stream_seq` is the stream sequence of that message (for the lag).
    The row with `shard = "*"` is the consumer's watermark: every message of the stream up to
    `stream_seq` is applied, and a restart resumes after it."""

    __tablename__ = "applied_positions"
    __table_args__ = (MYSQL_TABLE_ARGS,)

    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    stream: Mapped[str] = mapped_column(String(64), primary_key=True)
    shard: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    stream_seq: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class KlineRow(Base):
    """One k-line with trades (`bourse.domain.candles.Candle`) of one market and period; an
    interval without trades has no row (reads fill it in, `fill_gaps`). Written by the EVENTS
    consumer in the transaction of the batches it folds, so it is exactly as far as the
    market's position."""

    __tablename__ = "klines"
    __table_args__ = (MYSQL_TABLE_ARGS,)

    market: Mapped[str] = mapped_column(String(MARKET), primary_key=True)
    period: Mapped[str] = mapped_column(String(PERIOD), primary_key=True)
    """`bourse.domain.candles.Period` value: 1m, 5m, 15m, 30m, 1h, 4h, 1d, 1w."""
    open_time: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    """Milliseconds since the epoch, aligned to the period (UTC; weeks open on Monday)."""
    open: Mapped[int] = mapped_column(BigInteger)
    high: Mapped[int] = mapped_column(BigInteger)
    low: Mapped[int] = mapped_column(BigInteger)
    close: Mapped[int] = mapped_column(BigInteger)
    volume: Mapped[int] = mapped_column(Units)
    """Sum of the trades' amounts: below 10**18 each, so a week's sum may pass 2**63."""
    quote_volume: Mapped[int] = mapped_column(Units)
    trades: Mapped[int] = mapped_column(BigInteger)


class MarketStatisticsRow(Base):
    """Per market, what a store of candles must know to fold on where it left off
    (`CandleBook.resume`): the newest event time folded (trades and batch receive times, ms) and
    the last trade's price (the ticker's `last`). Written with the market's k-lines."""

    __tablename__ = "market_statistics"
    __table_args__ = (MYSQL_TABLE_ARGS,)

    market: Mapped[str] = mapped_column(String(MARKET), primary_key=True)
    time_ms: Mapped[int] = mapped_column(BigInteger)
    last_price: Mapped[int | None] = mapped_column(BigInteger)
    """Null until the market's first trade."""


WATERMARK = "*"
"""`AppliedPosition.shard` of a consumer's watermark row."""

members = Member.__table__
balances = BalanceRow.__table__
ledger_entries = LedgerRow.__table__
orders = OrderRow.__table__
trades = TradeRow.__table__
applied_positions = AppliedPosition.__table__
klines = KlineRow.__table__
market_statistics = MarketStatisticsRow.__table__

"""`bourse audit`: does the SQL database agree with itself the way the ledger says it must?

Checks, each one SQL statement (so each reads one consistent state, even while the persistence
service writes):

- **balances**: every balance row equals the sum of its ledger entries (per accounts shard,
  member, currency and bucket: available and locked), and no member has ledger entries without
  a balance row;
- **conservation**: per currency, the ledger entries of every account (members, the exchange,
  the outside world, clearing) sum to zero: money is only moved, never made or lost;
- **orders**: every order's executed amount equals the sum of its trades' amounts, and its funds
  the sum of their funds (as maker or as taker);
- **klines_1m**: per market and minute, the 1m k-line is the trades table's minute: volume, quote
  volume, count, high and low, open and close by trade id; no 1m k-line without trades. A
  trade counts at the newest time seen by then (the running maximum of the timestamps in trade
  order), as the fold counts it; this assumes no batch's receive time ran ahead of a later
  trade's timestamp (the engine stamps a trade with its batch's receive time, which JetStream
  keeps increasing unless the server's clock steps back);
- **klines**: every k-line of a coarser period is the merge of the 1m k-lines inside its interval
  (open of the first, close of the last, extremes, sums), and every such group has one.

They hold when the persistence service has applied the streams from their first message (the
streams keep 7 days: a database started later lacks the older entries and trades). The two
consumers may stand at different points: each check uses the tables of one stream only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bourse.adapters.sql.database import create_engine
from bourse.domain.candles import MONDAY_MS, NS_PER_MS, WEEK_MS, Period

SHOWN = 20
"""Differences listed per check."""


@dataclass(slots=True)
class Check:
    name: str
    description: str
    checked: int
    """Rows looked at (balances, currencies, orders)."""
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


@dataclass(slots=True)
class AuditReport:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def lines(self) -> list[str]:
        out = []
        for check in self.checks:
            verdict = "ok" if check.ok else f"{len(check.differences)} DIFFERENCES"
            out.append(f"{check.name:<13} {check.description:<52} {check.checked:>10,} checked  {verdict}")
            out.extend(f"    {line}" for line in check.differences[:SHOWN])
            if len(check.differences) > SHOWN:
                out.append(f"    ... and {len(check.differences) - SHOWN} more")
        return out


_BALANCES = text(
    """
    SELECT b.shard, b.member_id, b.currency, b.available, b.locked,
           COALESCE(SUM(CASE WHEN l.bucket = 'available' THEN l.delta END), 0),
           COALESCE(SUM(CASE WHEN l.bucket = 'locked' THEN l.delta END), 0)
    FROM balances b
    LEFT JOIN ledger_entries l
      ON l.shard = b.shard AND l.account = b.member_id AND l.currency = b.currency
    GROUP BY b.shard, b.member_id, b.currency, b.available, b.locked
    """
)

_ENTRIES_WITHOUT_BALANCE = text(
    """
    SELECT l.shard, l.account, l.currency, COUNT(*), SUM(l.delta)
    FROM ledger_entries l
    LEFT JOIN balances b
      ON b.shard = l.shard AND b.member_id = l.account AND b.currency = l.currency
    WHERE l.account >= 0 AND b.member_id IS NULL
    GROUP BY l.shard, l.account, l.currency
    """
)

_CONSERVATION = text(
    """
    SELECT currency, COUNT(*), SUM(delta),
           SUM(CASE WHEN account = -1 THEN delta ELSE 0 END),
           SUM(CASE WHEN account = -2 THEN delta ELSE 0 END)
    FROM ledger_entries
    GROUP BY currency
    """
)

_ORDERS = text(
    """
    SELECT o.id, o.status, o.executed, o.funds, COALESCE(t.amount, 0), COALESCE(t.funds, 0), COALESCE(t.n, 0)
    FROM orders o
    LEFT JOIN (
        SELECT order_id, SUM(amount) AS amount, SUM(funds) AS funds, COUNT(*) AS n
        FROM (
            SELECT maker_order_id AS order_id, amount, funds FROM trades
            UNION ALL
            SELECT taker_order_id AS order_id, amount, funds FROM trades
        ) sides
        GROUP BY order_id
    ) t ON t.order_id = o.id
    """
)


_NO_CANDLE = "NULL, NULL, NULL, NULL, NULL, NULL, NULL"


def _minutes_sql(div: str) -> TextClause:
    """1m k-lines against the trades table's minutes, both ways (`div`: the dialect's integer
    division). Each row: market, open time, the k-line's values, the trades' values (a side
    is NULLs when it has no row)."""
    minute_ns = 60_000 * NS_PER_MS
    return text(
        f"""
        WITH timed AS (
            SELECT market, trade_id, price, amount, funds,
                   MAX(ts) OVER (PARTITION BY market ORDER BY trade_id
                                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at
            FROM trades
        ), grouped AS (
            SELECT market, (at - at % {minute_ns}) {div} {NS_PER_MS} AS open_time,
                   MIN(trade_id) AS first_id, MAX(trade_id) AS last_id, MAX(price) AS high,
                   MIN(price) AS low, SUM(amount) AS volume, SUM(funds) AS quote_volume,
                   COUNT(*) AS trades
            FROM timed
            GROUP BY market, (at - at % {minute_ns}) {div} {NS_PER_MS}
        ), traded AS (
            SELECT g.market, g.open_time, f.price AS open, l.price AS close, g.high, g.low,
                   g.volume, g.quote_volume, g.trades
            FROM grouped g
            JOIN trades f ON f.market = g.market AND f.trade_id = g.first_id
            JOIN trades l ON l.market = g.market AND l.trade_id = g.last_id
        )
        SELECT t.market, t.open_time,
               k.open, k.close, k.high, k.low, k.volume, k.quote_volume, k.trades,
               t.open, t.close, t.high, t.low, t.volume, t.quote_volume, t.trades
        FROM traded t
        LEFT JOIN klines k ON k.market = t.market AND k.period = '1m' AND k.open_time = t.open_time
        UNION ALL
        SELECT k.market, k.open_time, k.open, k.close, k.high, k.low, k.volume, k.quote_volume,
               k.trades, {_NO_CANDLE}
        FROM klines k
        LEFT JOIN traded t ON t.market = k.market AND t.open_time = k.open_time
        WHERE k.period = '1m' AND t.market IS NULL
        """
    )


_ORIGIN_MS = MONDAY_MS - 10_000 * WEEK_MS
"""Aligned to every period (a Monday), and early enough that `open_time - origin` is positive
(`%` keeps the dividend's sign in SQL)."""


def _periods_sql() -> TextClause:
    """Coarser k-lines against the merge of the 1m k-lines in their intervals, both ways. Each
    row: period, market, open time, the k-line's values, the merge's values."""
    periods = " UNION ALL ".join(
        f"SELECT '{period.value}' AS period, {period.length_ms} AS length_ms"
        for period in Period
        if period is not Period.M1
    )
    return text(
        f"""
        WITH periods AS ({periods}), grouped AS (
            SELECT p.period, m.market,
                   m.open_time - (m.open_time - {_ORIGIN_MS}) % p.length_ms AS open_time,
                   MIN(m.open_time) AS first_time, MAX(m.open_time) AS last_time,
                   MAX(m.high) AS high, MIN(m.low) AS low, SUM(m.volume) AS volume,
                   SUM(m.quote_volume) AS quote_volume, SUM(m.trades) AS trades
            FROM klines m CROSS JOIN periods p
            WHERE m.period = '1m'
            GROUP BY p.period, m.market, m.open_time - (m.open_time - {_ORIGIN_MS}) % p.length_ms
        ), merged AS (
            SELECT g.period, g.market, g.open_time, f.open, l.close, g.high, g.low, g.volume,
                   g.quote_volume, g.trades
            FROM grouped g
            JOIN klines f ON f.market = g.market AND f.period = '1m' AND f.open_time = g.first_time
            JOIN klines l ON l.market = g.market AND l.period = '1m' AND l.open_time = g.last_time
        )
        SELECT m.period, m.market, m.open_time,
               k.open, k.close, k.high, k.low, k.volume, k.quote_volume, k.trades,
               m.open, m.close, m.high, m.low, m.volume, m.quote_volume, m.trades
        FROM merged m
        LEFT JOIN klines k ON k.market = m.market AND k.period = m.period AND k.open_time = m.open_time
        UNION ALL
        SELECT k.period, k.market, k.open_time, k.open, k.close, k.high, k.low, k.volume,
               k.quote_volume, k.trades, {_NO_CANDLE}
        FROM klines k
        LEFT JOIN merged m ON m.market = k.market AND m.period = k.period AND m.open_time = k.open_time
        WHERE k.period <> '1m' AND m.market IS NULL
        """
    )


async def audit(engine: AsyncEngine) -> AuditReport:
    div = "/" if engine.dialect.name == "sqlite" else "DIV"
    async with engine.connect() as conn:
        balance_rows = (await conn.execute(_BALANCES)).all()
        orphan_rows = (await conn.execute(_ENTRIES_WITHOUT_BALANCE)).all()
        currency_rows = (await conn.execute(_CONSERVATION)).all()
        order_rows = (await conn.execute(_ORDERS)).all()
        minute_rows = (await conn.execute(_minutes_sql(div))).all()
        period_rows = (await conn.execute(_periods_sql())).all()
    return AuditReport(
        [
            _balances(balance_rows, orphan_rows),
            _conservation(currency_rows),
            _orders(order_rows),
            _minutes(minute_rows),
            _periods(period_rows),
        ]
    )


async def audit_url(url: str) -> AuditReport:
    engine = create_engine(url)
    try:
        return await audit(engine)
    finally:
        await engine.dispose()


def _balances(rows: Sequence[Any], orphans: Sequence[Any]) -> Check:
    check = Check("balances", "each balance = the sum of its ledger entries", len(rows))
    for shard, member, currency, available, locked, ledger_available, ledger_locked in rows:
        if (int(available), int(locked)) != (int(ledger_available), int(ledger_locked)):
            check.differences.append(
                f"member {member} {currency} (shard {shard}): balance available {int(available)}, "
                f"locked {int(locked)}; ledger available {int(ledger_available)}, locked {int(ledger_locked)}"
            )
    for shard, account, currency, count, total in orphans:
        check.differences.append(
            f"member {account} {currency} (shard {shard}): {count} ledger entries (sum {int(total)}) "
            "but no balance row"
        )
    return check


def _conservation(rows: Sequence[Any]) -> Check:
    check = Check("conservation", "per currency, the ledger entries sum to zero", len(rows))
    for currency, count, total, world, clearing in rows:
        if int(total) != 0:
            check.differences.append(
                f"{currency}: {count} entries sum to {int(total)} (outside world {int(world)}, "
                f"clearing {int(clearing)})"
            )
    return check


def _orders(rows: Sequence[Any]) -> Check:
    check = Check("orders", "each order's executed and funds = the sums of its trades", len(rows))
    for order_id, status, executed, funds, traded, traded_funds, trades in rows:
        if (int(executed), int(funds)) != (int(traded), int(traded_funds)):
            check.differences.append(
                f"order {order_id} ({status}): executed {int(executed)}, funds {int(funds)}; "
                f"its {int(trades)} trades: amount {int(traded)}, funds {int(traded_funds)}"
            )
    return check


_FIELDS = ("open", "close", "high", "low", "volume", "quote_volume", "trades")


def _values(values: Sequence[Any]) -> tuple[int, ...] | None:
    return None if values[0] is None else tuple(int(v) for v in values)


def _candle_text(values: tuple[int, ...] | None) -> str:
    if values is None:
        return "none"
    return " ".join(f"{name} {value}" for name, value in zip(_FIELDS, values, strict=True))


def _when(open_time: int) -> str:
    return datetime.fromtimestamp(open_time / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _minutes(rows: Sequence[Any]) -> Check:
    check = Check("klines_1m", "each 1m k-line = its minute of the trades table", len(rows))
    for market, open_time, *values in rows:
        stored, traded = _values(values[:7]), _values(values[7:])
        if stored != traded:
            check.differences.append(
                f"{market} 1m {_when(int(open_time))} (open time {int(open_time)}): "
                f"k-line {_candle_text(stored)}; trades {_candle_text(traded)}"
            )
    return check


def _periods(rows: Sequence[Any]) -> Check:
    check = Check("klines", "each coarser k-line = the merge of its 1m k-lines", len(rows))
    for period, market, open_time, *values in rows:
        stored, merged = _values(values[:7]), _values(values[7:])
        if stored != merged:
            check.differences.append(
                f"{market} {period} {_when(int(open_time))} (open time {int(open_time)}): "
                f"k-line {_candle_text(stored)}; its 1m k-lines {_candle_text(merged)}"
            )
    return check

"""`bourse audit`: does the SQL database agree with itself the way the ledger says it must?

Checks, each one SQL statement (so each reads one consistent state, even while the persistence
service writes):

- **balances**: every balance row equals the sum of its ledger entries (per accounts shard,
  member, currency and bucket: available and locked), and no member has ledger entries without
  a balance row;
- **conservation**: per currency, the ledger entries of every account (members, the exchange,
  the outside world, clearing) sum to zero: money is only moved, never made or lost;
- **orders**: every order's executed amount equals the sum of its trades' amounts, and its funds
  the sum of their funds (as maker or as taker).

They hold when the persistence service has applied the streams from their first message (the
streams keep 7 days: a database started later lacks the older entries and trades). The two
consumers may stand at different points: each check uses the tables of one stream only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bourse.adapters.sql.database import create_engine

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


async def audit(engine: AsyncEngine) -> AuditReport:
    async with engine.connect() as conn:
        balance_rows = (await conn.execute(_BALANCES)).all()
        orphan_rows = (await conn.execute(_ENTRIES_WITHOUT_BALANCE)).all()
        currency_rows = (await conn.execute(_CONSERVATION)).all()
        order_rows = (await conn.execute(_ORDERS)).all()
    return AuditReport(
        [
            _balances(balance_rows, orphan_rows),
            _conservation(currency_rows),
            _orders(order_rows),
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

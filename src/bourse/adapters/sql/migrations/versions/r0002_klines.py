"""Market statistics: k-lines with trades per market, period and open time, and per market the
newest event time folded and the last trade's price (what the persistence service needs to fold
on where it left off, and the SQL read model to answer tickers).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-20
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from bourse.adapters.sql.models import Units

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def _big(name: str, nullable: bool = False) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "klines",
        sa.Column("market", sa.String(32), nullable=False),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("open_time", sa.BigInteger(), autoincrement=False, nullable=False),
        _big("open"),
        _big("high"),
        _big("low"),
        _big("close"),
        sa.Column("volume", Units(), nullable=False),
        sa.Column("quote_volume", Units(), nullable=False),
        _big("trades"),
        sa.PrimaryKeyConstraint("market", "period", "open_time"),
        **MYSQL,
    )
    op.create_table(
        "market_statistics",
        sa.Column("market", sa.String(32), nullable=False, primary_key=True),
        _big("time_ms"),
        _big("last_price", nullable=True),
        **MYSQL,
    )


def downgrade() -> None:
    for table in ("market_statistics", "klines"):
        op.drop_table(table)

"""The first schema: members, balances, ledger entries, orders, trades, applied positions.

Revision ID: 0001
Revises:
Create Date: 2026-11-01
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from bourse.adapters.sql.models import Units

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def _id(name: str, primary_key: bool = False) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), autoincrement=False, nullable=False, primary_key=primary_key)


def _big(name: str, nullable: bool = False) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), nullable=nullable)


def _str(name: str, length: int, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(length), nullable=nullable)


def _units(name: str) -> sa.Column[int]:
    return sa.Column(name, Units(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "members",
        _id("id", primary_key=True),
        _str("email", 255, nullable=True),
        _big("created_at"),
        **MYSQL,
    )
    op.create_table(
        "balances",
        _id("member_id"),
        _str("currency", 16),
        _id("shard"),
        _units("available"),
        _units("locked"),
        _big("seq"),
        _big("updated_at"),
        sa.PrimaryKeyConstraint("member_id", "currency", "shard"),
        **MYSQL,
    )
    op.create_table(
        "ledger_entries",
        _id("shard"),
        _id("seq"),
        _id("n"),
        _big("account"),
        _str("currency", 16),
        _str("bucket", 24),
        _units("delta"),
        _str("ref_type", 24),
        _big("ref_id"),
        _big("ts"),
        sa.PrimaryKeyConstraint("shard", "seq", "n"),
        **MYSQL,
    )
    op.create_index("ix_ledger_account_currency", "ledger_entries", ["account", "currency"])
    op.create_table(
        "orders",
        _id("id", primary_key=True),
        _big("member_id"),
        _str("market", 32),
        _str("side", 24, nullable=True),
        _str("type", 24, nullable=True),
        _big("price", nullable=True),
        _big("amount", nullable=True),
        _big("executed"),
        _big("remaining"),
        _units("funds"),
        _str("status", 24),
        _str("close_reason", 24, nullable=True),
        _str("reject_reason", 24, nullable=True),
        _str("tif", 24, nullable=True),
        sa.Column("post_only", sa.Boolean(), nullable=False),
        _str("client_order_id", 128, nullable=True),
        _big("created_at"),
        _big("received_at"),
        _big("updated_at"),
        **MYSQL,
    )
    op.create_index("ix_orders_member_status_id", "orders", ["member_id", "status", "id"])
    op.create_index("ix_orders_member_market_id", "orders", ["member_id", "market", "id"])
    op.create_index("ix_orders_market_status_id", "orders", ["market", "status", "id"])
    op.create_table(
        "trades",
        _str("market", 32),
        _id("trade_id"),
        _big("price"),
        _big("amount"),
        _units("funds"),
        _big("maker_order_id"),
        _big("maker_member_id"),
        _big("taker_order_id"),
        _big("taker_member_id"),
        _str("taker_side", 24),
        _big("ts"),
        sa.PrimaryKeyConstraint("market", "trade_id"),
        **MYSQL,
    )
    op.create_index("ix_trades_maker_order", "trades", ["maker_order_id"])
    op.create_index("ix_trades_taker_order", "trades", ["taker_order_id"])
    op.create_index("ix_trades_maker_member", "trades", ["maker_member_id", "market", "trade_id"])
    op.create_index("ix_trades_taker_member", "trades", ["taker_member_id", "market", "trade_id"])
    op.create_table(
        "applied_positions",
        _str("consumer", 64),
        _str("stream", 64),
        _str("shard", 64),
        _big("seq"),
        _big("stream_seq"),
        _big("updated_at"),
        sa.PrimaryKeyConstraint("consumer", "stream", "shard"),
        **MYSQL,
    )


def downgrade() -> None:
    for table in ("applied_positions", "trades", "orders", "ledger_entries", "balances", "members"):
        op.drop_table(table)

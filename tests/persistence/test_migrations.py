"""The schema comes from the migrations: from an empty database to the newest revision on
MariaDB and on SQLite, identical to the models, and `bourse db upgrade` does it from the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect

from bourse.adapters.sql.database import (
    alembic_config,
    create_engine,
    current_revision,
    head_revision,
    upgrade,
    upgrade_url,
)
from bourse.adapters.sql.models import Base
from bourse.cli import main

TABLES = {
    "members",
    "balances",
    "ledger_entries",
    "orders",
    "trades",
    "applied_positions",
    "klines",
    "market_statistics",
}
STATISTICS_TABLES = {"klines", "market_statistics"}


async def test_upgrade_from_an_empty_database_creates_every_table_and_index(sql_url: str) -> None:
    assert await upgrade_url(sql_url) == head_revision() == "0002"
    engine = create_engine(sql_url)
    try:
        async with engine.connect() as conn:

            def look(sync: Connection) -> tuple[set[str], set[str], list[object]]:
                inspector = inspect(sync)
                tables = set(inspector.get_table_names())
                indexes = {index["name"] or "" for table in TABLES for index in inspector.get_indexes(table)}
                diff = compare_metadata(MigrationContext.configure(sync), Base.metadata)
                return tables, indexes, diff

            tables, indexes, diff = await conn.run_sync(look)
    finally:
        await engine.dispose()
    assert tables >= TABLES | {"alembic_version"}
    assert {
        "ix_orders_member_status_id",
        "ix_orders_market_status_id",
        "ix_ledger_account_currency",
    } <= indexes
    assert diff == [], "the migrations and the models disagree"


async def test_upgrading_a_database_at_the_newest_revision_changes_nothing(sql_url: str) -> None:
    engine = create_engine(sql_url)
    try:
        await upgrade(engine)
        await upgrade(engine)
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()


async def tables_of(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def test_the_statistics_revision_upgrades_from_0001_and_downgrades_back_to_it(sql_url: str) -> None:
    """r0002 adds the k-lines and market statistics to a database at r0001 and takes them away
    again, leaving the older tables alone."""
    assert await upgrade_url(sql_url, "0001") == "0001"
    assert not await tables_of(sql_url) & STATISTICS_TABLES
    assert await upgrade_url(sql_url) == "0002"
    assert await tables_of(sql_url) >= TABLES
    engine = create_engine(sql_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(
                lambda sync: command.downgrade(_config(sync), "0001"),
            )
        assert await current_revision(engine) == "0001"
    finally:
        await engine.dispose()
    tables = await tables_of(sql_url)
    assert not tables & STATISTICS_TABLES
    assert tables >= TABLES - STATISTICS_TABLES
    assert await upgrade_url(sql_url) == "0002"


def _config(sync: Connection) -> Config:
    config = alembic_config()
    config.attributes["connection"] = sync
    return config


def test_bourse_db_upgrade_creates_the_sqlite_database_in_a_missing_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "not" / "yet"
    monkeypatch.setenv("BOURSE_DATA_DIR", str(data))
    monkeypatch.delenv("BOURSE_SQL_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env file
    assert main(["db", "upgrade"]) == 0
    assert (data / "bourse.db").is_file()
    assert "revision 0002" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == 0


def test_bourse_db_upgrade_fails_with_a_message_when_the_database_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BOURSE_SQL_URL", "mysql+asyncmy://root@127.0.0.1:1/nothing")
    assert main(["db", "upgrade"]) == 1
    assert "bourse db upgrade" in capsys.readouterr().err

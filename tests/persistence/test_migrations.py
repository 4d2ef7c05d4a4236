"""The schema comes from the migrations: from an empty database to the newest revision on
MariaDB and on SQLite, identical to the models, and `bourse db upgrade` does it from the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect

from bourse.adapters.sql.database import create_engine, current_revision, head_revision, upgrade, upgrade_url
from bourse.adapters.sql.models import Base
from bourse.cli import main

TABLES = {"members", "balances", "ledger_entries", "orders", "trades", "applied_positions"}


async def test_upgrade_from_an_empty_database_creates_every_table_and_index(sql_url: str) -> None:
    assert await upgrade_url(sql_url) == head_revision() == "0001"
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


def test_bourse_db_upgrade_creates_the_sqlite_database_in_a_missing_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "not" / "yet"
    monkeypatch.setenv("BOURSE_DATA_DIR", str(data))
    monkeypatch.delenv("BOURSE_SQL_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env file
    assert main(["db", "upgrade"]) == 0
    assert (data / "bourse.db").is_file()
    assert "revision 0001" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == 0


def test_bourse_db_upgrade_fails_with_a_message_when_the_database_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BOURSE_SQL_URL", "mysql+asyncmy://root@127.0.0.1:1/nothing")
    assert main(["db", "upgrade"]) == 1
    assert "bourse db upgrade" in capsys.readouterr().err

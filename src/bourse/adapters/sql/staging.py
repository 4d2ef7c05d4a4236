"""Replacing every table of a database safely: new tables are built beside the live ones, in a
staging database, and swapped in at the end, at once. A failure before or during the swap
leaves the live tables as they were; readers see the old tables or the new ones, never none.

- MariaDB/MySQL: the staging database is `<database>_rebuild` on the same server (the user needs
  CREATE and DROP on it). The swap is one `RENAME TABLE` statement, which the server applies
  atomically: the live tables move into the staging database, the new ones into the live one.
- SQLite: the staging database is a file beside the live one (`bourse.rebuild.db` for
  `bourse.db`). The swap is one transaction on the live file: drop the live tables, create them
  as the staging ones are, copy the rows. SQLite's DDL is transactional, so it commits whole or
  not at all, and WAL readers see the old tables until it commits.

The caller holds the persistence lock (`bourse.adapters.sql.lock`): nothing writes the live
tables meanwhile, and nobody else uses the staging database.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from bourse.adapters.sql.database import SQLITE_BUSY_TIMEOUT_S, create_engine, is_mysql, sqlite_file, upgrade
from bourse.adapters.sql.models import Base

STAGING_SUFFIX = "_rebuild"
MYSQL_NAME_MAX = 64
SWAPPED: tuple[str, ...] = (*(table.name for table in Base.metadata.sorted_tables), "alembic_version")
"""The tables a swap replaces: the schema's, and the migrations' revision (it describes them)."""


def staging_url(url: str | URL) -> URL:
    """Where the new tables are built: `<database>_rebuild`, or `<name>.rebuild<suffix>` beside
    a SQLite file."""
    parsed = make_url(url)
    if is_mysql(parsed):
        name = f"{parsed.database}{STAGING_SUFFIX}"
        if not parsed.database or len(name) > MYSQL_NAME_MAX:
            raise ValueError(f"no staging database name for {parsed.database!r} (at most 56 characters)")
        return parsed.set(database=name)
    path = sqlite_file(parsed)
    if path is None:
        raise ValueError("an in-memory SQLite database has no tables to replace from another process")
    return parsed.set(database=str(path.with_name(f"{path.stem}.rebuild{path.suffix}")))


async def create_staging(url: str | URL) -> URL:
    """A new, empty staging database for `url` (a leftover of a failed run dropped first),
    migrated to the newest revision; returns its URL."""
    staging = staging_url(url)
    await drop_staging(url)
    if is_mysql(staging):
        engine = create_engine(url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                await conn.exec_driver_sql(
                    f"CREATE DATABASE {_quoted(engine, staging)} CHARACTER SET utf8mb4"
                )
        finally:
            await engine.dispose()
    engine = create_engine(staging, poolclass=NullPool)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    return staging


async def drop_staging(url: str | URL) -> None:
    """Remove the staging database of `url` (and, after a swap, the old tables in it)."""
    staging = staging_url(url)
    if is_mysql(staging):
        engine = create_engine(url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                await conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {_quoted(engine, staging)}")
        finally:
            await engine.dispose()
        return
    path = sqlite_file(staging)
    assert path is not None
    for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


async def swap_in(url: str | URL) -> None:
    """Replace the tables `SWAPPED` of `url` by those of its staging database, atomically."""
    staging = staging_url(url)
    if is_mysql(staging):
        await _swap_mysql(url, staging)
        return
    live, built = sqlite_file(url), sqlite_file(staging)
    assert live is not None
    assert built is not None
    await asyncio.to_thread(_swap_sqlite, live, built)


def _quoted(engine: AsyncEngine, url: URL) -> str:
    return engine.dialect.identifier_preparer.quote(str(url.database))


async def _swap_mysql(url: str | URL, staging: URL) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        quote = engine.dialect.identifier_preparer.quote
        live_db, staging_db = quote(str(make_url(url).database)), quote(str(staging.database))
        async with engine.connect() as conn:
            result = await conn.exec_driver_sql(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
            )
            present = {str(name) for (name,) in result.all()}
            renames = []
            for name in SWAPPED:
                table = quote(name)
                if name in present:
                    renames.append(f"{live_db}.{table} TO {staging_db}.{quote(name + '_replaced')}")
                renames.append(f"{staging_db}.{table} TO {live_db}.{table}")
            await conn.exec_driver_sql("RENAME TABLE " + ", ".join(renames))
    finally:
        await engine.dispose()


def _swap_sqlite(live: Path, staging: Path) -> None:
    conn = sqlite3.connect(live, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute("ATTACH DATABASE ? AS staging", (str(staging),))
        schema = conn.execute(
            "SELECT type, name, tbl_name, sql FROM staging.sqlite_master WHERE sql IS NOT NULL"
        ).fetchall()
        tables = {name: sql for kind, name, _, sql in schema if kind == "table"}
        indexes = [sql for kind, _, table, sql in schema if kind == "index" and table in SWAPPED]
        conn.execute("BEGIN IMMEDIATE")  # isolation_level=None: nothing is begun implicitly
        try:
            for name in SWAPPED:
                conn.execute(f'DROP TABLE IF EXISTS main."{name}"')
            for name in SWAPPED:
                if name not in tables:
                    raise RuntimeError(f"the staging database {staging} has no table {name!r}")
                conn.execute(tables[name])  # unqualified: created in main
                conn.execute(f'INSERT INTO main."{name}" SELECT * FROM staging."{name}"')
            for sql in indexes:
                conn.execute(sql)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()

"""Engines and migrations: an async SQLAlchemy engine for a URL (MariaDB/MySQL via asyncmy,
SQLite via aiosqlite), and the Alembic migrations of this package run programmatically.

SQLite (the embedded default) runs in WAL mode with `synchronous=NORMAL`: a commit survives a
crash of the process, and the last commits before a power loss may be lost, which the
persistence service repairs by itself (it resumes the streams after the position stored in
the database, see `bourse.services.persistence`). MariaDB/MySQL sessions use READ COMMITTED,
which takes no gap locks for the service's keyed upserts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_S = 30.0


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def is_mysql(url: str | URL) -> bool:
    return make_url(url).get_backend_name() in {"mysql", "mariadb"}


def sqlite_file(url: str | URL) -> Path | None:
    """The database file of a SQLite URL (None for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def create_engine(url: str | URL, *, lock_wait_s: int | None = None, **options: Any) -> AsyncEngine:
    """An async engine for `url`; for a SQLite file, its folder is created if missing.

    `lock_wait_s` (MariaDB/MySQL): how long a statement of this engine's sessions waits for a row
    lock (`innodb_lock_wait_timeout`, the server's default 50 s). The server does not notice that
    a client died while its statement waits; the statement keeps the locks it took until it gives
    up, so a writer with a deadline wants its statements to give up by that deadline too."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_file(parsed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, **options)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() in {"mysql", "mariadb"}:
        options.setdefault("isolation_level", "READ COMMITTED")
        options.setdefault("pool_pre_ping", True)
        options.setdefault("pool_recycle", 3600)
        if "charset" not in parsed.query:
            parsed = parsed.update_query_dict({"charset": "utf8mb4"})
        engine = create_async_engine(parsed, **options)
        if lock_wait_s is not None:
            event.listen(engine.sync_engine, "connect", _lock_wait(lock_wait_s))
        return engine
    return create_async_engine(parsed, **options)


def _lock_wait(seconds: int) -> Callable[[Any, Any], None]:
    def set_lock_wait(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET SESSION innodb_lock_wait_timeout = {max(1, int(seconds))}")
        cursor.close()

    return set_lock_wait


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.close()


def alembic_config(url: str | URL | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        rendered = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate the database to `revision` (default: the newest); does nothing if it is there."""
    config = alembic_config()
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, config, revision)


def _upgrade(connection: Connection, config: Config, revision: str) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def revision_url(url: str | URL) -> str | None:
    """The revision the database at `url` is at (None: no schema)."""
    engine = create_engine(url)
    try:
        return await current_revision(engine)
    finally:
        await engine.dispose()


async def upgrade_url(url: str | URL, revision: str = "head") -> str | None:
    """Migrate the database at `url`; returns the revision it is at afterwards."""
    engine = create_engine(url)
    try:
        await upgrade(engine, revision)
        return await current_revision(engine)
    finally:
        await engine.dispose()

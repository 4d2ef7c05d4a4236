"""Alembic environment of bourse's SQL schema.

Run programmatically (`bourse db upgrade`, the persistence service at start): the caller passes
an open connection in `config.attributes["connection"]`. Run by the `alembic` command line
(`alembic -x ...` with a config naming `script_location` and `sqlalchemy.url`), it opens its
own async engine.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from bourse.adapters.sql.database import create_engine
from bourse.adapters.sql.models import Base

config = context.config
target_metadata = Base.metadata


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_with)
    finally:
        await engine.dispose()


def run_offline(url: str) -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_with(connection)
elif context.is_offline_mode():
    run_offline(config.get_main_option("sqlalchemy.url") or "")
else:
    asyncio.run(run_async(config.get_main_option("sqlalchemy.url") or ""))

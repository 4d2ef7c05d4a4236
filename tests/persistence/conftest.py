"""Fixtures of the persistence tests: the machine's NATS, and one fresh database per test on
MariaDB and on SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from bourse.config.settings import Settings
from tests.conftest import SYSTEM_NATS_URL
from tests.persistence.helpers import Exchange, fresh_database


@pytest.fixture
def nats_url() -> str:
    """The machine's NATS only: what is tested here is SQL (the runtime is tested on both)."""
    return SYSTEM_NATS_URL


@pytest.fixture(params=["mariadb", "sqlite"])
async def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request.param, str(tmp_path)) as url:
        yield url


@pytest.fixture
def sql_settings(settings: Settings, sql_url: str) -> Settings:
    # accounts without its linger: the tests want long streams of small messages to write
    return settings.model_copy(update={"sql_url": sql_url, "accounts_linger_s": 0.0})


@pytest.fixture
async def exchange(nc: Client, sql_settings: Settings) -> AsyncIterator[Exchange]:
    running = Exchange(nc, sql_settings)
    yield running
    await running.stop()

"""Fixtures of the cache tests: a private `redis-server` per test module (never the machine's on
:6379), the machine's NATS."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bourse.config.settings import Settings
from tests.conftest import SYSTEM_NATS_URL, free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """A `redis-server` child on a free port, without persistence: stopping it loses its data."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            REDIS_SERVER,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", str(self.folder)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = Redis.from_url(self.url)
        try:
            for _ in range(200):
                with contextlib.suppress(Exception):
                    if await client.ping():
                        return
                await asyncio.sleep(0.02)
            raise RuntimeError("redis-server did not start")
        finally:
            await client.aclose()

    async def stop(self) -> None:
        """Kill it: its data is gone."""
        if self.process is not None:
            self.process.kill()
            await self.process.wait()
            self.process = None


@pytest.fixture(scope="module")
async def redis_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def nats_url() -> str:
    """The machine's NATS only: what is tested here is Redis (the runtime is tested on both)."""
    return SYSTEM_NATS_URL


def redis_url_of(settings: Settings) -> str:
    """The Redis URL `settings` connect to, password included (a test's own server)."""
    assert settings.redis_url is not None, "these settings have no Redis"
    return settings.redis_url.get_secret_value()


@pytest.fixture
async def redis_settings(settings: Settings, redis_server: RedisServer) -> Settings:
    if redis_server.process is None:  # a test that stopped it
        await redis_server.start()
    return settings.model_copy(update={"redis_url": redis_server.url})

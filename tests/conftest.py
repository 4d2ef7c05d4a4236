"""Shared fixtures: real NATS servers (the machine's on :4222 and one started from the wheel),
and a fresh namespace per test so tests never see each other's streams."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from bourse.adapters.jetstream import remove_topology
from bourse.config.settings import Settings
from bourse.runtime.nats_server import EmbeddedNatsServer

SYSTEM_NATS_URL = os.environ.get("BOURSE_TEST_NATS_URL", "nats://127.0.0.1:4222")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
async def embedded_nats(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedNatsServer]:
    server = EmbeddedNatsServer(tmp_path_factory.mktemp("nats"), free_port(), free_port())
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(params=["system", "embedded"])
def nats_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs against the machine's NATS and against the embedded one."""
    if request.param == "system":
        return SYSTEM_NATS_URL
    server: EmbeddedNatsServer = request.getfixturevalue("embedded_nats")
    return server.url


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(nats_url: str, namespace: str, tmp_path: Path) -> Settings:
    return Settings(
        nats_url=nats_url,
        namespace=namespace,
        data_dir=tmp_path,
        http_port=0,
        pusher_port=0,
        health_port=0,
        _env_file=None,
    )


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[Client]:
    client = await nats.connect(servers=settings.nats_servers)
    yield client
    await remove_topology(client.jetstream(), settings.namespace)
    await client.close()

"""The exchange under test: every service in this process, on both NATS servers.

`exchange` is one per test (fresh namespace: fresh streams, demo balances), for tests that
assert exact balances and books. `shared_exchange` is one per module and server, for tests that
only check that a request is refused and changes nothing (bad inputs, authentication)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence

import nats
import pytest
from nats.aio.client import Client

from bourse.config.settings import Settings
from bourse.runtime.nats_server import EmbeddedNatsServer
from bourse.runtime.service import Service
from tests.conftest import SYSTEM_NATS_URL, free_port
from tests.e2e.harness import DEMO_BALANCES, SERVICES, Exchange, Member, delete_namespace


async def started(settings: Settings, nc: Client, services: Sequence[type[Service]] = SERVICES) -> Exchange:
    """Started, seeded with the demo members' balances, and settled."""
    running = await Exchange.start(settings, nc, services)
    try:
        for member_id, expected in DEMO_BALANCES.items():
            balances = await running.member(member_id).balances()
            assert {currency: available for currency, (available, _) in balances.items()} == expected
    except BaseException:
        await running.stop()
        raise
    return running


@pytest.fixture
async def exchange(settings: Settings, nc: Client) -> AsyncIterator[Exchange]:
    """One per test. `nc` (requested here) deletes the namespace after the process stopped."""
    running = await started(settings.model_copy(update={"http_port": free_port(), "demo_seed": True}), nc)
    yield running
    await running.stop()


@pytest.fixture(scope="module", params=["system", "embedded"])
def module_nats_url(request: pytest.FixtureRequest) -> str:
    """The two servers of `nats_url`, once per module (a plain function: the embedded server is
    an async fixture that cannot be requested from inside a running fixture)."""
    if request.param == "system":
        return SYSTEM_NATS_URL
    server: EmbeddedNatsServer = request.getfixturevalue("embedded_nats")
    return server.url


@pytest.fixture(scope="module")
async def shared_exchange(
    module_nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Exchange]:
    """One per test module and NATS server."""
    settings = Settings(
        nats_url=module_nats_url,
        namespace=f"t{uuid.uuid4().hex[:10]}",
        data_dir=tmp_path_factory.mktemp("e2e"),
        http_port=free_port(),
        health_port=0,
        demo_seed=True,
        _env_file=None,
    )
    client = await nats.connect(servers=settings.nats_servers)
    try:
        running = await started(settings, client)
        yield running
        await running.stop()
    finally:
        await delete_namespace(client, settings.namespace)
        await client.close()


@pytest.fixture
def alice(exchange: Exchange) -> Member:
    return exchange.member(1)


@pytest.fixture
def bob(exchange: Exchange) -> Member:
    return exchange.member(2)


@pytest.fixture
def carol(exchange: Exchange) -> Member:
    """The smaller demo account: 5 btc, 50 eth, 500,000 usd."""
    return exchange.member(3)

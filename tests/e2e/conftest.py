"""An exchange per test: every service in this process on a fresh namespace, on both NATS servers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from bourse.settings import Settings
from tests.conftest import free_port
from tests.e2e.harness import DEMO_BALANCES, Exchange, Member


@pytest.fixture
async def exchange(settings: Settings, nc: Client) -> AsyncIterator[Exchange]:
    """Started, seeded with the demo members' balances, and settled. `nc` (requested here)
    deletes the namespace's streams after the process has stopped."""
    settings = settings.model_copy(update={"http_port": free_port(), "demo_seed": True})
    running = await Exchange.start(settings, nc)
    try:
        for member_id, expected in DEMO_BALANCES.items():
            balances = await running.member(member_id).balances()
            assert {currency: available for currency, (available, _) in balances.items()} == expected
        yield running
    finally:
        await running.stop()


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

"""The RabbitMQ ingress under test: the machine's RabbitMQ and NATS, a fresh namespace per test
(so fresh streams, and exchange and queue names under it), and the order pipeline (auth, ids,
accounts, matching, amqp-ingress) in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import pytest
from nats.aio.client import Client

from bourse.adapters.amqp import AmqpTopology, delete
from bourse.config.amqp import amqp_topology
from bourse.config.settings import Settings
from bourse.runtime.process import BourseProcess
from bourse.runtime.service import Service
from bourse.services.accounts import AccountsService
from bourse.services.amqp_ingress import AmqpIngress
from bourse.services.auth import Auth
from bourse.services.ids import Ids
from bourse.services.matching import MatchingService
from tests.amqp.helpers import RABBITMQ_URL, Publisher
from tests.conftest import SYSTEM_NATS_URL

PIPELINE: list[type[Service]] = [Auth, Ids, AccountsService, MatchingService]


@pytest.fixture
def nats_url() -> str:
    """The machine's NATS only: RabbitMQ is what these tests are about (the NATS outage test
    brings its own server)."""
    return SYSTEM_NATS_URL


@pytest.fixture
def amqp_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"rabbitmq_url": RABBITMQ_URL, "amqp_reply_timeout_s": 5.0})


@pytest.fixture
def topology(amqp_settings: Settings) -> AmqpTopology:
    return amqp_topology(amqp_settings)


@pytest.fixture
async def rabbit(topology: AmqpTopology) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel to look at the queues with; removes the test's exchanges and queues after it."""
    connection = await aio_pika.connect_robust(RABBITMQ_URL)
    channel = await connection.channel()
    yield channel
    await delete(channel, topology)
    await connection.close()


@pytest.fixture
async def pipeline(amqp_settings: Settings, nc: Client, rabbit: object) -> AsyncIterator[BourseProcess]:
    """Auth, ids, accounts, matching and the ingress in this process (demo members credited)."""
    process = BourseProcess(amqp_settings, [*PIPELINE, AmqpIngress], embedded_nats=False)
    try:
        await process.start()
        yield process
    finally:
        await process.stop()


@pytest.fixture
async def publisher(topology: AmqpTopology, rabbit: object) -> AsyncIterator[Publisher]:
    client = await Publisher.connect(RABBITMQ_URL, topology)
    yield client
    await client.close()


def ingress_of(process: BourseProcess) -> AmqpIngress:
    assert process.host is not None
    for running in process.host.running:
        if isinstance(running.service, AmqpIngress):
            return running.service
    raise AssertionError("no amqp-ingress in this process")

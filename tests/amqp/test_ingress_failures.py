"""The ingress under failure: SIGKILLed mid-stream (a real `bourse run amqp-ingress` process), and
NATS gone for a while (a private server stopped and started again). Either way every published
order is accepted by the engine exactly once: acked messages were durable, unacked ones come
back from RabbitMQ, and a redelivered create is the same order (its message id is its client
order id)."""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
from aio_pika.abc import AbstractChannel
from nats.aio.client import Client

from bourse.adapters.amqp import AmqpTopology
from bourse.config.settings import Settings
from bourse.runtime.nats_server import EmbeddedNatsServer
from bourse.runtime.process import BourseProcess
from bourse.services.amqp_ingress import AmqpIngress
from tests.amqp.conftest import PIPELINE, ingress_of
from tests.amqp.helpers import RABBITMQ_URL, Publisher, queue_depth, wait_accepted
from tests.conftest import SYSTEM_NATS_URL, free_port
from tests.e2e.harness import delete_namespace
from tests.e2e.test_crash_recovery import Proc


def crossing_order(n: int, message_id: str) -> tuple[dict[str, Any], str]:
    """Buys of member 1 and sells of member 2 around one price, so about half of them trade."""
    side = "buy" if n % 2 == 0 else "sell"
    price = str(50_000 + (n % 7) * 10 - 30)
    body = {
        "command": "create",
        "member_id": 1 if side == "buy" else 2,
        "market": "btc_usd",
        "side": side,
        "type": "limit",
        "amount": "0.001",
        "price": price,
    }
    return body, message_id


@dataclass
class Gate:
    """A point in the stream where the publisher says it got there and waits to be let on."""

    reached: asyncio.Event = field(default_factory=asyncio.Event)
    go_on: asyncio.Event = field(default_factory=asyncio.Event)


async def publish_orders(
    publisher: Publisher,
    ids: list[str],
    start: int,
    pause_s: float = 0.0,
    gates: dict[int, Gate] | None = None,
) -> None:
    for n, message_id in enumerate(ids, start):
        gate = (gates or {}).get(n - start)
        if gate is not None:
            gate.reached.set()
            await gate.go_on.wait()
        body, _ = crossing_order(n, message_id)
        await publisher.publish(body, message_id, reply=False)
        if pause_s:
            await asyncio.sleep(pause_s)


def assert_each_accepted_once(accepted: dict[str | None, int], ids: list[str]) -> None:
    missing = [message_id for message_id in ids if message_id not in accepted]
    twice = {message_id: count for message_id, count in accepted.items() if count != 1}
    assert not missing, f"{len(missing)} of {len(ids)} orders lost, e.g. {missing[:3]}"
    assert not twice, f"accepted more than once: {twice}"


async def test_killing_the_ingress_mid_stream_loses_nothing(
    amqp_settings: Settings, nc: Client, rabbit: AbstractChannel, topology: AmqpTopology
) -> None:
    pipeline = BourseProcess(amqp_settings, PIPELINE, embedded_nats=False)
    await pipeline.start()
    env = {key: value for key, value in os.environ.items() if not key.startswith("BOURSE_")}
    env.update(
        BOURSE_NATS_URL=SYSTEM_NATS_URL,
        BOURSE_NAMESPACE=amqp_settings.namespace,
        BOURSE_DATA_DIR=str(amqp_settings.data_dir),
        BOURSE_RABBITMQ_URL=RABBITMQ_URL,
        BOURSE_AMQP_PREFETCH="32",  # a small window: the kills find messages in flight
        BOURSE_LOG_LEVEL="WARNING",
    )
    ingress = Proc("amqp-ingress", ["amqp-ingress"], env, Path(amqp_settings.data_dir))
    publisher = await Publisher.connect(RABBITMQ_URL, topology)
    ids = [f"kill-{n}-{uuid.uuid4().hex[:8]}" for n in range(600)]
    try:
        async with httpx.AsyncClient(timeout=1.0) as http:
            ingress.start()
            await ingress.healthy(http)
            # the kills come after a third and two thirds of the stream, however slow the machine:
            # the publisher waits there until the ingress is up, and the kill comes 0.1 s after
            # it goes on, with 0.6 s of orders still to publish
            gates = {200: Gate(), 400: Gate()}
            publishing = asyncio.create_task(publish_orders(publisher, ids, 0, pause_s=0.003, gates=gates))
            for gate in gates.values():
                await gate.reached.wait()
                gate.go_on.set()
                await asyncio.sleep(0.1)
                assert not publishing.done(), "published everything before the kill"
                ingress.kill()
                ingress.start()
                await ingress.healthy(http)
            await publishing
            record = await wait_accepted(nc, amqp_settings.namespace, set(ids))
        assert_each_accepted_once(record.accepted_by_client_id(), ids)
        assert record.trades
        assert await queue_depth(rabbit, topology.queue) == 0
        assert ingress.starts == 3
    finally:
        ingress.kill()
        await publisher.close()
        await pipeline.stop()


async def test_nats_down_for_a_while_then_back_loses_nothing(
    tmp_path: Path, rabbit: AbstractChannel, topology: AmqpTopology, amqp_settings: Settings
) -> None:
    server = EmbeddedNatsServer(tmp_path / "nats", free_port(), free_port())
    await server.start()
    settings = amqp_settings.model_copy(update={"nats_url": server.url, "amqp_prefetch": 64})
    pipeline = BourseProcess(settings, [*PIPELINE, AmqpIngress], embedded_nats=False)
    await pipeline.start()
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    publisher = await Publisher.connect(RABBITMQ_URL, topology)
    before = [f"before-{n}-{uuid.uuid4().hex[:8]}" for n in range(100)]
    during = [f"during-{n}-{uuid.uuid4().hex[:8]}" for n in range(300)]
    try:
        await publish_orders(publisher, before, 0)
        record = await wait_accepted(nc, settings.namespace, set(before))
        assert_each_accepted_once(record.accepted_by_client_id(), before)

        await server.stop()
        await publish_orders(publisher, during, len(before))
        ingress = ingress_of(pipeline)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15.0
        while not ingress.pauses:  # submits time out (5 s), are requeued, consuming stops
            assert loop.time() < deadline, ingress.health()
            await asyncio.sleep(0.1)
        held = ingress.health()
        assert not held["consuming"], held
        assert not held["ok"], held
        await asyncio.sleep(1.0)
        assert ingress.in_flight <= settings.amqp_prefetch
        assert await queue_depth(rabbit, topology.queue) > 0  # RabbitMQ keeps them meanwhile

        await server.start()
        record = await wait_accepted(nc, settings.namespace, set(before + during), timeout_s=30.0)
        assert_each_accepted_once(record.accepted_by_client_id(), before + during)
        assert ingress.requeued > 0, ingress.health()
        assert ingress.health()["consuming"]
    finally:
        await publisher.close()
        await pipeline.stop()
        await delete_namespace(nc, settings.namespace)
        await nc.close()
        await server.stop()

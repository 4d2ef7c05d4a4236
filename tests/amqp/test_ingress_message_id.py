"""A message without a `message_id` (the idempotency key) is refused, never placed: without it a
redelivery of the same message would be a second order. aio-pika cannot send one (aiormq fills
in a random id), so these are published with a bare AMQP client (`helpers.publish_raw`)."""

from __future__ import annotations

import uuid

import msgspec
from aio_pika.abc import AbstractChannel
from nats.aio.client import Client
from pamqp.commands import Basic

from bourse.adapters.amqp import ERROR_HEADER, ERROR_MESSAGE_HEADER, USER_HEADER, AmqpTopology
from bourse.config.settings import Settings
from bourse.runtime.process import BourseProcess
from tests.amqp.conftest import ingress_of
from tests.amqp.helpers import (
    RABBITMQ_URL,
    Publisher,
    commands_stored,
    dead_letters,
    engine_record,
    publish_raw,
    queue_depth,
)
from tests.amqp.test_ingress import limit


async def test_a_message_without_message_id_is_dead_lettered_and_places_nothing(
    pipeline: BourseProcess,
    publisher: Publisher,
    rabbit: AbstractChannel,
    topology: AmqpTopology,
    nc: Client,
    amqp_settings: Settings,
) -> None:
    orders_before = await commands_stored(nc, amqp_settings.namespace)
    sent: dict[str, str | None] = {}  # correlation id -> the message id sent (None: the property absent)
    for message_id in (None, ""):
        correlation_id = f"no-id-{uuid.uuid4().hex[:12]}"
        properties = Basic.Properties(
            content_type="application/json",
            delivery_mode=2,
            user_id="guest",
            message_id=message_id,
            correlation_id=correlation_id,
            reply_to=publisher.reply_queue.name,
            headers={"x-test-case": correlation_id},
        )
        body = limit(1, "buy", "0.1", "100")
        await publish_raw(
            RABBITMQ_URL, topology.exchange, topology.routing_key, msgspec.json.encode(body), properties
        )
        sent[correlation_id] = message_id

    dead = await dead_letters(rabbit, topology, len(sent))
    for message in dead:
        headers = message.headers
        assert message.correlation_id in sent, headers
        assert headers["x-test-case"] == message.correlation_id, headers  # the original's headers kept
        assert headers[ERROR_HEADER] == "missing_message_id", headers
        assert "message_id" in str(headers[ERROR_MESSAGE_HEADER]), headers
        assert headers[USER_HEADER] == "guest", headers
    # the publisher hears of it on reply_to, under its correlation id
    replies = await publisher.wait_replies(list(sent))
    for correlation_id, (reply, *_) in replies.items():
        assert (reply.status, reply.code, reply.command) == ("rejected", "missing_message_id", "create")
        assert reply.message_id == "", (correlation_id, reply)
        assert reply.order_id is None, reply

    # refused once, not retried, and nothing reached the pipeline
    assert await queue_depth(rabbit, topology.queue) == 0
    assert await (await rabbit.get_queue(topology.dead_letter_queue)).get(fail=False) is None
    assert await commands_stored(nc, amqp_settings.namespace) == orders_before
    record = await engine_record(nc, amqp_settings.namespace)
    assert (record.accepted, record.refused, record.rejected) == ([], [], [])
    health = ingress_of(pipeline).health()
    assert health["dead_lettered"] == {"missing_message_id": 2}, health
    assert (health["acked"], health["requeued"], health["orders_published"]) == (0, 0, 0), health

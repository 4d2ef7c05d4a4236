"""Poison messages: a message the ingress fails on every time is not retried forever. The queue's
`x-delivery-limit` (3 here, 20 by default) bounds its redeliveries; then RabbitMQ dead-letters it
itself, with `x-death` reason `delivery_limit` and no `x-bourse-error` (the ingress never refused
it: it failed). And the message that used to be such a poison, a member id beyond 64 bits, is
now refused at once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from nats.aio.client import Client

from bourse.adapters.amqp import ERROR_HEADER, ERROR_MESSAGE_HEADER, AmqpTopology
from bourse.adapters.order_intake import Submission
from bourse.application.ports import Command, NotSent
from bourse.config.settings import Settings
from bourse.domain.orders import PlaceOrder
from bourse.runtime.process import BourseProcess
from tests.amqp.conftest import ingress_of
from tests.amqp.helpers import Publisher, commands_stored, dead_letters, engine_record, queue_depth
from tests.amqp.test_ingress import limit

DELIVERY_LIMIT = 3


@pytest.fixture
def amqp_settings(amqp_settings: Settings) -> Settings:
    return amqp_settings.model_copy(update={"amqp_delivery_limit": DELIVERY_LIMIT})


async def test_a_message_failing_every_delivery_is_dead_lettered_at_the_delivery_limit(
    pipeline: BourseProcess,
    publisher: Publisher,
    rabbit: AbstractChannel,
    topology: AmqpTopology,
    nc: Client,
    amqp_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ingress = ingress_of(pipeline)
    poison = f"poison-{uuid.uuid4().hex[:8]}"
    deliveries: list[tuple[bool, Any]] = []  # each delivery of the poison: (redelivered, x-delivery-count)
    handle, submit = ingress._handle, ingress.intake.submit

    async def recording_handle(message: AbstractIncomingMessage) -> None:
        if message.message_id == poison:
            count = (message.headers or {}).get("x-delivery-count")
            deliveries.append((bool(message.redelivered), count))
        await handle(message)

    async def failing_submit(command: Command) -> Submission:
        # what the intake answered a command it could never encode (a member id beyond 64 bits,
        # before the contract bounded it): the command is not the sender's fault, it never leaves
        if isinstance(command, PlaceOrder) and command.client_order_id == poison:
            raise NotSent("the command cannot be encoded")
        return await submit(command)

    monkeypatch.setattr(ingress, "_handle", recording_handle)
    monkeypatch.setattr(ingress.intake, "submit", failing_submit)

    orders_before = await commands_stored(nc, amqp_settings.namespace)
    body = limit(1, "buy", "0.1", "100")
    await publisher.publish(body, poison, headers={"x-test-case": "poison"})
    (dead,) = await dead_letters(rabbit, topology, 1, timeout_s=30.0)
    await asyncio.sleep(2.0)  # time for a delivery too many, if one were coming

    # the first delivery and DELIVERY_LIMIT redeliveries, each nack counting one, then no more
    # (the ingress pauses on the failure and hands the message back only once its consumer is
    # cancelled: a return racing the basic.cancel cost a second count on RabbitMQ 3.10)
    assert deliveries == [(False, None)] + [(True, n) for n in range(1, DELIVERY_LIMIT + 1)], deliveries
    assert await queue_depth(rabbit, topology.queue) == 0
    # dead-lettered by RabbitMQ, not refused by the ingress: x-death says why, no x-bourse-error
    headers = dead.headers
    assert ERROR_HEADER not in headers, headers
    deaths: Any = headers["x-death"]
    (death,) = deaths
    assert (death["reason"], death["queue"], death["exchange"], death["count"]) == (
        "delivery_limit",
        topology.queue,
        topology.exchange,
        1,
    ), headers
    assert headers["x-first-death-reason"] == "delivery_limit", headers
    assert (dead.message_id, dead.body, headers["x-test-case"]) == (
        poison,
        msgspec.json.encode(body),
        "poison",
    )
    health = ingress.health()
    assert (health["acked"], health["dead_lettered"]) == (0, {}), health
    assert (health["requeued"], health["pauses"]) == (DELIVERY_LIMIT + 1, DELIVERY_LIMIT + 1), health
    # nothing of it reached the pipeline
    assert await commands_stored(nc, amqp_settings.namespace) == orders_before
    assert poison not in (await engine_record(nc, amqp_settings.namespace)).accepted_by_client_id()

    # and the ingress goes on: the next order is placed
    good = f"after-{uuid.uuid4().hex[:8]}"
    await publisher.publish(body, good)
    assert (await publisher.reply(good)).status == "accepted"
    assert ingress.health()["ok"], ingress.health()
    assert await (await rabbit.get_queue(topology.dead_letter_queue)).get(fail=False) is None


async def test_a_member_id_beyond_64_bits_is_refused_at_once_not_retried(
    pipeline: BourseProcess,
    publisher: Publisher,
    rabbit: AbstractChannel,
    topology: AmqpTopology,
    nc: Client,
    amqp_settings: Settings,
) -> None:
    """It used to fail every delivery (the intake could not encode it, and failed the other
    commands of its batch with it) until the delivery limit; now the contract bounds member ids
    to signed 64 bits, so it is refused like any wrong field."""
    orders_before = await commands_stored(nc, amqp_settings.namespace)
    sent = {f"big-{n}-{uuid.uuid4().hex[:8]}": member for n, member in enumerate((2**63, 2**64))}
    for message_id, member in sent.items():
        await publisher.publish(limit(member, "buy", "0.1", "100"), message_id)
    dead = await dead_letters(rabbit, topology, len(sent))
    assert {message.message_id: message.headers[ERROR_HEADER] for message in dead} == dict.fromkeys(
        sent, "invalid_message"
    )
    assert all("member_id" in str(message.headers[ERROR_MESSAGE_HEADER]) for message in dead)
    replies = await publisher.wait_replies(list(sent))
    assert {reply[0].code for reply in replies.values()} == {"invalid_message"}, replies
    health = ingress_of(pipeline).health()
    assert (health["requeued"], health["pauses"], health["acked"]) == (0, 0, 0), health
    assert await commands_stored(nc, amqp_settings.namespace) == orders_before
    assert await queue_depth(rabbit, topology.queue) == 0

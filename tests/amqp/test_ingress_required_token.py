"""`BOURSE_AMQP_REQUIRE_TOKEN=true`: every command must carry a member JWT (`authorization:
Bearer ...`) of the member it names. A missing, expired or other member's token is refused:
dead-lettered with its code, answered `rejected`, and nothing reaches the pipeline; the same order
with its member's valid token goes through."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel
from nats.aio.client import Client

from bourse.adapters.amqp import ERROR_HEADER, ERROR_MESSAGE_HEADER, AmqpTopology
from bourse.config.auth import issuer_for, key_ring_for
from bourse.config.settings import Settings
from bourse.runtime.process import BourseProcess
from tests.amqp.conftest import ingress_of
from tests.amqp.helpers import Publisher, commands_stored, dead_letters, engine_record, queue_depth
from tests.amqp.test_ingress import limit


@pytest.fixture
def amqp_settings(amqp_settings: Settings) -> Settings:
    return amqp_settings.model_copy(update={"amqp_require_token": True})


def bearer(token: str) -> dict[str, Any]:
    return {"authorization": f"Bearer {token}"}


async def test_with_tokens_required_only_the_members_own_valid_token_is_accepted(
    pipeline: BourseProcess,
    publisher: Publisher,
    rabbit: AbstractChannel,
    topology: AmqpTopology,
    nc: Client,
    amqp_settings: Settings,
) -> None:
    issuer = issuer_for(amqp_settings, key_ring_for(amqp_settings))
    expired_of_1 = issuer.issue(1, ttl_s=-3600)
    valid_of_1, valid_of_2 = issuer.issue(1), issuer.issue(2)
    orders_before = await commands_stored(nc, amqp_settings.namespace)
    create = limit(1, "buy", "0.1", "100")
    cancel = {"command": "cancel", "member_id": 1, "order_id": "119083612421234688"}
    amend = {**cancel, "command": "amend", "market": "btc_usd", "price": "99"}
    cases: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = [
        ("missing_token", create, None),
        ("missing_token", cancel, None),
        ("missing_token", amend, None),
        ("missing_token", create, {"authorization": ""}),
        ("missing_token", create, {"authorization": f"Basic {valid_of_1}"}),
        ("missing_token", create, {"Authorization": f"Bearer {valid_of_1}"}),  # AMQP headers: case counts
        ("expired_token", create, bearer(expired_of_1)),
        ("expired_token", cancel, bearer(expired_of_1)),
        ("token_member_mismatch", create, bearer(valid_of_2)),
        ("token_member_mismatch", cancel, bearer(valid_of_2)),
        ("token_member_mismatch", amend, bearer(valid_of_2)),
    ]
    sent = [f"tok-{n}-{uuid.uuid4().hex[:8]}" for n in range(len(cases))]
    for (_code, body, headers), message_id in zip(cases, sent, strict=True):
        await publisher.publish(body, message_id, headers=headers)

    dead = {
        message.message_id: message.headers for message in await dead_letters(rabbit, topology, len(cases))
    }
    replies = await publisher.wait_replies(sent)
    for (code, body, headers), message_id in zip(cases, sent, strict=True):
        assert dead[message_id][ERROR_HEADER] == code, (body, headers, dead[message_id])
        assert dead[message_id][ERROR_MESSAGE_HEADER], dead[message_id]
        reply = replies[message_id][0]
        assert (reply.status, reply.code, reply.command) == ("rejected", code, body["command"]), reply
    # nothing stored: no command in ORDERS, no order anywhere, nothing left or retried in RabbitMQ
    assert await commands_stored(nc, amqp_settings.namespace) == orders_before
    record = await engine_record(nc, amqp_settings.namespace)
    assert (record.accepted, record.refused, record.rejected) == ([], [], [])
    assert await queue_depth(rabbit, topology.queue) == 0
    health = ingress_of(pipeline).health()
    assert health["dead_lettered"] == {"missing_token": 6, "expired_token": 2, "token_member_mismatch": 3}
    assert (health["acked"], health["requeued"], health["orders_published"]) == (0, 0, 0), health

    # the control: the same order with member 1's own valid token is placed, once
    accepted = f"tok-ok-{uuid.uuid4().hex[:8]}"
    await publisher.publish(create, accepted, headers=bearer(valid_of_1))
    reply = await publisher.reply(accepted)
    assert (reply.status, reply.client_order_id) == ("accepted", accepted), reply
    record = await engine_record(nc, amqp_settings.namespace)
    assert record.accepted_by_client_id() == {accepted: 1}
    assert await (await rabbit.get_queue(topology.dead_letter_queue)).get(fail=False) is None

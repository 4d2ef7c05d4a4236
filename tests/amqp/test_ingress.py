"""The RabbitMQ ingress against the machine's RabbitMQ and NATS: commands flow to trades, refusals
are dead-lettered with their reason (and never reach the pipeline), and a message delivered
twice is one order."""

from __future__ import annotations

import uuid
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from nats.aio.client import Client

from bourse.adapters.amqp import ERROR_HEADER, ERROR_MESSAGE_HEADER, AmqpTopology
from bourse.adapters.metrics import exposition
from bourse.config.auth import issuer_for, key_ring_for
from bourse.config.settings import Settings
from bourse.domain.order_shape import AMEND_CHANGES_NOTHING
from bourse.domain.orders import OrderStatus
from bourse.runtime.process import BourseProcess
from tests.amqp.conftest import ingress_of
from tests.amqp.helpers import (
    RABBITMQ_URL,
    Publisher,
    commands_stored,
    dead_letters,
    engine_record,
    queue_depth,
    rabbitmqctl,
)
from tests.runtime.scrape import Scrape


def mid() -> str:
    return uuid.uuid4().hex


def limit(member: int, side: str, amount: str, price: str, **extra: Any) -> dict[str, Any]:
    return {
        "command": "create",
        "member_id": member,
        "market": "btc_usd",
        "side": side,
        "type": "limit",
        "amount": amount,
        "price": price,
        **extra,
    }


def amqp_orders(outcome: str) -> float:
    """`bourse_orders_total{source="amqp", outcome}` of this process, as /metrics serves it."""
    found = Scrape.parse(exposition()).series("bourse_orders_total", source="amqp", outcome=outcome)
    return sum(found.values())


async def test_commands_flow_to_trades(
    pipeline: BourseProcess, publisher: Publisher, nc: Client, amqp_settings: Settings
) -> None:
    accepted_before = amqp_orders("accepted")
    sell, buy = mid(), mid()
    await publisher.publish(limit(1, "sell", "0.5", "50000"), sell)
    assert (await publisher.reply(sell)).status == "accepted"
    await publisher.publish(limit(2, "buy", "0.2", "50100", client_order_id="bob-1"), buy)
    bought = await publisher.reply(buy)
    assert bought.status == "accepted", bought
    assert bought.order_status is OrderStatus.EXECUTED
    assert bought.executed == "0.200000"
    assert bought.client_order_id == "bob-1"

    # amend alice's rest, then cancel it
    sold = await publisher.reply(sell)
    assert sold.order_id is not None
    amend, cancel = mid(), mid()
    body = {"command": "amend", "member_id": 1, "order_id": sold.order_id, "market": "btc_usd"}
    await publisher.publish({**body, "price": "51000"}, amend)
    amended = await publisher.reply(amend)
    assert (amended.status, amended.order_status) == ("accepted", OrderStatus.PARTIALLY_FILLED), amended
    await publisher.publish({"command": "cancel", "member_id": 1, "order_id": int(sold.order_id)}, cancel)
    cancelled = await publisher.reply(cancel)
    assert (cancelled.status, cancelled.order_status) == ("accepted", OrderStatus.CANCELLED), cancelled

    record = await engine_record(nc, amqp_settings.namespace)
    assert [(t.maker_order_id, t.taker_order_id) for t in record.trades] == [
        (int(sold.order_id), int(bought.order_id or 0))
    ]
    assert record.accepted_by_client_id() == {sell: 1, "bob-1": 1}
    health = ingress_of(pipeline).health()
    assert (health["acked"], health["dead_lettered"]) == (4, {}), health
    assert amqp_orders("accepted") - accepted_before == 2  # the two creates; amend and cancel place none


async def test_refused_messages_are_dead_lettered_with_their_reason(
    pipeline: BourseProcess,
    publisher: Publisher,
    rabbit: AbstractChannel,
    topology: AmqpTopology,
    nc: Client,
    amqp_settings: Settings,
) -> None:
    ring = key_ring_for(amqp_settings)
    token_of_2 = issuer_for(amqp_settings, ring).issue(2)
    orders_before = await commands_stored(nc, amqp_settings.namespace)
    good = limit(1, "buy", "0.1", "100")
    cases: list[tuple[str, dict[str, Any] | bytes, dict[str, Any]]] = [
        ("malformed_message", b'{"command": "create", ', {}),
        ("invalid_message", {**good, "side": "up"}, {}),
        ("invalid_message", {**good, "amount": 1}, {}),
        ("invalid_message", {**good, "extra": True}, {}),
        ("invalid_message", {**good, "command": "delete"}, {}),
        ("unknown_market", {**good, "market": "doge_usd"}, {}),
        ("too_precise", {**good, "amount": "0.0000001"}, {}),
        ("not_positive", {**good, "price": "-1"}, {}),
        ("price_required", {k: v for k, v in good.items() if k != "price"}, {}),
        ("price_not_allowed", {**good, "type": "market"}, {}),
        ("notional_too_small", {**good, "amount": "0.001"}, {}),  # 0.1 usd, the market's minimum is 1
        (
            "notional_too_small",
            {
                "command": "amend",
                "member_id": 1,
                "order_id": "12",
                "market": "btc_usd",
                "price": "1",
                "amount": "0.1",
            },
            {},
        ),
        ("invalid_order_id", {"command": "cancel", "member_id": 1, "order_id": "12x"}, {}),
        ("amend_invalid", {"command": "amend", "member_id": 1, "order_id": "12", "market": "btc_usd"}, {}),
        ("unknown_user", good, {"user_id": None}),
        ("invalid_message_id", good, {"message_id": "has spaces"}),
        ("token_member_mismatch", good, {"headers": {"authorization": f"Bearer {token_of_2}"}}),
        ("malformed_token", good, {"headers": {"authorization": "Bearer not.a.token"}}),
    ]
    # (no case without a message id: aio-pika, like every aiormq client, fills in a random one)
    refused_before = amqp_orders("refused")
    sent: list[str] = []
    for _code, body, options in cases:
        message_id = options.pop("message_id", mid())
        await publisher.publish(body, message_id, **options)
        sent.append(message_id)

    dead = await dead_letters(rabbit, topology, len(cases))
    codes = {message.message_id: (message.headers[ERROR_HEADER], message.headers) for message in dead}
    for (code, body, _options), message_id in zip(cases, sent, strict=True):
        got, headers = codes[message_id]
        assert got == code, (body, headers)
        assert headers[ERROR_MESSAGE_HEADER], headers
        if code == "amend_invalid":  # the amend rule's message, as PATCH /order/{id} says it
            assert headers[ERROR_MESSAGE_HEADER] == AMEND_CHANGES_NOTHING.message, headers
    replied = await publisher.wait_replies([m for m in sent if m != "has spaces"])
    assert all(replies[0].status == "rejected" for replies in replied.values()), replied
    # nothing reached the pipeline, and nothing is left in the queue or retried
    assert await commands_stored(nc, amqp_settings.namespace) == orders_before
    assert await queue_depth(rabbit, topology.queue) == 0
    assert await (await rabbit.get_queue(topology.dead_letter_queue)).get(fail=False) is None
    health = ingress_of(pipeline).health()
    assert (health["acked"], health["requeued"]) == (0, 0), health
    creates = sum(1 for _, body, _ in cases if isinstance(body, dict) and body["command"] == "create")
    assert amqp_orders("refused") - refused_before == creates

    # with a valid token of its member, the same order goes through
    token_of_1 = issuer_for(amqp_settings, ring).issue(1)
    ok = mid()
    await publisher.publish(good, ok, headers={"authorization": f"Bearer {token_of_1}"})
    assert (await publisher.reply(ok)).status == "accepted"


@pytest.fixture(scope="session")
def other_rabbitmq_user() -> Any:
    """A second RabbitMQ user (not in the ingress's allowed users), made with rabbitmqctl."""
    name, password = f"bourse_test_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    rabbitmqctl("add_user", name, password)
    try:
        rabbitmqctl("set_permissions", "-p", "/", name, ".*", ".*", ".*")
        yield name, password
    finally:
        rabbitmqctl("delete_user", name)


async def test_only_allowed_users_are_accepted_and_user_id_cannot_be_forged(
    pipeline: BourseProcess,
    rabbit: AbstractChannel,
    topology: AmqpTopology,
    other_rabbitmq_user: tuple[str, str],
) -> None:
    name, password = other_rabbitmq_user
    other = await Publisher.connect(f"amqp://{name}:{password}@127.0.0.1:5672/", topology, user=name)
    try:
        refused = mid()
        await other.publish(limit(1, "buy", "0.1", "100"), refused)
        (dead,) = await dead_letters(rabbit, topology, 1)
        assert (dead.message_id, dead.headers[ERROR_HEADER]) == (refused, "unknown_user")
        assert (await other.reply(refused)).code == "unknown_user"
        # claiming to be the allowed user: RabbitMQ itself refuses the publish
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
            await other.publish(limit(1, "buy", "0.1", "100"), mid(), user_id="guest")
    finally:
        await other.close()


async def test_a_message_delivered_twice_is_one_order(
    pipeline: BourseProcess, publisher: Publisher, nc: Client, amqp_settings: Settings
) -> None:
    message_id, with_client_id = mid(), mid()
    for _ in range(2):
        await publisher.publish(limit(1, "buy", "0.1", "100"), message_id)
        await publisher.publish(limit(1, "buy", "0.1", "100", client_order_id="alice-7"), with_client_id)
    replies = await publisher.wait_replies([message_id, with_client_id], per_message=2)
    for both in replies.values():
        # the duplicate's reply may come first: the accepted one waits for the engine's outcome
        accepted, duplicate = sorted(both, key=lambda reply: reply.status)
        assert accepted.status == "accepted", both
        assert (duplicate.status, duplicate.order_id) == ("duplicate", accepted.order_id), both
    record = await engine_record(nc, amqp_settings.namespace)
    assert record.accepted_by_client_id() == {message_id: 1, "alice-7": 1}
    assert RABBITMQ_URL  # the machine's broker, not a stand-in

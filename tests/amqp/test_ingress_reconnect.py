"""The ingress and RabbitMQ going away and coming back, through the fault proxy
(tests/faults/proxy.py) in front of the machine's RabbitMQ; the publisher connects directly.

- After RabbitMQ refused the ingress for 10 s, it consumes again within a few seconds of coming
  back (`amqp_reconnect_interval_s`, 1 s; aio-pika's default of 5 s made it 6-12 s).
- A message whose command became durable but whose ack was lost with the connection is
  redelivered; the publisher still gets the first delivery's reply (`accepted`), not only the
  redelivery's `duplicate`, and the order exists once.
- A black-holed RabbitMQ (nothing refused) is noticed by the AMQP heartbeat in seconds, and the
  ingress consumes again once it is back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from nats.aio.client import Client
from yarl import URL

from bourse.adapters.order_intake import Submission
from bourse.application.ports import Command
from bourse.config.settings import Settings
from bourse.runtime.process import BourseProcess
from bourse.services.amqp_ingress import AmqpIngress
from tests.amqp.conftest import PIPELINE, ingress_of
from tests.amqp.helpers import RABBITMQ_URL, Publisher, engine_record
from tests.faults.proxy import ThreadedProxy

REFUSED_S = 10.0
BACK_WITHIN_S = 4.0
"""The reconnect interval (1 s) plus the channel, queue and consumer restored, on a busy box."""


@pytest.fixture
def proxy() -> Iterator[ThreadedProxy]:
    upstream = URL(RABBITMQ_URL)
    with ThreadedProxy(upstream.host or "127.0.0.1", upstream.port or 5672) as running:
        yield running


@pytest.fixture
def proxied(amqp_settings: Settings, proxy: ThreadedProxy) -> Settings:
    url = str(URL(RABBITMQ_URL).with_host("127.0.0.1").with_port(proxy.port))
    return amqp_settings.model_copy(update={"rabbitmq_url": url})


def order() -> dict[str, Any]:
    """A resting buy of member 1, far from any ask."""
    return {
        "command": "create",
        "member_id": 1,
        "market": "btc_usd",
        "side": "buy",
        "type": "limit",
        "amount": "0.01",  # 1 usd: the market's minimum order value
        "price": "100",
    }


def mid() -> str:
    return f"m-{uuid.uuid4().hex[:16]}"


async def test_the_ingress_consumes_again_within_seconds_after_rabbitmq_returns(
    proxied: Settings, proxy: ThreadedProxy, publisher: Publisher, nc: Client
) -> None:
    process = BourseProcess(proxied, [*PIPELINE, AmqpIngress], embedded_nats=False)
    try:
        await process.start()
        before = mid()
        await publisher.publish(order(), before)
        assert (await publisher.reply(before)).status == "accepted"

        proxy.set_state("refuse")
        await asyncio.sleep(REFUSED_S)
        ingress = ingress_of(process)
        assert not ingress.health()["ok"], ingress.health()
        during = mid()
        await publisher.publish(order(), during)  # waits in RabbitMQ's queue
        proxy.set_state("up")
        back = time.monotonic()
        reply = await publisher.reply(during, timeout_s=30)
        took = time.monotonic() - back
        assert reply.status == "accepted", reply
        assert took < BACK_WITHIN_S, f"consuming again {took:.1f} s after RabbitMQ returned"
    finally:
        await process.stop()
    accepted = (await engine_record(nc, proxied.namespace)).accepted_by_client_id()
    assert (accepted[before], accepted[during]) == (1, 1)


HEARTBEAT_S = 2
NOTICED_WITHIN_S = 20.0
"""aiormq calls a connection dead after about four missed heartbeats (9 s at 2 s, measured)."""


async def test_a_black_holed_rabbitmq_is_noticed_by_heartbeats_and_consumed_again_once_back(
    proxied: Settings, proxy: ThreadedProxy, publisher: Publisher, nc: Client
) -> None:
    """Packets dropped, nothing refused: only the heartbeat can tell (at the server's 60 s, the
    ingress stayed "ok" and idle for minutes)."""
    settings = proxied.model_copy(update={"amqp_heartbeat_s": HEARTBEAT_S})
    process = BourseProcess(settings, [*PIPELINE, AmqpIngress], embedded_nats=False)
    try:
        await process.start()
        before = mid()
        await publisher.publish(order(), before)
        assert (await publisher.reply(before)).status == "accepted"
        ingress = ingress_of(process)

        proxy.set_state("blackhole")
        cut = time.monotonic()
        while ingress.health()["ok"]:
            assert time.monotonic() - cut < NOTICED_WITHIN_S, "a black-holed RabbitMQ went unnoticed"
            await asyncio.sleep(0.2)
        during = mid()
        await publisher.publish(order(), during)  # waits in RabbitMQ's queue
        proxy.set_state("up")
        reply = await publisher.reply(during, timeout_s=30)
        assert reply.status == "accepted", reply
    finally:
        await process.stop()
    accepted = (await engine_record(nc, settings.namespace)).accepted_by_client_id()
    assert (accepted[before], accepted[during]) == (1, 1)


async def test_a_durable_command_whose_ack_was_lost_still_gets_its_first_reply(
    proxied: Settings, proxy: ThreadedProxy, publisher: Publisher, nc: Client
) -> None:
    process = BourseProcess(proxied, [*PIPELINE, AmqpIngress], embedded_nats=False)
    try:
        await process.start()
        ingress = ingress_of(process)
        real_submit = ingress.intake.submit
        cut = asyncio.Event()

        async def submit_then_lose_the_connection(command: Command) -> Submission:
            submission = await real_submit(command)  # durable in ORDERS
            if not cut.is_set():
                cut.set()
                proxy.set_state("refuse")  # the ack will not reach RabbitMQ
                await asyncio.sleep(0.3)  # the reset is seen before the ack is tried
            return submission

        ingress.intake.submit = submit_then_lose_the_connection  # type: ignore[method-assign]
        message_id = mid()
        await publisher.publish(order(), message_id)
        await asyncio.wait_for(cut.wait(), 10)
        await asyncio.sleep(1.0)
        proxy.set_state("up")
        replies = (await publisher.wait_replies([message_id], timeout_s=30, per_message=2))[message_id]
        by_status = {reply.status: reply for reply in replies}
        assert set(by_status) == {"accepted", "duplicate"}, replies
        assert by_status["accepted"].order_id == by_status["duplicate"].order_id
        assert ingress.requeued == 0
    finally:
        await process.stop()
    accepted = (await engine_record(nc, proxied.namespace)).accepted_by_client_id()
    assert accepted[message_id] == 1

"""RabbitMQ through aio-pika: the ingress's exchanges and queues, dead-lettering with a reason,
and replies. No business rules: what to accept is the service's job (`services.amqp_ingress`).

Topology (names from the settings, defaults under the namespace):

    publishers ──> <ns>.orders (direct) ──[order]──> <ns>.orders.in (quorum queue)
                                                          │ refused by the ingress (with x-bourse-error),
                                                          │ or delivered x-delivery-limit times unacked
                                                          v
                                          <ns>.orders.dlx (fanout) ──> <ns>.orders.dead (quorum queue)

A quorum queue is replicated and fsyncs before confirming, and counts deliveries, so a message
that keeps killing its consumer is dead-lettered after `x-delivery-limit` tries instead of
looping forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

ERROR_HEADER = "x-bourse-error"
"""Dead-lettered by the ingress: the stable code of the refusal (`unknown_market`, ...)."""
ERROR_MESSAGE_HEADER = "x-bourse-error-message"
"""Dead-lettered by the ingress: what was wrong, for a person."""
CONNECT_TIMEOUT_S = 5.0
"""Deadline of one connection attempt (a black-holed broker must not hold a reconnect forever)."""
HEARTBEAT_S = 5
RECONNECT_INTERVAL_S = 1.0
"""Default pause between reconnection attempts (`Settings.amqp_reconnect_interval_s`)."""
USER_HEADER = "x-bourse-user-id"
"""Dead-lettered by the ingress: the original `user_id` property (the copy cannot keep the
property: RabbitMQ only lets a connection publish its own user name there)."""


@dataclass(frozen=True, slots=True)
class AmqpTopology:
    exchange: str
    routing_key: str
    queue: str
    dead_letter_exchange: str
    dead_letter_queue: str
    delivery_limit: int


def url_user(url: str) -> str:
    """The user name of an AMQP URL (RabbitMQ's default, `guest`, when it names none)."""
    return unquote(urlsplit(url).username or "guest")


async def connect(
    url: str, reconnect_interval_s: float = RECONNECT_INTERVAL_S, heartbeat_s: int = HEARTBEAT_S
) -> AbstractRobustConnection:
    """A connection that reconnects by itself and restores its channels, queues and consumers.
    It tries again every `reconnect_interval_s` (aio-pika's default, 5 s, left the ingress idle
    up to 5 s after RabbitMQ was back), each attempt bounded by `CONNECT_TIMEOUT_S`; it asks for
    a `heartbeat_s` heartbeat, so a server that stopped answering is noticed in seconds."""
    return await aio_pika.connect_robust(
        url, timeout=CONNECT_TIMEOUT_S, reconnect_interval=reconnect_interval_s, heartbeat=heartbeat_s
    )


async def declare(channel: AbstractChannel, topology: AmqpTopology) -> AbstractQueue:
    """Declare (idempotently) everything of the topology; returns the order queue."""
    dead_exchange = await channel.declare_exchange(
        topology.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead_queue = await channel.declare_queue(
        topology.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead_queue.bind(dead_exchange)
    exchange = await channel.declare_exchange(topology.exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    queue = await channel.declare_queue(
        topology.queue,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": topology.delivery_limit,
            "x-dead-letter-exchange": topology.dead_letter_exchange,
        },
    )
    await queue.bind(exchange, topology.routing_key)
    return queue


async def delete(channel: AbstractChannel, topology: AmqpTopology) -> None:
    """Remove the topology (tests and benchmarks clean up after themselves)."""
    for queue in (topology.queue, topology.dead_letter_queue):
        await channel.queue_delete(queue)
    for exchange in (topology.exchange, topology.dead_letter_exchange):
        await channel.exchange_delete(exchange)


def header_text(headers: Mapping[str, Any], name: str) -> str | None:
    """A header as text (AMQP long strings arrive as bytes)."""
    value = headers.get(name)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None


async def dead_letter(
    exchange: AbstractExchange, message: AbstractIncomingMessage, code: str, text: str
) -> None:
    """Publish a copy of `message` to the dead-letter exchange with the reason in its headers;
    returns once RabbitMQ confirmed it (the channel has publisher confirms), so the original
    may then be acked."""
    headers: dict[str, Any] = dict(message.headers or {})
    headers[ERROR_HEADER] = code
    headers[ERROR_MESSAGE_HEADER] = text[:1000]
    if message.user_id is not None:
        headers[USER_HEADER] = message.user_id
    copy = aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        correlation_id=message.correlation_id,
        message_id=message.message_id,
        reply_to=message.reply_to,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )
    await exchange.publish(copy, routing_key=message.routing_key or "")


async def reply(channel: AbstractChannel, reply_to: str, correlation_id: str | None, body: bytes) -> None:
    """Best effort: to the default exchange, so `reply_to` is a queue name (or the direct
    reply-to pseudo queue); unroutable replies are dropped by RabbitMQ."""
    await channel.default_exchange.publish(
        aio_pika.Message(body, content_type="application/json", correlation_id=correlation_id),
        routing_key=reply_to,
        mandatory=False,
    )

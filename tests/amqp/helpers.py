"""Driving the RabbitMQ ingress as a publisher would, and reading what came out of it.

`Publisher` publishes order messages with publisher confirms and collects the replies sent to its
own exclusive queue; `dead_letters` takes what the ingress refused; `engine_record` reads the
EVENTS and ACCOUNTS streams, the evidence of what the pipeline did."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import msgspec
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from pamqp import frame as pamqp_frame
from pamqp.body import ContentBody
from pamqp.commands import Basic, Channel, Confirm, Connection
from pamqp.exceptions import UnmarshalingException
from pamqp.header import ContentHeader, ProtocolHeader
from yarl import URL

from bourse.adapters.amqp import AmqpTopology, declare
from bourse.contracts.messages import (
    ACCOUNTS_REPORTS_DECODER,
    AMQP_REPLY_DECODER,
    EVENT_BATCH_DECODER,
    AmqpReply,
)
from bourse.contracts.subjects import ACCOUNTS, EVENTS, ORDERS
from bourse.domain.orders import OrderAccepted, OrderRejected, Trade

RABBITMQ_URL = os.environ.get("BOURSE_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


@dataclass
class Publisher:
    """One RabbitMQ user's connection: a confirming channel and a reply queue."""

    connection: AbstractRobustConnection
    channel: AbstractChannel
    topology: AmqpTopology
    user: str
    reply_queue: AbstractQueue
    replies: dict[str, list[AmqpReply]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def connect(cls, url: str, topology: AmqpTopology, user: str = "guest") -> Publisher:
        connection = await aio_pika.connect_robust(url)
        channel = await connection.channel(publisher_confirms=True)
        await declare(channel, topology)
        reply_queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        publisher = cls(connection, channel, topology, user, reply_queue)
        await reply_queue.consume(publisher._on_reply, no_ack=True)
        return publisher

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        reply = AMQP_REPLY_DECODER.decode(message.body)
        self.replies.setdefault(message.correlation_id or "", []).append(reply)
        self.arrived.set()

    async def publish(
        self,
        body: dict[str, Any] | bytes,
        message_id: str | None,
        *,
        user_id: str | None = "",
        headers: dict[str, Any] | None = None,
        reply: bool = True,
    ) -> None:
        """Publish and wait for RabbitMQ's confirm. `user_id=""` is this publisher's own user."""
        data = body if isinstance(body, bytes) else msgspec.json.encode(body)
        message = aio_pika.Message(
            data,
            message_id=message_id,
            user_id=self.user if user_id == "" else user_id,
            headers=headers,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            reply_to=self.reply_queue.name if reply else None,
            correlation_id=message_id,
        )
        exchange = await self.channel.get_exchange(self.topology.exchange)
        await exchange.publish(message, routing_key=self.topology.routing_key)

    async def reply(self, message_id: str, timeout_s: float = 10.0) -> AmqpReply:
        """The first reply to a message."""
        return (await self.wait_replies([message_id], timeout_s))[message_id][0]

    async def wait_replies(
        self, message_ids: list[str], timeout_s: float = 10.0, per_message: int = 1
    ) -> dict[str, list[AmqpReply]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while any(len(self.replies.get(mid, [])) < per_message for mid in message_ids):
            self.arrived.clear()
            missing = [mid for mid in message_ids if len(self.replies.get(mid, [])) < per_message]
            assert loop.time() < deadline, f"no reply to {missing[:5]} ({len(missing)} missing)"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), max(deadline - loop.time(), 0.01))
        return {mid: self.replies[mid] for mid in message_ids}

    async def close(self) -> None:
        await self.connection.close()


async def dead_letters(
    channel: AbstractChannel, topology: AmqpTopology, count: int, timeout_s: float = 10.0
) -> list[AbstractIncomingMessage]:
    """Take `count` messages from the dead-letter queue (acked), failing if they do not come."""
    queue = await channel.get_queue(topology.dead_letter_queue)
    found: list[AbstractIncomingMessage] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(found) < count:
        message = await queue.get(fail=False)
        if message is None:
            codes = [(m.message_id, (m.headers or {}).get("x-bourse-error")) for m in found]
            assert loop.time() < deadline, f"{len(found)} dead letters, expected {count}: {codes}"
            await asyncio.sleep(0.05)
            continue
        await message.ack()
        found.append(message)
    return found


async def queue_depth(channel: AbstractChannel, name: str) -> int:
    queue = await channel.declare_queue(name, passive=True)
    count = queue.declaration_result.message_count
    return int(count or 0)


@dataclass
class EngineRecord:
    """What the streams say happened."""

    accepted: list[OrderAccepted] = field(default_factory=list)
    rejected: list[OrderRejected] = field(default_factory=list)
    refused: list[OrderRejected] = field(default_factory=list)
    """Refused by the accounts stage (ACCOUNTS), before matching."""
    trades: list[Trade] = field(default_factory=list)

    def accepted_by_client_id(self) -> Counter[str | None]:
        return Counter(event.client_order_id for event in self.accepted)


async def commands_stored(nc: Client, namespace: str) -> int:
    """Messages in the ORDERS stream: a refused message must leave it as it was."""
    return (await nc.jetstream().stream_info(ORDERS.name(namespace))).state.messages


async def stream_messages(nc: Client, stream: str) -> list[bytes]:
    js = nc.jetstream()
    try:
        last = (await js.stream_info(stream)).state.last_seq
    except NotFoundError:
        return []
    found = []
    for seq in range(1, last + 1):
        with contextlib.suppress(NotFoundError):
            found.append((await js.get_msg(stream, seq)).data or b"")
    return found


async def engine_record(nc: Client, namespace: str) -> EngineRecord:
    record = EngineRecord()
    for data in await stream_messages(nc, EVENTS.name(namespace)):
        for event in EVENT_BATCH_DECODER.decode(data).events:
            if isinstance(event, OrderAccepted):
                record.accepted.append(event)
            elif isinstance(event, OrderRejected):
                record.rejected.append(event)
            elif isinstance(event, Trade):
                record.trades.append(event)
    for data in await stream_messages(nc, ACCOUNTS.name(namespace)):
        for report in ACCOUNTS_REPORTS_DECODER.decode(data).reports:
            record.refused.extend(report.rejected)
    return record


async def wait_accepted(
    nc: Client, namespace: str, client_ids: set[str], timeout_s: float = 20.0
) -> EngineRecord:
    """Until every client order id is accepted by the engine (or the time is up)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        record = await engine_record(nc, namespace)
        missing = client_ids - set(record.accepted_by_client_id())
        if not missing or loop.time() > deadline:
            return record
        await asyncio.sleep(0.2)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


async def publish_raw(
    url: str, exchange: str, routing_key: str, body: bytes, properties: Basic.Properties
) -> None:
    """Publish one message with exactly these properties and wait for RabbitMQ's confirm.

    A minimal AMQP 0-9-1 client over pamqp's frames, for what aio-pika cannot send: aiormq
    fills in a random `message_id` whenever a message has none (or an empty one)."""
    target = URL(url)
    reader, writer = await asyncio.open_connection(target.host or "127.0.0.1", target.port or 5672)
    buffer = b""

    async def receive(*expected: type[Any]) -> Any:
        nonlocal buffer
        while True:
            try:
                used, _channel, frame = pamqp_frame.unmarshal(buffer)
            except UnmarshalingException:
                chunk = await asyncio.wait_for(reader.read(65536), 10.0)
                assert chunk, "RabbitMQ closed the connection"
                buffer += chunk
                continue
            buffer = buffer[used:]
            if isinstance(frame, expected):
                return frame
            assert not isinstance(frame, (Connection.Close, Channel.Close)), frame

    def send(channel: int, *frames: Any) -> None:
        for frame in frames:
            writer.write(pamqp_frame.marshal(frame, channel))

    try:
        writer.write(ProtocolHeader().marshal())
        await receive(Connection.Start)
        credentials = f"\0{target.user or 'guest'}\0{target.password or 'guest'}"
        send(0, Connection.StartOk(response=credentials))
        tune = await receive(Connection.Tune)
        send(0, Connection.TuneOk(tune.channel_max, tune.frame_max, 0))
        send(0, Connection.Open(virtual_host=target.path[1:] or "/"))
        await receive(Connection.OpenOk)
        send(1, Channel.Open())
        await receive(Channel.OpenOk)
        send(1, Confirm.Select())
        await receive(Confirm.SelectOk)
        send(
            1,
            Basic.Publish(exchange=exchange, routing_key=routing_key),
            ContentHeader(0, len(body), properties),
            ContentBody(body),
        )
        await receive(Basic.Ack)
        send(0, Connection.Close(reply_code=200, reply_text="Normal shutdown", class_id=0, method_id=0))
        await receive(Connection.CloseOk)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

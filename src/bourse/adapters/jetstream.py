"""Small JetStream helpers: where a message sits in its stream, and the snapshot store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ObjectNotFoundError

from bourse.topology import SNAPSHOTS

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamPosition:
    seq: int
    timestamp_ns: int
    """When the stream stored the message: the same on every delivery, so stages that need a
    time (the engine's received_at) stay deterministic on replay."""


def stream_position(msg: Msg) -> StreamPosition:
    """Read sequence and nanosecond timestamp from the ack subject (nats-py's metadata rounds the
    timestamp to a float)."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return StreamPosition(int(tokens[5]), int(tokens[7]))
    if len(tokens) >= 11:  # $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>...
        return StreamPosition(int(tokens[7]), int(tokens[9]))
    raise ValueError(f"not a JetStream message: reply subject {msg.reply!r}")


class Snapshot(msgspec.Struct, frozen=True):
    seq: int
    """The last input sequence the state covers; replay starts after it."""
    state: bytes


class SnapshotStore:
    """Newest snapshot per stage shard in the SNAPSHOTS object store."""

    def __init__(self, js: JetStreamContext, namespace: str) -> None:
        self.js = js
        self.bucket = SNAPSHOTS.name(namespace)

    async def save(self, name: str, seq: int, state: bytes) -> None:
        store = await self.js.object_store(self.bucket)
        await store.put(name, msgspec.msgpack.encode(Snapshot(seq, state)))

    async def load(self, name: str) -> Snapshot | None:
        store = await self.js.object_store(self.bucket)
        try:
            result = await store.get(name)
        except (ObjectNotFoundError, NotFoundError):
            return None
        if result.data is None:
            return None
        return msgspec.msgpack.decode(result.data, type=Snapshot)


@dataclass(frozen=True, slots=True)
class Outgoing:
    subject: str
    payload: bytes
    msg_id: str
    """Deterministic Nats-Msg-Id: a retry or a replay is dropped by JetStream as a duplicate."""


async def publish_durably(
    js: JetStreamContext, messages: Sequence[Outgoing], *, ack_timeout: float = 5.0
) -> None:
    """Publish every message with many in flight, and return once JetStream acked them all.

    On any failure (NATS down, timeout) everything is published again after a pause, until it
    succeeds: a stage that has already applied its input must not lose the outputs, and the
    message ids make the repeats harmless."""
    pause = 0.05
    while True:
        try:
            futures = [
                await js.publish_async(
                    message.subject, message.payload, headers={"Nats-Msg-Id": message.msg_id}
                )
                for message in messages
            ]
            await asyncio.wait_for(asyncio.gather(*futures), ack_timeout)
            return
        except (NatsError, TimeoutError, OSError) as exc:
            log.warning("publish failed, retrying", extra={"error": repr(exc), "messages": len(messages)})
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

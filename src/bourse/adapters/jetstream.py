"""The JetStream adapter: creating the topology, where a message sits in its stream, durable
publishing, and the snapshot store.

`ensure_topology` is idempotent: every service calls it at start, and whichever starts first
creates what is missing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError, ObjectNotFoundError

from bourse.adapters.retry import retrying
from bourse.adapters.tracing import ORDER_TRACES_HEADER
from bourse.contracts.subjects import (
    BUCKETS,
    DUPLICATE_WINDOW_S,
    OBJECT_STORES,
    SNAPSHOTS,
    STREAMS,
    StreamSpec,
)

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


def stream_pending(msg: Msg) -> int:
    """Messages the stream still holds for the consumer after this one (the ack subject's
    `num_pending`): a consumer's lag, known from each delivery without asking the server."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:
        return int(tokens[8])
    if len(tokens) >= 11:
        return int(tokens[10])
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


class SnapshotSchedule:
    """Saves each stage shard's snapshot at most every `every_s`, uploading beside the stage.

    The state is encoded by the caller at a consistent point (between batches); the upload
    (object-store chunks and metadata, each an fsynced publish) runs as a task, so the orders
    behind it do not wait: inline, it stopped each stage every few seconds for the length of an
    upload. One upload per shard at a time, so an older snapshot never lands after a newer one;
    a failed upload is logged and the next interval tries again."""

    def __init__(self, store: SnapshotStore, every_s: float) -> None:
        self.store = store
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._uploads: dict[str, asyncio.Task[None]] = {}
        self._saved_at: dict[str, float] = {}
        """Per shard, when its last snapshot was saved (monotonic), or its clock started."""
        self.saved = 0
        self.failed = 0

    def restart_clock(self, name: str) -> None:
        self._last[name] = time.monotonic()
        self._saved_at.setdefault(name, self._last[name])

    def ages(self) -> dict[str, float]:
        """Seconds since each shard's last snapshot was saved here, or, before this process saved
        one, since its clock started (the service's start; a clean stop saves one just before)."""
        now = time.monotonic()
        return {name: now - saved_at for name, saved_at in self._saved_at.items()}

    def due(self, name: str) -> bool:
        upload = self._uploads.get(name)
        busy = upload is not None and not upload.done()
        return not busy and time.monotonic() - self._last.get(name, 0.0) >= self.every_s

    def save_in_background(self, name: str, seq: int, state: bytes) -> None:
        self._last[name] = time.monotonic()
        self._uploads[name] = asyncio.create_task(self._upload(name, seq, state), name=f"snapshot:{name}")

    async def _upload(self, name: str, seq: int, state: bytes) -> None:
        try:
            await self.store.save(name, seq, state)
            self._saved_at[name] = time.monotonic()
            self.saved += 1
        except Exception as exc:
            self.failed += 1
            log.warning("snapshot upload failed", extra={"snapshot": name, "error": repr(exc)})

    async def drain(self) -> None:
        """Wait for the uploads still running (each logs its own failure)."""
        await asyncio.gather(*self._uploads.values())
        self._uploads.clear()

    def health(self) -> dict[str, int]:
        return {"saved": self.saved, "failed": self.failed}

    async def save_now(self, name: str, seq: int, state: bytes) -> None:
        """After any upload of this shard still running (stop: the last state must land last)."""
        upload = self._uploads.pop(name, None)
        if upload is not None:
            await upload
        await self.store.save(name, seq, state)
        self._last[name] = self._saved_at[name] = time.monotonic()
        self.saved += 1


@dataclass(frozen=True, slots=True)
class Outgoing:
    subject: str
    payload: bytes
    msg_id: str
    """Deterministic Nats-Msg-Id: a retry or a replay is dropped by JetStream as a duplicate."""
    order_traces: str = ""
    """The `bourse-trace` header (`bourse.adapters.tracing`): the sampled orders' contexts."""

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Nats-Msg-Id": self.msg_id}
        if self.order_traces:
            headers[ORDER_TRACES_HEADER] = self.order_traces
        return headers


PUBLISH_BACKOFF_FIRST_S = 0.05
PUBLISH_BACKOFF_MAX_S = 2.0
"""Pauses between whole re-publishes of `publish_durably` (doubling, jittered, capped)."""


async def publish_durably(
    js: JetStreamContext, messages: Sequence[Outgoing], *, ack_timeout: float = 5.0
) -> None:
    """Publish every message with many in flight, and return once JetStream acked them all.

    On any failure (NATS down, timeout) everything is published again after a pause, until it
    succeeds: a stage that has already applied its input must not lose the outputs, and the
    message ids make the repeats harmless."""

    def publish_failed(exc: BaseException, pause_s: float) -> None:
        log.warning(
            "publish failed, retrying",
            extra={"error": repr(exc), "messages": len(messages), "pause_s": round(pause_s, 3)},
        )

    async for attempt in retrying(
        first_s=PUBLISH_BACKOFF_FIRST_S,
        max_s=PUBLISH_BACKOFF_MAX_S,
        on_failure=publish_failed,
        retry_on=lambda exc: isinstance(exc, NatsError | TimeoutError | OSError),
    ):
        with attempt:
            futures = [
                await js.publish_async(message.subject, message.payload, headers=message.headers)
                for message in messages
            ]
            await asyncio.wait_for(asyncio.gather(*futures), ack_timeout)


def stream_config(spec: StreamSpec, namespace: str, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=spec.name(namespace),
        description=spec.description,
        subjects=[spec.wildcard(namespace)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=spec.max_age_s,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=replicas,
    )


async def ensure_topology(js: JetStreamContext, namespace: str, replicas: int = 1) -> None:
    """Create or update every stream and bucket; safe to call from many processes at once."""
    for spec in STREAMS:
        config = stream_config(spec, namespace, replicas)
        try:
            await js.stream_info(config.name or "")
        except NotFoundError:
            try:
                await js.add_stream(config)
                continue
            except BadRequestError:  # created by a concurrent caller: fall through to update
                pass
        await js.update_stream(config)
    for store in OBJECT_STORES:
        try:
            await js.object_store(store.name(namespace))
        except (NotFoundError, BadRequestError):
            await js.create_object_store(
                store.name(namespace),
                ObjectStoreConfig(
                    description=store.description,
                    storage=StorageType.FILE,
                    replicas=replicas,
                ),
            )
    for bucket in BUCKETS:
        try:
            await js.key_value(bucket.name(namespace))
        except (NotFoundError, BadRequestError):
            await js.create_key_value(
                KeyValueConfig(
                    bucket=bucket.name(namespace),
                    description=bucket.description,
                    history=bucket.history,
                    ttl=bucket.ttl_s or None,
                    storage=StorageType.FILE,
                    replicas=replicas,
                )
            )


async def remove_topology(js: JetStreamContext, namespace: str) -> None:
    """Delete every stream and bucket of a namespace (test runs, benchmarks); what is already
    gone is skipped."""
    for spec in STREAMS:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(spec.name(namespace))
    for bucket in BUCKETS:
        with contextlib.suppress(NotFoundError):
            await js.delete_key_value(bucket.name(namespace))
    for store in OBJECT_STORES:
        with contextlib.suppress(NotFoundError):
            await js.delete_object_store(store.name(namespace))

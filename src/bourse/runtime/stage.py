"""The stateful-stage shell: a single writer per shard, its state a pure function of its input
stream, restored from a snapshot and replayed from the stream after it.

A stage is three pieces; the shell is the part that is the same for every stage:

- a pure state machine per shard (`bourse.application`: `AccountsShard`, `MarketShard`), which
  the shell only asks for `last_seq` and `snapshot()`;
- a decoder for its input messages, and a `StepOutputs` function (the service's) that feeds a
  fetched batch of positioned inputs to the machine and says what to answer and what to publish;
- this shell: per shard a durable consumer that resumes after the snapshot's sequence, decode or
  skip, replies first, then the outputs published durably with deterministic ids, then a
  snapshot once due, and only of a state whose outputs are all published.

Replies go before the outputs are stored: the input is durable and the stage deterministic, so a
crash in between replays to the very same answers and outputs (JetStream drops the repeated ids).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import msgspec
from nats.aio.msg import Msg

from bourse.adapters import tracing
from bourse.adapters.jetstream import (
    Outgoing,
    SnapshotSchedule,
    SnapshotStore,
    publish_durably,
    stream_position,
)
from bourse.contracts.subjects import StreamSpec
from bourse.runtime.service import Service, StreamConsumer


class StageMachine(Protocol):
    """What the shell needs of a stage's pure state machine."""

    @property
    def last_seq(self) -> int:
        """The last input sequence the state covers: replay starts after it."""
        ...

    def snapshot(self) -> bytes: ...


In = TypeVar("In", bound=tracing.CarriesOrders)
K = TypeVar("K", bound=Hashable)
M = TypeVar("M", bound=StageMachine)


@dataclass(frozen=True, slots=True)
class Positioned(Generic[In]):
    """One decoded input message and where its stream stored it (the same on every delivery)."""

    seq: int
    timestamp_ns: int
    value: In


@dataclass(slots=True)
class StageOutputs:
    """What one fetched batch turns into: answers to the askers, and messages to store."""

    replies: list[tuple[str, bytes]] = field(default_factory=list)
    outgoing: list[Outgoing] = field(default_factory=list)


StepOutputs = Callable[[K, M, Sequence[Positioned[In]]], StageOutputs]
"""`(key, machine, inputs) -> outputs`: feed the inputs to the machine, encode what it produced."""


class StatefulStage(Generic[K, M, In]):
    """Runs one state machine per key (member shard, market) of `service`."""

    def __init__(
        self,
        service: Service,
        *,
        stream: StreamSpec,
        keys: Sequence[K],
        key_label: str,
        durable: Callable[[K], str],
        decoder: msgspec.msgpack.Decoder[In],
        undecodable: In,
        load: Callable[[K, bytes | None], M],
        step: StepOutputs[K, M, In],
        snapshot_every_s: float = 5.0,
        linger_s: float = 0.0,
    ) -> None:
        """`load(key, state)` restores a machine from a snapshot's state, or makes an empty one for
        None; `undecodable` stands in for an input that cannot be decoded (only our own services
        write these streams: a bad message is a bug, logged, not a reason to stop)."""
        self.service = service
        self.stream = stream
        self.keys = list(keys)
        self.key_label = key_label
        self.durable = durable
        self.decoder = decoder
        self.undecodable = undecodable
        self.load = load
        self.step = step
        self.linger_s = linger_s
        self.machines: dict[K, M] = {}
        ctx = service.ctx
        self.snapshots = SnapshotStore(ctx.js, ctx.namespace)
        self.schedule = SnapshotSchedule(self.snapshots, snapshot_every_s)
        self._unpublished: set[K] = set()
        self.processed = 0
        self.undecoded = 0
        self.cpu_s = 0.0

    def snapshot_name(self, key: K) -> str:
        return f"{self.service.name}.{key}"

    async def start(self) -> None:
        for key in self.keys:
            snapshot = await self.snapshots.load(self.snapshot_name(key))
            machine = self.load(key, None if snapshot is None else snapshot.state)
            if snapshot is not None:
                self.service.log.info(
                    "snapshot restored", extra={self.key_label: key, "seq": machine.last_seq}
                )
            self.machines[key] = machine
            self.schedule.restart_clock(self.snapshot_name(key))

    def consumers(self) -> Sequence[StreamConsumer]:
        ns = self.service.ctx.namespace
        return [
            StreamConsumer(
                self.stream,
                self.durable(key),
                self.stream.subject(ns, str(key)),
                self._handler(key),
                resume_after=self._resume_after(key),
                linger_s=self.linger_s,
            )
            for key in self.keys
        ]

    def _resume_after(self, key: K) -> Callable[[], int]:
        return lambda: self.machines[key].last_seq

    def _handler(self, key: K) -> Callable[[Sequence[Msg]], Any]:
        async def handle(messages: Sequence[Msg]) -> None:
            await self.handle(key, messages)

        return handle

    async def handle(self, key: K, messages: Sequence[Msg]) -> None:
        machine = self.machines[key]
        self._unpublished.add(key)
        started = time.process_time()
        inputs = [self._decode(key, msg) for msg in messages]
        tracer = tracing.tracer(self.service.name)
        if tracer is not None:
            orders = tracing.traced_orders(
                [msg.headers for msg in messages], lambda index: inputs[index].value.order_ids()
            )
            if orders:
                with tracing.stage_spans(
                    tracer, self.service.name, orders, {f"bourse.{self.key_label}": str(key)}
                ) as contexts:
                    traces = tracing.order_traces_header(contexts)
                    await self._step_and_publish(key, machine, inputs, started, traces)
                return
        await self._step_and_publish(key, machine, inputs, started)

    async def _step_and_publish(
        self,
        key: K,
        machine: M,
        inputs: Sequence[Positioned[In]],
        started: float,
        order_traces: str = "",
    ) -> None:
        """Step the machine, answer, publish the outputs (each with `order_traces` when the
        batch carries sampled orders), then a snapshot once due."""
        outputs = self.step(key, machine, inputs)
        self.cpu_s += time.process_time() - started
        self.processed += len(inputs)
        if order_traces:
            outputs.outgoing = [
                dataclasses.replace(message, order_traces=order_traces) for message in outputs.outgoing
            ]
        nc = self.service.ctx.nc
        for subject, data in outputs.replies:
            await nc.publish(subject, data)
        await publish_durably(self.service.ctx.js, outputs.outgoing)
        self._unpublished.discard(key)
        name = self.snapshot_name(key)
        if self.schedule.due(name):
            self.schedule.save_in_background(name, machine.last_seq, machine.snapshot())

    def _decode(self, key: K, msg: Msg) -> Positioned[In]:
        position = stream_position(msg)
        try:
            value = self.decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            self.undecoded += 1
            self.service.log.error(
                "undecodable input skipped",
                extra={self.key_label: key, "seq": position.seq, "error": str(exc)},
            )
            value = self.undecodable
        return Positioned(position.seq, position.timestamp_ns, value)

    async def save_snapshot(self, key: K) -> None:
        """Only a state whose outputs are all published may be saved: replay starts after it."""
        if key in self._unpublished:
            return
        machine = self.machines[key]
        await self.schedule.save_now(self.snapshot_name(key), machine.last_seq, machine.snapshot())

    async def stop(self) -> None:
        for key in self.machines:
            await self.save_snapshot(key)
        await self.schedule.drain()

    def positions(self) -> Mapping[str, int]:
        return {str(key): machine.last_seq for key, machine in self.machines.items()}

    def health(self) -> dict[str, Any]:
        return {
            "messages": self.processed,
            "undecodable": self.undecoded,
            "snapshots": self.schedule.health(),
            "cpu_s": round(self.cpu_s, 3),
        }

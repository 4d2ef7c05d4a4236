"""The projection shell: consume a stage's output stream, apply it idempotently by position,
retry until it is written, and say how far it is.

A projection is a writer (`ProjectionWriter`: the SQL tables, the Redis read models, the query
service's memory) plus this shell, the part that is the same for all of them:

- per feed (`EVENTS_FEED`, `ACCOUNTS_FEED`) a durable pull consumer that resumes after the
  writer's stored watermark, so the store, not the consumer's acks, says what is done;
- decode or skip: a message that cannot be decoded is logged and counted, never a reason to
  stop (only our own services write these streams);
- the writer gets the batch's envelopes (`bourse.application.projection.Envelope`) and the
  stream watermark they reach; it applies what is fresh (`application.projection.fresh`) and
  stores the positions with the data, in one transaction;
- a failed write is retried with backoff until it succeeds (the batch is acked only after);
- counters per feed, and `caught_up` once each feed reaches the stream's last sequence noted
  at start (`note_targets`), for readiness.

A projection kept in memory (the query service) does not store positions: each instance must
read everything from the first message at every start. It `follow()`s instead of declaring
`consumers()`: per feed an ordered push consumer (ephemeral, recreated by nats-py after a gap or
a reconnect) from the first message, each message handed to the writer as it comes; a message
the writer cannot apply is counted, logged and skipped, since applying it again would fail again
and hold every later one back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from opentelemetry.trace import SpanContext

from bourse.adapters import tracing
from bourse.adapters.jetstream import stream_position
from bourse.adapters.retry import retrying
from bourse.application.projection import Envelope, Unpack, unpack_events, unpack_reports
from bourse.contracts.subjects import ACCOUNTS, EVENTS, StreamSpec
from bourse.runtime.service import Service, StreamConsumer


@dataclass(frozen=True, slots=True)
class FeedSpec:
    """A stream a projection follows, and how its messages open into envelopes."""

    stream: StreamSpec
    unpack: Unpack[Any]


EVENTS_FEED = FeedSpec(EVENTS, unpack_events)
ACCOUNTS_FEED = FeedSpec(ACCOUNTS, unpack_reports)


@dataclass(slots=True)
class Applied:
    """What one write did, for the counters."""

    items: int = 0
    rows: int = 0
    duplicates: int = 0


@dataclass(slots=True)
class Feed:
    """One consumer of a projection: its stream, its durable name and its counters."""

    spec: FeedSpec
    durable: str
    stream: str
    """The stream's name in this namespace."""
    positions: dict[str, Any] = field(default_factory=dict)
    """Per producer key, the position applied, as the writer stores it (kept by the writer)."""
    watermark: int = 0
    """Every stream message up to this sequence is applied (kept by the writer, with the
    positions): the durable consumer resumes after it."""
    target: int = 0
    """The stream's last sequence when the service started: reached, the feed is caught up."""
    messages: int = 0
    items: int = 0
    rows: int = 0
    duplicates: int = 0
    undecodable: int = 0
    skipped: int = 0
    """Messages the projection does not want (`Projection.wanted`), passed over undecoded."""
    transactions: int = 0
    failures: int = 0
    last_error: str | None = None
    cpu_s: float = 0.0
    """In `follow()` mode: this process's CPU spent decoding and applying (the writer does not
    await there, so nothing else runs in between)."""

    @property
    def kind(self) -> str:
        return self.spec.stream.kind

    def stats(self) -> dict[str, Any]:
        return {
            "watermark": self.watermark,
            "target": self.target,
            "messages": self.messages,
            "items": self.items,
            "rows": self.rows,
            "duplicates": self.duplicates,
            "undecodable": self.undecodable,
            "skipped": self.skipped,
            "transactions": self.transactions,
            "failures": self.failures,
            "last_error": self.last_error,
            "cpu_s": round(self.cpu_s, 3),
        }


class ProjectionWriter(Protocol):
    """What a projection does with its input; the shell does the rest."""

    async def write(self, feed: Feed, envelopes: Sequence[Envelope[Any]], watermark: int) -> Applied:
        """Apply what is fresh and store the positions with it, all or nothing, then update
        `feed.positions` and `feed.watermark`; raise to have it retried."""
        ...

    def failed(self, feed: Feed, exc: BaseException) -> None:
        """A write failed (it will be retried): e.g. mark cached positions for a re-read."""
        ...


@dataclass(slots=True)
class RetryPolicy:
    first_s: float = 0.1
    max_s: float = 5.0


@dataclass(slots=True)
class Projection:
    """The shell around one writer, for `service`, over `feeds`."""

    service: Service
    writer: ProjectionWriter
    feeds: dict[str, Feed]
    batch: int = 512
    linger_s: float = 0.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    wanted: Callable[[str], bool] | None = None
    """For a projection of part of a stream (a market group): whether a subject's messages are
    its; the others are not decoded, and the watermark still moves past them."""
    _subscriptions: list[JetStreamContext.PushSubscription] = field(default_factory=list)

    @classmethod
    def over(
        cls,
        service: Service,
        writer: ProjectionWriter,
        specs: Sequence[FeedSpec],
        *,
        batch: int = 512,
        linger_s: float = 0.0,
        retry: RetryPolicy | None = None,
        consumer: str | None = None,
        wanted: Callable[[str], bool] | None = None,
    ) -> Projection:
        """Feeds named `<consumer>-<stream kind>` (the durable consumers' names); `consumer` is
        the service's name unless instances of the service follow the streams apart (e.g. one
        per market group)."""
        ns = service.ctx.namespace
        prefix = consumer or service.name
        feeds = {
            spec.stream.kind: Feed(spec, f"{prefix}-{spec.stream.kind}", spec.stream.name(ns))
            for spec in specs
        }
        return cls(service, writer, feeds, batch, linger_s, retry or RetryPolicy(), wanted)

    def feed(self, kind: str) -> Feed:
        return self.feeds[kind]

    async def note_targets(self) -> None:
        """Note each stream's last sequence now: readiness is reaching them."""
        for feed in self.feeds.values():
            info = await self.service.ctx.js.stream_info(feed.stream)
            feed.target = info.state.last_seq if info.state.messages else 0

    def caught_up(self, reached: Callable[[Feed], int] | None = None) -> bool:
        """Every feed at or past its target (`reached(feed)`: the watermark it has, or would have
        after the write in progress)."""
        return all(
            (feed.watermark if reached is None else reached(feed)) >= feed.target
            for feed in self.feeds.values()
        )

    def consumers(self) -> Sequence[StreamConsumer]:
        ns = self.service.ctx.namespace
        return [
            StreamConsumer(
                feed.spec.stream,
                feed.durable,
                feed.spec.stream.wildcard(ns),
                self._handler(feed),
                batch=self.batch,
                resume_after=self._resume_after(feed),
                linger_s=self.linger_s,
            )
            for feed in self.feeds.values()
        ]

    def _resume_after(self, feed: Feed) -> Callable[[], int]:
        return lambda: feed.watermark

    def _handler(self, feed: Feed) -> Callable[[Sequence[Msg]], Any]:
        async def handle(messages: Sequence[Msg]) -> None:
            await self.apply(feed, messages)

        return handle

    def unpack(self, feed: Feed, messages: Sequence[Msg]) -> list[Envelope[Any]]:
        """The envelopes of `messages`, in stream order; undecodable messages logged and skipped."""
        envelopes: list[Envelope[Any]] = []
        wanted = self.wanted
        for msg in messages:
            if wanted is not None and not wanted(msg.subject):
                feed.skipped += 1
                continue
            position = stream_position(msg)
            try:
                envelopes.extend(feed.spec.unpack(position.seq, position.timestamp_ns, msg.data))
            except msgspec.DecodeError as exc:
                feed.undecodable += 1
                self.service.log.error(
                    "undecodable message skipped",
                    extra={"subject": msg.subject, "seq": position.seq, "error": str(exc)},
                )
        return envelopes

    async def apply(self, feed: Feed, messages: Sequence[Msg]) -> None:
        """Write `messages` until the writer takes them (never acked unwritten)."""
        envelopes = self.unpack(feed, messages)
        watermark = stream_position(messages[-1]).seq
        tracer = tracing.tracer(self.service.name)
        orders = traced_orders(messages, envelopes) if tracer is not None else None
        if tracer is not None and orders:
            with tracing.stage_spans(tracer, self.service.name, orders, {"bourse.stream": feed.stream}):
                applied = await self.write(feed, envelopes, watermark)
        else:
            applied = await self.write(feed, envelopes, watermark)
        feed.messages += len(messages)
        feed.items += applied.items
        feed.rows += applied.rows
        feed.duplicates += applied.duplicates
        feed.transactions += 1

    async def write(self, feed: Feed, envelopes: Sequence[Envelope[Any]], watermark: int) -> Applied:
        """`writer.write` retried with backoff until it succeeds."""

        def failed(exc: BaseException, pause_s: float) -> None:
            feed.failures += 1
            feed.last_error = f"{type(exc).__name__}: {exc}"[:500]
            self.writer.failed(feed, exc)
            self.service.log.warning(
                "write failed, retrying",
                extra={"consumer": feed.durable, "error": feed.last_error, "pause_s": round(pause_s, 3)},
            )

        async for attempt in retrying(first_s=self.retry.first_s, max_s=self.retry.max_s, on_failure=failed):
            with attempt:
                applied = await self.writer.write(feed, envelopes, watermark)
        feed.last_error = None
        return applied

    async def follow(self) -> None:
        """Read every feed from its first message, in memory (see the module's docstring)."""
        js, ns = self.service.ctx.js, self.service.ctx.namespace
        for feed in self.feeds.values():
            self._subscriptions.append(
                await js.subscribe(
                    feed.spec.stream.wildcard(ns),
                    stream=feed.stream,
                    cb=self._follower(feed),
                    ordered_consumer=True,
                    deliver_policy=DeliverPolicy.ALL,
                )
            )

    def _follower(self, feed: Feed) -> Callable[[Msg], Any]:
        async def apply_one(msg: Msg) -> None:
            await self.apply_once(feed, msg)

        return apply_one

    async def apply_once(self, feed: Feed, msg: Msg) -> None:
        """Apply one message; if the writer fails, count it and go on with the next."""
        started = time.process_time()
        try:
            position = stream_position(msg)
            envelopes = feed.spec.unpack(position.seq, position.timestamp_ns, msg.data)
            tracer = tracing.tracer(self.service.name)
            orders = traced_orders([msg], envelopes) if tracer is not None else None
            if tracer is not None and orders:
                with tracing.stage_spans(tracer, self.service.name, orders, {"bourse.stream": feed.stream}):
                    applied = await self.writer.write(feed, envelopes, position.seq)
            else:
                applied = await self.writer.write(feed, envelopes, position.seq)
        except Exception as exc:
            feed.failures += 1
            feed.last_error = f"{type(exc).__name__}: {exc}"[:500]
            self.writer.failed(feed, exc)
            self.service.log.exception("message not applied", extra={"subject": msg.subject})
            return
        feed.messages += 1
        feed.items += applied.items
        feed.duplicates += applied.duplicates
        feed.cpu_s += time.process_time() - started

    async def unfollow(self) -> None:
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._subscriptions.clear()

    def failing(self) -> list[str]:
        return [feed.durable for feed in self.feeds.values() if feed.last_error is not None]

    def health(self) -> dict[str, Any]:
        """Per feed its counters, keyed by stream kind."""
        return {kind: feed.stats() for kind, feed in self.feeds.items()}


def traced_orders(messages: Sequence[Msg], envelopes: Sequence[Envelope[Any]]) -> dict[int, SpanContext]:
    """The sampled orders a batch's messages carry: those their bodies name when a body can say
    (an EVENTS batch), else all each lists (an accounts report covers its whole input batch)."""
    held: dict[int, list[int] | None] = {}
    for envelope in envelopes:
        if isinstance(envelope.body, tracing.CarriesOrders):
            ids = held.setdefault(envelope.stream_seq, [])
            if ids is not None:
                ids.extend(envelope.body.order_ids())
        else:
            held[envelope.stream_seq] = None

    def holds(index: int) -> list[int] | None:
        # a message passed over (another group's market, undecodable) holds none of them
        return held.get(stream_position(messages[index]).seq, [])

    return tracing.traced_orders([msg.headers for msg in messages], holds)

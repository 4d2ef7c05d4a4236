"""Runs services inside one process: registers each with `nats.micro` (its endpoints and a
`health` one), drives their stream consumers, and stops everything in reverse order.

A service's micro instance answers `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` only once the service
is running (started, endpoints subscribed, consumers started): an instance that answers is up. Its
metadata say which process it is (`instance`, `host`, `pid`) and carry its links (`link:<label>`),
so whoever started the process (the `bourse up` supervisor) learns from NATS alone that it is up,
where it serves, and, from `$SRV.STATS`, how it is."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, ServiceConfig, ServiceStats
from nats.micro.service import Service as MicroService

from bourse import __version__
from bourse.adapters.cancellation import cancel_and_wait
from bourse.adapters.jetstream import stream_pending
from bourse.adapters.metrics import (
    CONSUMER_BATCHES,
    CONSUMER_FAILURES,
    CONSUMER_LAG,
    CONSUMER_MESSAGES,
    ENDPOINT_ERRORS,
    ENDPOINT_PROCESSING_SECONDS,
    ENDPOINT_REQUESTS,
    PROCESS_INFO,
    SCRAPED,
    ConsumerMeter,
    Sample,
)
from bourse.adapters.retry import retrying
from bourse.config.settings import Settings
from bourse.runtime.service import Endpoint, Service, ServiceContext, StreamConsumer

log = logging.getLogger(__name__)

HEALTH_ENDPOINT = "health"
"""Every service's own endpoint (`<namespace>.svc.<service>.health`): its health facts, which are
also the `data` of each of its endpoints in `$SRV.STATS`."""
INSTANCE_KEY = "instance"
"""Metadata key of the process's label (`Settings.instance`, else `<host>:<pid>`)."""
LINK_PREFIX = "link:"
"""Metadata keys `link:<label>`: the service's links (`Service.links`), e.g. `link:api`."""


def micro_name(namespace: str, service: str) -> str:
    """The nats.micro name of a service: `$SRV.PING.<micro_name>` finds its instances."""
    return f"{namespace}-{service}"


def instance_label(settings: Settings) -> str:
    return settings.instance or f"{socket.gethostname()}:{os.getpid()}"


class ConsumerLoop:
    """Keep one pull request outstanding, hand whatever has arrived to the service as one batch,
    ack the batch; repeat until stopped.

    nats-py's `fetch(n)` waits, once the stream is idle, until `n` messages or its timeout have
    come: a lone order would wait for the timeout. Here messages are handed over as soon as they
    arrive, in batches of what is there, which is what a stage wants under any load. A batch the
    handler fails on is retried in place (not skipped), so a stage never sees its input out of
    order.

    Acks are cumulative (AckPolicy.ALL) and deferred: a batch is acked when the next one is
    handed over, before the handler runs, so the ack leaves in the same socket write as that
    batch's outputs; after `ACK_DELAY_S` without a next batch it goes alone. Under load this
    halves the writes per batch; it never acks a batch whose handler has not returned.

    A batch in its handler (or being retried) for longer than `consumer_stall_s` makes the loop
    `stalled`, and its service not ok on /healthz: a handler waiting on a dead or black-holed
    server, or failing the same batch again and again, is a consumer that has stopped, whatever
    the service itself reports.

    Metrics (`bourse.adapters.metrics`): the counts kept for /healthz and the stream's pending
    count of the last message delivered are read at scrape time (`samples`); per batch the hot
    path pays two histogram observes (size, seconds) and one split of an ack subject."""

    REQUEST_EXPIRES_S = 1.0
    """A pull request's life. A request the server never saw (sent while JetStream was still
    recovering after a restart) is noticed when it should have expired: short, so a stage is
    idle at most about two seconds after NATS comes back (was ~6.6 s with 5 s). Idle, it costs
    one request a second per consumer."""
    ACK_DELAY_S = 0.02
    RECONNECT_CHECK_S = 0.25
    RECEIVE_BACKOFF_FIRST_S = 0.1
    RECEIVE_BACKOFF_MAX_S = 1.0
    """Pauses after a failed receive: growing, but capped low, since a stage should be back
    within about two seconds of NATS."""
    HANDLER_BACKOFF_FIRST_S = 0.1
    HANDLER_BACKOFF_MAX_S = 5.0
    """Pauses between attempts of a batch whose handler fails."""

    def __init__(self, ctx: ServiceContext, spec: StreamConsumer, owner: str) -> None:
        self.ctx = ctx
        self.spec = spec
        self.owner = owner
        self.delivered = 0
        self.batches = 0
        self.failures = 0
        self.pending = 0
        """Messages the stream held for this consumer after the last one delivered."""
        self.last_error: str | None = None
        self._meter = ConsumerMeter(owner, spec.durable)
        self.stall_s = ctx.settings.consumer_stall_s
        self._handling_since: float | None = None
        """When the batch now in the handler was handed over (monotonic); None between batches."""
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._sub: Subscription | None = None
        self._next_subject = ""
        self._requested = 0
        self._unacked: Msg | None = None

    async def start(self) -> None:
        spec = self.spec
        stream = spec.stream.name(self.ctx.namespace)
        config = ConsumerConfig(
            durable_name=spec.durable,
            ack_policy=AckPolicy.ALL,
            ack_wait=spec.ack_wait_s,
            max_ack_pending=spec.max_ack_pending,
            filter_subject=spec.filter_subject,
        )
        if spec.resume_after is not None:
            last = spec.resume_after()
            if last > 0:
                config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
                config.opt_start_seq = last + 1
            with contextlib.suppress(NotFoundError):
                await self.ctx.js.delete_consumer(stream, spec.durable)
        try:
            await self.ctx.js.consumer_info(stream, spec.durable)
        except NotFoundError:
            await self.ctx.js.add_consumer(stream, config)
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{spec.durable}"
        self._sub = await self.ctx.nc.subscribe(
            self.ctx.nc.new_inbox(), pending_msgs_limit=4 * spec.batch + 1024
        )
        self._task = asyncio.create_task(self._run(), name=f"{self.owner}:{spec.durable}")

    async def _request(self) -> None:
        """Ask for a full batch; the server delivers as messages come, until it is used up or expires."""
        assert self._sub is not None
        body = {"batch": self.spec.batch, "expires": int(self.REQUEST_EXPIRES_S * 1e9)}
        await self.ctx.nc.publish(self._next_subject, msgspec.json.encode(body), reply=self._sub.subject)
        self._requested = self.spec.batch

    async def _receive(self) -> list[Msg]:
        """Wait for the next message, then take every one that has already arrived."""
        assert self._sub is not None
        if self._requested <= 0:
            await self._request()
        try:
            first = await self._next_or_ack()
        except (NatsTimeoutError, TimeoutError):
            self._requested = 0  # the request may be lost (e.g. a reconnect): ask again
            return []
        arrived = [first]
        if self.spec.linger_s > 0 and self._sub.pending_msgs < self._requested - 1:
            await asyncio.sleep(self.spec.linger_s)
        for _ in range(self._sub.pending_msgs):
            arrived.append(await self._sub.next_msg())
        messages = []
        for msg in arrived:
            if msg.reply and not (msg.headers and "Status" in msg.headers):
                messages.append(msg)
                self._requested -= 1
            else:  # a status: 408 request expired, 409 consumer changed, 404 no messages
                self._requested = 0
        return messages

    async def _next_or_ack(self) -> Msg:
        """The next message; if none comes within ACK_DELAY_S, ack what is pending and keep waiting."""
        assert self._sub is not None
        wait_s = self.REQUEST_EXPIRES_S + 0.5  # its 408 status is due at the expiry
        if self._unacked is not None:
            try:
                return await self._sub.next_msg(timeout=self.ACK_DELAY_S)
            except (NatsTimeoutError, TimeoutError):
                await self._ack_pending()
        # in slices: a reconnect (the server restarted) loses the pull request, and waiting
        # out its expiry kept every stage idle ~6 s after NATS came back
        reconnects = self.ctx.nc.stats["reconnects"]
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_s
        while True:
            try:
                slice_s = max(min(self.RECONNECT_CHECK_S, give_up - loop.time()), 0.001)
                return await self._sub.next_msg(timeout=slice_s)
            except (NatsTimeoutError, TimeoutError):
                if loop.time() >= give_up or self.ctx.nc.stats["reconnects"] != reconnects:
                    raise

    async def _ack_pending(self, *, confirmed: bool = False) -> None:
        msg, self._unacked = self._unacked, None
        if msg is None:
            return
        if confirmed:  # stopping: the server has the ack before we say we stopped
            await msg.ack_sync(timeout=2.0)
        else:
            await msg.ack()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            messages = await self._receive_retrying()
            if not messages:
                continue
            self._idle.clear()
            self._handling_since = since = time.monotonic()
            try:
                await self._deliver(messages)
            finally:
                self._handling_since = None
                self._idle.set()
            self.delivered += len(messages)
            self.batches += 1
            self._meter.batch(len(messages), time.monotonic() - since)
            with contextlib.suppress(ValueError):
                self.pending = stream_pending(messages[-1])

    async def _receive_retrying(self) -> list[Msg]:
        """`_receive`, again after connection trouble (the client reconnects meanwhile), with a
        growing pause: a connection that stays broken is not asked ten times a second."""
        async for attempt in retrying(
            first_s=self.RECEIVE_BACKOFF_FIRST_S,
            max_s=self.RECEIVE_BACKOFF_MAX_S,
            on_failure=self._receive_failed,
        ):
            with attempt:
                return await self._receive()
        return []  # not reached: the loop above retries until `_receive` returns

    def _receive_failed(self, exc: BaseException, pause_s: float) -> None:
        self._record_failure(exc)
        self._requested = 0  # the pull request may be gone with the connection: ask again

    async def _deliver(self, messages: list[Msg]) -> None:
        """Hand the batch to the handler until it succeeds, or until we are stopping (then it is
        left unacked: JetStream redelivers it to the next run)."""
        try:
            async for attempt in retrying(
                first_s=self.HANDLER_BACKOFF_FIRST_S,
                max_s=self.HANDLER_BACKOFF_MAX_S,
                on_failure=self._handler_failed,
                stop_when=self._stopping.is_set,
            ):
                with attempt:
                    await self._ack_pending()
                    await self.spec.handler(messages)
        except Exception as exc:  # failed while stopping
            self._handler_failed(exc, 0.0)
            return
        self._unacked = messages[-1]
        self.last_error = None

    def _handler_failed(self, exc: BaseException, pause_s: float) -> None:
        self._record_failure(exc)
        log.error(
            "consumer handler failed",
            exc_info=exc,
            extra={"consumer": self.spec.durable, "pause_s": round(pause_s, 3)},
        )

    def _record_failure(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"

    async def stop(self, grace_s: float = 10.0) -> None:
        """Let a batch in progress finish (its outputs published, its input acked), then stop."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
            await cancel_and_wait([self._task])
        with contextlib.suppress(Exception):
            await self._ack_pending(confirmed=True)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    @property
    def handling_s(self) -> float:
        """How long the batch now in the handler has been there (0 between batches)."""
        since = self._handling_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def stalled(self) -> bool:
        return self.handling_s > self.stall_s

    def stats(self) -> dict[str, Any]:
        return {
            "durable": self.spec.durable,
            "delivered": self.delivered,
            "batches": self.batches,
            "failures": self.failures,
            "last_error": self.last_error,
            "handling_s": round(self.handling_s, 3),
            "stalled": self.stalled,
        }

    def samples(self) -> Iterator[Sample]:
        labels = (self.owner, self.spec.durable)
        yield Sample(CONSUMER_MESSAGES, labels, self.delivered)
        yield Sample(CONSUMER_BATCHES, labels, self.batches)
        yield Sample(CONSUMER_FAILURES, labels, self.failures)
        yield Sample(CONSUMER_LAG, labels, self.pending)


class RunningService:
    """One started service with its micro registration and consumer loops."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.micro: MicroService | None = None
        self.loops: list[ConsumerLoop] = []
        self.started_at = time.time()
        self.state = "starting"

    def health(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"state": self.state}
        try:
            facts.update(self.service.health())
        except Exception as exc:
            facts.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        if self.loops:
            facts["consumers"] = [loop.stats() for loop in self.loops]
            stalled = [loop.spec.durable for loop in self.loops if loop.stalled]
            if stalled:  # whatever the service says: a consumer stuck on one batch is not ok
                facts["stalled"] = stalled
                facts["ok"] = False
        facts.setdefault("ok", self.state == "running")
        return facts

    def samples(self) -> Iterator[Sample]:
        """The process-wide families this service feeds, read at scrape time: its consumers',
        its endpoints' (nats.micro's own counts) and the service's own (`Service.samples`)."""
        for loop in self.loops:
            yield from loop.samples()
        if self.micro is not None:
            name = self.service.name
            # the base class's stats: without the health facts `_HealthInStats` adds to them
            for endpoint in MicroService.stats(self.micro).endpoints:
                labels = (name, endpoint.name)
                yield Sample(ENDPOINT_REQUESTS, labels, endpoint.num_requests)
                yield Sample(ENDPOINT_ERRORS, labels, endpoint.num_errors)
                yield Sample(ENDPOINT_PROCESSING_SECONDS, labels, endpoint.processing_time / 1e9)
        yield from self.service.samples()


class _HealthInStats(MicroService):
    """A nats.micro service whose `$SRV.STATS` carries the service's health as each endpoint's
    data, computed once per request (nats.micro's `stats_handler` is called per endpoint)."""

    def __init__(self, client: Any, config: ServiceConfig, running: RunningService) -> None:
        super().__init__(client, config)
        self._running = running

    def stats(self) -> ServiceStats:
        stats = super().stats()
        data = msgspec.to_builtins(self._running.health())
        for endpoint in stats.endpoints:
            endpoint.data = data
        return stats


class ServiceHost:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.running: list[RunningService] = []
        self.instance = instance_label(ctx.settings)
        self._unwatch: list[Callable[[], None]] = []
        """Removes this host's sources from the process's metrics (`SCRAPED`), at stop."""

    async def start(self, services: Sequence[type[Service]]) -> None:
        info = Sample(PROCESS_INFO, (",".join(s.name for s in services), self.instance), 1)
        self._unwatch.append(SCRAPED.watch(lambda: (info,)))
        for service_class in services:
            await self._start_one(service_class(self.ctx))

    async def _start_one(self, service: Service) -> None:
        running = RunningService(service)
        self.running.append(running)
        await service.start()

        async def answer_health(request: Request) -> None:
            await request.respond(msgspec.json.encode(running.health()))

        running.micro = micro = _HealthInStats(
            self.ctx.nc,
            ServiceConfig(
                name=micro_name(self.ctx.namespace, service.name),
                version=__version__,
                description=service.description,
                metadata=self.metadata(service),
                queue_group=f"{self.ctx.namespace}.{service.name}",
            ),
            running,
        )
        health = Endpoint(HEALTH_ENDPOINT, service.subject(HEALTH_ENDPOINT), answer_health)
        for endpoint in [*service.endpoints(), health]:
            await micro.add_endpoint(
                EndpointConfig(name=endpoint.name, subject=endpoint.subject, handler=endpoint.handler)
            )
        for spec in service.consumers():
            loop = ConsumerLoop(self.ctx, spec, service.name)
            await loop.start()
            running.loops.append(loop)
        self._unwatch.append(SCRAPED.watch(running.samples))
        running.state = "running"
        await micro.start()  # $SRV.PING, INFO and STATS answer from here on: this instance is up
        log.info("service started", extra={"service": service.name, "micro_id": micro.id})

    def metadata(self, service: Service) -> dict[str, str]:
        """What the service's micro instance publishes besides its name: which process it is and
        its links (read after `start`, when a server knows its port)."""
        metadata = {INSTANCE_KEY: self.instance, "host": socket.gethostname(), "pid": str(os.getpid())}
        metadata.update((f"{LINK_PREFIX}{label}", url) for label, url in service.links().items())
        return metadata

    async def stop(self) -> None:
        for running in reversed(self.running):
            running.state = "stopping"
            for loop in running.loops:
                await loop.stop()
            if running.micro is not None:
                with contextlib.suppress(Exception):
                    await running.micro.stop()
            try:
                await running.service.stop()
            except Exception:
                log.exception("service stop failed", extra={"service": running.service.name})
            running.state = "stopped"
            log.info("service stopped", extra={"service": running.service.name})
        for unwatch in self._unwatch:
            unwatch()
        self._unwatch.clear()

    def health(self) -> Mapping[str, dict[str, Any]]:
        return {running.service.name: running.health() for running in self.running}

    def metrics(self) -> str:
        """Every running service's Prometheus text, one after the other."""
        parts = []
        for running in self.running:
            try:
                parts.append(running.service.metrics())
            except Exception:
                log.exception("metrics failed", extra={"service": running.service.name})
        return "".join(part if part.endswith("\n") else part + "\n" for part in parts if part)

    def links(self) -> dict[str, str]:
        links: dict[str, str] = {}
        for running in self.running:
            links.update(running.service.links())
        return links

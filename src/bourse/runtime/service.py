"""Declaring a service: its name, the streams it consumes, its request/reply endpoints, start/stop.

A service is a class; the runtime (`bourse.runtime.host`) does the wiring, so a service module
reads like its row in the architecture table:

    class Ids(Service):
        name = "ids"
        description = "Time-ordered 64-bit order ids"

        def endpoints(self) -> list[Endpoint]:
            return [Endpoint("next", self.subject("next"), self.next_ids)]

Endpoints are registered with `nats.micro`, so `nats micro ls` / `$SRV.PING` / `$SRV.STATS`
discover every running instance and its per-endpoint request counts and latencies.
Stream consumers are JetStream pull consumers fetched in batches and acknowledged once the
handler returns (one ack per batch: the consumers use AckPolicy.ALL).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.micro.request import Request

from bourse.adapters.metrics import Sample
from bourse.application.catalog import Catalog
from bourse.application.ports import QueryFailed
from bourse.config.settings import Settings
from bourse.contracts.messages import QueryError, json_encode
from bourse.contracts.subjects import StreamSpec, service_subject

RequestHandler = Callable[[Request], Awaitable[None]]
BatchHandler = Callable[[Sequence[Msg]], Awaitable[None]]
Q = TypeVar("Q")


def query_endpoint(
    decoder: msgspec.json.Decoder[Q],
    answer: Callable[[Q], msgspec.Struct],
    *,
    ready: Callable[[], bool] | None = None,
) -> RequestHandler:
    """A read endpoint: JSON query in, JSON answer out. A refusal (`QueryFailed`, or a body that
    does not decode: 400 `invalid_request`; not `ready()` yet: 503 `not_ready`) is answered with
    the nats.micro error headers (status, message) and a `QueryError` body with its stable code,
    which the callers' clients raise again as `QueryFailed`."""

    async def handle(request: Request) -> None:
        try:
            if ready is not None and not ready():
                raise QueryFailed(503, "not_ready", "this instance is still reading the streams")
            try:
                query = decoder.decode(request.data)
            except msgspec.DecodeError as exc:  # ValidationError included
                raise QueryFailed(400, "invalid_request", str(exc)) from None
            reply = answer(query)
        except QueryFailed as failed:
            await request.respond_error(
                str(failed.status), failed.message, json_encode(QueryError(failed.code, failed.message))
            )
            return
        await request.respond(json_encode(reply))

    return handle


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A request/reply endpoint (core NATS, queue group = the service name)."""

    name: str
    subject: str
    handler: RequestHandler


@dataclass(frozen=True, slots=True)
class StreamConsumer:
    """A durable JetStream pull consumer: the runtime fetches up to `batch` messages, awaits
    `handler(messages)`, then acks them all at once."""

    stream: StreamSpec
    durable: str
    filter_subject: str
    handler: BatchHandler
    batch: int = 512
    ack_wait_s: float = 30.0
    max_ack_pending: int = 20_000
    resume_after: Callable[[], int] | None = None
    """For stages that restore a snapshot: returns the last stream sequence the state covers.
    The consumer is then recreated to deliver from the next sequence, whatever it had acked."""
    linger_s: float = 0.0
    """After a message arrives, wait this long for more before handing the batch over: for
    followers whose cost is per batch (a SQL transaction), a little lag buys much less CPU."""


@dataclass(slots=True)
class ServiceContext:
    """What every service gets: settings, the markets, and the process's NATS connection."""

    settings: Settings
    nc: Client
    js: JetStreamContext
    catalog: Catalog = field(init=False)

    def __post_init__(self) -> None:
        self.catalog = self.settings.catalog

    @property
    def namespace(self) -> str:
        return self.settings.namespace


class Service:
    """Base of every bourse service; override what the service needs, nothing more."""

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.log = logging.getLogger(f"bourse.{self.name}")

    def subject(self, endpoint: str) -> str:
        return service_subject(self.ctx.namespace, self.name, endpoint)

    def endpoints(self) -> Sequence[Endpoint]:
        return ()

    def consumers(self) -> Sequence[StreamConsumer]:
        return ()

    async def start(self) -> None:
        """Acquire resources and start background work; return once ready to serve."""

    async def stop(self) -> None:
        """Release resources; called once, after consumers and endpoints have stopped."""

    def health(self) -> Mapping[str, Any]:
        """Extra health facts (lags, connections). Raise or return {"ok": False, ...} if degraded."""
        return {}

    def links(self) -> Mapping[str, str]:
        """Addresses a person may want to open (API, docs); printed by `bourse up`."""
        return {}

    def metrics(self) -> str:
        """Prometheus text exposition lines (served at the health port's `/metrics`); "" for none.
        Only families of the service's own (`bourse_<service>_*`): a family several services
        feed is one of the process's (`samples`), or two in one process would name it twice."""
        return ""

    def samples(self) -> Iterable[Sample]:
        """Values of the process-wide families (`bourse.adapters.metrics`, e.g. snapshot ages)
        this service feeds, read at each scrape while it runs."""
        return ()

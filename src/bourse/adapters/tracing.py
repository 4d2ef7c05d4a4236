"""Distributed tracing with OpenTelemetry: one trace per order, from the REST request or the
RabbitMQ message through every stage to the last projection, across NATS.

Off unless `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, over HTTP/protobuf, or `console`):
then each process gives each of its services a tracer (`service.name` = `bourse-<service>`),
samples as `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` say, and exports in the background
(`OTEL_EXPORTER_OTLP_*`, `OTEL_BSP_*`: the SDK reads them). Off, `tracer()` is None and every
caller skips its tracing work after that one check.

How an order's context crosses batches. Commands travel many to a message, and a stage handles
many messages at once, so one `traceparent` per message cannot carry them. A message's
`bourse-trace` header lists, for the sampled orders it carries, `<order id>=<traceparent>` of
each order's span in the stage that produced it. A consumer opens, per listed order that its
decoded message holds, a span of its own as that context's child (so an order's trace is the
chain gateway → intake → accounts → matching → projections and pushers), plus one span for the
batch with a link to each of them. Unsampled orders are never listed: at a sampling ratio of
0.01 most batches carry no header and cost nothing more.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

log = logging.getLogger(__name__)

ORDER_TRACES_HEADER = "bourse-trace"
"""NATS header: `<order id>=<traceparent>,...` for the sampled orders a message carries."""
ORDER_ID = "bourse.order_id"
"""The span attribute naming the order: what to search for in Jaeger."""

_W3C = TraceContextTextMapPropagator()


class FollowLinks(Sampler):
    """A root span that links sampled spans is sampled (a batch carrying sampled orders);
    everything else is decided by `root`. Without this, a ratio sampler would drop most batch
    spans of sampled orders, and their links with them."""

    def __init__(self, root: Sampler) -> None:
        self.root = root

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid and links and any(link.context.trace_flags.sampled for link in links):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return self.root.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"FollowLinks{{{self.root.get_description()}}}"


def sampler_from_env(env: Mapping[str, str]) -> FollowLinks:
    """The standard `OTEL_TRACES_SAMPLER` names (default `parentbased_always_on`)."""
    name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    try:
        ratio = float(arg) if arg else 1.0
    except ValueError:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={arg!r} is not a number") from None
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={arg!r} is not a ratio in [0, 1]")
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatioBased(ratio)),
    }
    if name not in samplers:
        raise ValueError(f"OTEL_TRACES_SAMPLER={name!r}: one of {', '.join(samplers)}")
    return FollowLinks(samplers[name])


def exporters_from_env(env: Mapping[str, str]) -> list[SpanExporter]:
    """`OTEL_TRACES_EXPORTER`: `otlp` (HTTP/protobuf, e.g. into Jaeger v2 on :4318), `console`,
    `none`; a comma-separated list. Unset means no tracing at all."""
    names = [name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "none":
            continue
        if name == "otlp":
            protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
            )
            if protocol != "http/protobuf":
                raise ValueError(f"OTLP protocol {protocol!r}: bourse exports http/protobuf (port 4318)")
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: one of otlp, console, none")
    return exporters


class Tracing:
    """The process's tracing: one tracer provider per service (its `service.name`), all sharing
    the sampler and the span processors."""

    def __init__(self, processors: Sequence[SpanProcessor], sampler: Sampler) -> None:
        self.processors = list(processors)
        self.sampler = sampler
        self._providers: dict[str, TracerProvider] = {}

    def tracer(self, service: str) -> Tracer:
        provider = self._providers.get(service)
        if provider is None:
            resource = Resource.create({"service.name": f"bourse-{service}", "service.namespace": "bourse"})
            provider = TracerProvider(sampler=self.sampler, resource=resource, shutdown_on_exit=False)
            for processor in self.processors:
                provider.add_span_processor(processor)
            self._providers[service] = provider
        return provider.get_tracer("bourse")

    def shutdown(self) -> None:
        """Export what is queued (the processors flush on shutdown)."""
        for processor in self.processors:
            try:
                processor.shutdown()
            except Exception:
                log.exception("span processor shutdown failed")


_installed: Tracing | None = None


def install(tracing: Tracing | None) -> Tracing | None:
    """Make `tracing` the process's (None turns tracing off); returns the one it replaces."""
    global _installed
    previous, _installed = _installed, tracing
    return previous


def install_from_env(env: Mapping[str, str] | None = None) -> Tracing | None:
    """Install what the `OTEL_*` variables describe; None (and tracing off) when they name no
    exporter. A bad value raises `ValueError`: a process must not start half-configured."""
    env = os.environ if env is None else env
    exporters = exporters_from_env(env)
    if not exporters:
        install(None)
        return None
    tracing = Tracing([BatchSpanProcessor(exporter) for exporter in exporters], sampler_from_env(env))
    install(tracing)
    return tracing


def tracer(service: str) -> Tracer | None:
    """The service's tracer, or None when tracing is off (the check every caller makes first)."""
    tracing = _installed
    return None if tracing is None else tracing.tracer(service)


# -- contexts on the wire -----------------------------------------------------------------------


def traceparent(context: SpanContext) -> str:
    """W3C `traceparent` of a span context."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def parse_traceparent(value: str) -> SpanContext | None:
    """The remote span context of a W3C `traceparent`, None when it is malformed."""
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or len(parts[1]) != 32 or len(parts[2]) != 16 or parts[0] == "ff":
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3][:2], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


def order_traces_header(contexts: Mapping[int, SpanContext]) -> str:
    return ",".join(f"{order_id}={traceparent(context)}" for order_id, context in contexts.items())


def parse_order_traces(value: str | None) -> dict[int, SpanContext]:
    """The orders' contexts of a `bourse-trace` header; malformed entries are skipped."""
    found: dict[int, SpanContext] = {}
    if not value:
        return found
    for entry in value.split(","):
        order_id, _, parent = entry.partition("=")
        context = parse_traceparent(parent)
        if context is not None and order_id.strip().isdigit():
            found[int(order_id)] = context
    return found


def incoming_context(carrier: Mapping[str, Any] | None) -> Context | None:
    """The W3C trace context a client sent (HTTP or AMQP headers), None if it sent none."""
    if not carrier:
        return None
    headers = {
        str(key).lower(): str(value) for key, value in carrier.items() if isinstance(value, str | bytes)
    }
    if "traceparent" not in headers:
        return None
    return _W3C.extract(headers)


def sampled(context: SpanContext) -> bool:
    return context.is_valid and context.trace_flags.sampled


# -- one stage's spans for a batch ----------------------------------------------------------------


@contextmanager
def stage_spans(
    tracer: Tracer,
    stage: str,
    orders: Mapping[int, SpanContext],
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[dict[int, SpanContext]]:
    """Per order, a `stage` span child of the order's upstream context; one `<stage> batch`
    span with a link to each. Yields the orders' new contexts (for the outputs' header); every
    span ends when the block does, so each covers the batch's whole handling."""
    attrs = dict(attributes or {})
    spans = []
    for order_id, parent in orders.items():
        span = tracer.start_span(
            stage,
            context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
            kind=SpanKind.CONSUMER,
            attributes={**attrs, ORDER_ID: order_id},
        )
        spans.append((order_id, span))
    batch = tracer.start_span(
        f"{stage} batch",
        context=Context(),
        kind=SpanKind.INTERNAL,
        attributes={**attrs, "bourse.batch.orders": len(spans)},
        links=[Link(span.get_span_context()) for _, span in spans],
    )
    try:
        with trace.use_span(batch, end_on_exit=False):  # what is logged meanwhile names this trace
            yield {order_id: span.get_span_context() for order_id, span in spans}
    finally:
        batch.end()
        for _, span in spans:
            span.end()


def traced_orders(
    headers: Sequence[Mapping[str, str] | None], holds: Callable[[int], Iterable[int] | None]
) -> dict[int, SpanContext]:
    """The sampled orders' contexts listed by a batch's messages (their headers, in order),
    kept to the orders each message really carries: `holds(index)` says which (asked only of
    messages that list some; None: all it lists). A producer lists every traced order of its
    batch on each of its outputs, and each consumer keeps its own."""
    found: dict[int, SpanContext] = {}
    for index, message_headers in enumerate(headers):
        if not message_headers or not (value := message_headers.get(ORDER_TRACES_HEADER)):
            continue
        listed = parse_order_traces(value)
        carried = holds(index)
        if carried is None:
            found.update(listed)
        else:
            found.update((oid, listed[oid]) for oid in carried if oid in listed)
    return found


@runtime_checkable
class CarriesOrders(Protocol):
    """A stage input that can say which orders it carries (to keep only their traces)."""

    def order_ids(self) -> Iterable[int]: ...

"""Tracing's pieces: contexts on the wire, the sampler, the stage spans; and one order's trace
through the whole exchange in this process (its contexts crossing real NATS), checked with the
SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nats.aio.client import Client
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanContext, TraceFlags

from bourse.adapters import tracing
from bourse.config.settings import Settings
from tests.conftest import free_port
from tests.e2e.conftest import started

SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def remote(trace_id: int, span_id: int, flags: TraceFlags = SAMPLED) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test, every span kept in memory; off again after."""
    exporter = InMemorySpanExporter()
    previous = tracing.install(
        tracing.Tracing([SimpleSpanProcessor(exporter)], tracing.FollowLinks(ALWAYS_ON))
    )
    yield exporter
    tracing.install(previous)


def test_traceparent_round_trips_and_malformed_values_are_none() -> None:
    context = remote(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7)
    header = tracing.traceparent(context)
    assert header == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert tracing.parse_traceparent(header) == context
    for bad in (
        "",
        "00-xyz-00f067aa0ba902b7-01",
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
        "ff-" + "1" * 32 + "-" + "1" * 16 + "-01",
    ):
        assert tracing.parse_traceparent(bad) is None


def test_order_traces_header_lists_each_order_and_skips_malformed_entries() -> None:
    a, b = remote(1, 2), remote(3, 4)
    header = tracing.order_traces_header({7: a, 9: b})
    assert tracing.parse_order_traces(header) == {7: a, 9: b}
    assert tracing.parse_order_traces(header + ",x=00-zz,11=garbage") == {7: a, 9: b}
    assert tracing.parse_order_traces(None) == {}


def test_a_consumer_keeps_only_the_orders_its_message_carries() -> None:
    a, b = remote(1, 2), remote(3, 4)
    listed = {tracing.ORDER_TRACES_HEADER: tracing.order_traces_header({7: a, 9: b})}
    assert tracing.traced_orders([listed, None], lambda index: [9, 12]) == {9: b}
    assert tracing.traced_orders([listed], lambda index: None) == {7: a, 9: b}
    assert (
        tracing.traced_orders([None, {}], lambda index: pytest.fail("asked of a message that lists none"))
        == {}
    )


def test_standard_sampler_names_are_honoured_and_bad_ones_refused() -> None:
    ratio = tracing.sampler_from_env(
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
    )
    assert isinstance(ratio.root, ParentBased)
    assert "TraceIdRatioBased{0.01}" in ratio.get_description()
    assert "ParentBased{root:AlwaysOnSampler" in tracing.sampler_from_env({}).get_description()
    assert tracing.sampler_from_env({"OTEL_TRACES_SAMPLER": "always_off"}).root is ALWAYS_OFF
    for env in (
        {"OTEL_TRACES_SAMPLER": "sometimes"},
        {"OTEL_TRACES_SAMPLER_ARG": "lots"},
        {"OTEL_TRACES_SAMPLER_ARG": "2"},
    ):
        with pytest.raises(ValueError, match="OTEL_TRACES_SAMPLER"):
            tracing.sampler_from_env(env)


def test_tracing_is_off_unless_an_exporter_is_named_and_grpc_is_refused() -> None:
    previous = tracing.install(None)
    try:
        assert tracing.install_from_env({}) is None
        assert tracing.tracer("gateway") is None
        assert tracing.install_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
        with pytest.raises(ValueError, match="http/protobuf"):
            tracing.install_from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
        with pytest.raises(ValueError, match="zipkin"):
            tracing.install_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
    finally:
        tracing.install(previous)


def test_a_batch_span_carrying_a_sampled_order_is_sampled_even_at_ratio_zero() -> None:
    exporter = InMemorySpanExporter()
    sampler = tracing.FollowLinks(ParentBased(TraceIdRatioBased(0.0)))
    previous = tracing.install(tracing.Tracing([SimpleSpanProcessor(exporter)], sampler))
    try:
        tracer = tracing.tracer("matching")
        assert tracer is not None
        with tracing.stage_spans(tracer, "matching", {5: remote(11, 12)}) as contexts:
            assert contexts[5].trace_id == 11
        with tracer.start_as_current_span("an unsampled root"):
            pass
    finally:
        tracing.install(previous)
    names = sorted(span.name for span in exporter.get_finished_spans())
    assert names == ["matching", "matching batch"]


def test_stage_spans_are_children_of_each_order_and_the_batch_links_them(spans: InMemorySpanExporter) -> None:
    tracer = tracing.tracer("accounts")
    assert tracer is not None
    first, second = remote(101, 1), remote(202, 2)
    with tracing.stage_spans(tracer, "accounts", {1: first, 2: second}, {"bourse.shard": "0"}) as contexts:
        assert trace.get_current_span().get_span_context().is_valid  # the batch span is current
    finished = {
        span.name + str((span.attributes or {}).get(tracing.ORDER_ID, "")): span
        for span in spans.get_finished_spans()
    }
    order_1, order_2, batch = finished["accounts1"], finished["accounts2"], finished["accounts batch"]
    assert order_1.parent is not None
    assert (order_1.parent.span_id, order_1.context.trace_id) == (1, 101)
    assert order_2.parent is not None
    assert (order_2.parent.span_id, order_2.context.trace_id) == (2, 202)
    assert [ids(contexts[1]), ids(contexts[2])] == [ids(order_1.context), ids(order_2.context)]
    assert [ids(link.context) for link in batch.links] == [ids(order_1.context), ids(order_2.context)]
    assert batch.parent is None
    assert order_1.resource.attributes["service.name"] == "bourse-accounts"


def ids(context: SpanContext | None) -> tuple[int, int]:
    """A span context's identity (SpanContext itself is not hashable)."""
    assert context is not None
    return context.trace_id, context.span_id


def by_trace(spans: tuple[ReadableSpan, ...], trace_id: int) -> list[ReadableSpan]:
    return [span for span in spans if span.context.trace_id == trace_id]


async def test_an_order_placed_over_rest_has_one_trace_through_every_stage(
    spans: InMemorySpanExporter, settings: Settings, nc: Client
) -> None:
    exchange = await started(settings.model_copy(update={"http_port": free_port(), "demo_seed": True}), nc)
    try:
        alice, bob = exchange.member(1), exchange.member(2)
        await bob.limit("sell", "0.5", "30000")
        await exchange.settle()
        spans.clear()
        response = await alice.post_order(
            {"market": "btc_usd", "side": "buy", "type": "limit", "amount": "0.5", "price": "30000"}
        )
        assert response.status_code == 201, response.text
        order_id = int(response.json()["id"])
        traceresponse = tracing.parse_traceparent(response.headers["traceresponse"])
        assert traceresponse is not None
        await exchange.settle()
    finally:
        await exchange.stop()
    trace_spans = by_trace(spans.get_finished_spans(), traceresponse.trace_id)
    by_id = {span.context.span_id: span for span in trace_spans}

    def chain(span: ReadableSpan) -> list[str]:
        """The span's ancestors' names, root first."""
        names = [span.name]
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            names.insert(0, span.name)
        return names

    root = [span for span in trace_spans if span.parent is None]
    assert [span.name for span in root] == ["POST /api/v3/order"], sorted(
        {tuple(chain(s)) for s in trace_spans}
    )
    assert (root[0].attributes or {})[tracing.ORDER_ID] == order_id
    chains = {tuple(chain(span)) for span in trace_spans}
    head = ("POST /api/v3/order", "order intake", "accounts", "matching")
    assert head in chains
    for projection in ("persistence", "statistics", "query"):
        assert (*head, projection) in chains, (projection, sorted(chains))
    # the trade settles back through accounts: a span of the settlement under matching's
    assert (*head, "accounts") in chains
    for span in trace_spans:
        if span.name in ("accounts", "matching", "persistence", "statistics", "query"):
            assert (span.attributes or {})[tracing.ORDER_ID] == order_id
    # each stage's batch span links the order's span in that stage
    stage_contexts = {ids(span.context) for span in trace_spans if span.name != "POST /api/v3/order"}
    batches = [span for span in spans.get_finished_spans() if span.name.endswith(" batch")]
    linked = {ids(link.context) for span in batches for link in span.links}
    stage_spans = {
        ids(span.context)
        for span in trace_spans
        if span.name in ("accounts", "matching", "persistence", "statistics", "query")
    }
    assert stage_spans <= linked
    assert stage_contexts - linked == {
        ids(span.context) for span in trace_spans if span.name == "order intake"
    }

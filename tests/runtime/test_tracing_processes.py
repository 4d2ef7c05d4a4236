"""An order's trace as an operator sees it: `bourse up` in three real processes exporting OTLP
over HTTP (as into Jaeger v2) to a receiver in this test. One order placed over REST and one
over RabbitMQ each give one trace in which every stage appears, each the child of the one
before, in time order, and each stage's batch span links the order's span."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bourse.adapters import tracing
from bourse.config.amqp import amqp_topology
from bourse.config.settings import Settings
from otlp_sink import OtlpSink, ReceivedSpan  # bench/ (pytest pythonpath)
from tests.amqp.helpers import RABBITMQ_URL, Publisher
from tests.conftest import free_port
from tests.runtime.test_bourse_up import _env, _token, _wait_for

STAGES = ("order intake", "accounts", "matching")
"""What every order passes through after its entry span, in this order."""
AFTER_MATCHING = ("persistence", "cache", "statistics", "query", "pusher")
"""Who consumes the engine's events: each has a span of the order under matching's."""


def chains(spans: list[ReceivedSpan]) -> set[tuple[str, ...]]:
    """Every span's path from the trace's root, by name."""
    by_id = {span.span_id: span for span in spans}
    found = set()
    for span in spans:
        path = [span.name]
        while span.parent_span_id in by_id:
            span = by_id[span.parent_span_id]
            path.insert(0, span.name)
        found.add(tuple(path))
    return found


def check_order_trace(sink: OtlpSink, trace_id: str, order_id: int, entry: str) -> None:
    spans = sink.trace(trace_id)
    found = chains(spans)
    head = (entry, *STAGES)
    assert head in found, sorted(found)
    for consumer in AFTER_MATCHING:
        assert (*head, consumer) in found, (consumer, sorted(found))
    by_id = {span.span_id: span for span in spans}
    linked = {span_id for span in sink.spans if span.name.endswith(" batch") for _, span_id in span.links}
    for span in spans:
        if span.name == entry:
            continue
        parent = by_id[span.parent_span_id]
        assert span.start_ns >= parent.start_ns, (span.name, parent.name)  # in order
        assert span.attributes[tracing.ORDER_ID] == order_id
        if span.name != "order intake":
            assert span.span_id in linked, f"no batch span links the order's {span.name} span"
    services = {span.name: span.service for span in spans}
    assert services["accounts"] == "bourse-accounts"
    assert services["matching"] == "bourse-matching"


@dataclass
class TracedExchange:
    api: str
    namespace: str
    alice: dict[str, str]
    bob: dict[str, str]


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as receiver:
        yield receiver


@pytest.fixture
def exchange(tmp_path: Path, sink: OtlpSink) -> Iterator[TracedExchange]:
    """`bourse up` in three processes (Redis and RabbitMQ on: every service runs), every trace
    sampled and exported to `sink`."""
    http_port, health_port = free_port(), free_port()
    namespace = f"t{uuid.uuid4().hex[:10]}"
    env = _env(tmp_path, http_port, health_port)
    env.update(
        BOURSE_NAMESPACE=namespace,
        BOURSE_REDIS_URL="redis://127.0.0.1:6379/0",
        BOURSE_RABBITMQ_URL=RABBITMQ_URL,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=sink.endpoint,
        OTEL_TRACES_SAMPLER="parentbased_always_on",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    api = f"http://127.0.0.1:{http_port}/api/v3"
    process = subprocess.Popen(
        [sys.executable, "-m", "bourse", "up", "--processes", "3"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{health_port}/healthz").status_code == 200, "healthy", 60
        )
        alice = {"Authorization": f"Bearer {_token(env, 1)}"}
        bob = {"Authorization": f"Bearer {_token(env, 2)}"}
        _wait_for(lambda: bool(httpx.get(f"{api}/balances", headers=bob).json()), "demo balances")
        yield TracedExchange(api, namespace, alice, bob)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow
async def test_orders_over_rest_and_rabbitmq_each_leave_one_trace_through_every_process(
    exchange: TracedExchange, sink: OtlpSink
) -> None:
    api = exchange.api
    order = {"market": "btc_usd", "type": "limit"}
    async with httpx.AsyncClient() as http:
        resting = await http.post(
            f"{api}/order",
            headers=exchange.alice,
            json={**order, "side": "sell", "price": "50000", "amount": "1"},
        )
        assert resting.status_code == 201, resting.text

        # over REST: the gateway names the trace in `traceresponse`
        buy = await http.post(
            f"{api}/order",
            headers=exchange.bob,
            json={**order, "side": "buy", "price": "50000", "amount": "0.2"},
        )
    assert buy.status_code == 201, buy.text
    assert buy.json()["status"] == "executed", buy.text
    rest_trace = tracing.parse_traceparent(buy.headers["traceresponse"])
    assert rest_trace is not None

    # over RabbitMQ: the publisher's own trace context, in the message's headers
    amqp_trace_id = uuid.uuid4().hex
    settings = Settings(namespace=exchange.namespace, _env_file=None)
    publisher = await Publisher.connect(RABBITMQ_URL, amqp_topology(settings))
    try:
        body = {
            "command": "create",
            "member_id": 2,
            **order,
            "side": "buy",
            "price": "50000",
            "amount": "0.1",
        }
        await publisher.publish(
            body, "traced-1", headers={"traceparent": f"00-{amqp_trace_id}-{'ab' * 8}-01"}
        )
        reply = await publisher.reply("traced-1", timeout_s=20)
    finally:
        await publisher.close()
    assert reply.status == "accepted", reply
    assert reply.order_id is not None
    amqp_order = int(reply.order_id)

    rest_order = int(buy.json()["id"])
    for trace_id, order_id, entry in (
        (f"{rest_trace.trace_id:032x}", rest_order, "POST /api/v3/order"),
        (amqp_trace_id, amqp_order, "amqp order"),
    ):
        deadline = time.monotonic() + 20
        while True:
            try:
                check_order_trace(sink, trace_id, order_id, entry)
                break
            except (AssertionError, KeyError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
    amqp_entry = [span for span in sink.trace(amqp_trace_id) if span.name == "amqp order"]
    assert [span.parent_span_id for span in amqp_entry] == ["ab" * 8]  # the publisher's span

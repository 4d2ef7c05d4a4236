"""The service runtime against real NATS servers: the machine's and the embedded one."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js.api import StorageType
from nats.micro.request import Request

from bourse.adapters.jetstream import ensure_topology
from bourse.config.settings import Settings
from bourse.contracts.subjects import BUCKETS, ORDERS, STREAMS
from bourse.runtime.host import HEALTH_ENDPOINT, INSTANCE_KEY, ServiceHost
from bourse.runtime.process import BourseProcess
from bourse.runtime.service import Endpoint, Service, ServiceContext, StreamConsumer
from tests.conftest import free_port


class Echo(Service):
    name = "echo"
    description = "answers with what it was sent"

    def endpoints(self) -> Sequence[Endpoint]:
        return [Endpoint("echo", self.subject("echo"), self.echo)]

    async def echo(self, request: Request) -> None:
        await request.respond(request.data)

    def health(self) -> Mapping[str, Any]:
        return {"echoes": "fine"}


class Collector(Service):
    """Consumes the ORDERS stream; fails the first `fail_first` batches on purpose."""

    name = "collector"
    description = "collects order commands"
    fail_first = 0

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        self.seen: list[bytes] = []
        self.failures_left = type(self).fail_first

    def consumers(self) -> Sequence[StreamConsumer]:
        return [
            StreamConsumer(
                ORDERS,
                "collector",
                ORDERS.wildcard(self.ctx.namespace),
                self.collect,
                batch=100,
                ack_wait_s=1.0,
            )
        ]

    async def collect(self, messages: Sequence[Msg]) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise RuntimeError("failing on purpose")
        self.seen.extend(message.data for message in messages)


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_topology_is_created_once_and_is_idempotent(nc: Client, settings: Settings) -> None:
    js = nc.jetstream()
    await ensure_topology(js, settings.namespace)
    await ensure_topology(js, settings.namespace)
    for spec in STREAMS:
        info = await js.stream_info(spec.name(settings.namespace))
        assert info.config.subjects == [spec.wildcard(settings.namespace)]
        assert info.config.storage == StorageType.FILE
        assert (info.config.duplicate_window or 0) >= 60
    for bucket in BUCKETS:
        status = await (await js.key_value(bucket.name(settings.namespace))).status()
        assert status.bucket == bucket.name(settings.namespace)


async def test_endpoint_answers_and_is_discoverable_through_micro(nc: Client, settings: Settings) -> None:
    js = nc.jetstream()
    await ensure_topology(js, settings.namespace)
    host = ServiceHost(ServiceContext(settings, nc, js))
    await host.start([Echo])
    try:
        reply = await nc.request(f"{settings.namespace}.svc.echo.echo", b"ping", timeout=2)
        assert reply.data == b"ping"
        ping = json.loads((await nc.request(f"$SRV.PING.{settings.namespace}-echo", b"", timeout=2)).data)
        assert ping["name"] == f"{settings.namespace}-echo"
        stats = json.loads((await nc.request(f"$SRV.STATS.{settings.namespace}-echo", b"", timeout=2)).data)
        endpoint = stats["endpoints"][0]
        assert endpoint["num_requests"] == 1
        assert endpoint["data"]["echoes"] == "fine"
    finally:
        await host.stop()
    assert host.health()["echo"]["state"] == "stopped"


async def test_every_service_answers_on_micro_once_it_runs_with_its_instance_links_and_health(
    nc: Client, settings: Settings
) -> None:
    """Even one without endpoints: `$SRV.PING` has no responder while it starts; then its
    metadata say which process it is and where it serves, and its `health` endpoint answers."""
    js = nc.jetstream()
    await ensure_topology(js, settings.namespace)
    go = asyncio.Event()

    class Gated(Service):
        name = "gated"
        description = "starts when told to"

        async def start(self) -> None:
            await go.wait()

        def links(self) -> Mapping[str, str]:
            return {"api docs": "http://gated.invalid/docs"}

        def health(self) -> Mapping[str, Any]:
            return {"gated": "fine"}

    host = ServiceHost(ServiceContext(settings.model_copy(update={"instance": "here"}), nc, js))
    starting = asyncio.create_task(host.start([Gated]))
    ping = f"$SRV.PING.{settings.namespace}-gated"
    try:
        await asyncio.sleep(0.2)
        with pytest.raises(NoRespondersError):
            await nc.request(ping, b"", timeout=2)
        go.set()
        await starting
        answer = json.loads((await nc.request(ping, b"", timeout=2)).data)
        assert answer["metadata"] == {
            INSTANCE_KEY: "here",
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "link:api docs": "http://gated.invalid/docs",
        }
        health = json.loads((await nc.request(f"{settings.namespace}.svc.gated.health", b"", timeout=2)).data)
        assert health == {"state": "running", "gated": "fine", "ok": True}
        stats = await nc.request(f"$SRV.STATS.{settings.namespace}-gated.{answer['id']}", b"", timeout=2)
        (endpoint,) = json.loads(stats.data)["endpoints"]
        assert (endpoint["name"], endpoint["num_requests"]) == (HEALTH_ENDPOINT, 1)
        assert endpoint["data"] == health
    finally:
        go.set()
        await starting
        await host.stop()


async def test_stream_consumer_receives_every_message_once_in_order(nc: Client, settings: Settings) -> None:
    js = nc.jetstream()
    await ensure_topology(js, settings.namespace)
    acks = await asyncio.gather(
        *(js.publish(ORDERS.subject(settings.namespace, 0), str(i).encode()) for i in range(500))
    )
    assert len({ack.seq for ack in acks}) == 500
    host = ServiceHost(ServiceContext(settings, nc, js))
    await host.start([Collector])
    collector = host.running[0].service
    assert isinstance(collector, Collector)
    await wait_for(lambda: len(collector.seen) >= 500)
    await host.stop()
    assert collector.seen == [str(i).encode() for i in range(500)]
    info = await js.consumer_info(ORDERS.name(settings.namespace), "collector")
    assert info.num_ack_pending == 0
    assert info.num_pending == 0


async def test_failed_batch_is_redelivered_not_lost(nc: Client, settings: Settings) -> None:
    js = nc.jetstream()
    await ensure_topology(js, settings.namespace)
    for i in range(50):
        await js.publish(ORDERS.subject(settings.namespace, 0), str(i).encode())

    class FlakyCollector(Collector):
        fail_first = 2

    host = ServiceHost(ServiceContext(settings, nc, js))
    await host.start([FlakyCollector])
    collector = host.running[0].service
    assert isinstance(collector, FlakyCollector)
    try:
        await wait_for(lambda: len(collector.seen) >= 50, timeout=20)
        assert sorted(collector.seen, key=int) == [str(i).encode() for i in range(50)]
        assert host.running[0].loops[0].failures == 2
    finally:
        await host.stop()


async def test_health_endpoint_reports_every_service(nc: Client, settings: Settings) -> None:
    process = BourseProcess(
        settings.model_copy(update={"health_port": free_port()}), [Echo], embedded_nats=False
    )
    await process.start()
    try:
        async with httpx.AsyncClient() as client:
            response = await client.get(process.links()["health"])
        assert response.status_code == 200
        body = response.json()
        assert body["nats"] == "connected"
        assert body["services"]["echo"]["ok"] is True
    finally:
        await process.stop()


async def test_a_consumer_stuck_on_a_batch_past_the_stall_threshold_makes_its_service_not_ok(
    nc: Client, settings: Settings
) -> None:
    """The service's own health says ok; the runtime still reports the stuck consumer."""
    js = nc.jetstream()
    await ensure_topology(js, settings.namespace)
    release = asyncio.Event()
    entered = asyncio.Event()

    class StuckCollector(Collector):
        async def collect(self, messages: Sequence[Msg]) -> None:
            entered.set()
            await release.wait()  # a server that never answers
            await super().collect(messages)

        def health(self) -> Mapping[str, Any]:
            return {"ok": True}

    host = ServiceHost(ServiceContext(settings.model_copy(update={"consumer_stall_s": 0.5}), nc, js))
    await host.start([StuckCollector])
    try:
        assert host.health()["collector"]["ok"] is True
        await js.publish(ORDERS.subject(settings.namespace, 0), b"1")
        await asyncio.wait_for(entered.wait(), 10)
        assert host.health()["collector"]["ok"] is True, "not stalled yet: just handed over"
        await wait_for(lambda: not host.health()["collector"]["ok"])
        facts = host.health()["collector"]
        assert facts["stalled"] == ["collector"]
        consumer = facts["consumers"][0]
        assert consumer["stalled"] is True
        assert consumer["handling_s"] > 0.5
        release.set()
        await wait_for(lambda: host.health()["collector"]["ok"])
        assert host.health()["collector"]["consumers"][0]["handling_s"] == 0.0
        collector = host.running[0].service
        assert isinstance(collector, StuckCollector)
        assert collector.seen == [b"1"]
    finally:
        release.set()
        await host.stop()

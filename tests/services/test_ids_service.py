"""Worker id leases in NATS KV and the `ids` service, against real NATS servers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import KeyWrongLastSequenceError

from bourse.adapters.id_leases import (
    MAX_IDS_PER_REQUEST,
    IdsRequestFailed,
    LeasedIdGenerator,
    LeaseLost,
    LeaseRecord,
    NoFreeWorkerId,
    WorkerIdLease,
    lease_key,
    leased_id_generator,
    request_ids,
    wall_clock_ms,
)
from bourse.adapters.jetstream import ensure_topology
from bourse.config.settings import Settings
from bourse.contracts.subjects import ID_LEASES
from bourse.domain.order_ids import id_timestamp_ms, id_worker_id
from bourse.runtime.host import ServiceHost
from bourse.runtime.nats_server import EmbeddedNatsServer
from bourse.runtime.service import ServiceContext
from bourse.services.ids import Ids
from tests.conftest import free_port
from tests.runtime.test_service_runtime import wait_for

SHORT_TTL_S = 1.5


@pytest.fixture
async def js(nc: Client, settings: Settings) -> JetStreamContext:
    js = nc.jetstream()
    await ensure_topology(js, settings.namespace)
    return js


@pytest.fixture
async def short_ttl_js(nc: Client, settings: Settings) -> JetStreamContext:
    """The lease bucket with a TTL of 1.5 s, so expiry and renewal happen within a test."""
    js = nc.jetstream()
    await js.create_key_value(KeyValueConfig(bucket=ID_LEASES.name(settings.namespace), ttl=SHORT_TTL_S))
    return js


async def test_two_leases_get_different_worker_ids(js: JetStreamContext, settings: Settings) -> None:
    leases = await asyncio.gather(*(WorkerIdLease.acquire(js, settings.namespace) for _ in range(8)))
    try:
        assert len({lease.worker_id for lease in leases}) == 8
        kv = await js.key_value(ID_LEASES.name(settings.namespace))
        for lease in leases:
            entry = await kv.get(lease_key(lease.worker_id))
            assert msgspec.json.decode(entry.value or b"", type=LeaseRecord).state == "held"
    finally:
        await asyncio.gather(*(lease.release() for lease in leases))


async def test_a_taken_worker_id_is_not_leased_again(js: JetStreamContext, settings: Settings) -> None:
    lease = await WorkerIdLease.acquire(js, settings.namespace, worker_ids=[42, 43])
    try:
        second = await WorkerIdLease.acquire(js, settings.namespace, worker_ids=[42, 43])
        assert {lease.worker_id, second.worker_id} == {42, 43}
        with pytest.raises(NoFreeWorkerId):
            await WorkerIdLease.acquire(js, settings.namespace, worker_ids=[42, 43])
        kv = await js.key_value(ID_LEASES.name(settings.namespace))
        with pytest.raises(KeyWrongLastSequenceError):
            await kv.create(lease_key(lease.worker_id), b"{}")
        await second.release()
    finally:
        await lease.release()


async def test_renewal_keeps_the_lease_past_the_ttl(
    short_ttl_js: JetStreamContext, settings: Settings
) -> None:
    async with leased_id_generator(short_ttl_js, settings.namespace, relet=False) as ids:
        assert ids.lease.renew_every_s == pytest.approx(SHORT_TTL_S / 3)
        first = ids.next_id()
        await asyncio.sleep(SHORT_TTL_S * 2.5)
        assert ids.next_id() > first
        assert ids.lease.renewals >= 5
        assert not ids.lease.lost
        kv = await short_ttl_js.key_value(ID_LEASES.name(settings.namespace))
        assert (await kv.get(ids.lease.key)).revision == ids.lease.revision


async def test_deleted_lease_stops_issuing_ids_at_the_next_renewal(
    js: JetStreamContext, settings: Settings
) -> None:
    async with leased_id_generator(js, settings.namespace, relet=False) as ids:
        ids.next_id()
        kv = await js.key_value(ID_LEASES.name(settings.namespace))
        await kv.delete(ids.lease.key)
        with pytest.raises(LeaseLost, match="changed"):
            await ids.lease.renew()
        with pytest.raises(LeaseLost, match=f"worker id {ids.worker_id} lease lost"):
            ids.next_id()


async def test_lease_taken_over_by_another_client_stops_issuing_ids(
    short_ttl_js: JetStreamContext, settings: Settings
) -> None:
    async with leased_id_generator(short_ttl_js, settings.namespace, relet=False, renew_every_s=0.1) as ids:
        ids.next_id()
        kv = await short_ttl_js.key_value(ID_LEASES.name(settings.namespace))
        await kv.put(ids.lease.key, msgspec.json.encode(LeaseRecord(owner="intruder")))
        await wait_for(lambda: ids.lease.lost, timeout=3)
        with pytest.raises(LeaseLost):
            ids.next_id()
        assert not ids.health()["ok"]


async def test_lease_is_lost_when_nats_is_unreachable_before_it_expires(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path, free_port(), free_port(), sync_always=False)
    await server.start()

    async def quiet(_exc: Exception) -> None:
        pass

    client = await nats.connect(
        server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1, error_cb=quiet
    )
    try:
        js = client.jetstream(timeout=1.0)
        await js.create_key_value(KeyValueConfig(bucket=ID_LEASES.name("lost"), ttl=SHORT_TTL_S))
        ids = await LeasedIdGenerator.start(js, "lost", relet=False)
        ids.next_id()
        await server.stop()
        stopped_at = asyncio.get_running_loop().time()

        async def issue_until_refused() -> None:
            while True:
                ids.next_id()
                await asyncio.sleep(0.01)

        with pytest.raises(LeaseLost):
            await issue_until_refused()
        # No id after the moment the server could hand the worker id to someone else.
        assert asyncio.get_running_loop().time() - stopped_at < SHORT_TTL_S
        await ids.close()
    finally:
        with contextlib.suppress(Exception):  # the server is gone: closing may find a reset socket
            await client.close()
        await server.stop()


async def test_lost_lease_is_replaced_and_ids_keep_increasing(
    short_ttl_js: JetStreamContext, settings: Settings
) -> None:
    async with leased_id_generator(short_ttl_js, settings.namespace, renew_every_s=0.1) as ids:
        before = ids.next_ids(100)
        first_worker = ids.worker_id
        kv = await short_ttl_js.key_value(ID_LEASES.name(settings.namespace))
        await kv.delete(ids.lease.key)
        await wait_for(lambda: ids.leases == 2, timeout=5)
        after = ids.next_ids(100)
        assert after[0] > before[-1]
        assert ids.worker_id == id_worker_id(after[0])
        assert ids.health()["ok"]
        assert first_worker == id_worker_id(before[0])


async def test_released_worker_id_is_reused_only_after_the_previous_high_water_mark(
    js: JetStreamContext, settings: Settings
) -> None:
    ahead = 60_000  # the first holder's clock runs a minute ahead of the second's
    async with leased_id_generator(
        js, settings.namespace, clock_ms=lambda: wall_clock_ms() + ahead, relet=False
    ) as first:
        worker_id = first.worker_id
        issued = first.next_ids(10)
    kv = await js.key_value(ID_LEASES.name(settings.namespace))
    record = msgspec.json.decode((await kv.get(lease_key(worker_id))).value or b"", type=LeaseRecord)
    assert record.state == "released"
    assert record.last_ms == id_timestamp_ms(issued[-1])

    lease = await WorkerIdLease.acquire(js, settings.namespace, worker_ids=[worker_id])
    successor = LeasedIdGenerator(js, settings.namespace, lease, relet=False)
    try:
        assert lease.inherited_last_ms == record.last_ms
        assert successor.next_id() > issued[-1]
    finally:
        await successor.close()


async def test_free_worker_ids_are_preferred_to_released_ones(
    js: JetStreamContext, settings: Settings
) -> None:
    first = await WorkerIdLease.acquire(js, settings.namespace, worker_ids=[1])
    await first.release(last_ms=123)
    second = await WorkerIdLease.acquire(js, settings.namespace, worker_ids=[1, 2])
    third = await WorkerIdLease.acquire(js, settings.namespace, worker_ids=[1, 2])
    try:
        assert (second.worker_id, second.inherited_last_ms) == (2, 0)
        assert (third.worker_id, third.inherited_last_ms) == (1, 123)
    finally:
        await second.release()
        await third.release()


async def test_released_lease_refuses_ids(js: JetStreamContext, settings: Settings) -> None:
    async with leased_id_generator(js, settings.namespace) as ids:
        pass
    with pytest.raises(LeaseLost, match="released"):
        ids.next_id()


@pytest.fixture
async def ids_host(nc: Client, js: JetStreamContext, settings: Settings) -> AsyncIterator[ServiceHost]:
    host = ServiceHost(ServiceContext(settings, nc, js))
    await host.start([Ids])
    yield host
    await host.stop()


async def test_next_endpoint_returns_unique_increasing_ids(
    nc: Client, settings: Settings, ids_host: ServiceHost
) -> None:
    batches = await asyncio.gather(*(request_ids(nc, settings.namespace, 500) for _ in range(20)))
    everything = list(itertools.chain.from_iterable(batches))
    assert len(everything) == len(set(everything)) == 10_000
    assert all(batch == sorted(batch) for batch in batches)
    single = await nc.request(f"{settings.namespace}.svc.ids.next", b"", timeout=2)
    assert len(msgspec.json.decode(single.data, type=list[int])) == 1
    bare = await nc.request(f"{settings.namespace}.svc.ids.next", b"3", timeout=2)
    assert len(msgspec.json.decode(bare.data, type=list[int])) == 3
    assert ids_host.health()["ids"]["ok"] is True


@pytest.mark.parametrize("body", [b"0", b'{"count": -1}', str(MAX_IDS_PER_REQUEST + 1).encode(), b"x"])
async def test_next_endpoint_rejects_a_bad_count(
    nc: Client, settings: Settings, ids_host: ServiceHost, body: bytes
) -> None:
    reply = await nc.request(f"{settings.namespace}.svc.ids.next", body, timeout=2)
    assert (reply.headers or {}).get("Nats-Service-Error-Code") == "400"
    with pytest.raises(IdsRequestFailed, match="count must be"):
        await request_ids(nc, settings.namespace, 0)


class IdsWithoutRelet(Ids):
    relet = False


async def test_next_endpoint_answers_503_when_the_lease_is_lost(
    nc: Client, js: JetStreamContext, settings: Settings
) -> None:
    host = ServiceHost(ServiceContext(settings, nc, js))
    await host.start([IdsWithoutRelet])
    try:
        service = host.running[0].service
        assert isinstance(service, Ids)
        assert service.ids is not None
        kv = await js.key_value(ID_LEASES.name(settings.namespace))
        await kv.delete(service.ids.lease.key)
        with pytest.raises(LeaseLost):
            await service.ids.lease.renew()
        with pytest.raises(IdsRequestFailed, match="lease lost") as failure:
            await request_ids(nc, settings.namespace, 1)
        assert failure.value.code == "503"
        assert host.health()["ids"]["ok"] is False
    finally:
        await host.stop()

"""The order intake against a real nats-server that goes away or stops answering: every answer
it gives is true (issue 10, item 2).

- NATS down for the whole wait: `NotSent`, and nothing is stored when NATS comes back (nats-py
  would have buffered the publish and sent it on reconnect).
- NATS frozen (SIGSTOP: the connection stays, no ack comes): `OutcomeUnknown`; the message the
  server stores once it runs again carries a deadline it missed, and accounts refuses it.
- A publish retried within the deadline is stored once (the same `Nats-Msg-Id`).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from bourse.adapters.jetstream import ensure_topology
from bourse.adapters.order_intake import OrderIntake
from bourse.application.accounts_stage import AccountsShard
from bourse.application.catalog import default_markets_file, load_catalog
from bourse.application.ports import NotSent, OutcomeUnknown
from bourse.contracts.messages import ACCOUNTS_BATCH_DECODER
from bourse.contracts.subjects import ORDERS
from bourse.domain.orders import OrderType, PlaceOrder, RejectReason, Side
from bourse.domain.values import Amount, MemberId, OrderId, Price
from bourse.runtime.nats_server import EmbeddedNatsServer
from tests.conftest import free_port

NS = "faults"
GIVE_UP_S = 0.6
SKEW_S = 0.2


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedNatsServer]:
    running = EmbeddedNatsServer(tmp_path / "nats", free_port(), free_port())
    await running.start()
    yield running
    if running.pid is not None:
        os.kill(running.pid, signal.SIGCONT)
    await running.stop()


@pytest.fixture
async def client(server: EmbeddedNatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    await ensure_topology(nc.jetstream(), NS)
    yield nc
    await nc.close()


@pytest.fixture
async def intake(client: Client) -> AsyncIterator[OrderIntake]:
    running = OrderIntake(client, NS, 1, submit_timeout_s=GIVE_UP_S, clock_skew_s=SKEW_S)
    await running.start()
    yield running
    await running.stop()


def _order(order_id: int) -> PlaceOrder:
    return PlaceOrder(
        OrderId(order_id), MemberId(1), "btc_usd", Side.BUY, OrderType.LIMIT, Amount(10_000), Price(5_000_000)
    )


async def _stored(nc: Client) -> int:
    return (await nc.jetstream().stream_info(ORDERS.name(NS))).state.messages


async def _reconnected(nc: Client) -> None:
    for _ in range(200):
        if nc.is_connected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the client did not reconnect")


async def test_a_command_refused_while_nats_is_down_is_never_stored(
    server: EmbeddedNatsServer, client: Client, intake: OrderIntake
) -> None:
    await intake.submit(_order(1))
    await server.stop()
    with pytest.raises(NotSent):
        await intake.submit(_order(2))
    await server.start()
    await _reconnected(client)
    await asyncio.sleep(0.3)  # what nats-py had buffered would be flushed by now
    assert await _stored(client) == 1
    await intake.submit(_order(3))  # and the intake works again
    assert await _stored(client) == 2


async def test_an_unacknowledged_command_is_unknown_and_refused_by_accounts_when_stored_late(
    server: EmbeddedNatsServer, client: Client, intake: OrderIntake
) -> None:
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        with pytest.raises(OutcomeUnknown) as unknown:
            await intake.submit(_order(7))
        await asyncio.sleep(SKEW_S + 0.3)  # past the message's deadline
    finally:
        os.kill(server.pid, signal.SIGCONT)
    for _ in range(100):  # the frozen server now reads what was sent meanwhile
        if await _stored(client):
            break
        await asyncio.sleep(0.05)
    msg = await client.jetstream().get_msg(ORDERS.name(NS), 1)
    assert msg.data is not None
    assert msg.time is not None
    batch = ACCOUNTS_BATCH_DECODER.decode(msg.data)
    stored_at = int(msg.time.timestamp() * 1e9)
    assert batch.deadline_ns is not None
    assert stored_at > batch.deadline_ns
    assert unknown.value.decided_by_ns == batch.deadline_ns
    shard = AccountsShard.empty(0, load_catalog(default_markets_file()), record_entries=True)
    out = shard.process(1, batch, stored_at)
    assert [(d.order_id, d.reason) for d in out.decisions] == [(7, RejectReason.EXPIRED)]
    assert out.match == {}


async def test_a_publish_retried_within_its_deadline_is_stored_once(
    server: EmbeddedNatsServer, client: Client, intake: OrderIntake
) -> None:
    """A first attempt times out while the server is frozen; it is sent again once the server
    runs, and JetStream keeps one of the two by their shared message id."""
    slow = OrderIntake(client, NS, 1, submit_timeout_s=4.0, clock_skew_s=SKEW_S, attempt_timeout_s=0.5)
    await slow.start()
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        submitted = asyncio.create_task(slow.submit(_order(9)))
        await asyncio.sleep(1.2)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    await submitted  # acknowledged within its 4 s
    assert slow.publish_retries >= 2
    await asyncio.sleep(0.3)
    assert await _stored(client) == 1
    await slow.stop()

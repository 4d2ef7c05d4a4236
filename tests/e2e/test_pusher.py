"""The pusher in the whole exchange (every service of `bourse up` in this process, real NATS),
driven by WebSocket clients as a user's would be: a private client sees exactly its own orders'
lifecycle and balance changes, in order, with consecutive sequences, while another member
trades; a depth client that applies the updates to its snapshot holds the REST depth once the
flow settles; bad frames get a clear error or close code and change nothing; a slow client is
cut and the others keep receiving; a client that reconnects to another instance resumes its
private feed without missing an update."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from nats.aio.client import Client
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bourse.config.settings import Settings
from bourse.contracts.messages import TradesUpdate, encode
from bourse.contracts.subjects import TRADES_CHANNEL, market_data_subject
from bourse.domain.order_views import PublicTrade
from bourse.domain.orders import Side
from bourse.domain.values import Amount, Price, QuoteUnits, TradeId
from bourse.runtime.host import ServiceHost
from bourse.runtime.service import ServiceContext
from bourse.services.pusher import Pusher
from tests.conftest import free_port
from tests.e2e.conftest import started
from tests.e2e.harness import SERVICES, Exchange

WITH_PUSHER = [*SERVICES[:-1], Pusher, SERVICES[-1]]


@pytest.fixture
async def exchange(settings: Settings, nc: Client) -> AsyncIterator[Exchange]:
    running = await started(
        settings.model_copy(update={"http_port": free_port(), "demo_seed": True}), nc, WITH_PUSHER
    )
    yield running
    await running.stop()


def pusher_of(exchange: Exchange) -> Pusher:
    return exchange.service(Pusher)


class Ws:
    """A client: frames sent as JSON, received frames decoded and kept in order."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.frames: list[dict[str, Any]] = []

    async def send(self, **frame: Any) -> None:
        await self.conn.send(json.dumps(frame))

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.conn.recv(), timeout))
        self.frames.append(frame)
        return frame

    async def until(self, check: Any, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame passing `check` (heartbeats and others on the way are kept)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.next(max(0.01, deadline - loop.time()))
            if check(frame):
                return frame

    async def drain(self, quiet_s: float = 0.5) -> None:
        """Read until nothing comes for `quiet_s`."""
        with contextlib.suppress(TimeoutError):
            while True:
                await self.next(quiet_s)


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[Ws]:
    async with connect(url, open_timeout=5, max_size=2**22) as conn:
        yield Ws(conn)


async def test_a_private_client_sees_exactly_its_own_orders_and_balances_in_order(
    exchange: Exchange,
) -> None:
    alice, bob = exchange.member(1), exchange.member(2)
    url = pusher_of(exchange).url
    async with client(url) as ws:
        await ws.send(op="auth", token=alice.token, id=1)
        authenticated = await ws.next()
        assert (authenticated["type"], authenticated["member_id"]) == ("authenticated", 1)
        await ws.send(op="subscribe", channels=["orders", "my_trades", "balances"], id=2)
        assert (await ws.next())["type"] == "subscribed"

        order_id = await alice.limit("sell", "0.5", "50000")
        await bob.limit("buy", "0.2", "50100")  # trades 0.2 with alice
        await bob.limit("buy", "0.1", "49000")  # bob's alone: alice must not see it
        await alice.cancel(order_id)
        await exchange.settle()
        await ws.until(lambda f: f.get("channel") == "orders" and f["data"]["event"] == "closed")
        await ws.drain()

    mine = [f for f in ws.frames if f.get("channel") in ("orders", "my_trades", "balances")]
    orders = [f for f in mine if f["channel"] == "orders"]
    assert {f["data"]["order_id"] for f in orders} == {order_id}
    assert [f["data"]["event"] for f in orders] == ["accepted", "updated", "closed"]
    assert orders[1]["data"]["executed"] == "0.200000"
    assert (orders[2]["data"]["status"], orders[2]["data"]["reason"]) == ("cancelled", "cancelled")
    trades = [f["data"] for f in mine if f["channel"] == "my_trades"]
    assert [(t["role"], t["side"], t["price"], t["amount"]) for t in trades] == [
        ("maker", "sell", "50000.00", "0.200000")
    ]
    balances = [f["data"] for f in mine if f["channel"] == "balances"]
    assert balances, "balance changes are pushed"
    final = {b["currency"]: (Decimal(b["available"]), Decimal(b["locked"])) for b in balances}
    assert final["btc"] == (await alice.balances())["btc"]
    for channel in ("orders", "my_trades", "balances"):
        seqs = [f["seq"] for f in mine if f["channel"] == channel]
        assert seqs == list(range(1, len(seqs) + 1)), channel
    positions = [(f["position"]["events"], f["position"]["accounts"]) for f in mine]
    assert positions == sorted(positions)  # what a client resumes from only grows


def levels(book: dict[str, dict[Decimal, Decimal]], data: dict[str, Any]) -> None:
    if data["snapshot"]:
        book["bids"], book["asks"] = {}, {}
    for side in ("bids", "asks"):
        for price, amount in data[side]:
            if Decimal(amount):
                book[side][Decimal(price)] = Decimal(amount)
            else:
                book[side].pop(Decimal(price), None)


async def test_a_depth_client_applying_updates_to_its_snapshot_holds_the_rest_depth(
    exchange: Exchange,
) -> None:
    alice, bob = exchange.member(1), exchange.member(2)
    await alice.limit("sell", "0.4", "50500")  # before the client: in its snapshot
    await exchange.settle()
    url = pusher_of(exchange).url
    async with client(url) as ws:
        await ws.send(op="subscribe", channels=["depth.btc_usd@100ms", "trades.btc_usd@100ms"], id=1)
        assert (await ws.next())["channels"] == ["depth.btc_usd@100ms", "trades.btc_usd@100ms"]
        for i in range(6):
            await alice.limit("sell", "0.1", str(50_000 + 100 * i))
            await bob.limit("buy", "0.05", str(49_000 + 100 * i))
        await bob.limit("buy", "0.25", "50200")  # crosses three asks
        await exchange.settle()
        await asyncio.sleep(0.3)
        await ws.drain()
    book: dict[str, dict[Decimal, Decimal]] = {"bids": {}, "asks": {}}
    sequence = -1
    depth = [f for f in ws.frames if f.get("channel") == "depth.btc_usd@100ms"]
    assert depth[0]["data"]["snapshot"]
    assert [f["seq"] for f in depth] == list(range(depth[0]["seq"], depth[0]["seq"] + len(depth)))
    for frame in depth:
        data = frame["data"]
        if not data["snapshot"] and data["sequence"] <= sequence:
            continue
        assert data["snapshot"] or data["prev_sequence"] <= sequence, "a gap"
        levels(book, data)
        sequence = data["sequence"]
    response = await exchange.http.get("/markets/btc_usd/depth", params={"limit": 1000})
    rest = response.json()
    assert book == {
        "bids": {Decimal(p): Decimal(a) for p, a in rest["bids"]},
        "asks": {Decimal(p): Decimal(a) for p, a in rest["asks"]},
    }
    trades = [t for f in ws.frames if f.get("channel") == "trades.btc_usd@100ms" for t in f["data"]["trades"]]
    assert len(trades) == 3


async def test_bad_frames_get_a_clear_error_or_close_code_and_change_nothing(exchange: Exchange) -> None:
    url = pusher_of(exchange).url
    async with client(url) as ws:
        for frame, code in (
            ("not json", "invalid_frame"),
            (json.dumps({"op": "dance"}), "invalid_frame"),
            (json.dumps({"op": "subscribe", "channels": ["candles.btc_usd"]}), "unknown_channel"),
            (json.dumps({"op": "subscribe", "channels": ["trades.doge_usd"]}), "unknown_market"),
            (json.dumps({"op": "subscribe", "channels": ["ticker.btc_usd@100ms"]}), "unknown_speed"),
            (json.dumps({"op": "subscribe", "channels": ["orders"]}), "not_authenticated"),
            (json.dumps({"op": "auth", "token": "not.a.token"}), "malformed_token"),  # as REST says it
        ):
            await ws.conn.send(frame)
            answer = await ws.until(lambda f: f.get("type") == "error")
            assert answer["code"] == code, (frame, answer)
        await ws.send(op="ping", id=7)
        assert (await ws.until(lambda f: f.get("type") == "pong"))["id"] == 7  # still served
        assert pusher_of(exchange).feeds.topics == {}  # nothing was subscribed
        await ws.conn.send("x" * (1 << 20))  # 1 MB: over the frame limit
        with pytest.raises(ConnectionClosed) as closed:
            await ws.until(lambda f: False)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009


class Stalled(WSListener):
    """A client that stops reading once subscribed: its socket fills, then the server's buffer."""

    def __init__(self) -> None:
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        sock = transport.underlying_transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        transport.send(WSMsgType.TEXT, b'{"op": "subscribe", "channels": ["trades.btc_usd@100ms"]}')

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT and b"subscribed" in frame.get_payload_as_bytes():
            transport.underlying_transport.pause_reading()


async def test_a_slow_client_is_cut_and_the_others_keep_receiving(exchange: Exchange) -> None:
    pusher = pusher_of(exchange)
    pusher.max_buffered = 256 * 1024
    ns = exchange.settings.namespace
    stalled = Stalled()
    _, _ = await ws_connect(lambda: stalled, pusher.url)
    async with client(pusher.url) as ws:
        await ws.send(op="subscribe", channels=["trades.btc_usd@100ms"], id=1)
        await ws.next()
        trades = [
            PublicTrade(
                TradeId(i), "btc_usd", Price(5_000_000), Amount(1), QuoteUnits(5_000_000), Side.BUY, 0
            )
            for i in range(2_000)
        ]
        subject = market_data_subject(ns, TRADES_CHANNEL, "btc_usd")
        received = 0
        for seq in range(1, 80):  # ~150 KB of JSON per 100 ms message
            await exchange.nc.publish(subject, encode(TradesUpdate("btc_usd", seq, 0, trades)))
            await asyncio.sleep(0.02)
            with contextlib.suppress(TimeoutError):
                while True:
                    frame = await ws.next(0.001)
                    received += len(frame.get("data", {}).get("trades", []))
            if pusher.slow_dropped:
                break
        assert pusher.slow_dropped == 1
        # cut by the server (the stalled peer, not reading, may never see it): one client left
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while len(pusher.clients) > 1:
            assert loop.time() < deadline, "the slow client was not disconnected"
            await asyncio.sleep(0.05)
        await exchange.nc.publish(subject, encode(TradesUpdate("btc_usd", 100, 0, trades[:3])))
        frame = await ws.until(lambda f: f.get("channel") == "trades.btc_usd@100ms")
        assert frame["data"]["trades"]  # the reading client is still served
        assert received > 0


async def test_a_client_resumes_its_private_feed_on_another_instance_without_missing_an_update(
    exchange: Exchange,
) -> None:
    alice, bob = exchange.member(1), exchange.member(2)
    first = pusher_of(exchange)
    settings = exchange.settings.model_copy(update={"pusher_port": 0})
    second_host = ServiceHost(ServiceContext(settings, exchange.nc, exchange.nc.jetstream()))
    await second_host.start([Pusher])
    second = second_host.running[0].service
    assert isinstance(second, Pusher)
    try:
        async with client(first.url) as ws:
            await ws.send(op="auth", token=alice.token, id=1)
            await ws.next()
            await ws.send(op="subscribe", channels=["orders", "balances", "my_trades"], id=2)
            await ws.next()
            kept = await alice.limit("sell", "0.3", "51000")
            await ws.until(lambda f: f.get("channel") == "orders")
            await ws.drain()
        seen = [f for f in ws.frames if "channel" in f and "position" in f]
        last = seen[-1]["position"]
        # while away: a fill, a new order, a cancel
        await bob.limit("buy", "0.1", "51000")
        other = await alice.limit("buy", "0.01", "40000")
        await alice.cancel(other)
        await exchange.settle()
        async with client(second.url) as ws2:
            await ws2.send(op="auth", token=alice.token, id=3, resume=last)
            assert (await ws2.next())["type"] == "authenticated"
            await ws2.until(lambda f: f.get("channel") == "orders" and f["data"]["event"] == "closed")
            await bob.limit("buy", "0.05", "51000")  # live, after the replay
            await ws2.until(lambda f: f.get("channel") == "my_trades" and f["data"]["amount"] == "0.050000")
            await ws2.drain()
        missed = [
            (f["channel"], f["data"].get("event"), f["data"].get("order_id"))
            for f in ws2.frames
            if "channel" in f and "position" in f
        ]
        orders = [(event, oid) for channel, event, oid in missed if channel == "orders"]
        assert orders == [
            ("updated", kept),
            ("accepted", other),
            ("closed", other),
            ("updated", kept),
        ]
        trades = [f["data"]["amount"] for f in ws2.frames if f.get("channel") == "my_trades"]
        assert trades == ["0.100000", "0.050000"]
        for channel in ("orders", "my_trades", "balances"):
            seqs = [f["seq"] for f in ws2.frames if f.get("channel") == channel]
            assert seqs == list(range(1, len(seqs) + 1))
    finally:
        await second_host.stop()


async def test_cancel_on_disconnect_cancels_the_members_open_orders_when_its_last_such_connection_drops(
    exchange: Exchange,
) -> None:
    alice = exchange.member(1)
    url = pusher_of(exchange).url
    first = await alice.limit("sell", "0.1", "60000")
    async with client(url) as keeper, client(url) as ws:
        for conn in (keeper, ws):
            await conn.send(op="auth", token=alice.token, id=1)
            await conn.next()
        await ws.send(op="cancel_on_disconnect", enabled=True, id=2)
        assert await ws.until(lambda f: f.get("type") == "cancel_on_disconnect") == {
            "type": "cancel_on_disconnect", "id": 2, "enabled": True
        }  # fmt: skip
        second = await alice.limit("buy", "0.1", "40000")
    # the opted-in connection and the other one dropped: every open order is cancelled
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while {(await alice.order(oid))["status"] for oid in (first, second)} != {"cancelled"}:
        statuses = [(await alice.order(oid))["status"] for oid in (first, second)]
        assert loop.time() < deadline, (statuses, pusher_of(exchange).health())
        await asyncio.sleep(0.1)
    assert pusher_of(exchange).cancelled_on_disconnect == 2


async def test_an_expired_token_ends_the_private_subscriptions_with_a_clear_message(
    exchange: Exchange,
) -> None:
    token = exchange.issuer.issue(1, ttl_s=2)
    async with client(pusher_of(exchange).url) as ws:
        await ws.send(op="auth", token=token, id=1)
        await ws.next()
        await ws.send(op="subscribe", channels=["orders"], id=2)
        await ws.next()
        expired = await ws.until(lambda f: f.get("type") == "error", timeout=10.0)
        assert expired["code"] == "token_expired"
        await ws.send(op="subscribe", channels=["balances"], id=3)
        assert (await ws.until(lambda f: f.get("type") == "error"))["code"] == "not_authenticated"


async def test_heartbeats_flow_and_a_silent_connection_without_subscriptions_is_closed_idle(
    exchange: Exchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Pusher, "HEARTBEAT_S", 0.2)
    settings = exchange.settings.model_copy(update={"pusher_port": 0, "pusher_idle_timeout_s": 0.5})
    host = ServiceHost(ServiceContext(settings, exchange.nc, exchange.nc.jetstream()))
    await host.start([Pusher])
    pusher = host.running[0].service
    assert isinstance(pusher, Pusher)
    try:
        async with client(pusher.url) as busy, client(pusher.url) as idle:
            await busy.send(op="subscribe", channels=["ticker.btc_usd"], id=1)
            assert (await busy.until(lambda f: f.get("type") == "heartbeat"))["time"] > 0
            with pytest.raises(ConnectionClosed) as closed:
                await idle.until(lambda f: False, timeout=5.0)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "idle")
            await busy.send(op="ping", id=2)
            assert (await busy.until(lambda f: f.get("type") == "pong"))["id"] == 2
    finally:
        await host.stop()


async def test_a_resume_inside_a_stream_message_sends_the_rest_of_it(exchange: Exchange) -> None:
    """A fill that completes an order is one EVENTS message holding three of the maker's
    messages (`my_trades`, the `orders` update, its close): a client that processed only the
    first resumes with its position (its `events_part`) and gets the other two, once."""
    alice, bob = exchange.member(1), exchange.member(2)
    pusher = pusher_of(exchange)
    async with client(pusher.url) as ws:
        await ws.send(op="auth", token=alice.token, id=1)
        await ws.next()
        await ws.send(op="subscribe", channels=["orders", "my_trades"], id=2)
        await ws.next()
        order_id = await alice.limit("sell", "0.2", "52000")
        await bob.limit("buy", "0.2", "52000")
        fill = await ws.until(lambda f: f.get("channel") == "my_trades")
    position = fill["position"]
    assert position["events_part"] >= 1  # not the last of its stream message
    async with client(pusher.url) as ws2:
        await ws2.send(op="auth", token=alice.token, id=3, resume=position)
        await ws2.next()
        rest = await ws2.until(lambda f: f.get("channel") in ("orders", "my_trades"))
        assert (rest["channel"], rest["data"]["event"]) == ("orders", "updated")
        assert rest["data"]["order_id"] == order_id
        assert rest["position"]["events"] == position["events"]
        assert rest["position"]["events_part"] == position["events_part"] + 1
        closed = await ws2.until(lambda f: f.get("channel") in ("orders", "my_trades"))
        assert (closed["data"]["event"], closed["data"]["status"]) == ("closed", "executed")
        assert closed["position"] == {**position, "events_part": 0}  # the last of the stream message
        await ws2.drain()
    assert not [f for f in ws2.frames if f.get("channel") == "my_trades"]  # nothing twice


async def test_subscribing_again_to_a_depth_channel_sends_a_fresh_snapshot(exchange: Exchange) -> None:
    alice = exchange.member(1)
    await alice.limit("sell", "0.3", "55000")
    await exchange.settle()
    async with client(pusher_of(exchange).url) as ws:
        await ws.send(op="subscribe", channels=["depth.btc_usd@100ms"], id=1)
        await ws.next()
        first = await ws.until(lambda f: f.get("channel") == "depth.btc_usd@100ms")
        assert first["data"]["snapshot"]
        await ws.send(op="subscribe", channels=["depth.btc_usd@100ms"], id=2)
        again = await ws.until(lambda f: f.get("channel") == "depth.btc_usd@100ms")
        assert again["data"]["snapshot"]
        assert again["data"]["asks"] == first["data"]["asks"]
        assert again["seq"] == first["seq"]  # the state as of the last message: no gap, no new number
        assert len(pusher_of(exchange).feeds.topics) == 1


@contextlib.asynccontextmanager
async def pusher_process(settings: Settings) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """`bourse run pusher` as its own process on the test's NATS and namespace."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("BOURSE_")}
    env.update(
        BOURSE_NATS_URL=settings.nats_servers[0],
        BOURSE_NAMESPACE=settings.namespace,
        BOURSE_DATA_DIR=str(settings.data_dir),
        BOURSE_PUSHER_PORT=str(port),
        BOURSE_HEALTH_PORT="0",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bourse",
        "run",
        "pusher",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0
        while True:
            try:
                async with connect(url, open_timeout=1):
                    break
            except OSError:
                assert loop.time() < deadline, "the pusher process did not start"
                await asyncio.sleep(0.2)
        yield proc, url
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_after_a_kill_9_a_client_resumes_on_another_process_without_missing_an_update(
    exchange: Exchange,
) -> None:
    alice, bob = exchange.member(1), exchange.member(2)
    async with (
        pusher_process(exchange.settings) as (first, first_url),
        pusher_process(exchange.settings) as (
            _,
            second_url,
        ),
    ):
        ws = Ws(await connect(first_url, open_timeout=5))
        await ws.send(op="auth", token=alice.token, id=1)
        await ws.next()
        await ws.send(op="subscribe", channels=["orders", "my_trades", "balances"], id=2)
        await ws.next()
        resting = await alice.limit("sell", "0.4", "53000")
        await bob.limit("buy", "0.1", "53000")
        await ws.until(lambda f: f.get("channel") == "my_trades")
        await ws.drain()
        last = [f for f in ws.frames if "channel" in f][-1]["position"]
        first.kill()  # kill -9: no close frame, nothing flushed
        await first.wait()
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            await ws.next(1.0)
        # while the client is away
        await bob.limit("buy", "0.1", "53000")
        other = await alice.limit("buy", "0.01", "41000")
        await alice.cancel(other)
        await exchange.settle()
        async with client(second_url) as ws2:
            await ws2.send(op="auth", token=alice.token, id=3, resume=last)
            await ws2.next()
            await ws2.until(lambda f: f.get("channel") == "orders" and f["data"]["event"] == "closed")
            await ws2.drain()
    orders = [(f["data"]["event"], f["data"]["order_id"]) for f in ws2.frames if f.get("channel") == "orders"]
    assert orders == [("updated", resting), ("accepted", other), ("closed", other)]
    assert [f["data"]["amount"] for f in ws2.frames if f.get("channel") == "my_trades"] == ["0.100000"]
    balances = [f for f in ws2.frames if f.get("channel") == "balances"]
    assert balances, "the balance changes while away"


async def test_the_pusher_exports_its_connections_and_deliveries_as_prometheus_metrics(
    exchange: Exchange,
) -> None:
    pusher = pusher_of(exchange)
    async with client(pusher.url) as ws:
        await ws.send(op="subscribe", channels=["ticker.btc_usd"], id=1)
        await ws.next()
        await ws.send(op="ping", id=2)
        await ws.until(lambda f: f.get("type") == "pong")
        families = {family.name: family for family in text_string_to_metric_families(pusher.metrics())}
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in families.values()
            for sample in family.samples
        }
        assert samples[("bourse_pusher_connections", ())] == 1
        assert samples[("bourse_pusher_channels", ())] == 1
        assert samples[("bourse_pusher_messages_delivered_total", (("kind", "control"),))] >= 2
        assert families["bourse_pusher_messages_delivered"].type == "counter"
        assert samples[("bourse_pusher_slow_consumers_closed_total", ())] == 0

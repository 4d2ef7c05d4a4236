"""The query service over real NATS: accounts + matching + query in one host, orders sent as the
gateway sends them, answers read through `QueryClient` (NATS request/reply)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bourse.adapters.jetstream import ensure_topology
from bourse.adapters.query_client import QueryClient
from bourse.application.catalog import load_catalog
from bourse.application.ports import QueryFailed
from bourse.application.projection import Envelope
from bourse.config.settings import Settings
from bourse.contracts.messages import REPLY_DECODER, AccountsBatch, Decisions, Outcome, encode, json_encode
from bourse.contracts.subjects import ORDERS
from bourse.domain.order_views import BalanceView, OrderView
from bourse.domain.orders import (
    CancelOrder,
    CloseReason,
    OrderStatus,
    OrderType,
    PlaceOrder,
    RejectReason,
    Side,
)
from bourse.domain.values import MemberId, OrderId
from bourse.runtime.host import ServiceHost
from bourse.runtime.projection import Applied, Feed
from bourse.runtime.service import ServiceContext
from bourse.services.accounts import AccountsService
from bourse.services.matching import MatchingService
from bourse.services.query import Query
from tests.application.test_read_queries import BAD_READ_QUERIES, ask

BTC_USD = load_catalog().markets["btc_usd"]
T = TypeVar("T")


class Exchange:
    """Accounts and matching in one host, query in another (so it restarts alone)."""

    def __init__(self, nc: Client, settings: Settings) -> None:
        self.nc = nc
        self.settings = settings
        self.stages: ServiceHost | None = None
        self.query_host: ServiceHost | None = None
        self.outcomes: dict[int, Outcome] = {}
        self.decided: set[int] = set()
        self.inbox = nc.new_inbox()
        self.client = QueryClient(nc, settings.namespace)

    async def start(self) -> None:
        await ensure_topology(self.nc.jetstream(), self.settings.namespace)
        await self.nc.subscribe(self.inbox, cb=self._on_reply)
        self.stages = ServiceHost(self._ctx())
        await self.stages.start([AccountsService, MatchingService])
        await self.start_query()

    def _ctx(self) -> ServiceContext:
        return ServiceContext(self.settings, self.nc, self.nc.jetstream())

    def _ctx_with(self, **settings: Any) -> ServiceContext:
        """A context whose settings differ in `settings` (e.g. another service's shard)."""
        return ServiceContext(self.settings.model_copy(update=settings), self.nc, self.nc.jetstream())

    async def start_query(self, service: type[Query] = Query) -> None:
        self.query_host = ServiceHost(self._ctx())
        await self.query_host.start([service])

    async def stop_query(self) -> None:
        if self.query_host is not None:
            await self.query_host.stop()
            self.query_host = None

    async def stop(self) -> None:
        await self.stop_query()
        if self.stages is not None:
            await self.stages.stop()

    @property
    def query(self) -> Query:
        assert self.query_host is not None
        service = self.query_host.running[0].service
        assert isinstance(service, Query)
        return service

    async def _on_reply(self, msg: Msg) -> None:
        reply = REPLY_DECODER.decode(msg.data)
        if isinstance(reply, Decisions):
            self.decided.update(item.order_id for item in reply.items)
        else:
            self.outcomes.update((item.order_id, item) for item in reply.items)

    async def send(self, *commands: PlaceOrder | CancelOrder) -> None:
        batch = AccountsBatch(list(commands), reply_to=self.inbox)
        await self.nc.jetstream().publish(ORDERS.subject(self.settings.namespace, 0), encode(batch))


@pytest.fixture
async def exchange(nc: Client, settings: Settings) -> AsyncIterator[Exchange]:
    running = Exchange(nc, settings)
    await running.start()
    yield running
    await running.stop()


async def eventually(ask: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 10.0) -> T:
    """Ask until the answer passes `check` (the read side follows the streams a moment later)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            answer = await ask()
            if check(answer):
                return answer
        except QueryFailed as failed:
            answer = failed  # type: ignore[assignment]
        assert asyncio.get_running_loop().time() < deadline, f"last answer: {answer!r}"
        await asyncio.sleep(0.02)


def limit(order_id: int, member: int, side: Side, price: str, amount: str) -> PlaceOrder:
    return PlaceOrder(
        order_id=OrderId(order_id),
        member_id=MemberId(member),
        market="btc_usd",
        side=side,
        type=OrderType.LIMIT,
        price=BTC_USD.parse_price(price),
        amount=BTC_USD.parse_amount(amount),
        created_at=order_id * 1000,
    )


def status_is(status: OrderStatus) -> Callable[[OrderView], bool]:
    return lambda view: view.status == status


async def test_order_status_follows_fills_and_cancels_for_its_member_only(exchange: Exchange) -> None:
    client = exchange.client
    await exchange.send(limit(101, 1, Side.SELL, "50000", "0.5"))
    await exchange.send(limit(102, 2, Side.BUY, "50010", "0.2"))
    maker = await eventually(lambda: client.order(1, 101), status_is(OrderStatus.PARTIALLY_FILLED))
    assert (maker.executed, maker.remaining) == (BTC_USD.parse_amount("0.2"), BTC_USD.parse_amount("0.3"))
    assert maker.funds == 10_000 * 10**8
    assert maker.created_at == 101_000
    assert maker.received_at > 0
    assert maker.updated_at >= maker.received_at
    taker = await client.order(2, 102)
    assert (taker.status, taker.close_reason) == (OrderStatus.EXECUTED, CloseReason.FILLED)

    with pytest.raises(QueryFailed) as not_found:
        await client.order(2, 101)  # bob asks about alice's order
    assert (not_found.value.status, not_found.value.code) == (404, "order_not_found")

    await exchange.send(CancelOrder(OrderId(101), MemberId(1), "btc_usd"))
    cancelled = await eventually(lambda: client.order(1, 101), status_is(OrderStatus.CANCELLED))
    assert cancelled.executed == BTC_USD.parse_amount("0.2")
    assert cancelled.close_reason == CloseReason.CANCELLED


async def test_open_orders_depth_trades_and_balances(exchange: Exchange) -> None:
    client = exchange.client
    await exchange.send(
        limit(201, 1, Side.SELL, "51000", "1"),
        limit(202, 1, Side.SELL, "52000", "2"),
        limit(203, 1, Side.BUY, "49000", "0.5"),
        limit(204, 2, Side.BUY, "51000", "0.25"),
    )
    await eventually(lambda: client.order(2, 204), status_is(OrderStatus.EXECUTED))

    open_orders = await client.orders(1, state="open", market="btc_usd")
    assert [o.id for o in open_orders] == [203, 202, 201]
    assert [o.id for o in await client.orders(1, state="open", limit=1)] == [203]
    assert [o.id for o in await client.orders(1, limit=2, before_id=203)] == [202, 201]
    assert await client.orders(2, state="open") == []
    assert [o.id for o in await client.orders(2, state="closed")] == [204]

    depth = await client.depth("btc_usd", 10)
    amount = BTC_USD.parse_amount
    price = BTC_USD.parse_price
    assert depth.bids == [(price("49000"), amount("0.5"))]
    assert depth.asks == [(price("51000"), amount("0.75")), (price("52000"), amount("2"))]
    assert depth.last_price == price("51000")
    assert (await client.depth("btc_usd", 1)).asks == [(price("51000"), amount("0.75"))]

    trades = await client.trades("btc_usd")
    assert [(t.price, t.amount, t.taker_side) for t in trades] == [(price("51000"), amount("0.25"), Side.BUY)]
    mine = await client.member_trades(1, "btc_usd")
    assert [(t.order_id, t.side, t.role) for t in mine] == [(201, Side.SELL, "maker")]

    # alice: 10 BTC, 3 sold or offered (0.25 of it sold); 1,000,000 USD, 24,500 locked for the bid
    btc = 10**8
    balances = await eventually(
        lambda: client.balances(1),
        lambda found: any(b.currency == "btc" and b.locked == int(2.75 * btc) for b in found),
    )
    assert BalanceView("btc", 7 * btc, int(2.75 * btc)) in balances
    usd = next(b for b in balances if b.currency == "usd")
    assert usd.locked == 24_500 * btc
    assert usd.available == 1_000_000 * btc - 24_500 * btc + 12_750 * btc - 12_750 * btc // 1000


async def test_an_order_refused_for_funds_reads_as_closed_with_its_reason(exchange: Exchange) -> None:
    await exchange.send(limit(301, 3, Side.BUY, "100000", "6"))  # carol has 500,000 USD
    view = await eventually(lambda: exchange.client.order(3, 301), lambda _: True)
    assert (view.status, view.close_reason, view.reject_reason) == (
        OrderStatus.CLOSED,
        CloseReason.REJECTED,
        RejectReason.INSUFFICIENT_FUNDS,
    )
    assert view.updated_at > 0


async def test_bad_requests_and_unknown_markets_get_coded_errors(exchange: Exchange) -> None:
    client = exchange.client
    with pytest.raises(QueryFailed) as failed:
        await client.balances(0)
    assert (failed.value.status, failed.value.code) == (400, "invalid_request"), failed.value
    for case, bad in BAD_READ_QUERIES.items():  # the reads' rule, said as every reader says it
        with pytest.raises(QueryFailed) as failed:
            await ask(client, 1, bad)
        assert (failed.value.status, failed.value.code, failed.value.message) == (
            bad.status,
            bad.code,
            bad.message,
        ), case
    reply = await exchange.nc.request(
        f"{exchange.settings.namespace}.svc.query.order", b"not json", timeout=2
    )
    assert reply.headers is not None
    assert reply.headers["Nats-Service-Error-Code"] == "400"
    assert msgspec.json.decode(reply.data)["code"] == "invalid_request"


async def test_a_restarted_query_service_rebuilds_the_same_answers(exchange: Exchange) -> None:
    client = exchange.client
    await exchange.send(
        limit(401, 1, Side.SELL, "50000", "1"),
        limit(402, 2, Side.BUY, "50000", "0.25"),
        limit(403, 2, Side.BUY, "48000", "0.5"),
    )
    await exchange.send(
        CancelOrder(OrderId(403), MemberId(2), "btc_usd"), limit(404, 3, Side.BUY, "100000", "6")
    )
    await eventually(lambda: client.order(2, 403), status_is(OrderStatus.CANCELLED))
    await eventually(lambda: client.order(3, 404), lambda _: True)

    async def answers() -> bytes:
        return json_encode(
            [
                await client.orders(1),
                await client.orders(2),
                await client.orders(3),
                await client.balances(1),
                await client.balances(2),
                await client.depth("btc_usd"),
                await client.trades("btc_usd"),
                await client.member_trades(2),
            ]
        )

    # the last settlements: bob's cancelled bid releases its lock, alice's ask keeps 0.75 BTC locked
    await eventually(lambda: client.balances(2), lambda found: all(b.locked == 0 for b in found))
    await eventually(
        lambda: client.balances(1),
        lambda found: any(b.currency == "btc" and b.locked == 75_000_000 for b in found),
    )
    before = await answers()
    await exchange.stop_query()
    with pytest.raises(QueryFailed) as gone:
        await client.ready()
    assert gone.value.code == "unavailable"
    await exchange.start_query()
    ready = await client.ready()
    assert ready.ready
    assert ready.events_seq >= ready.events_target > 0
    assert ready.accounts_seq >= ready.accounts_target > 0
    health = exchange.query.health()
    assert health["ready"]
    assert health["ok"]
    assert health["failures"] == 0
    assert await answers() == before


class GatedQuery(Query):
    """A query service whose reading of EVENTS waits for `gate`: a slow catch-up on demand."""

    CATCH_UP_WAIT_S = 0.1
    gate = asyncio.Event()

    async def write(self, feed: Feed, envelopes: Sequence[Envelope[Any]], watermark: int) -> Applied:
        if feed is self.events:
            await self.gate.wait()
        return await super().write(feed, envelopes, watermark)


async def test_an_instance_still_catching_up_says_so_and_answers_not_ready(exchange: Exchange) -> None:
    client = exchange.client
    await exchange.send(limit(501, 1, Side.SELL, "50000", "1"))
    await eventually(lambda: client.order(1, 501), status_is(OrderStatus.SUBMITTED))
    await exchange.stop_query()

    GatedQuery.gate = asyncio.Event()
    await exchange.start_query(GatedQuery)  # returns after CATCH_UP_WAIT_S, not caught up
    readiness = await client.ready()
    assert not readiness.ready
    assert readiness.events_seq < readiness.events_target
    assert not exchange.query.health()["ok"]
    with pytest.raises(QueryFailed) as failed:
        await client.order(1, 501)
    assert (failed.value.status, failed.value.code) == (503, "not_ready")

    GatedQuery.gate.set()
    view = await eventually(lambda: client.order(1, 501), lambda _: True)
    assert view.status == OrderStatus.SUBMITTED
    assert (await client.ready()).ready
    assert exchange.query.health()["ok"]

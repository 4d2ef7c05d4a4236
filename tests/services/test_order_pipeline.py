"""Accounts and matching services joined by JetStream: commands in; decisions, trades and
settled balances out; a restart from snapshots neither loses nor duplicates anything."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from bourse.adapters.jetstream import ensure_topology
from bourse.application.catalog import load_catalog
from bourse.config.settings import Settings
from bourse.contracts.messages import (
    ACCOUNTS_REPORTS_DECODER,
    EVENT_BATCH_DECODER,
    REPLY_DECODER,
    AccountsBatch,
    Decision,
    Decisions,
    Outcome,
    encode,
)
from bourse.contracts.subjects import ACCOUNTS, EVENTS, ORDERS
from bourse.domain.accounts import BalanceChanged
from bourse.domain.orders import OrderStatus, OrderType, PlaceOrder, RejectReason, Side, Trade
from bourse.domain.values import MemberId, OrderId
from bourse.runtime.host import ServiceHost
from bourse.runtime.service import ServiceContext
from bourse.services.accounts import AccountsService
from bourse.services.matching import MatchingService

BTC_USD = load_catalog().markets["btc_usd"]


class Pipeline:
    """Accounts + matching in this process, and a client that sends commands and hears replies."""

    def __init__(self, nc: Client, settings: Settings) -> None:
        self.nc = nc
        self.settings = settings
        self.decisions: dict[int, Decision] = {}
        self.outcomes: dict[int, Outcome] = {}
        self.host: ServiceHost | None = None
        self.inbox = nc.new_inbox()

    async def start(self) -> None:
        js = self.nc.jetstream()
        await ensure_topology(js, self.settings.namespace)
        await self.nc.subscribe(self.inbox, cb=self._on_reply)
        await self.restart()

    async def restart(self) -> None:
        js = self.nc.jetstream()
        self.host = ServiceHost(ServiceContext(self.settings, self.nc, js))
        await self.host.start([AccountsService, MatchingService])

    async def stop(self) -> None:
        if self.host is not None:
            await self.host.stop()
            self.host = None

    async def _on_reply(self, msg: Msg) -> None:
        reply = REPLY_DECODER.decode(msg.data)
        if isinstance(reply, Decisions):
            self.decisions.update((item.order_id, item) for item in reply.items)
        else:
            self.outcomes.update((item.order_id, item) for item in reply.items)

    async def send(self, *commands: PlaceOrder) -> None:
        batch = AccountsBatch(list(commands), reply_to=self.inbox)
        await self.nc.jetstream().publish(ORDERS.subject(self.settings.namespace, 0), encode(batch))

    async def stream_messages(self, subject: str) -> list[bytes]:
        js = self.nc.jetstream()
        sub = await js.subscribe(subject, ordered_consumer=True)
        found: list[bytes] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=0.5)
                found.append(msg.data)
        except Exception:
            pass
        await sub.unsubscribe()
        return found

    async def trades(self) -> list[Trade]:
        batches = [
            EVENT_BATCH_DECODER.decode(data)
            for data in await self.stream_messages(EVENTS.wildcard(self.settings.namespace))
        ]
        return [event for batch in batches for event in batch.events if isinstance(event, Trade)]

    async def balances(self) -> dict[tuple[int, str], BalanceChanged]:
        latest: dict[tuple[int, str], BalanceChanged] = {}
        for data in await self.stream_messages(ACCOUNTS.wildcard(self.settings.namespace)):
            for report in ACCOUNTS_REPORTS_DECODER.decode(data).reports:
                for change in report.balances:
                    latest[(change.member_id, change.currency)] = change
        return latest


@pytest.fixture
async def pipeline(nc: Client, settings: Settings) -> AsyncIterator[Pipeline]:
    running = Pipeline(nc, settings)
    await running.start()
    yield running
    await running.stop()


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def limit(
    order_id: int, member: int, side: Side, price: str, amount: str, client_id: str | None = None
) -> PlaceOrder:
    return PlaceOrder(
        order_id=OrderId(order_id),
        member_id=MemberId(member),
        market="btc_usd",
        side=side,
        type=OrderType.LIMIT,
        price=BTC_USD.parse_price(price),
        amount=BTC_USD.parse_amount(amount),
        client_order_id=client_id,
    )


async def test_crossing_orders_trade_and_settle_both_members(pipeline: Pipeline) -> None:
    await pipeline.send(limit(101, 1, Side.SELL, "50000", "0.5"))
    await pipeline.send(limit(102, 2, Side.BUY, "50010", "0.2"))
    await until(lambda: 102 in pipeline.outcomes)
    assert pipeline.decisions[101].accepted
    assert pipeline.outcomes[102].status == OrderStatus.EXECUTED
    assert pipeline.outcomes[101].status == OrderStatus.SUBMITTED

    trades = await pipeline.trades()
    assert [(t.price, t.amount) for t in trades] == [
        (BTC_USD.parse_price("50000"), BTC_USD.parse_amount("0.2"))
    ]
    balances = await pipeline.balances()
    # seller: 0.5 BTC locked at first, 0.2 sold: 0.3 still locked; got 10000 USD minus 0.1 % maker fee
    seller_btc = balances[(1, "btc")]
    assert seller_btc.locked == BTC_USD.base_units(BTC_USD.parse_amount("0.3"))
    assert balances[(1, "usd")].available == 1_000_000 * 10**8 + (10_000 * 10**8 - 10 * 10**8)
    # buyer: paid 10000 USD at the maker's price, nothing left locked; got 0.2 BTC minus 0.2 % taker fee
    assert balances[(2, "usd")].locked == 0
    assert balances[(2, "usd")].available == 1_000_000 * 10**8 - 10_000 * 10**8
    assert balances[(2, "btc")].available == 10 * 10**8 + 20_000_000 - 40_000


async def test_order_beyond_the_members_funds_is_rejected_and_changes_nothing(pipeline: Pipeline) -> None:
    await pipeline.send(limit(201, 3, Side.BUY, "100000", "6"))  # carol has 500,000 USD
    await until(lambda: 201 in pipeline.decisions)
    decision = pipeline.decisions[201]
    assert not decision.accepted
    assert decision.reason == RejectReason.INSUFFICIENT_FUNDS
    await asyncio.sleep(0.2)
    assert 201 not in pipeline.outcomes
    assert await pipeline.trades() == []


async def test_resubmitting_a_client_order_id_returns_the_first_order(pipeline: Pipeline) -> None:
    await pipeline.send(limit(301, 1, Side.SELL, "60000", "0.1", client_id="abc"))
    await pipeline.send(limit(302, 1, Side.SELL, "60000", "0.1", client_id="abc"))
    await until(lambda: 302 in pipeline.decisions and 301 in pipeline.outcomes)
    await asyncio.sleep(0.2)
    assert pipeline.decisions[301].accepted
    second = pipeline.decisions[302]
    assert second.reason == RejectReason.CLIENT_ORDER_ID_TAKEN
    assert second.existing_order_id == 301
    assert 302 not in pipeline.outcomes


async def test_restart_from_snapshot_replays_without_duplicates(pipeline: Pipeline) -> None:
    await pipeline.send(limit(401, 1, Side.SELL, "50000", "1"))
    await pipeline.send(limit(402, 2, Side.BUY, "50000", "0.25"))
    await until(lambda: 402 in pipeline.outcomes)
    await pipeline.stop()  # snapshots on the way out
    await pipeline.send(limit(403, 2, Side.BUY, "50000", "0.25"))  # arrives while down
    await pipeline.restart()
    await until(lambda: 403 in pipeline.outcomes)
    await pipeline.send(limit(404, 2, Side.BUY, "50000", "0.5"))
    await until(lambda: 404 in pipeline.outcomes)
    trades = await pipeline.trades()
    assert [t.taker_order_id for t in trades] == [402, 403, 404]
    assert pipeline.outcomes[404].status == OrderStatus.EXECUTED
    balances = await pipeline.balances()
    assert balances[(1, "btc")].locked == 0


async def test_an_undecodable_input_is_skipped_and_later_orders_still_flow(pipeline: Pipeline) -> None:
    js = pipeline.nc.jetstream()
    await js.publish(ORDERS.subject(pipeline.settings.namespace, 0), b"\xc1 not msgpack")
    await pipeline.send(limit(501, 1, Side.SELL, "50000", "0.1"))
    await until(lambda: 501 in pipeline.outcomes)
    assert pipeline.outcomes[501].status == OrderStatus.SUBMITTED

"""What the persistence tests share: a database per test (MariaDB or SQLite), an exchange
(accounts + matching services) fed with a realistic mix of orders, and table dumps to compare."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from sqlalchemy import select, text

from bourse.adapters.jetstream import ensure_topology
from bourse.adapters.sql.database import create_engine
from bourse.adapters.sql.models import Base
from bourse.application.catalog import load_catalog
from bourse.config.settings import Settings
from bourse.contracts.messages import AccountsBatch, AccountsItem, Deposit, encode
from bourse.contracts.subjects import ACCOUNTS, EVENTS, MATCH, ORDERS, StreamSpec, member_shard
from bourse.domain.orders import AmendOrder, CancelOrder, OrderType, PlaceOrder, Side, TimeInForce
from bourse.domain.values import MemberId, OrderId
from bourse.runtime.host import ServiceHost
from bourse.runtime.service import Service, ServiceContext
from bourse.services.accounts import AccountsService
from bourse.services.matching import MatchingService

MARIADB_URL = os.environ.get("BOURSE_TEST_MARIADB_URL", "mysql+asyncmy://root@127.0.0.1:3306")
"""Server URL without a database: each test creates its own database and drops it."""

CATALOG = load_catalog()


@asynccontextmanager
async def fresh_database(kind: str, folder: str) -> AsyncIterator[str]:
    """The URL of an empty database: a SQLite file in `folder`, or a new MariaDB database."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{folder}/sql/bourse.db"
        return
    name = f"bourse_t{uuid.uuid4().hex[:12]}"
    admin = create_engine(f"{MARIADB_URL}/test")
    try:
        async with admin.begin() as conn:
            await conn.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
        yield f"{MARIADB_URL}/{name}"
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
            await conn.execute(text(f"DROP DATABASE IF EXISTS {name}_rebuild"))  # a rebuild's leftover
        await admin.dispose()


async def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows in key order (the write time of positions left out)."""
    engine = create_engine(url)
    tables: dict[str, list[tuple[Any, ...]]] = {}
    try:
        async with engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                columns = [
                    c for c in table.columns if (table.name, c.name) != ("applied_positions", "updated_at")
                ]
                result = await conn.execute(select(*columns).order_by(*table.primary_key.columns))
                tables[table.name] = [tuple(row) for row in result.all()]
    finally:
        await engine.dispose()
    return tables


async def scalar(url: str, sql: str) -> Any:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(sql))).scalar()
    finally:
        await engine.dispose()


async def until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"{what} not met in {timeout} s"
        await asyncio.sleep(0.02)


async def stream_last(js: JetStreamContext, namespace: str, kind: str) -> int:
    spec = {"events": EVENTS, "accounts": ACCOUNTS}[kind]
    state = (await js.stream_info(spec.name(namespace))).state
    return state.last_seq if state.messages else 0


class Exchange:
    """Accounts and matching services in this process (plus any others asked for), and a
    client that feeds them orders."""

    def __init__(self, nc: Client, settings: Settings) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.settings = settings
        self.host: ServiceHost | None = None
        self.rng = random.Random(7)
        self.next_order_id = 1_000
        self.open: list[tuple[int, int, str]] = []

    async def start(self, *extra: type[Service]) -> ServiceHost:
        await ensure_topology(self.js, self.settings.namespace)
        self.host = ServiceHost(ServiceContext(self.settings, self.nc, self.js))
        await self.host.start([AccountsService, MatchingService, *extra])
        return self.host

    async def stop(self) -> None:
        if self.host is not None:
            await self.host.stop()
            self.host = None

    async def send(self, items: list[AccountsItem], member: int = 1) -> None:
        shard = member_shard(member, self.settings.accounts_shards)
        await self.js.publish(ORDERS.subject(self.settings.namespace, shard), encode(AccountsBatch(items)))

    async def fund(self, members: range) -> None:
        """Deposits for members beyond the demo ones, in every currency."""
        for member in members:
            await self.send(
                [
                    Deposit(
                        MemberId(member),
                        currency,
                        10**8 * (10**6 if currency == "usd" else 1000),
                        f"t:{member}:{currency}",
                    )
                    for currency in sorted(CATALOG.currencies)
                ],
                member,
            )

    def random_commands(self, member: int, n: int) -> list[AccountsItem]:
        """A trading mix for one member: limit orders around a price (some crossing), IOC and
        FOK, market orders, cancels and amends of its earlier orders."""
        rng = self.rng
        out: list[AccountsItem] = []
        for _ in range(n):
            roll = rng.random()
            mine = [o for o in self.open if o[1] == member]
            if roll < 0.15 and mine:
                order_id, _, market = mine[rng.randrange(len(mine))]
                out.append(CancelOrder(OrderId(order_id), MemberId(member), market))
                continue
            if roll < 0.25 and mine:
                order_id, _, market = mine[rng.randrange(len(mine))]
                spec = CATALOG.markets[market]
                out.append(
                    AmendOrder(
                        OrderId(order_id),
                        MemberId(member),
                        market,
                        price=spec.parse_price(str(rng.randint(95, 105))),
                    )
                )
                continue
            market = rng.choice(["btc_usd", "eth_usd", "eth_btc"])
            spec = CATALOG.markets[market]
            side = rng.choice([Side.BUY, Side.SELL])
            self.next_order_id += 1
            order_id = self.next_order_id
            amount = spec.parse_amount(str(rng.choice([1, 2, 3, 5])))
            if roll < 0.3:
                order = PlaceOrder(
                    OrderId(order_id), MemberId(member), market, side, OrderType.MARKET, amount
                )
            else:
                tif = rng.choice([TimeInForce.GTC] * 6 + [TimeInForce.IOC, TimeInForce.FOK])
                price = spec.parse_price(str(rng.randint(95, 105)))
                order = PlaceOrder(
                    OrderId(order_id), MemberId(member), market, side, OrderType.LIMIT, amount, price, tif
                )
                if tif == TimeInForce.GTC:
                    self.open.append((order_id, member, market))
            out.append(order)
        return out

    async def trade(self, members: range, rounds: int, per_batch: int = 3, *, paced: bool = False) -> None:
        """`rounds` batches of orders per member, published with many in flight; `paced`: each
        batch once accounts has taken the previous one, so the stages work in many small
        batches and write long streams (a backlog would be folded into a few large messages)."""
        pending = []
        for _ in range(rounds):
            for member in members:
                batch = AccountsBatch(self.random_commands(member, per_batch))
                subject = ORDERS.subject(
                    self.settings.namespace, member_shard(member, self.settings.accounts_shards)
                )
                pending.append(await self.js.publish_async(subject, encode(batch)))
                if paced:
                    await asyncio.gather(*pending)
                    pending.clear()
                    await self.taken(ORDERS)
            if len(pending) > 500:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)

    async def taken(self, spec: StreamSpec, timeout: float = 30.0) -> None:
        """Wait until the consumers of `spec` have been delivered everything in it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        name = spec.name(self.settings.namespace)
        while any(info.num_pending for info in await self.js.consumers_info(name)):
            assert loop.time() < deadline, f"{name} was not taken"
            await asyncio.sleep(0.005)

    async def settled(self, timeout: float = 60.0) -> None:
        """Wait until accounts and matching have consumed everything and the streams stand still."""
        ns = self.settings.namespace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        previous: tuple[int, ...] = ()
        while True:
            busy = False
            for spec in (ORDERS, MATCH):
                for info in await self.js.consumers_info(spec.name(ns)):
                    busy = busy or bool(info.num_pending) or bool(info.num_ack_pending)
            lasts = (await stream_last(self.js, ns, "events"), await stream_last(self.js, ns, "accounts"))
            if not busy and lasts == previous:
                return
            previous = lasts
            assert loop.time() < deadline, "the exchange did not settle"
            await asyncio.sleep(0.2)


async def fetch_all(js: JetStreamContext, namespace: str, kind: str) -> list[Any]:
    """Every message of the EVENTS or ACCOUNTS stream, as a pull consumer delivers them (with
    their ack subjects, so they carry stream sequence and time)."""
    spec = {"events": EVENTS, "accounts": ACCOUNTS}[kind]
    durable = f"test-{kind}-{uuid.uuid4().hex[:6]}"
    sub = await js.pull_subscribe(spec.wildcard(namespace), durable=durable, stream=spec.name(namespace))
    found: list[Any] = []
    try:
        while True:
            try:
                batch = await sub.fetch(1000, timeout=0.5)
            except TimeoutError:
                break
            found.extend(batch)
    finally:
        await js.delete_consumer(spec.name(namespace), durable)
    return found

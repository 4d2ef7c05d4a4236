"""The persistence service over a real exchange (accounts + matching on the machine's NATS),
writing to MariaDB and to SQLite: what lands in the tables, group commit, repeats, lag."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from bourse.adapters.sql.database import create_engine
from bourse.catalog import load_catalog
from bourse.domain.orders import OrderStatus, OrderType, PlaceOrder, RejectReason, Side
from bourse.runtime.host import ServiceHost
from bourse.services.persistence import Persistence
from tests.persistence.helpers import Exchange, stream_last, until

BTC_USD = load_catalog().markets["btc_usd"]


def persistence_of(host: ServiceHost) -> Persistence:
    for running in host.running:
        if isinstance(running.service, Persistence):
            return running.service
    raise AssertionError("no persistence service")


async def caught_up(exchange: Exchange, service: Persistence, timeout: float = 60.0) -> None:
    ns = exchange.settings.namespace
    events = await stream_last(exchange.js, ns, "events")
    accounts = await stream_last(exchange.js, ns, "accounts")
    await until(
        lambda: service.events.watermark >= events and service.accounts.watermark >= accounts,
        timeout,
        "persistence caught up",
    )


def limit(order_id: int, member: int, side: Side, price: str, amount: str) -> PlaceOrder:
    return PlaceOrder(
        order_id,
        member,
        "btc_usd",
        side,
        OrderType.LIMIT,
        BTC_USD.parse_amount(amount),
        BTC_USD.parse_price(price),
    )


async def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in (await conn.execute(text(sql))).all()]
    finally:
        await engine.dispose()


async def test_orders_trades_balances_and_ledger_of_a_trade_land_in_sql(
    exchange: Exchange, sql_url: str
) -> None:
    service = persistence_of(await exchange.start(Persistence))
    await exchange.send([limit(101, 1, Side.SELL, "50000", "0.5")], member=1)
    await exchange.send([limit(102, 2, Side.BUY, "50010", "0.2")], member=2)
    await exchange.send([limit(103, 3, Side.BUY, "100000", "6")], member=3)  # beyond carol's funds
    await exchange.settled()
    await caught_up(exchange, service)

    orders = {
        row[0]: row
        for row in await rows(
            sql_url, "SELECT id, status, executed, remaining, funds, close_reason, reject_reason FROM orders"
        )
    }
    assert orders[101][1:4] == (OrderStatus.PARTIALLY_FILLED, 200_000, 300_000)
    assert orders[102][1:4] == (OrderStatus.EXECUTED, 200_000, 0)
    assert orders[102][4] == 10_000 * 10**8
    assert orders[103][1] == OrderStatus.CLOSED
    assert orders[103][5:] == ("rejected", RejectReason.INSUFFICIENT_FUNDS)
    trades = await rows(
        sql_url, "SELECT market, trade_id, price, amount, maker_order_id, taker_order_id FROM trades"
    )
    assert trades == [("btc_usd", 1, BTC_USD.parse_price("50000"), 200_000, 101, 102)]
    balances = dict(
        ((member, currency), (available, locked))
        for member, currency, available, locked in await rows(
            sql_url, "SELECT member_id, currency, available, locked FROM balances WHERE member_id > 0"
        )
    )
    assert balances[(2, "btc")] == (10 * 10**8 + 20_000_000 - 40_000, 0)
    assert balances[(1, "btc")] == (10 * 10**8 - 50_000_000, 30_000_000)
    # every balance is the sum of its ledger entries
    sums = await rows(
        sql_url,
        "SELECT account, currency, bucket, SUM(delta) FROM ledger_entries WHERE account > 0 "
        "GROUP BY account, currency, bucket",
    )
    for account, currency, bucket, total in sums:
        available, locked = balances[(account, currency)]
        assert int(total) == (available if bucket == "available" else locked)
    members = await rows(sql_url, "SELECT id, email FROM members ORDER BY id")
    assert (1, "alice@example.com") in members
    assert service.health()["ok"]

"""What bounds the orders a member holds, through the whole exchange: a cap on open orders per
member (`BOURSE_MAX_OPEN_ORDERS_PER_MEMBER`, decided by the accounts stage like insufficient
funds) and a minimum order value per market (`min_notional`: price x amount). Each refusal is a
422 problem with a stable code that locks nothing and leaves the member's other orders as they
were; a cancel frees a place under the cap. (New orders below the minimum value are among the
bad orders of `test_order_requests.py`, which also check that the streams are untouched.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from nats.aio.client import Client

from bourse.config.settings import Settings
from tests.conftest import free_port
from tests.e2e.conftest import started
from tests.e2e.harness import Exchange, Member, expect_problem
from tests.e2e.test_trading import demo

D = Decimal
CAP = 3


@pytest.fixture
async def capped(settings: Settings, nc: Client) -> AsyncIterator[Exchange]:
    """An exchange whose members may hold `CAP` open orders each."""
    update = {"http_port": free_port(), "demo_seed": True, "max_open_orders_per_member": CAP}
    running = await started(settings.model_copy(update=update), nc)
    yield running
    await running.stop()


async def test_an_order_beyond_the_members_cap_is_refused_with_422_locks_nothing_and_a_cancel_frees_a_place(
    capped: Exchange,
) -> None:
    alice, bob = capped.member(1), capped.member(2)
    first = await alice.limit("buy", "0.1", "40000")
    await alice.limit("buy", "0.2", "39000")
    await alice.limit("sell", "1", "3000", market="eth_usd")  # the cap counts every market
    await capped.settle()
    balances = await alice.balances()
    assert balances == demo(alice, usd=(D(988_200), D(11_800)), eth=(D(99), D(1)))
    open_orders = await alice.orders(state="open")
    assert len(open_orders) == CAP

    refused = expect_problem(
        await alice.post_order({"market": "btc_usd", "side": "buy", "amount": "0.1", "price": "38000"}),
        422,
        "too_many_open_orders",
    )
    expect_problem(
        await alice.post_order({"market": "btc_usd", "side": "sell", "type": "market", "amount": "0.1"}),
        422,
        "too_many_open_orders",
    )
    await capped.settle()
    assert await alice.balances() == balances  # nothing locked
    assert await alice.orders(state="open") == open_orders  # her other orders as they were
    assert (await alice.order(refused["order_id"]))["status"] == "closed"  # read as refused, not open
    assert (await alice.order(refused["order_id"]))["reason"] == "too_many_open_orders"
    # at the cap her orders still change: amended (the count is the same) and cancelled
    amended = await alice.amend(first, price="39500")
    assert amended.status_code == 200, amended.text
    assert await bob.limit("sell", "0.1", "60000")  # the cap is per member

    cancelled = await alice.cancel(first)
    assert cancelled.status_code == 200, cancelled.text
    assert await alice.limit("buy", "0.1", "38000")  # the cancel freed a place
    await capped.settle()
    assert len(await alice.orders(state="open")) == CAP


async def test_an_amend_that_takes_an_order_below_the_markets_minimum_value_is_refused_and_changes_nothing(
    exchange: Exchange, alice: Member
) -> None:
    order_id = await alice.limit("buy", "0.001", "1000")  # 1 usd: the btc_usd minimum exactly
    await exchange.settle()
    balances, order = await alice.balances(), await alice.order(order_id)

    # a new price alone: the accounts stage, which holds the order's amount, refuses it
    expect_problem(await alice.amend(order_id, price="999.99"), 422, "notional_too_small")
    # a new price and amount: the gateway refuses it before anything is stored
    expect_problem(await alice.amend(order_id, price="10", amount="0.01"), 422, "notional_too_small")
    await exchange.settle()
    assert await alice.balances() == balances
    assert await alice.order(order_id) == order
    # above the minimum it goes on
    assert (await alice.amend(order_id, amount="0.002")).status_code == 200

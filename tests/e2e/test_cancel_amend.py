"""Cancel one order, cancel all, and amend over HTTP: what the order becomes, what priority it
keeps, and what funds are locked afterwards."""

from __future__ import annotations

from decimal import Decimal

from bourse.domain.order_shape import AMEND_CHANGES_NOTHING
from tests.e2e.harness import Exchange, Member, expect_problem
from tests.e2e.test_trading import MAKER, TAKER, demo, fee

D = Decimal


async def test_cancel_returns_the_order_cancelled_and_unlocks_its_funds(
    exchange: Exchange, alice: Member
) -> None:
    bid = await alice.limit("buy", "0.5", "40000")
    await exchange.settle()
    assert await alice.balances() == demo(alice, usd=(D(980_000), D(20_000)))

    response = await alice.cancel(bid)
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert (cancelled["id"], cancelled["status"], cancelled["executed"]) == (bid, "cancelled", "0.000000")
    await exchange.settle()

    assert await alice.balances() == demo(alice)
    assert (await alice.order(bid))["status"] == "cancelled"
    assert await alice.orders(state="open") == []
    depth = (await exchange.http.get("/markets/btc_usd/depth")).json()
    assert depth["bids"] == []


async def test_cancelling_a_partially_filled_order_unlocks_only_what_is_left(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    ask = await alice.limit("sell", "1", "50000")
    await bob.limit("buy", "0.4", "50000")
    response = await alice.cancel(ask)
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["executed"]) == ("cancelled", "0.400000")
    await exchange.settle()

    funds = D("0.4") * 50000
    assert await alice.balances() == demo(
        alice, btc=(D("9.6"), D(0)), usd=(D(1_000_000) + funds - fee(funds, MAKER), D(0))
    )
    order = await alice.order(ask)
    assert (order["status"], order["executed"]) == ("cancelled", "0.400000")


async def test_cancelling_or_amending_a_finished_order_is_refused_as_closed_and_changes_nothing(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    bid = await alice.limit("buy", "0.5", "40000")
    assert (await alice.cancel(bid)).status_code == 200
    filled = await alice.limit("sell", "0.1", "50000")
    await bob.limit("buy", "0.1", "50000")
    await exchange.settle()
    before = await alice.balances()

    for oid in (bid, filled):
        expect_problem(await alice.cancel(oid), 422, "order_closed")
        expect_problem(await alice.amend(oid, price="41000"), 422, "order_closed")
    await exchange.settle()
    assert await alice.balances() == before
    assert (await alice.order(bid))["status"] == "cancelled"
    assert (await alice.order(filled))["status"] == "executed"


async def test_cancel_all_in_one_market_leaves_the_other_markets_and_members_alone(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    btc_bid = await alice.limit("buy", "0.1", "40000")
    btc_ask = await alice.limit("sell", "0.1", "60000")
    eth_bid = await alice.limit("buy", "1", "2000", market="eth_usd")
    bobs = await bob.limit("buy", "0.1", "40000")

    assert sorted(await alice.cancel_all("btc_usd")) == sorted([btc_bid, btc_ask])
    await exchange.settle()
    assert [order["id"] for order in await alice.orders(state="open")] == [eth_bid]
    assert [(await alice.order(oid))["status"] for oid in (btc_bid, btc_ask)] == ["cancelled", "cancelled"]
    assert await alice.balances() == demo(alice, usd=(D(998_000), D(2000)))
    assert [order["id"] for order in await bob.orders(state="open")] == [bobs]


async def test_cancel_all_without_a_market_cancels_every_open_order(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    ids = [
        await alice.limit("buy", "0.1", "40000"),
        await alice.limit("sell", "0.1", "60000"),
        await alice.limit("buy", "1", "2000", market="eth_usd"),
        await alice.limit("sell", "1", "0.05", market="eth_btc"),
    ]
    bobs = await bob.limit("sell", "1", "3000", market="eth_usd")

    assert sorted(await alice.cancel_all()) == sorted(ids)
    await exchange.settle()
    assert await alice.orders(state="open") == []
    assert {order["status"] for order in await alice.orders()} == {"cancelled"}
    assert await alice.balances() == demo(alice)
    assert [order["id"] for order in await bob.orders(state="open")] == [bobs]
    assert await alice.cancel_all() == []


async def test_amend_decreasing_the_amount_keeps_time_priority(
    exchange: Exchange, alice: Member, bob: Member, carol: Member
) -> None:
    older = await alice.limit("sell", "0.3", "50000")
    newer = await bob.limit("sell", "0.3", "50000")
    response = await alice.amend(older, amount="0.2")
    assert response.status_code == 200, response.text
    amended = response.json()
    assert (amended["amount"], amended["remaining"], amended["status"]) == (
        "0.200000",
        "0.200000",
        "submitted",
    )
    await exchange.settle()
    assert await alice.balances() == demo(alice, btc=(D("9.8"), D("0.2")))

    await carol.limit("buy", "0.1", "50000")
    await exchange.settle()
    first = await alice.order(older)
    assert (first["status"], first["executed"], first["amount"]) == (
        "partially_filled",
        "0.100000",
        "0.200000",
    )
    assert (await bob.order(newer))["executed"] == "0.000000"
    assert await alice.balances() == demo(
        alice, btc=(D("9.8"), D("0.1")), usd=(D(1_000_000) + 5000 - fee(D(5000), MAKER), D(0))
    )


async def test_amend_changing_the_price_loses_time_priority(
    exchange: Exchange, alice: Member, bob: Member, carol: Member
) -> None:
    older = await alice.limit("sell", "0.1", "50010")
    newer = await bob.limit("sell", "0.1", "50000")
    response = await alice.amend(older, price="50000")  # joins bob's level, behind bob
    assert response.status_code == 200, response.text
    assert response.json()["price"] == "50000.00"

    await carol.limit("buy", "0.1", "50000")
    await exchange.settle()
    assert (await bob.order(newer))["status"] == "executed"
    moved = await alice.order(older)
    assert (moved["status"], moved["price"], moved["executed"]) == ("submitted", "50000.00", "0.000000")
    depth = (await exchange.http.get("/markets/btc_usd/depth")).json()
    assert depth["asks"] == [["50000.00", "0.100000"]]


async def test_amend_increasing_the_amount_loses_time_priority_and_locks_more(
    exchange: Exchange, alice: Member, bob: Member, carol: Member
) -> None:
    older = await alice.limit("sell", "0.1", "50000")
    newer = await bob.limit("sell", "0.1", "50000")
    response = await alice.amend(older, amount="0.2")
    assert response.status_code == 200, response.text
    await exchange.settle()
    assert await alice.balances() == demo(alice, btc=(D("9.8"), D("0.2")))

    await carol.limit("buy", "0.1", "50000")
    await exchange.settle()
    assert (await bob.order(newer))["status"] == "executed"
    assert (await alice.order(older))["executed"] == "0.000000"


async def test_amend_to_a_crossing_price_trades_at_once(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    ask = await alice.limit("sell", "0.1", "50000")
    bid = await bob.limit("buy", "0.1", "49000")
    response = await bob.amend(bid, price="50000")
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["executed"]) == ("executed", "0.100000")
    await exchange.settle()

    assert (await alice.order(ask))["status"] == "executed"
    # the amended order took liquidity: it pays the taker fee
    assert await bob.balances() == demo(
        bob, btc=(D("10.1") - fee(D("0.1"), TAKER), D(0)), usd=(D(1_000_000) - 5000, D(0))
    )
    assert await alice.balances() == demo(
        alice, btc=(D("9.9"), D(0)), usd=(D(1_000_000) + 5000 - fee(D(5000), MAKER), D(0))
    )


async def test_amend_that_cannot_apply_is_refused_and_leaves_the_order_as_it_was(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    bid = await alice.limit("buy", "0.5", "40000")
    await bob.limit("sell", "0.2", "40000")
    await exchange.settle()
    before = (await alice.order(bid), await alice.balances())

    nothing_new = expect_problem(await alice.amend(bid), 422, "amend_invalid")
    assert (nothing_new["detail"], "field" in nothing_new) == (AMEND_CHANGES_NOTHING.message, False)
    expect_problem(await alice.amend(bid, amount="0.1"), 422, "amend_invalid")  # below executed 0.2
    expect_problem(await alice.amend(bid, amount="900"), 422, "insufficient_funds")
    expect_problem(await alice.amend(bid, price="40000.001"), 422, "too_precise")
    expect_problem(await alice.amend(bid, price="-1"), 422, "not_positive")
    expect_problem(await alice.amend(bid, price="40000", leverage="2"), 422, "invalid_request")
    await exchange.settle()
    assert (await alice.order(bid), await alice.balances()) == before


async def test_an_amend_that_changes_nothing_is_refused_before_the_order_is_looked_up(
    shared_exchange: Exchange,
) -> None:
    """The amend rule (`bourse.domain.order_shape.amend_shape_error`), said as the RabbitMQ
    ingress says it: whatever order the id names (none here); an id that is no order id is not
    found first, as for every route that names one."""
    alice = shared_exchange.member(1)
    body = expect_problem(await alice.amend("123456789"), 422, "amend_invalid")
    assert body["detail"] == AMEND_CHANGES_NOTHING.message
    expect_problem(await alice.amend("12x"), 404, "order_not_found")

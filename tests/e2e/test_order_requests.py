"""Orders the exchange refuses, and resubmissions it recognises: every refusal is an RFC 9457
problem (application/problem+json) with a stable `code`, and changes nothing (balances, order
lists and the streams are as they were)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Exchange, Member, expect_problem
from tests.e2e.test_trading import demo

D = Decimal


@dataclass(frozen=True)
class Snapshot:
    """Everything a refused request must leave as it was."""

    balances: object
    orders: object
    streams: object


async def snapshot(exchange: Exchange, member: Member) -> Snapshot:
    await exchange.settle()
    return Snapshot(await member.balances(), await member.orders(), await exchange.stream_sizes())


async def test_insufficient_funds_is_refused_with_422_and_changes_nothing(
    exchange: Exchange, alice: Member, carol: Member
) -> None:
    await carol.limit("buy", "1", "40000")  # locks 40,000 of her 500,000 usd
    before = await snapshot(exchange, carol)
    assert before.balances == demo(carol, usd=(D(460_000), D(40_000)))

    refused = expect_problem(
        await carol.post_order({"market": "btc_usd", "side": "buy", "amount": "10", "price": "46001"}),
        422,
        "insufficient_funds",
    )
    assert refused["order_id"]
    expect_problem(
        await carol.post_order({"market": "btc_usd", "side": "sell", "amount": "5.000001", "price": "1"}),
        422,
        "insufficient_funds",
    )
    await exchange.settle()
    assert await carol.balances() == before.balances
    assert [order["status"] for order in await carol.orders(state="open")] == ["submitted"]
    # what is available still trades: exactly her 460,000 usd
    assert (await carol.place(market="btc_usd", side="buy", amount="10", price="46000"))[
        "status"
    ] == "submitted"
    await exchange.settle()
    assert await carol.balances() == demo(carol, usd=(D(0), D(500_000)))
    assert await alice.balances() == demo(alice)


async def test_resubmitting_a_client_order_id_returns_the_first_order_and_places_nothing(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    body = {"market": "btc_usd", "side": "buy", "amount": "0.1", "price": "40000", "client_order_id": "k-1"}
    first = await alice.post_order(body)
    assert first.status_code == 201, first.text
    await exchange.settle()

    again = await alice.post_order(body)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["client_order_id"] == "k-1"
    # even with other terms: the id names the first order
    changed = await alice.post_order({**body, "amount": "0.5", "price": "39000"})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["id"], changed.json()["amount"]) == (first.json()["id"], "0.100000")
    await exchange.settle()

    assert [order["id"] for order in await alice.orders()] == [first.json()["id"]]
    assert await alice.balances() == demo(alice, usd=(D(996_000), D(4000)))
    # the id is per member: another member may use it
    other = await bob.post_order(body)
    assert other.status_code == 201, other.text
    assert other.json()["id"] != first.json()["id"]


async def test_concurrent_submissions_of_one_client_order_id_place_one_order(
    exchange: Exchange, alice: Member
) -> None:
    body = {"market": "btc_usd", "side": "buy", "amount": "0.1", "price": "40000", "client_order_id": "burst"}
    responses = await asyncio.gather(*(alice.post_order(body) for _ in range(3)))
    assert sorted(response.status_code for response in responses) == [200, 200, 201]
    assert len({response.json()["id"] for response in responses}) == 1
    await exchange.settle()
    assert len(await alice.orders()) == 1
    assert await alice.balances() == demo(alice, usd=(D(996_000), D(4000)))


ORDER = {"market": "btc_usd", "side": "buy", "type": "limit", "amount": "0.1", "price": "40000"}


@dataclass(frozen=True)
class Bad:
    body: dict[str, Any] | bytes
    status: int
    code: str


BAD_ORDERS = {
    "malformed_json": Bad(b'{"market": "btc_usd", "side": ', 422, "invalid_request"),
    "json_not_an_object": Bad(b'["btc_usd", "buy"]', 422, "invalid_request"),
    "unknown_field": Bad({**ORDER, "leverage": "10"}, 422, "invalid_request"),
    "unknown_side": Bad({**ORDER, "side": "hold"}, 422, "invalid_request"),
    "unknown_type": Bad({**ORDER, "type": "stop"}, 422, "invalid_request"),
    "amount_as_a_json_number": Bad({**ORDER, "amount": 0.1}, 422, "invalid_request"),
    "missing_amount": Bad({k: v for k, v in ORDER.items() if k != "amount"}, 422, "invalid_request"),
    "bad_client_order_id": Bad({**ORDER, "client_order_id": "has spaces"}, 422, "invalid_request"),
    "amount_too_precise": Bad({**ORDER, "amount": "0.1234567"}, 422, "too_precise"),
    "price_too_precise": Bad({**ORDER, "price": "40000.001"}, 422, "too_precise"),
    "negative_amount": Bad({**ORDER, "amount": "-0.1"}, 422, "not_positive"),
    "negative_price": Bad({**ORDER, "price": "-40000"}, 422, "not_positive"),
    "zero_amount": Bad({**ORDER, "amount": "0"}, 422, "not_positive"),
    "zero_price": Bad({**ORDER, "price": "0.00"}, 422, "not_positive"),
    "amount_too_large": Bad({**ORDER, "amount": "1000.000001"}, 422, "too_large"),
    "price_too_large": Bad({**ORDER, "price": "10000000.01"}, 422, "too_large"),
    "amount_too_small": Bad({**ORDER, "amount": "0.000099"}, 422, "too_small"),
    "amount_not_a_number": Bad({**ORDER, "amount": "1e3"}, 422, "not_a_number"),
    "unknown_market": Bad({**ORDER, "market": "doge_usd"}, 422, "unknown_market"),
    # worth less than the market's minimum order value (1 usd), whatever the side or time in force
    "buy_worth_too_little": Bad({**ORDER, "amount": "0.0001", "price": "9999.99"}, 422, "notional_too_small"),
    "sell_worth_too_little": Bad({**ORDER, "side": "sell", "price": "0.01"}, 422, "notional_too_small"),
    "ioc_worth_too_little": Bad(
        {**ORDER, "amount": "0.0001", "price": "0.01", "time_in_force": "ioc"}, 422, "notional_too_small"
    ),
    "limit_without_price": Bad({k: v for k, v in ORDER.items() if k != "price"}, 422, "price_required"),
    "market_with_price": Bad({**ORDER, "type": "market"}, 422, "price_not_allowed"),
    "post_only_with_ioc": Bad({**ORDER, "post_only": True, "time_in_force": "ioc"}, 422, "invalid_order"),
    "post_only_market": Bad(
        {**ORDER, "type": "market", "price": None, "post_only": True}, 422, "invalid_order"
    ),
}


async def post_raw(member: Member, body: dict[str, Any] | bytes) -> httpx.Response:
    if isinstance(body, bytes):
        headers = {**member.headers, "content-type": "application/json"}
        return await member.http.post("/order", content=body, headers=headers)
    return await member.post_order(body)


@pytest.mark.parametrize("case", list(BAD_ORDERS))
async def test_a_bad_order_is_a_problem_with_a_stable_code_and_changes_nothing(
    shared_exchange: Exchange, case: str
) -> None:
    alice = shared_exchange.member(1)
    if not await alice.orders(state="open"):
        await alice.limit("sell", "0.5", "60000")  # something that must stay as it is
    before = await snapshot(shared_exchange, alice)

    bad = BAD_ORDERS[case]
    expect_problem(await post_raw(alice, bad.body), bad.status, bad.code)
    assert await snapshot(shared_exchange, alice) == before


async def test_a_problem_names_the_field_at_fault(shared_exchange: Exchange) -> None:
    alice = shared_exchange.member(1)
    body = expect_problem(await alice.post_order({**ORDER, "price": "40000.001"}), 422, "too_precise")
    assert body["field"] == "price"
    body = expect_problem(await alice.post_order({**ORDER, "leverage": "10"}), 422, "invalid_request")
    assert [error["field"] for error in body["errors"]] == ["leverage"]


OUT_OF_RANGE_IDS = ["0", "9223372036854775808", "18446744073709551616", "99999999999999999999", "12a", "١٢٣"]
"""Not order ids: ids are positive signed 64-bit integers written in ASCII digits."""


async def test_an_order_id_that_cannot_exist_is_not_found_and_breaks_nothing(
    exchange: Exchange, alice: Member
) -> None:
    for oid in OUT_OF_RANGE_IDS:
        expect_problem(await alice.http.get(f"/order/{oid}", headers=alice.headers), 404, "order_not_found")
        expect_problem(await alice.cancel(oid), 404, "order_not_found")
        expect_problem(await alice.amend(oid, price="1"), 404, "order_not_found")
        response = await alice.http.get("/orders", params={"before_id": oid}, headers=alice.headers)
        expect_problem(response, 422, "invalid_request")
    # the way in still works for everyone
    assert (await alice.place(market="btc_usd", side="buy", amount="0.1", price="100"))[
        "status"
    ] == "submitted"
    await exchange.settle()
    assert len(await alice.orders()) == 1

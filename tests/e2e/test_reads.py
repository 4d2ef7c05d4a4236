"""What the API reads back: the member's orders with their filters and paging, the order book
depth, the public and the member's trades, and the OpenAPI description with its docs page."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import pytest

from bourse.application.catalog import load_catalog
from bourse.application.read_queries import READ_MAX_LIMIT, InvalidReadQuery
from tests.application.test_read_queries import BAD_READ_QUERIES, Bad, check
from tests.e2e.harness import Exchange, Member, expect_problem


async def test_orders_filter_by_market_and_state_and_page_most_recent_first(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    o1 = await alice.limit("buy", "0.1", "40000")
    o2 = await alice.limit("buy", "0.1", "40001")
    o3 = await alice.limit("buy", "1", "2000", market="eth_usd")
    o4 = await alice.limit("sell", "0.1", "50000")
    o5 = await alice.limit("sell", "1", "3000", market="eth_usd")
    assert (await alice.cancel(o2)).status_code == 200
    await bob.limit("buy", "0.1", "50000")  # fills o4
    await bob.limit("buy", "0.1", "30000")  # bob's own: never in alice's lists
    await exchange.settle()

    async def ids(**params: Any) -> list[str]:
        return [order["id"] for order in await alice.orders(**params)]

    assert await ids() == [o5, o4, o3, o2, o1]
    assert [int(oid) for oid in await ids()] == sorted((int(oid) for oid in await ids()), reverse=True)
    assert await ids(market="btc_usd") == [o4, o2, o1]
    assert await ids(market="eth_usd") == [o5, o3]
    assert await ids(state="open") == [o5, o3, o1]
    assert await ids(state="closed") == [o4, o2]
    assert await ids(state="cancelled") == [o2]
    assert await ids(state="executed") == [o4]
    assert await ids(market="btc_usd", state="open") == [o1]
    assert await ids(market="eth_btc") == []

    assert await ids(limit=2) == [o5, o4]
    assert await ids(limit=2, before_id=o4) == [o3, o2]
    assert await ids(limit=2, before_id=o2) == [o1]
    assert await ids(before_id=o1) == []
    assert await ids(state="open", limit=1) == [o5]
    assert await ids(state="open", limit=1, before_id=o5) == [o3]
    assert await ids(market="btc_usd", limit=1, before_id=o4) == [o2]

    statuses = {order["id"]: order["status"] for order in await alice.orders()}
    assert statuses == {o1: "submitted", o2: "cancelled", o3: "submitted", o4: "executed", o5: "submitted"}


async def test_orders_with_bad_filters_are_problems(shared_exchange: Exchange) -> None:
    alice = shared_exchange.member(1)
    get = alice.http.get
    expect_problem(
        await get("/orders", params={"state": "bogus"}, headers=alice.headers), 400, "invalid_request"
    )
    expect_problem(
        await get("/orders", params={"market": "doge_usd"}, headers=alice.headers), 422, "unknown_market"
    )
    for limit in ("0", "1001", "ten"):
        response = await get("/orders", params={"limit": limit}, headers=alice.headers)
        expect_problem(response, 422, "invalid_request")


def rest_request(bad: Bad) -> tuple[str, dict[str, str]]:
    """The REST read of a bad read query: its path and query parameters."""
    params = {name: str(value) for name, value in bad.args.items()}
    if bad.read in ("depth", "trades"):
        return f"/markets/{params.pop('market')}/{bad.read}", params
    return {"orders": "/orders", "member_trades": "/trades"}[bad.read], params


def rest_status(bad: Bad) -> int:
    """The status clients always had for it: a market in the path is not found (404), an unknown
    state 400 (the read models answered it before the gateway checked it), every other bad
    argument 422."""
    if bad.field == "market" and bad.read in ("depth", "trades"):
        return 404
    return 400 if bad.field == "state" else 422


async def test_a_bad_read_is_the_problem_every_reader_names(shared_exchange: Exchange) -> None:
    """The REST API says what the reads' rule says (the query service and the SQL and Redis read
    models too, by the same table): its code, message and field, with the status clients always
    had for it."""
    alice = shared_exchange.member(1)
    markets = load_catalog().markets
    for case, bad in BAD_READ_QUERIES.items():
        path, params = rest_request(bad)
        as_the_gateway_has_them = {k: v for k, v in params.items() if k == "before_id"}
        with pytest.raises(InvalidReadQuery) as rule:
            check(bad, markets, **as_the_gateway_has_them)
        response = await alice.http.get(path, params=params, headers=alice.headers)
        body = expect_problem(response, rest_status(bad), bad.code)
        assert (body["detail"], body["field"]) == (rule.value.message, bad.field), case


async def test_depth_sums_each_price_level_best_first(
    exchange: Exchange, alice: Member, bob: Member, carol: Member
) -> None:
    await alice.limit("buy", "0.1", "40000")
    await alice.limit("buy", "0.2", "40000")
    await alice.limit("buy", "0.3", "39000")
    await alice.limit("buy", "0.05", "38000.5")
    await bob.limit("sell", "0.4", "41000")
    await bob.limit("sell", "0.2", "42000")
    await carol.limit("sell", "0.1", "41000")
    await exchange.settle()

    depth = (await exchange.http.get("/markets/btc_usd/depth")).json()
    sequence = depth.pop("sequence")
    assert depth == {
        "market": "btc_usd",
        "bids": [["40000.00", "0.300000"], ["39000.00", "0.300000"], ["38000.50", "0.050000"]],
        "asks": [["41000.00", "0.500000"], ["42000.00", "0.200000"]],
        "last_price": None,
    }
    assert sequence > 0, "the market's engine input sequence the levels include"
    top = (await exchange.http.get("/markets/btc_usd/depth", params={"limit": 1})).json()
    assert (top["bids"], top["asks"]) == ([["40000.00", "0.300000"]], [["41000.00", "0.500000"]])
    other = (await exchange.http.get("/markets/eth_usd/depth")).json()
    assert (other["bids"], other["asks"], other["last_price"]) == ([], [], None)

    await alice.limit("buy", "0.6", "41000")  # takes the whole 41000 level, rests 0.1 at 41000
    await exchange.settle()
    depth = (await exchange.http.get("/markets/btc_usd/depth")).json()
    assert depth["sequence"] > sequence, "the sequence grows with every change"
    assert depth["asks"] == [["42000.00", "0.200000"]]
    assert depth["bids"][0] == ["41000.00", "0.100000"]
    assert depth["last_price"] == "41000.00"


async def test_trades_list_the_market_most_recent_first(
    exchange: Exchange, alice: Member, bob: Member, carol: Member
) -> None:
    await alice.limit("sell", "0.1", "50000")
    await alice.limit("sell", "0.2", "50100")
    await bob.limit("buy", "0.3", "50100")
    await alice.limit("buy", "0.1", "49000")
    await carol.place(market="btc_usd", side="sell", type="market", amount="0.1")
    await exchange.settle()

    trades = (await exchange.http.get("/markets/btc_usd/trades")).json()
    assert [(t["price"], t["amount"], t["funds"], t["taker_side"]) for t in trades] == [
        ("49000.00", "0.100000", "4900.00000000", "sell"),
        ("50100.00", "0.200000", "10020.00000000", "buy"),
        ("50000.00", "0.100000", "5000.00000000", "buy"),
    ]
    assert [t["id"] for t in trades] == sorted((t["id"] for t in trades), reverse=True)
    assert all(t["market"] == "btc_usd" and t["created_at"].endswith("Z") for t in trades)
    limited = (await exchange.http.get("/markets/btc_usd/trades", params={"limit": 2})).json()
    assert limited == trades[:2]
    assert (await exchange.http.get("/markets/eth_usd/trades")).json() == []

    # the members' own view: side, role, and the order that traded
    assert [(t["side"], t["role"], t["price"]) for t in await alice.trades("btc_usd")] == [
        ("buy", "maker", "49000.00"),
        ("sell", "maker", "50100.00"),
        ("sell", "maker", "50000.00"),
    ]
    assert [(t["side"], t["role"]) for t in await bob.trades()] == [("buy", "taker"), ("buy", "taker")]
    assert [(t["side"], t["role"]) for t in await carol.trades()] == [("sell", "taker")]
    assert await carol.trades("eth_usd") == []


async def test_market_data_of_an_unknown_market_is_a_problem(shared_exchange: Exchange) -> None:
    http = shared_exchange.http
    expect_problem(await http.get("/markets/doge_usd"), 404, "unknown_market")
    # a path that names an unknown market is not found, whatever follows it
    expect_problem(await http.get("/markets/doge_usd/depth"), 404, "unknown_market")
    expect_problem(await http.get("/markets/doge_usd/trades"), 404, "unknown_market")
    alice = shared_exchange.member(1)
    expect_problem(
        await http.get("/trades", params={"market": "doge_usd"}, headers=alice.headers), 422, "unknown_market"
    )


async def test_markets_list_precisions_limits_and_fees(shared_exchange: Exchange) -> None:
    markets = {market["id"]: market for market in (await shared_exchange.http.get("/markets")).json()}
    assert set(markets) == {"btc_usd", "eth_usd", "eth_btc"}
    btc_usd = (await shared_exchange.http.get("/markets/btc_usd")).json()
    assert btc_usd == markets["btc_usd"]
    assert (btc_usd["amount_precision"], btc_usd["price_precision"]) == (6, 2)
    assert (btc_usd["maker_fee"], btc_usd["taker_fee"]) == ("0.001000", "0.002000")
    assert (btc_usd["min_amount"], btc_usd["min_notional"]) == ("0.000100", "1.00000000")
    assert markets["eth_btc"]["min_notional"] == "0.00001000"


ORDER_ROUTES = {
    "/api/v3/order": {"post"},
    "/api/v3/order/{order_id}": {"get", "delete", "patch"},
    "/api/v3/orders": {"get", "delete"},
    "/api/v3/balances": {"get"},
    "/api/v3/trades": {"get"},
}
PUBLIC_ROUTES = {
    "/api/v3/markets": {"get"},
    "/api/v3/markets/{market}": {"get"},
    "/api/v3/markets/{market}/depth": {"get"},
    "/api/v3/markets/{market}/trades": {"get"},
}


async def test_openapi_describes_every_route_with_money_as_strings_and_problems(
    shared_exchange: Exchange,
) -> None:
    response = await shared_exchange.http.get("/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    spec = response.json()
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] == "bourse"
    paths = spec["paths"]
    for path, methods in {**ORDER_ROUTES, **PUBLIC_ROUTES}.items():
        assert methods <= set(paths[path]), (path, set(paths.get(path, {})))

    order_in = spec["components"]["schemas"]["OrderIn"]
    assert order_in["properties"]["amount"]["type"] == "string"
    assert order_in["additionalProperties"] is False
    post = paths["/api/v3/order"]["post"]
    assert {"201", "202", "401", "422"} <= set(post["responses"])
    assert "application/problem+json" in post["responses"]["422"]["content"]
    # every read's limit says its bounds (the rule checks them, not the framework)
    for path in ("/orders", "/trades", "/markets/{market}/depth", "/markets/{market}/trades"):
        (limit,) = [p for p in paths[f"/api/v3{path}"]["get"]["parameters"] if p["name"] == "limit"]
        assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, READ_MAX_LIMIT), path


async def test_the_api_docs_page_is_served_and_points_at_the_openapi_document(
    shared_exchange: Exchange,
) -> None:
    response = await shared_exchange.http.get("/docs")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in response.text.lower()
    assert "/api/v3/openapi.json" in response.text


async def test_openapi_declares_the_bearer_token_on_member_routes_only(shared_exchange: Exchange) -> None:
    """So the docs page can authorize its requests, and clients see which routes need a token."""
    spec = (await shared_exchange.http.get("/openapi.json")).json()
    [(name, scheme)] = spec["components"]["securitySchemes"].items()
    assert (scheme["type"], scheme["scheme"].lower()) == ("http", "bearer")
    for path, methods in ORDER_ROUTES.items():
        for method in methods:
            assert {name: []} in spec["paths"][path][method].get("security", []), (method, path)
    for path, methods in PUBLIC_ROUTES.items():
        for method in methods:
            assert "security" not in spec["paths"][path][method], (method, path)


async def test_keep_alive_requests_are_answered_without_waiting_for_a_delayed_ack(
    shared_exchange: Exchange,
) -> None:
    """With Nagle on, every response after the first on a connection waited ~40 ms (the
    client's delayed ACK) between its header and body writes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", shared_exchange.settings.http_port)
    request = b"GET /api/v3/markets HTTP/1.1\r\nHost: bourse\r\n\r\n"
    times = []
    try:
        for _ in range(11):
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            times.append(time.perf_counter() - started)
    finally:
        writer.close()
    assert statistics.median(times[1:]) < 0.02, times

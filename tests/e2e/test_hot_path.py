"""The gateway's lean front (`bourse.entrypoints.rest.hot_path`) answers POST /order and DELETE /order/{id}
exactly as the FastAPI routes it stands in for: same statuses, same problem bodies."""

from __future__ import annotations

from typing import Any

import httpx

from bourse.entrypoints.rest.hot_path import OrderHotPath
from bourse.services.gateway import Gateway
from tests.e2e.harness import Exchange, Member


def hot_path(exchange: Exchange) -> OrderHotPath:
    assert exchange.process.host is not None
    gateway = next(
        running.service for running in exchange.process.host.running if isinstance(running.service, Gateway)
    )
    front: Any = gateway.app
    while not isinstance(front, OrderHotPath):  # through the wrappers (read headers, metrics...)
        front = front.app
    return front


def framework_client(exchange: Exchange) -> httpx.AsyncClient:
    """A client of the FastAPI app behind the hot path, called in-process."""
    framework: Any = hot_path(exchange).app
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=framework), base_url="http://test/api/v3")


def comparable(response: httpx.Response) -> tuple[int, str, Any]:
    body = response.json()
    if isinstance(body, dict):
        body = {key: value for key, value in body.items() if key not in ("id", "created_at")}
    return response.status_code, response.headers["content-type"].split(";")[0], body


async def test_refused_cancels_and_orders_are_answered_alike(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    bobs = await bob.place(market="btc_usd", side="sell", type="limit", price="60000", amount="0.1")
    async with framework_client(exchange) as framework:
        requests: list[tuple[str, str, dict[str, str], dict[str, Any] | None]] = [
            ("DELETE", "/order/123", alice.headers, None),  # no such order
            ("DELETE", "/order/abc", alice.headers, None),  # not an order id
            ("DELETE", f"/order/{bobs['id']}", alice.headers, None),  # another member's
            ("DELETE", f"/order/{bobs['id']}", {}, None),  # no token
            ("DELETE", f"/order/{bobs['id']}", {"Authorization": "Bearer x.y.z"}, None),
            ("POST", "/order", alice.headers, {"market": "nope", "side": "buy", "type": "limit"}),
            (
                "POST",
                "/order",
                alice.headers,
                {"market": "btc_usd", "side": "buy", "type": "market", "amount": "0.1", "price": "1"},
            ),
            ("POST", "/order", {}, {"market": "btc_usd", "side": "buy", "type": "limit"}),
        ]
        for method, path, headers, body in requests:
            served = hot_path(exchange).served
            hot = await exchange.http.request(method, path, headers=headers, json=body)
            assert hot_path(exchange).served == served + 1  # the lean front answered it
            slow = await framework.request(method, path, headers=headers, json=body)
            assert comparable(hot) == comparable(slow), (method, path, hot.text, slow.text)
            assert hot.status_code >= 400


async def test_a_cancel_answers_the_cancelled_order_on_either_path(exchange: Exchange, alice: Member) -> None:
    first = await alice.place(market="btc_usd", side="buy", type="limit", price="40000", amount="0.1")
    second = await alice.place(market="btc_usd", side="buy", type="limit", price="40000", amount="0.1")
    async with framework_client(exchange) as framework:
        served = hot_path(exchange).served
        hot = await exchange.http.delete(f"/order/{first['id']}", headers=alice.headers)
        assert hot_path(exchange).served == served + 1
        slow = await framework.delete(f"/order/{second['id']}", headers=alice.headers)
    assert comparable(hot) == comparable(slow)
    assert hot.json()["status"] == "cancelled"
    assert hot.json()["id"] == first["id"]

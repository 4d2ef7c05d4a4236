"""The gateway's HTTP metrics (`bourse.entrypoints.rest.http_metrics`): a request is labelled with
the template of the route that serves it, never its path, so the series stay as many as the
routes whatever clients ask; each answer is counted once, before the client has it; a placed
order is counted by what its answer says."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
from nats.aio.client import Client

from bourse.adapters.metrics import REGISTRY
from bourse.config.settings import Settings
from bourse.entrypoints.rest.app import create_app
from bourse.entrypoints.rest.deps import GatewayDeps
from bourse.entrypoints.rest.http_metrics import OTHER, HttpMetrics, RouteTemplates, order_outcome
from tests.conftest import SYSTEM_NATS_URL, free_port
from tests.e2e.harness import Exchange
from tests.runtime.scrape import Scrape, label_moves


def gateway_routes() -> RouteTemplates:
    """The templates of the gateway's FastAPI app (its routes only read the catalog when called)."""
    return RouteTemplates.of(create_app(cast(GatewayDeps, SimpleNamespace(catalog=None))).routes)


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/api/v3/order", "/api/v3/order"),
        ("/api/v3/order/7323425123456", "/api/v3/order/{order_id}"),
        ("/api/v3/order/not-an-id", "/api/v3/order/{order_id}"),
        ("/api/v3/orders", "/api/v3/orders"),
        ("/api/v3/markets", "/api/v3/markets"),
        ("/api/v3/markets/btc_usd", "/api/v3/markets/{market}"),
        ("/api/v3/markets/btc_usd/klines", "/api/v3/markets/{market}/klines"),
        ("/api/v3/markets/eth_usd/depth", "/api/v3/markets/{market}/depth"),
        ("/api/v3/openapi.json", "/api/v3/openapi.json"),
        ("/api/v3/order/1/2", OTHER),
        ("/api/v3/orders/", OTHER),
        ("/api/v3/markets/btc_usd/nope", OTHER),
        ("/api/v2/order", OTHER),
        ("/", OTHER),
    ],
)
def test_a_path_reads_as_the_template_of_the_route_that_serves_it_and_any_other_as_other(
    path: str, template: str
) -> None:
    assert gateway_routes()(path) == template


def test_an_order_answer_reads_as_what_it_says_of_the_order() -> None:
    assert {
        status: order_outcome(status) for status in (200, 201, 202, 400, 401, 409, 413, 422, 500, 503, 504)
    } == {
        200: "refused",  # a repeated client_order_id: the first order, no new one
        201: "accepted",
        202: "pending",
        400: "refused",
        401: "refused",
        409: "refused",
        413: "refused",
        422: "refused",
        500: "failed",
        503: "failed",
        504: "failed",
    }


def requests_counted(route: str, code: str) -> float:
    labels = {"method": "POST", "route": route, "code": code}
    return REGISTRY.get_sample_value("bourse_http_requests_total", labels) or 0.0


async def test_an_answer_is_counted_before_the_client_has_it_and_a_crash_as_a_500() -> None:
    route = f"/test/{uuid.uuid4().hex}"  # a route of its own: the registry is the process's
    seen_by_client: list[float] = []

    async def answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{", "more_body": True})
        await send({"type": "http.response.body", "body": b"}"})

    async def crash(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("a bug")

    async def client(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            seen_by_client.append(requests_counted(route, "201"))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "POST", "path": route}
    await HttpMetrics(answer, RouteTemplates([route]))(scope, receive, client)
    assert seen_by_client == [0.0, 1.0]  # counted with its last body part, once
    with pytest.raises(RuntimeError):
        await HttpMetrics(crash, RouteTemplates([route]))(scope, receive, client)
    assert requests_counted(route, "500") == 1.0
    labels = {"method": "POST", "route": route}
    assert REGISTRY.get_sample_value("bourse_http_request_duration_seconds_count", labels) == 2.0


@pytest.fixture
def nats_url() -> str:
    return SYSTEM_NATS_URL


@pytest.fixture
async def exchange(settings: Settings, nc: Client) -> AsyncIterator[Exchange]:
    update = {"http_port": free_port(), "health_port": free_port(), "demo_seed": True}
    running = await Exchange.start(settings.model_copy(update=update), nc)
    yield running
    await running.stop()


async def test_a_hundred_order_ids_and_an_unknown_path_make_two_route_labels_not_a_hundred_and_one(
    exchange: Exchange,
) -> None:
    alice = exchange.member(1)
    health = f"http://127.0.0.1:{exchange.settings.health_port}"
    before = await Scrape.of(health)
    for n in range(100):
        response = await exchange.http.get(f"/order/{7_000_000_000_000 + n}", headers=alice.headers)
        assert response.status_code == 404, response.text
    assert (await exchange.http.get("/no/such/path", headers=alice.headers)).status_code == 404
    after = await Scrape.of(health)

    requests = label_moves(after, before, "bourse_http_requests_total", "route", method="GET")
    assert requests == {"/api/v3/order/{order_id}": 100, OTHER: 1}
    assert after.label_values("bourse_http_requests_total", "code", method="GET", route=OTHER) >= {"404"}
    durations = label_moves(
        after, before, "bourse_http_request_duration_seconds_count", "route", method="GET"
    )
    assert durations == requests

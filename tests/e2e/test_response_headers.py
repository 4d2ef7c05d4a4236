"""What every answer of the gateway's port says about itself, whichever HTTP path gives it (the
hot path for POST /order and DELETE /order/{id}, FastAPI for the rest): `nosniff`, no server
banner, `Cache-Control: no-store` unless it is public market data or the docs
(`bourse.entrypoints.rest.response_headers`); and the docs page, served from the package's own
Swagger UI files under a Content-Security-Policy (`bourse.entrypoints.rest.api_docs`)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import async_playwright

from bourse.entrypoints.rest.hot_path import OrderHotPath
from bourse.services.gateway import Gateway
from tests.conftest import SYSTEM_NATS_URL
from tests.e2e.harness import Exchange

CHROMIUM = Path("/usr/bin/chromium")
HAVE_CHROMIUM = CHROMIUM.exists()


@pytest.fixture(scope="module")
def module_nats_url() -> str:
    """Headers do not depend on the NATS server: the machine's one is enough."""
    return SYSTEM_NATS_URL


def hot_path(exchange: Exchange) -> OrderHotPath:
    assert exchange.process.host is not None
    gateway = next(
        running.service for running in exchange.process.host.running if isinstance(running.service, Gateway)
    )
    front: Any = gateway.app
    while not isinstance(front, OrderHotPath):
        front = front.app
    return front


def root(exchange: Exchange) -> str:
    return f"http://127.0.0.1:{exchange.settings.http_port}"


Request = tuple[str, str, bool, dict[str, Any] | None]
"""method, path (under /api/v3 unless absolute), with alice's token, JSON body."""
ORDER = {"market": "btc_usd", "side": "buy", "type": "limit", "price": "1000", "amount": "0.01"}


async def hot_and_framework_requests(exchange: Exchange) -> tuple[list[Request], list[Request]]:
    """Requests answered by the hot path and by FastAPI, successes and refusals, for one of
    alice's orders placed here."""
    alice = exchange.member(1)
    order_id = await alice.limit("buy", "0.01", "1000")
    hot: list[Request] = [
        ("POST", "/order", True, ORDER),  # 201
        ("POST", "/order", True, {**ORDER, "price": "-1"}),  # 422
        ("POST", "/order", False, ORDER),  # 401
        ("DELETE", "/order/123", True, None),  # 404
        ("DELETE", f"/order/{order_id}", True, None),  # 200, cancelled
    ]
    framework: list[Request] = [
        ("GET", f"/order/{order_id}", True, None),
        ("GET", "/order/abc", True, None),  # 404
        ("GET", "/orders", True, None),
        ("GET", "/orders?limit=0", True, None),  # refused
        ("PATCH", f"/order/{order_id}", True, {}),  # 422
        ("DELETE", "/orders", True, None),
        ("GET", "/balances", True, None),
        ("GET", "/balances", False, None),  # 401
        ("GET", "/trades", True, None),
        ("PUT", "/order", True, ORDER),  # 405
        ("GET", "/nowhere", True, None),  # 404
        ("GET", f"{root(exchange)}/", True, None),  # 404, outside the API
    ]
    return hot, framework


PUBLIC: list[Request] = [
    ("GET", "/markets", False, None),
    ("GET", "/markets/btc_usd", False, None),
    ("GET", "/markets/nope", False, None),  # 404
    ("GET", "/markets/btc_usd/depth", False, None),
    ("GET", "/markets/btc_usd/trades", False, None),
    ("GET", "/markets/btc_usd/ticker", False, None),
    ("GET", "/markets/btc_usd/klines?period=1m", False, None),
    ("GET", "/tickers", False, None),
    ("GET", "/docs", False, None),
    ("GET", "/docs/assets/swagger-ui.css", False, None),
    ("GET", "/openapi.json", False, None),
]


async def send(exchange: Exchange, request: Request) -> httpx.Response:
    method, path, with_token, body = request
    headers = exchange.member(1).headers if with_token else {}
    return await exchange.http.request(method, path, headers=headers, json=body)


async def test_every_answer_says_nosniff_and_names_no_server_on_both_http_paths(
    shared_exchange: Exchange,
) -> None:
    hot, framework = await hot_and_framework_requests(shared_exchange)
    for path_name, requests, by_hot_path in (
        ("hot", hot, True),
        ("framework", framework, False),
        ("public", PUBLIC, False),
    ):
        statuses = set()
        for request in requests:
            served = hot_path(shared_exchange).served
            response = await send(shared_exchange, request)
            assert hot_path(shared_exchange).served == served + int(by_hot_path), request
            statuses.add(response.status_code)
            assert response.headers.get_list("x-content-type-options") == ["nosniff"], (
                request,
                response.headers,
            )
            assert "server" not in response.headers, (request, response.headers)
        if path_name != "public":
            assert {200, 401, 404, 422} <= statuses, (path_name, statuses)  # errors included


async def test_member_and_order_answers_are_never_stored_and_public_market_data_may_be_cached(
    shared_exchange: Exchange,
) -> None:
    hot, framework = await hot_and_framework_requests(shared_exchange)
    for request in [*hot, *framework]:
        response = await send(shared_exchange, request)
        assert response.headers.get_list("cache-control") == ["no-store"], (request, response.status_code)
    for request in PUBLIC:
        response = await send(shared_exchange, request)
        assert "cache-control" not in response.headers, (request, response.headers)


class Broken:
    """A dependency whose every call fails unexpectedly (not one of the errors the routes answer)."""

    def __getattr__(self, name: str) -> Any:
        async def fail(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError(f"broken {name}")

        return fail


async def test_an_unexpected_failure_is_the_same_500_problem_with_the_same_headers_on_both_paths(
    shared_exchange: Exchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    deps = hot_path(shared_exchange).deps
    monkeypatch.setattr(deps, "intake", Broken())
    monkeypatch.setattr(deps, "queries", Broken())
    alice = shared_exchange.member(1)
    served = hot_path(shared_exchange).served
    hot = await alice.post_order(ORDER)
    assert hot_path(shared_exchange).served == served + 1
    framework = await alice.http.get("/balances", headers=alice.headers)
    for response in (hot, framework):
        assert response.status_code == 500, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "internal_error"
        assert "broken" not in response.text  # nothing of the failure leaks
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
        assert "server" not in response.headers
    assert hot.json() == framework.json()


async def test_a_request_the_server_refuses_itself_still_says_nosniff_and_names_no_server(
    shared_exchange: Exchange,
) -> None:
    """uvicorn answers a malformed request without calling the app: the server sends the headers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", shared_exchange.settings.http_port)
    try:
        writer.write(b"GET /api/v3/markets HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n")
        await writer.drain()
        head = (await asyncio.wait_for(reader.read(4096), 5)).decode("latin-1").lower()
    finally:
        writer.close()
    assert head.startswith("http/1.1 400"), head
    assert "\r\nx-content-type-options: nosniff\r\n" in head
    assert "\r\nserver:" not in head


def csp_directives(policy: str) -> dict[str, list[str]]:
    return {
        name: values
        for name, *values in (directive.split() for directive in policy.split(";") if directive.strip())
    }


async def test_the_docs_page_uses_only_the_packages_own_assets_and_says_so_in_its_csp(
    shared_exchange: Exchange,
) -> None:
    page = await shared_exchange.http.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)""", page.text)
    assert urls, page.text
    assert not re.search(r"https?://", page.text), page.text  # no CDN, no outside link at all
    for url in urls:
        assert url.startswith("/api/v3/docs/assets/"), url
        asset = await shared_exchange.http.get(f"{root(shared_exchange)}{url}")
        assert asset.status_code == 200, url
        assert asset.content
        kind = asset.headers["content-type"]
        assert kind.split("/")[0] in ("text", "image", "application"), kind
        if url.endswith(".js"):
            assert "javascript" in kind  # nosniff: a script must say it is one
        if url.endswith(".css"):
            assert kind.startswith("text/css")
    assert "/api/v3/openapi.json" in page.text
    assert (await shared_exchange.http.get("/docs/assets/redoc.standalone.js")).status_code == 404

    policy = csp_directives(page.headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in page.headers["content-security-policy"]
    assert "'unsafe-eval'" not in page.headers["content-security-policy"]
    inline = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    hashes = [f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in inline]
    assert policy["script-src"] == ["'self'", *hashes]  # the one inline script, by its hash
    for directive in ("style-src", "connect-src"):
        assert policy[directive] == ["'self'"], directive


async def test_the_docs_page_renders_in_a_browser_without_any_outside_request_or_csp_violation(
    shared_exchange: Exchange,
) -> None:
    """Headless Chromium (Debian's, as in tests/runtime/test_dashboard_browser.py; `.ci/run`
    installs it): Swagger UI draws the API from the OpenAPI document and "Try it out" reaches
    the gateway, with the page's CSP enforced and every request to the gateway itself."""
    assert HAVE_CHROMIUM, "install Debian's chromium (apt-get install chromium) to run this test"
    base = root(shared_exchange)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page()
            console: list[str] = []
            requested: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("request", lambda request: requested.append(request.url))
            await page.goto(f"{base}/api/v3/docs")
            await page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
            assert "bourse" in await page.inner_text(".swagger-ui .info .title")
            markets = page.locator("#operations-markets-list_markets_api_v3_markets_get")
            await markets.locator(".opblock-summary").click()
            await page.click("button.try-out__btn")
            await page.click("button.execute")
            await page.wait_for_selector(".live-responses-table", timeout=20_000)
            assert "btc_usd" in await page.inner_text(".live-responses-table")
        finally:
            await browser.close()
    assert console == []  # a CSP violation is reported on the console
    origins = {urlsplit(url)._replace(path="", query="", fragment="").geturl() for url in requested}
    assert origins == {base}, requested
    assert f"{base}/api/v3/markets" in requested

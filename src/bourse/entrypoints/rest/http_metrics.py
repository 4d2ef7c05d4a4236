"""Prometheus metrics of the REST API: an ASGI wrapper that counts every answer by method, route
template and status code (`bourse_http_requests_total`), times it
(`bourse_http_request_duration_seconds`), and counts the orders placed
(`bourse_orders_total{source="rest"}`).

The route label is the template of the route that serves the path (`/api/v3/order/{order_id}`),
never the path itself: a label value per order id would make a series per order. A path no
route serves is `other`, and a method outside HTTP's usual ones is `other` too, so the series
are bounded by the routes whatever clients send.

Orders are counted here, from the route and the status, because each status of
`POST /api/v3/order` has one meaning (`bourse.entrypoints.rest.orders.place_order`, served by
the hot path or FastAPI alike): 201 accepted (durable, funds locked), 202 pending (durable, not
decided in time), 200 refused (a repeated `client_order_id`: the first order is returned, no new
one placed), any other 4xx refused (invalid, unauthorised, insufficient funds: nothing placed),
5xx failed (503 not made durable, 504 not known whether it was, 500 a bug).

Cost per request: one route lookup (a dict for fixed paths, a few regexes for the others), one
counter increment and one histogram observe, their label children cached by label values."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Final

import fastapi.routing
from prometheus_client import Counter, Histogram
from starlette.routing import BaseRoute, compile_path

from bourse.adapters.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS, OrderOutcome, count_order

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OTHER: Final = "other"
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
PLACE_ORDER: Final = ("POST", "/api/v3/order")


class RouteTemplates:
    """A request path -> the template of the route that serves it, or `other`."""

    def __init__(self, templates: Iterable[str]) -> None:
        self._fixed: dict[str, str] = {}
        self._patterns: list[tuple[re.Pattern[str], str]] = []
        for template in templates:
            if "{" in template:
                pattern, _, _ = compile_path(template)
                self._patterns.append((pattern, template))
            else:
                self._fixed.setdefault(template, template)

    @classmethod
    def of(cls, routes: Iterable[BaseRoute]) -> RouteTemplates:
        """The templates of an app's routes (`FastAPI.routes`)."""
        return cls(route_paths(routes))

    def __call__(self, path: str) -> str:
        fixed = self._fixed.get(path)
        if fixed is not None:
            return fixed
        for pattern, template in self._patterns:
            if pattern.match(path):
                return template
        return OTHER


def route_paths(routes: Iterable[BaseRoute]) -> Iterator[str]:
    """Every route's path template, those of included routers too. FastAPI keeps an included
    router as one entry of `routes` since 0.16x (its routes listed by `iter_route_contexts`);
    before, it copied them into `routes`."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    for route in list(routes) if contexts is None else contexts(list(routes)):
        path = getattr(route, "path", None)
        if isinstance(path, str):
            yield path


def order_outcome(status: int) -> OrderOutcome:
    """What a `POST /api/v3/order` answer says of the order (see the module's docstring)."""
    if status == 201:
        return "accepted"
    if status == 202:
        return "pending"
    if status >= 500:
        return "failed"
    return "refused"


_Meters = tuple[Counter, Histogram, OrderOutcome | None]


class HttpMetrics:
    """ASGI wrapper counting each HTTP answer when its last body part is sent (before it is
    handed to the server: a client that has its answer finds it counted), or, if the app
    raised or sent nothing, when it returns, as a 500 (what the server answers then)."""

    def __init__(self, app: ASGIApp, routes: RouteTemplates) -> None:
        self.app = app
        self.routes = routes
        self._meters: dict[tuple[str, str, int], _Meters] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"]
        if method not in METHODS:
            method = OTHER
        route = self.routes(scope["path"])
        status = 500
        counted = False

        async def send_counted(message: Message) -> None:
            nonlocal status, counted
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body" and not counted and not message.get("more_body", False):
                counted = True
                self._count(method, route, status, time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            if not counted:
                self._count(method, route, status, time.perf_counter() - started)

    def _count(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        meters = self._meters.get(key)
        if meters is None:
            meters = self._meters[key] = self._meters_of(method, route, status)
        requests, duration, order = meters
        requests.inc()
        duration.observe(seconds)
        if order is not None:
            count_order("rest", order)

    @staticmethod
    def _meters_of(method: str, route: str, status: int) -> _Meters:
        order = order_outcome(status) if (method, route) == PLACE_ORDER else None
        return (
            HTTP_REQUESTS.labels(method, route, str(status)),
            HTTP_REQUEST_SECONDS.labels(method, route),
            order,
        )

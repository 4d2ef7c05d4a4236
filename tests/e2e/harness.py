"""The whole exchange in this process, driven over HTTP as a client would.

`Exchange` runs every service of `bourse up` (auth, ids, accounts, matching, query, statistics,
persistence on a SQLite file in the data folder, gateway) with `BourseProcess` against a test's NATS and
namespace, signs member tokens with the key ring the auth service uses, and talks to the gateway
with httpx. `Member` is one member's client.

`settle()` is the barrier that makes read-after-write assertions exact: it returns once every
command is consumed by accounts and matching and the query service, the statistics service and
persistence (whose database the gateway reads first) have applied everything the EVENTS and
ACCOUNTS streams hold, so balances, order lists, depth, tickers and k-lines read afterwards are
final (and a check that "nothing changed" is not merely a check made too early).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import httpx
from nats.aio.client import Client

from bourse.adapters.auth import TokenIssuer
from bourse.adapters.jetstream import remove_topology
from bourse.adapters.query_client import QueryClient
from bourse.config.auth import issuer_for, key_ring_for
from bourse.config.settings import Settings
from bourse.contracts.subjects import ACCOUNTS, EVENTS, MATCH, ORDERS
from bourse.runtime.process import BourseProcess
from bourse.runtime.service import Service
from bourse.services.accounts import AccountsService
from bourse.services.auth import Auth
from bourse.services.gateway import Gateway
from bourse.services.ids import Ids
from bourse.services.matching import MatchingService
from bourse.services.persistence import Persistence
from bourse.services.query import Query
from bourse.services.statistics import Statistics

T = TypeVar("T")
PROBLEM_JSON = "application/problem+json"
SERVICES = [Auth, Ids, AccountsService, MatchingService, Query, Statistics, Persistence, Gateway]

Balances = dict[str, tuple[Decimal, Decimal]]
"""currency -> (available, locked)"""

DEMO_BALANCES: dict[int, dict[str, Decimal]] = {
    1: {"btc": Decimal(10), "eth": Decimal(100), "usd": Decimal(1_000_000)},
    2: {"btc": Decimal(10), "eth": Decimal(100), "usd": Decimal(1_000_000)},
    3: {"btc": Decimal(5), "eth": Decimal(50), "usd": Decimal(500_000)},
}
"""What `src/bourse/config/markets.toml` credits the demo members with."""


def expect_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert an RFC 9457 problem with this status and stable code; return its body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].split(";")[0] == PROBLEM_JSON, response.headers
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status, body
    assert body["type"].endswith(code), body
    assert body["detail"], body
    return body


class Member:
    """One member's side of the API: every call returns the raw response or its checked JSON."""

    def __init__(self, exchange: Exchange, member_id: int) -> None:
        self.exchange = exchange
        self.id = member_id
        self.token = exchange.issuer.issue(member_id)
        self.headers = {"Authorization": f"Bearer {self.token}"}

    @property
    def http(self) -> httpx.AsyncClient:
        return self.exchange.http

    async def post_order(self, body: dict[str, Any]) -> httpx.Response:
        return await self.http.post("/order", json=body, headers=self.headers)

    async def place(self, **body: Any) -> dict[str, Any]:
        """POST /order, expecting 201 (accepted and decided); returns the order."""
        response = await self.post_order(body)
        assert response.status_code == 201, (response.status_code, response.text, self.exchange.health())
        order: dict[str, Any] = response.json()
        return order

    async def limit(self, side: str, amount: str, price: str, market: str = "btc_usd", **extra: Any) -> str:
        """A limit order accepted and decided; returns its id."""
        order = await self.place(market=market, side=side, type="limit", amount=amount, price=price, **extra)
        return str(order["id"])

    async def order(self, order_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/order/{order_id}", headers=self.headers)
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    async def orders(self, **params: Any) -> list[dict[str, Any]]:
        response = await self.http.get("/orders", params=params, headers=self.headers)
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()
        return found

    async def cancel(self, order_id: str) -> httpx.Response:
        return await self.http.delete(f"/order/{order_id}", headers=self.headers)

    async def amend(self, order_id: str, **body: Any) -> httpx.Response:
        return await self.http.patch(f"/order/{order_id}", json=body, headers=self.headers)

    async def cancel_all(self, market: str | None = None) -> list[str]:
        params = {"market": market} if market is not None else {}
        response = await self.http.delete("/orders", params=params, headers=self.headers)
        assert response.status_code == 200, response.text
        ids: list[str] = response.json()
        return ids

    async def balances(self) -> Balances:
        response = await self.http.get("/balances", headers=self.headers)
        assert response.status_code == 200, response.text
        return {
            row["currency"]: (Decimal(row["available"]), Decimal(row["locked"])) for row in response.json()
        }

    async def trades(self, market: str | None = None) -> list[dict[str, Any]]:
        params = {"market": market} if market is not None else {}
        response = await self.http.get("/trades", params=params, headers=self.headers)
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()
        return found


@dataclass
class Exchange:
    settings: Settings
    nc: Client
    process: BourseProcess
    http: httpx.AsyncClient
    issuer: TokenIssuer

    @classmethod
    async def start(
        cls, settings: Settings, nc: Client, services: Sequence[type[Service]] = SERVICES
    ) -> Exchange:
        process = BourseProcess(settings, list(services), embedded_nats=False)
        try:
            await process.start()
        except BaseException:
            await process.stop()
            raise
        issuer = issuer_for(settings, key_ring_for(settings))
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}/api/v3", timeout=10.0)
        exchange = cls(settings, nc, process, http, issuer)
        try:
            await exchange.settle()
        except BaseException:
            await exchange.stop()
            raise
        return exchange

    async def stop(self) -> None:
        await self.http.aclose()
        await self.process.stop()

    def health(self) -> Any:
        """What the process's health endpoint would say (consumer failures, last errors)."""
        return self.process.health()

    def member(self, member_id: int) -> Member:
        return Member(self, member_id)

    async def settle(self, timeout_s: float = 10.0) -> None:
        """Wait until the pipeline is idle and the read models (query service, persistence) have
        applied every event."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        clean_passes = 0
        while clean_passes < 2:
            clean_passes = clean_passes + 1 if await self._idle() else 0
            assert loop.time() < deadline, "the pipeline did not settle in time"
            await asyncio.sleep(0.005)

    async def _idle(self) -> bool:
        js = self.nc.jetstream()
        ns = self.settings.namespace
        before = [(await js.stream_info(spec.name(ns))).state.last_seq for spec in (ORDERS, MATCH)]
        for spec in (ORDERS, MATCH):
            for consumer in await js.consumers_info(spec.name(ns)):
                if consumer.num_pending or consumer.num_ack_pending:
                    return False
        ready = await QueryClient(self.nc, ns).ready()
        events = (await js.stream_info(EVENTS.name(ns))).state.last_seq
        accounts = (await js.stream_info(ACCOUNTS.name(ns))).state.last_seq
        after = [(await js.stream_info(spec.name(ns))).state.last_seq for spec in (ORDERS, MATCH)]
        return (
            before == after
            and ready.events_seq >= events
            and ready.accounts_seq >= accounts
            and self._persisted(events, accounts)
            and self._folded(events)
        )

    def _persisted(self, events: int, accounts: int) -> bool:
        """Has the persistence service committed every message up to these stream sequences?"""
        host = self.process.host
        for running in host.running if host is not None else []:
            service = running.service
            if isinstance(service, Persistence):
                return service.events.watermark >= events and service.accounts.watermark >= accounts
        return True

    def _folded(self, events: int) -> bool:
        """Has the statistics service applied every EVENTS message up to this sequence?"""
        host = self.process.host
        for running in host.running if host is not None else []:
            service = running.service
            if isinstance(service, Statistics):
                return service.events.watermark >= events
        return True

    def service(self, kind: type[T]) -> T:
        """The running instance of a service of this process."""
        host = self.process.host
        for running in host.running if host is not None else []:
            if isinstance(running.service, kind):
                return running.service
        raise LookupError(kind.__name__)

    async def stream_sizes(self) -> dict[str, int]:
        """Messages in each stream: an input refused at the gateway adds none."""
        js = self.nc.jetstream()
        ns = self.settings.namespace
        return {
            spec.kind: (await js.stream_info(spec.name(ns))).state.messages
            for spec in (ORDERS, MATCH, EVENTS, ACCOUNTS)
        }


async def delete_namespace(nc: Client, namespace: str) -> None:
    """Remove a namespace's streams and buckets (what the `nc` fixture does after a test)."""
    await remove_topology(nc.jetstream(), namespace)

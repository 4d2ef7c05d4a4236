"""Asking the `query` service over NATS request/reply, for the gateway and other services."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from bourse.contracts import (
    BALANCES_REPLY_DECODER,
    DEPTH_REPLY_DECODER,
    MEMBER_TRADES_REPLY_DECODER,
    ORDER_REPLY_DECODER,
    ORDERS_REPLY_DECODER,
    QUERY_ERROR_DECODER,
    TRADES_REPLY_DECODER,
    BalancesQuery,
    BalancesReply,
    DepthQuery,
    MemberTradesQuery,
    MemberTradesReply,
    OrderQuery,
    OrdersQuery,
    OrdersReply,
    TradesQuery,
    TradesReply,
    json_encode,
)
from bourse.domain.order_views import DepthView, OrderView
from bourse.topology import service_subject

T = TypeVar("T")


class QueryFailed(Exception):
    """The query service refused the query (`code`, `status`) or could not be reached."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class QueryClient:
    def __init__(self, nc: Client, namespace: str, *, timeout_s: float = 2.0) -> None:
        self.nc = nc
        self.namespace = namespace
        self.timeout_s = timeout_s

    async def _ask(self, endpoint: str, query: Any, decoder: msgspec.json.Decoder[T]) -> T:
        subject = service_subject(self.namespace, "query", endpoint)
        try:
            reply = await self.nc.request(subject, json_encode(query), timeout=self.timeout_s)
        except (NoRespondersError, NatsTimeoutError, TimeoutError) as exc:
            raise QueryFailed("unavailable", "the query service did not answer", 503) from exc
        headers = reply.headers or {}
        if "Nats-Service-Error-Code" in headers:
            try:
                error = QUERY_ERROR_DECODER.decode(reply.data)
                code, message = error.code, error.message
            except msgspec.DecodeError:
                code, message = "query_failed", headers.get("Nats-Service-Error", "")
            raise QueryFailed(code, message, int(headers["Nats-Service-Error-Code"]))
        return decoder.decode(reply.data)

    async def order(self, member_id: int, order_id: int) -> OrderView | None:
        try:
            return await self._ask("order", OrderQuery(member_id, order_id), ORDER_REPLY_DECODER)
        except QueryFailed as exc:
            if exc.code == "order_not_found":
                return None
            raise

    async def orders(self, query: OrdersQuery) -> OrdersReply:
        return await self._ask("orders", query, ORDERS_REPLY_DECODER)

    async def balances(self, member_id: int) -> BalancesReply:
        return await self._ask("balances", BalancesQuery(member_id), BALANCES_REPLY_DECODER)

    async def depth(self, market: str, limit: int) -> DepthView:
        return await self._ask("depth", DepthQuery(market, limit), DEPTH_REPLY_DECODER)

    async def trades(self, market: str, limit: int) -> TradesReply:
        return await self._ask("trades", TradesQuery(market, limit), TRADES_REPLY_DECODER)

    async def member_trades(self, query: MemberTradesQuery) -> MemberTradesReply:
        return await self._ask("member_trades", query, MEMBER_TRADES_REPLY_DECODER)

"""Asking the `query` service over NATS request/reply: the gateway's (and any caller's) side.

`ask` is the request/reply of every JSON service of bourse answered as the query service answers
(the statistics service too: `bourse.adapters.statistics_client`): the reply decoded, or the
failure raised as `QueryFailed`."""

from __future__ import annotations

from typing import TypeVar

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from bourse.application.ports import QueryFailed
from bourse.contracts.messages import (
    BALANCES_REPLY_DECODER,
    DEPTH_REPLY_DECODER,
    MEMBER_TRADES_REPLY_DECODER,
    ORDER_REPLY_DECODER,
    ORDERS_REPLY_DECODER,
    QUERY_ERROR_DECODER,
    QUERY_READY_DECODER,
    TRADES_REPLY_DECODER,
    BalancesQuery,
    DepthQuery,
    MemberTradesQuery,
    OrderQuery,
    OrdersQuery,
    QueryError,
    QueryReady,
    TradesQuery,
    json_encode,
)
from bourse.contracts.subjects import service_subject
from bourse.domain.order_views import BalanceView, DepthView, MemberTrade, OrderView, PublicTrade
from bourse.domain.orders import OrderStatus
from bourse.domain.values import MemberId, OrderId

R = TypeVar("R")

QUERY_TIMEOUT_S = 2.0


class QueryClient:
    """The query service from the caller's side: one coroutine per endpoint; every failure (an
    error reply, no instance, a timeout) is raised as `QueryFailed`."""

    def __init__(self, nc: Client, namespace: str, *, timeout: float = QUERY_TIMEOUT_S) -> None:
        self.nc = nc
        self.namespace = namespace
        self.timeout = timeout

    async def order(self, member_id: int, order_id: int) -> OrderView:
        query = OrderQuery(MemberId(member_id), OrderId(order_id))
        return await self._ask("order", query, ORDER_REPLY_DECODER)

    async def orders(
        self,
        member_id: int,
        *,
        market: str | None = None,
        state: str | None = None,
        status: OrderStatus | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[OrderView]:
        before = None if before_id is None else OrderId(before_id)
        query = OrdersQuery(MemberId(member_id), market, state, status, limit, before)
        return (await self._ask("orders", query, ORDERS_REPLY_DECODER)).orders

    async def balances(self, member_id: int) -> list[BalanceView]:
        query = BalancesQuery(MemberId(member_id))
        return (await self._ask("balances", query, BALANCES_REPLY_DECODER)).balances

    async def depth(self, market: str, limit: int = 50) -> DepthView:
        return await self._ask("depth", DepthQuery(market, limit), DEPTH_REPLY_DECODER)

    async def trades(self, market: str, limit: int = 100) -> list[PublicTrade]:
        return (await self._ask("trades", TradesQuery(market, limit), TRADES_REPLY_DECODER)).trades

    async def member_trades(
        self, member_id: int, market: str | None = None, limit: int = 100
    ) -> list[MemberTrade]:
        query = MemberTradesQuery(MemberId(member_id), market, limit)
        return (await self._ask("member_trades", query, MEMBER_TRADES_REPLY_DECODER)).trades

    async def ready(self) -> QueryReady:
        return await self._ask("ready", None, QUERY_READY_DECODER)

    async def _ask(self, endpoint: str, body: msgspec.Struct | None, decoder: msgspec.json.Decoder[R]) -> R:
        subject = service_subject(self.namespace, "query", endpoint)
        return await ask(self.nc, subject, body, decoder, timeout=self.timeout, service="query")


async def ask(
    nc: Client,
    subject: str,
    body: msgspec.Struct | None,
    decoder: msgspec.json.Decoder[R],
    *,
    timeout: float,
    service: str,
) -> R:
    """One request to a service endpoint, its reply decoded. Every failure is a `QueryFailed`:
    an error reply (nats.micro's error headers, a `QueryError` body) with its status and code;
    no instance listening, or a reply that does not decode (another version of the service),
    503 `unavailable`; no answer within `timeout`, 504 `timeout`."""
    payload = b"{}" if body is None else json_encode(body)
    try:
        msg = await nc.request(subject, payload, timeout=timeout)
    except NoRespondersError:
        raise QueryFailed(503, "unavailable", f"no {service} service instance answers") from None
    except (NatsTimeoutError, TimeoutError):
        raise QueryFailed(504, "timeout", f"no answer from {subject} in {timeout} s") from None
    headers = msg.headers or {}
    status = headers.get(ERROR_CODE_HEADER)
    if status is not None:
        try:
            error = QUERY_ERROR_DECODER.decode(msg.data)
        except msgspec.DecodeError:
            error = QueryError("internal", headers.get(ERROR_HEADER, ""))
        raise QueryFailed(int(status) if status.isdigit() else 500, error.code, error.message)
    try:
        return decoder.decode(msg.data)
    except msgspec.DecodeError as exc:
        raise QueryFailed(503, "unavailable", f"undecodable reply from {subject}: {exc}") from None

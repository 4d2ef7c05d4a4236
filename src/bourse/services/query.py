"""query: what an order, a member and a market look like now, answered over NATS request/reply.

Every instance folds the whole EVENTS stream (engine events, per market) and ACCOUNTS stream
(rejections and balances, per member shard) into an in-memory `OrderViews`
(`bourse.domain.order_views`), from the start of the streams (they keep 7 days) each time it
starts. Each instance reads through its own ordered consumers (ephemeral, in memory on the
server, recreated by the client after a gap or a reconnect), since each must see everything;
instances share the load through the queue group of their endpoints.

Endpoints, `<ns>.svc.query.<name>`, JSON bodies from `bourse.contracts.messages` (section "queries"):
`order`, `orders`, `balances`, `depth`, `trades`, `member_trades`, `ready`. A failed query is
answered with the nats.micro error headers (`Nats-Service-Error-Code`: "400", "404" or "503";
`Nats-Service-Error`: a message) and a `QueryError` body with a stable `code`.

Readiness: at start the instance notes each stream's last sequence and is ready once it has
applied both. `start()` waits for that (up to `CATCH_UP_WAIT_S`), so the endpoints join the
queue group caught up; past the wait they answer `not_ready` (503) until done. `health()` says
`ready` (and `ok` follows it), the `ready` endpoint too.

`QueryClient` is the caller's side (the gateway's): one method per endpoint, failures raised as
`QueryFailed` with the status and code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.micro.request import Request

from bourse.adapters.jetstream import stream_position
from bourse.application.order_queries import check_orders_query
from bourse.application.ports import QueryFailed
from bourse.contracts.messages import (
    ACCOUNTS_REPORTS_DECODER,
    BALANCES_QUERY_DECODER,
    DEPTH_QUERY_DECODER,
    EVENT_BATCH_DECODER,
    MEMBER_TRADES_QUERY_DECODER,
    ORDER_QUERY_DECODER,
    ORDERS_QUERY_DECODER,
    TRADES_QUERY_DECODER,
    BalancesQuery,
    BalancesReply,
    DepthQuery,
    MemberTradesQuery,
    MemberTradesReply,
    OrderQuery,
    OrdersQuery,
    OrdersReply,
    QueryError,
    QueryReady,
    TradesQuery,
    TradesReply,
    json_encode,
)
from bourse.contracts.subjects import ACCOUNTS, EVENTS, StreamSpec
from bourse.domain.order_views import (
    DepthView,
    OrderView,
    OrderViews,
)
from bourse.runtime.service import Endpoint, RequestHandler, Service, ServiceContext

Q = TypeVar("Q")
R = TypeVar("R")

QUERY_TIMEOUT_S = 2.0


class Query(Service):
    name = "query"
    description = "Orders, open orders, balances, depth and trades, read from the EVENTS and ACCOUNTS streams"

    CATCH_UP_WAIT_S = 30.0

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        self.views = OrderViews()
        self._markets = ctx.catalog.markets
        self._subs: list[JetStreamContext.PushSubscription] = []
        self._position = {EVENTS.kind: 0, ACCOUNTS.kind: 0}
        self._target = {EVENTS.kind: 0, ACCOUNTS.kind: 0}
        self._ready = asyncio.Event()
        self._started = 0.0
        self._catch_up_s: float | None = None
        self._messages = 0
        self._failures = 0
        self._last_error: str | None = None
        self._cpu_s = 0.0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        js, ns = self.ctx.js, self.ctx.namespace
        self._started = time.monotonic()
        for spec in (EVENTS, ACCOUNTS):
            state = (await js.stream_info(spec.name(ns))).state
            self._target[spec.kind] = state.last_seq if state.messages else 0
        self._check_ready()
        for spec, callback in ((EVENTS, self._on_events), (ACCOUNTS, self._on_report)):
            self._subs.append(await self._subscribe(js, spec, callback))
        try:
            await asyncio.wait_for(self._ready.wait(), self.CATCH_UP_WAIT_S)
        except TimeoutError:
            self.log.warning(
                "still catching up; answering not_ready until done",
                extra={"position": dict(self._position), "target": dict(self._target)},
            )

    async def _subscribe(
        self, js: JetStreamContext, spec: StreamSpec, callback: Callable[[Msg], Awaitable[None]]
    ) -> JetStreamContext.PushSubscription:
        ns = self.ctx.namespace
        return await js.subscribe(
            spec.wildcard(ns),
            stream=spec.name(ns),
            cb=callback,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def _check_ready(self) -> None:
        if all(self._position[kind] >= target for kind, target in self._target.items()):
            self._catch_up_s = round(time.monotonic() - self._started, 3)
            self._ready.set()
            self.log.info("caught up", extra={"seconds": self._catch_up_s, **self.views.counts()})

    # ------------------------------------------------------------------ stream input

    async def _on_events(self, msg: Msg) -> None:
        started = time.process_time()
        try:
            seq = stream_position(msg).seq
            self.views.apply_events(EVENT_BATCH_DECODER.decode(msg.data))
        except Exception as exc:
            self._record_failure(exc, msg)
            return
        self._applied(EVENTS.kind, seq, started)

    async def _on_report(self, msg: Msg) -> None:
        started = time.process_time()
        try:
            position = stream_position(msg)
            for report in ACCOUNTS_REPORTS_DECODER.decode(msg.data).reports:
                self.views.apply_report(report, position.timestamp_ns)
        except Exception as exc:
            self._record_failure(exc, msg)
            return
        self._applied(ACCOUNTS.kind, position.seq, started)

    def _applied(self, kind: str, seq: int, started: float) -> None:
        self._position[kind] = seq
        self._messages += 1
        self._cpu_s += time.process_time() - started
        if not self._ready.is_set():
            self._check_ready()

    def _record_failure(self, exc: Exception, msg: Msg) -> None:
        """A message that cannot be read or applied is skipped, counted and logged: the next
        ones still apply (the projection is idempotent, so nothing is applied twice)."""
        self._failures += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        self.log.exception("message not applied", extra={"subject": msg.subject})

    # ------------------------------------------------------------------ endpoints

    def endpoints(self) -> Sequence[Endpoint]:
        return [
            Endpoint("order", self.subject("order"), self._serve(ORDER_QUERY_DECODER, self.answer_order)),
            Endpoint("orders", self.subject("orders"), self._serve(ORDERS_QUERY_DECODER, self.answer_orders)),
            Endpoint(
                "balances",
                self.subject("balances"),
                self._serve(BALANCES_QUERY_DECODER, self.answer_balances),
            ),
            Endpoint("depth", self.subject("depth"), self._serve(DEPTH_QUERY_DECODER, self.answer_depth)),
            Endpoint("trades", self.subject("trades"), self._serve(TRADES_QUERY_DECODER, self.answer_trades)),
            Endpoint(
                "member_trades",
                self.subject("member_trades"),
                self._serve(MEMBER_TRADES_QUERY_DECODER, self.answer_member_trades),
            ),
            Endpoint("ready", self.subject("ready"), self._serve_ready),
        ]

    def _serve(
        self, decoder: msgspec.json.Decoder[Q], answer: Callable[[Q], msgspec.Struct]
    ) -> RequestHandler:
        async def handle(request: Request) -> None:
            try:
                if not self._ready.is_set():
                    raise QueryFailed(503, "not_ready", "this instance is still reading the streams")
                try:
                    query = decoder.decode(request.data)
                except msgspec.DecodeError as exc:  # ValidationError included
                    raise QueryFailed(400, "invalid_request", str(exc)) from None
                reply = answer(query)
            except QueryFailed as failed:
                await request.respond_error(
                    str(failed.status), failed.message, json_encode(QueryError(failed.code, failed.message))
                )
                return
            await request.respond(json_encode(reply))

        return handle

    async def _serve_ready(self, request: Request) -> None:
        await request.respond(json_encode(self.readiness()))

    def readiness(self) -> QueryReady:
        return QueryReady(
            ready=self._ready.is_set(),
            events_seq=self._position[EVENTS.kind],
            events_target=self._target[EVENTS.kind],
            accounts_seq=self._position[ACCOUNTS.kind],
            accounts_target=self._target[ACCOUNTS.kind],
        )

    def _known_market(self, market: str | None) -> None:
        if market is not None and market not in self._markets:
            raise QueryFailed(404, "unknown_market", f"no market {market!r}")

    def answer_order(self, query: OrderQuery) -> OrderView:
        view = self.views.order(query.member_id, query.order_id)
        if view is None:
            raise QueryFailed(404, "order_not_found", f"no order {query.order_id}")
        return view

    def answer_orders(self, query: OrdersQuery) -> OrdersReply:
        check_orders_query(
            query.member_id,
            market=query.market,
            state=query.state,
            status=query.status,
            limit=query.limit,
            before_id=query.before_id,
            markets=self._markets,
        )
        orders = self.views.orders(
            query.member_id,
            market=query.market,
            state=query.state,
            limit=query.limit,
            before_id=query.before_id,
            status=query.status,
        )
        return OrdersReply(orders)

    def answer_balances(self, query: BalancesQuery) -> BalancesReply:
        return BalancesReply(query.member_id, self.views.balances(query.member_id))

    def answer_depth(self, query: DepthQuery) -> DepthView:
        self._known_market(query.market)
        return self.views.depth(query.market, query.limit)

    def answer_trades(self, query: TradesQuery) -> TradesReply:
        self._known_market(query.market)
        return TradesReply(query.market, self.views.trades(query.market, query.limit))

    def answer_member_trades(self, query: MemberTradesQuery) -> MemberTradesReply:
        self._known_market(query.market)
        return MemberTradesReply(
            query.member_id, self.views.member_trades(query.member_id, query.market, query.limit)
        )

    # ------------------------------------------------------------------ health

    def health(self) -> Mapping[str, Any]:
        ready = self._ready.is_set()
        return {
            "ok": ready,
            "ready": ready,
            "catch_up_s": self._catch_up_s,
            "position": dict(self._position),
            "target": dict(self._target),
            "markets": self.views.events_seq(),
            "shards": {str(shard): seq for shard, seq in self.views.accounts_seq().items()},
            **self.views.counts(),
            "events": self.views.events_applied,
            "unknown_order_events": self.views.unknown_order_events,
            "messages": self._messages,
            "failures": self._failures,
            "last_error": self._last_error,
            "cpu_s": round(self._cpu_s, 3),
        }

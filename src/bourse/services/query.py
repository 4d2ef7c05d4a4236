"""query: what an order, a member and a market look like now, answered over NATS request/reply.

Every instance folds the whole EVENTS stream (engine events, per market) and ACCOUNTS stream
(rejections and balances, per member shard) into an in-memory `OrderViews`
(`bourse.domain.order_views`), from the start of the streams (they keep 7 days) each time it
starts: a writer for the projection shell (`bourse.runtime.projection`), which it `follow()`s
with ordered consumers (ephemeral, in memory on the server), since each instance must see
everything; instances share the load through the queue group of their endpoints.

Endpoints, `<ns>.svc.query.<name>`, JSON bodies from `bourse.contracts.messages` (section "queries"):
`order`, `orders`, `balances`, `depth`, `trades`, `member_trades`, `ready`. A failed query is
answered with the nats.micro error headers (`Nats-Service-Error-Code`: "400", "404" or "503";
`Nats-Service-Error`: a message) and a `QueryError` body with a stable `code`. Each read's
arguments (limits, markets, the orders' filters) are checked by the rule every reader shares,
`bourse.application.read_queries`.

Readiness: at start the instance notes each stream's last sequence and is ready once it has
applied both. `start()` waits for that (up to `CATCH_UP_WAIT_S`), so the endpoints join the
queue group caught up; past the wait they answer `not_ready` (503) until done. `health()` says
`ready` (and `ok` follows it), the `ready` endpoint too.

`QueryClient` is the caller's side (the gateway's): one method per endpoint, failures raised as
`QueryFailed` with the status and code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec
from nats.micro.request import Request

from bourse.application.ports import QueryFailed
from bourse.application.projection import Envelope
from bourse.application.read_queries import (
    check_depth_query,
    check_member_trades_query,
    check_orders_query,
    check_trades_query,
)
from bourse.contracts.messages import (
    BALANCES_QUERY_DECODER,
    DEPTH_QUERY_DECODER,
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
    QueryReady,
    TradesQuery,
    TradesReply,
    json_encode,
)
from bourse.contracts.subjects import ACCOUNTS, EVENTS
from bourse.domain.order_views import (
    DepthView,
    OrderView,
    OrderViews,
)
from bourse.runtime.projection import ACCOUNTS_FEED, EVENTS_FEED, Applied, Feed, Projection
from bourse.runtime.service import Endpoint, RequestHandler, Service, ServiceContext, query_endpoint

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
        self.projection = Projection.over(self, self, [EVENTS_FEED, ACCOUNTS_FEED])
        self.events = self.projection.feed(EVENTS.kind)
        self.accounts = self.projection.feed(ACCOUNTS.kind)
        self._ready = asyncio.Event()
        self._started = 0.0
        self._catch_up_s: float | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._started = time.monotonic()
        await self.projection.note_targets()
        self._check_ready()
        await self.projection.follow()
        try:
            await asyncio.wait_for(self._ready.wait(), self.CATCH_UP_WAIT_S)
        except TimeoutError:
            self.log.warning(
                "still catching up; answering not_ready until done",
                extra={"position": self._positions(), "target": self._targets()},
            )

    async def stop(self) -> None:
        await self.projection.unfollow()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def _check_ready(self) -> None:
        if self.projection.caught_up():
            self._catch_up_s = round(time.monotonic() - self._started, 3)
            self._ready.set()
            self.log.info("caught up", extra={"seconds": self._catch_up_s, **self.views.counts()})

    def _positions(self) -> dict[str, int]:
        return {kind: feed.watermark for kind, feed in self.projection.feeds.items()}

    def _targets(self) -> dict[str, int]:
        return {kind: feed.target for kind, feed in self.projection.feeds.items()}

    # ------------------------------------------------------------------ stream input

    async def write(self, feed: Feed, envelopes: Sequence[Envelope[Any]], watermark: int) -> Applied:
        """Fold one message into the views (they skip what they have applied, by sequence)."""
        if feed is self.events:
            for envelope in envelopes:
                self.views.apply_events(envelope.body)
        else:
            for envelope in envelopes:
                self.views.apply_report(envelope.body, envelope.timestamp_ns)
        feed.watermark = watermark
        if not self._ready.is_set():
            self._check_ready()
        return Applied(items=len(envelopes))

    def failed(self, feed: Feed, exc: BaseException) -> None:
        """Skipped, counted and logged by the shell: the next messages still apply (the views
        are idempotent by sequence, so nothing is applied twice)."""

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
        return query_endpoint(decoder, answer, ready=self._ready.is_set)

    async def _serve_ready(self, request: Request) -> None:
        await request.respond(json_encode(self.readiness()))

    def readiness(self) -> QueryReady:
        return QueryReady(
            ready=self._ready.is_set(),
            events_seq=self.events.watermark,
            events_target=self.events.target,
            accounts_seq=self.accounts.watermark,
            accounts_target=self.accounts.target,
        )

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
        check_depth_query(query.market, limit=query.limit, markets=self._markets)
        return self.views.depth(query.market, query.limit)

    def answer_trades(self, query: TradesQuery) -> TradesReply:
        check_trades_query(query.market, limit=query.limit, markets=self._markets)
        return TradesReply(query.market, self.views.trades(query.market, query.limit))

    def answer_member_trades(self, query: MemberTradesQuery) -> MemberTradesReply:
        check_member_trades_query(market=query.market, limit=query.limit, markets=self._markets)
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
            "position": self._positions(),
            "target": self._targets(),
            "markets": self.views.events_seq(),
            "shards": {str(shard): seq for shard, seq in self.views.accounts_seq().items()},
            **self.views.counts(),
            "events": self.views.events_applied,
            "unknown_order_events": self.views.unknown_order_events,
            "messages": self.events.messages + self.accounts.messages,
            "failures": self.events.failures + self.accounts.failures,
            "last_error": self.events.last_error or self.accounts.last_error,
            "cpu_s": round(self.events.cpu_s + self.accounts.cpu_s, 3),
        }

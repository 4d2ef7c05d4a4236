"""gateway: the REST API `/api/v3` with its OpenAPI docs. Stateless; run as many as you like
behind a load balancer: each instance leases its own worker id for order ids, verifies tokens
with the auth service's public keys, and micro-batches orders into the ORDERS stream.

Reads go to the most durable complete source that is up to date, the next one when it is behind
the streams (by position), has no watermark (empty, rebuilding), fails or has its circuit breaker
open (`bourse.adapters.read_chain`): with `BOURSE_REDIS_URL` set, the cache's Redis, then the
persistence service's database (`SqlReadModel`), then the query service; without it, the
database, then the query service. The last answers anyway, marked stale when it is behind.
Market statistics (tickers, k-lines) go the same way, ending with the statistics service instead
of the query service. Writes never touch Redis or the database."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from bourse.adapters import tracing
from bourse.adapters.auth import TokenVerifier, fetch_jwks, keep_keys_fresh
from bourse.adapters.cancellation import cancel_and_wait
from bourse.adapters.http_server import HttpServer
from bourse.adapters.id_leases import LeasedIdGenerator
from bourse.adapters.order_progress import OrderProgress
from bourse.adapters.query_client import QueryClient
from bourse.adapters.read_chain import (
    ReadChain,
    ReadHeaders,
    ReadSource,
    ReadWatch,
    StatisticsChain,
    query_positions,
    sql_positions,
    statistics_positions,
    stream_positions,
)
from bourse.adapters.redis_read_model import RedisReadModel, read_client
from bourse.adapters.sql.read_model import SqlReadModel
from bourse.adapters.statistics_client import StatisticsClient
from bourse.application.ports import ReadModel, StatisticsReads
from bourse.config.auth import verifier_for
from bourse.config.intake import order_intake
from bourse.entrypoints.rest.access_log import AccessLog
from bourse.entrypoints.rest.app import create_app
from bourse.entrypoints.rest.deps import GatewayDeps
from bourse.entrypoints.rest.hot_path import OrderHotPath
from bourse.entrypoints.rest.http_metrics import HttpMetrics, RouteTemplates
from bourse.entrypoints.rest.request_tracing import RequestTracing
from bourse.entrypoints.rest.response_headers import ResponseHeaders
from bourse.runtime.service import Service, ServiceContext


class Gateway(Service):
    name = "gateway"
    description = "REST API /api/v3 and its OpenAPI docs"

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.intake = order_intake(ctx.nc, settings)
        self.ids: LeasedIdGenerator | None = None
        self.verifier: TokenVerifier | None = None
        self.server: HttpServer | None = None
        self.app: Any = None
        """The ASGI app served: the hot path in front of FastAPI, or FastAPI alone."""
        self._refresh: asyncio.Task[None] | None = None
        self._redis: Redis | None = None
        self._sql: SqlReadModel | None = None
        self.watch: ReadWatch | None = None
        self.live_reads: ReadChain | None = None
        self.reads: ReadChain | None = None
        self.statistics: StatisticsChain | None = None

    async def start(self) -> None:
        ctx, settings = self.ctx, self.ctx.settings
        self.verifier = verifier_for(settings, await fetch_jwks(ctx.nc, ctx.namespace))
        self.ids = await LeasedIdGenerator.start(ctx.js, ctx.namespace, owner=f"gateway:{ctx.nc.client_id}")
        await self.intake.start()
        # The persistence service's database (every `bourse up` runs it), the query service when
        # the database is away, behind or rebuilding; Redis before both.
        query = QueryClient(ctx.nc, ctx.namespace)
        self._sql = SqlReadModel.from_url(
            settings.effective_sql_url, markets=ctx.catalog.markets, timeout_s=settings.sql_read_timeout_s
        )
        sql_watermark = sql_positions(self._sql.engine, ctx.namespace)
        sources: list[ReadSource[ReadModel]] = [
            ReadSource("sql", self._sql, sql_watermark),
            ReadSource("query", query, query_positions(query)),
        ]
        # Tickers and k-lines by the same rule, the statistics service last. Redis and the
        # tables keep them in the transaction of their positions, so each answers by the same
        # watermark as its orders (a source of its own: its own breaker and counters, answering
        # as `redis` / `sql` in the read headers).
        statistics = StatisticsClient(ctx.nc, ctx.namespace)
        statistics_sources: list[ReadSource[StatisticsReads]] = [
            ReadSource("sql-statistics", self._sql, sql_watermark, label="sql"),
            ReadSource("statistics", statistics, statistics_positions(statistics, list(ctx.catalog.markets))),
        ]
        if settings.redis_url:
            self._redis = read_client(
                settings.redis_url.get_secret_value(),
                timeout_s=settings.gateway_redis_timeout_s,
                max_connections=settings.gateway_redis_max_connections,
            )
            redis = RedisReadModel(self._redis, ctx.namespace)
            sources.insert(0, ReadSource("redis", redis, redis.positions))
            statistics_sources.insert(
                0, ReadSource("redis-statistics", redis, redis.positions, label="redis")
            )
        self.watch = ReadWatch(
            [*sources, *statistics_sources],
            stream_positions(ctx.js, ctx.namespace),
            max_lag_s=settings.read_max_lag_s,
            interval_s=settings.read_check_interval_s,
            breaker_failures=settings.read_breaker_failures,
            breaker_reset_s=settings.read_breaker_reset_s,
        )
        await self.watch.start()
        reads = self.watch.chain(*(source.name for source in sources))
        # The write path (cancel all) lists open orders from the freshest source, the query
        # service, and from the database when no instance answers or it is behind.
        self.live_reads = self.watch.chain("query", "sql")
        self.reads = reads
        self.statistics = self.watch.statistics_chain(*(source.name for source in statistics_sources))
        deps = GatewayDeps(
            catalog=ctx.catalog,
            intake=self.intake,
            ids=self.ids,
            verifier=self.verifier,
            queries=reads,
            live_queries=self.live_reads,
            statistics=self.statistics,
            decision_timeout_s=settings.order_decision_timeout_s,
            progress=OrderProgress(
                ctx.js,
                ctx.namespace,
                settings.accounts_shards,
                sorted(ctx.catalog.markets),
                submit_timeout_s=settings.order_submit_timeout_s,
                clock_skew_s=settings.clock_skew_max_s,
            ),
        )
        api = create_app(deps)
        app: Any = api
        if settings.gateway_hot_path:
            app = OrderHotPath(app, deps)
        app = ResponseHeaders(app)  # around both paths: the same headers whichever answers
        app = ReadHeaders(app)
        routes = RouteTemplates.of(api.routes)
        if settings.access_log_sample > 0:
            app = AccessLog(app, routes, settings.access_log_sample)
        if (tracer := tracing.tracer(self.name)) is not None:
            app = RequestTracing(app, tracer, routes)
        app = HttpMetrics(app, routes)  # outermost: times all of it
        self.app = app
        self.server = HttpServer(app, settings.http_host, settings.http_port)
        await self.server.start()
        self._refresh = asyncio.create_task(
            keep_keys_fresh(ctx.nc, ctx.namespace, self.verifier), name="gateway:jwks"
        )

    async def stop(self) -> None:
        if self._refresh is not None:
            await cancel_and_wait([self._refresh])
        if self.server is not None:
            await self.server.stop()
        await self.intake.stop()
        if self.ids is not None:
            await self.ids.close()
        if self.watch is not None:
            await self.watch.stop()
        if self._redis is not None:
            await self._redis.aclose()
        if self._sql is not None:
            await self._sql.close()

    def health(self) -> Mapping[str, Any]:
        facts: dict[str, Any] = {
            "orders_published": self.intake.published_commands,
            "batches_published": self.intake.published_messages,
        }
        if self.watch is not None:
            facts["reads"] = self.watch.health()
        facts["intake"] = "flushing" if self.intake.flushing else "stopped"
        if self.ids is not None:
            facts["ids"] = self.ids.health()
            facts["ok"] = not self.ids.lease.lost and self.intake.flushing
        return facts

    def links(self) -> Mapping[str, str]:
        if self.server is None:
            return {}
        return {"api": f"{self.server.url}/api/v3", "api docs": f"{self.server.url}/api/v3/docs"}

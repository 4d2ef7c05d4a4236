"""gateway: the REST API `/api/v3` with its OpenAPI docs. Stateless; run as many as you like
behind a load balancer: each instance leases its own worker id for order ids, verifies tokens
with the auth service's public keys, and micro-batches orders into the ORDERS stream.

Reads go to the most durable complete source available, the next one on a 503 (unreachable or
not ready, `FallbackReadModel`): with `BOURSE_REDIS_URL` set, the cache's Redis, then the
persistence service's database (`SqlReadModel`), then the query service; without it, the
database, then the query service. Writes never touch Redis or the database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from bourse.adapters.http_server import HttpServer
from bourse.adapters.order_intake import OrderIntake
from bourse.adapters.order_progress import OrderProgress
from bourse.adapters.query_client import QueryClient
from bourse.adapters.redis_read_model import FallbackReadModel, RedisReadModel, redis_client
from bourse.adapters.sql.read_model import SqlReadModel
from bourse.api.app import create_app
from bourse.api.deps import GatewayDeps, ReadModel
from bourse.api.hot_path import OrderHotPath
from bourse.auth import TokenVerifier, fetch_jwks, keep_keys_fresh, verifier_for
from bourse.runtime.service import Service, ServiceContext
from bourse.services.ids import LeasedIdGenerator


class Gateway(Service):
    name = "gateway"
    description = "REST API /api/v3 and its OpenAPI docs"

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.intake = OrderIntake(
            ctx.nc,
            ctx.namespace,
            settings.accounts_shards,
            linger_s=settings.order_intake_linger_s,
            submit_timeout_s=settings.order_submit_timeout_s,
            clock_skew_s=settings.clock_skew_max_s,
        )
        self.ids: LeasedIdGenerator | None = None
        self.verifier: TokenVerifier | None = None
        self.server: HttpServer | None = None
        self.app: Any = None
        """The ASGI app served: the hot path in front of FastAPI, or FastAPI alone."""
        self._refresh: asyncio.Task[None] | None = None
        self._redis: Redis | None = None
        self._sql: SqlReadModel | None = None
        self.live_reads: ReadModel | None = None
        self.reads: ReadModel | None = None

    async def start(self) -> None:
        ctx, settings = self.ctx, self.ctx.settings
        self.verifier = verifier_for(settings, await fetch_jwks(ctx.nc, ctx.namespace))
        self.ids = await LeasedIdGenerator.start(ctx.js, ctx.namespace, owner=f"gateway:{ctx.nc.client_id}")
        await self.intake.start()
        # The persistence service's database (every `bourse up` runs it), the query service when
        # the database is away or persistence has applied nothing yet; Redis before both.
        query = QueryClient(ctx.nc, ctx.namespace)
        self._sql = SqlReadModel.from_url(settings.effective_sql_url, markets=ctx.catalog.markets)
        reads: ReadModel = FallbackReadModel(self._sql, query)
        if settings.redis_url:
            self._redis = redis_client(settings.redis_url)
            reads = FallbackReadModel(RedisReadModel(self._redis, ctx.namespace), reads)
        # The write path (cancel all) lists open orders from the freshest source, the query
        # service, and from the durable chain when no instance answers.
        self.live_reads = FallbackReadModel(query, self._sql)
        self.reads = reads
        deps = GatewayDeps(
            catalog=ctx.catalog,
            intake=self.intake,
            ids=self.ids,
            verifier=self.verifier,
            queries=reads,
            live_queries=self.live_reads,
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
        app: Any = create_app(deps)
        if settings.gateway_hot_path:
            app = OrderHotPath(app, deps)
        self.app = app
        self.server = HttpServer(app, settings.http_host, settings.http_port)
        await self.server.start()
        self._refresh = asyncio.create_task(
            keep_keys_fresh(ctx.nc, ctx.namespace, self.verifier), name="gateway:jwks"
        )

    async def stop(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        if self.server is not None:
            await self.server.stop()
        await self.intake.stop()
        if self.ids is not None:
            await self.ids.close()
        if self._redis is not None:
            await self._redis.aclose()
        if self._sql is not None:
            await self._sql.close()

    def health(self) -> Mapping[str, Any]:
        facts: dict[str, Any] = {
            "orders_published": self.intake.published_commands,
            "batches_published": self.intake.published_messages,
        }
        reads, fallbacks = self.reads, 0
        while isinstance(reads, FallbackReadModel):
            fallbacks += reads.fallbacks
            reads = reads.fallback
        if self.reads is not None:
            facts["reads_fallbacks"] = fallbacks
        facts["intake"] = "flushing" if self.intake.flushing else "stopped"
        if self.ids is not None:
            facts["ids"] = self.ids.health()
            facts["ok"] = not self.ids.lease.lost and self.intake.flushing
        return facts

    def links(self) -> Mapping[str, str]:
        if self.server is None:
            return {}
        return {"api": f"{self.server.url}/api/v3", "api docs": f"{self.server.url}/api/v3/docs"}

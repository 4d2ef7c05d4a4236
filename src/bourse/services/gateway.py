"""gateway: the REST API `/api/v3` with its OpenAPI docs. Stateless; run as many as you like
behind a load balancer."""

from __future__ import annotations

from collections.abc import Mapping

from bourse.adapters.http_server import HttpServer
from bourse.api.app import create_app
from bourse.runtime.service import Service, ServiceContext


class Gateway(Service):
    name = "gateway"
    description = "REST API /api/v3 and its OpenAPI docs"

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.server = HttpServer(create_app(ctx.catalog), settings.http_host, settings.http_port)

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def links(self) -> Mapping[str, str]:
        return {"api": f"{self.server.url}/api/v3", "api docs": f"{self.server.url}/api/v3/docs"}

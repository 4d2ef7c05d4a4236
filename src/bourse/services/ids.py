"""ids: time-ordered 64-bit order ids over NATS, from a leased worker id (`bourse.adapters.id_leases`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from nats.micro.request import Request

from bourse.adapters.id_leases import (
    LeasedIdGenerator,
    LeaseLost,
    decode_count,
    default_owner,
)
from bourse.runtime.service import Endpoint, Service, ServiceContext

log = logging.getLogger(__name__)


class Ids(Service):
    name = "ids"
    description = "Time-ordered 64-bit order ids from a leased worker id"
    relet = True
    """Lease a new worker id when the lease is lost (tests turn it off to observe the loss)."""

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        self.ids: LeasedIdGenerator | None = None

    async def start(self) -> None:
        self.ids = await LeasedIdGenerator.start(
            self.ctx.js, self.ctx.namespace, owner=default_owner("ids"), relet=self.relet
        )

    async def stop(self) -> None:
        if self.ids is not None:
            await self.ids.close()

    def endpoints(self) -> Sequence[Endpoint]:
        return [Endpoint("next", self.subject("next"), self.next_ids)]

    async def next_ids(self, request: Request) -> None:
        try:
            count = decode_count(request.data)
        except ValueError as exc:
            await request.respond_error("400", str(exc))
            return
        if self.ids is None:
            await request.respond_error("503", "ids service not started")
            return
        try:
            ids = self.ids.next_ids(count)
        except LeaseLost as exc:
            await request.respond_error("503", str(exc))
            return
        await request.respond(msgspec.json.encode(ids))

    def health(self) -> Mapping[str, Any]:
        if self.ids is None:
            return {"ok": False, "lease": "none"}
        return self.ids.health()

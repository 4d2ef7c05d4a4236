"""The services, one module each; `SERVICES` is what `bourse up` and `bourse run` can start.

`services_for` leaves out the services whose server is not configured: `cache` runs only with
`BOURSE_REDIS_URL` set."""

from __future__ import annotations

from bourse.runtime.service import Service
from bourse.services.accounts import AccountsService
from bourse.services.auth import Auth
from bourse.services.cache import Cache
from bourse.services.gateway import Gateway
from bourse.services.ids import Ids
from bourse.services.matching import MatchingService
from bourse.services.persistence import Persistence
from bourse.services.query import Query
from bourse.settings import Settings

SERVICES: dict[str, type[Service]] = {
    service.name: service
    for service in (AccountsService, MatchingService, Persistence, Cache, Query, Auth, Ids, Gateway)
}


def services_for(settings: Settings, names: list[str] | None = None) -> list[type[Service]]:
    """The services to run, in start order; unknown names raise KeyError. Without names: every
    service whose server is configured (no `redis_url`: no cache)."""
    if names:
        return [SERVICES[name] for name in names]
    return [service for service in SERVICES.values() if service is not Cache or settings.redis_url]

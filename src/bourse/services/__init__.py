"""The services, one module each; `SERVICES` is what `bourse up` and `bourse run` can start."""

from __future__ import annotations

from bourse.runtime.service import Service
from bourse.services.accounts import AccountsService
from bourse.services.auth import Auth
from bourse.services.gateway import Gateway
from bourse.services.ids import Ids
from bourse.services.matching import MatchingService
from bourse.services.persistence import Persistence
from bourse.services.query import Query
from bourse.settings import Settings

SERVICES: dict[str, type[Service]] = {
    service.name: service
    for service in (AccountsService, MatchingService, Persistence, Query, Auth, Ids, Gateway)
}


def services_for(settings: Settings, names: list[str] | None = None) -> list[type[Service]]:
    """The services to run, in start order; unknown names raise KeyError."""
    if names:
        return [SERVICES[name] for name in names]
    return list(SERVICES.values())

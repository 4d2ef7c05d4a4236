"""The services, one module each; `SERVICES` is what `bourse up` and `bourse run` can start.

`services_for` leaves out the services whose server is not configured: `cache` runs only with
`BOURSE_REDIS_URL` set, `amqp-ingress` only with `BOURSE_RABBITMQ_URL`."""

from __future__ import annotations

from bourse.config.settings import Settings
from bourse.runtime.service import Service
from bourse.services.accounts import AccountsService
from bourse.services.amqp_ingress import AmqpIngress
from bourse.services.auth import Auth
from bourse.services.cache import Cache
from bourse.services.gateway import Gateway
from bourse.services.ids import Ids
from bourse.services.matching import MatchingService
from bourse.services.persistence import Persistence
from bourse.services.pusher import Pusher
from bourse.services.query import Query
from bourse.services.statistics import Statistics

SERVICES: dict[str, type[Service]] = {
    service.name: service
    for service in (
        AccountsService,
        MatchingService,
        Persistence,
        Cache,
        Query,
        Statistics,
        Auth,
        Ids,
        AmqpIngress,
        Pusher,
        Gateway,
    )
}


def services_for(settings: Settings, names: list[str] | None = None) -> list[type[Service]]:
    """The services to run, in start order; unknown names raise KeyError. Without names: every
    service whose server is configured (no `redis_url`: no cache; no `rabbitmq_url`: no ingress)."""
    if names:
        return [SERVICES[name] for name in names]
    needs = {Cache: settings.redis_url, AmqpIngress: settings.rabbitmq_url}
    return [service for service in SERVICES.values() if needs.get(service, True)]

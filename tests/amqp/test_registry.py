"""`bourse up` runs the RabbitMQ ingress only when a RabbitMQ URL is set; `bourse run` by name."""

from __future__ import annotations

from bourse.config.settings import Settings
from bourse.runtime.supervisor import group_services
from bourse.services import services_for


def names(settings: Settings, chosen: list[str] | None = None) -> list[str]:
    return [service.name for service in services_for(settings, chosen)]


def test_the_ingress_runs_only_with_a_rabbitmq_url() -> None:
    without = Settings(rabbitmq_url=None, redis_url=None, _env_file=None)
    with_url = Settings(rabbitmq_url="amqp://guest:guest@127.0.0.1:5672/", redis_url=None, _env_file=None)
    assert "amqp-ingress" not in names(without)
    assert names(with_url) == [
        "accounts", "matching", "persistence", "query", "statistics", "auth", "ids", "amqp-ingress", "pusher",
        "gateway",
    ]  # fmt: skip
    assert names(without, ["amqp-ingress"]) == ["amqp-ingress"]
    # its measured CPU per order puts it beside the gateway, both starting after ids and auth
    assert group_services(names(with_url), 2) == [
        ["accounts", "matching", "persistence", "query", "statistics", "auth", "ids"],
        ["amqp-ingress", "pusher", "gateway"],
    ]

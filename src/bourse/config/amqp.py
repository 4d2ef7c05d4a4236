"""The RabbitMQ names of the settings: explicit ones, else defaults under the namespace."""

from __future__ import annotations

from bourse.adapters.amqp import AmqpTopology
from bourse.config.settings import Settings


def amqp_topology(settings: Settings) -> AmqpTopology:
    base = f"{settings.namespace}.orders"
    return AmqpTopology(
        exchange=settings.amqp_exchange or base,
        routing_key=settings.amqp_routing_key,
        queue=settings.amqp_queue or f"{base}.in",
        dead_letter_exchange=settings.amqp_dead_letter_exchange or f"{base}.dlx",
        dead_letter_queue=settings.amqp_dead_letter_queue or f"{base}.dead",
        delivery_limit=settings.amqp_delivery_limit,
    )

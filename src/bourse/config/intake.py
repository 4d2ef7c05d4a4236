"""The order intake the settings describe, for every entry point that submits commands (the
gateway, the RabbitMQ ingress): one place, so both batch, time out and refuse alike."""

from __future__ import annotations

from nats.aio.client import Client

from bourse.adapters.order_intake import OrderIntake
from bourse.config.settings import Settings


def order_intake(nc: Client, settings: Settings, *, service: str = "gateway") -> OrderIntake:
    """`service`: whose tracer opens the intake spans."""
    return OrderIntake(
        nc,
        settings.namespace,
        settings.accounts_shards,
        linger_s=settings.order_intake_linger_s,
        submit_timeout_s=settings.order_submit_timeout_s,
        clock_skew_s=settings.clock_skew_max_s,
        service=service,
    )

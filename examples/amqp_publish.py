"""Send one order command to bourse through RabbitMQ and print the reply.

    .venv/bin/python examples/amqp_publish.py '{"command": "create", "member_id": 1,
        "market": "btc_usd", "side": "buy", "amount": "0.1", "price": "50000"}'
    .venv/bin/python examples/amqp_publish.py '{"command": "cancel", "member_id": 1, "order_id": "123"}'

The exchange and routing key come from the same settings as the ingress (`BOURSE_NAMESPACE`,
`BOURSE_AMQP_EXCHANGE`, `BOURSE_AMQP_ROUTING_KEY`); the connection from `--url` (default
`BOURSE_RABBITMQ_URL`). The message carries `user_id` (the connection's user: RabbitMQ checks
it, the ingress accepts only its allowed users), a `message_id` (the idempotency key: publish
again with the same `--message-id` and no second order is made), `reply_to` and, with
`--token`, a member JWT in the `authorization` header.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from typing import Any

import aio_pika

from bourse.adapters.amqp import url_user
from bourse.config.amqp import amqp_topology
from bourse.config.settings import Settings


async def send(args: argparse.Namespace) -> int:
    settings = Settings()
    configured = settings.rabbitmq_url.get_secret_value() if settings.rabbitmq_url else None
    url: str = args.url or configured or "amqp://guest:guest@127.0.0.1:5672/"
    topology = amqp_topology(settings)
    connection = await aio_pika.connect_robust(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        exchange = await channel.get_exchange(topology.exchange)  # declared by the running ingress
        message_id = args.message_id or uuid.uuid4().hex
        headers: dict[str, Any] | None = {"authorization": f"Bearer {args.token}"} if args.token else None
        message = aio_pika.Message(
            args.body.encode(),
            message_id=message_id,
            user_id=url_user(url),
            reply_to=replies.name,
            headers=headers,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await exchange.publish(message, routing_key=topology.routing_key)  # returns once confirmed
        print(f"published {message_id} to {topology.exchange} ({topology.routing_key})", file=sys.stderr)
        try:
            async with replies.iterator(timeout=args.timeout) as received:
                async for reply in received:
                    print(reply.body.decode())
                    return 0
        except TimeoutError:
            print(f"no reply within {args.timeout} s", file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("body", help="the command, JSON (see docs/architecture.md, RabbitMQ ingress)")
    parser.add_argument("--url", help="AMQP URL (default: BOURSE_RABBITMQ_URL)")
    parser.add_argument("--message-id", help="default: a new one")
    parser.add_argument("--token", help="a member JWT (`bourse token 1`)")
    parser.add_argument("--timeout", type=float, default=10.0)
    return asyncio.run(send(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())

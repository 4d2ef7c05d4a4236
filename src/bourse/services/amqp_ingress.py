"""amqp-ingress: order commands (create, cancel, amend) from a RabbitMQ quorum queue into the
order pipeline, by the same rules as the REST API. Stateless; run as many as you like on the
same queue (each leases its own worker id for order ids).

Per message: check the sender and the body, make the command, `OrderIntake.submit` it, and ack
only once it is durable in JetStream. A refusal (unknown user, malformed JSON, unknown market,
bad precision...) is published to the dead-letter exchange with its code in `x-bourse-error`,
then acked: it is never retried. A failure on our side (NATS down or slow, no order ids) is
nacked with requeue, and consuming stops until NATS answers again: RabbitMQ keeps the orders,
and this instance holds at most `amqp_prefetch` of them meanwhile. A redelivered create is the
same order: its client order id is the message id (unless the body gives one), and the accounts
stage answers a repeated (member, client order id) with the first order. With `reply_to` set,
the decision (and the engine's outcome, if it comes within `amqp_reply_timeout_s`) is sent
there with the message's correlation id, once the command is durable, even if the ack is lost
(the connection broke): the reply is retried for `REPLY_RETRY_S` while the connection comes
back, so the first delivery's answer is not lost to its redelivery (which answers `duplicate`).
The connections try to come back every `amqp_reconnect_interval_s`.

Trust: only messages whose `user_id` property names an allowed RabbitMQ user are accepted
(RabbitMQ refuses a `user_id` other than the publishing connection's own user), from the vhost
of `rabbitmq_url`; a member JWT in the `authorization` header, optional unless
`amqp_require_token`, must be for the message's `member_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from bourse.adapters import amqp, tracing
from bourse.adapters.auth import (
    InvalidToken,
    TokenVerifier,
    fetch_jwks,
    keep_keys_fresh,
    token_from_authorization,
)
from bourse.adapters.cancellation import cancel_and_wait
from bourse.adapters.id_leases import LeasedIdGenerator
from bourse.adapters.metrics import count_order
from bourse.adapters.order_intake import Submission
from bourse.application.order_requests import (
    OrderRequestError,
    amend_command,
    cancel_command,
    market_of,
    parse_order_id,
    place_command,
)
from bourse.application.ports import Command
from bourse.config.amqp import amqp_topology
from bourse.config.auth import verifier_for
from bourse.config.intake import order_intake
from bourse.contracts.messages import (
    AMQP_COMMAND_DECODER,
    AmqpAmend,
    AmqpCancel,
    AmqpCommand,
    AmqpCreate,
    AmqpReply,
    Decision,
    Outcome,
    json_encode,
)
from bourse.contracts.subjects import ORDERS
from bourse.domain.money import Market
from bourse.domain.orders import CLIENT_ORDER_ID_MAX, PlaceOrder, is_client_order_id
from bourse.runtime.service import Service, ServiceContext

RESUME_PROBE_S = 0.5
REPLY_RETRY_S = 30.0
"""How long a reply owed for a durable command is retried while RabbitMQ is away."""
REPLY_RETRY_PAUSE_S = 0.2
STOP_RABBITMQ_S = 5.0
"""How long stopping waits for RabbitMQ (cancelling the consumer, closing the connections)."""
STOP_DRAIN_S = 10.0
"""A message id must be usable as a client order id (the REST API's rule)."""


class Refused(Exception):
    """The message is wrong and always will be: dead-letter it with `code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Request:
    """A checked message: the command to submit and what its reply needs."""

    body: AmqpCommand
    command: Command
    market: Market | None
    message_id: str


class AmqpIngress(Service):
    name = "amqp-ingress"
    description = "RabbitMQ order commands in, acked once durable in JetStream"

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        if not settings.rabbitmq_url:
            raise ValueError("amqp-ingress needs BOURSE_RABBITMQ_URL")
        self.url = settings.rabbitmq_url.get_secret_value()
        self.topology = amqp_topology(settings)
        self.allowed_users = frozenset(settings.amqp_allowed_users or [amqp.url_user(self.url)])
        self.intake = order_intake(ctx.nc, settings, service=self.name)
        self.ids: LeasedIdGenerator | None = None
        self.verifier: TokenVerifier | None = None
        self.connection: AbstractRobustConnection | None = None
        self.publishing: AbstractRobustConnection | None = None
        self._queue: AbstractQueue | None = None
        self._dead_letters: AbstractExchange | None = None
        self._replies: AbstractChannel | None = None
        self._consumer_tag: str | None = None
        self._paused = False
        self._consumer_gone = asyncio.Event()
        """Set once a pause's basic.cancel is answered (or given up): requeueing waits for it."""
        self._consumer_gone.set()
        self._resume_task: asyncio.Task[None] | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._reply_tasks: set[asyncio.Task[None]] = set()
        self._settling: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.in_flight = 0
        self.received = 0
        self.acked = 0
        self.requeued = 0
        self.pauses = 0
        self.replies = 0
        self.dead_lettered: Counter[str] = Counter()
        self.last_error: str | None = None

    # --- lifecycle ---

    async def start(self) -> None:
        ctx, settings = self.ctx, self.ctx.settings
        self.verifier = verifier_for(settings, await fetch_jwks(ctx.nc, ctx.namespace))
        self.ids = await LeasedIdGenerator.start(
            ctx.js, ctx.namespace, owner=f"amqp-ingress:{ctx.nc.client_id}"
        )
        await self.intake.start()
        reconnect_s = settings.amqp_reconnect_interval_s
        self.connection = await amqp.connect(self.url, reconnect_s, settings.amqp_heartbeat_s)
        consuming = await self.connection.channel(publisher_confirms=False)
        await consuming.set_qos(prefetch_count=settings.amqp_prefetch)
        self._queue = await amqp.declare(consuming, self.topology)
        # publishing on its own connection: RabbitMQ's flow control throttles a connection that
        # publishes faster than the queues take, and must not hold back the consumer's acks
        self.publishing = await amqp.connect(self.url, reconnect_s, settings.amqp_heartbeat_s)
        confirming = await self.publishing.channel(publisher_confirms=True)
        self._dead_letters = await confirming.get_exchange(self.topology.dead_letter_exchange)
        self._replies = await self.publishing.channel(publisher_confirms=False)
        self._consumer_tag = await self._queue.consume(self._on_message)
        self._refresh = asyncio.create_task(
            keep_keys_fresh(ctx.nc, ctx.namespace, self.verifier), name="amqp-ingress:jwks"
        )

    async def stop(self) -> None:
        for task in (self._refresh, self._resume_task):
            if task is not None:
                await cancel_and_wait([task])
        if self._queue is not None and self._consumer_tag is not None:
            # bounded: while RabbitMQ is away a robust channel would wait for it to come back
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_RABBITMQ_S):
                    await self._queue.cancel(self._consumer_tag)
        # messages being submitted finish (acked or nacked); RabbitMQ requeues any left unacked
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), STOP_DRAIN_S)
        for reply_task in list(self._reply_tasks):
            reply_task.cancel()
        await asyncio.gather(*self._reply_tasks, return_exceptions=True)
        for connection in (self.connection, self.publishing):
            if connection is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(STOP_RABBITMQ_S):
                        await connection.close()
        await self.intake.stop()
        if self.ids is not None:
            await self.ids.close()

    # --- one message ---

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        """aiormq cancels a consumer's tasks when its channel closes (the connection lost): the
        work runs in a task of its own, so a command already on its way into ORDERS is finished,
        its ack tried and its reply sent, instead of being cut off between durable and answered."""
        work = asyncio.create_task(self._settle(message))
        self._settling.add(work)
        work.add_done_callback(self._settling.discard)
        await asyncio.shield(work)

    async def _settle(self, message: AbstractIncomingMessage) -> None:
        self.in_flight += 1
        self._idle.clear()
        try:
            tracer = tracing.tracer(self.name)
            if tracer is None:
                await self._handle(message)
            else:
                with tracer.start_as_current_span(
                    "amqp order",
                    context=tracing.incoming_context(message.headers),
                    kind=SpanKind.CONSUMER,
                    attributes={
                        "messaging.system": "rabbitmq",
                        "messaging.message.id": message.message_id or "",
                        "messaging.destination.name": message.routing_key or "",
                    },
                ):
                    await self._handle(message)
        except Exception as exc:  # RabbitMQ unreachable: if the nack fails too, the closed channel requeues
            self.last_error = repr(exc)
            self.log.warning("amqp message not settled", extra={"error": repr(exc)})
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        self.received += 1
        if self._paused:  # NATS is failing: hand it back at once, RabbitMQ keeps it
            await self._requeue(message)
            return
        try:
            request = self._check(message)
        except Refused as refused:
            await self._refuse(message, refused)
            return
        except (
            Exception
        ) as exc:  # no order ids (the lease is lost until NATS answers): not the message's fault
            self._pause(f"no order ids: {exc!r}")
            await self._requeue(message)
            return
        try:
            submission = await self.intake.submit(request.command)
        except Exception as exc:
            if isinstance(request.command, PlaceOrder):
                count_order("amqp", "failed")
            self._pause(f"order not durable: {exc!r}")
            await self._requeue(message)
            return
        try:
            await message.ack()
            self.acked += 1
        finally:  # durable: the reply is owed even if the ack is lost with the connection
            if message.reply_to:
                task = asyncio.create_task(
                    self._answer(message.reply_to, _correlation(message), request, submission)
                )
                self._reply_tasks.add(task)
                task.add_done_callback(self._reply_tasks.discard)
            else:  # durable, and nobody waits for its decision
                self.intake.forget(submission)
                if isinstance(request.command, PlaceOrder):
                    count_order("amqp", "pending")

    def _check(self, message: AbstractIncomingMessage) -> Request:
        """The command a message asks for, or `Refused` with the reason."""
        user = message.user_id
        if user is None or user not in self.allowed_users:
            raise Refused("unknown_user", f"user_id {user!r} is not allowed to send orders")
        message_id = message.message_id
        if not message_id:
            raise Refused("missing_message_id", "the message_id property is required (the idempotency key)")
        if not is_client_order_id(message_id):  # it becomes the client order id of a create
            raise Refused(
                "invalid_message_id", f"message_id must be 1..{CLIENT_ORDER_ID_MAX} of A-Z a-z 0-9 _ - . :"
            )
        try:
            body = AMQP_COMMAND_DECODER.decode(message.body)
        except msgspec.ValidationError as exc:
            raise Refused("invalid_message", str(exc)) from exc
        except msgspec.DecodeError as exc:
            raise Refused("malformed_message", str(exc)) from exc
        self._check_token(message, body.member_id)
        try:
            return self._command(body, message_id)
        except OrderRequestError as exc:
            raise Refused(exc.code, exc.message) from exc

    def _check_token(self, message: AbstractIncomingMessage, member_id: int) -> None:
        header = amqp.header_text(message.headers or {}, "authorization")
        if header is None:
            if self.ctx.settings.amqp_require_token:
                raise Refused("missing_token", "an authorization header with a member token is required")
            return
        assert self.verifier is not None
        try:
            principal = self.verifier.verify(token_from_authorization(header))
        except InvalidToken as exc:
            raise Refused(str(exc.code), exc.detail) from exc
        if principal.member_id != member_id:
            raise Refused("token_member_mismatch", f"the token is not member {member_id}'s")

    def _command(self, body: AmqpCommand, message_id: str) -> Request:
        catalog = self.ctx.catalog
        if isinstance(body, AmqpCreate):
            market = market_of(catalog, body.market)
            command: Command = place_command(
                catalog,
                body,
                order_id=self._next_id(),
                member_id=body.member_id,
                created_at=time.time_ns(),
                client_order_id=body.client_order_id or message_id,
            )
            return Request(body, command, market, message_id)
        order_id = parse_order_id(body.order_id)
        if isinstance(body, AmqpAmend):
            command = amend_command(
                catalog,
                order_id=order_id,
                member_id=body.member_id,
                market=body.market,
                price=body.price,
                amount=body.amount,
            )
            return Request(body, command, market_of(catalog, body.market), message_id)
        assert isinstance(body, AmqpCancel)
        command = cancel_command(catalog, order_id=order_id, member_id=body.member_id, market=body.market)
        return Request(body, command, catalog.market(command.market), message_id)

    def _next_id(self) -> int:
        assert self.ids is not None
        return self.ids.next_id()  # LeaseLost: requeued by _handle

    async def _refuse(self, message: AbstractIncomingMessage, refused: Refused) -> None:
        assert self._dead_letters is not None
        trace.get_current_span().set_attribute("bourse.refused", refused.code)
        if _command_name(message.body) == "create":
            count_order("amqp", "refused")
        await amqp.dead_letter(self._dead_letters, message, refused.code, refused.message)
        await message.ack()
        self.dead_lettered[refused.code] += 1
        if message.reply_to:  # a message without an id is answered too: under its correlation id
            await self._send(
                message.reply_to,
                _correlation(message),
                AmqpReply(
                    message.message_id or "",
                    _command_name(message.body),
                    "rejected",
                    code=refused.code,
                    message=refused.message,
                ),
            )

    async def _requeue(self, message: AbstractIncomingMessage) -> None:
        """Hand a message back to RabbitMQ. While pausing, only once the consumer is cancelled:
        RabbitMQ redelivers a returned message at once, and if that races the basic.cancel the
        quorum queue counts a delivery the ingress never sees (RabbitMQ 3.10), so each failure
        would cost the message two of its `x-delivery-limit` instead of one."""
        if self._paused:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._consumer_gone.wait(), STOP_RABBITMQ_S)
        await message.nack(requeue=True)
        self.requeued += 1

    # --- replies ---

    async def _answer(
        self, reply_to: str, correlation_id: str | None, request: Request, submission: Submission
    ) -> None:
        decision, outcome = await self.intake.answer(submission, self.ctx.settings.amqp_reply_timeout_s)
        if isinstance(request.command, PlaceOrder):  # a duplicate places nothing: refused, as over REST
            count_order(
                "amqp", "pending" if decision is None else "accepted" if decision.accepted else "refused"
            )
        await self._send(reply_to, correlation_id, self._reply(request, decision, outcome), REPLY_RETRY_S)

    @staticmethod
    def _reply(request: Request, decision: Decision | None, outcome: Outcome | None) -> AmqpReply:
        """Like `POST /order`: the accounts decision, then the engine outcome if it came in time."""
        command = request.command
        name = request.body.__struct_config__.tag
        assert isinstance(name, str)
        order_id = str(command.order_id)
        client_order_id = command.client_order_id if isinstance(command, PlaceOrder) else None
        if decision is None:
            return AmqpReply(request.message_id, name, "submitted", order_id, client_order_id)
        if not decision.accepted:
            if decision.existing_order_id is not None:
                return AmqpReply(
                    request.message_id, name, "duplicate", str(decision.existing_order_id), client_order_id
                )
            code = str(decision.reason or "rejected")
            return AmqpReply(
                request.message_id, name, "rejected", order_id, client_order_id, code, f"refused: {code}"
            )
        if outcome is None:
            return AmqpReply(request.message_id, name, "accepted", order_id, client_order_id)
        if outcome.status is None:  # the engine refused a cancel or an amend
            code = str(outcome.reason or "rejected")
            return AmqpReply(
                request.message_id, name, "rejected", order_id, client_order_id, code, f"refused: {code}"
            )
        executed = request.market.format_amount(outcome.executed) if request.market is not None else None
        return AmqpReply(
            request.message_id,
            name,
            "accepted",
            order_id,
            client_order_id,
            order_status=outcome.status,
            executed=executed,
        )

    async def _send(
        self, reply_to: str, correlation_id: str | None, reply: AmqpReply, retry_s: float = 0.0
    ) -> None:
        """Publish a reply; while RabbitMQ is away, try again for `retry_s` (its connection
        reconnects by itself), then give up: the order itself is settled either way."""
        if self._replies is None:
            return
        body = json_encode(reply)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + retry_s
        while True:
            try:
                await amqp.reply(self._replies, reply_to, correlation_id, body)
                self.replies += 1
                return
            except Exception as exc:
                if loop.time() >= give_up:
                    self.log.warning("amqp reply failed", extra={"error": repr(exc)})
                    return
            await asyncio.sleep(REPLY_RETRY_PAUSE_S)

    # --- back-pressure ---

    def _pause(self, reason: str) -> None:
        """Stop consuming until NATS answers again; what is in flight is requeued as it fails."""
        self.last_error = reason
        if self._paused:
            return
        self._paused = True
        self._consumer_gone.clear()
        self.pauses += 1
        self.log.warning("amqp consuming paused", extra={"error": reason})
        self._resume_task = asyncio.create_task(self._resume_when_ready(), name="amqp-ingress:resume")

    async def _resume_when_ready(self) -> None:
        assert self._queue is not None
        try:
            if self._consumer_tag is not None:
                # bounded: while RabbitMQ is away a robust channel would wait for it to come back
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(STOP_RABBITMQ_S):
                        await self._queue.cancel(self._consumer_tag)
                self._consumer_tag = None
        finally:
            self._consumer_gone.set()  # what is in flight may now be handed back
        js, stream = self.ctx.js, ORDERS.name(self.ctx.namespace)
        while True:
            await asyncio.sleep(RESUME_PROBE_S)
            try:
                await js.stream_info(stream)
                assert self.ids is not None
                self.ids.lease.check()
            except Exception as exc:
                self.last_error = f"waiting for NATS: {exc!r}"
                continue
            break
        self._paused = False
        self._consumer_tag = await self._queue.consume(self._on_message)
        self.log.info("amqp consuming resumed")

    # --- what the runtime shows ---

    def health(self) -> Mapping[str, Any]:
        # a robust connection is not "closed" while it reconnects: `connected` says whether it is up
        connected = all(
            connection is not None and not connection.is_closed and connection.connected.is_set()
            for connection in (self.connection, self.publishing)
        )
        facts: dict[str, Any] = {
            "queue": self.topology.queue,
            "connected": connected,
            "consuming": self._consumer_tag is not None and not self._paused,
            "in_flight": self.in_flight,
            "received": self.received,
            "acked": self.acked,
            "requeued": self.requeued,
            "dead_lettered": dict(self.dead_lettered),
            "replies": self.replies,
            "pauses": self.pauses,
            "orders_published": self.intake.published_commands,
            "batches_published": self.intake.published_messages,
        }
        if self.last_error is not None:
            facts["last_error"] = self.last_error
        if self.ids is not None:
            facts["ids"] = self.ids.health()
        facts["ok"] = connected and not self._paused and self.intake.flushing
        return facts


def _correlation(message: AbstractIncomingMessage) -> str | None:
    return message.correlation_id or message.message_id


def _command_name(body: bytes) -> str:
    """The `command` of a body that may not decode, for the reply to a refused message."""
    with contextlib.suppress(Exception):
        value = msgspec.json.decode(body)
        if isinstance(value, dict) and isinstance(value.get("command"), str):
            return str(value["command"])[:32]
    return "unknown"

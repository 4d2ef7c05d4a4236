"""The way into the order pipeline for the gateway and the RabbitMQ ingress.

Commands are micro-batched per accounts shard: while one JetStream publish is waiting for its
ack, new commands gather, and the next publish carries them all in one message; `linger_s`
(`BOURSE_ORDER_INTAKE_LINGER_S`) also waits that long after the first command before publishing.
Under light load a command goes alone (after the linger); under heavy load batches grow by
themselves, which is what keeps `sync_interval: always` affordable (one fsync per batch, not
per order), and every stage after is cheaper per order for it.

`submit()` returns once the command is durable (JetStream acked it): from then on the order
exists whatever crashes. The accounts decision and the engine outcome then arrive on this
instance's reply inbox and resolve the `Submission`'s futures.

Every answer `submit()` gives is true whatever fails (issue 10):

- `NotSent`: the command never left this process (NATS was unreachable for its whole time):
  nothing can store it later. The intake never publishes while disconnected, so nats-py's
  reconnect buffer cannot deliver it when NATS returns.
- `OutcomeUnknown`: it was published but no ack came before its deadline (`submit_timeout_s`):
  it may be stored. Each message carries `deadline_ns` (the give-up time plus
  `clock_skew_s`), and accounts refuses as `expired` every command its stream stored after it,
  so by `decided_by_ns` the outcome is settled either way and the reads tell it.
- Within the deadline a failed publish is sent again with the same `Nats-Msg-Id`
  (`intake:<instance>:<batch>`), which JetStream stores once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext, SpanKind, StatusCode

from bourse.adapters import tracing
from bourse.adapters.cancellation import cancel_and_wait
from bourse.application.ports import Command, NotSent, OutcomeUnknown
from bourse.contracts.messages import REPLY_DECODER, AccountsBatch, Decision, Decisions, Outcome, encode
from bourse.contracts.subjects import ORDERS, member_shard
from bourse.domain.orders import command_kind

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Submission:
    command: Command
    deadline_ns: int = 0
    """Wall-clock time after which accounts refuses the command (the give-up time plus the
    clock-skew margin)."""
    give_up_at: float = 0.0
    """Event-loop time at which the sender stops waiting for the acknowledgement."""
    sent: bool = False
    """Handed to NATS at least once: from then on it may be stored."""
    abandoned: bool = False
    """The sender gave up before it was sent: the flush loop must not send it."""
    durable: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    decision: asyncio.Future[Decision] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    outcome: asyncio.Future[Outcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    span: Span | None = None
    """Its `order intake` span (queued until JetStream has it) when its trace is sampled."""

    def failure(self) -> Exception:
        """What the sender must be told once the command cannot become durable in time."""
        if self.sent:
            return OutcomeUnknown(self.command.order_id, self.deadline_ns)
        return NotSent(f"NATS unreachable: order {self.command.order_id} was not sent")


class _ShardQueue:
    def __init__(self) -> None:
        self.pending: list[Submission] = []
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class OrderIntake:
    def __init__(
        self,
        nc: Client,
        namespace: str,
        shards: int,
        *,
        max_batch: int = 500,
        linger_s: float = 0.0,
        submit_timeout_s: float = 5.0,
        clock_skew_s: float = 1.0,
        attempt_timeout_s: float = 1.0,
        service: str = "gateway",
    ) -> None:
        self.nc = nc
        self.service = service
        """Whose tracer opens the intake spans."""
        self.linger_s = linger_s
        self.submit_timeout_s = submit_timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        """One publish's wait for its ack; then it is sent again (same message id) while time is left."""
        self.clock_skew_s = clock_skew_s
        """How far the NATS server's clock may be ahead of ours: a message acknowledged just
        before we give up must not be stored after its deadline by the server's clock."""
        self.js = nc.jetstream()
        self.namespace = namespace
        self.shards = shards
        self.max_batch = max_batch
        self.inbox = nc.new_inbox()
        self.instance = self.inbox.rsplit(".", 1)[-1]
        """Unique per intake: with a batch counter it names each message (`Nats-Msg-Id`)."""
        self._batches = 0
        self._waiting: dict[tuple[int, str], Submission] = {}
        self._queues = {shard: _ShardQueue() for shard in range(shards)}
        self._sub: Subscription | None = None
        self.published_messages = 0
        self.published_commands = 0
        self.publish_retries = 0

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_reply)
        for shard, queue in self._queues.items():
            queue.task = asyncio.create_task(self._flush_loop(shard, queue), name=f"intake:{shard}")

    @property
    def flushing(self) -> bool:
        """True while every shard's flush loop runs; a dead loop would leave orders hanging."""
        return all(queue.task is not None and not queue.task.done() for queue in self._queues.values())

    async def stop(self) -> None:
        await cancel_and_wait(queue.task for queue in self._queues.values() if queue.task is not None)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def submit(self, command: Command) -> Submission:
        """Queue the command and return once it is durable in JetStream; raises `NotSent` or
        `OutcomeUnknown` (see the module) if it is not acknowledged within `submit_timeout_s`."""
        loop = asyncio.get_running_loop()
        submission = Submission(
            command,
            deadline_ns=time.time_ns() + int((self.submit_timeout_s + self.clock_skew_s) * 1e9),
            give_up_at=loop.time() + self.submit_timeout_s,
        )
        key = (command.order_id, command_kind(command))
        if (tracer := tracing.tracer(self.service)) is not None:
            submission.span = self._intake_span(tracer, command)
        self._waiting[key] = submission
        queue = self._queues[member_shard(command.member_id, self.shards)]
        queue.pending.append(submission)
        queue.wakeup.set()
        try:
            async with asyncio.timeout_at(submission.give_up_at):
                await asyncio.shield(submission.durable)
        except TimeoutError:
            self._waiting.pop(key, None)
            if submission.durable.done() and submission.durable.exception() is None:
                return submission  # acknowledged in the same instant
            submission.abandoned = True  # checked before sending: not sent now means never sent
            if submission.span is not None and not submission.sent:  # else its publish ends it
                submission.span.set_status(StatusCode.ERROR, "not sent in time")
                submission.span.end()
            raise submission.failure() from None
        except BaseException:
            self._waiting.pop(key, None)
            raise
        return submission

    @staticmethod
    def _intake_span(tracer: trace.Tracer, command: Command) -> Span | None:
        """A child of the caller's span (the REST request, the RabbitMQ message) when that is
        sampled: its context goes with the command in the ORDERS message's header."""
        caller = trace.get_current_span()
        if not tracing.sampled(caller.get_span_context()):
            return None
        caller.set_attribute(tracing.ORDER_ID, command.order_id)
        return tracer.start_span(
            "order intake",
            kind=SpanKind.PRODUCER,
            attributes={tracing.ORDER_ID: command.order_id, "bourse.command": command_kind(command)},
        )

    async def answer(
        self, submission: Submission, timeout_s: float
    ) -> tuple[Decision | None, Outcome | None]:
        """The accounts decision and, if it comes within the same bound, the engine outcome; then
        stop waiting for this submission. None for what did not come in time.

        One timer for both waits, and no shield: the futures are this caller's alone (a timeout
        cancels the one awaited; `_on_reply` skips a done future), which saves two futures and a
        timer per wait on the hot path."""
        decision: Decision | None = None
        outcome: Outcome | None = None
        try:
            async with asyncio.timeout(timeout_s):
                decision = await submission.decision
                if decision.accepted:
                    outcome = await submission.outcome
        except TimeoutError:
            pass
        finally:
            self.forget(submission)
        return decision, outcome

    def forget(self, submission: Submission) -> None:
        """Stop waiting for replies about this submission (the caller has what it needed)."""
        key = (submission.command.order_id, command_kind(submission.command))
        if self._waiting.get(key) is submission:
            del self._waiting[key]

    async def _flush_loop(self, shard: int, queue: _ShardQueue) -> None:
        subject = ORDERS.subject(self.namespace, shard)
        while True:
            await queue.wakeup.wait()
            if self.linger_s and len(queue.pending) < self.max_batch:
                await asyncio.sleep(self.linger_s)  # let more commands join this message
            queue.wakeup.clear()
            while queue.pending:
                taken, queue.pending = queue.pending[: self.max_batch], queue.pending[self.max_batch :]
                batch = [s for s in taken if not s.abandoned]
                if batch:
                    await self._publish(subject, batch)

    async def _publish(self, subject: str, batch: list[Submission]) -> None:
        """Publish one batch until acknowledged or its first give-up time passes; resolve every
        submission's `durable` either way. In order per shard: the next batch waits."""
        loop = asyncio.get_running_loop()
        give_up_at = min(s.give_up_at for s in batch)
        try:
            # encoding inside the try: a command that cannot be encoded (an id beyond 64 bits)
            # fails its batch instead of ending this loop and every later submit
            payload = encode(
                AccountsBatch(
                    [s.command for s in batch],
                    reply_to=self.inbox,
                    deadline_ns=min(s.deadline_ns for s in batch),
                )
            )
        except Exception as exc:
            self._fail(batch, NotSent(f"the command cannot be encoded: {exc}"))
            return
        headers = {"Nats-Msg-Id": f"intake:{self.instance}:{self._batches}"}
        traced: dict[int, SpanContext] = {
            s.command.order_id: s.span.get_span_context() for s in batch if s.span is not None
        }
        if traced:
            headers[tracing.ORDER_TRACES_HEADER] = tracing.order_traces_header(traced)
        self._batches += 1
        pause = 0.02
        while (remaining := give_up_at - loop.time()) > 0:
            if not self.nc.is_connected:
                # never publish while disconnected: nats-py would buffer the message and send
                # it on reconnect, long after its sender was answered
                await asyncio.sleep(min(0.05, remaining))
                continue
            for submission in batch:
                submission.sent = True
            try:
                await self.js.publish(
                    subject, payload, timeout=min(remaining, self.attempt_timeout_s), headers=headers
                )
            except Exception as exc:
                self.publish_retries += 1
                log.warning("order intake publish failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(min(pause, max(give_up_at - loop.time(), 0.0)))
                pause = min(pause * 2, 0.5)
                continue
            self.published_messages += 1
            self.published_commands += len(batch)
            for submission in batch:
                if submission.span is not None:
                    submission.span.end()
                if not submission.durable.done():
                    submission.durable.set_result(None)
            return
        for submission in batch:
            self._fail([submission], submission.failure())

    @staticmethod
    def _fail(batch: list[Submission], exc: Exception) -> None:
        for submission in batch:
            if submission.span is not None:
                submission.span.set_status(StatusCode.ERROR, str(exc))
                submission.span.end()
            if not submission.durable.done():
                submission.durable.set_exception(exc)
                submission.durable.exception()  # retrieved: the sender may have stopped waiting

    async def _on_reply(self, msg: Msg) -> None:
        try:
            reply = REPLY_DECODER.decode(msg.data)
        except Exception:
            log.warning("undecodable reply on the intake inbox")
            return
        waiting = self._waiting
        if isinstance(reply, Decisions):
            for decision in reply.items:
                key = (decision.order_id, decision.command)
                submission = waiting.get(key)
                if submission is not None and not submission.decision.done():
                    submission.decision.set_result(decision)
                    if not decision.accepted:
                        del waiting[key]
        else:
            for outcome in reply.items:
                submission = waiting.pop((outcome.order_id, outcome.command), None)
                if submission is None:
                    continue
                # The engine's outcome may overtake the accounts decision: accounts sends its
                # decisions once all its outputs are acked, matching may have answered by then.
                # Only accepted commands reach the engine, so the outcome decides it.
                if not submission.decision.done():
                    submission.decision.set_result(Decision(outcome.order_id, outcome.command, True))
                if not submission.outcome.done():
                    submission.outcome.set_result(outcome)

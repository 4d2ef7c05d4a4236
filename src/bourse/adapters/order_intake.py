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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bourse.contracts import REPLY_DECODER, AccountsBatch, Decision, Decisions, Outcome, encode
from bourse.domain.orders import AmendOrder, CancelOrder, PlaceOrder
from bourse.topology import ORDERS, member_shard

log = logging.getLogger(__name__)

Command = PlaceOrder | CancelOrder | AmendOrder


def command_kind(command: Command) -> str:
    if isinstance(command, PlaceOrder):
        return "place"
    return "cancel" if isinstance(command, CancelOrder) else "amend"


@dataclass(slots=True)
class Submission:
    command: Command
    durable: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    decision: asyncio.Future[Decision] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    outcome: asyncio.Future[Outcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class _ShardQueue:
    def __init__(self) -> None:
        self.pending: list[Submission] = []
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class OrderIntake:
    def __init__(
        self, nc: Client, namespace: str, shards: int, *, max_batch: int = 500, linger_s: float = 0.0
    ) -> None:
        self.nc = nc
        self.linger_s = linger_s
        self.js = nc.jetstream()
        self.namespace = namespace
        self.shards = shards
        self.max_batch = max_batch
        self.inbox = nc.new_inbox()
        self._waiting: dict[tuple[int, str], Submission] = {}
        self._queues = {shard: _ShardQueue() for shard in range(shards)}
        self._sub: Subscription | None = None
        self.published_messages = 0
        self.published_commands = 0

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_reply)
        for shard, queue in self._queues.items():
            queue.task = asyncio.create_task(self._flush_loop(shard, queue), name=f"intake:{shard}")

    @property
    def flushing(self) -> bool:
        """True while every shard's flush loop runs; a dead loop would leave orders hanging."""
        return all(queue.task is not None and not queue.task.done() for queue in self._queues.values())

    async def stop(self) -> None:
        for queue in self._queues.values():
            if queue.task is not None:
                queue.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await queue.task
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def submit(self, command: Command) -> Submission:
        """Queue the command and return once it is durable in JetStream (raises if it cannot be)."""
        submission = Submission(command)
        key = (command.order_id, command_kind(command))
        self._waiting[key] = submission
        queue = self._queues[member_shard(command.member_id, self.shards)]
        queue.pending.append(submission)
        queue.wakeup.set()
        try:
            await submission.durable
        except BaseException:
            self._waiting.pop(key, None)
            raise
        return submission

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
                batch, queue.pending = queue.pending[: self.max_batch], queue.pending[self.max_batch :]
                try:
                    # encoding inside the try: a command that cannot be encoded (an id beyond 64
                    # bits) fails its batch instead of ending this loop and every later submit
                    payload = encode(AccountsBatch([s.command for s in batch], reply_to=self.inbox))
                    await self.js.publish(subject, payload, timeout=5.0)
                except Exception as exc:
                    for submission in batch:
                        if not submission.durable.done():
                            submission.durable.set_exception(exc)
                    continue
                self.published_messages += 1
                self.published_commands += len(batch)
                for submission in batch:
                    if not submission.durable.done():
                        submission.durable.set_result(None)

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

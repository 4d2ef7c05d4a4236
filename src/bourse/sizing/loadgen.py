"""The measure's load generator: every micro-action of a scenario (`Action`) sent at its own rate,
open loop, over keep-alive HTTP connections (`lean_http`: the CPU goes to the system under
test, not to the client) and, for RabbitMQ orders, an AMQP channel with publisher confirms.

Open loop: the n-th request of an action is due at `start + n / rate` whatever became of the
others; it goes out on an idle connection (a new one while fewer than `max_connections` are
open, else it waits for one: it is then sent late, and `sent - scheduled` says by how much, so a
stalled server cannot hide behind a waiting client). Latency is measured from the send.

Cancels and amends work on resting orders of the same members (`resting`): placed beforehand by
`prepare_resting`, and added to by the limit orders of the mix that rest. A cancel takes one out,
an amend moves one to another price beyond the band (it keeps resting)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import msgspec

from bourse.sizing.lean_http import LeanHttpConnection, build_request
from bourse.sizing.scenario import Action
from bourse.sizing.workload import OrderMaker, RestingOrder

POST_ORDER = frozenset({Action.PLACE_LIMIT, Action.PLACE_MARKET})
"""Actions whose requests are `POST /order` (the knee's latency), with AMQP orders sent over REST."""
RESTING = frozenset({"submitted", "partially_filled"})


class _OrderAnswer(msgspec.Struct):
    id: str
    status: str = ""
    market: str = ""
    side: str = ""


ORDER_ANSWER = msgspec.json.Decoder(_OrderAnswer)


@dataclass(slots=True)
class Sample:
    action: Action
    scheduled: float
    sent: float
    done: float
    status: int
    """HTTP status; 200 for a confirmed AMQP publish; 0 when no answer came (error, timeout)."""
    rest: bool = True
    """Sent over REST (an AMQP order without a RabbitMQ URL is a POST /order)."""

    @property
    def failed(self) -> bool:
        """No answer, or a server error; a refusal (4xx: an order already filled) is an answer."""
        return self.status == 0 or self.status >= 500

    @property
    def is_post_order(self) -> bool:
        return self.action in POST_ORDER or (self.action is Action.AMQP_ORDER and self.rest)


class AmqpPublisher:
    """Order commands to the ingress's exchange, each publish confirmed by RabbitMQ."""

    def __init__(
        self, connection: aio_pika.abc.AbstractRobustConnection, exchange: Any, routing_key: str, user: str
    ):
        self.connection = connection
        self.exchange = exchange
        self.routing_key = routing_key
        self.user = user
        self.run = uuid.uuid4().hex[:8]
        self.sent = 0

    @classmethod
    async def connect(cls, url: str, exchange: str, routing_key: str, user: str) -> AmqpPublisher:
        connection = await aio_pika.connect_robust(url)
        channel = await connection.channel(publisher_confirms=True)
        return cls(connection, await channel.get_exchange(exchange), routing_key, user)

    async def publish(self, member: int, body: dict[str, Any]) -> None:
        self.sent += 1
        message = aio_pika.Message(
            msgspec.json.encode({"command": "create", "member_id": member, **body}),
            message_id=f"size-{self.run}-{self.sent}",
            user_id=self.user,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self.exchange.publish(message, routing_key=self.routing_key)

    async def close(self) -> None:
        await self.connection.close()


class Unsent(Exception):
    """A request still waiting for a connection when its run was over: dropped, not sent."""


class LoadGenerator:
    def __init__(
        self,
        api: str,
        tokens: dict[int, str],
        maker: OrderMaker,
        *,
        amqp: AmqpPublisher | None = None,
        max_connections: int = 256,
        timeout: float = 10.0,
        seed: int = 7,
    ) -> None:
        url = urlsplit(api)
        self.host, self.port, self.prefix, self.netloc = (
            url.hostname or "127.0.0.1",
            url.port or 80,
            url.path,
            url.netloc,
        )
        self.auth = {
            member: f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n".encode()
            for member, token in tokens.items()
        }
        self.maker = maker
        self.amqp = amqp
        self.max_connections = max_connections
        self.timeout = timeout
        self.rng = random.Random(seed)
        self.resting: list[RestingOrder] = []
        self.samples: list[Sample] = []
        self.skipped: dict[Action, int] = {}
        """Actions due but not sendable (a cancel or amend with no resting order left)."""
        self.unsent: dict[Action, int] = {}
        """Actions still waiting for a connection a second after their run ended (the system
        could not keep up): dropped, so a saturated run ends on time."""
        self.deadline = math.inf
        self._idle: list[LeanHttpConnection] = []
        self._open = 0
        self._freed = asyncio.Condition()

    # ------------------------------------------------------------------ connections

    async def _acquire(self) -> LeanHttpConnection:
        while True:
            while self._idle:
                connection = self._idle.pop()
                if not connection.closed:
                    return connection
                self._open -= 1
            if self._open < self.max_connections:
                self._open += 1
                try:
                    return await LeanHttpConnection.open(self.host, self.port)
                except BaseException:
                    self._open -= 1
                    raise
            async with self._freed:
                await self._freed.wait()

    async def _release(self, connection: LeanHttpConnection) -> None:
        if connection.closed:
            self._open -= 1
        else:
            self._idle.append(connection)
        async with self._freed:
            self._freed.notify()

    async def _http(
        self, method: str, path: str, headers: bytes, body: bytes = b""
    ) -> tuple[int, bytes, float]:
        """(status, body, sent at); status 0 when no answer came."""
        connection = await self._acquire()
        sent = time.perf_counter()
        if sent > self.deadline:
            await self._release(connection)
            raise Unsent
        try:
            raw = build_request(method, self.netloc, f"{self.prefix}{path}", headers, body)
            status, data = await connection.request(raw, self.timeout)
            return status, data, sent
        except Exception:
            return 0, b"", sent
        finally:
            await self._release(connection)

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
        self._open = 0

    # ------------------------------------------------------------------ actions

    async def _place(self, body: dict[str, Any], member: int) -> tuple[int, float]:
        status, data, sent = await self._http("POST", "/order", self.auth[member], msgspec.json.encode(body))
        if status in (200, 201):
            with contextlib.suppress(msgspec.DecodeError):
                answer = ORDER_ANSWER.decode(data)
                if answer.status in RESTING:
                    self.resting.append(RestingOrder(answer.id, member, body["market"], body["side"]))
        return status, sent

    async def _one(self, action: Action, scheduled: float) -> None:
        try:
            await self._send(action, scheduled)
        except Unsent:
            self.unsent[action] = self.unsent.get(action, 0) + 1

    async def _send(self, action: Action, scheduled: float) -> None:
        maker, rest = self.maker, True
        if action is Action.PLACE_LIMIT:
            status, sent = await self._place(maker.limit(), maker.member())
        elif action is Action.PLACE_MARKET:
            status, sent = await self._place(maker.market_order(), maker.member())
        elif action is Action.AMQP_ORDER:
            if self.amqp is None:
                status, sent = await self._place(maker.limit(), maker.member())
            else:
                rest, sent = False, time.perf_counter()
                try:
                    await asyncio.wait_for(self.amqp.publish(maker.member(), maker.limit()), self.timeout)
                    status = 200
                except Exception:
                    status = 0
        elif action is Action.CANCEL:
            if not self.resting:
                self.skipped[action] = self.skipped.get(action, 0) + 1
                return
            order = self.resting.pop(self.rng.randrange(len(self.resting)))
            status, _, sent = await self._http("DELETE", f"/order/{order.order_id}", self.auth[order.member])
        elif action is Action.AMEND:
            if not self.resting:
                self.skipped[action] = self.skipped.get(action, 0) + 1
                return
            order = self.resting[self.rng.randrange(len(self.resting))]
            body = msgspec.json.encode(maker.amend(order))
            status, _, sent = await self._http(
                "PATCH", f"/order/{order.order_id}", self.auth[order.member], body
            )
        elif action is Action.READ_DEPTH:
            status, _, sent = await self._http("GET", f"/markets/{maker.market().symbol}/depth", b"")
        elif action is Action.READ_BALANCES:
            status, _, sent = await self._http("GET", "/balances", self.auth[maker.member()])
        else:  # Action.READ_ORDERS
            status, _, sent = await self._http("GET", "/orders", self.auth[maker.member()])
        self.samples.append(Sample(action, scheduled, sent, time.perf_counter(), status, rest))

    async def run(self, rates: dict[Action, float], duration: float) -> None:
        """Send every action at its rate for `duration` seconds, open loop; returns when the last
        answer is in (or timed out). Samples accumulate in `samples`."""
        plan = [(action, rate) for action, rate in rates.items() if rate > 0]
        totals = {action: max(1, round(rate * duration)) for action, rate in plan}
        counts = dict.fromkeys(totals, 0)
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter() + 0.01
        self.deadline = start + duration + 1.0
        while any(counts[action] < totals[action] for action, _ in plan):
            elapsed = time.perf_counter() - start
            for action, rate in plan:
                due = min(totals[action], int(elapsed * rate) + 1) if elapsed >= 0 else 0
                while counts[action] < due:
                    scheduled = start + counts[action] / rate
                    counts[action] += 1
                    task = asyncio.create_task(self._one(action, scheduled))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            await asyncio.sleep(0.002)
        try:
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            self.deadline = math.inf

    async def prepare_resting(self, count: int, concurrency: int = 64) -> int:
        """Place `count` resting orders (beyond the band: nothing trades with them) as fast as
        `concurrency` requests in flight allow; returns how many rest."""
        before = len(self.resting)
        queue = iter(range(count))

        async def worker() -> None:
            for _ in queue:
                member = self.maker.member()
                await self._place(self.maker.resting(), member)

        await asyncio.gather(*(worker() for _ in range(min(concurrency, max(count, 1)))))
        return len(self.resting) - before


def window_samples(samples: list[Sample], start: float, end: float) -> list[Sample]:
    """The samples sent within [start, end)."""
    return [s for s in samples if start <= s.sent < end]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]

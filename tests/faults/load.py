"""The steady order load of the fault suite, and the record of every answer a client got.

Open loop at `rate` commands per second (a command is sent on schedule whether or not earlier
ones have been answered, up to `max_in_flight`): limit orders around a mid price in three
markets (buys and sells overlap, so a share trades; a tenth IOC), cancels and amends of orders
the client was told rest, reads of orders it was told exist, and a share of the orders through
RabbitMQ (published as `examples/amqp_publish.py` does, with publisher confirms, the reply read
from an exclusive queue). Every order carries a unique `client_order_id`; an order answered 503
or 504 (`outcome_unknown`), or not answered at all, is sent once more with the same one, as a
careful client would.

Every request and its answer is an `Attempt`; the checker holds them against the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.amqp.helpers import RABBITMQ_URL, Publisher
from tests.faults.system import FaultSystem

OPEN_STATUSES = ("submitted", "partially_filled")


@dataclass(frozen=True, slots=True)
class MarketMix:
    symbol: str
    mid: float
    step: float
    price_decimals: int
    amount_unit: float
    amount_decimals: int


MIXES = (
    MarketMix("btc_usd", 50_000.0, 1.0, 2, 0.0001, 4),
    MarketMix("eth_usd", 3_000.0, 0.1, 2, 0.001, 3),
    MarketMix("eth_btc", 0.06, 0.0001, 4, 0.001, 3),
)
BAND = 20
"""Buys are priced from mid-BAND to mid+CROSS steps, sells from mid-CROSS to mid+BAND."""
CROSS = 4


@dataclass(slots=True)
class Attempt:
    """One request and what the client was told."""

    kind: str
    """place, cancel, amend, get (REST), amqp (an order published to RabbitMQ)."""
    member: int
    sent: float
    """time.monotonic() when sent."""
    done: float = 0.0
    status: str = ""
    """The HTTP status ("201"), an AMQP reply status ("accepted", "submitted", "rejected",
    "duplicate"), "confirmed" (RabbitMQ confirmed, no reply in time), or "exc:<Type>" (no answer:
    timeout, connection refused, publish not confirmed)."""
    code: str | None = None
    """The problem's or reply's `code`."""
    client_order_id: str | None = None
    order_id: int | None = None
    """Place: the id in the answer (none for a refusal that names none). Others: the target."""
    order_status: str | None = None
    """The order's status in the answer."""
    retry: int = 0

    @property
    def answered(self) -> bool:
        return not self.status.startswith("exc:")

    @property
    def label(self) -> str:
        """`kind status[ code]`, for the errors column."""
        return f"{self.kind} {self.status}" + (f" {self.code}" if self.code else "")


@dataclass(slots=True)
class Resting:
    """An order the client was told rests in the book."""

    member: int
    order_id: int
    mix: MarketMix
    side: str
    price: float
    amended: bool = False


@dataclass
class LoadRecord:
    attempts: list[Attempt] = field(default_factory=list)
    skipped: int = 0
    """Commands not sent because `max_in_flight` were waiting for answers."""
    started: float = 0.0


class Load:
    """See the module docstring. `run(stop)` sends until `stop` is set, then waits for answers."""

    def __init__(
        self,
        system: FaultSystem,
        rate: float,
        *,
        seed: int = 1,
        amqp_share: float = 0.06,
        timeout_s: float = 10.0,
        max_in_flight: int = 600,
    ) -> None:
        self.system = system
        self.rate = rate
        self.rng = random.Random(seed)
        self.amqp_share = amqp_share
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.record = LoadRecord()
        self.headers = {
            member: {"Authorization": f"Bearer {system.token(member)}"} for member in system.member_ids
        }
        self.resting: list[Resting] = []
        """Orders the client was told rest."""
        self.told: list[tuple[int, int]] = []
        """(member, order id) of every order acknowledged to the client."""
        self.serial = 0
        self.prefix = f"f{seed}"
        self.in_flight: set[asyncio.Task[None]] = set()
        self.publisher: Publisher | None = None
        self.waiting: dict[str, asyncio.Event] = {}
        """RabbitMQ message id -> set when its reply arrives."""

    async def run(self, stop: asyncio.Event) -> LoadRecord:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.max_in_flight, force_close=False)
        with contextlib.suppress(Exception):
            self.publisher = await Publisher.connect(RABBITMQ_URL, self.system.amqp_topology)
        watcher = asyncio.create_task(self._watch_replies())
        async with aiohttp.ClientSession(
            self.system.api + "/", timeout=timeout, connector=connector
        ) as session:
            self.record.started = time.monotonic()
            period = 1.0 / self.rate
            next_at = time.monotonic()
            while not stop.is_set():
                now = time.monotonic()
                while next_at <= now:
                    next_at += period
                    if len(self.in_flight) >= self.max_in_flight:
                        self.record.skipped += 1
                        continue
                    task = asyncio.create_task(self._one(session))
                    self.in_flight.add(task)
                    task.add_done_callback(self.in_flight.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(next_at - time.monotonic(), 0.001))
            while self.in_flight:
                await asyncio.gather(*list(self.in_flight), return_exceptions=True)
        watcher.cancel()
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                await self.publisher.close()
        return self.record

    async def _watch_replies(self) -> None:
        """Wake the publishes whose reply has come (the publisher has one event for all)."""
        if self.publisher is None:
            return
        while True:
            await self.publisher.arrived.wait()
            self.publisher.arrived.clear()
            for message_id in [m for m in self.waiting if m in self.publisher.replies]:
                self.waiting.pop(message_id).set()

    async def _one(self, session: aiohttp.ClientSession) -> None:
        rng = self.rng
        pick = rng.random()
        if pick < 0.12 and self.resting:
            order = self.resting.pop(rng.randrange(len(self.resting)))
            await self._cancel(session, order.member, order.order_id)
        elif pick < 0.20 and self.resting:
            index = rng.randrange(len(self.resting))
            order = self.resting[index]
            if order.amended:
                await self._get(session, order.member, order.order_id)
            else:
                self.resting.pop(index)
                await self._amend(session, order)
        elif pick < 0.28 and self.told:
            member, order_id = self.told[rng.randrange(len(self.told))]
            await self._get(session, member, order_id)
        elif pick < 0.28 + self.amqp_share and self.publisher is not None:
            await self._amqp(rng.randint(1, self.system.members))
        else:
            await self._place(session, rng.randint(1, self.system.members))

    def _order_body(self) -> tuple[dict[str, Any], MarketMix, bool]:
        rng = self.rng
        mix = rng.choice(MIXES)
        side = "buy" if rng.random() < 0.5 else "sell"
        ioc = rng.random() < 0.1
        offset = rng.randint(CROSS, BAND) if ioc else rng.randint(-BAND, CROSS)
        price = mix.mid + (offset if side == "buy" else -offset) * mix.step
        self.serial += 1
        body: dict[str, Any] = {
            "market": mix.symbol,
            "side": side,
            "type": "limit",
            "price": f"{price:.{mix.price_decimals}f}",
            "amount": f"{rng.randint(1, 10) * mix.amount_unit:.{mix.amount_decimals}f}",
            "client_order_id": f"{self.prefix}-{self.serial}",
        }
        if ioc:
            body["time_in_force"] = "ioc"
        return body, mix, ioc

    async def _request(
        self, session: aiohttp.ClientSession, attempt: Attempt, method: str, path: str, body: Any = None
    ) -> dict[str, Any] | None:
        """Send, fill `attempt` with the answer, record it; returns the JSON body if any."""
        data: dict[str, Any] | None = None
        try:
            async with session.request(method, path, json=body, headers=self.headers[attempt.member]) as resp:
                attempt.status = str(resp.status)
                with contextlib.suppress(Exception):
                    data = await resp.json(content_type=None)
        except Exception as exc:
            attempt.status = f"exc:{type(exc).__name__}"
        attempt.done = time.monotonic()
        if isinstance(data, dict):
            if attempt.status.startswith(("4", "5")):
                attempt.code = data.get("code")
                if attempt.kind == "place" and data.get("order_id"):
                    attempt.order_id = int(data["order_id"])
            else:
                attempt.order_status = data.get("status")
                if attempt.kind == "place" and data.get("id"):
                    attempt.order_id = int(data["id"])
        self.record.attempts.append(attempt)
        return data if isinstance(data, dict) else None

    async def _place(self, session: aiohttp.ClientSession, member: int) -> None:
        body, mix, ioc = self._order_body()
        for retry in range(2):
            attempt = Attempt("place", member, time.monotonic(), client_order_id=body["client_order_id"])
            attempt.retry = retry
            await self._request(session, attempt, "POST", "order", body)
            if attempt.status in ("200", "201", "202") and attempt.order_id is not None:
                self.told.append((member, attempt.order_id))
                if attempt.order_status in OPEN_STATUSES and not ioc:
                    price = float(body["price"])
                    self.resting.append(Resting(member, attempt.order_id, mix, body["side"], price))
                return
            if attempt.status == "504" and attempt.order_id is not None:
                self.told.append((member, attempt.order_id))  # its GET must say pending, then the truth
            if attempt.answered and attempt.status not in ("503", "504"):
                return
            await asyncio.sleep(1.0)

    async def _cancel(self, session: aiohttp.ClientSession, member: int, order_id: int) -> None:
        attempt = Attempt("cancel", member, time.monotonic(), order_id=order_id)
        await self._request(session, attempt, "DELETE", f"order/{order_id}")

    async def _amend(self, session: aiohttp.ClientSession, order: Resting) -> None:
        attempt = Attempt("amend", order.member, time.monotonic(), order_id=order.order_id)
        # one step more aggressive: the order loses its time priority and may trade at once
        mix = order.mix
        price = order.price + (mix.step if order.side == "buy" else -mix.step)
        body = {"price": f"{price:.{mix.price_decimals}f}"}
        await self._request(session, attempt, "PATCH", f"order/{order.order_id}", body)
        if attempt.status == "200":
            order.amended = True
            order.price = price
            self.resting.append(order)

    async def _get(self, session: aiohttp.ClientSession, member: int, order_id: int) -> None:
        attempt = Attempt("get", member, time.monotonic(), order_id=order_id)
        await self._request(session, attempt, "GET", f"order/{order_id}")

    async def _amqp(self, member: int) -> None:
        assert self.publisher is not None
        body, _, _ = self._order_body()
        message_id = body.pop("client_order_id")
        attempt = Attempt("amqp", member, time.monotonic(), client_order_id=message_id)
        try:
            await asyncio.wait_for(
                self.publisher.publish({"command": "create", "member_id": member, **body}, message_id),
                self.timeout_s,
            )
        except Exception as exc:
            attempt.status = f"exc:{type(exc).__name__}"
            attempt.done = time.monotonic()
            self.record.attempts.append(attempt)
            return
        attempt.status = "confirmed"
        if message_id not in self.publisher.replies:
            arrived = self.waiting[message_id] = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), self.timeout_s)
            self.waiting.pop(message_id, None)
        attempt.done = time.monotonic()
        replies = self.publisher.replies.get(message_id)
        if replies:
            reply = replies[0]
            attempt.status = reply.status
            attempt.code = reply.code
            attempt.order_id = int(reply.order_id) if reply.order_id else None
            attempt.order_status = reply.order_status
            if reply.status in ("accepted", "submitted", "duplicate") and attempt.order_id is not None:
                self.told.append((member, attempt.order_id))
        self.record.attempts.append(attempt)


def statuses(attempts: list[Attempt]) -> Counter[str]:
    return Counter(attempt.label for attempt in attempts)

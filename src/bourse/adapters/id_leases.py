"""Order ids: time-ordered 64-bit order ids (`bourse.domain.order_ids`) from a leased worker id.

Every generator holds a worker id (0..1023) that no other running generator holds, leased in
the NATS KV bucket `ID_LEASES` (key `worker.<id>`, bucket TTL 30 s):

- acquire: `kv.create(key)` succeeds only if the key does not exist (atomic), so two processes
  never get the same id. A key whose holder released it (`state: released`) can be taken over
  with a compare-and-set `kv.update(last=revision)`; the successor then starts its ids after the
  `last_ms` the previous holder recorded, so clock skew between hosts cannot make it repeat ids.
  Free keys are preferred, so a released id is reused only when no never-used one is left, and a
  released entry disappears with the TTL anyway.
- renew: every TTL/3 (10 s) `kv.update(key, last=revision)`. That write succeeds only if nobody
  else wrote the key since our last write, so success proves the id is still ours.
- lose: if a renewal finds the revision changed (the key was deleted, expired or taken over), or
  no renewal succeeds before TTL*5/6 has passed since the last successful one was sent (NATS
  unreachable, event loop stalled), the lease is lost and `next_id()` raises `LeaseLost`:
  refusing ids is better than risking a duplicate. The margin (TTL/6) lies between the moment we
  stop and the earliest moment the server could let someone else take the key.
- release: on stop the entry is rewritten as released, with the high-water mark of the ids made.

`LeasedIdGenerator` combines a lease and a generator and, by default, leases a new worker id
when its lease is lost, continuing after its own high-water mark (ids keep increasing). Ids are
made in process, with no network round trip. Services that cannot hold a lease (the RabbitMQ
ingress, scripts) ask the `Ids` service: endpoint `next` (`bourse.svc.ids.next`), request body
empty, a count (`5`) or `{"count": 5}`, reply a JSON list of ids; see `request_ids`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Literal

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from bourse.adapters.cancellation import cancel_and_wait
from bourse.adapters.retry import retrying
from bourse.contracts.subjects import ID_LEASES, service_subject
from bourse.domain.order_ids import MAX_WORKER_ID, OrderIdGenerator
from bourse.domain.values import OrderId

log = logging.getLogger(__name__)

KEY_PREFIX = "worker."
MAX_IDS_PER_REQUEST = 10_000
NATS_REQUEST_TIMEOUT_S = 2.0
RENEW_BACKOFF_FIRST_S = 0.1
RENEW_BACKOFF_MAX_S = 0.5
"""Pauses between renewal attempts (at most `renew_every_s`): short, the lease is running out."""
RELET_BACKOFF_FIRST_S = 0.2
RELET_BACKOFF_MAX_S = 5.0
"""Pauses between attempts to lease a new worker id after losing one."""


class LeaseLost(RuntimeError):
    """The worker id lease is lost (or released): no ids are issued rather than risk a duplicate."""


class NoFreeWorkerId(RuntimeError):
    """Every worker id is held by a running generator."""


class IdsRequestFailed(RuntimeError):
    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


class LeaseRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The value of a lease key."""

    owner: str
    state: Literal["held", "released"] = "held"
    last_ms: int = 0
    """When released: the holder's high-water mark (Unix ms); a successor starts after it."""


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def default_owner(label: str = "") -> str:
    owner = f"{socket.gethostname()}:{os.getpid()}"
    return f"{label}@{owner}" if label else owner


def lease_key(worker_id: int) -> str:
    return f"{KEY_PREFIX}{worker_id}"


async def _scan_leases(kv: KeyValue, timeout_s: float = 5.0) -> dict[int, KeyValue.Entry]:
    """The current entry of every leased (or released, not yet expired) worker id."""
    watcher = await kv.watchall(ignore_deletes=True)
    entries: dict[int, KeyValue.Entry] = {}
    try:
        while (entry := await watcher.updates(timeout=timeout_s)) is not None:  # type: ignore[no-untyped-call]
            if entry.key.startswith(KEY_PREFIX) and entry.key[len(KEY_PREFIX) :].isdigit():
                entries[int(entry.key[len(KEY_PREFIX) :])] = entry
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return entries


def _record(entry: KeyValue.Entry) -> LeaseRecord | None:
    try:
        return msgspec.json.decode(entry.value or b"", type=LeaseRecord)
    except msgspec.DecodeError:
        return None


class WorkerIdLease:
    """One leased worker id, renewed in the background until released or lost.

    Get one with `await WorkerIdLease.acquire(js, namespace)`; `check()` raises `LeaseLost` once
    the id may no longer be ours."""

    def __init__(
        self,
        kv: KeyValue,
        worker_id: int,
        revision: int,
        *,
        owner: str,
        ttl_s: float,
        sent_at: float,
        inherited_last_ms: int = 0,
        renew_every_s: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kv = kv
        self.worker_id = worker_id
        self.key = lease_key(worker_id)
        self.revision = revision
        self.owner = owner
        self.ttl_s = ttl_s
        self.usable_s = ttl_s * 5 / 6
        self.renew_every_s = renew_every_s if renew_every_s is not None else ttl_s / 3
        self.inherited_last_ms = inherited_last_ms
        """The high-water mark left by the previous holder of this worker id (0 if none)."""
        self.renewals = 0
        self._monotonic = monotonic
        self._usable_until = sent_at + self.usable_s
        self._lost_reason: str | None = None
        self._lost = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def acquire(
        cls,
        js: JetStreamContext,
        namespace: str,
        *,
        owner: str | None = None,
        worker_ids: Iterable[int] | None = None,
        renew_every_s: float | None = None,
    ) -> WorkerIdLease:
        """Lease a free worker id (from `worker_ids`, default all) and start renewing it."""
        kv = await js.key_value(ID_LEASES.name(namespace))
        ttl_s = (await kv.status()).ttl
        if not ttl_s:
            raise RuntimeError(f"bucket {ID_LEASES.name(namespace)} has no TTL: leases would never expire")
        owner = owner or default_owner()
        candidates = list(range(MAX_WORKER_ID + 1) if worker_ids is None else worker_ids)
        random.shuffle(candidates)
        entries = await _scan_leases(kv)
        value = msgspec.json.encode(LeaseRecord(owner=owner))
        monotonic = time.monotonic
        for worker_id in (w for w in candidates if w not in entries):
            sent_at = monotonic()
            try:
                revision = await kv.create(lease_key(worker_id), value)
            except KeyWrongLastSequenceError:
                continue  # taken since the scan
            return cls._started(kv, worker_id, revision, owner, ttl_s, sent_at, 0, renew_every_s)
        released = [
            (record.last_ms, worker_id, entry.revision or 0)
            for worker_id in candidates
            if (entry := entries.get(worker_id)) is not None
            and (record := _record(entry)) is not None
            and record.state == "released"
        ]
        for last_ms, worker_id, released_revision in sorted(released):
            sent_at = monotonic()
            try:
                revision = await kv.update(lease_key(worker_id), value, last=released_revision)
            except KeyWrongLastSequenceError:
                continue
            return cls._started(kv, worker_id, revision, owner, ttl_s, sent_at, last_ms, renew_every_s)
        raise NoFreeWorkerId(f"no free worker id among {len(candidates)} in {ID_LEASES.name(namespace)}")

    @classmethod
    def _started(
        cls,
        kv: KeyValue,
        worker_id: int,
        revision: int,
        owner: str,
        ttl_s: float,
        sent_at: float,
        inherited_last_ms: int,
        renew_every_s: float | None,
    ) -> WorkerIdLease:
        lease = cls(
            kv,
            worker_id,
            revision,
            owner=owner,
            ttl_s=ttl_s,
            sent_at=sent_at,
            inherited_last_ms=inherited_last_ms,
            renew_every_s=renew_every_s,
        )
        lease._task = asyncio.create_task(lease._renew_loop(), name=f"id-lease:{worker_id}")
        log.info("worker id leased", extra={"worker_id": worker_id, "owner": owner})
        return lease

    @property
    def lost(self) -> bool:
        return self._lost_reason is not None

    @property
    def lost_reason(self) -> str | None:
        return self._lost_reason

    def check(self) -> None:
        """Raise `LeaseLost` unless the id is certainly still ours. Cheap: no I/O."""
        if self._lost_reason is None and self._monotonic() < self._usable_until:
            return
        if self._lost_reason is None:
            self._lose(f"not renewed within {self.usable_s:g} s")
        raise LeaseLost(f"worker id {self.worker_id} lease lost: {self._lost_reason}")

    async def wait_lost(self) -> None:
        await self._lost.wait()

    async def renew(self) -> None:
        """One renewal now (the background loop calls this every `renew_every_s`)."""
        async with self._lock:
            self.check()
            sent_at = self._monotonic()
            value = msgspec.json.encode(LeaseRecord(owner=self.owner))
            try:
                revision = await self.kv.update(self.key, value, last=self.revision)
            except KeyWrongLastSequenceError:
                self._lose("the lease entry changed: deleted, expired or taken over")
                raise LeaseLost(f"worker id {self.worker_id} lease lost: {self._lost_reason}") from None
            self.revision = revision
            self._usable_until = sent_at + self.usable_s
            self.renewals += 1

    async def _renew_loop(self) -> None:
        while not self.lost:
            await asyncio.sleep(self.renew_every_s)
            if not await self._renew_retrying():
                return

    async def _renew_retrying(self) -> bool:
        """One renewal, tried again while NATS is unreachable or slow until the lease runs out;
        False once the lease is lost."""
        try:
            async for attempt in retrying(
                first_s=min(RENEW_BACKOFF_FIRST_S, self.renew_every_s),
                max_s=min(RENEW_BACKOFF_MAX_S, self.renew_every_s),
                on_failure=self._renewal_failed,
                retry_on=lambda exc: not isinstance(exc, LeaseLost),
            ):
                with attempt:
                    remaining = self._usable_until - self._monotonic()
                    if remaining <= 0:
                        self._lose(f"could not renew within {self.usable_s:g} s")
                        return False
                    await asyncio.wait_for(self.renew(), min(remaining, NATS_REQUEST_TIMEOUT_S))
                    return True
        except LeaseLost:
            return False
        return False  # not reached: the loop above ends by a return or LeaseLost

    def _renewal_failed(self, exc: BaseException, pause_s: float) -> None:
        log.warning(
            "worker id lease renewal failed",
            extra={"worker_id": self.worker_id, "error": repr(exc), "pause_s": round(pause_s, 3)},
        )

    def _lose(self, reason: str) -> None:
        if self._lost_reason is None:
            self._lost_reason = reason
            self._lost.set()
            level = logging.INFO if reason == "released" else logging.ERROR
            log.log(level, "worker id lease ended", extra={"worker_id": self.worker_id, "reason": reason})

    async def release(self, last_ms: int = 0) -> None:
        """Stop renewing and mark the id released, with the high-water mark of the ids made."""
        if self._task is not None:
            await cancel_and_wait([self._task])
        if self.lost:
            return
        async with self._lock:
            self._lose("released")
            value = msgspec.json.encode(LeaseRecord(owner=self.owner, state="released", last_ms=last_ms))
            try:
                await asyncio.wait_for(
                    self.kv.update(self.key, value, last=self.revision), NATS_REQUEST_TIMEOUT_S
                )
            except Exception as exc:  # it expires with the TTL anyway
                log.warning(
                    "worker id release failed", extra={"worker_id": self.worker_id, "error": repr(exc)}
                )

    def health(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "lease": "lost" if self.lost else "held",
            "lost_reason": self._lost_reason,
            "renewals": self.renewals,
        }


class LeasedIdGenerator:
    """Order ids from a leased worker id; `next_id()` raises `LeaseLost` while no lease is held.

    With `relet=True` (default) a lost lease is replaced by a new one in the background."""

    def __init__(
        self,
        js: JetStreamContext,
        namespace: str,
        lease: WorkerIdLease,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        relet: bool = True,
        renew_every_s: float | None = None,
    ) -> None:
        self._js = js
        self._namespace = namespace
        self._clock_ms = clock_ms
        self._renew_every_s = renew_every_s
        self.lease = lease
        self.generator = OrderIdGenerator(lease.worker_id, clock_ms, last_ms=lease.inherited_last_ms)
        self.leases = 1
        self._closing = False
        self._relet_task = asyncio.create_task(self._relet_loop(), name="id-relet") if relet else None

    @classmethod
    async def start(
        cls,
        js: JetStreamContext,
        namespace: str,
        *,
        owner: str | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
        relet: bool = True,
        renew_every_s: float | None = None,
    ) -> LeasedIdGenerator:
        lease = await WorkerIdLease.acquire(js, namespace, owner=owner, renew_every_s=renew_every_s)
        return cls(js, namespace, lease, clock_ms=clock_ms, relet=relet, renew_every_s=renew_every_s)

    @property
    def worker_id(self) -> int:
        return self.lease.worker_id

    def next_id(self) -> OrderId:
        self.lease.check()
        return self.generator.next_id()

    def next_ids(self, count: int) -> list[OrderId]:
        self.lease.check()
        return self.generator.next_ids(count)

    async def _relet_loop(self) -> None:
        while True:
            await self.lease.wait_lost()
            if self._closing:
                return
            lease = await self._acquire_retrying()
            if self._closing:
                await lease.release(self.generator.last_ms)
                return
            last_ms = max(self.generator.last_ms, lease.inherited_last_ms)
            self.generator = OrderIdGenerator(lease.worker_id, self._clock_ms, last_ms=last_ms)
            self.lease = lease
            self.leases += 1

    async def _acquire_retrying(self) -> WorkerIdLease:
        """A new lease, tried again (NATS down, or every id taken) until one is granted."""
        async for attempt in retrying(
            first_s=RELET_BACKOFF_FIRST_S,
            max_s=RELET_BACKOFF_MAX_S,
            on_failure=lambda exc, pause_s: log.warning(
                "worker id re-lease failed", extra={"error": repr(exc), "pause_s": round(pause_s, 3)}
            ),
        ):
            with attempt:
                return await WorkerIdLease.acquire(
                    self._js, self._namespace, owner=self.lease.owner, renew_every_s=self._renew_every_s
                )
        raise AssertionError("not reached: the loop above retries until a lease is granted")

    async def close(self) -> None:
        self._closing = True
        if self._relet_task is not None:
            await cancel_and_wait([self._relet_task])
        await self.lease.release(self.generator.last_ms)

    def health(self) -> dict[str, Any]:
        facts = self.lease.health()
        facts.update(ok=not self.lease.lost, leases=self.leases)
        return facts


@asynccontextmanager
async def leased_id_generator(
    js: JetStreamContext,
    namespace: str,
    *,
    owner: str | None = None,
    clock_ms: Callable[[], int] = wall_clock_ms,
    relet: bool = True,
    renew_every_s: float | None = None,
) -> AsyncIterator[LeasedIdGenerator]:
    """`async with leased_id_generator(js, namespace) as ids: ids.next_id()`; releases on exit."""
    generator = await LeasedIdGenerator.start(
        js, namespace, owner=owner, clock_ms=clock_ms, relet=relet, renew_every_s=renew_every_s
    )
    try:
        yield generator
    finally:
        await generator.close()


class NextIds(msgspec.Struct, frozen=True):
    count: int = 1


def decode_count(data: bytes) -> int:
    """Request body of `next`: empty (1), a JSON integer, or `{"count": n}`."""
    if not data.strip():
        return 1
    try:
        body = msgspec.json.decode(data, type=int | NextIds)
    except msgspec.DecodeError as exc:
        raise ValueError(f"bad request body: {exc}") from None
    count = body if isinstance(body, int) else body.count
    if not 1 <= count <= MAX_IDS_PER_REQUEST:
        raise ValueError(f"count must be in 1..{MAX_IDS_PER_REQUEST}, got {count}")
    return count


async def request_ids(
    nc: Client, namespace: str, count: int = 1, *, timeout_s: float = NATS_REQUEST_TIMEOUT_S
) -> list[int]:
    """Ids from the `ids` service, for processes that do not lease a worker id themselves."""
    reply = await nc.request(
        service_subject(namespace, "ids", "next"), msgspec.json.encode(NextIds(count)), timeout=timeout_s
    )
    headers = reply.headers or {}
    if "Nats-Service-Error-Code" in headers:
        raise IdsRequestFailed(headers["Nats-Service-Error-Code"], headers.get("Nats-Service-Error", ""))
    return msgspec.json.decode(reply.data, type=list[int])

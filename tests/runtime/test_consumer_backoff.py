"""The consumer loop's retry pauses grow, up to a cap (they once stayed at 0.1 s forever on the
receive side), and a cancellation or a stop ends the retrying. No NATS: the loop's I/O is replaced."""

from __future__ import annotations

import asyncio
import itertools
import time
from types import SimpleNamespace
from typing import cast

import pytest
from nats.aio.msg import Msg

from bourse.runtime.host import ConsumerLoop
from bourse.runtime.service import ServiceContext, StreamConsumer


def make_loop() -> ConsumerLoop:
    ctx = cast(ServiceContext, SimpleNamespace(settings=SimpleNamespace(consumer_stall_s=10.0)))
    spec = cast(StreamConsumer, SimpleNamespace(durable="test-durable"))
    return ConsumerLoop(ctx, spec, "test")


async def test_receive_backoff_grows_and_is_capped() -> None:
    loop = make_loop()
    loop.RECEIVE_BACKOFF_FIRST_S = 0.01
    loop.RECEIVE_BACKOFF_MAX_S = 0.05
    pauses: list[float] = []
    record = loop._receive_failed

    def spy(exc: BaseException, pause_s: float) -> None:
        pauses.append(pause_s)
        record(exc, pause_s)

    loop._receive_failed = spy  # type: ignore[method-assign]
    calls = 0

    async def failing_receive() -> list[Msg]:
        nonlocal calls
        calls += 1
        if calls <= 8:
            raise OSError(f"connection trouble {calls}")
        return []

    loop._receive = failing_receive  # type: ignore[method-assign]
    loop._requested = 5
    started = time.monotonic()
    assert await loop._receive_retrying() == []
    elapsed = time.monotonic() - started

    assert calls == 9
    assert len(pauses) == 8
    # first_s * 2**n plus at most first_s of jitter, never past the cap
    assert 0.01 <= pauses[0] <= 0.02
    assert 0.02 <= pauses[1] <= 0.03
    assert pauses[2] > pauses[0]
    assert pauses[3] > pauses[1]
    assert pauses[-3:] == [0.05, 0.05, 0.05]
    assert max(pauses) == 0.05
    assert elapsed >= sum(pauses) * 0.9  # the pauses are really waited
    assert loop.failures == 8
    assert loop.last_error == "OSError: connection trouble 8"
    assert loop._requested == 0


async def test_handler_backoff_grows_and_stops_when_the_loop_stops() -> None:
    loop = make_loop()
    loop.HANDLER_BACKOFF_FIRST_S = 0.01
    loop.HANDLER_BACKOFF_MAX_S = 0.04
    attempts: list[float] = []

    async def failing_handler(messages: list[Msg]) -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 6:
            loop._stopping.set()
        raise RuntimeError("database down")

    loop.spec = cast(StreamConsumer, SimpleNamespace(durable="test-durable", handler=failing_handler))
    batch = [cast(Msg, object())]
    await asyncio.wait_for(loop._deliver(batch), 5.0)

    assert len(attempts) == 6  # the failure after the stop is not retried
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.01
    assert gaps[1] >= 0.02
    assert gaps[2] >= 0.04 * 0.99
    assert loop.failures == 6
    assert loop.last_error == "RuntimeError: database down"
    assert loop._unacked is None  # never acked: redelivered to the next run


async def test_a_cancelled_receive_stops_retrying_at_once() -> None:
    loop = make_loop()
    loop.RECEIVE_BACKOFF_FIRST_S = 0.01
    loop.RECEIVE_BACKOFF_MAX_S = 0.02

    async def failing_receive() -> list[Msg]:
        raise OSError("down")

    loop._receive = failing_receive  # type: ignore[method-assign]
    task = asyncio.create_task(loop._receive_retrying())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert loop.failures >= 3

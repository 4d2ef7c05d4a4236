"""Order ids: 64-bit, positive, time ordered, unique across instances, made without a network
round trip.

Layout (snowflake), most significant bit first:

    0 | 41 bits: milliseconds since 2026-01-01T00:00:00Z | 10 bits: worker id | 12 bits: sequence

- The top bit is always 0, so an id is a positive signed 64-bit integer (SQL `BIGINT`, JSON
  readers that use int64). 41 bits of milliseconds last about 69 years, until 2095.
- The worker id (0..1023) is what makes two generators never collide: each running generator
  holds a different one (`bourse.services.ids` leases them in NATS KV).
- The sequence counts ids within one millisecond: 4096 per ms per worker.

Ids from one generator strictly increase. When the sequence of a millisecond is used up, the
generator moves on to the next millisecond at once instead of waiting for the clock, so its
timestamp may run a little ahead of the clock during a burst (one ms per 4096 ids beyond the
rate of 4096 per ms). When the clock goes backwards (an NTP step), the generator keeps its last
timestamp and continues from it; it never reuses a (timestamp, sequence) pair. The timestamp in
an id is therefore "no earlier than creation", close to it in practice, and `last_ms` is the
high-water mark a successor with the same worker id must start after.

This module is pure: the clock is passed in.
"""

from __future__ import annotations

from collections.abc import Callable

from bourse.domain.values import OrderId

EPOCH_MS = 1_767_225_600_000
"""2026-01-01T00:00:00Z in Unix milliseconds: timestamp 0 of an id."""

TIMESTAMP_BITS = 41
WORKER_ID_BITS = 10
SEQUENCE_BITS = 12

MAX_WORKER_ID = (1 << WORKER_ID_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
MAX_TIMESTAMP = (1 << TIMESTAMP_BITS) - 1

WORKER_ID_SHIFT = SEQUENCE_BITS
TIMESTAMP_SHIFT = SEQUENCE_BITS + WORKER_ID_BITS


class OrderIdGenerator:
    """Makes ids for one worker id. Not thread safe (one per event loop); never blocks.

    `clock_ms` returns Unix time in milliseconds. `last_ms` (Unix ms) is a timestamp the
    generator must not issue ids at or before, e.g. the high-water mark a previous holder of the
    same worker id left behind.
    """

    __slots__ = ("_clock_ms", "_last_ms", "_sequence", "_worker_bits", "worker_id")

    def __init__(self, worker_id: int, clock_ms: Callable[[], int], *, last_ms: int = 0) -> None:
        if not 0 <= worker_id <= MAX_WORKER_ID:
            raise ValueError(f"worker id must be in 0..{MAX_WORKER_ID}, got {worker_id}")
        self.worker_id = worker_id
        self._worker_bits = worker_id << WORKER_ID_SHIFT
        self._clock_ms = clock_ms
        # Start after `last_ms`: the first id uses last_ms + 1 or later, sequence 0.
        self._last_ms = max(last_ms, EPOCH_MS - 1)
        self._sequence = MAX_SEQUENCE

    @property
    def last_ms(self) -> int:
        """Unix ms of the newest id issued (or the starting mark): the generator's high-water mark."""
        return self._last_ms

    def next_id(self) -> OrderId:
        now = self._clock_ms()
        if now > self._last_ms:
            self._last_ms = now
            self._sequence = 0
        else:
            # Same millisecond, or the clock went backwards: continue from the last timestamp.
            sequence = self._sequence + 1
            if sequence > MAX_SEQUENCE:
                # This millisecond is used up: move on to the next one without waiting.
                self._last_ms += 1
                sequence = 0
            self._sequence = sequence
        timestamp = self._last_ms - EPOCH_MS
        if timestamp > MAX_TIMESTAMP:
            raise OverflowError("order id timestamp beyond 2095: the id layout needs a new epoch")
        return OrderId((timestamp << TIMESTAMP_SHIFT) | self._worker_bits | self._sequence)

    def next_ids(self, count: int) -> list[OrderId]:
        next_id = self.next_id
        return [next_id() for _ in range(count)]


def id_timestamp_ms(order_id: int) -> int:
    """Unix milliseconds encoded in an id (when it was made, or a moment just after)."""
    return (order_id >> TIMESTAMP_SHIFT) + EPOCH_MS


def id_worker_id(order_id: int) -> int:
    """The worker id that made an id."""
    return (order_id >> WORKER_ID_SHIFT) & MAX_WORKER_ID

"""Order ids: layout, strict order, uniqueness across workers, clock steps back, sequence overflow."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bourse.domain.order_ids import (
    EPOCH_MS,
    MAX_SEQUENCE,
    MAX_WORKER_ID,
    OrderIdGenerator,
    id_timestamp_ms,
    id_worker_id,
)

NOW_MS = EPOCH_MS + 1_000_000


class FakeClock:
    def __init__(self, now_ms: int = NOW_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def test_id_carries_timestamp_worker_and_sequence_in_63_bits() -> None:
    clock = FakeClock()
    generator = OrderIdGenerator(1023, clock)
    first, second = generator.next_id(), generator.next_id()
    assert 0 < first < second < 2**63
    assert id_timestamp_ms(first) == NOW_MS
    assert id_worker_id(first) == 1023
    assert second - first == 1  # same ms: the sequence counts up
    assert first == (1_000_000 << 22) | (1023 << 12)


def test_id_of_the_largest_timestamp_is_still_positive_int64() -> None:
    generator = OrderIdGenerator(MAX_WORKER_ID, FakeClock(EPOCH_MS + 2**41 - 1))
    assert 0 < generator.next_id() < 2**63
    with pytest.raises(OverflowError):
        OrderIdGenerator(0, FakeClock(EPOCH_MS + 2**41)).next_id()


@pytest.mark.parametrize("worker_id", [-1, MAX_WORKER_ID + 1])
def test_worker_id_outside_ten_bits_is_refused(worker_id: int) -> None:
    with pytest.raises(ValueError, match="worker id"):
        OrderIdGenerator(worker_id, FakeClock())


def test_ids_follow_the_clock_and_restart_the_sequence_each_ms() -> None:
    clock = FakeClock()
    generator = OrderIdGenerator(7, clock)
    generator.next_ids(5)
    clock.now_ms += 3
    fresh = generator.next_id()
    assert id_timestamp_ms(fresh) == NOW_MS + 3
    assert fresh & MAX_SEQUENCE == 0


def test_clock_going_backwards_continues_from_the_last_timestamp_without_duplicates() -> None:
    clock = FakeClock()
    generator = OrderIdGenerator(3, clock)
    before = generator.next_ids(10)
    clock.now_ms -= 5_000  # NTP steps the clock back 5 s
    during = generator.next_ids(10)
    clock.now_ms += 5_001
    after = generator.next_ids(10)
    ids = before + during + after
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(id_timestamp_ms(i) == NOW_MS for i in during)
    assert id_timestamp_ms(after[0]) == NOW_MS + 1


def test_sequence_overflow_moves_to_the_next_ms_without_waiting_or_going_back() -> None:
    clock = FakeClock()
    generator = OrderIdGenerator(5, clock)
    ids = generator.next_ids(3 * (MAX_SEQUENCE + 1) + 1)  # the clock never moves
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert [id_timestamp_ms(i) for i in ids[:: MAX_SEQUENCE + 1]] == [NOW_MS + k for k in range(4)]
    assert generator.last_ms == NOW_MS + 3
    clock.now_ms += 1  # the clock catches up but is still behind the generator: no going back
    assert generator.next_id() > ids[-1]
    assert generator.last_ms == NOW_MS + 3


def test_generator_starts_after_a_high_water_mark() -> None:
    clock = FakeClock()
    previous = OrderIdGenerator(9, FakeClock(NOW_MS + 50))
    issued = previous.next_ids(3)
    successor = OrderIdGenerator(9, clock, last_ms=previous.last_ms)  # its clock lags 50 ms
    assert successor.next_id() > issued[-1]
    assert id_timestamp_ms(successor.next_id()) == NOW_MS + 51


# A schedule of steps: (which generator, clock delta in ms, how many ids).
Schedule = list[tuple[int, int, int]]
steps = st.lists(
    st.tuples(st.integers(0, 3), st.integers(-3, 3), st.integers(1, 3000)), min_size=1, max_size=40
)


@settings(max_examples=200, deadline=None)
@given(
    worker_ids=st.lists(st.integers(0, MAX_WORKER_ID), min_size=2, max_size=4, unique=True), schedule=steps
)
def test_ids_are_unique_across_workers_and_increasing_per_worker(
    worker_ids: list[int], schedule: Schedule
) -> None:
    clocks = [FakeClock() for _ in worker_ids]
    generators = [OrderIdGenerator(w, clock) for w, clock in zip(worker_ids, clocks, strict=True)]
    issued: list[list[int]] = [[] for _ in worker_ids]
    for which, delta, count in schedule:
        index = which % len(generators)
        clocks[index].now_ms += delta
        issued[index].extend(generators[index].next_ids(count))
    everything = [i for ids in issued for i in ids]
    assert len(set(everything)) == len(everything)
    for worker_id, ids in zip(worker_ids, issued, strict=True):
        assert all(a < b for a, b in itertools.pairwise(ids))
        assert all(id_worker_id(i) == worker_id for i in ids)


def test_real_clock_ids_are_close_to_now() -> None:
    import time

    clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000  # noqa: E731
    generator = OrderIdGenerator(0, clock)
    ids = generator.next_ids(20_000)
    assert ids == sorted(set(ids))
    assert abs(id_timestamp_ms(ids[-1]) - clock()) < 1_000

"""The gateway's read chain on its own (models in memory, a hand-moved clock): which model answers
by position, what happens to a failing one, and what a stale answer says."""

from __future__ import annotations

import asyncio

import pytest

from bourse.adapters.read_chain import (
    READ_NOTE,
    Positions,
    ReadNote,
    ReadSource,
    ReadWatch,
    StreamHistory,
)
from bourse.application.ports import QueryFailed
from bourse.domain.order_views import BalanceView, DepthView, MemberTrade, OrderView, PublicTrade
from bourse.domain.orders import OrderStatus


class Model:
    """A read model answering `balances` with its own name as the currency, or raising."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.raises: BaseException | None = None
        self.calls = 0
        self.delay_s = 0.0

    async def balances(self, member_id: int) -> list[BalanceView]:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.raises is not None:
            raise self.raises
        return [BalanceView(self.name, member_id, 0)]

    async def order(self, member_id: int, order_id: int) -> OrderView:
        raise QueryFailed(404, "order_not_found", f"no order {order_id}")

    async def orders(
        self,
        member_id: int,
        *,
        market: str | None = None,
        state: str | None = None,
        status: OrderStatus | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[OrderView]:
        return []

    async def depth(self, market: str, limit: int = 50) -> DepthView:
        return DepthView(market, [], [], None, 0)

    async def trades(self, market: str, limit: int = 100) -> list[PublicTrade]:
        return []

    async def member_trades(
        self, member_id: int, market: str | None = None, limit: int = 100
    ) -> list[MemberTrade]:
        return []


class World:
    """Three models, their watermarks and the streams' positions, all set by the test."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.stream = Positions(10, 10)
        self.applied: dict[str, Positions | None] = {
            "redis": Positions(10, 10),
            "sql": Positions(10, 10),
            "query": Positions(10, 10),
        }
        self.check_raises: dict[str, BaseException] = {}
        self.models = {name: Model(name) for name in self.applied}

    def positions(self, name: str) -> ReadSource[Model]:
        async def read() -> Positions | None:
            if name in self.check_raises:
                raise self.check_raises[name]
            return self.applied[name]

        return ReadSource(name, self.models[name], read)

    async def streams(self) -> Positions:
        return self.stream

    def watch(self, *, failures: int = 3, reset_s: float = 60.0) -> ReadWatch:
        return ReadWatch(
            [self.positions(name) for name in self.applied],
            self.streams,
            max_lag_s=1.0,
            interval_s=0.25,
            breaker_failures=failures,
            breaker_reset_s=reset_s,
            clock=lambda: self.now,
        )


async def answer(watch: ReadWatch) -> tuple[str, ReadNote]:
    """Which model answered `balances`, and the request's note."""
    note = ReadNote()
    token = READ_NOTE.set(note)
    try:
        balances = await watch.chain("redis", "sql", "query").balances(7)
    finally:
        READ_NOTE.reset(token)
    assert note.source == balances[0].currency
    return balances[0].currency, note


async def test_the_first_model_that_has_applied_what_the_streams_held_max_lag_ago_answers() -> None:
    world = World()
    watch = world.watch()
    await watch.check()
    assert (await answer(watch))[0] == "redis"

    # the streams move on; redis stays: it is behind only once the move is max_lag old
    world.stream = Positions(20, 12)
    world.now += 0.25
    await watch.check()
    world.applied["sql"] = Positions(20, 12)
    await watch.check()
    assert (await answer(watch))[0] == "redis", "within max_lag: fresh enough"
    world.now += 1.0
    await watch.check()
    source, note = await answer(watch)
    assert source == "sql", "redis missed what the streams held 1 s ago"
    assert not note.stale
    assert world.models["redis"].calls == 2, "a model that is behind is not even asked"
    assert watch.sources["redis"].passed["behind"] == 1


async def test_a_model_without_a_watermark_is_never_asked_even_when_the_last_one_fails() -> None:
    world = World()
    world.applied["redis"] = None  # rebuilding
    world.applied["sql"] = None  # empty tables
    watch = world.watch()
    await watch.check()
    assert (await answer(watch))[0] == "query"
    world.models["query"].raises = QueryFailed(503, "unavailable", "no query service instance answers")
    with pytest.raises(QueryFailed) as failed:
        await watch.chain("redis", "sql", "query").balances(7)
    assert failed.value.code == "unavailable"
    assert world.models["redis"].calls == world.models["sql"].calls == 0


async def test_the_last_model_answers_when_behind_and_says_so() -> None:
    world = World()
    watch = world.watch()
    await watch.check()
    world.stream = Positions(50, 50)
    await watch.check()
    world.now += 2.0
    await watch.check()
    source, note = await answer(watch)
    assert source == "query"
    assert note.stale
    assert note.lag_s is not None
    assert note.lag_s >= 2.0
    assert watch.stale_answers == 1


async def test_when_the_last_model_fails_one_that_is_only_behind_answers_marked_stale() -> None:
    world = World()
    watch = world.watch()
    await watch.check()
    world.stream = Positions(50, 50)
    await watch.check()
    world.now += 2.0
    world.applied["redis"] = None
    world.applied["sql"] = Positions(40, 50)
    await watch.check()
    world.models["query"].raises = QueryFailed(504, "timeout", "no answer")
    source, note = await answer(watch)
    assert source == "sql"
    assert note.stale


@pytest.mark.parametrize(
    "fault",
    [
        RuntimeError("unable to perform operation on <TCPTransport closed=True>"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError(),
        QueryFailed(503, "unavailable", "redis: ConnectionError"),
        QueryFailed(503, "not_ready", "the cache has not caught up"),
        QueryFailed(500, "internal", "a bug"),
    ],
)
async def test_any_fault_of_a_model_is_answered_by_the_next_one(fault: BaseException) -> None:
    world = World()
    watch = world.watch()
    await watch.check()
    world.models["redis"].raises = fault
    assert (await answer(watch))[0] == "sql"


async def test_a_4xx_is_an_answer_not_a_fault() -> None:
    world = World()
    watch = world.watch()
    await watch.check()
    with pytest.raises(QueryFailed) as failed:
        await watch.chain("redis", "sql", "query").order(7, 1)
    assert failed.value.status == 404


async def test_a_failing_model_is_skipped_by_its_open_breaker_without_waiting_for_it() -> None:
    world = World()
    watch = world.watch(failures=3, reset_s=0.3)
    await watch.check()
    redis = world.models["redis"]
    redis.raises, redis.delay_s = TimeoutError(), 0.05  # each failure costs a timeout
    for _ in range(3):
        assert (await answer(watch))[0] == "sql"
    assert redis.calls == 3
    assert watch.health()["redis"]["breaker"] == "opened"
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(20):
        assert (await answer(watch))[0] == "sql"
    assert redis.calls == 3, "the open breaker kept redis out"
    assert loop.time() - started < 0.05
    assert watch.sources["redis"].passed["open"] == 20
    await watch.check()
    assert watch.sources["redis"].applied is None, "no watermark check either while open"

    # after reset_s one call tries again; redis works: closed, and it answers
    await asyncio.sleep(0.35)
    redis.raises, redis.delay_s = None, 0.0
    await watch.check()
    assert watch.health()["redis"]["breaker"] == "closed"
    assert (await answer(watch))[0] == "redis"


def test_the_required_position_is_the_newest_sample_at_least_max_lag_old() -> None:
    history = StreamHistory(max_lag_s=1.0, interval_s=0.25)
    assert history.required(0.0) is None
    history.add(10.0, Positions(1, 1))
    history.add(10.5, Positions(2, 2))
    history.add(11.0, Positions(3, 3))
    assert history.required(10.6) == Positions(1, 1), "not watched max_lag yet: the first sample"
    assert history.required(11.5) == Positions(2, 2)
    assert history.required(20.0) == Positions(3, 3)
    assert history.lag_s(Positions(1, 1), 12.0) == pytest.approx(1.5)
    assert history.lag_s(Positions(3, 3), 12.0) == 0.0
    assert history.lag_s(Positions(0, 5), 12.0) == pytest.approx(2.0)
    assert history.lag_s(None, 12.0) is None

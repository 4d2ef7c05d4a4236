"""Which read model answers the gateway's reads: the first of a chain that is up to date (by
stream position) and healthy; the last one answers anyway and says when it is behind.

Why by position and not by clock: every read model here (the cache's Redis, persistence's SQL
tables, the query service) applies the same two streams, EVENTS and ACCOUNTS, and records how far
it got (its watermark: the last stream sequence applied). A stream sequence is exact where a
clock is not: "applied up to 1234" says which orders, trades and balances are in, whatever the
hosts' clocks say. So the chain samples the streams' last sequences (JetStream stream info, one
task, every `interval_s`) and, beside that, each model's watermark (one task per model, same
interval), and a model answers only if its watermark has reached what the streams held
`max_lag_s` ago. A model without a watermark (empty, or rebuilding: persistence's rows or the
cache's `ready` flag are gone) never answers, and neither does one whose watermark cannot be
read. The freshness check is then an in-memory comparison: no round trip is added to a read.
The bound a client gets: what a model shows lags the streams by at most `max_lag_s` plus one
interval (the age of the watermark sample).

Why a circuit breaker (purgatory's) in front of every model but the last: a model that fails
(Redis black-holed, a socket reset, a pool exhausted) is skipped at once after a few failures
instead of making every read pay its timeout; after `breaker_reset_s` one call tries it again
(the watermark check, usually, since it runs every interval). Any exception of a model but the
last is a reason to ask the next one, never an error for the client: under uvloop a Redis
connection reset raises `RuntimeError`, not a `RedisError`. A 4xx `QueryFailed` (not found, bad
request) is an answer and is passed on.

The last model is always asked. If it is behind (or its position is unknown) it answers anyway,
and the answer is marked stale; if it fails, a model that was passed over only for being behind
(never one without a watermark) answers, marked stale. `ReadHeaders` puts that on the HTTP
response: `Bourse-Read-Source` (which model answered) and `Bourse-Read-Stale` (about how many
seconds of stream the answer may be missing, a lower bound; `unknown` if its position is not
known).

Two kinds of reads go through chains of the same kind: the `ReadModel` reads (orders, balances,
depth, trades: `ReadChain`, ending with the query service) and the market statistics
(`StatisticsReads`: tickers and k-lines, `StatisticsChain`, ending with the statistics service).
Both are a `Chain` over their protocol, judged by the same watch. The statistics service follows
EVENTS only: its watermark (`statistics_positions`) says it has applied all of ACCOUNTS
(`NOT_FOLLOWED`), so it is behind only when it is behind on EVENTS."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from nats.js import JetStreamContext
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OPENED, OpenedState
from purgatory.service._async.circuitbreaker import AsyncCircuitBreaker
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bourse.adapters.cancellation import cancel_and_wait
from bourse.adapters.query_client import QueryClient
from bourse.adapters.sql.database import sqlite_file
from bourse.adapters.sql.models import WATERMARK, applied_positions
from bourse.adapters.statistics_client import StatisticsClient
from bourse.application.ports import QueryFailed, ReadModel, StatisticsReads
from bourse.contracts.subjects import ACCOUNTS, EVENTS
from bourse.domain.candles import Candle, Period
from bourse.domain.order_views import BalanceView, DepthView, MemberTrade, OrderView, PublicTrade
from bourse.domain.orders import OrderStatus
from bourse.domain.tickers import Ticker

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M")
"""The protocol a chain's models implement: `ReadModel` or `StatisticsReads`."""

CHECK_TIMEOUT_S = 1.0
"""Deadline of one watermark or stream sample: a hung check must not stop the next ones."""
HISTORY_S = 120.0
"""How long stream samples are kept: the reach of a stale answer's lag estimate."""
NOT_FOLLOWED: Final = 2**64 - 1
"""The position of a model in a stream it does not follow (the statistics service in ACCOUNTS):
past any sequence a stream can reach (JetStream's are unsigned 64-bit), so never behind there."""


@dataclass(frozen=True, slots=True)
class Positions:
    """Last stream sequences: of EVENTS and ACCOUNTS (the streams), or applied (a model)."""

    events: int
    accounts: int

    def covers(self, other: Positions) -> bool:
        return self.events >= other.events and self.accounts >= other.accounts

    def shown(self) -> list[int | None]:
        """For health: `[events, accounts]`, None for a stream not followed."""
        return [None if seq == NOT_FOLLOWED else seq for seq in (self.events, self.accounts)]


class StreamHistory:
    """Samples of the streams' last sequences, oldest first, over `HISTORY_S`."""

    def __init__(self, max_lag_s: float, interval_s: float) -> None:
        self.max_lag_s = max_lag_s
        self.samples: deque[tuple[float, Positions]] = deque(maxlen=max(int(HISTORY_S / interval_s), 8))

    def add(self, at: float, positions: Positions) -> None:
        self.samples.append((at, positions))

    def required(self, now: float) -> Positions | None:
        """What a model must have applied to answer: what the streams held `max_lag_s` ago (the
        first sample while the gateway has not watched that long; None before any sample, when
        only the presence of a watermark counts)."""
        horizon = now - self.max_lag_s
        for at, positions in reversed(self.samples):
            if at <= horizon:
                return positions
        return self.samples[0][1] if self.samples else None

    def lag_s(self, applied: Positions | None, now: float) -> float | None:
        """About how many seconds of stream `applied` misses (a lower bound: the age of the oldest
        sample it does not cover); None when unknown."""
        if applied is None:
            return None
        for at, positions in self.samples:
            if not applied.covers(positions):
                return max(now - at, 0.0)
        return 0.0


@dataclass(eq=False)
class ReadSource(Generic[M]):
    """One model of a chain with how to read its watermark (None: empty or rebuilding). `name` is
    unique in its watch (health, breaker); `label` names it in `Bourse-Read-Source` (the name when
    empty): the cache's statistics answer as `redis`, as its orders do."""

    name: str
    model: M
    positions: Callable[[], Awaitable[Positions | None]]
    applied: Positions | None = None
    """The watermark last read; None until read, when missing, or when it could not be read."""
    checked_at: float | None = None
    answered: int = 0
    passed: Counter[str] = field(default_factory=Counter)
    """Reads passed to the next model, by reason: unready, behind, open (breaker), failed."""
    failures: Counter[str] = field(default_factory=Counter)
    """Failed reads and checks by exception type (`RuntimeError` under uvloop for a reset)."""
    last_error: str | None = None
    breaker: AsyncCircuitBreaker | None = None
    label: str = ""

    @property
    def answers_as(self) -> str:
        return self.label or self.name

    def failed(self, exc: BaseException) -> None:
        self.failures[type(exc).__name__] += 1
        self.last_error = f"{type(exc).__name__}: {exc}"


@dataclass(slots=True)
class ReadNote:
    """What the reads of one HTTP request learnt: the model that answered last, and staleness."""

    source: str | None = None
    stale: bool = False
    lag_s: float | None = None


READ_NOTE: ContextVar[ReadNote | None] = ContextVar("bourse_read_note", default=None)


class _Passed:
    """The marker of a read passed to the next model."""


PASSED = _Passed()


def _open(breaker: AsyncCircuitBreaker) -> bool:
    """Open and not yet due for a trial call (purgatory's own rule, read without raising)."""
    context = breaker.context
    opened_at = context.opened_at
    return context.state == OPENED and opened_at is not None and time.time() <= opened_at + context.ttl


def _not_a_failure(exc: BaseException) -> bool:
    """For the breaker: an answer (4xx), a model not ready yet, or a cancelled request does not
    say the model is failing."""
    return not isinstance(exc, QueryFailed) or exc.code != "unavailable"


class ReadWatch:
    """Watches the streams and the models' watermarks for one or more chains (the gateway has
    two orders of the same models): one task samples the streams, one per model its watermark,
    each every `interval_s` and each bounded by `CHECK_TIMEOUT_S`. Every model has its circuit
    breaker; `streams` samples the streams' last sequences (`stream_positions`); `clock` is
    monotonic seconds."""

    def __init__(
        self,
        sources: Sequence[ReadSource[Any]],
        streams: Callable[[], Awaitable[Positions]],
        *,
        max_lag_s: float,
        interval_s: float,
        breaker_failures: int,
        breaker_reset_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sources = {source.name: source for source in sources}
        self.streams = streams
        self.history = StreamHistory(max_lag_s, interval_s)
        self.interval_s = interval_s
        self.clock = clock
        self.breakers = AsyncCircuitBreakerFactory(
            default_threshold=breaker_failures,
            default_ttl=breaker_reset_s,
            exclude=[(QueryFailed, _not_a_failure), (asyncio.CancelledError, _not_a_failure)],
        )
        self.stale_answers = 0
        self._tasks: list[asyncio.Task[None]] = []

    def chain(self, *names: str) -> ReadChain:
        """A `ReadModel` asking these models (`ReadModel`s) in this order."""
        return ReadChain(self, [self.sources[name] for name in names])

    def statistics_chain(self, *names: str) -> StatisticsChain:
        """A `StatisticsReads` asking these models (`StatisticsReads`) in this order."""
        return StatisticsChain(self, [self.sources[name] for name in names])

    async def start(self) -> None:
        """One sample of everything (so the first reads are judged), then the watching tasks."""
        await self.check()
        self._tasks = [asyncio.create_task(self._every(self._sample_streams), name="reads:streams")]
        for source in self.sources.values():
            check = functools.partial(self._check, source)
            self._tasks.append(asyncio.create_task(self._every(check), name=f"reads:{source.name}"))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []

    async def check(self) -> None:
        """Sample the streams and every model's watermark now (tests call it to skip a wait)."""
        for source in self.sources.values():
            if source.breaker is None:
                source.breaker = await self.breakers.get_breaker(source.name)
        await asyncio.gather(self._sample_streams(), *(self._check(s) for s in self.sources.values()))

    async def _every(self, work: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await work()

    async def _sample_streams(self) -> None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                positions = await self.streams()
        except Exception as exc:  # NATS away: the older samples stand
            log.debug("stream sample failed: %s", exc)
            return
        self.history.add(self.clock(), positions)

    async def _check(self, source: ReadSource[Any]) -> None:
        applied: Positions | None = None
        if source.breaker is not None and _open(source.breaker):
            source.applied, source.checked_at = None, self.clock()
            return  # failing: unknown until the breaker lets a check through
        try:
            if source.breaker is None:
                async with asyncio.timeout(CHECK_TIMEOUT_S):
                    applied = await source.positions()
            else:
                async with source.breaker:
                    async with asyncio.timeout(CHECK_TIMEOUT_S):
                        applied = await source.positions()
        except OpenedState as exc:
            exc.__traceback__ = None
        except Exception as exc:
            source.failed(exc)
        source.applied, source.checked_at = applied, self.clock()

    def fresh(self, name: str) -> bool:
        """Would the model answer now (watermark known and recent enough, breaker closed)?"""
        source = self.sources[name]
        required = self.history.required(self.clock())
        applied = source.applied
        if applied is None or (required is not None and not applied.covers(required)):
            return False
        return source.breaker is None or not _open(source.breaker)

    def health(self) -> dict[str, Any]:
        required = self.history.required(self.clock())
        facts: dict[str, Any] = {
            "required": None if required is None else [required.events, required.accounts],
            "stale_answers": self.stale_answers,
        }
        for name, source in self.sources.items():
            applied = source.applied
            facts[name] = {
                "applied": None if applied is None else applied.shown(),
                "fresh": self.fresh(name),
                "answered": source.answered,
                "passed": dict(source.passed),
                "breaker": None if source.breaker is None else source.breaker.context.state,
                "failures": dict(source.failures),
                "last_error": source.last_error,
            }
        return facts


class Chain(Generic[M]):
    """Models of one protocol `M` asked in order, see the module docstring; `ReadChain` and
    `StatisticsChain` give it the protocol's methods."""

    def __init__(self, watch: ReadWatch, sources: Sequence[ReadSource[M]]) -> None:
        if not sources:
            raise ValueError("a read chain needs at least one model")
        self.watch = watch
        self.sources = list(sources)
        self.leading = self.sources[:-1]
        self.last = self.sources[-1]

    # ------------------------------------------------------------------ reading

    def _answered(self, source: ReadSource[M], result: T, *, stale: bool, now: float) -> T:
        source.answered += 1
        if stale:
            self.watch.stale_answers += 1
        note = READ_NOTE.get()
        if note is not None:
            note.source = source.answers_as
            if stale:
                lag = self.watch.history.lag_s(source.applied, now)
                note.stale = True
                note.lag_s = lag if note.lag_s is None or lag is None else max(note.lag_s, lag)
        return result

    async def _guarded(self, source: ReadSource[M], call: Callable[[M], Awaitable[T]]) -> T:
        if source.breaker is None:
            return await call(source.model)
        async with source.breaker:
            return await call(source.model)

    async def _try(self, source: ReadSource[M], call: Callable[[M], Awaitable[T]]) -> T | _Passed:
        """The model's answer, or `PASSED` when the next model should be asked."""
        breaker = source.breaker
        if breaker is not None and _open(breaker):
            source.passed["open"] += 1  # checked before entering: purgatory raises one instance
            return PASSED  # again and again, and each raise lengthens its traceback
        try:
            return await self._guarded(source, call)
        except OpenedState as exc:
            exc.__traceback__ = None
            source.passed["open"] += 1
        except QueryFailed as exc:
            if exc.status < 500:
                raise  # an answer: not found, bad request
            source.passed["failed"] += 1
            source.failed(exc)
        except Exception as exc:  # RuntimeError (uvloop's reset transport), OSError, timeouts...
            source.passed["failed"] += 1
            source.failed(exc)
        return PASSED

    async def _read(self, call: Callable[[M], Awaitable[T]]) -> T:
        now = self.watch.clock()
        required = self.watch.history.required(now)
        behind: list[ReadSource[M]] = []
        for source in self.leading:
            applied = source.applied
            if applied is None:
                source.passed["unready"] += 1
                continue
            if required is not None and not applied.covers(required):
                source.passed["behind"] += 1
                behind.append(source)
                continue
            result = await self._try(source, call)
            if not isinstance(result, _Passed):
                return self._answered(source, result, stale=False, now=now)
        last = self.last
        try:
            answer = await call(last.model)
        except QueryFailed as exc:
            if exc.status < 500 or not behind:
                raise
            error = exc
        except Exception as exc:
            error = QueryFailed(503, "unavailable", f"{last.name}: {type(exc).__name__}: {exc}")
            if not behind:
                raise error from None
        else:
            applied = last.applied
            stale = applied is None or (required is not None and not applied.covers(required))
            return self._answered(last, answer, stale=stale, now=now)
        # the last model failed: one that is only behind answers, said to be stale
        for source in behind:
            result = await self._try(source, call)
            if not isinstance(result, _Passed):
                return self._answered(source, result, stale=True, now=now)
        raise error

    @property
    def passed(self) -> int:
        """Reads this chain's models passed to the next one, all reasons (models shared with
        another chain count its reads too)."""
        return sum(sum(source.passed.values()) for source in self.sources)


class ReadChain(Chain[ReadModel]):
    """The gateway's `ReadModel`: orders, balances, depth and trades."""

    async def order(self, member_id: int, order_id: int) -> OrderView:
        return await self._read(lambda m: m.order(member_id, order_id))

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
        return await self._read(
            lambda m: m.orders(
                member_id, market=market, state=state, status=status, limit=limit, before_id=before_id
            )
        )

    async def balances(self, member_id: int) -> list[BalanceView]:
        return await self._read(lambda m: m.balances(member_id))

    async def depth(self, market: str, limit: int = 50) -> DepthView:
        return await self._read(lambda m: m.depth(market, limit))

    async def trades(self, market: str, limit: int = 100) -> list[PublicTrade]:
        return await self._read(lambda m: m.trades(market, limit))

    async def member_trades(
        self, member_id: int, market: str | None = None, limit: int = 100
    ) -> list[MemberTrade]:
        return await self._read(lambda m: m.member_trades(member_id, market, limit))


class StatisticsChain(Chain[StatisticsReads]):
    """The gateway's `StatisticsReads`: tickers and k-lines."""

    async def ticker(self, market: str) -> Ticker:
        return await self._read(lambda m: m.ticker(market))

    async def tickers(self, markets: Sequence[str]) -> list[Ticker]:
        """One read: every ticker from the same model."""
        return await self._read(lambda m: m.tickers(markets))

    async def klines(
        self, market: str, period: Period, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[Candle]:
        return await self._read(lambda m: m.klines(market, period, start_ms, end_ms, limit))


# ---------------------------------------------------------------------- positions of each kind


def stream_positions(js: JetStreamContext, namespace: str) -> Callable[[], Awaitable[Positions]]:
    """The streams' last sequences, two JetStream stream infos (cheap: no message is read)."""

    async def sample() -> Positions:
        events = await js.stream_info(EVENTS.name(namespace))
        accounts = await js.stream_info(ACCOUNTS.name(namespace))
        return Positions(events.state.last_seq, accounts.state.last_seq)

    return sample


def sql_positions(engine: AsyncEngine, namespace: str) -> Callable[[], Awaitable[Positions | None]]:
    """Persistence's watermarks (`applied_positions`, shard `*`) of both streams, 0 for a stream
    it has applied nothing of; None without any (nothing applied yet, or tables being rebuilt)."""
    file = sqlite_file(engine.url)
    names = {EVENTS.name(namespace): "events", ACCOUNTS.name(namespace): "accounts"}
    query = select(applied_positions.c.stream, applied_positions.c.stream_seq).where(
        applied_positions.c.shard == WATERMARK, applied_positions.c.stream.in_(sorted(names))
    )

    async def read() -> Positions | None:
        if file is not None and not file.exists():
            return None  # connecting would create an empty file
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found: dict[str, int] = {}
        for stream, seq in rows:
            kind = names[stream]
            found[kind] = min(found.get(kind, seq), seq)
        if not found:
            return None
        return Positions(found.get("events", 0), found.get("accounts", 0))

    return read


def query_positions(client: QueryClient) -> Callable[[], Awaitable[Positions | None]]:
    """What one instance of the query service has applied (its `ready` endpoint)."""

    async def read() -> Positions | None:
        ready = await client.ready()
        return Positions(ready.events_seq, ready.accounts_seq)

    return read


def statistics_positions(
    client: StatisticsClient, markets: Sequence[str]
) -> Callable[[], Awaitable[Positions | None]]:
    """What the statistics service has applied: the least watermark of the instances of
    `markets`' groups (their `position` endpoints; one per group, each a durable consumer of its
    own), so one group behind makes the service behind. It follows EVENTS only: ACCOUNTS is
    `NOT_FOLLOWED`, so it is never behind there."""

    async def read() -> Positions | None:
        positions = await client.positions(markets)
        return Positions(min((p.events_seq for p in positions), default=0), NOT_FOLLOWED)

    return read


# ---------------------------------------------------------------------- HTTP


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SOURCE_HEADER = b"bourse-read-source"
STALE_HEADER = b"bourse-read-stale"


class ReadHeaders:
    """ASGI wrapper: a `ReadNote` per HTTP request, written by the chain, and its facts as
    response headers (`Bourse-Read-Source`, `Bourse-Read-Stale`), so a client and a test see
    which model answered and when an answer may be behind."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        note = ReadNote()
        token = READ_NOTE.set(note)

        async def send_noted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and note.source is not None:
                headers = list(message.get("headers", ()))
                headers.append((SOURCE_HEADER, note.source.encode()))
                if note.stale:
                    lag = "unknown" if note.lag_s is None else f"{note.lag_s:.2f}"
                    headers.append((STALE_HEADER, lag.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_noted)
        finally:
            READ_NOTE.reset(token)

"""The Redis read model: what the `cache` service writes and the gateway reads first.

Keys, all under `<namespace>:` (the `RedisKeys` below are the one place that names them):

- `order:<id>` (string): the order's `OrderView`, msgpack;
- `member:<id>:orders`, `member:<id>:open` (sorted sets): the member's order ids, all and open;
  every score is 0 and the member is the id zero-padded to 20 digits, so the lexicographic order
  is the numeric one (ids pass 2**53: a float score would round them);
- `member:<id>:balances` (hash): currency -> msgpack `[available, locked]`;
- `member:<id>:trades` (list): the member's recent `MemberTrade`s, newest first, capped;
- `market:<m>:bids`, `market:<m>:asks` (hashes): price -> amount of the open GTC limit orders;
- `market:<m>` (hash): `last_price`; `time_ms`, the market's newest event time (ms: the
  largest of its trades' engine times and its batches' `received_at`, as `CandleBook.time_ms`);
  `first_ms`, the open time of its first 1m candle (every period's first candle opens at the
  interval holding it);
- `market:<m>:trades` (list): the market's recent `PublicTrade`s, newest first, capped;
- `market:<m>:candles:<period>` (sorted set, one per `Period`): the candles with trades, each
  a msgpack array `[open_time, open, high, low, close, volume, quote_volume, trades]` scored by
  its open time (ms < 2**53: exact as a score); the newest `CANDLES_KEPT[period]` are kept;
- `positions` (hash): `events:<market>` / `accounts:<shard>` -> the envelope seq last applied,
  `events:*` / `accounts:*` -> the stream watermark, and `ready` once caught up.

`RedisReadModel` answers with the same methods and types as `QueryClient`, and raises
`QueryFailed(503, "unavailable")` when Redis cannot be reached (a `RedisError`, an `OSError`, or
the `RuntimeError` uvloop raises for a reset connection) and `QueryFailed(503, "not_ready")`
while the cache is cold (no `ready` position: never filled, or rebuilding after Redis lost its
data). A read `bourse.application.read_queries` refuses (a limit out of 1..1000; for orders an
unknown state, a before_id that is no order id) raises its 400 before Redis is asked; this model
knows no markets, and finds nothing in an unknown one. `positions()` is its watermark for the
gateway's read chain (`bourse.adapters.read_chain`), and `read_client` the gateway's client:
short timeouts, no retry, a bounded pool.
`FallbackReadModel` tries one read model and asks another on a 503 or any other failure.

Statistics (`bourse.application.ports.StatisticsReads`): `ticker()` is
`RollingTicker.from_minutes` over the market's newest 1440 1m candles, its `time_ms`, last
price, best levels and events position, read in one round trip; `klines()` pages by
`page_bounds` from the market's first candle (`first_ms`) and gap-fills by `fill_gaps`, in two
round trips (the market's times and the oldest candle held, then the page and the candle before
it). A page that reaches the candles trimmed away (the page's first interval at or before the
oldest candle still held, when older ones existed) is not answered as if complete: it raises
`QueryFailed(503, "not_held")`, which the read chain passes to the next model (SQL keeps every
candle), and which does not count against Redis in the chain's circuit breaker (only
`unavailable` does).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from operator import methodcaller
from typing import Any, Final, TypeVar

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from bourse.adapters.read_chain import Positions
from bourse.application.ports import QueryFailed, ReadModel
from bourse.application.read_queries import (
    check_depth_query,
    check_klines_query,
    check_member_trades_query,
    check_orders_query,
    check_trades_query,
)
from bourse.contracts.subjects import ACCOUNTS, EVENTS
from bourse.domain.candles import Candle, CandleRow, Period, candle_row, fill_gaps, page_bounds
from bourse.domain.order_views import (
    BalanceView,
    DepthView,
    MemberTrade,
    OrderView,
    PublicTrade,
)
from bourse.domain.orders import OrderStatus
from bourse.domain.tickers import WINDOW_MINUTES, RollingTicker, Ticker
from bourse.domain.values import Amount, Price

T = TypeVar("T")

READY = "ready"
ORDERS_PAGE = 200
"""Ids read per round trip while filtering a member's orders."""

ORDER_ENCODER = msgspec.msgpack.Encoder()
ORDER_DECODER = msgspec.msgpack.Decoder(OrderView)
PUBLIC_TRADE_DECODER = msgspec.msgpack.Decoder(PublicTrade)
MEMBER_TRADE_DECODER = msgspec.msgpack.Decoder(MemberTrade)
BALANCE_DECODER = msgspec.msgpack.Decoder(tuple[int, int])

CANDLE_DECODER = msgspec.msgpack.Decoder(CandleRow)
"""A candle as stored: `bourse.domain.candles.candle_row`, its fields in order."""

CANDLES_KEPT: Final[Mapping[Period, int]] = {
    Period.M1: 2880,
    Period.M5: 2016,
    Period.M15: 1344,
    Period.M30: 1440,
    Period.H1: 1440,
    Period.H4: 1080,
    Period.D1: 1100,
    Period.W1: 1100,
}
"""Candles with trades kept per period (the newest). Each is more than a page can span (1000
intervals) plus the candle before it, so the newest page is always answered from Redis; 1m
keeps two days of busy minutes (the ticker's window is 1440 minutes); 5m a week, 15m two weeks,
30m and 1h a month and two, 4h six months, 1d and 1w three years and twenty. Older pages come
from SQL (`not_held`)."""
NOT_HELD: Final = "not_held"
TIME_MS: Final = "time_ms"
FIRST_MS: Final = "first_ms"
LAST_PRICE: Final = "last_price"


def candle_bytes(candle: Candle) -> bytes:
    """A candle as its sorted set member (see `CandleRow`)."""
    return ORDER_ENCODER.encode(candle_row(candle))


def candle_of(raw: bytes) -> Candle:
    return Candle(*CANDLE_DECODER.decode(raw))


def id_member(order_id: int) -> str:
    """An order id as a sorted set member: 20 digits, so lexicographic = numeric order."""
    return f"{order_id:020d}"


class RedisKeys:
    def __init__(self, namespace: str) -> None:
        self.prefix = f"{namespace}:"
        self.positions = f"{namespace}:positions"

    def order(self, order_id: int) -> str:
        return f"{self.prefix}order:{order_id}"

    def member_orders(self, member_id: int) -> str:
        return f"{self.prefix}member:{member_id}:orders"

    def member_open(self, member_id: int) -> str:
        return f"{self.prefix}member:{member_id}:open"

    def balances(self, member_id: int) -> str:
        return f"{self.prefix}member:{member_id}:balances"

    def member_trades(self, member_id: int) -> str:
        return f"{self.prefix}member:{member_id}:trades"

    def market(self, market: str) -> str:
        return f"{self.prefix}market:{market}"

    def levels(self, market: str, bid: bool) -> str:
        return f"{self.prefix}market:{market}:{'bids' if bid else 'asks'}"

    def trades(self, market: str) -> str:
        return f"{self.prefix}market:{market}:trades"

    def candles(self, market: str, period: Period) -> str:
        return f"{self.prefix}market:{market}:candles:{period.value}"


class RedisReadModel:
    """Reads of the cache service's Redis keys; see the module docstring."""

    def __init__(self, redis: Redis, namespace: str) -> None:
        self.redis = redis
        self.keys = RedisKeys(namespace)

    async def _read(self, *commands: Callable[[Any], Any]) -> list[Any]:
        """One round trip: the readiness flag, then the commands' replies."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hget(self.keys.positions, READY)
                for command in commands:
                    command(pipe)
                replies: list[Any] = await pipe.execute()
        except (RedisError, OSError, RuntimeError) as exc:  # uvloop: RuntimeError on a reset transport
            raise QueryFailed(503, "unavailable", f"redis: {type(exc).__name__}: {exc}") from None
        if replies[0] is None:
            raise QueryFailed(503, "not_ready", "the cache has not caught up with the streams")
        return replies[1:]

    async def positions(self) -> Positions | None:
        """The cache's stream watermarks (0 for a stream it has applied nothing of); None while it
        is not `ready` (empty, or rebuilding after Redis lost its data)."""
        events, accounts, ready = await self.redis.hmget(
            self.keys.positions, [f"{EVENTS.kind}:*", f"{ACCOUNTS.kind}:*", READY]
        )
        if ready is None:
            return None
        return Positions(int(events or 0), int(accounts or 0))

    async def order(self, member_id: int, order_id: int) -> OrderView:
        (raw,) = await self._read(lambda p: p.get(self.keys.order(order_id)))
        view = None if raw is None else ORDER_DECODER.decode(raw)
        if view is None or view.member_id != member_id:
            raise QueryFailed(404, "order_not_found", f"no order {order_id}")
        return view

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
        statuses = check_orders_query(
            member_id, market=market, state=state, status=status, limit=limit, before_id=before_id
        ).statuses
        open_only = statuses is not None and statuses <= {OrderStatus.SUBMITTED, OrderStatus.PARTIALLY_FILLED}
        index = (self.keys.member_open if open_only else self.keys.member_orders)(member_id)
        upper = "+" if before_id is None else f"({id_member(before_id)}"
        found: list[OrderView] = []
        while len(found) < limit:
            (ids,) = await self._read(
                methodcaller("zrevrangebylex", index, upper, "-", start=0, num=ORDERS_PAGE)
            )
            if not ids:
                break
            (raws,) = await self._read(methodcaller("mget", [self.keys.order(int(i)) for i in ids]))
            for raw in raws:
                if raw is None:
                    continue
                view = ORDER_DECODER.decode(raw)
                if market is not None and view.market != market:
                    continue
                if statuses is not None and view.status not in statuses:
                    continue
                found.append(view)
                if len(found) == limit:
                    break
            if len(ids) < ORDERS_PAGE:
                break
            last = ids[-1].decode() if isinstance(ids[-1], bytes) else str(ids[-1])
            upper = f"({last}"
        return found

    async def balances(self, member_id: int) -> list[BalanceView]:
        (raw,) = await self._read(lambda p: p.hgetall(self.keys.balances(member_id)))
        balances = []
        for currency in sorted(raw):
            available, locked = BALANCE_DECODER.decode(raw[currency])
            balances.append(BalanceView(_text(currency), available, locked))
        return balances

    async def depth(self, market: str, limit: int = 50) -> DepthView:
        check_depth_query(market, limit=limit)
        keys = self.keys
        bids, asks, last_price, seq = await self._read(
            lambda p: p.hgetall(keys.levels(market, True)),
            lambda p: p.hgetall(keys.levels(market, False)),
            lambda p: p.hget(keys.market(market), LAST_PRICE),
            lambda p: p.hget(keys.positions, f"events:{market}"),
        )
        return DepthView(
            market,
            _levels(bids, reverse=True, limit=limit),
            _levels(asks, reverse=False, limit=limit),
            None if last_price is None else Price(int(last_price)),
            0 if seq is None else int(seq),
        )

    async def trades(self, market: str, limit: int = 100) -> list[PublicTrade]:
        check_trades_query(market, limit=limit)
        (raws,) = await self._read(lambda p: p.lrange(self.keys.trades(market), 0, limit - 1))
        return [PUBLIC_TRADE_DECODER.decode(raw) for raw in raws]

    async def member_trades(
        self, member_id: int, market: str | None = None, limit: int = 100
    ) -> list[MemberTrade]:
        check_member_trades_query(market=market, limit=limit)
        (raws,) = await self._read(lambda p: p.lrange(self.keys.member_trades(member_id), 0, -1))
        found: list[MemberTrade] = []
        for raw in raws:
            trade = MEMBER_TRADE_DECODER.decode(raw)
            if market is None or trade.market == market:
                found.append(trade)
                if len(found) == limit:
                    break
        return found

    # ------------------------------------------------------------------ statistics

    async def ticker(self, market: str) -> Ticker:
        return (await self.tickers([market]))[0]

    async def tickers(self, markets: Sequence[str]) -> list[Ticker]:
        """One round trip for all of `markets`: per market its times and last price, its events
        position, both sides of its depth and its newest 1440 1m candles (the window's minutes
        are among them; `from_minutes` leaves out the older ones)."""
        commands: list[Callable[[Any], Any]] = []
        for market in markets:
            commands += self._ticker_reads(market)
        replies = await self._read(*commands)
        found: list[Ticker] = []
        for i, market in enumerate(markets):
            (time_ms, last), seq, bids, asks, minutes = replies[5 * i : 5 * i + 5]
            found.append(
                RollingTicker.from_minutes(
                    market,
                    seq=0 if seq is None else int(seq),
                    time_ms=0 if time_ms is None else int(time_ms),
                    last=None if last is None else Price(int(last)),
                    best_bid=max((Price(int(price)) for price in bids), default=None),
                    best_ask=min((Price(int(price)) for price in asks), default=None),
                    minutes=[candle_of(raw) for raw in minutes],
                ).ticker()
            )
        return found

    def _ticker_reads(self, market: str) -> list[Callable[[Any], Any]]:
        keys = self.keys
        return [
            methodcaller("hmget", keys.market(market), [TIME_MS, LAST_PRICE]),
            methodcaller("hget", keys.positions, f"{EVENTS.kind}:{market}"),
            methodcaller("hkeys", keys.levels(market, True)),
            methodcaller("hkeys", keys.levels(market, False)),
            methodcaller("zrange", keys.candles(market, Period.M1), -WINDOW_MINUTES, -1),
        ]

    async def klines(
        self, market: str, period: Period, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[Candle]:
        """The page `page_bounds` gives from the market's first candle, gap-filled; 503
        `not_held` when it reaches candles trimmed away (see the module docstring)."""
        check_klines_query(market, period=period.value, start=start_ms, end=end_ms, limit=limit)
        key = self.keys.candles(market, period)
        (time_ms, first_ms), oldest = await self._read(
            lambda p: p.hmget(self.keys.market(market), [TIME_MS, FIRST_MS]),
            lambda p: p.zrange(key, 0, 0),
        )
        if time_ms is None or not oldest:
            return []
        held_from = candle_of(oldest[0]).open_time
        # no first_ms: filled from a stream that lost its first messages, older candles may
        # exist (in SQL), so the cache answers as if it had trimmed them
        first_open = held_from - period.length_ms if first_ms is None else period.open_time(int(first_ms))
        bounds = page_bounds(period, first_open, int(time_ms), start_ms, end_ms, limit)
        if bounds is None:
            return []
        lo, hi = bounds
        if held_from > first_open and lo <= held_from:
            raise _not_held(market, period, lo, held_from)
        inside, before = await self._read(
            lambda p: p.zrangebyscore(key, lo, hi),
            lambda p: p.zrevrangebyscore(key, f"({lo}", "-inf", start=0, num=1),
        )
        previous = candle_of(before[0]) if before else None
        if previous is None and lo > first_open:
            # trimmed between the two reads: the candle before the page is gone
            raise _not_held(market, period, lo, held_from)
        return fill_gaps(period, lo, hi, [candle_of(raw) for raw in inside], previous)


def _not_held(market: str, period: Period, lo: int, held_from: int) -> QueryFailed:
    return QueryFailed(
        503,
        NOT_HELD,
        f"the cache holds {market} {period.value} candles from open time {held_from} on, "
        f"not the page from {lo}: older candles are in SQL",
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _levels(raw: dict[Any, Any], *, reverse: bool, limit: int) -> list[tuple[Price, Amount]]:
    levels = sorted(
        ((Price(int(price)), Amount(int(amount))) for price, amount in raw.items()), reverse=reverse
    )
    return levels[:limit]


class FallbackReadModel:
    """`primary` first; on a 503 (unreachable, not ready) or any other failure of `primary` (a
    cache fault is never the client's error) the same read from `fallback`. The gateway uses
    `bourse.adapters.read_chain.ReadChain`, which also judges freshness; this is the plain pair."""

    def __init__(self, primary: ReadModel, fallback: ReadModel) -> None:
        self.primary = primary
        self.fallback = fallback
        self.fallbacks = 0

    async def _either(self, first: Callable[[], Awaitable[T]], second: Callable[[], Awaitable[T]]) -> T:
        try:
            return await first()
        except QueryFailed as exc:
            if exc.status != 503:
                raise
        except Exception:  # any fault of the primary: ask the fallback
            pass
        self.fallbacks += 1
        return await second()

    async def order(self, member_id: int, order_id: int) -> OrderView:
        return await self._either(
            lambda: self.primary.order(member_id, order_id), lambda: self.fallback.order(member_id, order_id)
        )

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
        def ask(model: ReadModel) -> Callable[[], Awaitable[list[OrderView]]]:
            return lambda: model.orders(
                member_id, market=market, state=state, status=status, limit=limit, before_id=before_id
            )

        return await self._either(ask(self.primary), ask(self.fallback))

    async def balances(self, member_id: int) -> list[BalanceView]:
        return await self._either(
            lambda: self.primary.balances(member_id), lambda: self.fallback.balances(member_id)
        )

    async def depth(self, market: str, limit: int = 50) -> DepthView:
        return await self._either(
            lambda: self.primary.depth(market, limit), lambda: self.fallback.depth(market, limit)
        )

    async def trades(self, market: str, limit: int = 100) -> list[PublicTrade]:
        return await self._either(
            lambda: self.primary.trades(market, limit), lambda: self.fallback.trades(market, limit)
        )

    async def member_trades(
        self, member_id: int, market: str | None = None, limit: int = 100
    ) -> list[MemberTrade]:
        return await self._either(
            lambda: self.primary.member_trades(member_id, market, limit),
            lambda: self.fallback.member_trades(member_id, market, limit),
        )


def redis_client(url: str) -> Redis:
    """A client that fails fast when Redis is away (the caller falls back or retries)."""
    client: Redis = Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2.0)
    return client


def read_client(url: str, *, timeout_s: float, max_connections: int) -> Redis:
    """The gateway's client for reads: each connect, command and wait for a pooled connection is
    bounded by `timeout_s`, nothing is retried (the read chain asks the next model instead), and
    at most `max_connections` are open: a black-holed Redis cannot make the pool grow without end
    (unbounded, it grew from 12 to 738 connections in 30 s)."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    client: Redis = Redis.from_pool(pool)
    return client

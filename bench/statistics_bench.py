"""Statistics fold benchmark: k-lines, the 24-hour ticker and depth, on one core.

Run: `.venv/bin/python bench/statistics_bench.py` (`--help` for options).

What it does:
1. replays `--trades` synthetic trades (default 1,000,000; a seeded random walk of prices and
   amounts, 0..500 ms apart, so the stream spans days: minutes, hours, days and the window turn
   all the time) through `CandleBook.apply` (every period) and `RollingTicker.apply`, in EVENTS
   batches of 1..4 trades, as the service will; also each fold alone. The trades are made in
   chunks outside the timed spans; the fold is timed (wall clock and this process's CPU time).
2. runs the exchange-core mix of `workload.py` (`--commands`, default 300,000: GTC, IOC,
   cancels and moves, ~6% of commands trade) through a matching engine, untimed, one batch per
   command (2 ms apart), then times `DepthBook.apply` alone and the whole per-batch work of a
   service (depth, candles, ticker, best bid and ask, and the changed candles of every batch)
   over those batches.
Every figure is the median of `--repeats` runs. Target: 50,000 trades/s or more through
candles + ticker.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bourse.application.market_statistics import MarketStatistics
from bourse.contracts.messages import EventBatch, encode
from bourse.domain.candles import CandleBook
from bourse.domain.depth_book import DepthBook
from bourse.domain.matching import MatchingEngine
from bourse.domain.orders import EngineEvent, Side, Trade
from bourse.domain.tickers import RollingTicker
from bourse.domain.values import Amount, MemberId, OrderId, Price, TradeId
from workload import bench_market, generate

Batch = tuple[int, int, list[EngineEvent]]
"""(seq, received_at in ns, events): what the service takes out of an `EventBatch`."""

SYMBOL = "BTC-USD"
START_NS = 1_709_856_000_000_000_000
"""2024-03-08 00:00 UTC, a Friday: the synthetic stream crosses a week boundary."""
CHUNK = 100_000


TTY = sys.stderr.isatty()


def progress(message: str) -> None:
    """A progress line (stderr, so the report stays clean): rewritten in place on a terminal."""
    if TTY:
        print(f"\r  {message:<72}", end="", flush=True, file=sys.stderr)
    else:
        print(f"  {message}", file=sys.stderr, flush=True)


def done() -> None:
    if TTY:
        print("\r" + " " * 76 + "\r", end="", flush=True, file=sys.stderr)


class Span:
    """Wall-clock and process CPU time accumulated over several timed blocks."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self) -> Span:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


@dataclass
class Result:
    name: str
    items: int
    """Trades (or batches) per repeat: what the rates count."""
    unit: str
    walls: list[float]
    cpus: list[float]

    def rate(self) -> float:
        """Per wall-clock second (other load on the box lowers it; the CPU figure is immune)."""
        return self.items / statistics.median(self.walls)

    def cpu_us(self) -> float:
        return statistics.median(self.cpus) / self.items * 1e6


# --------------------------------------------------------------------------- synthetic trades


def synthetic_chunks(n: int, seed: int) -> Iterator[list[Batch]]:
    """`n` trades in batches of 1..4, `CHUNK` trades at a time; the same seed, the same trades."""
    rng = random.Random(seed)
    market = bench_market(SYMBOL)
    price = 6_000_000  # 60,000.00
    ts = START_NS
    seq = 0
    trade_id = 0
    made = 0
    while made < n:
        chunk: list[Batch] = []
        target = min(n, made + CHUNK)
        while made < target:
            events: list[EngineEvent] = []
            for _ in range(min(rng.randint(1, 4), target - made)):
                price = max(1, price + rng.randint(-300, 300))
                amount = rng.randint(1, 20_000)
                trade_id += 1
                events.append(
                    Trade(
                        trade_id=TradeId(trade_id),
                        market=SYMBOL,
                        price=Price(price),
                        amount=Amount(amount),
                        funds=market.funds(Price(price), Amount(amount)),
                        maker_order_id=OrderId(2 * trade_id),
                        maker_member_id=MemberId(rng.randint(1, 1000)),
                        taker_order_id=OrderId(2 * trade_id + 1),
                        taker_member_id=MemberId(rng.randint(1, 1000)),
                        taker_side=Side.BUY if rng.random() < 0.5 else Side.SELL,
                        ts=ts,
                    )
                )
                made += 1
            seq += 1
            chunk.append((seq, ts, events))
            ts += rng.randint(0, 500) * 1_000_000
        yield chunk


Fold = Callable[[list[Batch]], None]


def candles_fold() -> Fold:
    book = CandleBook(SYMBOL)
    apply = book.apply

    def fold(batches: list[Batch]) -> None:
        for seq, received_at, events in batches:
            apply(seq, received_at, events)

    return fold


def ticker_fold() -> Fold:
    ticker = RollingTicker(SYMBOL)
    apply = ticker.apply

    def fold(batches: list[Batch]) -> None:
        for seq, received_at, events in batches:
            apply(seq, received_at, events)

    return fold


def both_fold(changes_every: int = 0) -> Callable[[], Fold]:
    """Candles and ticker of each batch; with `changes_every`, `CandleBook.changes()` once per
    that many batches (what a publisher or a store asks)."""

    def make() -> Fold:
        book = CandleBook(SYMBOL)
        ticker = RollingTicker(SYMBOL)
        candles = book.apply
        window = ticker.apply
        changes = book.changes

        def fold(batches: list[Batch]) -> None:
            if not changes_every:
                for seq, received_at, events in batches:
                    candles(seq, received_at, events)
                    window(seq, received_at, events)
                return
            for seq, received_at, events in batches:
                candles(seq, received_at, events)
                window(seq, received_at, events)
                if not seq % changes_every:
                    changes()

        return fold

    return make


def time_synthetic(name: str, make: Callable[[], Fold], n: int, seed: int, repeats: int) -> Result:
    walls: list[float] = []
    cpus: list[float] = []
    for r in range(repeats):
        fold = make()
        span = Span()
        for k, chunk in enumerate(synthetic_chunks(n, seed)):
            progress(f"{name}: repeat {r + 1}/{repeats}, {k * CHUNK:,} of {n:,} trades")
            gc.collect()
            with span:
                fold(chunk)
            del chunk
        walls.append(span.wall)
        cpus.append(span.cpu)
    done()
    return Result(name, n, "trades", walls, cpus)


# --------------------------------------------------------------------------- an engine stream


def engine_batches(n_commands: int, seed: int) -> tuple[list[Batch], list[Batch], int]:
    """The exchange-core mix run through an engine: (prefill batches, timed batches, trades)."""
    progress(f"generating {n_commands:,} commands of the exchange-core mix")
    workload = generate(n_commands, seed=seed, on_progress=lambda f: progress(f"generating the mix: {f:.0%}"))
    engine = MatchingEngine(workload.market)
    prefill: list[Batch] = []
    timed: list[Batch] = []
    trades = 0
    ts = START_NS
    for out, commands in ((prefill, workload.prefill), (timed, workload.commands)):
        for command, _ in commands:
            ts += 2_000_000  # 2 ms apart: the minutes turn, as in a busy market
            events = engine.process(command, ts)
            if out is timed:
                trades += sum(1 for e in events if type(e) is Trade)
            out.append((len(prefill) + len(timed) + 1, ts, events))
    done()
    return prefill, timed, trades


def time_engine_stream(
    name: str, prefill: list[Batch], timed: list[Batch], repeats: int, *, full: bool
) -> Result:
    walls: list[float] = []
    cpus: list[float] = []
    symbol = bench_market(SYMBOL).symbol
    for r in range(repeats):
        progress(f"{name}: repeat {r + 1}/{repeats}")
        depth = DepthBook(symbol)
        book = CandleBook(symbol)
        ticker = RollingTicker(symbol)
        for seq, received_at, events in prefill:
            depth.apply(seq, events)
            book.apply(seq, received_at, events)
            ticker.apply(seq, received_at, events)
        gc.collect()
        span = Span()
        depth_apply = depth.apply
        if full:
            candles = book.apply
            window = ticker.apply
            set_best = ticker.set_best
            best_bid = depth.best_bid
            best_ask = depth.best_ask
            changes = book.changes
            with span:
                for seq, received_at, events in timed:
                    if depth_apply(seq, events):
                        set_best(best_bid(), best_ask())
                    candles(seq, received_at, events)
                    window(seq, received_at, events)
                    changes()
        else:
            with span:
                for seq, _, events in timed:
                    depth_apply(seq, events)
        walls.append(span.wall)
        cpus.append(span.cpu)
    done()
    return Result(name, len(timed), "batches", walls, cpus)


def time_service_aggregate(
    prefill: list[Batch], timed: list[Batch], repeats: int, *, drain_every: int
) -> Result:
    """The statistics service's own work per batch: `MarketStatistics.apply` (the three folds),
    then every `drain_every` batches `drain()` (the update messages) and their msgpack encoding,
    as the service does per fetched group (NATS publishing itself not included)."""
    name = f"service aggregate, drained every {drain_every}"
    walls: list[float] = []
    cpus: list[float] = []
    symbol = bench_market(SYMBOL).symbol
    prefill_batches = [EventBatch(symbol, seq, at, events) for seq, at, events in prefill]
    timed_batches = [EventBatch(symbol, seq, at, events) for seq, at, events in timed]
    for r in range(repeats):
        progress(f"{name}: repeat {r + 1}/{repeats}")
        stats = MarketStatistics(symbol)
        for batch in prefill_batches:
            stats.apply(batch)
        stats.drain()
        gc.collect()
        span = Span()
        apply, drain = stats.apply, stats.drain
        with span:
            for i, batch in enumerate(timed_batches, start=1):
                apply(batch)
                if i % drain_every == 0:
                    updates = drain()
                    for message in (updates.depth, updates.trades, updates.ticker, *updates.klines):
                        if message is not None:
                            encode(message)
        walls.append(span.wall)
        cpus.append(span.cpu)
    done()
    return Result(name, len(timed), "batches", walls, cpus)


# --------------------------------------------------------------------------- report


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([fmt(headers), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trades", type=int, default=1_000_000, help="synthetic trades (default 1,000,000)")
    parser.add_argument("--commands", type=int, default=300_000, help="engine commands (default 300,000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-engine", action="store_true", help="skip the engine stream (depth)")
    args = parser.parse_args(argv)

    print("bourse statistics fold benchmark (k-lines, 24h ticker, depth), one core")
    print(f"python {platform.python_version()} ({platform.python_implementation()}), {platform.machine()}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average before the run: {load} ({os.cpu_count()} cpus)")
    print(f"median of {args.repeats} repeats; CPU = this process's CPU time in the timed spans\n")

    results = [
        time_synthetic("candles + ticker", both_fold(), args.trades, args.seed, args.repeats),
        time_synthetic("candles (8 periods)", candles_fold, args.trades, args.seed, args.repeats),
        time_synthetic("ticker (24h window)", ticker_fold, args.trades, args.seed, args.repeats),
        time_synthetic(
            "candles + ticker, changes() per batch", both_fold(1), args.trades, args.seed, args.repeats
        ),
        time_synthetic(
            "candles + ticker, changes() per 100 batches",
            both_fold(100),
            args.trades,
            args.seed,
            args.repeats,
        ),
    ]
    rows = [
        [
            r.name,
            f"{r.items:,}",
            f"{r.rate():,.0f}",
            f"{1e6 / r.cpu_us():,.0f}",
            f"{min(r.walls):.2f} .. {max(r.walls):.2f}",
            f"{r.cpu_us():.2f}",
        ]
        for r in results
    ]
    print(f"synthetic trades, EVENTS batches of 1..4 trades (seed {args.seed})")
    print(table(["fold", "trades", "trades/s", "trades/CPU s", "wall s (min .. max)", "CPU us/trade"], rows))
    wall_rate, cpu_rate = results[0].rate(), 1e6 / results[0].cpu_us()
    verdict = "meets" if min(wall_rate, cpu_rate) >= 50_000 else "misses"
    print(
        f"\ncandles + ticker: {wall_rate:,.0f} trades/s by the wall clock, {cpu_rate:,.0f} per CPU second:"
        f" {verdict} the target of 50,000 trades/s\n"
    )

    if not args.no_engine:
        prefill, timed, trades = engine_batches(args.commands, args.seed)
        stream = [
            time_engine_stream("depth", prefill, timed, args.repeats, full=False),
            time_engine_stream(
                "depth + candles + ticker + changes()", prefill, timed, args.repeats, full=True
            ),
            time_service_aggregate(prefill, timed, args.repeats, drain_every=1),
            time_service_aggregate(prefill, timed, args.repeats, drain_every=16),
        ]
        rows = [
            [
                r.name,
                f"{r.items:,}",
                f"{r.rate():,.0f}",
                f"{r.cpu_us():.2f}",
                f"{statistics.median(r.cpus) / trades * 1e6:.2f}",
            ]
            for r in stream
        ]
        print(
            f"exchange-core mix through the engine: {len(timed):,} batches (one command each), "
            f"{trades:,} trades"
        )
        print(table(["fold", "batches", "batches/s", "CPU us/batch", "CPU us/trade"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

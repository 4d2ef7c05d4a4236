"""Matching engine benchmark: the exchange-core mix through our engine and through a peer library.

Run: `.venv/bin/python bench/engine_bench.py` (`--help` for options).

What it does, in one run:
1. generates the exchange-core mix deterministically from a seed (see `workload.py`):
   9% GTC, 3% IOC, 6% cancels, 82% moves, ~1000 live orders over ~750 levels, 1000 accounts;
2. times `MatchingEngine.process()` over the stream (full event objects, as a service gets
   them) for one market, for ten markets fed round-robin, and for one market whose events are
   also encoded to msgpack (what a service does before it publishes them); several repeats,
   the median is the figure;
3. measures per-call latency in a separate pass (one `perf_counter_ns` pair per call, whose own
   cost is measured and printed; the throughput passes carry no timer);
4. runs the same stream through the peer library fastlob (pure Python, PyPI), which has no
   amend and no IOC: a move is a cancel plus a new order there, an IOC a limit order whose
   resting remainder is cancelled at once. The peer gets the first `--peer-ops` commands of the
   same stream, since it is much slower;
5. prints a table and the ratio.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata

import msgspec

from bourse.domain.matching import MatchingEngine
from bourse.domain.orders import AmendOrder, CancelOrder, EngineCommand
from workload import MixConfig, PeerOp, Workload, bench_market, generate

Stream = Sequence[tuple[EngineCommand, int]]


@dataclass
class Result:
    name: str
    ops: int
    rates: list[float]
    """wall-clock ops/s of each repeat"""
    cpu: list[float]
    """CPU seconds of this process per op, each repeat (unaffected by other load on the box)"""
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


class Span:
    """Accumulates wall-clock and process CPU time over several timed blocks."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self) -> Span:
        self._w = time.perf_counter()
        self._c = time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


TTY = sys.stderr.isatty()


def progress(message: str) -> None:
    """A progress line rewritten in place on a terminal (stderr, so the report stays clean)."""
    if TTY:
        print(f"\r  {message:<70}", end="", flush=True, file=sys.stderr)


def phase(message: str) -> None:
    """One line per phase when stderr is not a terminal (logs, CI)."""
    if not TTY:
        print(f"  {message} ...", file=sys.stderr, flush=True)


def done() -> None:
    if TTY:
        print("\r" + " " * 74 + "\r", end="", flush=True, file=sys.stderr)


def chunks(n: int, parts: int = 10) -> list[tuple[int, int]]:
    step = max(1, -(-n // parts))
    return [(i, min(i + step, n)) for i in range(0, n, step)]


# --------------------------------------------------------------------------- our engine


def time_bourse(
    label: str,
    workloads: list[Workload],
    stream: Stream,
    repeats: int,
    encode: bool = False,
) -> Result:
    """Feed `stream` (commands of all workloads' markets, interleaved) to one engine per market."""
    rates: list[float] = []
    cpu: list[float] = []
    encoder = msgspec.msgpack.Encoder()
    phase(f"timing {label}")
    for r in range(repeats):
        engines = {w.market.symbol: MatchingEngine(w.market) for w in workloads}
        for w in workloads:
            engine = engines[w.market.symbol]
            for command, ts in w.prefill:
                engine.process(command, ts)
        gc.collect()
        span = Span()
        parts = chunks(len(stream))
        for k, (lo, hi) in enumerate(parts):
            progress(f"{label}: repeat {r + 1}/{repeats}, {k * 100 // len(parts)}%")
            part = stream[lo:hi]
            if len(engines) == 1:
                process = next(iter(engines.values())).process
                if encode:
                    enc = encoder.encode
                    with span:
                        for command, ts in part:
                            enc(process(command, ts))
                else:
                    with span:
                        for command, ts in part:
                            process(command, ts)
            else:
                by_symbol = {symbol: e.process for symbol, e in engines.items()}
                with span:
                    for command, ts in part:
                        by_symbol[command.market](command, ts)
        rates.append(len(stream) / span.wall)
        cpu.append(span.cpu / len(stream))
    done()
    return Result(label, len(stream), rates, cpu)


def latency_bourse(workload: Workload) -> list[int]:
    engine = MatchingEngine(workload.market)
    for command, ts in workload.prefill:
        engine.process(command, ts)
    process = engine.process
    clock = time.perf_counter_ns
    samples = [0] * len(workload.commands)
    gc.collect()
    phase("bourse: latency pass")
    progress("bourse: latency pass")
    for i, (command, ts) in enumerate(workload.commands):
        t0 = clock()
        process(command, ts)
        samples[i] = clock() - t0
    done()
    return samples


# --------------------------------------------------------------------------- peer: fastlob


class FastlobRunner:
    """Our stream translated for fastlob (https://pypi.org/project/fastlob/)."""

    name = "fastlob"

    def __init__(self) -> None:
        from fastlob import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
            Orderbook,
            OrderParams,
            OrderSide,
            ResultType,
        )

        self.params = OrderParams
        self.bid, self.ask = OrderSide.BID, OrderSide.ASK
        self.resting = (ResultType.LIMIT, ResultType.PARTIAL_MARKET)
        self.book = Orderbook("bench", start=True)
        self.ids: dict[int, str] = {}
        self.misses = 0
        """Cancels and moves of orders the peer no longer has (its book drifts from ours:
        it has no self-trade prevention, and a move there loses priority)."""
        self.run: dict[str, Callable[[PeerOp], None]] = {
            "gtc": self.gtc,
            "ioc": self.ioc,
            "cancel": self.cancel,
            "move": self.move,
        }

    @staticmethod
    def version() -> str:
        return metadata.version("fastlob")

    def close(self) -> None:
        self.book.stop()

    def gtc(self, op: PeerOp) -> None:
        result = self.book.process(self.params(self.bid if op.is_buy else self.ask, op.price, op.amount))
        if result.kind() in self.resting:
            self.ids[op.order_id] = result.orderid()

    def ioc(self, op: PeerOp) -> None:
        result = self.book.process(self.params(self.bid if op.is_buy else self.ask, op.price, op.amount))
        if result.kind() in self.resting:
            self.book.cancel(result.orderid())

    def cancel(self, op: PeerOp) -> None:
        theirs = self.ids.pop(op.order_id, None)
        if theirs is None or not self.book.cancel(theirs).success():
            self.misses += 1

    def move(self, op: PeerOp) -> None:
        theirs = self.ids.pop(op.order_id, None)
        if theirs is None or not self.book.cancel(theirs).success():
            self.misses += 1
        self.gtc(op)


def time_peer(workload: Workload, n_ops: int, repeats: int) -> tuple[Result, list[int], int]:
    logging.disable(logging.CRITICAL)  # fastlob logs every step; make that as cheap as it gets
    ops = workload.peer_ops[:n_ops]
    rates: list[float] = []
    cpu: list[float] = []
    misses = 0
    phase(f"timing fastlob over {len(ops):,} commands")
    for r in range(repeats):
        runner = FastlobRunner()
        for op in workload.peer_prefill:
            runner.run[op.kind](op)
        run = runner.run
        gc.collect()
        span = Span()
        parts = chunks(len(ops))
        for k, (lo, hi) in enumerate(parts):
            progress(f"fastlob: repeat {r + 1}/{repeats}, {k * 100 // len(parts)}%")
            part = ops[lo:hi]
            with span:
                for op in part:
                    run[op.kind](op)
        rates.append(len(ops) / span.wall)
        cpu.append(span.cpu / len(ops))
        misses = runner.misses
        runner.close()
    # latency pass
    runner = FastlobRunner()
    for op in workload.peer_prefill:
        runner.run[op.kind](op)
    clock = time.perf_counter_ns
    samples = [0] * len(ops)
    phase("fastlob: latency pass")
    progress("fastlob: latency pass")
    for i, op in enumerate(ops):
        fn = runner.run[op.kind]
        t0 = clock()
        fn(op)
        samples[i] = clock() - t0
    runner.close()
    done()
    logging.disable(logging.NOTSET)
    name = f"fastlob {FastlobRunner.version()}, 1 market"
    note = "move = cancel + new, IOC = limit + cancel"
    return Result(name, len(ops), rates, cpu, note), samples, misses


# --------------------------------------------------------------------------- report


def percentiles(samples: list[int]) -> dict[str, float]:
    ordered = sorted(samples)
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] / 1000

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p99.9": at(0.999), "max": ordered[-1] / 1000}


def timer_overhead_ns() -> float:
    clock = time.perf_counter_ns
    best = []
    for _ in range(5):
        t0 = clock()
        for _ in range(100_000):
            clock()
        best.append((clock() - t0) / 100_000)
    return min(best)


def table(headers: list[str], rows: list[list[str]], align: str) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if a == "<" else c.rjust(w) for c, w, a in zip(cells, widths, align, strict=True)
        )

    line = "  ".join("-" * w for w in widths)
    return "\n".join(x.rstrip() for x in [fmt(headers), line, *(fmt(r) for r in rows)])


KINDS = ("move", "gtc", "ioc", "cancel")


def command_kind(command: EngineCommand) -> str:
    if isinstance(command, AmendOrder):
        return "move"
    if isinstance(command, CancelOrder):
        return "cancel"
    return command.tif.value


def interleave(workloads: list[Workload]) -> list[tuple[EngineCommand, int]]:
    """Round-robin over the markets, each market's stream in its own order."""
    out: list[tuple[EngineCommand, int]] = []
    longest = max(len(w.commands) for w in workloads)
    for i in range(longest):
        for w in workloads:
            if i < len(w.commands):
                out.append(w.commands[i])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ops", type=int, default=500_000, help="commands per run (default 500,000)")
    parser.add_argument("--seed", type=int, default=1, help="workload seed (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported")
    parser.add_argument("--markets", type=int, default=10, help="markets of the round-robin run (default 10)")
    parser.add_argument(
        "--peer-ops", type=int, default=100_000, help="commands run through the peer (default 100,000)"
    )
    parser.add_argument("--peer-repeats", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true", help="skip the peer library")
    parser.add_argument("--no-gc", action="store_true", help="disable the garbage collector while timing")
    args = parser.parse_args(argv)
    if args.no_gc:
        gc.disable()

    print("bourse matching engine benchmark: the exchange-core mix")
    print(f"python {platform.python_version()} ({platform.python_implementation()}), {platform.machine()}")
    cfg = MixConfig()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average before the run: {load} ({os.cpu_count()} cpus)")
    t0 = time.perf_counter()
    phase("generating the workloads")
    main_load = generate(
        args.ops,
        seed=args.seed,
        config=cfg,
        on_progress=lambda f: progress(f"generating the workload: {f:.0%}"),
    )
    markets = []
    for i in range(args.markets):
        progress(f"generating market {i + 1}/{args.markets}")
        markets.append(
            generate(
                -(-args.ops // args.markets),
                seed=args.seed * 1000 + i,
                config=cfg,
                market=bench_market(f"M{i}-USD"),
            )
        )
    multi = interleave(markets)[: args.ops]
    done()
    print(f"workloads generated in {time.perf_counter() - t0:.1f}s")
    stats = main_load.stats
    kinds: dict[str, int] = {}
    for op in main_load.peer_ops:
        kinds[op.kind] = kinds.get(op.kind, 0) + 1
    mix = ", ".join(f"{kinds.get(k, 0) * 100 / args.ops:.1f}% {k}" for k in ("gtc", "ioc", "cancel", "move"))
    print(
        f"workload: seed {args.seed}, {args.ops:,} commands ({mix});"
        f" live orders ~{stats['avg_live_orders']:.0f}, price levels ~{stats['avg_levels']:.0f},"
        f" {cfg.accounts} accounts,"
        f" commands that trade {stats['trade_ratio'] * 100:.1f}%"
    )
    print(f"timing: median of {args.repeats} repeats, gc {'off' if args.no_gc else 'on'}\n")

    results = [
        time_bourse("bourse, 1 market", [main_load], main_load.commands, args.repeats),
        time_bourse(f"bourse, {args.markets} markets round-robin", markets, multi, args.repeats),
        time_bourse(
            "bourse, 1 market + msgpack encode of events",
            [main_load],
            main_load.commands,
            args.repeats,
            encode=True,
        ),
    ]
    lat: dict[str, list[int]] = {"bourse, 1 market": latency_bourse(main_load)}
    misses = 0
    peer: Result | None = None
    if not args.no_peer:
        try:
            peer, peer_lat, misses = time_peer(main_load, min(args.peer_ops, args.ops), args.peer_repeats)
        except ImportError:
            print("fastlob is not installed (pip install -e '.[dev]'): peer skipped\n")
        else:
            results.append(peer)
            lat[peer.name] = peer_lat

    rows = []
    for res in results:
        rows.append(
            [
                res.name,
                f"{res.ops:,}",
                f"{res.median:,.0f}",
                f"{min(res.rates):,.0f} .. {max(res.rates):,.0f}",
                f"{1e6 / res.median:.2f}",
                f"{statistics.median(res.cpu) * 1e6:.2f}",
                res.note,
            ]
        )
    print(
        table(
            ["engine", "commands", "median ops/s", "min .. max", "us/op", "cpu us/op", "note"],
            rows,
            "<>>>>><",
        )
    )

    overhead = timer_overhead_ns()
    print(f"\nlatency of one command, microseconds (timer overhead ~{overhead:.0f} ns included)")
    lat_rows = []
    ours = lat["bourse, 1 market"]
    by_kind: dict[str, list[int]] = {}
    for (command, _), sample in zip(main_load.commands, ours, strict=True):
        by_kind.setdefault(command_kind(command), []).append(sample)
    groups = list(lat.items())
    groups[1:1] = [(f"  bourse: {kind} only", by_kind[kind]) for kind in KINDS if kind in by_kind]
    for name, samples in groups:
        p = percentiles(samples)
        lat_rows.append(
            [name, f"{len(samples):,}", *(f"{p[k]:.1f}" for k in ("p50", "p90", "p99", "p99.9", "max"))]
        )
    print(table(["engine", "commands", "p50", "p90", "p99", "p99.9", "max"], lat_rows, "<>>>>>>"))

    if peer is not None:
        ours_cpu = statistics.median(results[0].cpu)
        peer_cpu = statistics.median(peer.cpu)
        print(
            f"\nbourse vs fastlob, 1 market, same commands: {peer_cpu / ours_cpu:.1f}x less CPU per command"
            f" ({results[0].median / peer.median:.1f}x by wall-clock medians)"
        )
        print(f"fastlob missed {misses:,} cancels/moves of orders its own book no longer held")
    return 0


if __name__ == "__main__":
    sys.exit(main())

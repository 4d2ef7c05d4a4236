"""The fault suite of issue 10: each scenario injects one fault into the whole system under a
steady order load, then checks what every client was told against the truth.

    .venv/bin/python -m tests.faults.suite                        # every scenario
    .venv/bin/python -m tests.faults.suite --scenarios kill-accounts nats-restart --duration 10
    .venv/bin/python -m tests.faults.suite --report reports/faults.md --list

Per scenario: a fresh system (`tests.faults.system`: a process per service, a private
nats-server, MariaDB, Redis and RabbitMQ behind fault proxies), the load (`tests.faults.load`)
for `--warmup` seconds, the fault for `--duration` seconds (`tests.faults.scenarios`), the load
for `--tail` seconds more, then settle and check (`tests.faults.check`). Progress lines while it
runs; a table per scenario at its end, and all of them at the end (and in `--report`, markdown
for the README's Reliability section). Exit status 1 if any acknowledged order was lost or an
invariant broke (lies and errors are reported, not fatal: see the README).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import nats

from tests.faults.check import Findings, full_check
from tests.faults.load import Load, LoadRecord
from tests.faults.scenarios import CI_SCENARIOS, SCENARIOS, Scenario
from tests.faults.system import FaultSystem


@dataclass
class Options:
    rate: float = 150.0
    members: int = 200
    warmup_s: float = 3.0
    duration_s: float = 15.0
    tail_s: float = 8.0
    seed: int = 1
    keep: bool = False
    progress_s: float = 2.0
    quiet: bool = False


@dataclass
class Result:
    scenario: Scenario
    duration_s: float
    findings: Findings
    record: LoadRecord
    recover_s: float | None
    """From the fault's end to the first order sent after it and answered 201 (over REST) or
    `accepted` (over RabbitMQ), whichever came last."""
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def broken(self) -> list[str]:
        """The core promises: an acknowledged order kept, trades and money right."""
        f = self.findings
        out = []
        if f.lost:
            out.append(f"{sum(f.lost.values())} lost")
        if f.duplicate_trades:
            out.append(f"{f.duplicate_trades} duplicate trades")
        if f.overfilled:
            out.append(f"{f.overfilled} overfilled")
        if f.conservation:
            out.append("not conserved " + ", ".join(f"{k} {v:+}" for k, v in f.conservation.items()))
        if f.negative:
            out.append(f"{f.negative} negative balances")
        if f.audit_ok is False:
            out.append("audit failed")
        if f.open_left or f.locked_left:
            out.append(f"after cancelling all: {f.open_left} open, {f.locked_left} locked")
        if f.settle_s is None:
            out.append("did not settle")
        return out

    @property
    def warnings(self) -> list[str]:
        f = self.findings
        out = []
        if f.locked_idle:
            out.append(f"{f.locked_idle} locked without open orders")
        if f.read_diffs:
            out.append("read diffs " + ", ".join(f"{k} {v}" for k, v in sorted(f.read_diffs.items())))
        return out


TRUE_REFUSALS = ("cancel 422 order_closed", "amend 422 order_closed")
"""A cancel or amend that came after the order filled: the expected answer, left out of the
markdown table's errors."""


def errors_text(errors: Counter[str], *, leave_out: Sequence[str] = ()) -> str:
    shown = [(label, count) for label, count in errors.most_common() if label not in leave_out]
    return ", ".join(f"{label} x{count}" for label, count in shown) or "none"


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def render(result: Result) -> str:
    f = result.findings
    lines = [
        f"== {result.scenario.name}: {result.scenario.description} ({result.duration_s:.0f} s window, "
        f"{result.elapsed_s:.0f} s in all)",
        f"   requests {len(result.record.attempts)} (not sent, too many waiting: {result.record.skipped}); "
        f"orders acked {f.acked}, unknown to their client {f.unknown}; trades {f.trades}",
        f"   lost {sum(f.lost.values())}: {dict(f.lost) or 'none'}",
        f"   lies {sum(f.lies.values())}: {dict(f.lies) or 'none'}",
        f"   errors by status: {errors_text(f.errors)}",
        f"   time to recover {seconds(result.recover_s)}; settled in {seconds(f.settle_s)}; "
        f"audit {'ok' if f.audit_ok else 'FAILED'}",
        f"   invariants: {'; '.join(result.broken) or 'all hold'}"
        + (f"; {'; '.join(result.warnings)}" if result.warnings else ""),
    ]
    for kind, examples in f.examples.items():
        lines.append(f"   e.g. {kind}:")
        lines += [f"      {example}" for example in examples[:3]]
    lines += [f"   note: {note}" for note in result.notes + f.notes]
    if f.audit_ok is False:
        lines += [f"   audit: {line}" for line in f.audit_output.splitlines()[-12:]]
    return "\n".join(lines)


def markdown(results: Sequence[Result], options: Options) -> str:
    """The README's Reliability table: one row per scenario, then the lies by kind."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"Run of {when}: {options.rate:.0f} requests/s from {options.members} members, "
        f"{options.warmup_s:.0f} s of load, the fault for {options.duration_s:.0f} s "
        f"(longer where a scenario says), {options.tail_s:.0f} s more load, then settle and check.",
        "",
        f"Errors by status leave out {' and '.join(TRUE_REFUSALS)} (a cancel or amend after the "
        "order filled: a true answer); `exc:` is a request with no answer (connection refused, "
        "timeout). Time to recover: from the fault's end to the first order sent after it and "
        "accepted, over REST and over RabbitMQ, whichever came last.",
        "",
        "| scenario | acked | lost | lies | errors by status | 5xx | time to recover | invariants |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for r in results:
        f = r.findings
        invariants = "; ".join(r.broken + r.warnings) or "all hold"
        out.append(
            f"| `{r.scenario.name}` | {f.acked:,} | {sum(f.lost.values())} | {sum(f.lies.values())} | "
            f"{errors_text(f.errors, leave_out=TRUE_REFUSALS)} | {f.server_errors} | "
            f"{seconds(r.recover_s)} | {invariants} |"
        )
    lies: Counter[str] = Counter()
    for r in results:
        lies.update(r.findings.lies)
    if lies:
        out += ["", "Lies by kind, over the run:", ""]
        out += [f"- {kind}: {count}" for kind, count in lies.most_common()]
    notes = [(r.scenario.name, note) for r in results for note in r.notes + r.findings.notes]
    if notes:
        out += ["", "Notes:", ""]
        out += [f"- `{name}`: {note}" for name, note in notes]
    return "\n".join(out) + "\n"


RECOVERED = {"place": "201", "amqp": "accepted"}
"""What a working way in answers: REST and RabbitMQ."""


def recovery_by_way(record: LoadRecord, fault_end: float) -> dict[str, float | None]:
    """Per way in, from the fault's end to the first order sent after it and answered as a
    working system answers (None: none was)."""
    out: dict[str, float | None] = {}
    for kind, success in RECOVERED.items():
        done = [
            a.done for a in record.attempts if a.kind == kind and a.status == success and a.sent >= fault_end
        ]
        out[kind] = min(done) - fault_end if done else None
    return out


def time_to_recover(record: LoadRecord, fault_end: float) -> float | None:
    """Both ways in must work again: the later of the two (see `recovery_by_way`)."""
    ways = recovery_by_way(record, fault_end).values()
    return None if None in ways else max(way for way in ways if way is not None)


async def progress(load: Load, phase: list[str], every_s: float, started: float) -> None:
    seen = 0
    print(f"   {'t(s)':>5} {'phase':<9} {'sent/s':>6} {'ok/s':>6} {'errors':>6} {'waiting':>7}  top errors")
    while True:
        await asyncio.sleep(every_s)
        batch = load.record.attempts[seen:]
        seen += len(batch)
        ok = [
            a for a in batch if a.status.startswith("2") or a.status in ("accepted", "submitted", "confirmed")
        ]
        errors = Counter(a.label for a in batch if a not in ok)
        top = ", ".join(f"{label} x{n}" for label, n in errors.most_common(3))
        print(
            f"   {time.monotonic() - started:5.1f} {phase[0]:<9} {len(batch) / every_s:6.0f} "
            f"{len(ok) / every_s:6.0f} {len(batch) - len(ok):6d} {len(load.in_flight):7d}  {top}",
            flush=True,
        )


async def _quiet(_exc: Exception) -> None:
    pass


async def run_scenario(scenario: Scenario, options: Options) -> Result:
    started = time.monotonic()
    duration = max(options.duration_s, scenario.min_duration_s)
    if not options.quiet:
        print(f"\n== {scenario.name}: {scenario.description}, starting the system", flush=True)
    async with FaultSystem(options.members, keep=options.keep) as system:
        nc = await nats.connect(
            system.nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.5, error_cb=_quiet
        )
        try:
            load = Load(system, options.rate, seed=options.seed)
            phase = ["warm-up"]
            stop = asyncio.Event()
            running = asyncio.create_task(load.run(stop))
            ticker = (
                asyncio.create_task(progress(load, phase, options.progress_s, time.monotonic()))
                if not options.quiet
                else None
            )
            try:
                await asyncio.sleep(options.warmup_s)
                phase[0] = "fault"
                fault_end = await scenario.fault(system, duration) or time.monotonic()
                phase[0] = "restore"
                notes = await system.restore()
                phase[0] = "recovery"
                await asyncio.sleep(options.tail_s)
                phase[0] = "draining"
                stop.set()
                record = await running
            finally:
                stop.set()
                if ticker is not None:
                    ticker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await ticker
            if not options.quiet:
                print(f"   checking {len(record.attempts)} answers", flush=True)
            findings = await full_check(system, nc, record.attempts)
        finally:
            await nc.close()
        result = Result(scenario, duration, findings, record, time_to_recover(record, fault_end), notes)
        ways = recovery_by_way(record, fault_end)
        result.notes.append(
            "recovered: " + ", ".join(f"{way} {seconds(after)}" for way, after in ways.items())
        )
        if result.broken and options.keep:
            result.notes.append(f"data kept in {system.workdir}")
    result.elapsed_s = time.monotonic() - started
    return result


async def run_suite(names: Sequence[str], options: Options, report: Path | None) -> list[Result]:
    results: list[Result] = []
    for name in names:
        result = await run_scenario(SCENARIOS[name], options)
        results.append(result)
        print(render(result), flush=True)
        if report is not None:  # after each scenario: a long run interrupted keeps what it did
            await asyncio.to_thread(write_report, report, markdown(results, options))
    print("\n" + markdown(results, options))
    return results


def write_report(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def parse_args(argv: Sequence[str] | None) -> tuple[list[str], Options, Path | None]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenarios", nargs="+", metavar="NAME", help="default: all (see --list)")
    parser.add_argument("--ci", action="store_true", help=f"the scenarios CI runs: {' '.join(CI_SCENARIOS)}")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of fault per scenario (15)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the fault (3)")
    parser.add_argument("--tail", type=float, default=8.0, help="seconds of load after the fault (8)")
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second (150)")
    parser.add_argument("--members", type=int, default=200, help="funded members the load spreads over (200)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the data folder of a failing scenario")
    parser.add_argument("--report", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    if args.list:
        for scenario in SCENARIOS.values():
            print(f"{scenario.name:<22} {scenario.description}")
        sys.exit(0)
    names = CI_SCENARIOS if args.ci else (args.scenarios or list(SCENARIOS))
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; --list shows them")
    options = Options(
        rate=args.rate,
        members=args.members,
        warmup_s=args.warmup,
        duration_s=args.duration,
        tail_s=args.tail,
        seed=args.seed,
        keep=args.keep,
    )
    return names, options, args.report


def main(argv: Sequence[str] | None = None) -> int:
    names, options, report = parse_args(argv)
    results = asyncio.run(run_suite(names, options, report))
    return 1 if any(result.broken for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())

"""The project's own load generator (`bourse.sizing.loadgen`, what `bourse size measure` drives
with) against a running `bourse up`, at a share of a scenario: the same command shape as the
external tools, so `loadtest/tool_cpu.py` can put its CPU per request next to theirs.

    .venv/bin/python loadtest/tool_cpu.py --health-port 8001 -- \\
        .venv/bin/python loadtest/own_generator.py --api http://127.0.0.1:8000/api/v3 --load 0.15

Members and tokens as for the Locust file (`members.py`: the markets file's demo members, the data
folder's key ring). RabbitMQ orders go over REST, as with the HTTP tools."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from members import demo_member_ids, member_tokens

from bourse.sizing.loadgen import LoadGenerator
from bourse.sizing.scenario import load_scenario
from bourse.sizing.workload import OrderMaker


async def drive(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    ids = demo_member_ids()
    tokens = member_tokens(ids)
    generator = LoadGenerator(args.api, tokens, OrderMaker(scenario.markets, members=max(ids)))
    rates = scenario.rates(args.load)
    print(f"{sum(rates.values()):.0f} actions/s for {args.duration:.0f}s", file=sys.stderr, flush=True)
    try:
        await generator.prepare_resting(args.resting)
        await generator.run(rates, args.duration)
    finally:
        generator.close()
    answered = sum(1 for sample in generator.samples if sample.status)
    print(f"{len(generator.samples)} requests, {answered} answered", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--api", default="http://127.0.0.1:8000/api/v3")
    parser.add_argument("--scenario", type=Path, default=None, help="a scenario file (the brief's)")
    parser.add_argument("--load", type=float, default=0.15, help="share of the scenario's rates (0.15)")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--resting", type=int, default=200, help="resting orders placed first (200)")
    args = parser.parse_args(argv)
    try:
        import uvloop

        return uvloop.run(drive(args))
    except ImportError:
        return asyncio.run(drive(args))


if __name__ == "__main__":
    sys.exit(main())

"""What the Prometheus metrics cost on the hot paths, on one core.

Run: `.venv/bin/python bench/metrics_bench.py` (`--help` for options).

Each figure is CPU microseconds per operation (this process's CPU time over `--n` operations,
the best of `--repeats` runs: on a shared box other processes only ever add to it), minus the
same loop without the metrics where there is one:

- per consumer batch: what `ConsumerLoop` adds per batch (two histogram observes and the
  pending count parsed from the last message's ack subject; the counters are read at scrape);
- per HTTP request: `HttpMetrics` around an app that answers at once, on a fixed route
  (`POST /api/v3/order`, which also counts the order) and on a templated one
  (`GET /api/v3/order/{order_id}`), against the bare app;
- per trade: `bourse_order_to_trade_seconds` (the id's time, one observe);
- per scrape: the process registry's exposition with the series of a whole exchange.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

from nats.aio.msg import Msg

from bourse.adapters.jetstream import stream_pending
from bourse.adapters.metrics import (
    CONSUMER_MESSAGES,
    SCRAPED,
    ConsumerMeter,
    Sample,
    exposition,
    observe_order_to_trade,
)
from bourse.domain.order_ids import id_timestamp_ms
from bourse.entrypoints.rest.app import create_app
from bourse.entrypoints.rest.deps import GatewayDeps
from bourse.entrypoints.rest.http_metrics import HttpMetrics, RouteTemplates

ACK = "$JS.ACK.BOURSE_ORDERS.accounts-0.1.123456.123456.1767139200000000000.42"


def cpu_us(run: Callable[[int], None], n: int, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        started = time.process_time()
        run(n)
        runs.append((time.process_time() - started) / n * 1e6)
    return min(runs)


def per_batch(n: int) -> None:
    meter = ConsumerMeter("bench", "bench-consumer")
    msg = cast(Msg, SimpleNamespace(reply=ACK))
    since = time.monotonic()
    for _ in range(n):
        meter.batch(37, time.monotonic() - since)
        stream_pending(msg)


def per_batch_bare(n: int) -> None:
    since = time.monotonic()
    for _ in range(n):
        _ = time.monotonic() - since  # the loop's own cost, subtracted


def per_trade(n: int) -> None:
    taker = 7_323_425_123_456_789
    now_ms = time.time() * 1000
    for _ in range(n):
        observe_order_to_trade(max(now_ms - id_timestamp_ms(taker), 0.0) / 1000)


async def answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def nothing(message: dict[str, Any]) -> None:
    return None


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b""}


def requests(app: Any, method: str, path: str) -> Callable[[int], None]:
    scope = {"type": "http", "method": method, "path": path}

    async def many(n: int) -> None:
        for _ in range(n):
            await app(scope, receive, nothing)

    return lambda n: asyncio.run(many(n))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200_000, help="operations per run")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    n, repeats = args.n, args.repeats

    batch = cpu_us(per_batch, n, repeats) - cpu_us(per_batch_bare, n, repeats)
    print(f"per consumer batch        {batch:6.2f} us")
    print(f"per trade (order->trade)  {cpu_us(per_trade, n, repeats):6.2f} us")

    routes = RouteTemplates.of(create_app(cast(GatewayDeps, SimpleNamespace(catalog=None))).routes)
    metered = HttpMetrics(answer, routes)
    bare = cpu_us(requests(answer, "POST", "/api/v3/order"), n, repeats)
    for method, path in (("POST", "/api/v3/order"), ("GET", "/api/v3/order/7323425123456789")):
        cost = cpu_us(requests(metered, method, path), n, repeats) - bare
        print(f"per HTTP request {method:<6} {cost:6.2f} us  ({path})")

    # a whole exchange's scraped series: ~20 consumers, ~60 endpoints, snapshots, info
    def exchange_series() -> list[Sample]:
        return [Sample(CONSUMER_MESSAGES, ("svc", f"c{i}"), i) for i in range(80)]

    def scrapes(k: int) -> None:
        for _ in range(k):
            exposition()

    unwatch = SCRAPED.watch(exchange_series)
    try:
        scrape = cpu_us(scrapes, 200, repeats)
    finally:
        unwatch()
    print(f"per scrape (exposition)   {scrape:6.0f} us  ({len(exposition())} bytes)")


if __name__ == "__main__":
    main()

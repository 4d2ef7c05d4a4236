"""RabbitMQ ingress benchmark: orders published to RabbitMQ, end to end into the matching engine.

    .venv/bin/python bench/amqp_bench.py                    # 20,000 orders, as fast as confirms go
    .venv/bin/python bench/amqp_bench.py --orders 50000 --prefetch 1024

What runs: a nats-server from the wheel configured like `bourse up`'s (JetStream with
`sync_interval: always`), and one `bourse run` process each for `auth ids`, `accounts`,
`matching` and `amqp-ingress` (so the ingress's CPU is measured on its own), under a fresh
namespace, with `--members` demo members; the machine's RabbitMQ (`--rabbitmq-url`), with the
ingress's exchange and queues under that namespace (deleted at the end).

The load: `--orders` limit orders on btc_usd (buys and sells around one price so that about
half trade, a tenth of them IOC), each published with publisher confirms (`--window`
unconfirmed at most; as fast as that goes, or `--rate` per second) by the RabbitMQ user of the
URL, with `reply_to` and a message id. A core NATS listener on `<ns>.events.>` and
`<ns>.accounts.>` counts each order's engine result (`accepted`, or the engine's or the accounts
stage's `rejected`). Printed: orders/s from the first publish to the last engine result;
publish-to-reply latency (the reply is sent once the engine's outcome is in; without `--rate`
that is mostly time queued in RabbitMQ); CPU per order of every process (`/proc/<pid>/stat`,
utime+stime over the run), the broker's and this publisher's included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from bourse.adapters.amqp import AmqpTopology, declare, delete, url_user
from bourse.config.amqp import amqp_topology
from bourse.config.auth import key_ring_for
from bourse.config.settings import Settings
from bourse.contracts.messages import ACCOUNTS_REPORTS_DECODER, AMQP_REPLY_DECODER, EVENT_BATCH_DECODER
from bourse.contracts.subjects import ACCOUNTS
from bourse.domain.orders import OrderAccepted, OrderRejected
from bourse.sizing.probes import cpu_seconds
from e2e_bench import (
    Server,
    base_env,
    free_port,
    spawn,
    start_own_nats,
    tail,
    wait_for_nats,
    write_markets_file,
)

PROCESSES = {"auth+ids": ["auth", "ids"], "accounts": ["accounts"], "matching": ["matching"]}
INGRESS = "amqp-ingress"


def order_body(n: int, members: int, rng: random.Random) -> dict[str, Any]:
    """A limit order around 50,000: buys up to 20 above, sells down to 20 below, so books cross."""
    side = "buy" if n % 2 == 0 else "sell"
    offset = rng.randint(-40, 20)
    price = 50_000 - offset if side == "buy" else 50_000 + offset
    return {
        "command": "create",
        "member_id": rng.randint(1, members),
        "market": "btc_usd",
        "side": side,
        "type": "limit",
        "amount": f"0.{rng.randint(1, 50):04d}",
        "price": str(price),
        "time_in_force": "ioc" if n % 10 == 9 else "gtc",
    }


@dataclass
class Results:
    """What the listeners saw."""

    expected: int
    sent_at: dict[str, float] = field(default_factory=dict)
    reply_latency_s: list[float] = field(default_factory=list)
    reply_status: dict[str, int] = field(default_factory=dict)
    engine_results: int = 0
    first_publish: float = 0.0
    last_result: float = 0.0
    all_in: asyncio.Event = field(default_factory=asyncio.Event)
    replies_in: asyncio.Event = field(default_factory=asyncio.Event)

    def on_engine_result(self, count: int) -> None:
        self.engine_results += count
        self.last_result = time.perf_counter()
        if self.engine_results >= self.expected:
            self.all_in.set()


async def listen_engine(nc: Client, namespace: str, results: Results) -> None:
    """Count place results: `accepted`/`rejected` on EVENTS, refusals on ACCOUNTS."""

    async def on_events(msg: Msg) -> None:
        batch = EVENT_BATCH_DECODER.decode(msg.data)
        results.on_engine_result(
            sum(
                1
                for event in batch.events
                if isinstance(event, OrderAccepted)
                or (isinstance(event, OrderRejected) and event.command == "place")
            )
        )

    async def on_accounts(msg: Msg) -> None:
        reports = ACCOUNTS_REPORTS_DECODER.decode(msg.data).reports
        results.on_engine_result(
            sum(1 for report in reports for event in report.rejected if event.command == "place")
        )

    await nc.subscribe(f"{namespace}.events.>", cb=on_events)
    await nc.subscribe(f"{namespace}.accounts.>", cb=on_accounts)


async def publish_all(
    args: argparse.Namespace, topology: AmqpTopology, user: str, results: Results
) -> aio_pika.abc.AbstractRobustConnection:
    connection = await aio_pika.connect_robust(args.rabbitmq_url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(topology.exchange)
    replies = await channel.declare_queue(exclusive=True, auto_delete=True)

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        reply = AMQP_REPLY_DECODER.decode(message.body)
        sent = results.sent_at.get(message.correlation_id or "")
        if sent is not None:
            results.reply_latency_s.append(time.perf_counter() - sent)
        results.reply_status[reply.status] = results.reply_status.get(reply.status, 0) + 1
        if len(results.reply_latency_s) >= results.expected:
            results.replies_in.set()

    await replies.consume(on_reply, no_ack=True)
    rng = random.Random(args.seed)
    window = asyncio.Semaphore(args.window)
    run = uuid.uuid4().hex[:8]

    async def one(n: int) -> None:
        message_id = f"b{run}-{n}"
        message = aio_pika.Message(
            msgspec.json.encode(order_body(n, args.members, rng)),
            message_id=message_id,
            user_id=user,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            reply_to=replies.name,
        )
        try:
            results.sent_at[message_id] = time.perf_counter()
            await exchange.publish(message, routing_key=topology.routing_key)
        finally:
            window.release()

    results.first_publish = time.perf_counter()
    tasks = set()
    for n in range(args.orders):
        if args.rate:  # open loop: the n-th order goes at n / rate, however the others fare
            delay = results.first_publish + n / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await window.acquire()
        task = asyncio.create_task(one(n))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return connection


async def progress(results: Results, started: float) -> None:
    while True:
        await asyncio.sleep(1.0)
        elapsed = time.perf_counter() - started
        print(
            f"  {elapsed:5.1f} s  published {len(results.sent_at):>7,}  in the engine "
            f"{results.engine_results:>7,}  replies {len(results.reply_latency_s):>7,}",
            flush=True,
        )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run(args: argparse.Namespace, workdir: Path) -> None:
    namespace = f"amqpbench{uuid.uuid4().hex[:8]}"
    markets = workdir / "markets.toml"
    write_markets_file(markets, args.members)
    env = base_env(workdir, namespace, markets)
    own_nats, nats_url = start_own_nats(workdir)
    servers: list[Server] = []
    settings = Settings(namespace=namespace, rabbitmq_url=args.rabbitmq_url, _env_file=None)
    topology = amqp_topology(settings)
    rabbit = await aio_pika.connect_robust(args.rabbitmq_url)
    channel = await rabbit.channel()
    publisher: aio_pika.abc.AbstractRobustConnection | None = None
    nc: Client | None = None
    try:
        await wait_for_nats(nats_url, 15.0)
        key_ring_for(Settings(data_dir=workdir, _env_file=None))
        env.update(
            BOURSE_NATS_URL=nats_url,
            BOURSE_RABBITMQ_URL=args.rabbitmq_url,
            BOURSE_AMQP_PREFETCH=str(args.prefetch),
            BOURSE_AMQP_REPLY_TIMEOUT_S="60",
        )
        for label, services in PROCESSES.items():
            servers.append(spawn(label, ["run", *services], env, workdir, free_port()))
        await declare(channel, topology)
        nc = await nats.connect(nats_url)
        print(f"starting {len(servers) + 1} processes, {args.members} members ...", flush=True)
        await wait_seeded(nc, namespace, args.members, servers)
        servers.append(spawn(INGRESS, ["run", INGRESS], env, workdir, free_port()))
        await wait_ingress(servers[-1])
        results = Results(args.orders)
        await listen_engine(nc, namespace, results)
        pids = {server.label: server.process.pid for server in servers}
        pids["nats-server"] = own_nats.pid
        pids["this publisher"] = os.getpid()
        broker = rabbitmq_pid()
        if broker is not None:
            pids["rabbitmq (all)"] = broker
        profiler = start_profiler(args.profile, servers[-1].process.pid) if args.profile else None
        before = {label: cpu_seconds(pid) or 0.0 for label, pid in pids.items()}
        started = time.perf_counter()
        print(f"publishing {args.orders:,} orders (window {args.window}, prefetch {args.prefetch}) ...")
        ticker = asyncio.create_task(progress(results, started))
        publisher = await publish_all(args, topology, url_user(args.rabbitmq_url), results)
        published = time.perf_counter()
        try:
            await asyncio.wait_for(results.all_in.wait(), args.timeout)
        finally:
            ticker.cancel()
        after = {label: cpu_seconds(pid) or 0.0 for label, pid in pids.items()}
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        with contextlib.suppress(TimeoutError):  # the last replies
            await asyncio.wait_for(results.replies_in.wait(), 10.0)
        report(args, results, published - results.first_publish, before, after)
    finally:
        if publisher is not None:
            await publisher.close()
        if nc is not None:
            await nc.close()
        for server in reversed(servers):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGTERM)
        for server in servers:
            with contextlib.suppress(Exception):
                server.process.wait(10)
        with contextlib.suppress(Exception):
            await delete(channel, topology)
        await rabbit.close()
        own_nats.terminate()
        own_nats.wait(10)


async def wait_seeded(nc: Client, namespace: str, members: int, servers: list[Server]) -> None:
    """Until the accounts stage has reported the last demo member's deposits."""
    js = nc.jetstream()
    deadline = time.monotonic() + 60
    while True:
        for server in servers:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.label} exited: {tail(server.log)}")
        with contextlib.suppress(Exception):
            stream = ACCOUNTS.name(namespace)
            last = await js.get_msg(stream, (await js.stream_info(stream)).state.last_seq)
            reports = ACCOUNTS_REPORTS_DECODER.decode(last.data or b"").reports
            if any(change.member_id == members for report in reports for change in report.balances):
                return
        if time.monotonic() > deadline:
            raise RuntimeError("demo members not seeded in 60 s")
        await asyncio.sleep(0.2)


async def wait_ingress(server: Server) -> None:
    """Until the ingress's health endpoint says 200 (it consumes once started)."""
    deadline = time.monotonic() + 30
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.label} exited: {tail(server.log)}")
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.health_port)
            writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
            await writer.drain()
            status = await reader.readline()
            writer.close()
            if b" 200 " in status:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the ingress is not healthy: {tail(server.log)}")
        await asyncio.sleep(0.2)


def start_profiler(path: str, pid: int) -> subprocess.Popen[bytes]:
    py_spy = str(Path(sys.executable).with_name("py-spy"))
    command = [py_spy, "record", "-f", "raw", "-r", "200", "-o", path, "-p", str(pid)]
    return subprocess.Popen(command, stderr=subprocess.DEVNULL)


def rabbitmq_pid() -> int | None:
    """The broker's Erlang VM on this machine, if there is one to measure."""
    for stat in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if stat.read_text().strip() == "beam.smp":
                return int(stat.parent.name)
    return None


def report(
    args: argparse.Namespace,
    results: Results,
    publish_s: float,
    before: dict[str, float],
    after: dict[str, float],
) -> None:
    wall = results.last_result - results.first_publish
    orders = args.orders
    print()
    print(f"orders                 {orders:,} (engine results {results.engine_results:,})")
    print(f"published in           {publish_s:.2f} s ({orders / publish_s:,.0f}/s with confirms)")
    print(f"end to end             {wall:.2f} s: {orders / wall:,.0f} orders/s into the engine")
    if results.reply_latency_s:
        p50 = percentile(results.reply_latency_s, 0.5) * 1e3
        p99 = percentile(results.reply_latency_s, 0.99) * 1e3
        count = len(results.reply_latency_s)
        print(f"publish -> reply       p50 {p50:.1f} ms, p99 {p99:.1f} ms ({count:,} replies)")
    print(f"reply statuses         {results.reply_status}")
    print(f"\n{'process':<14} {'cpu s':>7} {'cores':>6} {'us/order':>9}")
    for label in after:
        used = after[label] - before[label]
        print(f"{label:<14} {used:7.2f} {used / wall:6.2f} {used / orders * 1e6:9.0f}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--window", type=int, default=1000, help="unconfirmed publishes at most (1000)")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="orders/s to publish at (0: as fast as it goes)"
    )
    parser.add_argument("--prefetch", type=int, default=512, help="BOURSE_AMQP_PREFETCH of the ingress (512)")
    parser.add_argument("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the engine")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument("--profile", help="py-spy the ingress into this file (collapsed stacks)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="amqp-bench-"))
    try:
        asyncio.run(run(args, workdir))
    finally:
        if args.keep:
            print(f"work folder: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""WebSocket library benchmark for the pusher (#13): idle memory, broadcast CPU and slow clients.

    .venv/bin/python bench/ws_library_bench.py                          # 5,000 connections, 2 runs
    .venv/bin/python bench/ws_library_bench.py --connections 5000 10000 --runs 3

Candidates: `websockets` (its asyncio server, `websockets.asyncio.server.serve` + `broadcast`) and
`picows` (`ws_create_server`, `WSTransport.send`) twice: `picows` with its defaults (16 KiB initial
read buffer per connection, aiofastnet's transports when installed, which picows 2.3 pulls in) and
`picows-lean` (1 KiB initial read buffer, a LoggerAdapter so that no child Logger is made per
connection, the loop's own transports). Neither is a dependency of the project: install them into the
venv to measure (`.venv/bin/pip install picows websockets`).

For every library, connection count and run, a fresh server process (only that library, on
`--loop`, uvloop by default as `bourse run` uses) is measured alone through /proc:
1. idle memory: `--client-procs` light client processes (picows clients) open N connections;
   KB per connection = (server RSS with N idle connections - RSS before any) / N;
2. broadcast: the server encodes one ~`--message-bytes` JSON text message per round (with the round
   number in it) and writes those same bytes to every connection, `--deliveries` / N rounds per
   second for `--seconds`; websockets through `broadcast(conns, data, text=True)`, picows through
   `transport.send(WSMsgType.TEXT, data)` per transport. The clients count what they receive; the
   window ends when every message has arrived (the run fails otherwise). CPU us per delivered
   message = server user+sys CPU over the window / messages delivered;
3. slow client: one more connection (path /slow) whose client never reads (a tiny receive buffer,
   reading paused). Each round it gets the broadcast plus enough extra copies to make
   `--slow-mb-per-s`; the server samples that connection's user-space write buffer
   (`transport.get_write_buffer_size()`) for `--slow-observe` seconds without acting, then cuts it
   when the buffer is over `--slow-limit` (close frame with 1008, then abort after `--close-grace`
   seconds: websockets' `close(1008)` with `close_timeout`, picows' `send_close` + `disconnect`),
   while the other clients must still receive every broadcast.
Heartbeats run as the service will run them (`--heartbeat` seconds: websockets' `ping_interval`,
picows' `enable_auto_ping`), so their cost and their per-connection task are in the figures.

Printed: progress lines, then a table of medians per library and connection count, with the
machine's load average and how busy its two cores were during the broadcast (all processes, and
the part that was not this benchmark), since the box is shared. Written: every run and the medians
as JSON to `--out` (default reports/ws_library_bench.json; reports/ is git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import math
import os
import resource
import socket
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Neither library is a project dependency yet (the pusher will add the one chosen): the ignores keep
# `mypy` clean on a machine that lacks them, where they are Any.
import picows  # type: ignore[import-not-found, unused-ignore]
from websockets.asyncio.server import (  # type: ignore[import-not-found, unused-ignore]
    ServerConnection,
    broadcast,
    serve,
)

# picows-lean: picows with a 1 KiB initial read buffer (it grows when a frame needs it), a LoggerAdapter
# (no child Logger per connection) and the loop's own transports instead of aiofastnet's.
LIBRARIES = ("websockets", "picows", "picows-lean")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SLOW_PATH = "/slow"
SCRIPT = os.path.abspath(__file__)
POLICY_VIOLATION = 1008

Json = dict[str, Any]


# ---------------------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def load_average() -> tuple[float, float, float]:
    with open("/proc/loadavg") as f:
        one, five, fifteen = f.read().split()[:3]
    return float(one), float(five), float(fifteen)


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs together, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_loop(main: Coroutine[Any, Any, None], loop_name: str) -> None:
    if loop_name == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)
    else:
        asyncio.run(main)


def reply(message: Json) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def make_message(round_no: int, size: int) -> bytes:
    """A trades-channel-like JSON message of about `size` bytes, encoded once per round."""
    body: Json = {
        "channel": "trades",
        "market": "btc_usd",
        "seq": round_no,
        "data": [{"id": 1_000_000 + round_no, "price": "64123.45", "amount": "0.0125", "side": "buy"}],
        "ts": time.time_ns(),
        "pad": "",
    }
    base = len(json.dumps(body, separators=(",", ":")))
    body["pad"] = "x" * max(0, size - base)
    return json.dumps(body, separators=(",", ":")).encode()


# ------------------------------------------------------------------------------- server process


class Hub:
    """The connections one server process holds, behind what both libraries can do."""

    def __init__(self) -> None:
        self.slow_cut_at: float | None = None
        self.slow_gone_at: float | None = None

    async def start(self, host: str, port: int, heartbeat: float, grace: float) -> int:
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError

    def slow_count(self) -> int:
        raise NotImplementedError

    def broadcast(self, data: bytes) -> None:
        raise NotImplementedError

    def send_slow(self, data: bytes, copies: int) -> None:
        raise NotImplementedError

    def slow_buffer(self) -> int:
        """The largest user-space write buffer among the slow connections, in bytes."""
        raise NotImplementedError

    def slow_paused(self) -> bool:
        """Whether the transport told the protocol to pause writing (the high-water mark)."""
        raise NotImplementedError

    def cut_slow(self, code: int, grace: float) -> None:
        raise NotImplementedError


class PicowsHub(Hub):
    def __init__(self, read_buffer: int, adapter: bool, aiofastnet: bool) -> None:
        super().__init__()
        self.read_buffer = read_buffer
        self.adapter = adapter
        self.aiofastnet = aiofastnet
        self.conns: set[picows.WSTransport] = set()
        self.slow: set[picows.WSTransport] = set()
        self.paused: set[picows.WSTransport] = set()
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int, heartbeat: float, grace: float) -> int:
        hub = self

        class Listener(picows.WSListener):  # type: ignore[misc, unused-ignore]
            def __init__(self, slow: bool) -> None:
                self.slow = slow
                self.transport: picows.WSTransport | None = None

            def on_ws_connected(self, transport: picows.WSTransport) -> None:
                self.transport = transport
                (hub.slow if self.slow else hub.conns).add(transport)

            def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
                if frame.msg_type == picows.WSMsgType.CLOSE:
                    transport.send_close(frame.get_close_code(), frame.get_close_message())
                    transport.disconnect()

            def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
                hub.conns.discard(transport)
                if transport in hub.slow:
                    hub.slow.discard(transport)
                    hub.slow_gone_at = time.monotonic()

            def pause_writing(self) -> None:
                if self.transport is not None:
                    hub.paused.add(self.transport)

            def resume_writing(self) -> None:
                if self.transport is not None:
                    hub.paused.discard(self.transport)

        def factory(request: picows.WSUpgradeRequest) -> picows.WSListener:
            return Listener(request.path == SLOW_PATH.encode())

        self.server = await picows.ws_create_server(
            factory,
            host,
            port,
            backlog=4096,
            enable_auto_ping=heartbeat > 0,
            auto_ping_idle_timeout=heartbeat or 20,
            auto_ping_reply_timeout=heartbeat or 20,
            read_buffer_init_size=self.read_buffer,
            # A Logger (the default) makes picows create a child Logger per connection, kept for good;
            # an adapter is used as it is.
            logger_name=logging.LoggerAdapter(logging.getLogger("picows.server")) if self.adapter else None,
            use_aiofastnet=self.aiofastnet,
        )
        return int(self.server.sockets[0].getsockname()[1])

    def count(self) -> int:
        return len(self.conns)

    def slow_count(self) -> int:
        return len(self.slow)

    def broadcast(self, data: bytes) -> None:
        text = picows.WSMsgType.TEXT
        for transport in self.conns:
            transport.send(text, data)
        for transport in self.slow:
            transport.send(text, data)

    def send_slow(self, data: bytes, copies: int) -> None:
        text = picows.WSMsgType.TEXT
        for transport in self.slow:
            for _ in range(copies):
                transport.send(text, data)

    def slow_buffer(self) -> int:
        return int(max((t.underlying_transport.get_write_buffer_size() for t in self.slow), default=0))

    def slow_paused(self) -> bool:
        return any(t in self.paused for t in self.slow)

    def cut_slow(self, code: int, grace: float) -> None:
        loop = asyncio.get_running_loop()
        for transport in list(self.slow):
            transport.send_close(picows.WSCloseCode(code), b"slow consumer")
            loop.call_later(grace, transport.disconnect, False)


class WebsocketsHub(Hub):
    def __init__(self) -> None:
        super().__init__()
        self.conns: set[ServerConnection] = set()
        self.slow: set[ServerConnection] = set()
        self.closing: set[asyncio.Task[None]] = set()
        self.server: Any = None

    async def start(self, host: str, port: int, heartbeat: float, grace: float) -> int:
        async def handler(ws: ServerConnection) -> None:
            slow = ws.request is not None and ws.request.path == SLOW_PATH
            group = self.slow if slow else self.conns
            group.add(ws)
            try:
                await ws.wait_closed()
            finally:
                group.discard(ws)
                if slow:
                    self.slow_gone_at = time.monotonic()

        self.server = await serve(
            handler,
            host,
            port,
            backlog=4096,
            compression=None,
            ping_interval=heartbeat or None,
            ping_timeout=heartbeat or None,
            close_timeout=grace,
        )
        return int(self.server.sockets[0].getsockname()[1])

    def count(self) -> int:
        return len(self.conns)

    def slow_count(self) -> int:
        return len(self.slow)

    def broadcast(self, data: bytes) -> None:
        broadcast(self.conns, data, text=True)
        broadcast(self.slow, data, text=True)

    def send_slow(self, data: bytes, copies: int) -> None:
        for _ in range(copies):
            broadcast(self.slow, data, text=True)

    def slow_buffer(self) -> int:
        return int(max((ws.transport.get_write_buffer_size() for ws in self.slow), default=0))

    def slow_paused(self) -> bool:
        return any(bool(ws.paused) for ws in self.slow)

    def cut_slow(self, code: int, grace: float) -> None:
        # close() alone is not enough: it waits in drain() for a buffer that a non-reading client never
        # empties (close_timeout only starts after that), so the connection stayed until the next
        # keepalive ping failed; abort the transport after the grace period as picows' disconnect does.
        loop = asyncio.get_running_loop()
        for ws in list(self.slow):
            self.closing.add(task := loop.create_task(ws.close(code, "slow consumer")))
            task.add_done_callback(self.closing.discard)
            loop.call_later(grace, ws.transport.abort)


async def server_main(args: argparse.Namespace) -> None:
    raise_nofile()
    hub: Hub
    if args.library == "picows":
        hub = PicowsHub(args.picows_read_buffer, args.picows_logger_adapter, not args.picows_no_aiofastnet)
    elif args.library == "picows-lean":
        hub = PicowsHub(1024, adapter=True, aiofastnet=False)
    else:
        hub = WebsocketsHub()
    port = await hub.start("127.0.0.1", 0, args.heartbeat, args.close_grace)
    gc.collect()
    reply({"ready": True, "port": port, "pid": os.getpid()})
    reader = await stdin_reader()
    while line := await reader.readline():
        command: Json = json.loads(line)
        kind = command["cmd"]
        if kind == "stats":
            gc.collect()
            reply({"conns": hub.count(), "slow": hub.slow_count()})
        elif kind == "broadcast":
            reply(await serve_rounds(hub, command))
        elif kind == "slow":
            reply(await serve_slow(hub, command))
        elif kind == "quit":
            break
    reply({"bye": True})


async def serve_rounds(hub: Hub, command: Json) -> Json:
    """`rounds` rounds at `rate` per second: one message encoded, written to every connection."""
    rounds, rate, size = int(command["rounds"]), float(command["rate"]), int(command["size"])
    sent = 0
    max_lag = 0.0
    start = time.monotonic()
    for i in range(rounds):
        due = start + i / rate
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        else:
            max_lag = max(max_lag, now - due)
        data = make_message(i, size)
        targets = hub.count() + hub.slow_count()
        hub.broadcast(data)
        sent += targets
    return {"rounds": rounds, "sent": sent, "elapsed": time.monotonic() - start, "max_lag": max_lag}


async def serve_slow(hub: Hub, command: Json) -> Json:
    """Rounds to everyone plus extra copies to the slow connection; observe, then cut it."""
    rate, size, seconds = float(command["rate"]), int(command["size"]), float(command["seconds"])
    observe, limit, copies = float(command["observe"]), int(command["limit"]), int(command["copies"])
    grace = float(command["grace"])
    pid = os.getpid()
    rss_start = rss_bytes(pid)
    samples: list[Json] = []
    paused_at: float | None = None
    cut_at: float | None = None
    cut_buffer = 0
    sent_normal = 0
    hub.slow_gone_at = None
    start = time.monotonic()
    rounds = round(seconds * rate)
    for i in range(rounds):
        due = start + i / rate
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        data = make_message(i, size)
        sent_normal += hub.count()
        hub.broadcast(data)
        hub.send_slow(data, copies)
        t = time.monotonic() - start
        buffered = hub.slow_buffer()
        if paused_at is None and hub.slow_paused():
            paused_at = t
        if not samples or t - samples[-1]["t"] >= 0.5 or i == rounds - 1:
            samples.append({"t": round(t, 2), "buffer": buffered, "rss": rss_bytes(pid)})
        if cut_at is None and t >= observe and buffered > limit:
            cut_at, cut_buffer = t, buffered
            hub.cut_slow(POLICY_VIOLATION, grace)
    # Leave the grace period to run out, so the connection is really gone.
    for _ in range(round((grace + 2) / 0.1)):
        if not hub.slow_count():
            break
        await asyncio.sleep(0.1)
    gone = None if hub.slow_gone_at is None else hub.slow_gone_at - start
    observed = [s for s in samples if s["t"] <= observe]
    return {
        "rounds": rounds,
        "sent_normal": sent_normal,
        "samples": samples,
        "buffer_at_observe_end": observed[-1]["buffer"] if observed else 0,
        "rss_growth_at_observe_end": (observed[-1]["rss"] if observed else rss_start) - rss_start,
        "paused_at": paused_at,
        "cut_at": cut_at,
        "cut_buffer": cut_buffer,
        "gone_at": gone,
        "still_held": hub.slow_count(),
        "rss_after": rss_bytes(pid) - rss_start,
    }


# ------------------------------------------------------------------------------- client process


async def client_main(args: argparse.Namespace) -> None:
    raise_nofile()
    counts = {"received": 0, "bytes": 0, "closed": 0, "failed": 0}
    transports: list[picows.WSTransport] = []

    class Counter(picows.WSListener):  # type: ignore[misc, unused-ignore]
        def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
            if frame.msg_type == picows.WSMsgType.TEXT:
                counts["received"] += 1
                counts["bytes"] += frame.payload_size
            elif frame.msg_type == picows.WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

        def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
            counts["closed"] += 1

    gate = asyncio.Semaphore(args.concurrency)

    async def connect_one() -> None:
        async with gate:
            for attempt in range(5):
                try:
                    transport, _ = await picows.ws_connect(Counter, args.url, read_buffer_init_size=4096)
                except (OSError, picows.WSError, TimeoutError):
                    if attempt == 4:
                        counts["failed"] += 1
                        return
                    await asyncio.sleep(0.2 * (attempt + 1))
                else:
                    transports.append(transport)
                    return

    reader = await stdin_reader()
    while line := await reader.readline():
        command: Json = json.loads(line)
        kind = command["cmd"]
        if kind == "connect":
            await asyncio.gather(*(connect_one() for _ in range(int(command["n"]))))
            reply({"connected": len(transports), "failed": counts["failed"]})
        elif kind == "stats":
            reply({"connected": len(transports), **counts})
        elif kind == "quit":
            for transport in transports:
                transport.disconnect(graceful=False)
            break
    reply({"bye": True})


# -------------------------------------------------------------------------------- orchestrator


class Child:
    """A child process spoken to in JSON lines on its stdin and stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.lock = asyncio.Lock()

    @classmethod
    async def spawn(cls, *argv: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            SCRIPT,
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 24,
        )
        return cls(proc)

    async def read(self, timeout: float = 120) -> Json:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"child {self.pid} ended (exit {await self.proc.wait()})")
        result: Json = json.loads(line)
        return result

    async def ask(self, command: Json, timeout: float = 120) -> Json:
        async with self.lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(command) + "\n").encode())
            await self.proc.stdin.drain()
            return await self.read(timeout)

    async def stop(self) -> None:
        with_timeout = False
        if self.proc.returncode is None:
            try:
                await self.ask({"cmd": "quit"}, timeout=20)
                await asyncio.wait_for(self.proc.wait(), 20)
                with_timeout = True
            except (RuntimeError, TimeoutError, ConnectionError, json.JSONDecodeError):
                pass
        if not with_timeout and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@dataclass
class RunResult:
    library: str
    connections: int
    run: int
    loop: str
    connected: int = 0
    connect_seconds: float = 0.0
    server_rss_before_mb: float = 0.0
    server_rss_idle_mb: float = 0.0
    kb_per_connection: float = 0.0
    rounds: int = 0
    rate_rounds_per_s: float = 0.0
    expected: int = 0
    delivered: int = 0
    window_seconds: float = 0.0
    deliveries_per_s: float = 0.0
    server_cpu_seconds: float = 0.0
    cpu_us_per_delivery: float = 0.0
    server_core_share: float = 0.0
    clients_cpu_us_per_delivery: float = 0.0
    max_round_lag_ms: float = 0.0
    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    machine_busy_pct: float = 0.0
    others_busy_pct: float = 0.0
    slow: Json = field(default_factory=dict)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


async def client_totals(clients: Sequence[Child]) -> dict[str, int]:
    replies = await asyncio.gather(*(c.ask({"cmd": "stats"}) for c in clients))
    return {key: sum(int(r[key]) for r in replies) for key in ("connected", "received", "closed", "failed")}


async def wait_delivered(clients: Sequence[Child], expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        received = (await client_totals(clients))["received"]
        if received >= expected or time.monotonic() > deadline:
            return received
        await asyncio.sleep(0.05)


async def connect_slow_client(url: str) -> tuple[Any, Json]:
    """A client that never reads: a 4 KB receive buffer, and reading paused once connected."""
    state: Json = {"disconnected_at": None, "close_code": None}

    class Slow(picows.WSListener):  # type: ignore[misc, unused-ignore]
        def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
            if frame.msg_type == picows.WSMsgType.CLOSE:
                state["close_code"] = frame.get_close_code().value

        def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
            state["disconnected_at"] = time.monotonic()

    def small_socket(_: picows.WSParsedURL) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        return sock

    transport, _ = await picows.ws_connect(
        Slow, url + SLOW_PATH, socket_factory=small_socket, use_aiofastnet=False
    )
    transport.underlying_transport.pause_reading()
    return transport, state


async def one_run(args: argparse.Namespace, library: str, n: int, run: int) -> RunResult:
    tag = f"{library} N={n} run {run}/{args.runs}"
    result = RunResult(library, n, run, args.loop)
    server = await Child.spawn(
        "_server",
        "--library",
        library,
        "--loop",
        args.loop,
        "--heartbeat",
        str(args.heartbeat),
        "--close-grace",
        str(args.close_grace),
        "--picows-read-buffer",
        str(args.picows_read_buffer),
        *(["--picows-logger-adapter"] if args.picows_logger_adapter else []),
        *(["--picows-no-aiofastnet"] if args.picows_no_aiofastnet else []),
    )
    clients: list[Child] = []
    try:
        ready = await server.read(timeout=30)
        url = f"ws://127.0.0.1:{ready['port']}"
        await asyncio.sleep(1.0)
        await server.ask({"cmd": "stats"})
        rss0 = rss_bytes(server.pid)
        result.server_rss_before_mb = rss0 / 2**20
        say(f"{tag}: server pid {server.pid} on {url}, RSS {rss0 / 2**20:.1f} MB; connecting {n} clients")

        shares = [
            n // args.client_procs + (1 if i < n % args.client_procs else 0) for i in range(args.client_procs)
        ]
        for _ in shares:
            clients.append(
                await Child.spawn(
                    "_client", "--url", url, "--loop", args.loop, "--concurrency", str(args.concurrency)
                )
            )
        t0 = time.monotonic()
        connecting = [
            asyncio.create_task(c.ask({"cmd": "connect", "n": k}, timeout=600))
            for c, k in zip(clients, shares, strict=True)
        ]
        while not all(task.done() for task in connecting):
            await asyncio.wait(connecting, timeout=2.0)
            held = (await server.ask({"cmd": "stats"}))["conns"]
            say(f"{tag}: {held}/{n} connections held ({time.monotonic() - t0:.0f} s)")
        done = [task.result() for task in connecting]
        result.connect_seconds = time.monotonic() - t0
        result.connected = sum(int(d["connected"]) for d in done)
        failed = sum(int(d["failed"]) for d in done)
        if result.connected != n:
            raise RuntimeError(f"{tag}: only {result.connected} of {n} connected ({failed} failed)")

        # Idle memory: let the handshakes' garbage go, then read RSS.
        await asyncio.sleep(args.settle)
        held = (await server.ask({"cmd": "stats"}))["conns"]
        rss1 = rss_bytes(server.pid)
        result.server_rss_idle_mb = rss1 / 2**20
        result.kb_per_connection = (rss1 - rss0) / held / 1024
        say(
            f"{tag}: {held} idle connections in {result.connect_seconds:.1f} s; server RSS "
            f"{rss1 / 2**20:.1f} MB = {result.kb_per_connection:.1f} KB per connection"
        )

        # Broadcast.
        rate = args.deliveries / n
        rounds = max(1, round(rate * args.seconds))
        result.rounds, result.rate_rounds_per_s, result.expected = rounds, rate, rounds * n
        say(
            f"{tag}: broadcast {rounds} rounds at {rate:.1f}/s ({args.message_bytes} B each) "
            f"to {n} connections"
        )
        before = await client_totals(clients)
        cpu0 = cpu_seconds(server.pid)
        ccpu0 = sum(cpu_seconds(c.pid) for c in clients)
        busy0, total0 = machine_ticks()
        t0 = time.monotonic()
        sent = await server.ask(
            {"cmd": "broadcast", "rounds": rounds, "rate": rate, "size": args.message_bytes},
            timeout=args.seconds * 10 + 60,
        )
        received = await wait_delivered(clients, before["received"] + result.expected, timeout=60)
        window = time.monotonic() - t0
        cpu = cpu_seconds(server.pid) - cpu0
        ccpu = sum(cpu_seconds(c.pid) for c in clients) - ccpu0
        busy1, total1 = machine_ticks()
        result.loadavg = load_average()
        result.delivered = received - before["received"]
        result.window_seconds = window
        result.deliveries_per_s = result.delivered / window
        result.server_cpu_seconds = cpu
        result.cpu_us_per_delivery = cpu / max(1, result.delivered) * 1e6
        result.server_core_share = cpu / window
        result.clients_cpu_us_per_delivery = ccpu / max(1, result.delivered) * 1e6
        result.max_round_lag_ms = float(sent["max_lag"]) * 1000
        ticks = max(1, total1 - total0)
        result.machine_busy_pct = 100 * (busy1 - busy0) / ticks
        ours = (cpu + ccpu) * CLK_TCK
        result.others_busy_pct = max(0.0, 100 * ((busy1 - busy0) - ours) / ticks)
        say(
            f"{tag}: delivered {result.delivered}/{result.expected} in {window:.2f} s "
            f"({result.deliveries_per_s:,.0f}/s); server CPU {cpu:.2f} s = "
            f"{result.cpu_us_per_delivery:.2f} us/message "
            f"({100 * result.server_core_share:.0f} % of a core); "
            f"clients {result.clients_cpu_us_per_delivery:.2f} us/message; load {result.loadavg[0]:.2f}, "
            f"machine {result.machine_busy_pct:.0f} % busy ({result.others_busy_pct:.0f} % not this bench)"
        )
        if result.delivered != result.expected:
            raise RuntimeError(f"{tag}: {result.delivered} of {result.expected} messages delivered")

        if args.slow_seconds > 0:
            result.slow = await slow_phase(args, tag, server, clients, url, rate)
    finally:
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
        await server.stop()
    return result


async def slow_phase(
    args: argparse.Namespace, tag: str, server: Child, clients: Sequence[Child], url: str, rate: float
) -> Json:
    transport, state = await connect_slow_client(url)
    for _ in range(200):
        if (await server.ask({"cmd": "stats"}))["slow"] >= 1:
            break
        await asyncio.sleep(0.05)
    copies = max(1, math.ceil(args.slow_mb_per_s * 1e6 / (args.message_bytes * rate)))
    say(
        f"{tag}: slow client: {args.slow_seconds:.0f} s of rounds plus {copies} extra copies each "
        f"(~{args.slow_mb_per_s:g} MB/s to it); cut after {args.slow_observe:.0f} s above "
        f"{args.slow_limit // 1024} KiB"
    )
    before = await client_totals(clients)
    t0 = time.monotonic()
    slow = await server.ask(
        {
            "cmd": "slow",
            "rate": rate,
            "size": args.message_bytes,
            "seconds": args.slow_seconds,
            "observe": args.slow_observe,
            "limit": args.slow_limit,
            "copies": copies,
            "grace": args.close_grace,
        },
        timeout=args.slow_seconds * 10 + 60,
    )
    expected = int(slow["sent_normal"])
    received = await wait_delivered(clients, before["received"] + expected, timeout=60)
    slow["others_expected"] = expected
    slow["others_delivered"] = received - before["received"]
    slow["others_closed"] = (await client_totals(clients))["closed"] - before["closed"]
    slow["client_saw_close_code"] = state["close_code"]
    slow["client_saw_disconnect"] = state["disconnected_at"] is not None
    slow["extra_copies_per_round"] = copies
    slow["rate"] = rate
    slow["seconds"] = time.monotonic() - t0
    transport.disconnect(graceful=False)
    say(
        f"{tag}: slow client's write buffer {slow['buffer_at_observe_end'] / 2**20:.1f} MiB after "
        f"{args.slow_observe:.0f} s (server RSS +{slow['rss_growth_at_observe_end'] / 2**20:.1f} MiB, "
        f"pause_writing at {slow['paused_at']} s); cut at {slow['cut_at']} s with "
        f"{slow['cut_buffer'] / 2**20:.1f} MiB buffered, gone at {slow['gone_at']}; others got "
        f"{slow['others_delivered']}/{expected}"
    )
    if slow["others_delivered"] != expected:
        raise RuntimeError(
            f"{tag}: the others got {slow['others_delivered']} of {expected} during the slow test"
        )
    return slow


def median_rows(results: Sequence[RunResult]) -> list[Json]:
    rows: list[Json] = []
    keys = sorted({(r.library, r.connections) for r in results}, key=lambda k: (k[1], k[0]))
    for library, n in keys:
        group = [r for r in results if (r.library, r.connections) == (library, n)]

        def med(pick: Callable[[RunResult], float], group: list[RunResult] = group) -> float:
            return float(statistics.median(pick(r) for r in group))

        slow_buffers = [float(r.slow.get("buffer_at_observe_end", 0)) for r in group if r.slow]
        rows.append(
            {
                "library": library,
                "connections": n,
                "runs": len(group),
                "kb_per_connection": med(lambda r: r.kb_per_connection),
                "cpu_us_per_delivery": med(lambda r: r.cpu_us_per_delivery),
                "deliveries_per_s": med(lambda r: r.deliveries_per_s),
                "server_core_share": med(lambda r: r.server_core_share),
                "clients_cpu_us_per_delivery": med(lambda r: r.clients_cpu_us_per_delivery),
                "connect_seconds": med(lambda r: r.connect_seconds),
                "loadavg_1m": med(lambda r: r.loadavg[0]),
                "machine_busy_pct": med(lambda r: r.machine_busy_pct),
                "others_busy_pct": med(lambda r: r.others_busy_pct),
                "slow_buffer_mib": statistics.median(slow_buffers) / 2**20 if slow_buffers else None,
                "all_cpu_us": [round(r.cpu_us_per_delivery, 2) for r in group],
                "all_kb": [round(r.kb_per_connection, 2) for r in group],
            }
        )
    return rows


def print_table(rows: Sequence[Json]) -> None:
    header = (
        f"{'library':<11} {'conns':>6} {'KB/conn':>8} {'CPU us/msg':>10} {'deliv/s':>8} "
        f"{'srv core':>8} {'load 1m':>7} {'busy %':>6} {'others %':>8} {'slow buf MiB':>12}  runs (CPU us)"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        slow = "-" if r["slow_buffer_mib"] is None else f"{r['slow_buffer_mib']:.1f}"
        print(
            f"{r['library']:<11} {r['connections']:>6} {r['kb_per_connection']:>8.1f} "
            f"{r['cpu_us_per_delivery']:>10.2f} {r['deliveries_per_s']:>8,.0f} "
            f"{100 * r['server_core_share']:>7.0f}% {r['loadavg_1m']:>7.2f} {r['machine_busy_pct']:>6.0f} "
            f"{r['others_busy_pct']:>8.0f} {slow:>12}  {r['all_cpu_us']}"
        )


async def orchestrate(args: argparse.Namespace) -> None:
    limit = raise_nofile()
    need = max(args.connections) // args.client_procs + 200
    if limit < need:
        raise SystemExit(
            f"RLIMIT_NOFILE is {limit}, a client process needs {need}: raise it or add --client-procs"
        )
    versions = library_versions()
    say(
        f"libraries {versions}; loop {args.loop}; nofile {limit}; load {load_average()}; "
        f"{os.cpu_count()} CPUs"
    )
    results: list[RunResult] = []
    for run in range(1, args.runs + 1):
        for n in args.connections:
            for library in args.libraries:
                results.append(await one_run(args, library, n, run))
    rows = median_rows(results)
    print()
    print(f"Medians of {args.runs} run(s); command: {' '.join(sys.argv)}")
    print_table(rows)
    document = {
        "command": sys.argv,
        "versions": versions,
        "python": sys.version,
        "settings": {k: v for k, v in vars(args).items() if k != "role"},
        "medians": rows,
        "runs": [asdict(r) for r in results],
    }
    write_report(Path(args.out), document)


def write_report(out: Path, document: Json) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwritten {out}")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    for name in (*LIBRARIES, "aiofastnet", "uvloop"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


# ------------------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    if argv and argv[0] in ("_server", "_client"):
        role = argv[0]
        inner = argparse.ArgumentParser(prog=f"ws_library_bench {role}")
        inner.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
        if role == "_server":
            inner.add_argument("--library", choices=LIBRARIES, required=True)
            inner.add_argument("--heartbeat", type=float, default=20.0)
            inner.add_argument("--close-grace", type=float, default=1.0)
            inner.add_argument("--picows-read-buffer", type=int, default=16384)
            inner.add_argument("--picows-logger-adapter", action="store_true")
            inner.add_argument("--picows-no-aiofastnet", action="store_true")
        else:
            inner.add_argument("--url", required=True)
            inner.add_argument("--concurrency", type=int, default=100)
        namespace = inner.parse_args(argv[1:])
        namespace.role = role
        return namespace

    parser = argparse.ArgumentParser(
        description="Measure WebSocket libraries for the pusher: idle memory per connection, server CPU per "
        "delivered broadcast message, and what a slow client does to the server. Each server runs alone in "
        "its own process, measured through /proc.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES), help="libraries to measure"
    )
    parser.add_argument(
        "--connections",
        nargs="+",
        type=int,
        default=[5000],
        help="idle connections held (one or more counts)",
    )
    parser.add_argument(
        "--runs", type=int, default=2, help="runs of every library and count (medians reported)"
    )
    parser.add_argument(
        "--deliveries",
        type=float,
        default=50_000,
        help="target messages delivered per second (rounds/s = this / N)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the broadcast")
    parser.add_argument("--message-bytes", type=int, default=200, help="size of the JSON text message")
    parser.add_argument(
        "--client-procs", type=int, default=2, help="client processes holding the connections"
    )
    parser.add_argument(
        "--concurrency", type=int, default=100, help="handshakes in flight per client process"
    )
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop of every process"
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=20.0,
        help="server ping interval and pong timeout in seconds (0: none)",
    )
    parser.add_argument(
        "--picows-read-buffer",
        type=int,
        default=16384,
        help="picows read_buffer_init_size per server connection (picows row)",
    )
    parser.add_argument(
        "--picows-logger-adapter",
        action="store_true",
        help="give picows a LoggerAdapter (no child Logger per connection)",
    )
    parser.add_argument(
        "--picows-no-aiofastnet",
        action="store_true",
        help="picows on the loop's own transports, not aiofastnet's",
    )
    parser.add_argument("--settle", type=float, default=3.0, help="seconds idle before the memory reading")
    parser.add_argument(
        "--slow-seconds", type=float, default=8.0, help="length of the slow-client test (0: skip)"
    )
    parser.add_argument(
        "--slow-observe", type=float, default=5.0, help="seconds the slow client's buffer only grows (no cut)"
    )
    parser.add_argument(
        "--slow-mb-per-s", type=float, default=2.0, help="bytes/s sent to the slow client, in MB"
    )
    parser.add_argument(
        "--slow-limit", type=int, default=1 << 20, help="write buffer over which it is cut, bytes"
    )
    parser.add_argument(
        "--close-grace", type=float, default=1.0, help="seconds between close frame and abort"
    )
    parser.add_argument("--out", default="reports/ws_library_bench.json", help="JSON report")
    namespace = parser.parse_args(argv)
    namespace.role = "main"
    return namespace


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.role == "_server":
        run_loop(server_main(args), args.loop)
    elif args.role == "_client":
        run_loop(client_main(args), args.loop)
    else:
        asyncio.run(orchestrate(args))


if __name__ == "__main__":
    main()

"""The connected crowd of `bourse size measure`: `scenario.users` WebSocket connections to the
pusher, each holding its channels (`Scenario.holders()`), spread over child processes as
`bench/ws_bench.py` does (one Python process cannot hold 10,000 picows connections and read what
they get without becoming the bottleneck on a 2-core box).

A child (`python -m bourse.sizing.crowd`) is spoken to in JSON lines on its stdin and stdout:
`connect` (the users: an optional member token and the channels), `stats` (connections held,
subscribed, messages and bytes received, errors), `quit`. It counts frames and bytes and reads
only control frames (the subscription answers), so its CPU per message stays small: the crowd
costs the box, but the measure is of the pusher."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import picows

from bourse.sizing.probes import cpu_seconds, raise_nofile
from bourse.sizing.scenario import PRIVATE_CHANNELS, Channel, Scenario

Json = dict[str, Any]
USERS_PER_PROCESS = 2500
CONTROL_PREFIX = b'{"type":"'
KEEPALIVE_S = 30.0
"""A connection holding no channel sends a ping this often (the pusher closes one silent for 60 s)."""


@dataclass(frozen=True, slots=True)
class User:
    token: str | None
    """A trader's member token (needed for the private channels), None for a watcher."""
    channels: tuple[str, ...]


def _spread(index: int, count: int, holders: int) -> bool:
    """Whether the `index`-th of `count` holds a channel `holders` of them hold: evenly spread,
    so channels are not all on the same users."""
    if holders <= 0:
        return False
    return (index + 1) * holders // count > index * holders // count


def crowd_users(scenario: Scenario, tokens: dict[int, str]) -> list[User]:
    """Who connects, with what: traders first (members 1..traders, with their tokens), then the
    watchers; each user follows one market (round robin over the scenario's), and holds each
    channel as `holders()` spreads it."""
    holders = scenario.holders()
    traders, users = scenario.traders, scenario.users
    markets = scenario.markets
    crowd = []
    for index in range(users):
        market = markets[index % len(markets)]
        is_trader = index < traders
        channels: list[str] = []
        for channel, count in holders.items():
            if channel in PRIVATE_CHANNELS:
                if is_trader and _spread(index, traders, count):
                    channels.append(str(channel))
            elif _spread(index, users, count):
                channels.append(_public_channel(channel, market))
        private = any(name in (Channel.ORDERS, Channel.BALANCES) for name in channels)
        token = tokens.get(index + 1) if is_trader and private else None
        crowd.append(User(token, tuple(channels)))
    return crowd


def _public_channel(channel: Channel, market: str) -> str:
    return f"kline.1m.{market}" if channel is Channel.KLINE else f"{channel}.{market}"


# ---------------------------------------------------------------------------------- the child


class _Counts:
    def __init__(self) -> None:
        self.held = 0
        self.ready = 0
        self.failed = 0
        self.messages = 0
        self.bytes = 0
        self.errors: dict[str, int] = defaultdict(int)
        self.closed: dict[str, int] = defaultdict(int)
        self.silent: list[_Connection] = []


class _Connection(picows.WSListener):
    def __init__(self, counts: _Counts, user: Sequence[Any]) -> None:
        super().__init__()
        self.counts = counts
        self.token: str | None = user[0]
        self.channels: list[str] = list(user[1])
        self.ready = False
        self.transport: picows.WSTransport | None = None

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport
        self.counts.held += 1
        text = picows.WSMsgType.TEXT
        if self.token is not None:
            transport.send(text, json.dumps({"op": "auth", "token": self.token, "id": 1}).encode())
        if self.channels:
            transport.send(text, json.dumps({"op": "subscribe", "channels": self.channels, "id": 2}).encode())
        else:
            self.ready = True
            self.counts.ready += 1
            self.counts.silent.append(self)

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        kind = frame.msg_type
        if kind == picows.WSMsgType.TEXT:
            payload = frame.get_payload_as_bytes()
            counts = self.counts
            counts.messages += 1
            counts.bytes += len(payload)
            if payload.startswith(CONTROL_PREFIX):
                self._control(payload)
        elif kind == picows.WSMsgType.CLOSE:
            self.counts.closed[str(frame.get_close_code().value)] += 1
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def _control(self, payload: bytes) -> None:
        try:
            frame = json.loads(payload)
        except ValueError:
            self.counts.errors["undecodable"] += 1
            return
        if frame.get("type") == "subscribed" and not self.ready:
            self.ready = True
            self.counts.ready += 1
        elif frame.get("type") == "error":
            self.counts.errors[str(frame.get("code"))] += 1

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.counts.held -= 1
        if self.ready:
            self.counts.ready -= 1
            self.ready = False
        self.counts.closed["disconnected"] += 1


async def _connect_all(url: str, users: list[Any], counts: _Counts, held: list[_Connection]) -> None:
    gate = asyncio.Semaphore(100)

    async def one(user: Sequence[Any]) -> None:
        async with gate:
            for attempt in range(5):
                try:
                    _, listener = await picows.ws_connect(
                        lambda: _Connection(counts, user), url, read_buffer_init_size=4096
                    )
                except (OSError, picows.WSError, TimeoutError):
                    if attempt == 4:
                        counts.failed += 1
                        return
                    await asyncio.sleep(0.2 * (attempt + 1))
                else:
                    held.append(listener)  # type: ignore[arg-type]
                    return

    await asyncio.gather(*(one(user) for user in users))


async def _keepalive(counts: _Counts) -> None:
    ping = json.dumps({"op": "ping"}).encode()
    while True:
        await asyncio.sleep(KEEPALIVE_S)
        for conn in counts.silent:
            if conn.transport is not None:
                with contextlib.suppress(Exception):
                    conn.transport.send(picows.WSMsgType.TEXT, ping)


def _reply(message: Json) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def child_main() -> None:
    raise_nofile()
    counts = _Counts()
    held: list[_Connection] = []
    tasks: list[asyncio.Task[None]] = [asyncio.create_task(_keepalive(counts))]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    _reply({"pid": os.getpid()})
    while line := await reader.readline():
        command: Json = json.loads(line)
        if command["cmd"] == "connect":
            tasks.append(asyncio.create_task(_connect_all(command["url"], command["users"], counts, held)))
            _reply({"started": len(command["users"])})
        elif command["cmd"] == "stats":
            _reply(
                {
                    "held": counts.held,
                    "ready": counts.ready,
                    "failed": counts.failed,
                    "messages": counts.messages,
                    "bytes": counts.bytes,
                    "errors": dict(counts.errors),
                    "closed": dict(counts.closed),
                }
            )
        elif command["cmd"] == "quit":
            for conn in held:
                if conn.transport is not None:
                    conn.transport.disconnect(graceful=False)
            break
    for task in tasks:
        task.cancel()
    _reply({"bye": True})


# ------------------------------------------------------------------------------ the orchestrator


class _Child:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def read(self, timeout: float) -> Json:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"crowd process {self.pid} ended (exit {await self.proc.wait()})")
        answer: Json = json.loads(line)
        return answer

    async def ask(self, command: Json, timeout: float = 60.0) -> Json:
        async with self.lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(command) + "\n").encode())
            await self.proc.stdin.drain()
            return await self.read(timeout)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(RuntimeError, TimeoutError, ConnectionError, ValueError):
                await self.ask({"cmd": "quit"}, timeout=20)
                await asyncio.wait_for(self.proc.wait(), 20)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@dataclass(frozen=True, slots=True)
class CrowdStats:
    held: int
    ready: int
    failed: int
    messages: int
    bytes: int
    errors: dict[str, int]
    closed: dict[str, int]


class Crowd:
    """The crowd's child processes, from this (the measuring) process."""

    def __init__(self, children: list[_Child], users: int) -> None:
        self.children = children
        self.users = users

    @classmethod
    async def start(cls, users: int) -> Crowd:
        count = max(1, math.ceil(users / USERS_PER_PROCESS))
        children = []
        try:
            for _ in range(count):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bourse.sizing.crowd",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=1 << 26,
                    preexec_fn=raise_nofile,
                )
                child = _Child(proc)
                children.append(child)
                await child.read(60)
        except BaseException:
            for child in children:
                await child.stop()
            raise
        return cls(children, users)

    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) or 0.0 for pid in self.pids())

    async def connect(
        self, url: str, users: list[User], timeout: float, progress: Callable[[CrowdStats], None]
    ) -> CrowdStats:
        """Connect every user, then wait until each is subscribed (or failed) or `timeout`."""
        shares: list[list[Any]] = [[] for _ in self.children]
        for index, user in enumerate(users):
            shares[index % len(self.children)].append([user.token, list(user.channels)])
        for child, share in zip(self.children, shares, strict=True):
            await child.ask({"cmd": "connect", "url": url, "users": share})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = loop.time()
        while True:
            await asyncio.sleep(0.5)
            stats = await self.stats()
            if stats.ready + stats.failed >= len(users) or loop.time() > deadline:
                return stats
            if loop.time() - last >= 5.0:
                progress(stats)
                last = loop.time()

    async def stats(self) -> CrowdStats:
        answers = await asyncio.gather(*(child.ask({"cmd": "stats"}) for child in self.children))
        errors: dict[str, int] = defaultdict(int)
        closed: dict[str, int] = defaultdict(int)
        for answer in answers:
            for key, value in answer["errors"].items():
                errors[key] += int(value)
            for key, value in answer["closed"].items():
                closed[key] += int(value)
        return CrowdStats(
            held=sum(int(a["held"]) for a in answers),
            ready=sum(int(a["ready"]) for a in answers),
            failed=sum(int(a["failed"]) for a in answers),
            messages=sum(int(a["messages"]) for a in answers),
            bytes=sum(int(a["bytes"]) for a in answers),
            errors=dict(errors),
            closed=dict(closed),
        )

    async def stop(self) -> None:
        await asyncio.gather(*(child.stop() for child in self.children))


def _run_child() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(child_main())
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(child_main())


if __name__ == "__main__":
    _run_child()

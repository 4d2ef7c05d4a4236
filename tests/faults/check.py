"""After a scenario: settle, then hold every answer a client got against the truth.

The truth is the streams (what was stored: ORDERS; what the engine and the accounts stage did:
EVENTS, ACCOUNTS). The read models (SQL, Redis, the query service, the REST API) must agree
with it once settled. What is checked (`Findings`):

- **lost**: an order acknowledged to the client (HTTP 201/202/200, a RabbitMQ confirm or an
  accepted/submitted/duplicate reply) that the streams do not hold, or that was answered
  accepted and was not;
- **lies**: an answer the truth contradicts, by kind: a refusal ("nothing was accepted", 4xx,
  a rejected reply) of an order that lives, two orders for one `client_order_id`, a 202 never
  decided, an acknowledged order answered 404, a cancel or amend answered one way and applied
  the other, a final status answered that was not the end, a read showing open an order the
  client was already told ended;
- **read diffs**: an order whose status or executed amount differs in a read model, or is
  missing there; a market's ticker or k-lines (every period) that differ, in SQL, Redis or the
  statistics service, from the fold of the EVENTS stream (`MarketStatistics`);
- invariants: no duplicate trade id, no order executed beyond its amount (and trades adding up
  to executed), balances conserved per currency (stream and SQL), none negative, `bourse audit`
  clean, no funds locked for a member without open orders, and, after every member's orders
  are cancelled, nothing open and nothing locked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aio_pika
import aiohttp
from nats.aio.client import Client
from redis.asyncio import Redis
from sqlalchemy import text

from bourse.adapters.query_client import QueryClient
from bourse.adapters.redis_read_model import ORDER_DECODER, RedisKeys, RedisReadModel
from bourse.adapters.sql.database import create_engine
from bourse.adapters.sql.read_model import SqlReadModel
from bourse.adapters.statistics_client import StatisticsClient
from bourse.application.catalog import load_catalog
from bourse.application.market_statistics import MarketStatistics
from bourse.application.ports import QueryFailed, StatisticsReads
from bourse.contracts.messages import ACCOUNTS_BATCH_DECODER, ACCOUNTS_REPORTS_DECODER, EVENT_BATCH_DECODER
from bourse.contracts.subjects import ACCOUNTS, EVENTS, ORDERS, STREAMS
from bourse.domain.candles import PERIODS
from bourse.domain.orders import (
    OrderAccepted,
    OrderAmended,
    OrderClosed,
    OrderRejected,
    OrderUpdated,
    PlaceOrder,
    Trade,
)
from tests.amqp.helpers import RABBITMQ_URL
from tests.e2e.test_crash_recovery import read_stream
from tests.faults.load import OPEN_STATUSES, Attempt
from tests.faults.system import FaultSystem

EXAMPLES = 5
"""Examples kept per kind of finding."""
ACKED_HTTP = ("200", "201", "202")
ACKED_AMQP = ("accepted", "submitted", "duplicate", "confirmed")


@dataclass
class Truth:
    """What the streams hold."""

    placed: dict[int, PlaceOrder] = field(default_factory=dict)
    by_client: dict[tuple[int, str], list[int]] = field(default_factory=lambda: defaultdict(list))
    accepted: dict[int, OrderAccepted] = field(default_factory=dict)
    accepted_twice: int = 0
    rejected: dict[int, str] = field(default_factory=dict)
    status: dict[int, str] = field(default_factory=dict)
    executed: dict[int, int] = field(default_factory=dict)
    amount: dict[int, int] = field(default_factory=dict)
    amended: Counter[int] = field(default_factory=Counter)
    traded: Counter[int] = field(default_factory=Counter)
    trade_ids: Counter[tuple[str, int]] = field(default_factory=Counter)
    balances: dict[tuple[int, int, str], tuple[int, int]] = field(default_factory=dict)
    """(accounts shard, member, currency) -> (available, locked), as last reported."""

    def decided(self, order_id: int) -> bool:
        return order_id in self.accepted or order_id in self.rejected

    def expected_status(self, order_id: int) -> str:
        if order_id in self.accepted:
            return self.status[order_id]
        return "closed"  # refused before or by the engine

    def open_members(self) -> set[int]:
        return {
            self.accepted[order_id].member_id
            for order_id, status in self.status.items()
            if status in OPEN_STATUSES
        }


async def read_truth(nc: Client, namespace: str) -> Truth:
    truth = Truth()
    for data in await read_stream(nc, ORDERS.wildcard(namespace)):
        for item in ACCOUNTS_BATCH_DECODER.decode(data).items:
            if isinstance(item, PlaceOrder) and item.order_id not in truth.placed:
                truth.placed[item.order_id] = item
                if item.client_order_id is not None:
                    truth.by_client[(item.member_id, item.client_order_id)].append(item.order_id)
    for data in await read_stream(nc, EVENTS.wildcard(namespace)):
        for event in EVENT_BATCH_DECODER.decode(data).events:
            if isinstance(event, OrderAccepted):
                if event.order_id in truth.accepted:
                    truth.accepted_twice += 1
                truth.accepted[event.order_id] = event
                truth.status[event.order_id] = "submitted"
                truth.amount[event.order_id] = event.amount
            elif isinstance(event, OrderRejected):
                if event.command == "place":
                    truth.rejected[event.order_id] = str(event.reason)
            elif isinstance(event, Trade):
                truth.trade_ids[(event.market, event.trade_id)] += 1
                truth.traded[event.maker_order_id] += event.amount
                truth.traded[event.taker_order_id] += event.amount
            elif isinstance(event, OrderUpdated | OrderClosed):
                truth.status[event.order_id] = str(event.status)
                truth.executed[event.order_id] = max(truth.executed.get(event.order_id, 0), event.executed)
            elif isinstance(event, OrderAmended):
                truth.amended[event.order_id] += 1
                truth.amount[event.order_id] = event.amount
    seen: set[tuple[int, int]] = set()
    for data in await read_stream(nc, ACCOUNTS.wildcard(namespace)):
        for report in ACCOUNTS_REPORTS_DECODER.decode(data).reports:
            if (report.shard, report.seq) in seen:  # a replay may repeat a report
                continue
            seen.add((report.shard, report.seq))
            for refusal in report.rejected:
                if refusal.command == "place":
                    truth.rejected[refusal.order_id] = str(refusal.reason)
            for change in report.balances:
                truth.balances[(report.shard, change.member_id, change.currency)] = (
                    change.available,
                    change.locked,
                )
    return truth


# --- settling ---------------------------------------------------------------------------------


class Observer:
    """The checker's own connections (direct, never through the proxies)."""

    def __init__(self, system: FaultSystem, nc: Client) -> None:
        self.system = system
        self.nc = nc
        self.js = nc.jetstream()
        self.engine = create_engine(system.sql_url)
        self.redis = Redis.from_url(system.redis_url, socket_timeout=5)
        self.keys = RedisKeys(system.namespace)
        self.queries = QueryClient(nc, system.namespace, timeout=5.0)
        self.statistics = StatisticsClient(nc, system.namespace, timeout=5.0)
        self.markets = list(load_catalog(system.workdir / "markets.toml").markets)

    async def close(self) -> None:
        await self.engine.dispose()
        await self.redis.aclose()

    async def last_seqs(self) -> dict[str, int]:
        ns = self.system.namespace
        return {spec.kind: (await self.js.stream_info(spec.name(ns))).state.last_seq for spec in STREAMS}

    async def busy(self) -> list[str]:
        """What is still behind (empty once everything has caught up with the streams)."""
        ns = self.system.namespace
        behind: list[str] = []
        before = await self.last_seqs()
        for spec in STREAMS:
            for consumer in await self.js.consumers_info(spec.name(ns)):
                if consumer.config.durable_name and (consumer.num_pending or consumer.num_ack_pending):
                    behind.append(f"{consumer.config.durable_name} {consumer.num_pending}")
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT stream, stream_seq FROM applied_positions WHERE shard = '*'")
            )
            sql = {str(stream): int(seq) for stream, seq in rows.all()}
        for spec in (EVENTS, ACCOUNTS):
            if sql.get(spec.name(ns), 0) < before[spec.kind]:
                behind.append(f"sql {spec.kind}")
        positions = {
            (k.decode() if isinstance(k, bytes) else str(k)): v
            for k, v in (await self.redis.hgetall(self.keys.positions)).items()
        }
        for spec in (EVENTS, ACCOUNTS):
            if int(positions.get(f"{spec.kind}:*", 0)) < before[spec.kind]:
                behind.append(f"redis {spec.kind}")
        if "ready" not in positions:
            behind.append("redis not ready")
        ready = await self.queries.ready()
        if ready.events_seq < before[EVENTS.kind] or ready.accounts_seq < before[ACCOUNTS.kind]:
            behind.append("query")
        folded = await self.statistics.positions(self.markets)
        if min(position.events_seq for position in folded) < before[EVENTS.kind]:
            behind.append("statistics")
        connection = await aio_pika.connect(RABBITMQ_URL)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(self.system.amqp_topology.queue, passive=True)
            if queue.declaration_result.message_count:
                behind.append(f"rabbitmq {queue.declaration_result.message_count}")
        if await self.last_seqs() != before:
            behind.append("streams growing")
        return behind

    async def settle(self, timeout_s: float = 120.0) -> tuple[float | None, list[str]]:
        """Seconds until three checks in a row find nothing behind (None: not within the
        timeout), and what was still behind at the last check."""
        started = time.monotonic()
        quiet = 0
        behind: list[str] = []
        while quiet < 3:
            if time.monotonic() - started > timeout_s:
                return None, behind
            await asyncio.sleep(0.5)
            try:
                behind = await self.busy()
            except Exception as exc:
                behind = [f"{type(exc).__name__}: {exc}"]
            quiet = 0 if behind else quiet + 1
        return time.monotonic() - started, []


# --- findings ---------------------------------------------------------------------------------


@dataclass
class Findings:
    acked: int = 0
    lost: Counter[str] = field(default_factory=Counter)
    lies: Counter[str] = field(default_factory=Counter)
    unknown: int = 0
    """Orders whose every attempt went unanswered: the client cannot know, either way is true."""
    errors: Counter[str] = field(default_factory=Counter)
    read_diffs: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    trades: int = 0
    duplicate_trades: int = 0
    overfilled: int = 0
    conservation: dict[str, int] = field(default_factory=dict)
    """Currency -> (sum of balances) - deposits, for the stream and for SQL; empty when conserved."""
    negative: int = 0
    audit_ok: bool | None = None
    audit_output: str = ""
    locked_idle: int = 0
    """Members with funds locked and no open order (after settling)."""
    open_left: int = 0
    """Orders still open after every member's orders were cancelled."""
    locked_left: int = 0
    """(member, currency) with funds locked after every member's orders were cancelled."""
    settle_s: float | None = None
    notes: list[str] = field(default_factory=list)

    def example(self, kind: str, text: str) -> None:
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(text)

    def lie(self, kind: str, text: str) -> None:
        self.lies[kind] += 1
        self.example(kind, text)

    def lose(self, kind: str, text: str) -> None:
        self.lost[kind] += 1
        self.example(kind, text)

    @property
    def server_errors(self) -> int:
        return sum(count for label, count in self.errors.items() if label.split()[1].startswith("5"))

    @property
    def internal_errors(self) -> int:
        """HTTP 500: a bug, whatever the fault."""
        return sum(count for label, count in self.errors.items() if label.split()[1] == "500")


def check_answers(attempts: list[Attempt], truth: Truth, findings: Findings) -> None:
    """Hold every answer against the truth (see the module docstring)."""
    by_client: dict[tuple[int, str], list[Attempt]] = defaultdict(list)
    for attempt in attempts:
        if not (attempt.status in ACKED_AMQP or attempt.status.startswith("2")):
            findings.errors[attempt.label] += 1
        if attempt.kind in ("place", "amqp"):
            assert attempt.client_order_id is not None
            by_client[(attempt.member, attempt.client_order_id)].append(attempt)
        else:
            _check_command(attempt, truth, findings)
    for (member, client_id), tries in by_client.items():
        _check_order(member, client_id, tries, truth, findings)
    _check_stale_reads(attempts, findings)


FINAL_STATUSES = ("executed", "cancelled", "closed")


def _check_stale_reads(attempts: list[Attempt], findings: Findings) -> None:
    """A read sent after the client was told its order ended must not show it open (read
    your writes: a read model that is behind must not answer 200 as if it were current)."""
    ended: dict[int, float] = {}
    for attempt in attempts:
        if attempt.order_id is None or attempt.order_status not in FINAL_STATUSES:
            continue
        if attempt.status in ("200", "201", "accepted"):
            ended[attempt.order_id] = min(attempt.done, ended.get(attempt.order_id, attempt.done))
    for attempt in attempts:
        if attempt.kind != "get" or attempt.status != "200" or attempt.order_status not in OPEN_STATUSES:
            continue
        told_at = ended.get(attempt.order_id or 0)
        if told_at is not None and attempt.sent > told_at:
            findings.lie(
                "get 200 open after the client was told the order ended",
                f"order {attempt.order_id}: told ended at {told_at:.2f}, read {attempt.order_status} "
                f"at {attempt.sent:.2f}",
            )


def _acked(attempt: Attempt) -> bool:
    return attempt.status in (ACKED_AMQP if attempt.kind == "amqp" else ACKED_HTTP)


def _refused(attempt: Attempt) -> bool:
    """The client was told nothing was accepted: a 4xx, a 503 (the command never left the
    gateway), a rejected reply. A 500 or a 504 `outcome_unknown` promises nothing either way."""
    if attempt.kind == "amqp":
        return attempt.status == "rejected"
    return attempt.status.startswith("4") or attempt.status == "503"


def _unknown(attempt: Attempt) -> bool:
    """No answer, or an answer that says the outcome is not known yet."""
    return not attempt.answered or attempt.status in ("500", "504")


def _check_order(member: int, client_id: str, tries: list[Attempt], truth: Truth, findings: Findings) -> None:
    stored = truth.by_client.get((member, client_id), [])
    live = [order_id for order_id in stored if order_id in truth.accepted]
    told = {
        attempt.order_id
        for attempt in tries
        if (_acked(attempt) or _unknown(attempt)) and attempt.order_id is not None
    }
    where = f"{client_id} (member {member}): answers {[a.label for a in tries]}, stored {stored}, live {live}"
    if any(_acked(attempt) for attempt in tries):
        findings.acked += 1
    elif all(_unknown(attempt) for attempt in tries):
        findings.unknown += 1
    if len(live) > 1:
        findings.lie("two orders for one client_order_id", where)
    for attempt in tries:
        if _unknown(attempt) and attempt.order_id in truth.placed and not truth.decided(attempt.order_id):
            findings.lie(f"{attempt.kind} {attempt.status}, stored, never decided", where)
        if not _acked(attempt):
            continue
        if attempt.order_id is None:  # RabbitMQ confirmed it, no reply: the order must exist
            if not stored:
                findings.lose("confirmed by RabbitMQ, never stored", where)
            elif not any(truth.decided(order_id) for order_id in stored):
                findings.lie("acknowledged, never decided", where)
            continue
        order_id = attempt.order_id
        if order_id not in truth.placed:
            findings.lose(f"{attempt.kind} {attempt.status}, not in the streams", where)
        elif attempt.status in ("201", "200", "accepted", "duplicate") and order_id not in truth.accepted:
            findings.lose(f"{attempt.kind} {attempt.status}, not accepted", where)
        elif attempt.order_status in FINAL_STATUSES and attempt.order_status != truth.status.get(order_id):
            findings.lie(
                f"{attempt.kind} {attempt.status} said {attempt.order_status}, ended otherwise", where
            )
        elif not truth.decided(order_id):
            findings.lie(f"{attempt.kind} {attempt.status}, never decided", where)
    if any(_refused(attempt) for attempt in tries) and [
        order_id for order_id in live if order_id not in told
    ]:
        kinds = sorted({attempt.label for attempt in tries if _refused(attempt)})
        findings.lie(f"refused ({', '.join(kinds)}), stored anyway", where)


def _check_command(attempt: Attempt, truth: Truth, findings: Findings) -> None:
    """A cancel, amend or read of an order the client was told exists."""
    order_id = attempt.order_id
    assert order_id is not None
    status = truth.status.get(order_id)
    where = f"{attempt.label} of {order_id} (answered {attempt.order_status}), ends {status}"
    exists = order_id in truth.accepted
    if attempt.status == "404" and exists:
        findings.lie(f"{attempt.kind} 404 of an acknowledged order", where)
    if attempt.kind == "cancel":
        cancelled = status == "cancelled"
        if attempt.status == "200":
            if attempt.order_status in OPEN_STATUSES and cancelled:
                findings.lie("cancel 200 with an open status, cancelled later", where)
            elif attempt.order_status == "cancelled" and not cancelled:
                findings.lie("cancel 200 cancelled, not cancelled", where)
        elif attempt.status == "202" and status in OPEN_STATUSES:
            findings.lie("cancel 202 pending, never applied", where)
        elif _refused(attempt) and attempt.status != "404" and cancelled:
            findings.lie(f"cancel {attempt.status}, applied", where)
    elif attempt.kind == "amend":
        amended = truth.amended[order_id] > 0
        if attempt.status == "200" and not amended:
            findings.lie("amend 200, not applied", where)
        elif attempt.status == "202" and not amended and status in OPEN_STATUSES:
            findings.lie("amend 202 pending, never applied", where)
        elif _refused(attempt) and amended:
            findings.lie(f"amend {attempt.status}, applied", where)


def check_invariants(truth: Truth, deposits: dict[str, int], findings: Findings) -> None:
    findings.trades = len(truth.trade_ids)
    findings.duplicate_trades = sum(count - 1 for count in truth.trade_ids.values() if count > 1)
    findings.duplicate_trades += truth.accepted_twice
    for order_id, event in truth.accepted.items():
        executed = truth.executed.get(order_id, 0)
        if truth.traded[order_id] > truth.amount[order_id] or truth.traded[order_id] != executed:
            findings.overfilled += 1
            findings.example(
                "overfill",
                f"{order_id} ({event.market}): amount {truth.amount[order_id]}, executed {executed}, "
                f"traded {truth.traded[order_id]}",
            )
    totals: Counter[str] = Counter()
    for (_, member, currency), (available, locked) in truth.balances.items():
        totals[currency] += available + locked
        if available < 0 or locked < 0:
            findings.negative += 1
            findings.example("negative balance", f"member {member} {currency}: {available}, {locked}")
    for currency, amount in deposits.items():
        if totals[currency] != amount:
            findings.conservation[f"stream {currency}"] = totals[currency] - amount
    open_members = truth.open_members()
    for (_, member, currency), (_, locked) in truth.balances.items():
        if locked and member > 0 and member not in open_members:
            findings.locked_idle += 1
            findings.example("locked without open orders", f"member {member} {currency}: {locked}")


# --- the read models --------------------------------------------------------------------------


async def check_reads(
    observer: Observer, truth: Truth, members: list[int], tokens: dict[int, str], findings: Findings
) -> None:
    """Every decided order of these members, as SQL, Redis, the query service and the REST API
    show it, against the streams."""
    system = observer.system
    catalog = load_catalog(system.workdir / "markets.toml")
    wanted = {
        order_id: place
        for order_id, place in truth.placed.items()
        if place.member_id in members and truth.decided(order_id)
    }
    expected = {
        order_id: (truth.expected_status(order_id), truth.executed.get(order_id, 0)) for order_id in wanted
    }

    sql: dict[int, tuple[str, int]] = {}
    async with observer.engine.connect() as conn:
        for order_id, status, executed in (
            await conn.execute(text("SELECT id, status, executed FROM orders"))
        ).all():
            sql[int(order_id)] = (str(status), int(executed))
    redis: dict[int, tuple[str, int]] = {}
    ids = list(wanted)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        raws: list[bytes | str | None] = await observer.redis.mget([observer.keys.order(i) for i in chunk])
        for order_id, raw in zip(chunk, raws, strict=True):
            if raw is not None:
                view = ORDER_DECODER.decode(raw.encode() if isinstance(raw, str) else raw)
                redis[order_id] = (str(view.status), view.executed)
    query: dict[int, tuple[str, int]] = {}
    rest: dict[int, tuple[str, int]] = {}
    async with aiohttp.ClientSession(system.api + "/", timeout=aiohttp.ClientTimeout(total=15)) as http:
        for member in members:
            before: int | None = None
            while True:
                try:
                    views = await observer.queries.orders(member, limit=1000, before_id=before)
                except QueryFailed as exc:
                    findings.example("query errors", f"member {member}: {exc}")
                    break
                for view in views:
                    query[view.id] = (str(view.status), view.executed)
                if len(views) < 1000:
                    break
                before = views[-1].id
            await _rest_orders(http, member, tokens[member], catalog, rest, findings)
    for source, seen in (("sql", sql), ("redis", redis), ("query", query), ("rest", rest)):
        for order_id, want in expected.items():
            got = seen.get(order_id)
            if got != want:
                findings.read_diffs[source] += 1
                findings.example(f"read diff {source}", f"{order_id}: streams {want}, {source} {got}")


async def check_statistics(observer: Observer, findings: Findings) -> None:
    """Every market's ticker and k-lines (every period, the newest 1000), as SQL, Redis and the
    statistics service answer them, against the fold of the EVENTS stream."""
    system = observer.system
    truth = {market: MarketStatistics(market) for market in observer.markets}
    for data in await read_stream(observer.nc, EVENTS.wildcard(system.namespace)):
        batch = EVENT_BATCH_DECODER.decode(data)
        if batch.market in truth:
            truth[batch.market].apply(batch)  # a repeat (replay past the dedup window) is skipped
    sql = SqlReadModel(observer.engine, markets=observer.markets, timeout_s=10.0)
    models: list[tuple[str, StatisticsReads]] = [
        ("sql", sql),
        ("redis", RedisReadModel(observer.redis, system.namespace)),
        ("statistics", observer.statistics),
    ]
    for market, folded in truth.items():
        want_ticker = folded.current_ticker()
        want = {period: folded.candles.candles(period, limit=1000) for period in PERIODS}
        for source, model in models:
            try:
                ticker = await model.ticker(market)
                candles = {period: await model.klines(market, period, None, None, 1000) for period in PERIODS}
            except QueryFailed as exc:
                findings.read_diffs[f"statistics {source}"] += 1
                findings.example(f"statistics diff {source}", f"{market}: {exc}")
                continue
            if ticker != want_ticker:
                findings.read_diffs[f"statistics {source}"] += 1
                findings.example(
                    f"statistics diff {source}", f"{market} ticker: fold {want_ticker}, {source} {ticker}"
                )
            for period, expected in want.items():
                if candles[period] != expected:
                    findings.read_diffs[f"statistics {source}"] += 1
                    findings.example(f"statistics diff {source}", f"{market} {period.value} k-lines differ")


async def _rest_orders(
    http: aiohttp.ClientSession,
    member: int,
    token: str,
    catalog: Any,
    out: dict[int, tuple[str, int]],
    findings: Findings,
) -> None:
    params: dict[str, str] = {"limit": "1000"}
    headers = {"Authorization": f"Bearer {token}"}
    while True:
        try:
            async with http.get("orders", params=params, headers=headers) as resp:
                if resp.status != 200:
                    findings.errors[f"read {resp.status}"] += 1
                    findings.example(
                        "rest read errors", f"member {member}: {resp.status} {await resp.text()}"
                    )
                    return
                rows = await resp.json()
        except Exception as exc:
            findings.errors[f"read exc:{type(exc).__name__}"] += 1
            return
        for row in rows:
            precision = catalog.markets[row["market"]].amount_precision
            out[int(row["id"])] = (row["status"], int(Decimal(row["executed"]).scaleb(precision)))
        if len(rows) < 1000:
            return
        params["before_id"] = rows[-1]["id"]


async def check_sql(observer: Observer, truth: Truth, deposits: dict[str, int], findings: Findings) -> None:
    async with observer.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT currency, SUM(available + locked) FROM balances GROUP BY currency")
        )
        totals = {str(currency): int(total) for currency, total in rows.all()}
        trades = int((await conn.execute(text("SELECT COUNT(*) FROM trades"))).scalar() or 0)
    for currency, amount in deposits.items():
        if totals.get(currency, 0) != amount:
            findings.conservation[f"sql {currency}"] = totals.get(currency, 0) - amount
    if trades != len(truth.trade_ids):
        findings.read_diffs["sql trades"] += abs(trades - len(truth.trade_ids))


async def run_audit(system: FaultSystem, findings: Findings) -> None:
    """`bourse audit` against the database, as an operator would run it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BOURSE_")}
    env.update(BOURSE_SQL_URL=system.sql_url, BOURSE_DATA_DIR=str(system.workdir))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bourse",
        "audit",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    findings.audit_ok = process.returncode == 0
    findings.audit_output = output.decode(errors="replace")


async def cancel_everything(system: FaultSystem, members: list[int]) -> int:
    """DELETE /orders for every member: what is left open afterwards is checked."""
    asked = 0
    async with aiohttp.ClientSession(system.api + "/", timeout=aiohttp.ClientTimeout(total=15)) as http:
        for member in members:
            with contextlib.suppress(Exception):
                headers = {"Authorization": f"Bearer {system.token(member)}"}
                async with http.delete("orders", headers=headers) as resp:
                    if resp.status == 200:
                        asked += len(await resp.json())
    return asked


async def full_check(
    system: FaultSystem, nc: Client, attempts: list[Attempt], *, settle_timeout_s: float = 120.0
) -> Findings:
    """Settle, check the answers, the read models and the invariants, cancel every order,
    settle again and check that nothing is left open or locked; the audit last."""
    findings = Findings()
    observer = Observer(system, nc)
    try:
        findings.settle_s, behind = await observer.settle(settle_timeout_s)
        if findings.settle_s is None:
            findings.notes.append(f"did not settle in {settle_timeout_s:.0f} s: {behind}")
        truth = await read_truth(nc, system.namespace)
        check_answers(attempts, truth, findings)
        check_invariants(truth, system.deposits, findings)
        members = system.member_ids
        tokens = {member: system.token(member) for member in members}
        await check_reads(observer, truth, members, tokens, findings)
        await check_statistics(observer, findings)
        await check_sql(observer, truth, system.deposits, findings)
        asked = await cancel_everything(system, members)
        settled, behind = await observer.settle(settle_timeout_s)
        if settled is None:
            findings.notes.append(f"did not settle after cancelling {asked} orders: {behind}")
        after = await read_truth(nc, system.namespace)
        findings.open_left = sum(1 for status in after.status.values() if status in OPEN_STATUSES)
        findings.locked_left = sum(
            1 for (_, member, _), (_, locked) in after.balances.items() if locked and member > 0
        )
        conserved = Findings()
        check_invariants(after, system.deposits, conserved)
        for key, value in conserved.conservation.items():
            findings.conservation[f"{key} (after cancelling)"] = value
        await run_audit(system, findings)
    finally:
        await observer.close()
    return findings

"""bench/scale_out.py's pure parts: which processes each target runs and where, what the query
target reads and the pusher target's clients hold, and how a window's figures and the table
come out of the readings (no system is started here)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import cast

import pytest

import scale_out  # bench/ (pytest pythonpath)
from bourse.application.push_feeds import parse_channel
from bourse.sizing.workload import OrderMaker
from scale_out import (
    MARKETS,
    READS,
    TARGETS,
    Load,
    Mark,
    OrderRequests,
    Proc,
    ReadRequests,
    System,
    layout,
    parse_args,
    public_channels,
    read_path,
    summarize,
    table,
    window_result,
)


def test_each_target_caps_its_own_service_and_the_rest_has_what_it_needs() -> None:
    for target in TARGETS:
        steps = layout(target, 3, gateways=2)
        spawns = [spawn for step in steps for spawn in step]
        capped = [spawn for spawn in spawns if spawn.group.startswith("instance")]
        assert [spawn.service for spawn in capped] == [target] * 3
        assert [spawn.group for spawn in capped] == ["instance0", "instance1", "instance2"]
        assert len({spawn.label for spawn in spawns}) == len(spawns)
        services = {spawn.service for spawn in spawns}
        assert {"accounts", "matching", "auth", "ids", "gateway"} <= services
        assert ("statistics" in services) == (target == "pusher")
        assert steps[0][0].service == "accounts"  # first: its start makes the demo deposits
        rest_gateways = [s for s in spawns if s.service == "gateway" and s.group == "rest"]
        assert len(rest_gateways) == (0 if target == "gateway" else 2)
    shards = [spawn.env for spawn in layout("accounts", 2, gateways=1)[0]]
    assert shards == [{"BOURSE_ACCOUNTS_SHARD_IDS": "[0]"}, {"BOURSE_ACCOUNTS_SHARD_IDS": "[1]"}]
    with pytest.raises(ValueError, match="unknown target"):
        layout("cache", 1, gateways=1)


def test_the_query_target_reads_what_the_query_service_answers_in_equal_shares() -> None:
    assert read_path("open_orders", "btc_usd") == "/api/v3/orders?state=open&limit=20"
    assert read_path("balances", "btc_usd") == "/api/v3/balances"
    assert read_path("depth", "eth_btc") == "/api/v3/markets/eth_btc/depth?limit=20"
    with pytest.raises(ValueError, match="unknown read"):
        read_path("tickers", "btc_usd")
    tokens = {member: f"token-{member}" for member in range(1, 11)}
    reads = ReadRequests(tokens, MARKETS, seed=3)
    paths = [reads.path() for _ in range(3000)]
    again = ReadRequests(tokens, MARKETS, seed=3)
    assert paths == [again.path() for _ in range(3000)]  # seeded
    orders = sum(path.startswith("/api/v3/orders?") for _, path in paths)
    balances = sum(path == "/api/v3/balances" for _, path in paths)
    depth = sum(path.endswith("/depth?limit=20") for _, path in paths)
    assert orders + balances + depth == 3000  # nothing but the three kinds of READS
    assert len(READS) == 3
    assert all(800 < count < 1200 for count in (orders, balances, depth))
    assert {member for member, _ in paths} == set(tokens)
    raw = reads("127.0.0.1:8000")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"GET /api/v3/")
    assert body == b""
    assert b"Authorization: Bearer token-" in head
    assert b"Host: 127.0.0.1:8000" in head


def test_the_pusher_clients_hold_ticker_trades_and_depth_of_every_market() -> None:
    channels = public_channels(MARKETS)
    assert len(channels) == 3 * len(MARKETS) <= 50  # the pusher's subscriptions per connection
    for name in channels:
        parse_channel(name, MARKETS)  # each a channel the pusher accepts
    assert {channel.split(".")[0] for channel in channels} == {"ticker", "trades", "depth"}
    assert all(name.endswith("@100ms") for name in channels if not name.startswith("ticker"))


def proc(label: str, group: str, service: str) -> Proc:
    return Proc(label, cast(subprocess.Popen[bytes], None), None, group, service)


def load_with(answers: list[tuple[float, float, int]]) -> Load:
    load = Load([1], 1, 1.0, OrderRequests({1: "t"}, OrderMaker(MARKETS, 1)))
    for sent, done, code in answers:
        load.sent.append(sent)
        load.done.append(done)
        load.codes.append(code)
    return load


def test_a_pusher_window_counts_what_the_instances_delivered() -> None:
    system = System(
        Path("/nonexistent"),
        {},
        [
            proc("gateway-0", "rest", "gateway"),
            proc("pusher-0", "instance0", "pusher"),
            proc("pusher-1", "instance1", "pusher"),
        ],
    )
    cpu0 = {"gateway-0": 1.0, "pusher-0": 1.0, "pusher-1": 1.0, "load generator": 1.0, "clients-0.0": 1.0}
    cpu1 = {"gateway-0": 1.5, "pusher-0": 2.0, "pusher-1": 2.0, "load generator": 1.2, "clients-0.0": 1.4}
    before = Mark(
        100.0,
        dict(cpu0),
        {"instance0": (0, 0), "instance1": (0, 0)},
        (0, 100),
        {"pusher-0": 0.0, "pusher-1": 0.0},
        0,
    )
    after = Mark(
        110.0,
        dict(cpu1),
        {"instance0": (1000, 900), "instance1": (1000, 1000)},
        (80, 200),
        {"pusher-0": 90_000.0, "pusher-1": 100_000.0},
        189_000,
    )
    load = load_with([(100.5, 100.51, 201)] * 600 + [(105.0, 105.2, 0)])
    w = window_result("pusher", system, load, before, after, 2, 0.1)
    assert w["per_s"] == pytest.approx(19_000)
    assert w["per_instance_per_s"] == pytest.approx(9_500)
    assert w["instance_per_s"] == {"pusher-0": pytest.approx(9_000), "pusher-1": pytest.approx(10_000)}
    assert w["clients_received_per_s"] == pytest.approx(18_900)
    assert w["flow_orders_per_s"] == pytest.approx(60)
    assert w["flow_refused_or_failed"] == 1
    assert w["p50_ms"] is None
    assert w["p99_ms"] is None
    assert w["refused_or_failed"] == 0
    assert w["instance_cap_used"] == {"pusher-0": pytest.approx(1.0), "pusher-1": pytest.approx(1.0)}
    assert w["instance_us_per_unit"] == pytest.approx(0.2 / 19_000 * 1e6)
    assert w["throttled_share"] == {"instance0": pytest.approx(0.9), "instance1": pytest.approx(1.0)}
    assert w["rest_cores"] == {"gateway-0": pytest.approx(0.05)}
    assert w["load_cores"] == {"load generator": pytest.approx(0.02), "clients-0.0": pytest.approx(0.04)}

    summary = summarize([w, w])
    assert summary["p50_ms"] is None
    assert summary["clients_received_per_s"] == pytest.approx(18_900)
    assert summary["load_cores"] == pytest.approx(0.06)
    assert summary["load_busiest_cores"] == pytest.approx(0.04)
    text = table({"pusher": [{"instances": 2, "cap_cores": 0.1, "summary": summary}]})
    row = text.splitlines()[-1]
    assert row.startswith("| pusher | 2 | 0.1 | messages delivered | 19000 | 9500 | 100% | n/a | n/a |")
    assert len(row.split("|")) == len(text.splitlines()[0].split("|"))


def test_a_query_window_counts_the_reads_answered_with_their_latency() -> None:
    system = System(
        Path("/nonexistent"),
        {},
        [proc("gateway-0", "rest", "gateway"), proc("query-0", "instance0", "query")],
    )
    before = Mark(
        0.0,
        {"gateway-0": 0.0, "query-0": 0.0, "load generator": 0.0},
        {"instance0": (0, 0)},
        (0, 1),
        {"query-0": 0.0},
    )
    after = Mark(
        10.0,
        {"gateway-0": 2.0, "query-0": 0.2, "load generator": 0.5},
        {"instance0": (200, 200)},
        (1, 2),
        {"query-0": 5020.0},
    )
    load = Load([1], 1, 1.0, ReadRequests({1: "t"}, MARKETS))
    load.sent += [1.0 + i / 1000 for i in range(5000)] + [2.0]
    load.done += [1.02 + i / 1000 for i in range(5000)] + [2.5]
    load.codes += [200] * 5000 + [503]
    w = window_result("query", system, load, before, after, 1, 0.02)
    assert w["per_s"] == pytest.approx(500)
    assert w["refused_or_failed"] == 1
    assert w["p50_ms"] == pytest.approx(20)
    assert w["p99_ms"] == pytest.approx(20)
    assert w["instance_per_s"] == {"query-0": pytest.approx(502)}
    assert w["instance_cap_used"] == {"query-0": pytest.approx(1.0)}
    assert w["instance_us_per_unit"] == pytest.approx(40)
    assert "clients_received_per_s" not in w


def test_the_options_of_the_new_targets() -> None:
    args = parse_args(["--target", "query", "--target", "pusher", "--target", "query"])
    assert args.targets == ["query", "pusher"]
    assert args.caps["query"] == scale_out.QUERY_CAP
    assert args.caps["pusher"] == scale_out.PUSHER_CAP
    assert args.gateways == {"gateway": 0, "accounts": 2, "query": 3, "pusher": 1}
    assert parse_args([]).targets == ["gateway", "accounts"]
    assert parse_args(["--target", "pusher", "--gateways", "2"]).gateways["pusher"] == 2
    with pytest.raises(SystemExit):
        parse_args(["--target", "pusher", "--pusher-cap", "0.9"])  # three would take 2.7 cores

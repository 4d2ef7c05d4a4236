"""A profile made by hand for the plan's tests: round synthetic numbers, so every figure of a plan
can be worked out on paper (never a measured file).

The scenario: 1,000 users, 100 of them trading one limit order a second each (100 orders/s) on
two markets, 10 depth reads a second in all; half the users hold the trades channel, traders
their orders. Per limit order: gateway 200 µs, accounts 50, matching 100, statistics 20,
persistence 40, cache 10, pusher 30, query 10, nats-server 150; half a trade, 3 WebSocket
messages, 4 SQL rows, 2 Redis writes, 8 NATS messages of 2,000 bytes in all. Idle: nothing."""

from __future__ import annotations

import msgspec

from bourse.sizing.profile import ActionCost, Crowd, Machine, Profile, Step
from bourse.sizing.scenario import Action, Channel, Reading, Scenario, Trading

LIMIT_US = {
    "gateway": 200.0,
    "accounts": 50.0,
    "matching": 100.0,
    "statistics": 20.0,
    "persistence": 40.0,
    "cache": 10.0,
    "pusher": 30.0,
    "query": 10.0,
    "nats-server": 150.0,
}

SCENARIO = Scenario(
    name="synthetic",
    users=1000,
    markets=["aaa_usd", "bbb_usd"],
    trading=Trading(
        share=0.1, limit_per_s=1.0, market_per_s=0.0, cancel_per_s=0.0, amend_per_s=0.0, amqp_share=0.0
    ),
    reading=Reading(depth_per_s=0.01, balances_per_s=0.0, orders_per_s=0.0),
    channels={Channel.TRADES: 0.5, Channel.ORDERS: 1.0},
)


def synthetic_profile(*, steps: bool = True) -> Profile:
    limit = ActionCost(
        rate=100.0,
        sent=2000,
        cpu_us=dict(LIMIT_US),
        nats_messages=8.0,
        nats_bytes=2000.0,
        induced={"trades": 0.5, "ws_messages": 3.0, "sql_rows": 4.0, "redis_writes": 2.0},
    )
    depth = ActionCost(
        rate=10.0,
        sent=200,
        cpu_us={"gateway": 100.0, "query": 50.0, "nats-server": 20.0},
        nats_messages=2.0,
        nats_bytes=500.0,
    )
    names = [*LIMIT_US]
    stepped = [
        Step(
            load=load,
            orders_per_s=100 * load,
            users=round(1000 * load),
            cores={name: 100 * load * us / 1e6 * 1.05 for name, us in LIMIT_US.items()},
            predicted_cores={name: 100 * load * us / 1e6 for name, us in LIMIT_US.items()},
            post_p50_ms=5 * load,
            post_p99_ms=60 * load * load,
            error_share=0.0,
            past_knee=load > 1.5,
        )
        for load in (0.5, 1.0, 1.5, 2.0)
    ]
    return Profile(
        version=1,
        scenario=SCENARIO,
        machine=Machine(
            cpus=2, cpu_model="synthetic", python="3.11", commit="0" * 40, measured_at="2026-01-01T00:00:00Z"
        ),
        method="synthetic numbers, made by hand for tests",
        idle_cores={name: 0.0 for name in names},
        actions={Action.PLACE_LIMIT: limit, Action.READ_DEPTH: depth},
        crowd=Crowd(
            users=1000,
            ws_message_cpu_us=10.0,
            memory_per_user_bytes=15_000.0,
            memory_per_open_order_bytes={"accounts": 200.0, "matching": 300.0, "query": 500.0},
            stream_bytes_per_order=1000.0,
            ws_messages_per_trade=0.002,
        ),
        steps=stepped if steps else [],
        knee_load=1.5 if steps else None,
    )


def with_crowd(profile: Profile, **changes: float) -> Profile:
    return msgspec.structs.replace(profile, crowd=msgspec.structs.replace(profile.crowd, **changes))

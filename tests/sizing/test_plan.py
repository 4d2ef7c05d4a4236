"""The plan's arithmetic on a synthetic profile (tests/sizing/synthetic.py: round numbers, so each
figure is worked out here by hand), and `bourse size plan` on such a profile saved to a file."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bourse.cli import NO_PROFILE, main
from bourse.sizing.plan import Plan, Scaling, make_plan, plan_scenario, websocket_load
from bourse.sizing.profile import Profile, save_profile
from bourse.sizing.scenario import Action, Channel
from tests.sizing.synthetic import LIMIT_US, SCENARIO, synthetic_profile, with_crowd


def plan_for(orders: float, users: int = 1000, profile: Profile | None = None, **options: Any) -> Plan:
    """The plan for `orders` limit orders/s and `users`, REST reads off (so the figures are the
    limit order's cost times the rate)."""
    scenario = plan_scenario(SCENARIO, users=users, orders_per_s=orders, reads_per_s=0)
    return make_plan(profile or synthetic_profile(), scenario, **options)


def test_cores_per_service_are_the_rate_times_the_cost() -> None:
    plan = plan_for(9000)
    for name, us in LIMIT_US.items():
        assert plan.service(name).cores == pytest.approx(9000 * us / 1e6), name
        assert plan.service(name).us_per_order == pytest.approx(us), name


def test_stateless_instances_are_cores_over_headroom_rounded_up() -> None:
    gateway = plan_for(9000).service("gateway")  # 1.8 cores / 0.6: exactly 3, not 4 by rounding
    assert (gateway.scaling, gateway.units, gateway.unit_name) == (Scaling.INSTANCES, 3, "instances")
    assert plan_for(9000, headroom=0.5).service("gateway").units == 4  # 3.6
    assert plan_for(9100).service("gateway").units == 4  # 1.82 / 0.6 = 3.03
    assert plan_for(10).service("gateway").units == 1  # never none


def test_below_its_active_floor_a_service_costs_the_floor_and_each_instance_pays_its_idle() -> None:
    idle = dict.fromkeys(synthetic_profile().idle_cores, 0.0) | {"gateway": 0.05}
    profile = msgspec.structs.replace(
        synthetic_profile(), idle_cores=idle, active_cores={"gateway": 0.3, "accounts": 0.2}
    )
    quiet = plan_for(10, profile=profile)  # 10 orders/s: 0.002 cores of gateway work, 0.3 floor
    assert quiet.service("gateway").cores == pytest.approx(0.05 + 0.3)
    assert quiet.service("accounts").cores == pytest.approx(0.2)
    busy = plan_for(9000, profile=profile).service("gateway")  # 1.8 cores of work in 4 instances
    assert busy.cores == pytest.approx(4 * 0.05 + 1.8)  # above 4 floors of 0.3: the work itself
    assert busy.units == 4


def test_accounts_scale_by_member_shards_and_a_shard_caps_one_member() -> None:
    accounts = plan_for(9000).service("accounts")  # 0.45 cores
    assert (accounts.scaling, accounts.units) == (Scaling.MEMBER_SHARDS, 1)
    assert accounts.cap_orders_per_s == pytest.approx(0.6e6 / 50)  # 12,000 orders/s for one member
    assert accounts.fits  # 90 orders/s per member
    alone = plan_for(13_000, users=10).service("accounts")  # one trader placing 13,000 a second
    assert alone.units == 2  # 0.65 cores
    assert not alone.fits
    assert any("DOES NOT FIT" in note for note in alone.notes)


def test_matching_groups_are_capped_by_markets_and_a_market_by_its_single_writer() -> None:
    matching = plan_for(9000).service("matching")  # 0.9 cores: 2 groups
    assert (matching.scaling, matching.units) == (Scaling.MARKET_GROUPS, 2)
    assert matching.cap_orders_per_s == pytest.approx(0.6e6 / 100)  # 6,000 orders/s in one market
    assert matching.fits  # an even split: 4,500 a market
    assert any("4,500 orders/s) fits" in note for note in matching.notes)
    busy = plan_for(15_000).service("matching")  # 1.5 cores: 3 groups wanted, 2 markets
    assert busy.units == 2
    assert not busy.fits
    assert any("2 markets" in note for note in busy.notes)


def test_a_hot_market_past_the_single_writer_cap_is_flagged() -> None:
    plan = plan_for(9000, hot_market_share=0.8)  # 7,200 orders/s on one market, cap 6,000
    assert plan.hot_market_orders_per_s == pytest.approx(7200)
    matching = plan.service("matching")
    assert not matching.fits
    assert any("DOES NOT FIT" in note and "6,000" in note for note in matching.notes)
    statistics = plan.service("statistics")  # 20 µs: cap 30,000, so it fits
    assert statistics.fits
    assert statistics.cap_orders_per_s == pytest.approx(30_000)
    assert not plan.fits


def test_one_writer_stores_are_flagged_past_the_headroom_with_their_cap() -> None:
    persistence = plan_for(9000).service("persistence")  # 0.36 cores
    assert (persistence.scaling, persistence.units, persistence.fits) == (Scaling.ONE_WRITER, 1, True)
    assert persistence.cap_orders_per_s == pytest.approx(15_000)
    over = plan_for(20_000).service("persistence")  # 0.8 cores, still one writer
    assert (over.units, over.fits) == (1, False)
    assert any("PASSES THE HEADROOM" in note and "15,000" in note for note in over.notes)


def test_nats_sql_and_redis_load_follow_the_profile_per_action() -> None:
    plan = plan_for(9000)
    nats = plan.service("nats-server")  # 1.35 cores, multi-threaded: 3 cores at 0.6
    assert (nats.scaling, nats.units, nats.unit_name) == (Scaling.SERVER, 3, "cores")
    assert plan.nats_messages_per_s == pytest.approx(72_000)
    assert plan.nats_bytes_per_s == pytest.approx(18e6)
    assert plan.sql_rows_per_s == pytest.approx(36_000)
    assert plan.redis_writes_per_s == pytest.approx(18_000)


def test_memory_per_connected_user_and_per_open_order() -> None:
    plan = plan_for(9000, users=2000)  # 200 traders: 2,000 open orders by default
    assert plan.open_orders == 2000
    assert plan.service("pusher").memory_bytes == pytest.approx(2000 * 15_000)
    assert plan.service("accounts").memory_bytes == pytest.approx(2000 * 200)
    assert plan.service("matching").memory_bytes == pytest.approx(2000 * 300)
    assert plan.service("matching").memory_per_unit_bytes == pytest.approx(2000 * 300 / 2)
    query = plan.service("query")  # every instance holds every open order
    assert query.memory_per_unit_bytes == pytest.approx(2000 * 500)
    assert query.memory_bytes == pytest.approx(2000 * 500 * query.units)
    assert plan_for(9000, open_orders=50_000).service("matching").memory_bytes == pytest.approx(50_000 * 300)


def test_stream_storage_per_day_follows_the_order_rate() -> None:
    plan = plan_for(9000)
    assert plan.stream_bytes_per_day == pytest.approx(9000 * 1000 * 86_400)
    assert plan.stream_bytes_kept == pytest.approx(plan.stream_bytes_per_day * 7)


def test_market_data_scales_with_trades_and_holders_of_the_trades_channel() -> None:
    profile = synthetic_profile()  # measured with 500 holders of trades
    same = plan_for(9000, users=1000)  # 4,500 trades/s x 0.002 x 500 holders, as measured
    assert same.websocket.trades_per_s == pytest.approx(4500)
    assert same.websocket.market_data_per_s == pytest.approx(4500)
    assert same.websocket.extra_per_s == pytest.approx(0)
    assert same.websocket.messages_per_s == pytest.approx(9000 * 3)
    assert same.service("pusher").cores == pytest.approx(9000 * 30e-6)
    double = plan_for(9000, users=2000)  # 1,000 holders: 4,500 more messages than measured
    assert double.websocket.market_data_per_s == pytest.approx(9000)
    assert double.websocket.messages_per_s == pytest.approx(9000 * 3 + 4500)
    assert double.service("pusher").cores == pytest.approx(9000 * 30e-6 + 4500 * 10e-6)
    half = plan_for(9000, users=500)  # fewer holders: the measured fan-out is taken off
    assert half.service("pusher").cores == pytest.approx(9000 * 30e-6 - 2250 * 10e-6)
    scenario = plan_scenario(SCENARIO, users=1000, orders_per_s=9000, reads_per_s=0)
    capped = websocket_load(with_crowd(profile, ws_messages_per_trade=0.01), scenario, scenario.rates())
    assert capped.market_data_per_s == pytest.approx(500 * 10)  # one per 100 ms tick per holder


def ticker_profile(ws_ticker: float | None) -> Profile:
    """The synthetic profile measured with every user holding a ticker too, and (unless None)
    `ws_ticker` ticker messages delivered per limit order."""
    base = synthetic_profile()
    scenario = msgspec.structs.replace(
        base.scenario, channels={**base.scenario.channels, Channel.TICKER: 1.0}
    )
    limit = base.actions[Action.PLACE_LIMIT]
    induced = {**limit.induced, **({} if ws_ticker is None else {"ws_ticker": ws_ticker})}
    actions = {**base.actions, Action.PLACE_LIMIT: msgspec.structs.replace(limit, induced=induced)}
    return msgspec.structs.replace(base, scenario=scenario, actions=actions)


def test_other_public_channels_scale_with_their_holders_up_to_their_tick() -> None:
    profile = ticker_profile(0.05)  # at 9,000 orders/s: 450 tickers/s to the 1,000 holders measured
    scenario = plan_scenario(profile.scenario, users=2000, orders_per_s=9000, reads_per_s=0)
    ws = make_plan(profile, scenario).websocket
    assert ws.by_channel[Channel.TICKER] == pytest.approx(900)  # 0.45 a second to each of 2,000
    assert ws.by_channel[Channel.TRADES] == pytest.approx(9000)
    assert ws.extra_per_s == pytest.approx(450 + 4500)
    assert ws.unscaled == ()
    busy = ticker_profile(0.5)  # 4.5 a second per holder measured: a ticker is sent once a second
    assert make_plan(busy, scenario).websocket.by_channel[Channel.TICKER] == pytest.approx(2000)


def test_public_channels_the_profile_has_no_figure_for_are_kept_as_measured_and_said(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    profile = ticker_profile(None)
    scenario = plan_scenario(profile.scenario, users=2000, orders_per_s=9000, reads_per_s=0)
    ws = make_plan(profile, scenario).websocket
    assert ws.unscaled == (Channel.TICKER,)
    assert ws.by_channel[Channel.TICKER] == 0
    assert ws.extra_per_s == pytest.approx(4500)  # the trades channel only
    path = tmp_path / "profile.json"
    save_profile(profile, path)
    argv = ["size", "plan", "--orders-per-s", "9000", "--users", "2000", "--profile", str(path)]
    assert main(argv) == 0
    assert "NOT SCALED: the profile has no per-channel figures for ticker" in capsys.readouterr().out


def test_the_pushers_idle_grows_with_the_connected_crowd() -> None:
    base = synthetic_profile()
    profile = msgspec.structs.replace(base, idle_cores={**base.idle_cores, "pusher": 0.01})
    assert plan_for(9000, users=3000, profile=profile).service("pusher").cores == pytest.approx(
        plan_for(9000, users=3000).service("pusher").cores + 0.03
    )


def test_the_rabbitmq_broker_is_planned_as_a_multi_threaded_server_not_python_instances() -> None:
    base = synthetic_profile()
    limit = base.actions[Action.PLACE_LIMIT]
    costs = msgspec.structs.replace(limit, cpu_us={**limit.cpu_us, "rabbitmq": 100.0})
    profile = msgspec.structs.replace(base, actions={**base.actions, Action.PLACE_LIMIT: costs})
    plan = plan_for(9000, profile=profile)
    broker = plan.service("rabbitmq")  # 0.9 cores
    assert (broker.scaling, broker.units, broker.unit_name) == (Scaling.SERVER, 2, "cores")
    assert any("Erlang" in note for note in broker.notes)
    assert "rabbitmq" not in [saving.service for saving in plan.savings]


def test_rewrite_savings_are_ranked_most_first_and_leave_nats_out() -> None:
    plan = plan_for(9000)
    ranked = [saving.service for saving in plan.savings]
    python = sorted((n for n in LIMIT_US if n != "nats-server"), key=lambda n: (-LIMIT_US[n], n))
    assert ranked == python
    first = plan.savings[0]
    assert (first.service, first.factor) == ("gateway", 0.1)
    assert first.cores_saved == pytest.approx(1.8 * 0.9)
    assert (first.units_before, first.units_after) == (3, 1)


def test_a_rewritten_service_is_planned_at_its_factor_and_its_cap_rises() -> None:
    python, rewritten = plan_for(9000), plan_for(9000, rewrites={"gateway": 0.1, "matching": 0.1})
    assert rewritten.service("gateway").cores == pytest.approx(0.18)
    assert rewritten.service("gateway").python_cores == pytest.approx(1.8)
    assert rewritten.service("gateway").units == 1
    assert rewritten.service("matching").cap_orders_per_s == pytest.approx(60_000)
    assert rewritten.total_cores == pytest.approx(python.total_cores - 1.62 - 0.81)
    assert [s.service for s in rewritten.savings] == [s.service for s in python.savings]


def test_totals_give_the_machines_to_provision() -> None:
    plan = plan_for(9000)
    assert plan.total_cores == pytest.approx(9000 * sum(LIMIT_US.values()) / 1e6)
    assert plan.machines == math.ceil(plan.total_cores / 0.6 / 8) == 2
    assert plan_for(9000, cores_per_machine=32).machines == 1


def test_reads_are_rescaled_to_the_total_keeping_their_mix() -> None:
    base = SCENARIO.scaled(users=1000)
    scenario = plan_scenario(base, users=2000, orders_per_s=500, reads_per_s=300)
    rates = scenario.rates()
    assert rates[Action.READ_DEPTH] == pytest.approx(300)
    assert scenario.orders_per_s() == pytest.approx(500)
    assert plan_scenario(base, users=2000, orders_per_s=500).rates()[Action.READ_DEPTH] == pytest.approx(20)
    assert scenario.holders()[Channel.TRADES] == 1000


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"headroom": 0.0}, "headroom"),
        ({"hot_market_share": 1.5}, "hot market"),
        ({"rewrites": {"smoke": 0.1}}, "smoke"),
        ({"rewrites": {"gateway": 0.0}}, "factor"),
    ],
)
def test_bad_options_are_refused_with_a_reason(options: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        plan_for(1000, **options)


def test_the_cli_prints_the_plan_table_for_a_profile_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "profile.json"
    save_profile(synthetic_profile(), path)
    scenario = tmp_path / "synthetic.toml"
    scenario.write_text(
        'name = "synthetic"\nusers = 1000\nmarkets = ["aaa_usd", "bbb_usd"]\n'
        "[trading]\nshare = 0.1\nlimit_per_s = 1.0\nmarket_per_s = 0.0\ncancel_per_s = 0.0\n"
        "amend_per_s = 0.0\namqp_share = 0.0\n[reading]\ndepth_per_s = 0.01\nbalances_per_s = 0.0\n"
        "orders_per_s = 0.0\n[channels]\ntrades = 0.5\norders = 1.0\n"
    )
    argv = ["size", "plan", "--orders-per-s", "9000", "--users", "1000", "--reads-per-s", "0"]
    code = main([*argv, "--profile", str(path), "--scenario", str(scenario), "--rewrite", "query=0.2"])
    out = capsys.readouterr().out
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "1.80" in rows["gateway"]
    assert "3 instances" in rows["gateway"]
    assert "2 groups" in rows["matching"]
    assert "market 6,000/s" in rows["matching"]
    assert "1 writer" in rows["persistence"]
    assert "all 15,000/s" in rows["persistence"]
    assert "3 cores" in rows["nats-server"]
    assert "0.02*" in rows["query"]  # 10 µs x 9,000 x 0.2, marked rewritten
    assert "2 machine(s) of 8 cores" in rows["total"]
    assert "NATS: 72,000 messages/s" in out
    assert re.search(r"^ +1\. gateway +1\.62 cores \(3 -> 1 instances\)", out, re.MULTILINE)
    assert out.rstrip().endswith("FITS")


def test_the_cli_says_how_to_make_a_profile_when_there_is_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.json"
    code = main(["size", "plan", "--orders-per-s", "5000", "--users", "200000", "--profile", str(missing)])
    err = capsys.readouterr().err
    assert code == NO_PROFILE == 2
    assert str(missing) in err
    assert "no profile" in err
    assert "bourse size measure" in err


def test_the_cli_refuses_a_broken_profile_file_with_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    code = main(["size", "plan", "--orders-per-s", "5000", "--users", "200000", "--profile", str(broken)])
    assert code == 2
    assert str(broken) in capsys.readouterr().err

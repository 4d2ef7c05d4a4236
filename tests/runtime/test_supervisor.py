"""The pure parts of `bourse up`'s supervisor: how many processes, which services go together."""

from __future__ import annotations

import pytest

from bourse.cli import build_parser
from bourse.runtime.supervisor import auto_processes, group_services
from bourse.services import SERVICES, services_for
from bourse.settings import Settings

START_ORDER = [service.name for service in services_for(Settings(redis_url=None, _env_file=None))]
"""`bourse up` without Redis: no cache service."""
WITH_CACHE = [service.name for service in services_for(Settings(redis_url="redis://x", _env_file=None))]


def test_auto_is_one_process_more_than_cores_up_to_four() -> None:
    assert [auto_processes(cores) for cores in (1, 2, 3, 4, 8, 64)] == [1, 3, 4, 4, 4, 4]


def test_one_process_runs_everything_in_start_order() -> None:
    assert group_services(START_ORDER, 1) == [START_ORDER]


def test_groups_balance_the_measured_cpu_and_keep_the_start_order() -> None:
    assert START_ORDER == ["accounts", "matching", "persistence", "query", "auth", "ids", "gateway"]
    assert group_services(START_ORDER, 2) == [
        ["accounts", "matching", "persistence"],
        ["query", "auth", "ids", "gateway"],
    ]
    assert group_services(START_ORDER, 3) == [
        ["accounts", "matching"],
        ["persistence", "query", "auth", "ids"],
        ["gateway"],
    ]
    assert group_services(START_ORDER, 4) == [
        ["accounts", "matching"],
        ["persistence"],
        ["query", "auth", "ids"],
        ["gateway"],
    ]


def test_the_cache_runs_only_with_a_redis_url() -> None:
    assert "cache" in SERVICES
    assert "cache" not in START_ORDER
    assert WITH_CACHE == ["accounts", "matching", "persistence", "cache", "query", "auth", "ids", "gateway"]
    assert [
        service.name for service in services_for(Settings(redis_url=None, _env_file=None), ["cache"])
    ] == ["cache"]
    assert group_services(WITH_CACHE, 2) == [
        ["accounts", "matching", "persistence"],
        ["cache", "query", "auth", "ids", "gateway"],
    ]


@pytest.mark.parametrize("processes", range(1, 10))
@pytest.mark.parametrize("order", [START_ORDER, WITH_CACHE], ids=["without-redis", "with-redis"])
def test_every_service_runs_once_in_at_most_that_many_groups(processes: int, order: list[str]) -> None:
    groups = group_services(order, processes)
    assert [name for group in groups for name in group] == order
    assert len(groups) == min(processes, len(order))
    assert all(groups)
    assert groups[-1][-1] == "gateway"  # the gateway starts last and stops first


def test_unknown_services_get_a_middling_weight() -> None:
    assert group_services(["a", "b", "c", "d"], 2, weights={}) == [["a", "b"], ["c", "d"]]
    assert group_services([], 3) == []


def test_processes_option() -> None:
    parser = build_parser()
    assert parser.parse_args(["up"]).processes == "auto"
    assert parser.parse_args(["up", "--processes", "3"]).processes == "3"
    with pytest.raises(SystemExit):
        parser.parse_args(["up", "--processes", "0"])

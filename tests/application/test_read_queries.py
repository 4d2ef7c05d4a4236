"""The reads' rule (`bourse.application.read_queries`), case by case. `BAD_READ_QUERIES` is the
table every reader is held to: the REST API (tests/e2e/test_reads.py), the query service
(tests/services/test_query_service.py), the SQL read model (tests/persistence/
test_sql_read_model.py) and the Redis read model (tests/cache/test_cache_service.py) refuse each
of these with the rule's code and message."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import pytest

from bourse.application.ports import QueryFailed
from bourse.application.read_queries import (
    KLINES_DEFAULT_LIMIT,
    ORDER_STATES,
    ORDERS_DEFAULT_LIMIT,
    READ_MAX_LIMIT,
    CheckedKlinesQuery,
    InvalidReadQuery,
    check_depth_query,
    check_klines_query,
    check_member_trades_query,
    check_orders_query,
    check_trades_query,
    parse_time_ms,
)
from bourse.domain.candles import Period
from bourse.domain.orders import FINAL_STATUSES, OrderStatus

MARKETS = ("btc_usd", "eth_usd")
OPEN = frozenset({OrderStatus.SUBMITTED, OrderStatus.PARTIALLY_FILLED})
LIMIT_MESSAGE = "limit must be 1..1000, not {}"


@dataclass(frozen=True)
class Bad:
    read: str
    """The read asked: a `ReadModel` method, `orders`, `depth`, `trades` or `member_trades`."""
    args: dict[str, Any]
    field: str
    status: int
    code: str
    message: str


def bad_limits(read: str, **args: Any) -> dict[str, Bad]:
    return {
        f"{read}_limit_{name}": Bad(
            read, {**args, "limit": limit}, "limit", 400, "invalid_request", LIMIT_MESSAGE.format(limit)
        )
        for name, limit in (("zero", 0), ("negative", -5), ("above_max", 1001))
    }


def unknown_market(read: str) -> Bad:
    return Bad(read, {"market": "doge_usd"}, "market", 404, "unknown_market", "no market 'doge_usd'")


BAD_READ_QUERIES = {
    **bad_limits("orders"),
    "orders_unknown_state": Bad(
        "orders",
        {"state": "bogus"},
        "state",
        400,
        "invalid_request",
        "state must be one of open, closed, submitted, partially_filled, executed, cancelled, not 'bogus'",
    ),
    "orders_state_in_capitals": Bad(
        "orders",
        {"state": "OPEN"},
        "state",
        400,
        "invalid_request",
        "state must be one of open, closed, submitted, partially_filled, executed, cancelled, not 'OPEN'",
    ),
    "orders_before_id_zero": Bad(
        "orders",
        {"before_id": 0},
        "before_id",
        400,
        "invalid_request",
        "before_id must be an order id, not 0",
    ),
    "orders_before_id_beyond_64_bits": Bad(
        "orders",
        {"before_id": 2**63},
        "before_id",
        400,
        "invalid_request",
        f"before_id must be an order id, not {2**63}",
    ),
    "orders_unknown_market": unknown_market("orders"),
    **bad_limits("depth", market="btc_usd"),
    "depth_unknown_market": unknown_market("depth"),
    "depth_limit_before_market": Bad(
        "depth", {"market": "doge_usd", "limit": 0}, "limit", 400, "invalid_request", LIMIT_MESSAGE.format(0)
    ),
    **bad_limits("trades", market="btc_usd"),
    "trades_unknown_market": unknown_market("trades"),
    **bad_limits("member_trades"),
    "member_trades_unknown_market": unknown_market("member_trades"),
}
"""Bad reads, each with what every reader answers: the argument at fault, the status of the
`QueryFailed` (the REST API maps it: see `bourse.entrypoints.rest.orders.read_refused`), the code
and the message. Arguments as a caller of a read model passes them (`before_id` an integer)."""

MEMBER_READS = frozenset({"orders", "member_trades"})
"""The reads of one member's data: the read model's method takes the member id first."""


def ask(reads: Any, member_id: int, bad: Bad) -> Awaitable[Any]:
    """The read `bad` names, asked of a read model (or a `QueryClient`), for `member_id` if it is
    a member's read."""
    method: Callable[..., Awaitable[Any]] = getattr(reads, bad.read)
    return method(member_id, **bad.args) if bad.read in MEMBER_READS else method(**bad.args)


def check(bad: Bad, markets: Collection[str] | None, **changed: Any) -> None:
    """The rule of the read `bad` names, asked about its arguments (`changed` replacing some)."""
    args = {**bad.args, **changed}
    if bad.read == "orders":
        check_orders_query(7, markets=markets, **args)
    elif bad.read == "member_trades":
        check_member_trades_query(markets=markets, **args)
    else:
        rule = check_depth_query if bad.read == "depth" else check_trades_query
        rule(markets=markets, **args)


def test_the_table_has_every_read_with_a_limit() -> None:
    assert {bad.read for bad in BAD_READ_QUERIES.values()} == {"orders", "depth", "trades", "member_trades"}


@pytest.mark.parametrize("case", list(BAD_READ_QUERIES))
def test_a_bad_read_is_refused_with_one_code_and_message(case: str) -> None:
    bad = BAD_READ_QUERIES[case]
    with pytest.raises(InvalidReadQuery) as refused:
        check(bad, MARKETS)
    error = refused.value
    assert isinstance(error, QueryFailed)  # read models raise it as they raise any failed read
    assert (error.field, error.status, error.code, error.message) == (
        bad.field,
        bad.status,
        bad.code,
        bad.message,
    )


@pytest.mark.parametrize("case", [case for case, bad in BAD_READ_QUERIES.items() if bad.field == "limit"])
def test_every_read_takes_a_limit_from_1_to_the_maximum(case: str) -> None:
    bad = BAD_READ_QUERIES[case]
    market = {"market": "btc_usd"} if "market" in bad.args else {}
    for limit in (1, READ_MAX_LIMIT):
        check(bad, MARKETS, limit=limit, **market)


@pytest.mark.parametrize("case", [case for case, bad in BAD_READ_QUERIES.items() if bad.field == "market"])
def test_a_reader_that_does_not_know_the_markets_lets_any_market_through(case: str) -> None:
    check(BAD_READ_QUERIES[case], None)


def test_the_defaults_are_within_the_bounds() -> None:
    check_depth_query("btc_usd", markets=MARKETS)
    check_trades_query("btc_usd", markets=MARKETS)
    check_member_trades_query(markets=MARKETS)
    assert check_orders_query(7).limit == ORDERS_DEFAULT_LIMIT


@pytest.mark.parametrize(
    ("before_id", "message"),
    [
        ("12x", "before_id must be an order id, not '12x'"),
        ("-1", "before_id must be an order id, not '-1'"),
        ("9223372036854775808", "before_id must be an order id, not '9223372036854775808'"),
        ("١٢٣", "before_id must be an order id, not '١٢٣'"),
        ("", "before_id must be an order id, not ''"),
    ],
)
def test_before_id_as_the_rest_api_writes_it_is_an_order_id_or_refused(before_id: str, message: str) -> None:
    with pytest.raises(InvalidReadQuery) as refused:
        check_orders_query(7, before_id=before_id)
    assert (refused.value.field, refused.value.code, refused.value.message) == (
        "before_id",
        "invalid_request",
        message,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, {"limit": ORDERS_DEFAULT_LIMIT, "statuses": None, "before_id": None, "market": None}),
        ({"limit": 1}, {"limit": 1}),
        ({"limit": READ_MAX_LIMIT}, {"limit": READ_MAX_LIMIT}),
        ({"before_id": "42"}, {"before_id": 42}),
        ({"before_id": 2**63 - 1}, {"before_id": 2**63 - 1}),
        ({"market": "eth_usd"}, {"market": "eth_usd"}),
        ({"state": "open"}, {"statuses": OPEN}),
        ({"state": "closed"}, {"statuses": FINAL_STATUSES}),
        ({"state": "cancelled"}, {"statuses": frozenset({OrderStatus.CANCELLED})}),
        ({"status": OrderStatus.CLOSED}, {"statuses": frozenset({OrderStatus.CLOSED})}),
        (
            {"state": "closed", "status": OrderStatus.EXECUTED},
            {"statuses": frozenset({OrderStatus.EXECUTED})},
        ),
        ({"state": "open", "status": OrderStatus.EXECUTED}, {"statuses": frozenset()}),
    ],
)
def test_a_good_orders_query_is_normalised(args: dict[str, Any], expected: dict[str, Any]) -> None:
    checked = check_orders_query(7, markets=MARKETS, **args)
    assert checked.member_id == 7
    assert {name: getattr(checked, name) for name in expected} == expected


def test_every_state_the_message_names_is_accepted() -> None:
    for state in ORDER_STATES:
        assert check_orders_query(7, state=state).statuses


def test_the_first_argument_at_fault_is_the_one_named() -> None:
    with pytest.raises(InvalidReadQuery) as refused:
        check_orders_query(7, limit=0, market="doge_usd", before_id="x", state="bogus", markets=MARKETS)
    assert refused.value.field == "limit"
    with pytest.raises(InvalidReadQuery) as refused:
        check_orders_query(7, market="doge_usd", before_id="x", state="bogus", markets=MARKETS)
    assert refused.value.field == "market"
    with pytest.raises(InvalidReadQuery) as refused:
        check_orders_query(7, before_id="x", state="bogus", markets=MARKETS)
    assert refused.value.field == "before_id"
    for rule in (check_depth_query, check_trades_query):
        with pytest.raises(InvalidReadQuery) as refused:
            rule("doge_usd", limit=0, markets=MARKETS)
        assert refused.value.field == "limit"
    with pytest.raises(InvalidReadQuery) as refused:
        check_member_trades_query(market="doge_usd", limit=0, markets=MARKETS)
    assert refused.value.field == "limit"


# ---------------------------------------------------------------------- k-lines


BAD_KLINES_QUERIES: list[tuple[dict[str, Any], str, str]] = [
    ({"market": "doge_usd"}, "unknown_market", "market"),
    ({"period": "2m"}, "unknown_period", "period"),
    ({"period": "1M"}, "unknown_period", "period"),
    ({"start": "yesterday"}, "invalid_time", "start"),
    ({"start": -1}, "invalid_time", "start"),
    ({"end": "2024-13-01T00:00:00Z"}, "invalid_time", "end"),
    ({"end": "99999999999999999"}, "invalid_time", "end"),
    ({"start": 2_000, "end": 1_000}, "start_after_end", "start"),
    ({"start": 0, "end": 1000 * 60_000}, "range_too_large", "end"),
    ({"limit": 0}, "invalid_request", "limit"),
    ({"limit": 1001}, "invalid_request", "limit"),
]
"""(arguments over a valid query, code, field): what every k-line reader refuses."""


@pytest.mark.parametrize(("arguments", "code", "field"), BAD_KLINES_QUERIES)
def test_a_bad_klines_query_is_refused_with_a_stable_code_and_its_field(
    arguments: dict[str, Any], code: str, field: str
) -> None:
    query: dict[str, Any] = {"market": "btc_usd", "period": "1m", **arguments}
    market = query.pop("market")
    with pytest.raises(InvalidReadQuery) as refused:
        check_klines_query(market, markets=MARKETS, **query)
    assert (refused.value.code, refused.value.field) == (code, field)
    assert refused.value.status == (404 if code == "unknown_market" else 400)


def test_klines_times_are_epoch_milliseconds_or_iso_8601_in_utc() -> None:
    assert parse_time_ms("1710115200000", "start") == 1_710_115_200_000
    assert parse_time_ms(1_710_115_200_000, "start") == 1_710_115_200_000
    assert parse_time_ms("2024-03-11T00:00:00Z", "start") == 1_710_115_200_000
    assert parse_time_ms("2024-03-11T01:00:00+01:00", "start") == 1_710_115_200_000
    assert parse_time_ms("2024-03-11T00:00:00.250", "start") == 1_710_115_200_250  # no offset: UTC
    assert parse_time_ms(None, "start") is None


def test_a_klines_range_of_exactly_one_page_is_accepted_and_defaults_apply() -> None:
    checked = check_klines_query("btc_usd", period="1h", start=0, end=999 * 3_600_000, markets=MARKETS)
    assert checked == CheckedKlinesQuery("btc_usd", Period.H1, 0, 999 * 3_600_000, KLINES_DEFAULT_LIMIT)

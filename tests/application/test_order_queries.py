"""The orders-query rule (`bourse.application.order_queries`), case by case. `BAD_ORDERS_QUERIES`
is the table every reader is held to: the REST API (tests/e2e/test_reads.py), the query service
(tests/services/test_query_service.py), the SQL read model (tests/persistence/
test_sql_read_model.py) and the Redis read model (tests/cache/test_cache_service.py) refuse each
of these with the rule's code and message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from bourse.application.order_queries import (
    ORDER_STATES,
    ORDERS_DEFAULT_LIMIT,
    ORDERS_MAX_LIMIT,
    InvalidOrdersQuery,
    check_orders_query,
)
from bourse.application.ports import QueryFailed
from bourse.domain.orders import FINAL_STATUSES, OrderStatus

MARKETS = ("btc_usd", "eth_usd")
OPEN = frozenset({OrderStatus.SUBMITTED, OrderStatus.PARTIALLY_FILLED})


@dataclass(frozen=True)
class Bad:
    args: dict[str, Any]
    field: str
    status: int
    code: str
    message: str


BAD_ORDERS_QUERIES = {
    "limit_zero": Bad({"limit": 0}, "limit", 400, "invalid_request", "limit must be 1..1000, not 0"),
    "limit_negative": Bad({"limit": -5}, "limit", 400, "invalid_request", "limit must be 1..1000, not -5"),
    "limit_above_max": Bad(
        {"limit": 1001}, "limit", 400, "invalid_request", "limit must be 1..1000, not 1001"
    ),
    "unknown_state": Bad(
        {"state": "bogus"},
        "state",
        400,
        "invalid_request",
        "state must be one of open, closed, submitted, partially_filled, executed, cancelled, not 'bogus'",
    ),
    "state_in_capitals": Bad(
        {"state": "OPEN"},
        "state",
        400,
        "invalid_request",
        "state must be one of open, closed, submitted, partially_filled, executed, cancelled, not 'OPEN'",
    ),
    "before_id_zero": Bad(
        {"before_id": 0}, "before_id", 400, "invalid_request", "before_id must be an order id, not 0"
    ),
    "before_id_beyond_64_bits": Bad(
        {"before_id": 2**63},
        "before_id",
        400,
        "invalid_request",
        f"before_id must be an order id, not {2**63}",
    ),
    "unknown_market": Bad({"market": "doge_usd"}, "market", 404, "unknown_market", "no market 'doge_usd'"),
}
"""Bad orders queries, each with what every reader answers: the argument at fault, the status of
the `QueryFailed` (the REST API maps it: see `bourse.entrypoints.rest.orders`), the code and the
message. Arguments as a caller of a read model passes them (`before_id` an integer)."""


@pytest.mark.parametrize("case", list(BAD_ORDERS_QUERIES))
def test_a_bad_orders_query_is_refused_with_one_code_and_message(case: str) -> None:
    bad = BAD_ORDERS_QUERIES[case]
    with pytest.raises(InvalidOrdersQuery) as refused:
        check_orders_query(7, markets=MARKETS, **bad.args)
    error = refused.value
    assert isinstance(error, QueryFailed)  # read models raise it as they raise any failed read
    assert (error.field, error.status, error.code, error.message) == (
        bad.field,
        bad.status,
        bad.code,
        bad.message,
    )


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
    with pytest.raises(InvalidOrdersQuery) as refused:
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
        ({"limit": ORDERS_MAX_LIMIT}, {"limit": ORDERS_MAX_LIMIT}),
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


def test_a_reader_that_does_not_know_the_markets_lets_any_market_through() -> None:
    assert check_orders_query(7, market="doge_usd").market == "doge_usd"


def test_every_state_the_message_names_is_accepted() -> None:
    for state in ORDER_STATES:
        assert check_orders_query(7, state=state).statuses


def test_the_first_argument_at_fault_is_the_one_named() -> None:
    with pytest.raises(InvalidOrdersQuery) as refused:
        check_orders_query(7, limit=0, market="doge_usd", before_id="x", state="bogus", markets=MARKETS)
    assert refused.value.field == "limit"
    with pytest.raises(InvalidOrdersQuery) as refused:
        check_orders_query(7, market="doge_usd", before_id="x", state="bogus", markets=MARKETS)
    assert refused.value.field == "market"
    with pytest.raises(InvalidOrdersQuery) as refused:
        check_orders_query(7, before_id="x", state="bogus", markets=MARKETS)
    assert refused.value.field == "before_id"

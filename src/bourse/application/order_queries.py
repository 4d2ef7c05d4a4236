"""A member's orders query: which arguments it takes and what they mean, the one place it is written.

- `limit`: 1..`ORDERS_MAX_LIMIT` orders (default `ORDERS_DEFAULT_LIMIT`);
- `market`: one of `markets`, when the reader knows them (`unknown_market`);
- `before_id`: an order id (`bourse.application.order_requests.parse_order_id`: digits or an
  integer, 1..2**63-1): only orders below it, the paging cursor;
- `state`: "open", "closed" (every final status) or one status name (`ORDER_STATES`), and
  `status`: exactly that status; together they are the statuses asked for
  (`bourse.domain.order_views.wanted_statuses`).

`check_orders_query` refuses the first argument at fault, in that order, with an
`InvalidOrdersQuery`: code `invalid_request` (or `unknown_market`), one message per argument,
and the argument as `field`. It is a `QueryFailed` (400, or 404 for an unknown market), so a
read model that calls the check answers as it answers any failed read: the query service with
its error reply, the SQL and Redis read models to the gateway's read chain. The REST API calls
it before reading and maps it to its own problem (`bourse.entrypoints.rest.orders`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from bourse.application.order_requests import OrderRequestError, parse_order_id
from bourse.application.ports import QueryFailed
from bourse.contracts.messages import QUERY_MAX_LIMIT
from bourse.domain.order_views import wanted_statuses
from bourse.domain.orders import OrderStatus

ORDERS_DEFAULT_LIMIT: Final = 100
ORDERS_MAX_LIMIT: Final = QUERY_MAX_LIMIT
ORDER_STATES: Final = ("open", "closed", *(s.value for s in OrderStatus if s.value not in ("open", "closed")))
"""What `state` may be ("closed" names the group of final statuses; `status` asks for one)."""
INVALID_REQUEST: Final = "invalid_request"
UNKNOWN_MARKET: Final = "unknown_market"


class InvalidOrdersQuery(QueryFailed):
    """An orders query refused for one of its arguments, `field`. `code` is stable."""

    def __init__(self, code: str, message: str, field: str) -> None:
        super().__init__(404 if code == UNKNOWN_MARKET else 400, code, message)
        self.field = field


@dataclass(frozen=True, slots=True)
class CheckedOrdersQuery:
    """An orders query `check_orders_query` accepted, its arguments normalised."""

    member_id: int
    market: str | None
    state: str | None
    status: OrderStatus | None
    limit: int
    before_id: int | None
    statuses: frozenset[OrderStatus] | None
    """What `state` and `status` ask for together: None for every status (possibly none)."""


def check_orders_query(
    member_id: int,
    *,
    market: str | None = None,
    state: str | None = None,
    status: OrderStatus | None = None,
    limit: int = ORDERS_DEFAULT_LIMIT,
    before_id: int | str | None = None,
    markets: Collection[str] | None = None,
) -> CheckedOrdersQuery:
    """The query, checked by the rules of the module docstring; `markets`: the known markets, or
    None when the reader does not know them (then any market is asked for, and finds nothing)."""
    if not 1 <= limit <= ORDERS_MAX_LIMIT:
        raise InvalidOrdersQuery(
            INVALID_REQUEST, f"limit must be 1..{ORDERS_MAX_LIMIT}, not {limit}", "limit"
        )
    if market is not None and markets is not None and market not in markets:
        raise InvalidOrdersQuery(UNKNOWN_MARKET, f"no market {market!r}", "market")
    before: int | None = None
    if before_id is not None:
        try:
            before = parse_order_id(before_id)
        except OrderRequestError:
            raise InvalidOrdersQuery(
                INVALID_REQUEST, f"before_id must be an order id, not {before_id!r}", "before_id"
            ) from None
    try:
        statuses = wanted_statuses(state, status)
    except ValueError:
        raise InvalidOrdersQuery(
            INVALID_REQUEST, f"state must be one of {', '.join(ORDER_STATES)}, not {state!r}", "state"
        ) from None
    return CheckedOrdersQuery(member_id, market, state, status, limit, before, statuses)

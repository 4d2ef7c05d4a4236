"""The reads' arguments: which each read takes and what they mean, the one place it is written.

Every read with a limit (`bourse.application.ports.ReadModel`):

- `limit`: 1..`READ_MAX_LIMIT` items (orders, price levels per side, trades); when not given,
  `ORDERS_DEFAULT_LIMIT`, `DEPTH_DEFAULT_LIMIT`, `TRADES_DEFAULT_LIMIT` or
  `MEMBER_TRADES_DEFAULT_LIMIT`;
- `market`: one of `markets`, when the reader knows them (`unknown_market`). The depth and the
  public trades name a market; a member's orders and trades may.

A member's orders take two more:

- `before_id`: an order id (`bourse.application.order_requests.parse_order_id`: digits or an
  integer, 1..2**63-1): only orders below it, the paging cursor;
- `state`: "open", "closed" (every final status) or one status name (`ORDER_STATES`), and
  `status`: exactly that status; together they are the statuses asked for
  (`bourse.domain.order_views.wanted_statuses`).

K-lines (`check_klines_query`) take a `period` (`bourse.domain.candles.Period`: 1m ... 1w;
`unknown_period`), `start` and `end` (ms since the epoch, digits, or ISO-8601; a time without an
offset is UTC; `invalid_time`; start after end is `start_after_end`, and more than
`KLINES_MAX_INTERVALS` intervals between them `range_too_large`) and a `limit` of 1..1000
(default `KLINES_DEFAULT_LIMIT`).

`check_depth_query`, `check_trades_query`, `check_member_trades_query` and `check_orders_query`
refuse the first argument at fault, in the order above, with an `InvalidReadQuery`: code
`invalid_request` (or `unknown_market`), one message per argument, and the argument as `field`.
It is a `QueryFailed` (400, or 404 for an unknown market), so a read model that calls the check
answers as it answers any failed read: the query service with its error reply, the SQL and Redis
read models to the gateway's read chain. The REST API calls them before reading and maps them to
its own problems (`bourse.entrypoints.rest.orders.read_refused`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from bourse.application.order_requests import OrderRequestError, parse_order_id
from bourse.application.ports import QueryFailed
from bourse.domain.candles import Period
from bourse.domain.order_views import wanted_statuses
from bourse.domain.orders import OrderStatus

READ_MAX_LIMIT: Final = 1000
"""The most items one read returns: orders, price levels per side of the depth, or trades."""
ORDERS_DEFAULT_LIMIT: Final = 100
DEPTH_DEFAULT_LIMIT: Final = 50
TRADES_DEFAULT_LIMIT: Final = 100
MEMBER_TRADES_DEFAULT_LIMIT: Final = 100
ORDER_STATES: Final = ("open", "closed", *(s.value for s in OrderStatus if s.value not in ("open", "closed")))
"""What `state` may be ("closed" names the group of final statuses; `status` asks for one)."""
KLINES_DEFAULT_LIMIT: Final = 500
KLINES_MAX_INTERVALS: Final = READ_MAX_LIMIT
"""The most intervals a k-line range may span (`start` to `end`): one page at the largest limit."""
INVALID_REQUEST: Final = "invalid_request"
UNKNOWN_MARKET: Final = "unknown_market"
UNKNOWN_PERIOD: Final = "unknown_period"
INVALID_TIME: Final = "invalid_time"
START_AFTER_END: Final = "start_after_end"
RANGE_TOO_LARGE: Final = "range_too_large"
TIME_MAX_MS: Final = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: the last time a k-line query may name."""
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidReadQuery(QueryFailed):
    """A read refused for one of its arguments, `field`. `code` is stable."""

    def __init__(self, code: str, message: str, field: str) -> None:
        super().__init__(404 if code == UNKNOWN_MARKET else 400, code, message)
        self.field = field


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= READ_MAX_LIMIT:
        raise InvalidReadQuery(INVALID_REQUEST, f"limit must be 1..{READ_MAX_LIMIT}, not {limit}", "limit")


def _check_market(market: str | None, markets: Collection[str] | None) -> None:
    if market is not None and markets is not None and market not in markets:
        raise InvalidReadQuery(UNKNOWN_MARKET, f"no market {market!r}", "market")


def check_depth_query(
    market: str, *, limit: int = DEPTH_DEFAULT_LIMIT, markets: Collection[str] | None = None
) -> None:
    """A market's depth, `limit` price levels per side, checked by the rules of the module
    docstring; `markets`: the known markets, or None when the reader does not know them (then
    any market is asked for, and has no orders)."""
    _check_limit(limit)
    _check_market(market, markets)


def check_trades_query(
    market: str, *, limit: int = TRADES_DEFAULT_LIMIT, markets: Collection[str] | None = None
) -> None:
    """A market's recent trades, checked as `check_depth_query` checks the depth."""
    _check_limit(limit)
    _check_market(market, markets)


def check_member_trades_query(
    *,
    market: str | None = None,
    limit: int = MEMBER_TRADES_DEFAULT_LIMIT,
    markets: Collection[str] | None = None,
) -> None:
    """A member's recent trades (in one market, if given), checked as `check_depth_query` checks
    the depth."""
    _check_limit(limit)
    _check_market(market, markets)


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
    """A member's orders query, checked by the rules of the module docstring; `markets` as for
    `check_depth_query`."""
    _check_limit(limit)
    _check_market(market, markets)
    before: int | None = None
    if before_id is not None:
        try:
            before = parse_order_id(before_id)
        except OrderRequestError:
            raise InvalidReadQuery(
                INVALID_REQUEST, f"before_id must be an order id, not {before_id!r}", "before_id"
            ) from None
    try:
        statuses = wanted_statuses(state, status)
    except ValueError:
        raise InvalidReadQuery(
            INVALID_REQUEST, f"state must be one of {', '.join(ORDER_STATES)}, not {state!r}", "state"
        ) from None
    return CheckedOrdersQuery(member_id, market, state, status, limit, before, statuses)


@dataclass(frozen=True, slots=True)
class CheckedKlinesQuery:
    """A k-lines query `check_klines_query` accepted: times in ms since the epoch."""

    market: str
    period: Period
    start_ms: int | None
    end_ms: int | None
    limit: int


def parse_time_ms(value: str | int | None, field: str) -> int | None:
    """Milliseconds since the epoch from an integer, a string of digits, or ISO-8601 (UTC when
    it names no offset); None stays None."""
    if value is None:
        return None
    ms: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        ms = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 15:
        ms = int(value)
    elif isinstance(value, str) and len(value) <= 40:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            delta = parsed - _EPOCH
            ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if ms is None or not 0 <= ms <= TIME_MAX_MS:
        raise InvalidReadQuery(
            INVALID_TIME,
            f"{field} must be milliseconds since the epoch or an ISO-8601 time from 1970 on, not {value!r}",
            field,
        )
    return ms


def check_klines_query(
    market: str,
    *,
    period: str,
    start: str | int | None = None,
    end: str | int | None = None,
    limit: int = KLINES_DEFAULT_LIMIT,
    markets: Collection[str] | None = None,
) -> CheckedKlinesQuery:
    """A market's k-lines, checked by the rules of the module docstring, in this order: market,
    period, start, end, their order and span, limit."""
    _check_market(market, markets)
    try:
        checked_period = Period(period)
    except ValueError:
        names = ", ".join(p.value for p in Period)
        raise InvalidReadQuery(
            UNKNOWN_PERIOD, f"period must be one of {names}, not {period!r}", "period"
        ) from None
    start_ms = parse_time_ms(start, "start")
    end_ms = parse_time_ms(end, "end")
    if start_ms is not None and end_ms is not None:
        if start_ms > end_ms:
            raise InvalidReadQuery(START_AFTER_END, f"start ({start_ms}) is after end ({end_ms})", "start")
        intervals = (checked_period.open_time(end_ms) - checked_period.open_time(start_ms)) // (
            checked_period.length_ms
        ) + 1
        if intervals > KLINES_MAX_INTERVALS:
            raise InvalidReadQuery(
                RANGE_TOO_LARGE,
                f"start to end spans {intervals} intervals of {checked_period.value}; at most "
                f"{KLINES_MAX_INTERVALS} (ask for the next page from the last open time)",
                "end",
            )
    _check_limit(limit)
    return CheckedKlinesQuery(market, checked_period, start_ms, end_ms, limit)

"""Order routes: parse and check the request, hand the command to the pipeline, wait (boundedly)
for the answer. No decision is made here: funds, matching and idempotency are the stages' job."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Literal, TypeVar

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel

from bourse.application.order_requests import (
    OrderRequestError,
    amend_command,
    check_amend,
    market_of,
    parse_order_id,
    place_command,
)
from bourse.application.ports import NotSent, OutcomeUnknown, QueryFailed, Submitted
from bourse.application.read_queries import (
    ORDERS_DEFAULT_LIMIT,
    READ_MAX_LIMIT,
    InvalidReadQuery,
    check_orders_query,
)
from bourse.contracts.messages import Outcome
from bourse.domain.money import Market
from bourse.domain.order_views import OrderView
from bourse.domain.orders import (
    AmendOrder,
    CancelOrder,
    OrderStatus,
    OrderType,
    PlaceOrder,
    Side,
    TimeInForce,
    command_kind,
)
from bourse.domain.values import MemberId, OrderId
from bourse.entrypoints.rest.deps import Deps, GatewayDeps, Member
from bourse.entrypoints.rest.errors import ApiError
from bourse.entrypoints.rest.schemas import AmendIn, OrderIn, OrderOut, PendingOut, Problem

T = TypeVar("T")

router = APIRouter(prefix="/api/v3", tags=["orders"])

PROBLEMS: dict[int | str, dict[str, object]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (401, 404, 409, 422, 503, 504)
}


@contextlib.contextmanager
def refused_as_422() -> Iterator[None]:
    """An `OrderRequestError` (the rules shared with the RabbitMQ ingress) as a 422 problem."""
    try:
        yield
    except OrderRequestError as exc:
        if exc.field is None:  # an amend that changes nothing: no one field is at fault
            raise ApiError(422, exc.code, exc.message) from exc
        raise ApiError(422, exc.code, exc.message, field=exc.field) from exc


@contextlib.contextmanager
def read_refused(statuses: Mapping[str, int]) -> Iterator[None]:
    """A read's argument refused by the rule every reader shares (`bourse.application.read_queries`)
    as a problem: the status `statuses` gives for the argument (`InvalidReadQuery.field`), 422 for
    the others, as for every argument the gateway checks; the rule's code, message and field."""
    try:
        yield
    except InvalidReadQuery as exc:
        raise ApiError(statuses.get(exc.field, 422), exc.code, exc.message, field=exc.field) from exc


ReadLimit = Annotated[
    int,
    Query(description=f"1..{READ_MAX_LIMIT}", json_schema_extra={"minimum": 1, "maximum": READ_MAX_LIMIT}),
]
"""A read's `limit`: documented with its bounds, checked by the rule (`read_refused`), not by FastAPI."""


def market_or_422(deps: GatewayDeps, symbol: str) -> Market:
    with refused_as_422():
        return market_of(deps.catalog, symbol)


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def iso_ms(ms: int) -> str:
    """`iso()` of a time in ms since the epoch, exactly (no float: a candle's open time must
    read as its boundary, not a microsecond before it)."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def place_order_out(market: Market, command: PlaceOrder, outcome: Outcome | None) -> OrderOut:
    executed = outcome.executed if outcome is not None else 0
    status = outcome.status if outcome is not None and outcome.status is not None else OrderStatus.SUBMITTED
    return OrderOut(
        id=str(command.order_id),
        client_order_id=command.client_order_id,
        member_id=command.member_id,
        market=command.market,
        side=command.side,
        type=command.type,
        price=market.format_price(command.price) if command.price is not None else None,
        amount=market.format_amount(command.amount),
        executed=market.format_amount(executed),
        remaining=market.format_amount(command.amount - executed),
        status=status,
        time_in_force=command.tif,
        post_only=command.post_only,
        created_at=iso(command.created_at),
        reason=(outcome.reason or outcome.close_reason) if outcome is not None else None,
    )


async def submit(deps: GatewayDeps, command: PlaceOrder | CancelOrder | AmendOrder) -> Submitted:
    """The command made durable, or the true reason it is not: 503 when it was never sent (it
    cannot be stored later), 504 `outcome_unknown` when it was sent but not acknowledged (it is
    settled by `decided_by`, when GET /order/{id} tells; see `bourse.adapters.order_intake`)."""
    try:
        submission: Submitted = await deps.intake.submit(command)
    except NotSent as exc:
        raise ApiError(
            503, "unavailable", "the order could not be made durable; nothing was accepted"
        ) from exc
    except OutcomeUnknown as exc:
        wait_s = max(exc.decided_by_ns - time.time_ns(), 0) / 1e9
        what = "order" if isinstance(command, PlaceOrder) else command_kind(command)
        raise ApiError(
            504,
            "outcome_unknown",
            f"the {what} may or may not have been stored; it cannot take effect after decided_by: "
            f"then GET /api/v3/order/{command.order_id} tells (404 there: the order was not accepted)",
            headers={"Retry-After": str(math.ceil(wait_s))},
            order_id=str(command.order_id),
            decided_by=iso(exc.decided_by_ns),
        ) from exc
    return submission


RETRY_AFTER: Final = {"Retry-After": "1"}


def json_response(status: int, body: BaseModel) -> Response:
    headers = RETRY_AFTER if isinstance(body, PendingOut) else None
    return Response(
        body.model_dump_json(), status_code=status, media_type="application/json", headers=headers
    )


@router.post(
    "/order",
    status_code=201,
    response_model=OrderOut,
    responses={**PROBLEMS, 202: {"model": OrderOut, "description": "Durable, decision still pending"}},
)
async def create_order(body: OrderIn, member: Member, deps: Deps) -> Response:
    """Place a market or limit order.

    201: the accounts stage locked the funds (and usually the engine has matched it: see
    `status` and `executed`). 202: the order is durable but not decided yet (`status: submitted`).
    422: refused, nothing changed (`code` says why, e.g. `insufficient_funds`;
    `notional_too_small`: a limit order worth less than the market's `min_notional`;
    `too_many_open_orders`: the member holds `BOURSE_MAX_OPEN_ORDERS_PER_MEMBER` open orders
    already, cancel one or wait for a fill). Resending the same `client_order_id` returns the first
    order (200)."""
    status, out = await place_order(deps, member, body)
    return Response(out.model_dump_json(), status_code=status, media_type="application/json")


async def place_order(deps: GatewayDeps, member: int, body: OrderIn) -> tuple[int, OrderOut]:
    """The whole of POST /order once the member is known: shared by the FastAPI route and the
    gateway's lean hot path (`bourse.entrypoints.rest.hot_path`). Raises `ApiError` for every refusal."""
    market = market_or_422(deps, body.market)
    try:
        order_id = deps.ids.next_id()
    except Exception as exc:
        raise ApiError(503, "unavailable", "order ids are unavailable right now") from exc
    with refused_as_422():
        command = place_command(
            deps.catalog,
            body,
            order_id=order_id,
            member_id=member,
            created_at=time.time_ns(),
            client_order_id=body.client_order_id,
        )
    submission = await submit(deps, command)
    decision, outcome = await deps.intake.answer(submission, deps.decision_timeout_s)
    if decision is None:
        return 202, place_order_out(market, command, None)
    if not decision.accepted:
        if decision.existing_order_id is not None:
            first = await find_order(deps, member, decision.existing_order_id, wait_s=deps.decision_timeout_s)
            if first is None:
                raise ApiError(
                    409,
                    "duplicate_client_order_id",
                    "an order with this client_order_id exists",
                    order_id=str(decision.existing_order_id),
                )
            return 200, view_out(deps, first)
        reason = decision.reason or "rejected"
        raise ApiError(422, str(reason), f"order refused: {reason}", order_id=str(order_id))
    return 201, place_order_out(market, command, outcome)


def view_out(deps: GatewayDeps, view: OrderView, outcome: Outcome | None = None) -> OrderOut:
    market = deps.catalog.markets[view.market]
    executed, status = view.executed, view.status
    amount = view.amount or 0
    if outcome is not None and outcome.status is not None:
        executed, status = outcome.executed, outcome.status
    reason = view.reject_reason or view.close_reason
    if outcome is not None and (outcome.reason or outcome.close_reason) is not None:
        reason = outcome.reason or outcome.close_reason
    return OrderOut(
        id=str(view.id),
        client_order_id=view.client_order_id,
        member_id=view.member_id,
        market=view.market,
        side=view.side or Side.BUY,
        type=view.type or OrderType.LIMIT,
        price=market.format_price(view.price) if view.price is not None else None,
        amount=market.format_amount(amount),
        executed=market.format_amount(executed),
        remaining=market.format_amount(max(amount - executed, 0) if status in OPEN else view.remaining),
        status=status,
        time_in_force=view.tif or TimeInForce.GTC,
        post_only=view.post_only,
        created_at=iso(view.created_at) if view.created_at else None,
        reason=str(reason) if reason is not None else None,
    )


OPEN = frozenset({OrderStatus.SUBMITTED, OrderStatus.PARTIALLY_FILLED})


async def query(deps: GatewayDeps, call: Awaitable[T]) -> T:
    try:
        return await call
    except QueryFailed as exc:
        raise ApiError(exc.status if exc.status >= 400 else 503, exc.code, exc.message) from exc


PENDING: Final = "pending"


async def locate_order(
    deps: GatewayDeps, member: int, order_id: int, *, wait_s: float = 0.0
) -> OrderView | Literal["pending"] | None:
    """The member's order; `PENDING` when no read model knows it but the pipeline may still
    produce it (`GatewayDeps.progress`); None only once it provably will not."""
    view = await find_order(deps, member, order_id, wait_s=wait_s)
    if view is not None:
        return view
    if deps.progress is not None and await deps.progress.may_be_pending(member, order_id):
        return PENDING
    return await find_order(deps, member, order_id)  # it may have landed while progress was asked


async def find_order(
    deps: GatewayDeps, member: int, order_id: int, *, wait_s: float = 0.0
) -> OrderView | None:
    """The member's order from the read model; waits up to `wait_s` for a very recent one. An
    order the durable read model does not know yet (persistence commits within milliseconds, not
    instantly) is asked of the freshest one, `live_queries`, before it is called not found."""
    deadline = time.monotonic() + wait_s
    pause = 0.02
    while True:
        try:
            return await deps.queries.order(member, order_id)
        except QueryFailed as exc:
            if exc.code != "order_not_found":
                raise ApiError(exc.status, exc.code, exc.message) from exc
        if deps.live_queries is not None:
            with contextlib.suppress(QueryFailed):  # not found there either, or unreachable
                return await deps.live_queries.order(member, order_id)
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.25)  # a few looks, not a busy loop, for an id that never comes


async def freshest(deps: GatewayDeps, member: int, view: OrderView) -> OrderView:
    """An open order as the freshest read model has it. The durable models may lag by up to
    `BOURSE_READ_MAX_LAG_S`; an open order is the one whose state changes (fills, cancels,
    amends), so a client told "cancelled" must not then read it open. Final states are final."""
    if view.status not in OPEN or deps.live_queries is None:
        return view
    try:
        return await deps.live_queries.order(member, view.id)
    except QueryFailed:
        return view


def order_id_or_404(text: str) -> int:
    try:
        return parse_order_id(text)
    except OrderRequestError as exc:
        raise ApiError(404, "order_not_found", f"no order {text!r}") from exc


@router.get(
    "/order/{order_id}",
    response_model=OrderOut,
    responses={**PROBLEMS, 202: {"model": PendingOut, "description": "Not processed yet: ask again"}},
)
async def get_order(order_id: str, member: Member, deps: Deps) -> Response:
    """One of the member's orders. Another member's order id is a 404, as is an unknown one.
    202 (`status: pending`): no read model knows it yet but a stage has not processed
    everything that could carry it (accounts or matching behind, or the order just made)."""
    found = await locate_order(deps, member, order_id_or_404(order_id))
    if found is None:
        raise ApiError(404, "order_not_found", f"no order {order_id}")
    if found == PENDING:
        return json_response(202, pending(order_id, "place", "the order is not processed yet"))
    assert not isinstance(found, str)
    return json_response(200, view_out(deps, await freshest(deps, member, found)))


def pending(order_id: str, command: Literal["place", "cancel", "amend"], detail: str) -> PendingOut:
    return PendingOut(id=order_id, command=command, detail=detail)


ORDERS_QUERY_STATUS: Final = {"state": 400}
"""The status of an orders query refused for this argument (`read_refused`). An unknown state
stays a 400: clients have always had that for it (the read models answered it before the
gateway checked it)."""


@router.get("/orders", responses={**PROBLEMS, 400: PROBLEMS[422]})
async def list_orders(
    member: Member,
    deps: Deps,
    market: str | None = None,
    state: Annotated[str | None, Query(description='"open", "closed" or one status')] = None,
    limit: ReadLimit = ORDERS_DEFAULT_LIMIT,
    before_id: Annotated[str | None, Query(description="Paging: the last id of the previous page")] = None,
) -> list[OrderOut]:
    """The member's orders, most recent first. The arguments are checked by the rule every reader
    shares (`bourse.application.read_queries`)."""
    with read_refused(ORDERS_QUERY_STATUS):
        wanted = check_orders_query(
            member, market=market, state=state, limit=limit, before_id=before_id, markets=deps.catalog.markets
        )
    reads = deps.queries.orders(
        member, market=wanted.market, state=wanted.state, limit=wanted.limit, before_id=wanted.before_id
    )
    return [view_out(deps, view) for view in await query(deps, reads)]


async def send_and_wait(deps: GatewayDeps, command: CancelOrder | AmendOrder) -> tuple[bool, Outcome | None]:
    """Submit a cancel or amend and wait (boundedly) for it: (applied, outcome). Not applied
    yet (False) when accounts or the engine did not answer in time: the command is durable and
    takes effect when they process it. Raises `ApiError` for a refusal."""
    submission = await submit(deps, command)
    decision, outcome = await deps.intake.answer(submission, deps.decision_timeout_s)
    if decision is None:
        return False, None
    if not decision.accepted:
        reason = decision.reason or "rejected"
        if reason == "unknown_order":
            # the accounts stage tracks open orders only: a finished order of the member is
            # still the member's order, closed rather than not found. The read models may not
            # have its end yet (they follow the streams, which hold it by now): look a while.
            closed = await find_order(
                deps, command.member_id, command.order_id, wait_s=deps.decision_timeout_s
            )
            if closed is not None:
                raise ApiError(422, "order_closed", f"order {command.order_id} is no longer open")
            raise ApiError(404, "order_not_found", f"no open order {command.order_id}")
        raise ApiError(422, str(reason), f"refused: {reason}", order_id=str(command.order_id))
    if outcome is None:
        return False, None
    if outcome.status is None and outcome.reason is not None:
        if outcome.reason in ("unknown_order", "order_closed"):
            raise ApiError(422, "order_closed", f"order {command.order_id} is no longer open")
        raise ApiError(422, str(outcome.reason), f"refused: {outcome.reason}", order_id=str(command.order_id))
    return True, outcome


async def read_after_write(deps: GatewayDeps, member: int, order_id: int, wait_s: float) -> OrderView | None:
    """The order as the read models have it after a command was applied; None if they cannot
    say (not there yet, or unreachable): the command's own answer must not fail for a read."""
    try:
        return await find_order(deps, member, order_id, wait_s=wait_s)
    except ApiError:
        return None


@router.delete(
    "/order/{order_id}",
    response_model=OrderOut,
    responses={**PROBLEMS, 202: {"model": PendingOut, "description": "Durable, not applied yet"}},
)
async def cancel_order(order_id: str, member: Member, deps: Deps) -> Response:
    """Cancel an open order; returns it as it ended (cancelled, or executed if it filled first).
    202 (`status: pending`): the cancel is durable but not applied yet; it takes effect if the
    order is still open when the engine processes it."""
    status, out = await cancel(deps, member, order_id)
    return json_response(status, out)


async def cancel(deps: GatewayDeps, member: int, order_id: str) -> tuple[int, OrderOut | PendingOut]:
    """The whole of DELETE /order/{id} once the member is known: shared by the FastAPI route
    and the gateway's lean hot path. Raises `ApiError` for every refusal."""
    oid = order_id_or_404(order_id)
    applied, outcome = await send_and_wait(deps, CancelOrder(OrderId(oid), MemberId(member), ""))
    if not applied:
        return 202, pending(order_id, "cancel", "the cancel is durable and not applied yet")
    view = await read_after_write(deps, member, oid, 0.5)
    if view is None:
        out = pending(order_id, "cancel", "the cancel is applied; the order cannot be read yet")
        out.order_status = outcome.status if outcome is not None else None
        return 202, out
    return 200, view_out(deps, view, outcome)


@router.patch(
    "/order/{order_id}",
    response_model=OrderOut,
    responses={**PROBLEMS, 202: {"model": PendingOut, "description": "Durable, not applied yet"}},
)
async def amend_order(order_id: str, body: AmendIn, member: Member, deps: Deps) -> Response:
    """Change price and/or total amount. A pure decrease of the amount keeps time priority; any
    other change moves the order to the back of its price level (and may trade at once).
    422 `notional_too_small`: the new price x amount is below the market's `min_notional`.
    202 (`status: pending`): the amend is durable but not applied yet. 409 `order_pending`: the
    order itself is not processed yet, nothing was sent; try again."""
    oid = order_id_or_404(order_id)
    with refused_as_422():
        check_amend(body.price, body.amount)
    found = await locate_order(deps, member, oid, wait_s=0.5)
    if found is None:
        raise ApiError(404, "order_not_found", f"no order {order_id}")
    if found == PENDING:
        raise ApiError(
            409, "order_pending", "the order is not processed yet; nothing was sent", headers=RETRY_AFTER
        )
    assert not isinstance(found, str)
    view = found
    market = deps.catalog.markets[view.market]
    with refused_as_422():
        command = amend_command(
            deps.catalog,
            order_id=oid,
            member_id=member,
            market=view.market,
            price=body.price,
            amount=body.amount,
        )
    price, amount = command.price, command.amount
    applied, outcome = await send_and_wait(deps, command)
    if not applied:
        return json_response(202, pending(order_id, "amend", "the amend is durable and not applied yet"))
    view = await read_after_write(deps, member, oid, 0.0) or view
    out = view_out(deps, view, outcome)
    if price is not None:
        out.price = market.format_price(price)
    if amount is not None:
        # from the integers: parsing `out.executed` back refuses "0.000000" (and anything below
        # the market minimum) as an order amount, which made every such amend a 500
        executed = outcome.executed if outcome is not None and outcome.status is not None else view.executed
        out.amount = market.format_amount(amount)
        out.remaining = market.format_amount(max(amount - executed, 0))
    return json_response(200, out)


@router.delete("/orders", responses=PROBLEMS)
async def cancel_all(member: Member, deps: Deps, market: str | None = None) -> list[str]:
    """Cancel every open order of the member (in one market, if given); returns the ids asked
    to cancel. Each cancel is durable when this returns; results arrive as order events."""
    if market is not None:
        market_or_422(deps, market)
    reads = deps.live_queries or deps.queries  # the freshest: an order placed just now is listed
    views = await query(deps, reads.orders(member, market=market, state="open", limit=READ_MAX_LIMIT))
    commands = [CancelOrder(view.id, MemberId(member), view.market) for view in views]
    submissions = await asyncio.gather(*(submit(deps, command) for command in commands))
    for submission in submissions:
        deps.intake.forget(submission)
    return [str(command.order_id) for command in commands]

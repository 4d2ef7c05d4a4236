"""Order routes: parse and check the request, hand the command to the pipeline, wait (boundedly)
for the answer. No decision is made here: funds, matching and idempotency are the stages' job."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from bourse.adapters.order_intake import Submission
from bourse.api.deps import Deps, GatewayDeps, Member
from bourse.api.errors import ApiError
from bourse.api.schemas import OrderIn, OrderOut, Problem
from bourse.contracts import Decision, Outcome
from bourse.domain.money import Market, MoneyError
from bourse.domain.orders import OrderStatus, OrderType, PlaceOrder, TimeInForce

router = APIRouter(prefix="/api/v3", tags=["orders"])

PROBLEMS: dict[int | str, dict[str, object]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}} for status in (401, 404, 409, 422, 503)
}


def market_or_422(deps: GatewayDeps, symbol: str) -> Market:
    market = deps.catalog.market(symbol)
    if market is None:
        raise ApiError(422, "unknown_market", f"no market {symbol!r}", field="market")
    return market


def parse_money(parse: object, text: str) -> int:
    try:
        return parse(text)  # type: ignore[operator, no-any-return]
    except MoneyError as exc:
        raise ApiError(422, exc.code, str(exc), field=exc.field) from exc


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


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
        reason=outcome.reason if outcome is not None and outcome.reason is not None else None,
    )


async def submit(deps: GatewayDeps, command: PlaceOrder) -> Submission:
    try:
        return await deps.intake.submit(command)
    except Exception as exc:
        raise ApiError(503, "unavailable", "the order could not be made durable; nothing was accepted") from exc


async def wait_answer(
    deps: GatewayDeps, submission: Submission
) -> tuple[Decision | None, Outcome | None]:
    """The accounts decision and, if it comes within the same bound, the engine outcome."""
    deadline = time.monotonic() + deps.decision_timeout_s
    decision: Decision | None = None
    outcome: Outcome | None = None
    try:
        decision = await asyncio.wait_for(asyncio.shield(submission.decision), deps.decision_timeout_s)
        if decision.accepted:
            outcome = await asyncio.wait_for(
                asyncio.shield(submission.outcome), max(deadline - time.monotonic(), 0.0)
            )
    except TimeoutError:
        pass
    finally:
        deps.intake.forget(submission)
    return decision, outcome


@router.post(
    "/order",
    status_code=201,
    responses={**PROBLEMS, 202: {"model": OrderOut, "description": "Durable, decision still pending"}},
)
async def create_order(body: OrderIn, member: Member, deps: Deps) -> OrderOut | JSONResponse:
    """Place a market or limit order.

    201: the accounts stage locked the funds (and usually the engine has matched it: see
    `status` and `executed`). 202: the order is durable but not decided yet (`status: submitted`).
    422: refused, nothing changed (`code` says why, e.g. `insufficient_funds`). Resending the same
    `client_order_id` returns the first order (200)."""
    market = market_or_422(deps, body.market)
    amount = parse_money(market.parse_amount, body.amount)
    price: int | None = None
    if body.type is OrderType.LIMIT:
        if body.price is None:
            raise ApiError(422, "price_required", "a limit order needs a price", field="price")
        price = parse_money(market.parse_price, body.price)
    else:
        if body.price is not None:
            raise ApiError(422, "price_not_allowed", "a market order takes no price", field="price")
        if body.post_only:
            raise ApiError(422, "invalid_order", "post_only applies to limit orders", field="post_only")
    if body.post_only and body.time_in_force is not TimeInForce.GTC:
        raise ApiError(422, "invalid_order", "post_only requires time_in_force gtc", field="post_only")
    try:
        order_id = deps.ids.next_id()
    except Exception as exc:
        raise ApiError(503, "unavailable", "order ids are unavailable right now") from exc
    command = PlaceOrder(
        order_id=order_id,
        member_id=member,
        market=market.symbol,
        side=body.side,
        type=body.type,
        amount=amount,
        price=price,
        tif=body.time_in_force,
        post_only=body.post_only,
        created_at=time.time_ns(),
        client_order_id=body.client_order_id,
    )
    submission = await submit(deps, command)
    decision, outcome = await wait_answer(deps, submission)
    if decision is None:
        return JSONResponse(place_order_out(market, command, None).model_dump(), status_code=202)
    if not decision.accepted:
        if decision.existing_order_id is not None:
            return JSONResponse(
                {"id": str(decision.existing_order_id), "client_order_id": body.client_order_id, "duplicate": True},
                status_code=200,
            )
        reason = decision.reason or "rejected"
        raise ApiError(422, str(reason), f"order refused: {reason}", order_id=str(order_id))
    return place_order_out(market, command, outcome)

"""The gateway's order intake: replies resolve the right submission, in whatever order they come."""

from __future__ import annotations

from typing import Any

from nats.aio.msg import Msg

from bourse.adapters.order_intake import OrderIntake, Submission
from bourse.contracts.messages import Decision, Decisions, Outcome, Outcomes, encode
from bourse.domain.orders import OrderStatus, OrderType, PlaceOrder, RejectReason, Side
from bourse.domain.values import Amount, MemberId, OrderId, Price


class _Client:
    def jetstream(self) -> None:
        return None

    def new_inbox(self) -> str:
        return "_INBOX.test"


def _intake() -> OrderIntake:
    client: Any = _Client()
    return OrderIntake(client, "t", 1)


def _reply(payload: bytes) -> Msg:
    return Msg(_client=None, subject="_INBOX.test", data=payload)  # type: ignore[arg-type]


def _waiting(intake: OrderIntake, order_id: int) -> Submission:
    command = PlaceOrder(
        OrderId(order_id), MemberId(1), "btc_usd", Side.BUY, OrderType.LIMIT, Amount(100), Price(5_000_000)
    )
    submission = Submission(command)
    intake._waiting[(order_id, "place")] = submission
    return submission


async def test_an_outcome_that_overtakes_the_decision_decides_the_order() -> None:
    intake = _intake()
    submission = _waiting(intake, 7)
    await intake._on_reply(
        _reply(encode(Outcomes([Outcome(OrderId(7), "place", OrderStatus.SUBMITTED, Amount(0))])))
    )
    await intake._on_reply(_reply(encode(Decisions([Decision(OrderId(7), "place", True)]))))
    assert submission.decision.done()
    assert submission.decision.result().accepted
    assert submission.outcome.result().status is OrderStatus.SUBMITTED
    assert not intake._waiting


async def test_decision_then_outcome() -> None:
    intake = _intake()
    submission = _waiting(intake, 8)
    await intake._on_reply(_reply(encode(Decisions([Decision(OrderId(8), "place", True)]))))
    assert submission.decision.result().accepted
    assert not submission.outcome.done()
    await intake._on_reply(
        _reply(encode(Outcomes([Outcome(OrderId(8), "place", OrderStatus.EXECUTED, Amount(100))])))
    )
    assert submission.outcome.result().executed == 100
    assert not intake._waiting


async def test_answer_gives_what_came_within_the_bound_and_stops_waiting() -> None:
    intake = _intake()
    silent, decided_only, whole = _waiting(intake, 9), _waiting(intake, 10), _waiting(intake, 11)
    await intake._on_reply(
        _reply(
            encode(Decisions([Decision(OrderId(10), "place", True), Decision(OrderId(11), "place", True)]))
        )
    )
    await intake._on_reply(
        _reply(encode(Outcomes([Outcome(OrderId(11), "place", OrderStatus.SUBMITTED, Amount(0))])))
    )
    assert await intake.answer(silent, 0.05) == (None, None)
    decision, outcome = await intake.answer(decided_only, 0.05)
    assert decision is not None
    assert decision.accepted
    assert outcome is None
    decision, outcome = await intake.answer(whole, 0.05)
    assert outcome is not None
    assert outcome.status is OrderStatus.SUBMITTED
    assert not intake._waiting
    # a reply after the bound finds nobody waiting and changes nothing
    await intake._on_reply(_reply(encode(Decisions([Decision(OrderId(9), "place", True)]))))
    assert silent.decision.cancelled()


async def test_a_refusal_ends_the_wait_without_an_outcome() -> None:
    intake = _intake()
    submission = _waiting(intake, 12)
    refusal = Decision(OrderId(12), "place", False, RejectReason.INSUFFICIENT_FUNDS)
    await intake._on_reply(_reply(encode(Decisions([refusal]))))
    decision, outcome = await intake.answer(submission, 5.0)
    assert decision is not None
    assert not decision.accepted
    assert outcome is None

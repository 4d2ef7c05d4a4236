"""The fault suite's checker on answers made up for the purpose: each kind of untrue answer the
issue describes is found, and true answers are not called lies (no servers needed)."""

from __future__ import annotations

from bourse.domain.orders import OrderAccepted, OrderType, PlaceOrder, Side, TimeInForce
from bourse.domain.values import Amount, MemberId, OrderId, Price
from tests.faults.check import Findings, Truth, check_answers, check_invariants
from tests.faults.load import Attempt


def place(
    truth: Truth, order_id: int, client_id: str, *, accepted: bool = True, status: str = "submitted"
) -> None:
    """An order stored in ORDERS (and accepted by the engine, unless not)."""
    command = PlaceOrder(
        OrderId(order_id),
        MemberId(1),
        "btc_usd",
        Side.BUY,
        OrderType.LIMIT,
        Amount(100),
        Price(5),
        client_order_id=client_id,
    )
    truth.placed[order_id] = command
    truth.by_client[(1, client_id)].append(order_id)
    if accepted:
        truth.accepted[order_id] = OrderAccepted(
            OrderId(order_id),
            MemberId(1),
            "btc_usd",
            Side.BUY,
            OrderType.LIMIT,
            Amount(100),
            Price(5),
            TimeInForce.GTC,
            False,
            0,
            0,
            client_id,
        )
        truth.status[order_id] = status
        truth.amount[order_id] = 100


def answer(
    kind: str,
    status: str,
    *,
    client_id: str | None = None,
    order_id: int | None = None,
    code: str | None = None,
    order_status: str | None = None,
) -> Attempt:
    return Attempt(kind, 1, 0.0, 1.0, status, code, client_id, order_id, order_status)


def lies(attempts: list[Attempt], truth: Truth) -> dict[str, int]:
    findings = Findings()
    check_answers(attempts, truth, findings)
    return dict(findings.lies)


def test_true_answers_are_not_lies() -> None:
    truth = Truth()
    place(truth, 10, "a", status="cancelled")
    place(truth, 11, "b", accepted=False)
    truth.rejected[11] = "insufficient_funds"
    attempts = [
        answer("place", "201", client_id="a", order_id=10, order_status="submitted"),
        answer("cancel", "200", order_id=10, order_status="cancelled"),
        answer("place", "422", client_id="b", order_id=11, code="insufficient_funds"),
        answer("place", "503", client_id="c", code="unavailable"),
    ]
    findings = Findings()
    check_answers(attempts, truth, findings)
    assert not findings.lies
    assert not findings.lost
    assert findings.acked == 1


def test_a_refusal_stored_anyway_is_a_lie() -> None:
    truth = Truth()
    place(truth, 20, "a")  # issue 10 item 2: answered 503, stored when NATS came back
    assert lies([answer("place", "503", client_id="a", code="unavailable")], truth) == {
        "refused (place 503 unavailable), stored anyway": 1
    }


def test_a_202_never_decided_and_an_acknowledged_order_called_unknown_are_lies() -> None:
    truth = Truth()
    place(truth, 30, "a")
    place(truth, 31, "a", accepted=False)  # issue 10 item 3: refused as a duplicate, silently
    attempts = [
        answer("place", "201", client_id="a", order_id=30),
        answer("place", "202", client_id="a", order_id=31),
        answer("get", "404", order_id=30, code="order_not_found"),
    ]
    assert lies(attempts, truth) == {"place 202, never decided": 1, "get 404 of an acknowledged order": 1}


def test_cancels_and_amends_answered_one_way_and_applied_the_other() -> None:
    truth = Truth()
    place(truth, 40, "a", status="cancelled")
    place(truth, 41, "b", status="cancelled")
    place(truth, 42, "c")
    place(truth, 43, "d")
    truth.amended[43] = 1
    attempts = [
        answer("cancel", "404", order_id=40, code="order_not_found"),
        answer("cancel", "200", order_id=41, order_status="submitted"),
        answer("amend", "200", order_id=42),
        answer("amend", "503", order_id=43, code="unavailable"),
    ]
    assert lies(attempts, truth) == {
        "cancel 404 of an acknowledged order": 1,
        "cancel 200 with an open status, cancelled later": 1,
        "amend 200, not applied": 1,
        "amend 503, applied": 1,
    }


def test_an_acknowledged_order_missing_from_the_streams_is_lost() -> None:
    truth = Truth()
    findings = Findings()
    check_answers(
        [answer("place", "201", client_id="a", order_id=50), answer("amqp", "confirmed", client_id="b")],
        truth,
        findings,
    )
    assert sum(findings.lost.values()) == 2


def test_invariants_find_overfill_duplicates_and_money_made() -> None:
    truth = Truth()
    place(truth, 60, "a", status="executed")
    truth.executed[60] = 100
    truth.traded[60] = 120
    truth.trade_ids[("btc_usd", 1)] = 2
    truth.balances[(0, 1, "usd")] = (1_000, 0)
    findings = Findings()
    check_invariants(truth, {"usd": 900}, findings)
    assert findings.overfilled == 1
    assert findings.duplicate_trades == 1
    assert findings.conservation == {"stream usd": 100}


def test_an_unknown_outcome_may_go_either_way_but_must_end_decided() -> None:
    truth = Truth()
    place(truth, 70, "a")  # answered 504 outcome_unknown, then stored and accepted: true
    place(truth, 71, "b", accepted=False)  # answered 504, stored, never decided: not true
    attempts = [
        answer("place", "504", client_id="a", order_id=70, code="outcome_unknown"),
        answer("place", "504", client_id="b", order_id=71, code="outcome_unknown"),
        answer("place", "504", client_id="c", order_id=72, code="outcome_unknown"),  # never stored
    ]
    assert lies(attempts, truth) == {"place 504, stored, never decided": 1}


def test_a_pending_cancel_must_apply() -> None:
    truth = Truth()
    place(truth, 80, "a", status="executed")  # the cancel found it filled: true
    place(truth, 81, "b")  # still open at the end: the 202 was not true
    attempts = [
        answer("cancel", "202", order_id=80, order_status="pending"),
        answer("cancel", "202", order_id=81, order_status="pending"),
    ]
    assert lies(attempts, truth) == {"cancel 202 pending, never applied": 1}


def test_a_final_status_in_an_answer_must_be_the_end_and_reads_must_not_go_back() -> None:
    truth = Truth()
    place(truth, 90, "a", status="partially_filled")
    place(truth, 91, "b", status="cancelled")
    attempts = [
        answer("place", "201", client_id="a", order_id=90, order_status="executed"),
        answer("cancel", "200", order_id=91, order_status="cancelled"),
        Attempt("get", 1, 2.0, 2.1, "200", None, None, 91, "submitted"),  # sent after the cancel's answer
        Attempt("get", 1, 0.5, 0.6, "200", None, None, 91, "submitted"),  # sent before: true then
    ]
    assert lies(attempts, truth) == {
        "place 201 said executed, ended otherwise": 1,
        "get 200 open after the client was told the order ended": 1,
    }

"""The accounts shard keeps its senders' answers true: a command stored after the deadline its
sender gave it is refused (`expired`) and changes nothing; a resent `client_order_id` is refused
visibly, so the second order id reads as refused rather than unknown."""

from __future__ import annotations

from bourse.application.accounts_stage import AccountsShard
from bourse.application.catalog import default_markets_file, load_catalog
from bourse.contracts.messages import AccountsBatch, Deposit
from bourse.domain.order_views import rejected_view
from bourse.domain.orders import CancelOrder, OrderType, PlaceOrder, RejectReason, Side
from bourse.domain.values import Amount, MemberId, OrderId, Price

CATALOG = load_catalog(default_markets_file())
SECOND = 1_000_000_000
T0 = 1_800_000_000 * SECOND


def _shard() -> AccountsShard:
    shard = AccountsShard.empty(0, CATALOG, record_entries=True)
    shard.process(1, AccountsBatch([Deposit(MemberId(1), "usd", 10**15, "seed:1")]))
    return shard


def _buy(order_id: int, client_id: str | None = None) -> PlaceOrder:
    return PlaceOrder(
        OrderId(order_id),
        MemberId(1),
        "btc_usd",
        Side.BUY,
        OrderType.LIMIT,
        Amount(10_000),
        Price(5_000_000),
        client_order_id=client_id,
    )


def test_a_command_stored_after_its_deadline_is_refused_and_changes_nothing() -> None:
    shard = _shard()
    before = shard.accounts.snapshot()
    late = AccountsBatch(
        [_buy(10, "c-1"), CancelOrder(OrderId(9), MemberId(1), "btc_usd")], "_INBOX.g", deadline_ns=T0
    )
    out = shard.process(2, late, stored_at_ns=T0 + 1)
    assert [(d.order_id, d.command, d.accepted, d.reason) for d in out.decisions] == [
        (10, "place", False, RejectReason.EXPIRED),
        (9, "cancel", False, RejectReason.EXPIRED),
    ]
    assert out.match == {}
    assert out.report is None  # nothing happened, so nothing is recorded
    assert shard.accounts.snapshot() == before
    # the client order id was not taken: the same order sent again in time is a new order
    again = shard.process(3, AccountsBatch([_buy(11, "c-1")], deadline_ns=T0 + SECOND), stored_at_ns=T0)
    assert again.decisions[0].accepted


def test_a_command_stored_by_its_deadline_is_processed() -> None:
    shard = _shard()
    out = shard.process(2, AccountsBatch([_buy(10)], deadline_ns=T0), stored_at_ns=T0)
    assert out.decisions[0].accepted
    assert [command.order_id for command in out.match["btc_usd"]] == [10]


def test_a_resent_client_order_id_is_refused_visibly_and_names_the_first_order() -> None:
    shard = _shard()
    shard.process(2, AccountsBatch([_buy(10, "abc")]))
    out = shard.process(3, AccountsBatch([_buy(11, "abc")]))
    decision = out.decisions[0]
    assert (decision.accepted, decision.reason, decision.existing_order_id) == (
        False,
        RejectReason.CLIENT_ORDER_ID_TAKEN,
        10,
    )
    assert out.report is not None
    [rejected] = out.report.rejected
    assert (rejected.order_id, rejected.reason) == (11, RejectReason.CLIENT_ORDER_ID_TAKEN)
    view = rejected_view(rejected, T0)  # what every read model makes of it
    assert view is not None
    assert (view.id, view.status, view.reject_reason) == (11, "closed", "client_order_id_taken")

"""Typed values (`bourse.domain.values`): mypy tells a price from an amount and an order id from a
member id; at runtime they are plain ints, on the wire too."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from bourse.contracts.messages import EVENT_BATCH_DECODER, EventBatch, encode
from bourse.domain.orders import OrderType, PlaceOrder, Side, Trade
from bourse.domain.values import Amount, MemberId, OrderId, Price, QuoteUnits, TradeId

SNIPPET = """\
from bourse.domain.money import Market
from bourse.domain.orders import OrderType, PlaceOrder, Side
from bourse.domain.values import Amount, MemberId, OrderId, Price


def right(market: Market, order: OrderId, member: MemberId, price: Price, amount: Amount) -> int:
    PlaceOrder(order, member, market.symbol, Side.BUY, OrderType.LIMIT, amount, price)
    return market.funds(price, amount)


def wrong(market: Market, order: OrderId, member: MemberId, price: Price, amount: Amount) -> int:
    PlaceOrder(member, order, market.symbol, Side.BUY, OrderType.LIMIT, price, amount)
    return market.funds(amount, price)
"""

EXPECTED = [
    (12, 'Argument 1 to "PlaceOrder" has incompatible type "MemberId"; expected "OrderId"'),
    (12, 'Argument 2 to "PlaceOrder" has incompatible type "OrderId"; expected "MemberId"'),
    (12, 'Argument 6 to "PlaceOrder" has incompatible type "Price"; expected "Amount"'),
    (12, 'Argument 7 to "PlaceOrder" has incompatible type "Amount"; expected "Price | None"'),
    (13, 'Argument 1 to "funds" of "Market" has incompatible type "Amount"; expected "Price"'),
    (13, 'Argument 2 to "funds" of "Market" has incompatible type "Price"; expected "Amount"'),
]


def test_mypy_refuses_a_price_for_an_amount_and_an_order_id_for_a_member_id(tmp_path: Path) -> None:
    """The snippet's `right` checks clean under --strict; every swap in `wrong` is an error that
    names both types (and nothing else is: the package and its types were found)."""
    source = tmp_path / "swapped.py"
    source.write_text(SNIPPET)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--show-error-codes", source.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = sorted(
        (int(line.split(":")[1]), line.split("error: ", 1)[1].removesuffix("  [arg-type]"))
        for line in result.stdout.splitlines()
        if ": error: " in line
    )
    assert errors == EXPECTED, result.stdout + result.stderr
    assert result.returncode == 1


def test_a_new_type_is_the_int_itself() -> None:
    value = 5_000_000
    assert Price(value) is value
    assert type(Amount(3)) is int


@pytest.mark.parametrize(
    ("encode_as", "decode_back"),
    [
        (msgspec.msgpack.encode, msgspec.msgpack.Decoder(PlaceOrder).decode),
        (msgspec.json.encode, msgspec.json.Decoder(PlaceOrder).decode),
    ],
    ids=["msgpack", "json"],
)
def test_prices_and_amounts_round_trip_through_msgspec_unchanged(
    encode_as: Callable[[PlaceOrder], bytes], decode_back: Callable[[bytes], PlaceOrder]
) -> None:
    order = PlaceOrder(
        OrderId(1 << 62), MemberId(7), "BTC-USD", Side.BUY, OrderType.LIMIT, Amount(10**18 - 1), Price(1)
    )
    back = decode_back(encode_as(order))
    assert back == order
    assert (back.order_id, back.member_id, back.amount, back.price) == (1 << 62, 7, 10**18 - 1, 1)
    assert {type(v) for v in (back.order_id, back.member_id, back.amount, back.price)} == {int}


def test_the_wire_bytes_are_those_of_plain_ints() -> None:
    """A typed field encodes exactly as an int field would, and decodes with the same checks."""

    class PlainTrade(msgspec.Struct, frozen=True, tag_field="kind", tag="trade"):
        trade_id: int
        market: str
        price: int
        amount: int
        funds: int
        maker_order_id: int
        maker_member_id: int
        taker_order_id: int
        taker_member_id: int
        taker_side: Side
        ts: int

    fields = (3, "BTC-USD", 5_000_000, 25, 125_000_000, 11, 1, 12, 2, Side.BUY, 99)
    typed = Trade(
        TradeId(3),
        "BTC-USD",
        Price(5_000_000),
        Amount(25),
        QuoteUnits(125_000_000),
        OrderId(11),
        MemberId(1),
        OrderId(12),
        MemberId(2),
        Side.BUY,
        99,
    )
    assert encode(typed) == msgspec.msgpack.encode(PlainTrade(*fields))
    batch = EventBatch("BTC-USD", 1, 99, [typed])
    assert EVENT_BATCH_DECODER.decode(encode(batch)) == batch
    with pytest.raises(msgspec.ValidationError, match="Expected `int`, got `str`"):
        msgspec.json.decode(b'{"kind": "trade", "trade_id": 1, "price": "5"}', type=Trade)

"""Orders that trade, over HTTP: limit and market orders, partial fills in price-time priority,
IOC, FOK and post-only, with balances settled after maker (0.1 %) and taker (0.2 %) fees: the
buyer pays its fee in the base currency, the seller in the quote currency."""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal

from tests.e2e.harness import DEMO_BALANCES, Balances, Exchange, Member

MAKER = Decimal("0.001")
TAKER = Decimal("0.002")
D = Decimal


def fee(gross: Decimal, rate: Decimal) -> Decimal:
    """The ledger's rule: rounded down to a whole unit (1e-8) of the currency."""
    return (gross * rate).quantize(Decimal("1e-8"), rounding=ROUND_DOWN)


def demo(member: Member, **changes: tuple[Decimal, Decimal]) -> Balances:
    """The member's demo balances with these currencies replaced by (available, locked)."""
    balances = {currency: (amount, D(0)) for currency, amount in DEMO_BALANCES[member.id].items()}
    balances.update(changes)
    return balances


async def test_crossing_limit_orders_trade_at_the_makers_price_and_settle_with_fees(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    sell = await alice.place(market="btc_usd", side="sell", amount="0.5", price="50000")
    assert (sell["status"], sell["executed"], sell["remaining"]) == ("submitted", "0.000000", "0.500000")
    buy = await bob.place(market="btc_usd", side="buy", amount="0.2", price="50010")
    assert (buy["status"], buy["executed"], buy["remaining"]) == ("executed", "0.200000", "0.000000")
    assert buy["price"] == "50010.00"
    await exchange.settle()

    maker = await alice.order(sell["id"])
    assert (maker["status"], maker["executed"], maker["remaining"]) == (
        "partially_filled",
        "0.200000",
        "0.300000",
    )
    taker = await bob.order(buy["id"])
    assert (taker["status"], taker["executed"], taker["remaining"]) == ("executed", "0.200000", "0.000000")

    funds = D("0.2") * 50000
    # seller (maker): 0.3 btc still locked in the order; usd received minus 0.1 % in usd
    assert await alice.balances() == demo(
        alice, btc=(D("9.5"), D("0.3")), usd=(D(1_000_000) + funds - fee(funds, MAKER), D(0))
    )
    # buyer (taker): paid the maker's price, the rest of the lock released; btc minus 0.2 % in btc
    assert await bob.balances() == demo(
        bob, btc=(D(10) + D("0.2") - fee(D("0.2"), TAKER), D(0)), usd=(D(1_000_000) - funds, D(0))
    )

    response = await exchange.http.get("/markets/btc_usd/trades")
    [trade] = response.json()
    assert (trade["price"], trade["amount"], trade["funds"], trade["taker_side"]) == (
        "50000.00",
        "0.200000",
        "10000.00000000",
        "buy",
    )
    [alice_trade] = await alice.trades()
    [bob_trade] = await bob.trades()
    assert (alice_trade["order_id"], alice_trade["side"], alice_trade["role"]) == (
        sell["id"],
        "sell",
        "maker",
    )
    assert (bob_trade["order_id"], bob_trade["side"], bob_trade["role"]) == (buy["id"], "buy", "taker")
    assert alice_trade["id"] == bob_trade["id"] == trade["id"]


async def test_a_selling_taker_pays_its_fee_in_quote_and_a_buying_maker_in_base(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    bid = await alice.limit("buy", "0.4", "40000")
    sell = await bob.place(market="btc_usd", side="sell", amount="0.4", price="39000")
    assert (sell["status"], sell["executed"]) == ("executed", "0.400000")
    await exchange.settle()

    assert (await alice.order(bid))["status"] == "executed"
    funds = D("0.4") * 40000
    assert await alice.balances() == demo(
        alice, btc=(D(10) + D("0.4") - fee(D("0.4"), MAKER), D(0)), usd=(D(1_000_000) - funds, D(0))
    )
    assert await bob.balances() == demo(
        bob, btc=(D("9.6"), D(0)), usd=(D(1_000_000) + funds - fee(funds, TAKER), D(0))
    )


async def test_market_buy_takes_the_best_asks_and_releases_the_rest_of_its_lock(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    await alice.limit("sell", "0.1", "50000")
    await alice.limit("sell", "0.5", "50100")
    buy = await bob.place(market="btc_usd", side="buy", type="market", amount="0.3")
    assert (buy["status"], buy["executed"], buy["remaining"], buy["price"]) == (
        "executed",
        "0.300000",
        "0.000000",
        None,
    )
    await exchange.settle()

    spent = D("0.1") * 50000 + D("0.2") * 50100
    assert await bob.balances() == demo(
        bob, btc=(D(10) + D("0.3") - fee(D("0.3"), TAKER), D(0)), usd=(D(1_000_000) - spent, D(0))
    )
    depth = (await exchange.http.get("/markets/btc_usd/depth")).json()
    assert depth["asks"] == [["50100.00", "0.300000"]]
    assert depth["last_price"] == "50100.00"


async def test_market_sell_takes_the_best_bids_and_pays_the_taker_fee_in_quote(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    await bob.limit("buy", "0.2", "48000")
    await bob.limit("buy", "0.2", "49000")
    sell = await alice.place(market="btc_usd", side="sell", type="market", amount="0.3")
    assert (sell["status"], sell["executed"]) == ("executed", "0.300000")
    await exchange.settle()

    received = D("0.2") * 49000 + D("0.1") * 48000
    assert await alice.balances() == demo(
        alice, btc=(D("9.7"), D(0)), usd=(D(1_000_000) + received - fee(received, TAKER), D(0))
    )
    depth = (await exchange.http.get("/markets/btc_usd/depth")).json()
    assert depth["bids"] == [["48000.00", "0.100000"]]


async def test_market_buy_is_bounded_by_the_buyers_funds_and_the_rest_is_closed(
    exchange: Exchange, alice: Member, carol: Member
) -> None:
    ask = await alice.limit("sell", "10", "60000")  # 600,000 usd of btc; carol has 500,000
    buy = await carol.place(market="btc_usd", side="buy", type="market", amount="10")
    affordable = D("8.333333")  # the most of the amount grid (1e-6) that 500,000 usd buys at 60,000
    assert (buy["status"], buy["executed"]) == ("closed", str(affordable))
    await exchange.settle()
    assert (await carol.order(buy["id"]))["reason"] == "funds_exhausted"

    assert await carol.balances() == demo(
        carol,
        btc=(D(5) + affordable - fee(affordable, TAKER), D(0)),
        usd=(D(500_000) - affordable * 60000, D(0)),
    )
    maker = await alice.order(ask)
    assert (maker["status"], maker["executed"]) == ("partially_filled", str(affordable))
    assert (await carol.order(buy["id"]))["status"] == "closed"


async def test_market_orders_close_their_remainder_when_the_book_runs_dry(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    await bob.limit("buy", "0.2", "49000")
    sell = await alice.place(market="btc_usd", side="sell", type="market", amount="1")
    assert (sell["status"], sell["executed"]) == ("closed", "0.200000")
    await alice.limit("sell", "0.1", "51000")
    buy = await bob.place(market="btc_usd", side="buy", type="market", amount="1")
    assert (buy["status"], buy["executed"]) == ("closed", "0.100000")
    await exchange.settle()
    assert (await alice.order(sell["id"]))["reason"] == "market_remainder"
    assert (await bob.order(buy["id"]))["reason"] == "market_remainder"

    # nothing stays locked: the unsold 0.8 btc and the unspent usd are released
    sold, bought = D("0.2") * 49000, D("0.1") * 51000
    assert await alice.balances() == demo(
        alice,
        btc=(D("9.7"), D(0)),
        usd=(D(1_000_000) + sold - fee(sold, TAKER) + bought - fee(bought, MAKER), D(0)),
    )
    assert await bob.balances() == demo(
        bob,
        btc=(D(10) + D("0.2") - fee(D("0.2"), MAKER) + D("0.1") - fee(D("0.1"), TAKER), D(0)),
        usd=(D(1_000_000) - sold - bought, D(0)),
    )
    assert (await alice.order(sell["id"]))["status"] == "closed"
    depth = (await exchange.http.get("/markets/btc_usd/depth")).json()
    assert (depth["bids"], depth["asks"]) == ([], [])


async def test_partial_fills_take_the_better_price_first_then_the_older_order(
    exchange: Exchange, alice: Member, bob: Member, carol: Member
) -> None:
    worst = await alice.limit("sell", "0.2", "50100")  # oldest, worst price
    older = await bob.limit("sell", "0.1", "50000")
    newer = await alice.limit("sell", "0.1", "50000")  # same price, arrived later
    best = await bob.limit("sell", "0.1", "49900")  # newest, best price
    buy = await carol.place(market="btc_usd", side="buy", amount="0.35", price="50100")
    assert (buy["status"], buy["executed"]) == ("executed", "0.350000")
    await exchange.settle()

    maker_fills = sorted(
        (trade["id"], trade["order_id"], trade["price"], trade["amount"])
        for trade in await alice.trades() + await bob.trades()
    )
    assert [fill[1:] for fill in maker_fills] == [
        (best, "49900.00", "0.100000"),
        (older, "50000.00", "0.100000"),
        (newer, "50000.00", "0.100000"),
        (worst, "50100.00", "0.050000"),
    ]
    assert [(await bob.order(oid))["status"] for oid in (best, older)] == ["executed", "executed"]
    assert (await alice.order(newer))["status"] == "executed"
    partial = await alice.order(worst)
    assert (partial["status"], partial["executed"], partial["remaining"]) == (
        "partially_filled",
        "0.050000",
        "0.150000",
    )
    spent = D("0.1") * 49900 + D("0.2") * 50000 + D("0.05") * 50100
    assert await carol.balances() == demo(
        carol, btc=(D(5) + D("0.35") - fee(D("0.35"), TAKER), D(0)), usd=(D(500_000) - spent, D(0))
    )
    depth = (await exchange.http.get("/markets/btc_usd/depth")).json()
    assert (depth["bids"], depth["asks"]) == ([], [["50100.00", "0.150000"]])


async def test_a_resting_order_fills_partially_and_keeps_resting_with_its_remainder(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    bid = await alice.place(market="btc_usd", side="buy", amount="1", price="50000")
    await bob.place(market="btc_usd", side="sell", amount="0.25", price="50000")
    await bob.place(market="btc_usd", side="sell", amount="0.25", price="49000")
    await exchange.settle()

    order = await alice.order(bid["id"])
    assert (order["status"], order["executed"], order["remaining"]) == (
        "partially_filled",
        "0.500000",
        "0.500000",
    )
    # both fills at the maker's (her own) price; the unfilled half keeps its usd locked
    assert await alice.balances() == demo(
        alice,
        btc=(D(10) + D("0.5") - fee(D("0.25"), MAKER) * 2, D(0)),
        usd=(D(1_000_000) - D(50000), D(25000)),
    )
    assert [order["id"] for order in await alice.orders(state="open")] == [bid["id"]]


async def test_ioc_trades_what_it_can_and_closes_the_remainder(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    await alice.limit("sell", "0.1", "50000")
    await alice.limit("sell", "0.1", "50200")
    buy = await bob.place(market="btc_usd", side="buy", amount="0.3", price="50100", time_in_force="ioc")
    assert (buy["status"], buy["executed"], buy["remaining"]) == ("closed", "0.100000", "0.200000")
    await exchange.settle()

    closed = await bob.order(buy["id"])
    assert (closed["status"], closed["reason"]) == ("closed", "ioc_remainder")
    assert await bob.orders(state="open") == []
    assert await bob.balances() == demo(
        bob, btc=(D("10.1") - fee(D("0.1"), TAKER), D(0)), usd=(D(1_000_000) - D(5000), D(0))
    )
    depth = (await exchange.http.get("/markets/btc_usd/depth")).json()
    assert (depth["bids"], depth["asks"]) == ([], [["50200.00", "0.100000"]])


async def test_fok_that_cannot_fill_completely_is_closed_with_nothing_traded(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    ask = await alice.limit("sell", "0.1", "50000")
    await exchange.settle()
    buy = await bob.place(market="btc_usd", side="buy", amount="0.3", price="50000", time_in_force="fok")
    assert (buy["status"], buy["executed"]) == ("closed", "0.000000")
    await exchange.settle()
    assert (await bob.order(buy["id"]))["reason"] == "fok_not_filled"

    assert (await exchange.http.get("/markets/btc_usd/trades")).json() == []
    assert await bob.balances() == demo(bob)
    assert (await alice.order(ask))["status"] == "submitted"
    assert await alice.balances() == demo(alice, btc=(D("9.9"), D("0.1")))

    # one that can fill does, whole
    filled = await bob.place(market="btc_usd", side="buy", amount="0.1", price="50000", time_in_force="fok")
    assert (filled["status"], filled["executed"]) == ("executed", "0.100000")


async def test_post_only_that_would_cross_is_closed_and_one_that_does_not_rests(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    ask = await alice.limit("sell", "0.1", "50000")
    crossing = await bob.place(market="btc_usd", side="buy", amount="0.1", price="50000", post_only=True)
    assert (crossing["status"], crossing["executed"]) == ("closed", "0.000000")
    await exchange.settle()
    assert (await bob.order(crossing["id"]))["reason"] == "post_only_would_trade"
    assert await bob.balances() == demo(bob)
    assert (await alice.order(ask))["status"] == "submitted"
    assert (await exchange.http.get("/markets/btc_usd/trades")).json() == []

    resting = await bob.place(market="btc_usd", side="buy", amount="0.1", price="49999.99", post_only=True)
    assert (resting["status"], resting["post_only"]) == ("submitted", True)
    await exchange.settle()
    depth = (await exchange.http.get("/markets/btc_usd/depth")).json()
    assert depth["bids"] == [["49999.99", "0.100000"]]


async def test_the_answer_to_an_order_closed_at_once_says_why(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    await alice.limit("sell", "0.1", "50000")
    ioc = await bob.place(market="btc_usd", side="buy", amount="0.3", price="50000", time_in_force="ioc")
    fok = await bob.place(market="btc_usd", side="buy", amount="0.3", price="50000", time_in_force="fok")
    await alice.limit("buy", "0.1", "45000")
    post = await bob.place(market="btc_usd", side="sell", amount="0.1", price="40000", post_only=True)
    assert [order["reason"] for order in (ioc, fok, post)] == [
        "ioc_remainder",
        "fok_not_filled",
        "post_only_would_trade",
    ]

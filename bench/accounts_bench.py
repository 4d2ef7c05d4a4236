"""Accounts stage micro-benchmark: CPU per order of the lock / settle / release path.

Run: `.venv/bin/python bench/accounts_bench.py [--cycles N] [--repeat R]`

A *cycle* is what the accounts stage does for one matched pair of orders: `place` a resting
sell (lock base) and a crossing buy (lock quote), then `apply` the engine's events for them:
2 x OrderAccepted, Trade (settle both sides with maker/taker fees), 2 x OrderUpdated,
2 x OrderClosed (release and forget). Events are built beforehand so that only the accounts
stage is timed (the matching engine has its own benchmark). Also timed: a place + cancel cycle
(lock, release) and a lone `place`. Each figure is the median of `--repeat` runs, with and
without recording ledger entries.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

from bourse.domain.accounts import Accounts, FeeSchedule
from bourse.domain.money import Currency, Market
from bourse.domain.orders import (
    CloseReason,
    EngineEvent,
    OrderAccepted,
    OrderClosed,
    OrderStatus,
    OrderType,
    OrderUpdated,
    PlaceOrder,
    Side,
    TimeInForce,
    Trade,
)
from bourse.domain.values import Amount, MemberId, OrderId, Price, QuoteUnits, TradeId

MARKET = Market("BTC-USD", Currency("BTC", 8), Currency("USD", 8), amount_precision=4, price_precision=2)
MARKETS = {MARKET.symbol: MARKET}
FEES = FeeSchedule(maker_ppm=1_000, taker_ppm=2_000)
MEMBERS = 1_000


def accepted(cmd: PlaceOrder) -> OrderAccepted:
    return OrderAccepted(
        cmd.order_id,
        cmd.member_id,
        cmd.market,
        cmd.side,
        cmd.type,
        cmd.amount,
        cmd.price,
        cmd.tif,
        cmd.post_only,
        0,
        0,
    )


def funded(record_entries: bool) -> Accounts:
    accounts = Accounts(MARKETS, FEES, record_entries=record_entries)
    for member in range(1, MEMBERS + 1):
        accounts.deposit(MemberId(member), "BTC", 10**15, ref_id=member)
        accounts.deposit(MemberId(member), "USD", 10**15, ref_id=member)
    accounts.take_changes()
    accounts.take_entries()
    return accounts


def trade_cycles(n: int) -> list[tuple[PlaceOrder, PlaceOrder, list[EngineEvent]]]:
    out = []
    for i in range(n):
        seller = 1 + (2 * i) % MEMBERS
        buyer = 1 + (2 * i + 1) % MEMBERS
        price = 3_000_000 + i % 500
        amount = 1 + i % 100
        sell = PlaceOrder(
            OrderId(2 * i + 1),
            MemberId(seller),
            MARKET.symbol,
            Side.SELL,
            OrderType.LIMIT,
            Amount(amount),
            Price(price),
        )
        buy = PlaceOrder(
            OrderId(2 * i + 2),
            MemberId(buyer),
            MARKET.symbol,
            Side.BUY,
            OrderType.LIMIT,
            Amount(amount),
            Price(price + 7),
        )
        funds = MARKET.funds(Price(price), Amount(amount))
        events: list[EngineEvent] = [
            accepted(sell),
            accepted(buy),
            Trade(
                TradeId(i + 1),
                MARKET.symbol,
                Price(price),
                Amount(amount),
                funds,
                sell.order_id,
                MemberId(seller),
                buy.order_id,
                MemberId(buyer),
                Side.BUY,
                0,
            ),
            OrderUpdated(
                sell.order_id,
                MemberId(seller),
                MARKET.symbol,
                Amount(amount),
                Amount(0),
                OrderStatus.EXECUTED,
            ),
            OrderUpdated(
                buy.order_id, MemberId(buyer), MARKET.symbol, Amount(amount), Amount(0), OrderStatus.EXECUTED
            ),
            OrderClosed(
                sell.order_id,
                MemberId(seller),
                MARKET.symbol,
                OrderStatus.EXECUTED,
                CloseReason.FILLED,
                Amount(amount),
                funds,
            ),
            OrderClosed(
                buy.order_id,
                MemberId(buyer),
                MARKET.symbol,
                OrderStatus.EXECUTED,
                CloseReason.FILLED,
                Amount(amount),
                funds,
            ),
        ]
        out.append((sell, buy, events))
    return out


def run_trade_cycles(record_entries: bool, n: int) -> float:
    cycles = trade_cycles(n)
    accounts = funded(record_entries)
    place = accounts.place
    apply = accounts.apply
    take_entries = accounts.take_entries
    gc.disable()
    start = time.perf_counter_ns()
    for sell, buy, events in cycles:
        place(sell)
        place(buy)
        accounts.take_changes()
        for event in events:
            apply(event)
        take_entries()
    elapsed = time.perf_counter_ns() - start
    gc.enable()
    assert not accounts.open_orders()
    return elapsed / n / 1_000


def run_cancel_cycles(record_entries: bool, n: int) -> float:
    accounts = funded(record_entries)
    cycles = []
    for i in range(n):
        member = 1 + i % MEMBERS
        cmd = PlaceOrder(
            OrderId(i + 1),
            MemberId(member),
            MARKET.symbol,
            Side.BUY,
            OrderType.LIMIT,
            Amount(1 + i % 100),
            Price(3_000_000),
        )
        closed = OrderClosed(
            OrderId(i + 1),
            MemberId(member),
            MARKET.symbol,
            OrderStatus.CANCELLED,
            CloseReason.CANCELLED,
            Amount(0),
            QuoteUnits(0),
        )
        cycles.append((cmd, accepted(cmd), closed))
    gc.disable()
    start = time.perf_counter_ns()
    for cmd, acc, closed in cycles:
        accounts.place(cmd)
        accounts.take_changes()
        accounts.apply(acc)
        accounts.apply(closed)
        accounts.take_entries()
    elapsed = time.perf_counter_ns() - start
    gc.enable()
    return elapsed / n / 1_000


def run_places(record_entries: bool, n: int) -> float:
    accounts = funded(record_entries)
    cmds = [
        PlaceOrder(
            OrderId(i + 1),
            MemberId(1 + i % MEMBERS),
            MARKET.symbol,
            Side.SELL,
            OrderType.LIMIT,
            Amount(1),
            Price(3_000_000),
            TimeInForce.GTC,
        )
        for i in range(n)
    ]
    place = accounts.place
    gc.disable()
    start = time.perf_counter_ns()
    for cmd in cmds:
        place(cmd)
    elapsed = time.perf_counter_ns() - start
    gc.enable()
    return elapsed / n / 1_000


def median(fn: Callable[[bool, int], float], record_entries: bool, n: int, repeat: int) -> float:
    return statistics.median(fn(record_entries, n) for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"accounts stage, {args.cycles} cycles, median of {args.repeat} runs, µs per cycle")
    print(f"{'':44} {'no entries':>11} {'entries':>9}")
    rows: list[tuple[str, Callable[[bool, int], float]]] = [
        ("place+settle cycle (2 places, 7 events)", run_trade_cycles),
        ("place+cancel cycle (1 place, 2 events)", run_cancel_cycles),
        ("place alone", run_places),
    ]
    for label, fn in rows:
        plain = median(fn, False, args.cycles, args.repeat)
        entries = median(fn, True, args.cycles, args.repeat)
        print(f"{label:44} {plain:11.2f} {entries:9.2f}")


if __name__ == "__main__":
    main()

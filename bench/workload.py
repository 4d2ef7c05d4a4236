"""The exchange-core benchmark mix, generated deterministically for our matching engine.

exchange-core publishes its single-core figures for this mix: 9% GTC limit orders, 3% IOC
orders, 6% cancels, 82% moves (amend price), about 1000 live orders over about 750 price levels,
1000 accounts, roughly 6% of commands trading. `generate()` builds such a command stream from a
seed. It runs the commands through a `MatchingEngine` while it generates them (that is how it
knows which orders are alive and where the book is), so the stream is valid for any engine that
starts from the same (empty) book; a second engine fed the same stream produces the same events.

Shape of the stream:
- a *prefill* of passive GTC orders up to the target number of live orders (not timed);
- then the timed mix. A passive price is drawn uniformly within `band` ticks behind the
  opposite best price (so it never crosses); an aggressive one is 0..`reach` ticks through the
  opposite best price. GTC orders are aggressive with probability `gtc_cross`, moves with
  probability `move_cross` (a move re-prices a random live order), IOC orders always are.
  IOC amounts grow when the book holds more than the target number of orders and shrink when
  it holds fewer, which keeps the book near its target size without changing the mix.

Each command also gets a peer operation (see `PeerOp`): what the same step means for an order
book library that has no amend and no IOC (a move = cancel + new order; an IOC = a limit order
whose resting remainder is cancelled at once).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from bourse.domain.matching import MatchingEngine
from bourse.domain.money import Currency, Market
from bourse.domain.orders import (
    AmendOrder,
    CancelOrder,
    EngineCommand,
    OrderAccepted,
    OrderClosed,
    OrderType,
    PlaceOrder,
    Side,
    TimeInForce,
    Trade,
)
from bourse.domain.values import Amount, MemberId, OrderId, Price

PeerKind = Literal["gtc", "ioc", "cancel", "move"]


@dataclass(frozen=True, slots=True)
class PeerOp:
    """One step for a peer library: ids are ours, the peer maps them to its own."""

    kind: PeerKind
    order_id: int
    is_buy: bool = False
    price: int = 0
    amount: int = 0
    """For a move: the amount still open, which the replacement order carries."""


@dataclass(frozen=True, slots=True)
class MixConfig:
    live_orders: int = 1050
    """Target size of the book; the feedback settles it at about 1000 live orders."""
    accounts: int = 1000
    center: int = 1_000_000
    """Starting price, in price units."""
    band: int = 800
    """Passive prices lie 1..band ticks behind the opposite best price."""
    reach: int = 4
    """Aggressive prices lie 0..reach ticks through the opposite best price."""
    max_amount: int = 100
    cross_max_amount: int = 30
    """Amounts of IOC and aggressive GTC orders: smaller than resting ones, so that trading
    mostly nibbles at the best level and the book keeps its size."""
    gtc_pct: int = 9
    ioc_pct: int = 3
    cancel_pct: int = 6
    """The rest of 100% are moves."""
    gtc_cross: float = 0.1
    move_cross: float = 0.03


@dataclass(slots=True)
class Workload:
    market: Market
    prefill: list[tuple[EngineCommand, int]]
    commands: list[tuple[EngineCommand, int]]
    peer_prefill: list[PeerOp]
    peer_ops: list[PeerOp]
    stats: dict[str, float] = field(default_factory=dict)


def bench_market(symbol: str = "BTC-USD") -> Market:
    base, quote = symbol.split("-")
    return Market(
        symbol,
        Currency(base, 8),
        Currency(quote, 8),
        amount_precision=4,
        price_precision=2,
        max_amount=Amount(10**12),
    )


class _Live:
    """Live order ids with O(1) random pick and removal."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.pos: dict[int, int] = {}

    def add(self, order_id: int) -> None:
        if order_id not in self.pos:
            self.pos[order_id] = len(self.ids)
            self.ids.append(order_id)

    def discard(self, order_id: int) -> None:
        i = self.pos.pop(order_id, None)
        if i is None:
            return
        last = self.ids.pop()
        if last != order_id:
            self.ids[i] = last
            self.pos[last] = i

    def __len__(self) -> int:
        return len(self.ids)


def generate(
    n_ops: int,
    seed: int = 1,
    config: MixConfig | None = None,
    market: Market | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> Workload:
    """`n_ops` commands of the mix after the prefill; `on_progress(fraction)` now and then."""
    cfg = config or MixConfig()
    mkt = market or bench_market()
    rng = random.Random(seed)
    engine = MatchingEngine(mkt)
    live = _Live()
    next_id = 1
    ts = 1_700_000_000_000_000_000
    symbol = mkt.symbol

    def best(is_buy: bool) -> int:
        """Best price on the opposite side of an order of side `is_buy`, or a default."""
        if is_buy:
            ask = engine.best_ask()
            if ask is not None:
                return ask
            bid = engine.best_bid()
            return (bid + 1) if bid is not None else cfg.center
        bid = engine.best_bid()
        if bid is not None:
            return bid
        ask = engine.best_ask()
        return (ask - 1) if ask is not None else cfg.center - 1

    def passive_price(is_buy: bool) -> int:
        off = rng.randint(1, cfg.band)
        return max(1, best(is_buy) - off) if is_buy else best(is_buy) + off

    def aggressive_price(is_buy: bool) -> int:
        off = rng.randint(0, cfg.reach)
        return best(is_buy) + off if is_buy else max(1, best(is_buy) - off)

    def apply(command: EngineCommand, out: list[tuple[EngineCommand, int]]) -> bool:
        nonlocal ts
        ts += 1_000
        out.append((command, ts))
        traded = False
        closed: set[int] = set()
        accepted: int | None = None
        for event in engine.process(command, ts):
            if type(event) is OrderClosed:
                closed.add(event.order_id)
                live.discard(event.order_id)
            elif type(event) is Trade:
                traded = True
            elif type(event) is OrderAccepted:
                accepted = event.order_id
        if accepted is not None and accepted not in closed:
            live.add(accepted)
        return traded

    def place(is_buy: bool, price: int, amount: int, tif: TimeInForce) -> PlaceOrder:
        nonlocal next_id
        oid = next_id
        next_id += 1
        return PlaceOrder(
            order_id=OrderId(oid),
            member_id=MemberId(rng.randint(1, cfg.accounts)),
            market=symbol,
            side=Side.BUY if is_buy else Side.SELL,
            type=OrderType.LIMIT,
            amount=Amount(amount),
            price=Price(price),
            tif=tif,
            created_at=ts,
        )

    prefill: list[tuple[EngineCommand, int]] = []
    peer_prefill: list[PeerOp] = []
    while len(live) < cfg.live_orders:
        is_buy = rng.random() < 0.5
        cmd = place(is_buy, passive_price(is_buy), rng.randint(1, cfg.max_amount), TimeInForce.GTC)
        apply(cmd, prefill)
        peer_prefill.append(PeerOp("gtc", cmd.order_id, is_buy, cmd.price or 0, cmd.amount))

    commands: list[tuple[EngineCommand, int]] = []
    peer_ops: list[PeerOp] = []
    trades = 0
    levels_sum = 0
    live_sum = 0
    gtc_cut = cfg.gtc_pct
    ioc_cut = gtc_cut + cfg.ioc_pct
    cancel_cut = ioc_cut + cfg.cancel_pct
    step = max(n_ops // 20, 1)
    for i in range(n_ops):
        roll = rng.randrange(100)
        op: PeerOp
        if roll < gtc_cut or not live:
            is_buy = rng.random() < 0.5
            cross = rng.random() < cfg.gtc_cross
            if cross:
                price = aggressive_price(is_buy)
                amount = rng.randint(1, cfg.cross_max_amount)
            else:
                price = passive_price(is_buy)
                amount = rng.randint(1, cfg.max_amount)
            cmd = place(is_buy, price, amount, TimeInForce.GTC)
            op = PeerOp("gtc", cmd.order_id, is_buy, price, cmd.amount)
            command: EngineCommand = cmd
        elif roll < ioc_cut:
            is_buy = rng.random() < 0.5
            scale = min(1.0, len(live) / cfg.live_orders) ** 16
            amount = max(1, int(rng.randint(1, cfg.cross_max_amount) * scale))
            price = aggressive_price(is_buy)
            cmd = place(is_buy, price, amount, TimeInForce.IOC)
            op = PeerOp("ioc", cmd.order_id, is_buy, price, amount)
            command = cmd
        elif roll < cancel_cut:
            oid = live.ids[rng.randrange(len(live))]
            order = engine.open_order(OrderId(oid))
            assert order is not None
            command = CancelOrder(order_id=OrderId(oid), member_id=order.member_id, market=symbol)
            op = PeerOp("cancel", oid)
        else:
            oid = live.ids[rng.randrange(len(live))]
            order = engine.open_order(OrderId(oid))
            assert order is not None
            is_buy = order.side is Side.BUY
            cross = rng.random() < cfg.move_cross * min(1.0, len(live) / cfg.live_orders) ** 16
            price = aggressive_price(is_buy) if cross else passive_price(is_buy)
            command = AmendOrder(
                order_id=OrderId(oid), member_id=order.member_id, market=symbol, price=Price(price)
            )
            op = PeerOp("move", oid, is_buy, price, order.remaining)
        if apply(command, commands):
            trades += 1
        peer_ops.append(op)
        if i % 256 == 0:
            bids, asks = engine.depth(10**9)
            levels_sum += len(bids) + len(asks)
            live_sum += len(live)
        if on_progress is not None and i % step == 0:
            on_progress(i / n_ops)
    samples = max(1, (n_ops + 255) // 256)
    stats = {
        "trade_ratio": trades / max(n_ops, 1),
        "avg_live_orders": live_sum / samples,
        "avg_levels": levels_sum / samples,
    }
    return Workload(mkt, prefill, commands, peer_prefill, peer_ops, stats)

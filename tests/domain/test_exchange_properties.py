"""The accounts stage and the matching engines together, over random command sequences.

Every command goes through `Accounts.submit`, what it forwards through `MatchingEngine.process`,
and every event back through `Accounts.apply`, exactly as the services chain them. After every
event and every command the machine checks:

- conservation: for every currency, members + exchange + world = 0 (nothing created or lost);
- no balance is ever negative;
- each member's locked balance equals the sum of the locks of their open orders, and each open
  limit order locks exactly what it can still spend (funds(price, remaining) / base_units(remaining));
- the accounts stage tracks exactly the orders open in the engines, with the same remaining amount;
- every trade is settled in both orders: the buyer and the seller get exactly the amounts and
  pay exactly the fees the fee rule says, the exchange gets the fees, both orders' remaining
  amounts go down by the trade amount;
- when an order closes, what the engine says it executed and spent is what its trades add up
  to, and nothing stays locked for it;
- the events of a command delivered a second time change nothing.
"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from bourse.domain.accounts import Accounts
from bourse.domain.ledger import EXCHANGE_MEMBER, LedgerError, fee_for
from bourse.domain.matching import MatchingEngine
from bourse.domain.orders import (
    AmendOrder,
    CancelOrder,
    EngineCommand,
    EngineEvent,
    OrderAccepted,
    OrderClosed,
    OrderRejected,
    OrderType,
    PlaceOrder,
    Side,
    TimeInForce,
    Trade,
)
from bourse.domain.values import Amount, MemberId, OrderId, Price
from tests.domain.accounts_checks import assert_accounts_consistent
from tests.domain.exchange_driver import CURRENCIES, FEES, MARKET_BUY_CAPS, MARKETS, MEMBERS

members = st.sampled_from(MEMBERS)
markets = st.sampled_from(sorted(MARKETS))
sides = st.sampled_from(Side)
prices = st.integers(96, 104)
amounts = st.integers(1, 25)


class ExchangeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # remembers fewer closed ids than the engines, so that the engines reject some duplicates
        self.accounts = Accounts(MARKETS, FEES, market_buy_caps=MARKET_BUY_CAPS, closed_memory=3)
        self.engines = {symbol: MatchingEngine(market) for symbol, market in MARKETS.items()}
        self.placed: list[tuple[int, int, str]] = []
        self.next_id = 1
        self.ts = 0
        self.deposited: dict[str, int] = defaultdict(int)
        self.fees: dict[str, int] = defaultdict(int)
        self.executed: dict[int, int] = defaultdict(int)
        self.spent: dict[int, int] = defaultdict(int)
        self.trades = 0
        self.last_events: list[EngineEvent] = []

    # --- the pipeline ---

    def submit(self, cmd: EngineCommand) -> None:
        self.ts += 1_000
        forwarded = self.accounts.submit(cmd)
        if isinstance(forwarded, OrderRejected):
            return
        if isinstance(forwarded, PlaceOrder):
            assert forwarded.locked > 0
        self.last_events = self.engines[forwarded.market].process(forwarded, self.ts)
        for event in self.last_events:
            self.apply(event)

    def apply(self, event: EngineEvent) -> None:
        if isinstance(event, Trade):
            self.apply_trade(event)
        elif isinstance(event, OrderClosed):
            lock = self.accounts.order_lock(event.order_id)
            assert lock is not None, event
            assert lock.amount - lock.remaining == event.executed == self.executed[event.order_id]
            assert event.funds_spent == self.spent[event.order_id]
            self.accounts.apply(event)
            assert self.accounts.order_lock(event.order_id) is None
        elif isinstance(event, OrderRejected):
            self.accounts.apply(event)
            if event.command == "place":
                lock = self.accounts.order_lock(event.order_id)
                assert lock is None or lock.accepted  # a duplicate of an open order keeps its lock
        else:
            if isinstance(event, OrderAccepted):
                lock = self.accounts.order_lock(event.order_id)
                assert lock is not None
                assert not lock.accepted
                # an id both stages have forgotten may come back as a new order
                self.executed.pop(event.order_id, None)
                self.spent.pop(event.order_id, None)
            self.accounts.apply(event)
        assert_accounts_consistent(self.accounts)

    def apply_trade(self, trade: Trade) -> None:
        market = MARKETS[trade.market]
        base, quote = market.base.code, market.quote.code
        maker = self.accounts.order_lock(trade.maker_order_id)
        taker = self.accounts.order_lock(trade.taker_order_id)
        assert maker is not None
        assert taker is not None
        assert (maker.member_id, taker.member_id) == (trade.maker_member_id, trade.taker_member_id)
        assert maker.member_id != taker.member_id  # the engine prevents self-trades
        assert taker.side == trade.taker_side != maker.side
        assert trade.funds == market.funds(trade.price, trade.amount)
        buyer, seller = (taker, maker) if trade.taker_side == Side.BUY else (maker, taker)
        maker_ppm, taker_ppm = FEES.rates(trade.market)
        buyer_ppm, seller_ppm = (taker_ppm, maker_ppm) if buyer is taker else (maker_ppm, taker_ppm)
        base_units = market.base_units(trade.amount)
        buyer_fee = fee_for(base_units, buyer_ppm)
        seller_fee = fee_for(trade.funds, seller_ppm)

        def total(member: int, currency: str) -> int:
            return sum(self.accounts.ledger.balance(member, currency))

        keys = [(m, c) for m in (buyer.member_id, seller.member_id, EXCHANGE_MEMBER) for c in (base, quote)]
        before = {key: total(*key) for key in keys}
        self.accounts.apply(trade)
        after = {key: total(*key) for key in keys}
        expected = dict.fromkeys(keys, 0)
        expected[(buyer.member_id, base)] += base_units - buyer_fee
        expected[(buyer.member_id, quote)] -= trade.funds
        expected[(seller.member_id, base)] -= base_units
        expected[(seller.member_id, quote)] += trade.funds - seller_fee
        expected[(EXCHANGE_MEMBER, base)] += buyer_fee
        expected[(EXCHANGE_MEMBER, quote)] += seller_fee
        assert {key: after[key] - before[key] for key in keys} == expected

        for was in (maker, taker):
            now = self.accounts.order_lock(was.order_id)
            assert now is not None
            assert now.remaining == was.remaining - trade.amount
            if was.side == Side.SELL:
                assert now.locked == was.locked - base_units
            else:
                assert now.locked <= was.locked - trade.funds
            self.executed[was.order_id] += trade.amount
            self.spent[was.order_id] += trade.funds
        self.fees[base] += buyer_fee
        self.fees[quote] += seller_fee
        self.trades += 1

    def new_id(self, member: int, market: str) -> int:
        order_id = self.next_id
        self.next_id += 1
        self.placed.append((order_id, member, market))
        return order_id

    def open_ids(self) -> list[tuple[int, int, str]]:
        return [(o.order_id, o.member_id, o.market) for o in self.accounts.open_orders()]

    # --- rules ---

    @initialize()
    def fund(self) -> None:
        for member in MEMBERS:
            for currency, amount in (("BTC", 3_000), ("ETH", 3_000), ("USD", 300_000)):
                self.accounts.deposit(MemberId(member), currency, amount, ref_id=member)
                self.deposited[currency] += amount

    @rule(member=members, currency=st.sampled_from(CURRENCIES), amount=st.integers(1, 50_000))
    def deposit(self, member: int, currency: str, amount: int) -> None:
        self.accounts.deposit(MemberId(member), currency, amount, ref_id=self.ts)
        self.deposited[currency] += amount

    @rule(member=members, currency=st.sampled_from(CURRENCIES), amount=st.integers(1, 5_000))
    def withdraw(self, member: int, currency: str, amount: int) -> None:
        try:
            self.accounts.withdraw(MemberId(member), currency, amount, ref_id=self.ts)
        except LedgerError:
            return
        self.deposited[currency] -= amount

    @rule(member=members, market=markets, side=sides, price=prices, amount=amounts)
    def place_gtc(self, member: int, market: str, side: Side, price: int, amount: int) -> None:
        order_id = self.new_id(member, market)
        self.submit(
            PlaceOrder(
                OrderId(order_id),
                MemberId(member),
                market,
                side,
                OrderType.LIMIT,
                Amount(amount),
                Price(price),
            )
        )

    @rule(member=members, market=markets, side=sides, price=prices, amount=amounts)
    def place_another_gtc(self, member: int, market: str, side: Side, price: int, amount: int) -> None:
        self.place_gtc(member, market, side, price, amount)

    @rule(
        member=members,
        market=markets,
        side=sides,
        price=prices | st.sampled_from([1, 300]),
        amount=amounts,
        tif=st.sampled_from(TimeInForce),
        post_only=st.booleans(),
    )
    def place_limit(
        self, member: int, market: str, side: Side, price: int, amount: int, tif: TimeInForce, post_only: bool
    ) -> None:
        order_id = self.new_id(member, market)
        self.submit(
            PlaceOrder(
                OrderId(order_id),
                MemberId(member),
                market,
                side,
                OrderType.LIMIT,
                Amount(amount),
                Price(price),
                tif,
                post_only,
            )
        )

    @rule(member=members, market=markets, side=sides, amount=amounts, tif=st.sampled_from(TimeInForce))
    def place_market(self, member: int, market: str, side: Side, amount: int, tif: TimeInForce) -> None:
        order_id = self.new_id(member, market)
        self.submit(
            PlaceOrder(
                OrderId(order_id), MemberId(member), market, side, OrderType.MARKET, Amount(amount), None, tif
            )
        )

    @precondition(lambda self: bool(self.placed))
    @rule(pick=st.integers(0, 1_000), member=members, market=markets, side=sides, price=prices)
    def place_with_a_used_id(self, pick: int, member: int, market: str, side: Side, price: int) -> None:
        order_id = self.placed[pick % len(self.placed)][0]
        self.submit(
            PlaceOrder(
                OrderId(order_id), MemberId(member), market, side, OrderType.LIMIT, Amount(1), Price(price)
            )
        )

    @precondition(lambda self: bool(self.placed))
    @rule(pick=st.integers(0, 1_000), stranger=st.none() | members, stale=st.booleans())
    def cancel(self, pick: int, stranger: int | None, stale: bool) -> None:
        candidates = self.placed if stale or not self.open_ids() else self.open_ids()
        order_id, member, market = candidates[pick % len(candidates)]
        self.submit(
            CancelOrder(OrderId(order_id), MemberId(member if stranger is None else stranger), market)
        )

    @precondition(lambda self: bool(self.placed))
    @rule(
        pick=st.integers(0, 1_000),
        price=st.none() | prices,
        amount=st.none() | st.integers(1, 40),
        stranger=st.none() | members,
        stale=st.booleans(),
    )
    def amend(
        self, pick: int, price: int | None, amount: int | None, stranger: int | None, stale: bool
    ) -> None:
        candidates = self.placed if stale or not self.open_ids() else self.open_ids()
        order_id, member, market = candidates[pick % len(candidates)]
        self.submit(
            AmendOrder(
                OrderId(order_id),
                MemberId(member if stranger is None else stranger),
                market,
                None if price is None else Price(price),
                None if amount is None else Amount(amount),
            )
        )

    @rule()
    def redeliver_the_last_events(self) -> None:
        """Events delivered twice (at-least-once transport) change nothing the second time."""
        before = self.accounts.snapshot()
        for event in self.last_events:
            self.accounts.apply(event)
        assert self.accounts.snapshot() == before

    # --- invariants ---

    @invariant()
    def money_is_conserved_and_fees_reach_the_exchange(self) -> None:
        ledger = self.accounts.ledger
        for currency in CURRENCIES:
            assert ledger.total(currency) == self.deposited[currency] == -ledger.world(currency)
            assert ledger.clearing(currency) == 0
            assert sum(ledger.balance(EXCHANGE_MEMBER, currency)) == self.fees[currency]

    @invariant()
    def accounts_track_exactly_the_open_orders_of_the_engines_with_tight_locks(self) -> None:
        engine_orders = {o.order_id: o for engine in self.engines.values() for o in engine.open_orders()}
        locks = {lock.order_id: lock for lock in self.accounts.open_orders()}
        assert locks.keys() == engine_orders.keys()
        for order_id, lock in locks.items():
            order = engine_orders[order_id]
            assert (lock.member_id, lock.market, lock.side) == (order.member_id, order.market, order.side)
            assert (lock.price, lock.amount, lock.remaining) == (order.price, order.amount, order.remaining)
            assert lock.pending_amends == 0
            assert lock.accepted
            market = MARKETS[lock.market]
            need = (
                market.funds(order.price, order.remaining)
                if lock.side == Side.BUY
                else market.base_units(order.remaining)
            )
            assert lock.locked == need

    @invariant()
    def snapshot_restores_the_same_state(self) -> None:
        if self.ts % 7_000:  # now and then: it costs more than the other checks
            return
        data = self.accounts.snapshot()
        assert Accounts.restore(MARKETS, FEES, data, market_buy_caps=MARKET_BUY_CAPS).snapshot() == data


ExchangeMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
TestExchangeProperties = ExchangeMachine.TestCase

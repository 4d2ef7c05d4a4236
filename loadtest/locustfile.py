"""Locust: the scenario's user model (`bourse.sizing.scenario`, the brief's by default) against a
running `bourse up`.

    .venv/bin/python loadtest/members.py markets var/loadtest-markets.toml --members 1000
    BOURSE_MARKETS_FILE=var/loadtest-markets.toml .venv/bin/bourse up        # another terminal
    BOURSE_MARKETS_FILE=var/loadtest-markets.toml .venv/bin/locust -f loadtest/locustfile.py \\
        --host http://127.0.0.1:8000 --headless -u 10000 -r 500 -t 2m

`-u` is the crowd: Locust splits it between `Trader` and `Watcher` by the scenario's trading share
(class weights), and each user acts at the scenario's per-user rates (`constant_throughput`), so
`-u 10000` is the brief's 10,000 users and 1,000 orders/s, and `-u 2500` its 25 % step. Each task
is one REST action; its weight is the action's share of that user's rate (`user_model`), so the
mix is the scenario's. `BOURSE_SCENARIO=path.toml` picks another scenario file.

Members and tokens: each user is one of the demo members of the markets file the system runs
with (`BOURSE_MARKETS_FILE`, round robin), its token signed with the data folder's key ring (run
from the folder of `bourse up`, or set `BOURSE_DATA_DIR`). RabbitMQ's share of limit orders goes
over REST (the tools speak HTTP); WebSocket channels are not held (bench/ws_bench.py drives those).
Cancels and amends act on the user's own resting orders: one limit order per cancel or amend is
priced beyond the band so it rests (`user_model.resting_share`).
"""

from __future__ import annotations

import itertools
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant_throughput

sys.path.insert(0, str(Path(__file__).resolve().parent))

from members import demo_member_ids, member_tokens
from user_model import resting_share, trader_rates, watcher_rates

from bourse.sizing.scenario import Action, Scenario, load_scenario
from bourse.sizing.workload import OrderMaker, RestingOrder

SCENARIO: Scenario = load_scenario(os.environ.get("BOURSE_SCENARIO") or None)
WEIGHT_RESOLUTION = 100_000
"""Locust weights are integers (it repeats each task that many times): an action's weight is its
share of the user's rate in 1/100,000ths, so a share of 0.2 % is kept to within 0.3 % of itself."""
MAX_RESTING = 50
"""Resting orders a user remembers for its cancels and amends (the oldest are forgotten)."""
_members = itertools.count()
_tokens: dict[int, str] = {}


def _member() -> tuple[int, str]:
    """The next demo member, round robin; tokens are signed on first use."""
    if not _tokens:
        _tokens.update(member_tokens(demo_member_ids()))
    ids = sorted(_tokens)
    member = ids[next(_members) % len(ids)]
    return member, _tokens[member]


def weights(rates: dict[Action, float]) -> dict[Action, int]:
    total = sum(rates.values())
    return {action: round(rate / total * WEIGHT_RESOLUTION) for action, rate in rates.items() if rate > 0}


class BourseUser(FastHttpUser):
    """A connected member: its token, a seeded order maker, its resting orders."""

    abstract = True
    ACTIONS: dict[Action, int] = {}
    RATE_PER_S = 0.0

    def on_start(self) -> None:
        self.member, token = _member()
        self.auth = {"authorization": f"Bearer {token}"}
        self.maker = OrderMaker(SCENARIO.markets, members=1, seed=self.member)
        self.resting: list[RestingOrder] = []
        self.resting_share = resting_share(SCENARIO)

    def _place(self, body: dict[str, Any], name: str, *, rests: bool = False) -> None:
        """POST /order; an order placed to rest is remembered for a later cancel or amend."""
        with self.client.post(
            "/api/v3/order", json=body, headers=self.auth, name=name, catch_response=True
        ) as response:
            if response.status_code not in (200, 201, 202):
                response.failure(f"{response.status_code} {response.text[:200]}")
                return
            response.success()
            answer = response.json() if rests else {}
            if answer.get("status") == "submitted":
                self.resting.append(RestingOrder(answer["id"], self.member, body["market"], body["side"]))
                del self.resting[:-MAX_RESTING]

    def place_limit(self) -> None:
        if random.random() < self.resting_share:
            self._place(self.maker.resting(), "POST /order limit", rests=True)
        else:
            self._place(self.maker.limit(), "POST /order limit")

    def place_market(self) -> None:
        self._place(self.maker.market_order(), "POST /order market")

    def cancel(self) -> None:
        if not self.resting:
            return  # nothing of ours rests yet (the first seconds of a run)
        order = self.resting.pop(random.randrange(len(self.resting)))
        self.client.delete(f"/api/v3/order/{order.order_id}", headers=self.auth, name="DELETE /order/{id}")

    def amend(self) -> None:
        if not self.resting:
            return
        order = random.choice(self.resting)
        body = self.maker.amend(order)
        self.client.patch(
            f"/api/v3/order/{order.order_id}", json=body, headers=self.auth, name="PATCH /order/{id}"
        )

    def read_depth(self) -> None:
        market = self.maker.market().symbol
        self.client.get(
            f"/api/v3/markets/{market}/depth", headers=self.auth, name="GET /markets/{market}/depth"
        )

    def read_balances(self) -> None:
        self.client.get("/api/v3/balances", headers=self.auth, name="GET /balances")

    def read_orders(self) -> None:
        self.client.get("/api/v3/orders?state=open", headers=self.auth, name="GET /orders")


TASKS: dict[Action, Callable[[BourseUser], None]] = {
    Action.PLACE_LIMIT: BourseUser.place_limit,
    Action.PLACE_MARKET: BourseUser.place_market,
    Action.CANCEL: BourseUser.cancel,
    Action.AMEND: BourseUser.amend,
    Action.READ_DEPTH: BourseUser.read_depth,
    Action.READ_BALANCES: BourseUser.read_balances,
    Action.READ_ORDERS: BourseUser.read_orders,
}


def _user_class(name: str, rates: dict[Action, float], crowd: int, doc: str) -> type[BourseUser]:
    """A Locust user class acting at `rates` (per second), `crowd` of them per scenario crowd."""
    actions = weights(rates)
    rate = sum(rates.values())
    namespace: dict[str, Any] = {
        "__doc__": doc,
        "__module__": __name__,
        "weight": crowd,
        "abstract": crowd == 0 or rate <= 0,
        "ACTIONS": actions,
        "RATE_PER_S": rate,
        "tasks": {TASKS[action]: weight for action, weight in actions.items()},
        "wait_time": constant_throughput(rate) if rate > 0 else constant_throughput(1.0),
    }
    return type(name, (BourseUser,), namespace)


Trader = _user_class(
    "Trader",
    trader_rates(SCENARIO),
    SCENARIO.traders,
    "A trading member: limit and market orders, cancels, amends, and the reads every user makes.",
)
Watcher = _user_class(
    "Watcher",
    watcher_rates(SCENARIO),
    SCENARIO.users - SCENARIO.traders,
    "A connected member who does not trade: reads depth, balances and open orders.",
)

"""The scenario's user model as the HTTP load tools drive it: REST actions per trader and per
watcher per second, and the route each one calls.

Both the Locust file and the artillery scenario are built from this, and it from
`bourse.sizing.scenario.Scenario`, so the external tools drive the same crowd as `bourse size
measure`. One difference, on purpose: the tools speak HTTP only, so the scenario's RabbitMQ share of
limit orders (`trading.amqp_share`) is sent as REST limit orders, keeping the order rate the
scenario's. What a crowd of these users sends adds up to `Scenario.rates(load)` with that one fold
(`crowd_rates`, held to it by tests/sizing/test_loadtest_files.py)."""

from __future__ import annotations

from bourse.sizing.scenario import Action, Scenario

REST_ACTIONS = (
    Action.PLACE_LIMIT,
    Action.PLACE_MARKET,
    Action.CANCEL,
    Action.AMEND,
    Action.READ_DEPTH,
    Action.READ_BALANCES,
    Action.READ_ORDERS,
)

ROUTES: dict[Action, tuple[str, str]] = {
    Action.PLACE_LIMIT: ("post", "/api/v3/order"),
    Action.PLACE_MARKET: ("post", "/api/v3/order"),
    Action.CANCEL: ("delete", "/api/v3/order/{order_id}"),
    Action.AMEND: ("patch", "/api/v3/order/{order_id}"),
    Action.READ_DEPTH: ("get", "/api/v3/markets/{market}/depth"),
    Action.READ_BALANCES: ("get", "/api/v3/balances"),
    Action.READ_ORDERS: ("get", "/api/v3/orders"),
}
"""(method, OpenAPI path) of each action; the test checks every one is in the gateway's document."""


def reading_rates(scenario: Scenario) -> dict[Action, float]:
    """What every connected user (trader or watcher) reads per second."""
    r = scenario.reading
    return {
        Action.READ_DEPTH: r.depth_per_s,
        Action.READ_BALANCES: r.balances_per_s,
        Action.READ_ORDERS: r.orders_per_s,
    }


def trader_rates(scenario: Scenario) -> dict[Action, float]:
    """One trader's REST actions per second: its orders (RabbitMQ's share folded into REST limit
    orders), cancels, amends, and the reads every user makes."""
    t = scenario.trading
    return {
        Action.PLACE_LIMIT: t.limit_per_s,
        Action.PLACE_MARKET: t.market_per_s,
        Action.CANCEL: t.cancel_per_s,
        Action.AMEND: t.amend_per_s,
        **reading_rates(scenario),
    }


def watcher_rates(scenario: Scenario) -> dict[Action, float]:
    """One connected user who does not trade: reads only."""
    return reading_rates(scenario)


def crowd_rates(scenario: Scenario, load: float = 1.0) -> dict[Action, float]:
    """Actions per second of `load` times the scenario's crowd, as the tools send them."""
    traders = scenario.traders * load
    watchers = (scenario.users - scenario.traders) * load
    per_trader, per_watcher = trader_rates(scenario), watcher_rates(scenario)
    return {
        action: traders * per_trader.get(action, 0.0) + watchers * per_watcher.get(action, 0.0)
        for action in REST_ACTIONS
    }


def resting_share(scenario: Scenario) -> float:
    """Of a trader's limit orders, the share placed beyond the band so they rest: one for each
    cancel or amend, which act on resting orders (the rest of the limit orders trade as the mix
    does)."""
    t = scenario.trading
    if t.limit_per_s <= 0:
        return 0.0
    return min(1.0, (t.cancel_per_s + t.amend_per_s) / t.limit_per_s)

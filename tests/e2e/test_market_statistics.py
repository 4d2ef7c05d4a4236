"""Market statistics through the whole exchange (every service of `bourse up`, persistence on
SQLite): trades placed over REST give hand-computed tickers and k-lines over REST; every model of
the gateway's statistics chain (the SQL tables, the statistics service) answers the same; the
depth's `sequence` is the market's; bad k-line queries change nothing."""

from __future__ import annotations

from typing import Any

from bourse.adapters.statistics_client import StatisticsClient
from bourse.domain.candles import Period
from bourse.services.gateway import Gateway
from tests.e2e.harness import Exchange, Member, expect_problem


async def trade(alice: Member, bob: Member) -> None:
    """Three trades: 0.2 at 50,000, 0.3 at 50,100, 0.1 at 49,900; a bid of 0.5 at 49,000 and an
    ask of 0.7 at 50,200 rest."""
    for price, amount in (("50000", "0.2"), ("50100", "0.3"), ("50200", "0.7")):
        await alice.limit("sell", amount, price)
    await alice.limit("buy", "0.1", "49900")
    await alice.limit("buy", "0.5", "49000")
    await bob.limit("buy", "0.2", "50000")
    await bob.limit("buy", "0.3", "50100")
    await bob.limit("sell", "0.1", "49900")


async def get(exchange: Exchange, path: str, **params: Any) -> tuple[Any, str]:
    response = await exchange.http.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json(), response.headers["bourse-read-source"]


async def test_tickers_and_klines_over_rest_are_hand_computed_and_every_model_agrees(
    exchange: Exchange, alice: Member, bob: Member
) -> None:
    await trade(alice, bob)
    await exchange.settle()
    gateway = exchange.service(Gateway)
    assert gateway.watch is not None
    assert gateway.statistics is not None
    await gateway.watch.check()  # the watermarks now, not as of the last sample

    ticker, source = await get(exchange, "/markets/btc_usd/ticker")
    assert source == "sql"  # the first model, fresh
    assert {k: ticker[k] for k in ("open", "high", "low", "last", "volume", "trades")} == {
        "open": "50000.00",
        "high": "50100.00",
        "low": "49900.00",
        "last": "49900.00",
        "volume": "0.600000",
        "trades": 3,
    }
    assert (ticker["change"], ticker["change_percent"]) == ("-100.00", "-0.20")
    assert (ticker["best_bid"], ticker["best_ask"]) == ("49000.00", "50200.00")
    tickers, _ = await get(exchange, "/tickers")
    assert [t["market"] for t in tickers] == list(exchange.settings.catalog.markets)
    assert tickers[0] == ticker

    hours, _ = await get(exchange, "/markets/btc_usd/klines", period="1h")
    assert [(c["open"], c["high"], c["low"], c["close"], c["volume"], c["trades"]) for c in hours] == [
        ("50000.00", "50100.00", "49900.00", "49900.00", "0.600000", 3)
    ]
    minutes, _ = await get(exchange, "/markets/btc_usd/klines", period="1m", limit=1000)
    assert sum(c["trades"] for c in minutes) == 3

    # every model of the chain: the SQL tables, then the statistics service
    chain = gateway.statistics
    names = [source.name for source in chain.sources]
    assert names == ["sql-statistics", "statistics"]
    answers = [
        (
            await source.model.ticker("btc_usd"),
            [await source.model.klines("btc_usd", period, None, None, 1000) for period in Period],
        )
        for source in chain.sources
    ]
    assert answers[0] == answers[1]

    depth, _ = await get(exchange, "/markets/btc_usd/depth")
    service = chain.sources[-1].model
    assert isinstance(service, StatisticsClient)
    snapshot = await service.depth_snapshot("btc_usd")
    assert depth["sequence"] >= snapshot.sequence > 0
    assert depth["bids"] == [["49000.00", "0.500000"]]


async def test_bad_klines_queries_are_refused_and_change_nothing(exchange: Exchange) -> None:
    before = await exchange.stream_sizes()
    refused: list[tuple[dict[str, str | int], str]] = [
        ({"period": "2m"}, "unknown_period"),
        ({"period": "1m", "start": "later"}, "invalid_time"),
        ({"period": "1m", "start": "2024-03-11T00:00:00Z", "end": "2024-03-10T00:00:00Z"}, "start_after_end"),
        ({"period": "1m", "start": 0, "end": 100_000_000}, "range_too_large"),
        ({"period": "1m", "limit": 1001}, "invalid_request"),
    ]
    for params, code in refused:
        response = await exchange.http.get("/markets/btc_usd/klines", params=params)
        expect_problem(response, 422, code)
    expect_problem(await exchange.http.get("/markets/doge_usd/ticker"), 404, "unknown_market")
    assert await exchange.stream_sizes() == before

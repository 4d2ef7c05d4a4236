"""`bourse rebuild`: the tables emptied and refilled from the streams equal the live ones,
k-lines and market statistics included."""

from __future__ import annotations

from bourse.domain.candles import Period
from bourse.maintenance import rebuild_sql
from bourse.runtime.host import ServiceHost
from bourse.runtime.service import ServiceContext
from bourse.services.persistence import Persistence
from tests.persistence.helpers import Exchange, dump
from tests.persistence.test_persistence_service import busy_streams, caught_up, persistence_of


async def test_rebuilt_tables_equal_the_tables_written_live_and_pass_the_audit(
    exchange: Exchange, sql_url: str
) -> None:
    await busy_streams(exchange, members=6, rounds=12)
    host = ServiceHost(ServiceContext(exchange.settings, exchange.nc, exchange.js))
    await host.start([Persistence])
    try:
        await caught_up(exchange, persistence_of(host))
        live = await dump(sql_url)
    finally:
        await host.stop()

    lines: list[str] = []
    report = await rebuild_sql(exchange.settings, progress=lines.append)

    assert report.ok, list(report.lines())
    assert lines[-1] == "rebuild: 0 stream messages left to apply"
    rebuilt = await dump(sql_url)
    # the k-lines and market statistics too (the audit above checked them against the trades)
    assert rebuilt["klines"] == live["klines"]
    assert rebuilt["market_statistics"] == live["market_statistics"]
    assert rebuilt == live
    assert len(live["orders"]) > 100
    assert {row[1] for row in live["klines"]} == {period.value for period in Period}
    assert len(live["market_statistics"]) == 3

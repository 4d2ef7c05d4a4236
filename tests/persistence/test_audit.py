"""`bourse audit` on what the persistence service wrote from a real exchange: clean tables
pass; a corrupted balance, ledger entry or trade is found and the command exits non-zero."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from bourse.adapters.sql.audit import audit_url
from bourse.adapters.sql.database import create_engine
from bourse.cli import main
from tests.persistence.helpers import Exchange, fetch_all
from tests.persistence.test_persistence_service import busy_streams, started


@pytest.fixture
async def written(exchange: Exchange, sql_url: str) -> str:
    """The database of a persistence service that applied a busy exchange's streams."""
    await busy_streams(exchange, members=6, rounds=12)
    ns = exchange.settings.namespace
    service = await started(exchange)
    try:
        await service.write_reports(await fetch_all(exchange.js, ns, "accounts"))
        await service.write_events(await fetch_all(exchange.js, ns, "events"))
    finally:
        await service.stop()
    return sql_url


async def corrupt(url: str, sql: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(sql))
            assert result.rowcount == 1
    finally:
        await engine.dispose()


async def cli_audit(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    monkeypatch.setenv("BOURSE_SQL_URL", url)
    code = await asyncio.to_thread(main, ["audit"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


async def test_the_tables_of_a_busy_exchange_pass_the_audit(
    written: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    report = await audit_url(written)
    assert report.ok, "\n".join(report.lines())
    balances, currencies, orders, minutes, periods = report.checks
    assert balances.checked > 20
    assert currencies.checked == 3
    assert orders.checked > 100
    assert minutes.checked >= 3  # a minute or more of each market's trades
    assert periods.checked >= 3 * 7
    code, out = await cli_audit(written, monkeypatch, capsys)
    assert code == 0, out
    assert "ok: the database agrees with its ledger" in out


async def test_a_balance_that_differs_from_its_ledger_fails_the_audit(
    written: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await corrupt(
        written, "UPDATE balances SET available = available + 1 WHERE member_id = 2 AND currency = 'usd'"
    )
    code, out = await cli_audit(written, monkeypatch, capsys)
    assert code == 1
    assert "member 2 usd" in out
    assert "DIFFERENCES FOUND" in out
    report = await audit_url(written)
    assert [check.ok for check in report.checks] == [False, True, True, True, True]


async def test_a_lost_ledger_entry_breaks_the_balance_and_the_conservation_of_its_currency(
    written: str,
) -> None:
    await corrupt(
        written,
        "DELETE FROM ledger_entries WHERE account = 1 AND currency = 'btc' AND delta > 0 AND seq = "
        "(SELECT MIN(seq) FROM ledger_entries WHERE account = 1 AND currency = 'btc' AND delta > 0)",
    )
    report = await audit_url(written)
    balances, currencies, orders, minutes, periods = report.checks
    assert any("member 1 btc" in line for line in balances.differences)
    assert [line.split(":")[0] for line in currencies.differences] == ["btc"]
    assert orders.ok
    assert minutes.ok
    assert periods.ok


async def test_an_order_whose_executed_amount_disagrees_with_its_trades_fails_the_audit(written: str) -> None:
    await corrupt(
        written,
        "UPDATE trades SET amount = amount + 1 WHERE trade_id = 1 AND market = "
        "(SELECT MIN(market) FROM (SELECT market FROM trades WHERE trade_id = 1) m)",
    )
    report = await audit_url(written)
    balances, currencies, orders, minutes, periods = report.checks
    assert balances.ok
    assert currencies.ok
    assert len(orders.differences) == 2  # the maker's and the taker's
    assert len(minutes.differences) == 1  # the trade's minute
    assert periods.ok


async def test_the_audit_of_a_database_without_the_schema_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await cli_audit(f"sqlite+aiosqlite:///{tmp_path}/empty.db", monkeypatch, capsys)
    assert code == 2
    assert "no such table" in out


async def a_kline(url: str, period: str) -> tuple[str, int]:
    """(market, open time) of one stored k-line of `period`."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            found = (
                await conn.execute(
                    text(
                        "SELECT market, open_time FROM klines WHERE period = :period "
                        "ORDER BY market, open_time LIMIT 1"
                    ),
                    {"period": period},
                )
            ).one()
    finally:
        await engine.dispose()
    return str(found[0]), int(found[1])


async def test_a_1m_kline_that_differs_from_its_trades_fails_the_audit_and_every_coarser_one_too(
    written: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    market, open_time = await a_kline(written, "1m")
    await corrupt(
        written,
        f"UPDATE klines SET volume = volume + 1 WHERE market = '{market}' AND period = '1m' "
        f"AND open_time = {open_time}",
    )
    report = await audit_url(written)
    *others, minutes, periods = report.checks
    assert all(check.ok for check in others)
    assert len(minutes.differences) == 1
    assert minutes.differences[0].startswith(f"{market} 1m ")
    assert f"(open time {open_time})" in minutes.differences[0]
    # each coarser period's k-line over that minute is no longer the merge of its 1m ones
    named = sorted(line.split(" ")[1] for line in periods.differences)
    assert named == sorted(["5m", "15m", "30m", "1h", "4h", "1d", "1w"])
    code, out = await cli_audit(written, monkeypatch, capsys)
    assert code == 1
    assert f"{market} 1m" in out


async def test_a_coarser_kline_that_differs_from_its_1m_klines_fails_the_audit(written: str) -> None:
    market, open_time = await a_kline(written, "1h")
    await corrupt(
        written,
        f"UPDATE klines SET close = close + 1 WHERE market = '{market}' AND period = '1h' "
        f"AND open_time = {open_time}",
    )
    report = await audit_url(written)
    *others, minutes, periods = report.checks
    assert all(check.ok for check in others)
    assert minutes.ok
    assert len(periods.differences) == 1
    assert periods.differences[0].startswith(f"{market} 1h ")
    assert f"(open time {open_time})" in periods.differences[0]


async def test_a_lost_coarser_kline_fails_the_audit(written: str) -> None:
    market, open_time = await a_kline(written, "1d")
    await corrupt(
        written, f"DELETE FROM klines WHERE market = '{market}' AND period = '1d' AND open_time = {open_time}"
    )
    report = await audit_url(written)
    *_, minutes, periods = report.checks
    assert minutes.ok
    assert [line.split(" k-line ")[1].split(";")[0] for line in periods.differences] == ["none"]

"""The markets file and the settings: what every service agrees on at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from bourse.application.catalog import CatalogError, load_catalog, parse_catalog
from bourse.config.settings import Settings


def test_default_markets_file_has_consistent_markets_and_demo_members() -> None:
    catalog = load_catalog()
    assert set(catalog.markets) >= {"btc_usd", "eth_usd", "eth_btc"}
    btc_usd = catalog.markets["btc_usd"]
    assert (btc_usd.base.code, btc_usd.quote.code) == ("btc", "usd")
    assert btc_usd.min_amount == btc_usd.parse_amount("0.0001")
    assert catalog.fees["btc_usd"].taker_ppm == 2000
    alice = catalog.demo_members[0]
    assert alice.balances["btc"] == 10 * 10**8


def test_market_whose_precisions_do_not_fit_the_quote_currency_is_refused() -> None:
    raw = {
        "currencies": {"btc": {"precision": 8}, "usd": {"precision": 2}},
        "markets": {"btc_usd": {"base": "btc", "quote": "usd", "amount_precision": 6, "price_precision": 2}},
    }
    with pytest.raises(CatalogError, match="btc_usd"):
        parse_catalog(raw)


def test_market_with_unknown_currency_is_refused() -> None:
    raw = {
        "currencies": {},
        "markets": {"x_y": {"base": "x", "quote": "y", "amount_precision": 1, "price_precision": 1}},
    }
    with pytest.raises(CatalogError, match="unknown currency"):
        parse_catalog(raw)


def test_unreadable_markets_file_is_a_catalog_error(tmp_path: Path) -> None:
    broken = tmp_path / "markets.toml"
    broken.write_text("[markets\n")
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(broken)


def test_settings_come_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BOURSE_NATS_URL", "nats://a:4222, nats://b:4222")
    monkeypatch.setenv("BOURSE_DATA_DIR", str(tmp_path))
    settings = Settings(_env_file=None)
    assert settings.nats_servers == ["nats://a:4222", "nats://b:4222"]
    assert settings.effective_sql_url.startswith("sqlite+aiosqlite:///")
    assert str(tmp_path) in settings.effective_sql_url


def test_embedded_default_needs_no_external_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BOURSE_NATS_URL", "BOURSE_REDIS_URL", "BOURSE_RABBITMQ_URL", "BOURSE_SQL_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)
    assert settings.nats_url is None
    assert settings.redis_url is None
    assert settings.rabbitmq_url is None
    assert settings.nats_servers == [f"nats://127.0.0.1:{settings.embedded_nats_port}"]

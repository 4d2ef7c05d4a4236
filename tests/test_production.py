"""The production guard (`BOURSE_ENVIRONMENT=production`) and secret settings that never print."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from bourse.adapters.auth import generate_key, load_key_ring
from bourse.cli import SETTINGS_REFUSED, main
from bourse.config.production import (
    ProductionSettingsRefused,
    check_production,
    default_credentials,
    production_problems,
)
from bourse.config.settings import SecretUrl, Settings, mask_url
from bourse.runtime.logs import ConsoleFormatter, JsonFormatter
from bourse.runtime.process import BourseProcess, print_links
from bourse.runtime.supervisor import Supervisor
from bourse.services.auth import Auth
from tests.conftest import free_port

SECRETS = ("s3cret-nats", "s3cret-sql", "s3cret-redis", "s3cret-amqp")
"""The passwords of `with_passwords`: none may appear in anything printed."""
STRONG_URLS: dict[str, Any] = {
    "sql_url": "mysql+asyncmy://bourse:s3cret-sql@db:3306/bourse",
    "redis_url": "redis://:s3cret-redis@redis:6379/0",
    "rabbitmq_url": "amqp://bourse:s3cret-amqp@rabbitmq:5672/bourse",
}


def with_passwords(settings: Settings) -> Settings:
    """`settings` whose every server URL carries a password (NATS without auth ignores its own)."""
    nats_url = ",".join(
        url.replace("nats://", "nats://bourse:s3cret-nats@", 1) for url in settings.nats_servers
    )
    return settings.model_copy(update={"nats_url": nats_url, **STRONG_URLS})


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def production(tmp_path: Path, **changes: Any) -> Settings:
    return Settings(environment="production", data_dir=tmp_path, _env_file=None, **changes)


def public_key_folder(tmp_path: Path) -> Path:
    """A keys folder as production has it: the auth server's public key, under its own kid."""
    folder = tmp_path / "keys"
    key = generate_key(tmp_path / "auth-server", kid="auth-server-2026-01")
    folder.mkdir()
    (folder / "auth-server-2026-01.pem").write_bytes(
        key.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return folder


# ------------------------------------------------------------------ the guard


def test_production_with_the_defaults_refuses_and_names_each_problem(tmp_path: Path) -> None:
    dev_key = generate_key(tmp_path / "keys")  # what a development run left in the data folder
    settings = production(
        tmp_path,
        sql_url="mysql+asyncmy://root@db:3306/bourse",
        redis_url="redis://:password@redis:6379/0",
        rabbitmq_url="amqp://guest:guest@rabbitmq:5672/",
        nats_url="nats://bourse:bourse@n1:4222,nats://n2:4222",
    )
    with pytest.raises(ProductionSettingsRefused) as refused:
        check_production(settings)
    problems = refused.value.problems
    message = str(refused.value)
    assert len(problems) == 7, problems
    for expected in (
        "BOURSE_DEV_TOKENS",
        "BOURSE_DEMO_SEED",
        dev_key.kid,
        "BOURSE_SQL_URL (mysql+asyncmy://root@db:3306/bourse)",
        "BOURSE_REDIS_URL (redis://:***@redis:6379/0)",
        "BOURSE_RABBITMQ_URL (amqp://guest:***@rabbitmq:5672/)",
        "BOURSE_NATS_URL (nats://bourse:***@n1:4222)",
    ):
        assert sum(expected in problem for problem in problems) == 1, (expected, problems)
        assert expected in message
    assert ":guest@" not in message
    assert ":bourse@" not in message
    assert ":password@" not in message


def test_production_with_proper_settings_passes_the_check(tmp_path: Path) -> None:
    settings = production(
        tmp_path,
        dev_tokens=False,
        demo_seed=False,
        jwt_keys_dir=public_key_folder(tmp_path),
        nats_url="nats://gateway:s3cret-nats@n1:4222,nats://n2:4222",
        **STRONG_URLS,
    )
    assert production_problems(settings) == []
    check_production(settings)


def test_a_nats_token_and_urls_without_credentials_are_not_default_credentials() -> None:
    assert default_credentials("nats://s3cret-token@n1:4222") is None
    assert default_credentials("redis://redis:6379/0") is None
    assert default_credentials("mysql+asyncmy://bourse:s3cret-sql@db/bourse") is None
    assert default_credentials("amqp://rabbitmq:5672/") == "no user: the client logs in as guest/guest"
    assert (
        default_credentials("mysql+asyncmy://shop:shop@db/bourse")
        == "the password of user 'shop' is its name"
    )


def test_development_settings_pass_unchecked_although_they_hold_the_defaults(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, rabbitmq_url="amqp://guest:guest@127.0.0.1:5672/", _env_file=None)
    assert settings.environment == "development"
    assert not settings.production
    generate_key(tmp_path / "keys")
    check_production(settings)  # the embedded `bourse up` keeps working with no settings
    assert len(production_problems(settings)) == 4  # still listed for whoever asks


def test_generated_keys_carry_the_dev_mark_and_sort_newest_last(tmp_path: Path) -> None:
    first, second = generate_key(tmp_path), generate_key(tmp_path)
    ring = load_key_ring(tmp_path)
    assert ring.dev_kids == [first.kid, second.kid]
    assert ring.signing_key.kid == second.kid
    assert generate_key(tmp_path, kid="ops-2026").kid not in load_key_ring(tmp_path).dev_kids


async def test_a_production_process_refuses_before_starting_or_connecting_anything(tmp_path: Path) -> None:
    settings = production(tmp_path, embedded_nats_port=free_port(), health_port=free_port())
    process = BourseProcess(settings, [Auth], embedded_nats=True)
    with pytest.raises(ProductionSettingsRefused):
        await process.start()
    assert process.nc is None
    assert process.host is None
    assert process.health_server is None
    assert not (tmp_path / "nats").exists(), "the embedded NATS server was started"
    assert not (tmp_path / "keys").exists(), "the auth service made a dev key"
    supervisor = Supervisor(settings, [["auth"]], embedded_nats=True)
    with pytest.raises(ProductionSettingsRefused):
        await supervisor.start()
    assert supervisor.nc is None
    assert all(child.process is None for child in supervisor.children)


@pytest.mark.parametrize("command", [["run", "auth", "gateway"], ["up", "--processes", "2"]])
def test_cli_up_and_run_in_production_exit_non_zero_listing_every_problem(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    monkeypatch.setenv("BOURSE_ENVIRONMENT", "production")
    monkeypatch.setenv("BOURSE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BOURSE_NATS_URL", "nats://127.0.0.1:1")  # nothing listens: it must not matter
    monkeypatch.setenv("BOURSE_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:1/")
    assert main(command) == SETTINGS_REFUSED != 0
    err = capsys.readouterr().err
    assert "BOURSE_ENVIRONMENT=production" in err
    for name in ("BOURSE_DEV_TOKENS", "BOURSE_DEMO_SEED", "BOURSE_RABBITMQ_URL"):
        assert name in err
    assert "guest:guest" not in err


# ------------------------------------------------------------------ secrets never print


def test_urls_print_with_their_passwords_masked_and_connect_with_them() -> None:
    settings = Settings(
        nats_url="nats://a:s3cret-nats@n1:4222, nats://s3cret-nats@n2:4222", _env_file=None, **STRONG_URLS
    )
    assert isinstance(settings.sql_url, SecretUrl)
    for shown in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert_no_secret(shown)
    assert repr(settings.sql_url) == "SecretUrl('mysql+asyncmy://bourse:***@db:3306/bourse')"
    assert str(settings.nats_url) == "nats://a:***@n1:4222, nats://***@n2:4222"
    assert settings.nats_servers == ["nats://a:s3cret-nats@n1:4222", "nats://s3cret-nats@n2:4222"]
    assert settings.effective_sql_url == STRONG_URLS["sql_url"]
    assert mask_url("postgresql://db/x?user=a&password=s3cret-sql") == "postgresql://db/x?user=a&password=***"


def test_a_url_given_to_model_copy_is_kept_secret() -> None:
    copy = Settings(_env_file=None).model_copy(update={"redis_url": STRONG_URLS["redis_url"]})
    assert isinstance(copy.redis_url, SecretUrl)
    assert copy.redis_url.get_secret_value() == STRONG_URLS["redis_url"]
    assert_no_secret(repr(copy))


@pytest.mark.parametrize("formatter", [JsonFormatter(), ConsoleFormatter()])
def test_settings_logged_as_fields_show_no_password(formatter: logging.Formatter) -> None:
    settings = with_passwords(Settings(nats_url="nats://n1:4222", _env_file=None))
    record = logging.makeLogRecord({"msg": "starting", "settings": settings, "database": settings.sql_url})
    line = formatter.format(record)
    assert "mysql+asyncmy://bourse:***@db:3306/bourse" in line
    assert_no_secret(line)


async def test_health_banner_and_logs_of_a_running_process_show_no_password(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    process = BourseProcess(
        with_passwords(settings).model_copy(update={"health_port": free_port()}), [Auth], embedded_nats=False
    )
    await process.start()
    try:
        async with httpx.AsyncClient() as client:
            health = await client.get(process.links()["health"])
        assert health.status_code == 200, health.text
        assert_no_secret(health.text)
        out = io.StringIO()
        print_links(process, out)
        banner = out.getvalue()
        assert "nats://bourse:***@" in banner
        assert_no_secret(banner)
    finally:
        await process.stop()
    assert caplog.records
    for record in caplog.records:
        assert_no_secret(JsonFormatter().format(record))

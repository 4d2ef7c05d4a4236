"""Operator tasks that run once and exit: rebuilding the SQL read models from the streams, and
emptying them.

Both are safe by construction: they take the persistence lock before touching anything (and
refuse with `LockHeld`, nothing changed, while a persistence service or another command holds
it), and they never empty the live tables in place: the new tables are built in a staging
database and swapped in at the end, atomically (`bourse.adapters.sql.staging`). A failure half
way leaves the live tables as they were.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bourse.adapters.sql.audit import AuditReport, audit_url
from bourse.adapters.sql.database import revision_url
from bourse.adapters.sql.lock import holding
from bourse.adapters.sql.staging import create_staging, drop_staging, swap_in
from bourse.config.settings import SecretUrl, Settings
from bourse.runtime.host import ServiceHost
from bourse.runtime.process import connect_nats
from bourse.runtime.service import ServiceContext
from bourse.services.persistence import Persistence

LOCK_WAIT_S = 1.0
"""How long the commands wait for the lock: long enough for a service just stopped to let it go."""


async def reset_sql(url: str, *, lock_wait_s: float = LOCK_WAIT_S) -> str | None:
    """Replace every table of `url` by empty ones at the newest revision (the persistence
    service refills them from the streams on its next start); returns that revision."""
    async with holding(url, lock_wait_s):
        await create_staging(url)
        try:
            await swap_in(url)
        finally:
            await drop_staging(url)
        return await revision_url(url)


async def rebuild_sql(
    settings: Settings,
    *,
    progress: Callable[[str], None] = print,
    timeout_s: float = 3600.0,
    lock_wait_s: float = LOCK_WAIT_S,
) -> AuditReport:
    """Apply the streams (from their first stored message, as the persistence service does on an
    empty database) to new tables, swap them in for the live ones, then audit the result.

    The persistence service must be stopped: its lock makes this refuse (`LockHeld`) before
    anything is touched. The streams keep 7 days: anything older is not in the rebuilt tables."""
    url = settings.effective_sql_url
    async with holding(url, lock_wait_s):
        staging = await create_staging(url)
        try:
            staged = settings.model_copy(
                update={"sql_url": SecretUrl(staging.render_as_string(hide_password=False))}
            )
            await _apply_streams(staged, progress, timeout_s)
            await swap_in(url)
        finally:
            await drop_staging(url)
        return await audit_url(url)


async def _apply_streams(settings: Settings, progress: Callable[[str], None], timeout_s: float) -> None:
    """Run a persistence service in this process on `settings.sql_url` until it has applied
    every message stored in both streams."""
    nc = await connect_nats(settings, "bourse[rebuild]")
    host = ServiceHost(ServiceContext(settings, nc, nc.jetstream()))
    try:
        await host.start([Persistence])
        service = host.running[0].service
        assert isinstance(service, Persistence)
        started = time.monotonic()
        while True:
            await service.refresh_lag()
            lag = sum(facts["messages"] for facts in service.health()["lag"].values())
            progress(f"rebuild: {lag} stream messages left to apply")
            if lag == 0:
                break
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"rebuild still {lag} messages behind after {timeout_s:.0f} s")
            await asyncio.sleep(1.0)
    finally:
        await host.stop()
        await nc.close()

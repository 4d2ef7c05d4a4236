"""Operator tasks that run once and exit: rebuilding the SQL read models from the streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bourse.adapters.sql.audit import AuditReport, audit_url
from bourse.adapters.sql.database import reset_url
from bourse.runtime.host import ServiceHost
from bourse.runtime.process import connect_nats
from bourse.runtime.service import ServiceContext
from bourse.services.persistence import Persistence
from bourse.settings import Settings


async def rebuild_sql(
    settings: Settings, *, progress: Callable[[str], None] = print, timeout_s: float = 3600.0
) -> AuditReport:
    """Empty the persistence tables, apply the streams to them again (from their first stored
    message, as the persistence service does on an empty database), then audit the result.

    The persistence service must be stopped: on MariaDB/MySQL its lock makes this refuse to run
    beside it. The streams keep 7 days: anything older is not in the rebuilt tables."""
    url = settings.effective_sql_url
    await reset_url(url)
    nc = await connect_nats(settings, "bourse[rebuild]")
    host = ServiceHost(ServiceContext(settings, nc, nc.jetstream()))
    try:
        await host.start([Persistence])
        service = host.running[0].service
        assert isinstance(service, Persistence)
        started = time.monotonic()
        while True:
            await service.refresh_lag()
            lag = service.events.lag()["messages"] + service.accounts.lag()["messages"]
            progress(f"rebuild: {lag} stream messages left to apply")
            if lag == 0:
                break
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"rebuild still {lag} messages behind after {timeout_s:.0f} s")
            await asyncio.sleep(1.0)
    finally:
        await host.stop()
        await nc.close()
    return await audit_url(url)

"""Stopping background tasks for sure.

On Python 3.11 a cancellation can be swallowed: `asyncio.wait_for` (which nats-py's requests
use) may turn it into a timeout, and code that retries on timeouts then carries on. A stop that
cancels once and awaits the task can then hang forever (seen: a test's teardown stuck on a
gateway's read watcher). `cancel_and_wait` cancels again until the tasks end, within a bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]], grace_s: float = 5.0) -> None:
    """Cancel the tasks, again every 0.1 s while any runs, for at most `grace_s`; a task that
    still runs then is logged and left."""
    loop = asyncio.get_running_loop()
    pending = {task for task in tasks if not task.done()}
    give_up = loop.time() + grace_s
    while pending and loop.time() < give_up:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in pending:
        log.warning("task did not stop", extra={"task": repr(task)})

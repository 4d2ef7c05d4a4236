"""While accounts is stopped (SIGSTOP: its connection stays, it processes nothing), what the
gateway says of an acknowledged order is "pending", never "not found" (issue 10, item 4):

- `POST /order` is 202 (durable, not decided); `GET /order/{id}` is 202 `pending`, not 404;
- `DELETE /order/{id}` is 202 `pending`: the cancel is durable and applied once accounts runs
  (before, it was a 404 that the order then ended `cancelled` anyway);
- `PATCH` of it is 409 `order_pending` (nothing sent);
- a resent `client_order_id` is 202 too, and once accounts runs its id reads as refused
  (`client_order_id_taken`, item 3), not 404 forever;
- an id from long ago is still 404: pending is not a blanket answer.

Real processes as in production (`bourse run`), on the machine's NATS.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client

from bourse.config.auth import issuer_for, key_ring_for
from bourse.config.settings import Settings
from bourse.domain.order_ids import EPOCH_MS, TIMESTAMP_SHIFT
from tests.e2e.test_crash_recovery import System, processes, system_nc, wait_seeded

__all__ = ["system_nc"]  # the fixture, used by name


def _order(client_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "market": "btc_usd",
        "side": "buy",
        "type": "limit",
        "price": "100",
        "amount": "0.01",
    }
    if client_id is not None:
        body["client_order_id"] = client_id
    return body


OPEN = ("submitted", "partially_filled")


async def _until_final(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], timeout_s: float = 20.0
) -> httpx.Response:
    """The order once it reads as ended: an order placed and cancelled while accounts was stopped
    may read as open for a moment in between, when the two are matched in separate batches."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = await http.get(url, headers=headers)
        if response.status_code == 200 and response.json()["status"] not in OPEN:
            return response
        assert time.monotonic() < deadline, (response.status_code, response.text)
        await asyncio.sleep(0.1)


async def test_orders_read_as_pending_while_accounts_is_stopped(
    tmp_path: Path, namespace: str, system_nc: Client
) -> None:
    with processes(tmp_path, namespace) as system:
        await _run(system, tmp_path, namespace)


async def _run(system: System, tmp_path: Path, namespace: str) -> None:
    settings = Settings(namespace=namespace, data_dir=tmp_path, _env_file=None)
    token = issuer_for(settings, key_ring_for(settings)).issue(1)  # the key exists before auth starts
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=15.0) as http:
        for proc in system.procs:
            proc.start()
        for proc in system.procs:
            await proc.healthy(http, timeout_s=30.0)
        await wait_seeded(http, system.api, {member: token for member in (1, 2, 3)})
        first = await http.post(f"{system.api}/order", json=_order(), headers=headers)
        assert first.status_code == 201, first.text

        accounts = system.accounts.process
        assert accounts is not None
        os.kill(accounts.pid, signal.SIGSTOP)
        try:
            posted = await http.post(f"{system.api}/order", json=_order("dup-1"), headers=headers)
            assert posted.status_code == 202, posted.text
            order_id = posted.json()["id"]
            resent = await http.post(f"{system.api}/order", json=_order("dup-1"), headers=headers)
            assert resent.status_code == 202, resent.text
            second_id = resent.json()["id"]

            got = await http.get(f"{system.api}/order/{order_id}", headers=headers)
            assert got.status_code == 202, got.text
            assert got.json()["status"] == "pending"
            assert got.headers["retry-after"]

            amended = await http.patch(
                f"{system.api}/order/{order_id}", json={"price": "101"}, headers=headers
            )
            assert amended.status_code == 409, amended.text
            assert amended.json()["code"] == "order_pending"

            cancelled = await http.delete(f"{system.api}/order/{order_id}", headers=headers)
            assert cancelled.status_code == 202, cancelled.text
            assert (cancelled.json()["command"], cancelled.json()["status"]) == ("cancel", "pending")

            ancient = ((int(time.time() * 1000) - 3_600_000 - EPOCH_MS) << TIMESTAMP_SHIFT) | 1
            unknown = await http.get(f"{system.api}/order/{ancient}", headers=headers)
            assert unknown.status_code == 404, unknown.text
        finally:
            os.kill(accounts.pid, signal.SIGCONT)

        ended = await _until_final(http, f"{system.api}/order/{order_id}", headers)
        assert ended.json()["status"] == "cancelled", ended.text
        refused = await _until_final(http, f"{system.api}/order/{second_id}", headers)
        assert (refused.json()["status"], refused.json()["reason"]) == ("closed", "client_order_id_taken")
        listed = await http.get(f"{system.api}/orders", headers=headers)
        ids = [order["id"] for order in listed.json()]
        assert order_id in ids
        assert second_id not in ids  # readable by its id, but no order of the member

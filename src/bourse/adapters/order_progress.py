"""Whether an order id that no read model knows may still appear: the answer behind "pending".

An order the gateway acknowledged (or answered `outcome_unknown` for) is, until the pipeline
has processed it, in no read model. Calling it "not found" then would be false (issue 10):
while accounts is down, an acknowledged order read as 404 and a cancel of it was applied after
a 404. So before a 404 the gateway asks how far the pipeline has got, from the streams' own
positions, not from any clock of ours:

1. The order's deadline. Its id carries its creation time; every command message carries a
   deadline (creation + submit timeout + clock-skew margin) after which accounts refuses it,
   so any message carrying the order was stored by `decided_by` (one more margin).
2. Accounts. The member's shard consumer on ORDERS: if the oldest message it has not
   acknowledged was stored after `decided_by` (or none waits), every message that could carry
   the order has been processed; otherwise it is pending. (An order whose POST was answered
   504 `outcome_unknown` may be stored until its `decided_by`, which that answer names: until
   then only the client who was told so has the id, and it was told when to ask.)
3. Matching. What accounts forwarded was stored in MATCH before step 2 looked. If a market's
   oldest unprocessed MATCH message is older than that moment, it may be ours: look again a
   little later; still there, matching is behind, and the order is pending.

Each step is a JetStream API request or two, made only on the path to a 404. When NATS cannot
be asked, the answer is pending: not knowing is not "not found".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bourse.contracts.subjects import (
    MATCH,
    ORDERS,
    StreamSpec,
    accounts_consumer,
    matching_consumer,
    member_shard,
)
from bourse.domain.order_ids import id_timestamp_ms

log = logging.getLogger(__name__)


class OrderProgress:
    def __init__(
        self,
        js: JetStreamContext,
        namespace: str,
        shards: int,
        markets: Sequence[str],
        *,
        submit_timeout_s: float,
        clock_skew_s: float,
        matching_settle_s: float = 0.3,
    ) -> None:
        self.js = js
        self.namespace = namespace
        self.shards = shards
        self.markets = tuple(markets)
        self.window_ns = int((submit_timeout_s + 2 * clock_skew_s) * 1e9)
        self.matching_settle_s = matching_settle_s

    def decided_by_ns(self, order_id: int) -> int:
        """After this time (ns since the epoch) no stream can store a command for this order id
        any more (see `OrderIntake`): an id made later than it claims is impossible, since the
        generator's clock only runs ahead of the wall clock."""
        return id_timestamp_ms(order_id) * 1_000_000 + self.window_ns

    async def may_be_pending(self, member_id: int, order_id: int) -> bool:
        """True unless the pipeline has provably processed every message that could carry this
        member's order `order_id` (then a read model that does not know it is right)."""
        decided_by = self.decided_by_ns(order_id)
        try:
            shard = member_shard(member_id, self.shards)
            oldest = await self._oldest_unprocessed_ns(ORDERS, accounts_consumer(shard), str(shard))
            if oldest is not None and oldest <= decided_by:
                return True
            looked_at = time.time_ns()
            behind = await self._matching_behind(looked_at)
            if behind:
                await asyncio.sleep(self.matching_settle_s)
                behind = await self._matching_behind(looked_at, only=behind)
            return bool(behind)
        except (NatsError, TimeoutError, OSError) as exc:
            log.warning("order progress unknown", extra={"order_id": order_id, "error": repr(exc)})
            return True

    async def _matching_behind(self, looked_at_ns: int, only: Sequence[str] | None = None) -> list[str]:
        behind = []
        for market in only if only is not None else self.markets:
            oldest = await self._oldest_unprocessed_ns(MATCH, matching_consumer(market), market)
            if oldest is not None and oldest <= looked_at_ns:
                behind.append(market)
        return behind

    async def _oldest_unprocessed_ns(self, spec: StreamSpec, durable: str, shard: str) -> int | None:
        """Store time of the oldest message of the consumer's subject it has not acknowledged;
        None when nothing waits. A consumer that does not exist yet has processed nothing: the
        stream's first message of its subject, if any."""
        stream = spec.name(self.namespace)
        subject = spec.subject(self.namespace, shard)
        try:
            info = await self.js.consumer_info(stream, durable)
        except NotFoundError:
            start = 1
        else:
            if not info.num_pending and not info.num_ack_pending:
                return None
            start = (info.ack_floor.stream_seq if info.ack_floor and info.ack_floor.stream_seq else 0) + 1
        try:
            msg = await self.js.get_msg(stream, start, subject=subject, next=True)
        except NotFoundError:
            return None
        if msg.time is None:
            return 0
        return int(msg.time.timestamp() * 1e9)

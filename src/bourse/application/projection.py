"""The rule every projection applies to stay exactly-once: positions by producer sequence.

A projection (SQL tables, Redis read models, the query service's memory, statistics) folds the
outputs of the stateful stages. Each output travels in an envelope named by its producer's key
(a market for EVENTS, an accounts shard for ACCOUNTS) and the producer's input sequence, which
grows along that key. A projection stores, per key, the last sequence it applied, and treats an
envelope at or below it as a repeat (a redelivery, or the producer's replay after a crash), so
applying a batch twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from bourse.contracts.messages import (
    ACCOUNTS_REPORTS_DECODER,
    EVENT_BATCH_DECODER,
    AccountsReport,
    EventBatch,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Envelope(Generic[T]):
    """One producer output, where its stream stored it, and whose sequence it carries."""

    stream_seq: int
    timestamp_ns: int
    """When the stream stored it: the same on every delivery and replay."""
    key: str
    """The producer's shard: the market (EVENTS) or the accounts shard (ACCOUNTS)."""
    seq: int
    """The producer's input sequence for this key: it grows along the key."""
    body: T


Unpack = Callable[[int, int, bytes], list[Envelope[T]]]
"""`(stream_seq, timestamp_ns, data) -> envelopes`; raises msgspec.DecodeError on a bad message."""


def unpack_events(stream_seq: int, timestamp_ns: int, data: bytes) -> list[Envelope[EventBatch]]:
    batch = EVENT_BATCH_DECODER.decode(data)
    return [Envelope(stream_seq, timestamp_ns, batch.market, batch.seq, batch)]


def unpack_reports(stream_seq: int, timestamp_ns: int, data: bytes) -> list[Envelope[AccountsReport]]:
    return [
        Envelope(stream_seq, timestamp_ns, str(report.shard), report.seq, report)
        for report in ACCOUNTS_REPORTS_DECODER.decode(data).reports
    ]


@dataclass(slots=True)
class Fresh(Generic[T]):
    """The envelopes of a batch not applied yet, in stream order."""

    envelopes: list[Envelope[T]] = field(default_factory=list)
    latest: dict[str, Envelope[T]] = field(default_factory=dict)
    """Per key, the newest fresh envelope: the positions to store with the batch."""
    duplicates: int = 0


def fresh(envelopes: Iterable[Envelope[T]], applied: Callable[[str], int], watermark: int = 0) -> Fresh[T]:
    """Keep what is new: past the stream `watermark` (every message up to it is applied) and past
    `applied(key)`, the sequence last applied for its key."""
    out: Fresh[T] = Fresh()
    for envelope in envelopes:
        if envelope.stream_seq <= watermark:
            out.duplicates += 1
            continue
        last = out.latest.get(envelope.key)
        if envelope.seq <= (last.seq if last is not None else applied(envelope.key)):
            out.duplicates += 1
            continue
        out.latest[envelope.key] = envelope
        out.envelopes.append(envelope)
    return out

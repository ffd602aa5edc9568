"""Rows of the events table built from a batch (pure and deterministic).

Everything in a row comes from the message or from the ledger record of the batch's range (stored_at),
never from the sink's clock or a random id: a replay of the range rebuilds byte-identical rows, which
is what lets ClickHouse drop the retried insert under the same token.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ingest.schema import EVENT_COLUMNS
from ingest.sink.batch import OffsetRange
from ingest.sink.dedupe import Item, to_millis

TOKEN_VERSION = "v1"  # noqa: S105 - an insert dedupe token, not a secret


@dataclass(frozen=True, slots=True)
class RangeId:
    """A batch's identity: one contiguous offset range of one partition of one log."""

    topic: str
    partition: int
    range: OffsetRange

    def token(self, digest: str) -> str:
        """The insert dedupe token. The digest of the messages guards against a reused range (a topic
        recreated from offset 0): a token must name exactly one immutable set of rows, or ClickHouse
        silently drops a different batch sent under it."""
        r = self.range
        return f"metergate:{TOKEN_VERSION}:{self.topic}:{self.partition}:{r.start}-{r.end}:{digest}"


def message_digest(parts: Iterable[tuple[int, int, bytes | None]]) -> str:
    """Digest of (offset, timestamp, value) of a batch's messages, in order."""
    numbers = array("q")
    values: list[bytes] = []
    for offset, timestamp, value in parts:
        numbers.extend((offset, timestamp, -1 if value is None else len(value)))
        if value:
            values.append(value)
    h = hashlib.blake2b(numbers.tobytes(), digest_size=12)
    h.update(b"".join(values))
    return h.hexdigest()


def build_rows(range_id: RangeId, items: Sequence[Item], stored_at_ms: int) -> list[tuple[Any, ...]]:
    """One row per kept item, columns in EVENT_COLUMNS order; DateTime64(3) columns as epoch millis."""
    topic, partition = range_id.topic, range_id.partition
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    for item in items:
        d = item.decoded
        e = d.event
        append(
            (
                d.namespace,
                e.id,
                e.source,
                e.type,
                e.subject,
                to_millis(e.time),
                e.data,
                to_millis(d.ingested_at),
                stored_at_ms,
                topic,
                partition,
                item.offset,
            )
        )
    return rows


assert len(EVENT_COLUMNS) == 12, "build_rows must follow EVENT_COLUMNS"

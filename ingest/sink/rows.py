"""Rows of the events table built from a batch (pure and deterministic).

Everything in a row comes from the message or from the ledger record of the batch's range (stored_at),
never from the sink's clock or a random id: a replay of the range rebuilds byte-identical rows, which
is what lets ClickHouse drop the retried insert under the same token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from common.clock import to_millis
from common.events_table import EVENT_COLUMNS
from ingest.sink.batch import OffsetRange
from ingest.sink.dedupe import Item

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


def build_columns(range_id: RangeId, items: Sequence[Item], stored_at_ms: int) -> list[list[Any]]:
    """The kept items as columns in EVENT_COLUMNS order (column-oriented insert: no transpose in the
    client); DateTime64(3) columns as epoch milliseconds."""
    decoded = [item.decoded for item in items]
    events = [d.event for d in decoded]
    n = len(items)
    return [
        [d.namespace for d in decoded],
        [e.id for e in events],
        [e.source for e in events],
        [e.type for e in events],
        [e.subject for e in events],
        [to_millis(e.time) for e in events],
        [e.data for e in events],
        [to_millis(d.ingested_at) for d in decoded],
        [stored_at_ms] * n,
        [range_id.topic] * n,
        [range_id.partition] * n,
        [item.offset for item in items],
    ]


assert len(EVENT_COLUMNS) == 12, "build_columns must follow EVENT_COLUMNS"

INSERT_FORMAT = "JSONCompactColumns"


def seconds(t: datetime) -> float:
    """An instant as the float `to_millis(t) / 1000` (a DateTime64 value of the insert block), fast when t is
    on a millisecond: datetime.timestamp() is the exact quotient correctly rounded, as is ms / 1000."""
    return t.timestamp() if not t.microsecond % 1000 else to_millis(t) / 1000

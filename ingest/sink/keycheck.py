"""The key check: which (namespace, source, id) of a batch are already stored, and with what payload.

Bounded by event time: an earlier copy is looked for within `window` of the batch's event times, so
ClickHouse prunes monthly partitions. The ids travel as their CRC32, written into the query as a
literal list of integers (a literal IN list of 10k ids exceeds the query size limit, clickhouse-connect
escapes a string parameter character by character in Python, and even an Array(UInt32) parameter is
formatted element by element in Python: 1.7 us per event, a tenth of the sink's budget). A CRC32
match is only a candidate: the exact (namespace, source, id) is compared here.

Rows written by the batch's own partition at or past the batch's first offset are excluded: after a
partial write (rows stored, offsets not committed) the replay must not find its own rows, or it would
build a different row set under the same token. Rows of the same partition before the range were
written by earlier batches, which are final, so the answer for a range never changes on replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from zlib import crc32

from common.clickhouse import ClickHouse
from ingest.schema import EVENTS_TABLE
from ingest.sink.dedupe import EventKey, Fingerprint, Item, to_millis
from ingest.sink.rows import RangeId

_DEFAULT_MAX_QUERY_SIZE = 262_144


class ClickHouseKeyCheck:
    def __init__(self, ch: ClickHouse, *, window: timedelta) -> None:
        self._ch = ch
        self._table = ch.table(EVENTS_TABLE)
        self._window_ms = int(window / timedelta(milliseconds=1))

    def stored(self, range_id: RangeId, items: Sequence[Item]) -> dict[EventKey, Fingerprint]:
        """Fingerprints of the batch's keys already stored by other ranges (blocking)."""
        if not items:
            return {}
        crcs = ",".join(map(str, {crc32(item.decoded.event.id.encode()) for item in items}))
        times = [item.decoded.event.time for item in items]
        namespaces = sorted({item.decoded.namespace for item in items})
        query = (
            "SELECT namespace, source, id, type, subject, toUnixTimestamp64Milli(time), data "
            f"FROM {self._table} "
            "WHERE time >= fromUnixTimestamp64Milli({lo:Int64}, 'UTC') "
            "AND time <= fromUnixTimestamp64Milli({hi:Int64}, 'UTC') "
            "AND namespace IN {namespaces:Array(String)} "
            f"AND CRC32(id) IN ({crcs}) "
            "AND NOT (ingest_topic = {topic:String} AND ingest_partition = {partition:Int32} "
            "AND ingest_offset >= {start:Int64})"
        )
        rows = self._ch.rows(
            query,
            parameters={
                "lo": max(0, to_millis(min(times)) - self._window_ms),
                "hi": to_millis(max(times)) + self._window_ms,
                "namespaces": namespaces,
                "topic": range_id.topic,
                "partition": range_id.partition,
                "start": range_id.range.start,
            },
            settings={
                "use_skip_indexes": 0,  # the id bloom filter cannot serve CRC32(id)
                "max_query_size": max(_DEFAULT_MAX_QUERY_SIZE, 2 * len(query)),
            },
        )
        found: dict[EventKey, Fingerprint] = {}
        for namespace, source, event_id, event_type, subject, time_ms, data in rows:
            # setdefault: should the table ever hold two copies, compare against one of them consistently
            found.setdefault((namespace, source, event_id), Fingerprint(event_type, subject, int(time_ms), data))
        return found

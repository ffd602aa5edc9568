"""The batch ledger: durable records of batch ranges, kept in a ClickHouse table.

A range is recorded BEFORE its rows are inserted, with the stored_at its rows carry and the digest of
its messages. After a crash or a rebalance, every range recorded at or past the committed offset is
cut again exactly (same boundaries, same stored_at, same token), so a retried insert is dropped by
ClickHouse instead of written twice. Records below the committed offset are never read again; a TTL
clears them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common.clickhouse import ClickHouse, column_type_names
from ingest.sink.batch import OffsetRange
from ingest.sink.rows import RangeId

LEDGER_TABLE = "sink_ledger"
LEDGER_TTL_DAYS = 30
_RECORD_COLUMNS = ["topic", "partition", "start_offset", "end_offset", "digest", "stored_at"]


def ledger_table_ddl(database: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS `{database}`.`{LEDGER_TABLE}`
(
    topic LowCardinality(String) COMMENT 'source log (Kafka topic, or "embedded")',
    partition Int32,
    start_offset Int64 COMMENT 'first offset of the batch, inclusive',
    end_offset Int64 COMMENT 'last offset of the batch, inclusive',
    digest String COMMENT 'digest of the batch messages, part of the insert token',
    stored_at DateTime64(3, 'UTC') COMMENT 'the stored_at every row of the batch carries',
    recorded_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY (topic, partition, start_offset)
TTL toDateTime(recorded_at) + INTERVAL {LEDGER_TTL_DAYS} DAY
"""


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    range_id: RangeId
    digest: str
    stored_at_ms: int

    def row(self) -> tuple[str, int, int, int, str, int]:
        r = self.range_id
        return (r.topic, r.partition, r.range.start, r.range.end, self.digest, self.stored_at_ms)

    @property
    def token(self) -> str:
        return self.range_id.token(self.digest)


class ClickHouseLedger:
    """Ledger records in the `sink_ledger` table (blocking calls: run them in a worker thread)."""

    def __init__(self, ch: ClickHouse) -> None:
        self._ch = ch
        self._table = ch.table(LEDGER_TABLE)
        self._types: list[str] | None = None

    def record_many(self, recs: Sequence[LedgerRecord]) -> None:
        """Record ranges in one insert (one part): all of them are durable when this returns."""
        if self._types is None:  # read once: a DESCRIBE per record would double its engine calls
            self._types = column_type_names(self._ch, self._table, _RECORD_COLUMNS)
        column_types = self._types
        settings = self._ch.supported({"async_insert": 0, "wait_for_async_insert": 1})
        self._ch.call(
            lambda c: c.insert(
                self._table,
                [rec.row() for rec in recs],
                column_names=_RECORD_COLUMNS,
                column_type_names=column_types,
                settings=settings,
            )
        )

    def recorded_from(self, topic: str, partition: int, offset: int) -> list[LedgerRecord]:
        """Records of ranges starting at or past `offset`, first recording of a start offset wins."""
        rows = self._ch.rows(
            f"SELECT start_offset, end_offset, digest, toUnixTimestamp64Milli(stored_at) FROM {self._table} "
            "WHERE topic = {topic:String} AND partition = {partition:Int32} AND start_offset >= {offset:Int64} "
            "ORDER BY start_offset, recorded_at LIMIT 1 BY start_offset",
            parameters={"topic": topic, "partition": partition, "offset": offset},
        )
        records: list[LedgerRecord] = []
        last_end = -1
        for start, end, digest, stored_at in rows:
            if int(start) <= last_end:
                continue  # overlapping records cannot come from one ledger; keep the earliest cut
            records.append(
                LedgerRecord(RangeId(topic, partition, OffsetRange(int(start), int(end))), digest, stored_at)
            )
            last_end = int(end)
        return records

    def next_offset(self, topic: str, partition: int) -> int:
        """The offset after the last recorded range (the embedded log continues from there)."""
        rows = self._ch.rows(
            f"SELECT max(end_offset) + 1, count() FROM {self._table} "
            "WHERE topic = {topic:String} AND partition = {partition:Int32}",
            parameters={"topic": topic, "partition": partition},
        )
        value, count = rows[0]
        return int(value) if int(count) else 0

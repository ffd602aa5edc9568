"""The embedded log's write-ahead file format (pure: bytes in, values out).

A file is a sequence of frames `length:u32 | crc32:u32 | payload` (big-endian; crc32 of the payload).
A frame that is short or fails its checksum ends the readable part: it is a torn append (a crash while
writing it), and everything from it on is ignored. Payloads are JSON objects of three kinds:

- a batch, appended (and fsync'd) before its insert: its range, the stored_at its rows carry, the digest
  of its messages and the decoded events, enough to rebuild the identical rows and insert token;
- a done marker, appended after the insert succeeded;
- a checkpoint, the first record of a rotated file: the offset the log continues from.

A batch without a done marker is replayed on start, unchanged; a missing marker costs only an idempotent
replay (ClickHouse drops the retried insert under the same token, the dependent views repair their rollups).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from common.clock import EPOCH, to_millis
from common.cloudevents import CloudEvent
from ingest.sink.batch import OffsetRange
from ingest.sink.decode import Decoded
from ingest.sink.dedupe import Item
from ingest.sink.rows import RangeId

_HEADER = struct.Struct(">II")
HEADER_SIZE = _HEADER.size


class WalCorrupt(ValueError):
    """A checksummed record that does not describe a batch (a bug or a foreign file, not a torn write)."""


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def unframe(buf: bytes) -> tuple[list[bytes], int]:
    """The intact payloads in order, and the length of the intact prefix (a torn tail starts there)."""
    payloads: list[bytes] = []
    pos = 0
    view = memoryview(buf)
    while pos + HEADER_SIZE <= len(buf):
        length, crc = _HEADER.unpack_from(buf, pos)
        end = pos + HEADER_SIZE + length
        if end > len(buf):
            break
        payload = bytes(view[pos + HEADER_SIZE : end])
        if zlib.crc32(payload) != crc:
            break
        payloads.append(payload)
        pos = end
    return payloads, pos


@dataclass(frozen=True, slots=True)
class WalBatch:
    """A batch as written ahead: its range, digest, stored_at and items (offsets range.start...)."""

    range_id: RangeId
    digest: str
    stored_at_ms: int
    items: Sequence[Item]


@dataclass(frozen=True, slots=True)
class WalDone:
    topic: str
    partition: int
    start: int


@dataclass(frozen=True, slots=True)
class WalCheckpoint:
    next_offset: int


WalRecord = WalBatch | WalDone | WalCheckpoint


def encode_batch(batch: WalBatch) -> bytes:
    r = batch.range_id
    rows = [
        [d.namespace, e.id, e.source, e.type, e.subject, to_millis(e.time), e.data, to_millis(d.ingested_at)]
        for d, e in ((item.decoded, item.decoded.event) for item in batch.items)
    ]
    first = batch.items[0].offset if batch.items else r.range.start
    if first != r.range.start or len(rows) != r.range.end - r.range.start + 1:
        raise ValueError("a written-ahead batch covers its whole range, one item per offset")
    return frame(
        orjson.dumps(
            {
                "k": "batch",
                "topic": r.topic,
                "partition": r.partition,
                "start": r.range.start,
                "end": r.range.end,
                "digest": batch.digest,
                "stored_at": batch.stored_at_ms,
                "rows": rows,
            }
        )
    )


def encode_done(range_id: RangeId) -> bytes:
    return frame(
        orjson.dumps(
            {"k": "done", "topic": range_id.topic, "partition": range_id.partition, "start": range_id.range.start}
        )
    )


def encode_checkpoint(next_offset: int) -> bytes:
    return frame(orjson.dumps({"k": "next", "offset": next_offset}))


def _millis(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def decode_record(payload: bytes) -> WalRecord:
    try:
        obj: dict[str, Any] = orjson.loads(payload)
        kind = obj["k"]
        if kind == "next":
            return WalCheckpoint(int(obj["offset"]))
        if kind == "done":
            return WalDone(str(obj["topic"]), int(obj["partition"]), int(obj["start"]))
        if kind == "batch":
            start = int(obj["start"])
            range_id = RangeId(str(obj["topic"]), int(obj["partition"]), OffsetRange(start, int(obj["end"])))
            items = [
                Item(start + i, Decoded(ns, CloudEvent(eid, src, typ, subj, _millis(t), data), _millis(ing)))
                for i, (ns, eid, src, typ, subj, t, data, ing) in enumerate(obj["rows"])
            ]
            return WalBatch(range_id, str(obj["digest"]), int(obj["stored_at"]), items)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise WalCorrupt(f"unreadable write-ahead record: {exc}") from exc
    raise WalCorrupt(f"unknown write-ahead record kind {kind!r}")


@dataclass(frozen=True, slots=True)
class WalState:
    """What a file says: batches without a done marker (in file order) and where offsets continue."""

    pending: list[WalBatch]
    next_offset: int


def wal_state(records: Sequence[WalRecord]) -> WalState:
    pending: dict[tuple[str, int, int], WalBatch] = {}
    next_offset = 0
    for rec in records:
        if isinstance(rec, WalCheckpoint):
            next_offset = max(next_offset, rec.next_offset)
        elif isinstance(rec, WalBatch):
            r = rec.range_id
            pending.setdefault((r.topic, r.partition, r.range.start), rec)  # the first write of a range wins
            next_offset = max(next_offset, r.range.end + 1)
        else:
            pending.pop((rec.topic, rec.partition, rec.start), None)
    return WalState(list(pending.values()), next_offset)

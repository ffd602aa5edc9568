"""What the writer needs of a batch, computed ahead of it in one pass (pure: numpy and zlib, no I/O).

The worker spends about one core on Python per event, so this is one loop over a batch's items instead of four
(measured per 10k events, best of 5: key hashes 9.5-13.5 ms, payload hashes 15.5-25 ms, insert columns 15-26
ms, notification groups 13-20 ms apart; together ~46 ms, plus 6-11 ms to encode the kept rows), done before
the batch is queued, off the writer thread, which records, checks keys, inserts and commits one batch after
the other:

- the key hashes and payload hashes of the key check (keyindex.KeyHasher / PayloadHasher: the same values);
- the insert columns of every item (rows.build_columns' values, DateTime64 columns as `rows.seconds`);
- the (namespace, subject, type) groups of the ingest notifications (common.ingest_notifications).

The writer then picks the kept items' values by index (C-level), and the set and the insert get them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any, NamedTuple
from zlib import crc32

import numpy as np
import numpy.typing as npt
import orjson

from common.clock import to_millis
from common.cloudevents import NATIVE
from common.ingest_notifications import EventGroup
from ingest.sink.dedupe import Item
from ingest.sink.keyindex import Hashes
from ingest.sink.rows import RangeId, seconds

if NATIVE:
    from common import _cevents


class Prepared(NamedTuple):
    """A batch's precomputed values, in item order."""

    key_hashes: Hashes
    payload_hashes: Hashes
    offsets: npt.NDArray[np.int64]
    # build_columns' per-item columns: namespace, id, source, type, subject, time (s), data, ingested_at (s)
    columns: tuple[list[Any], ...]
    groups: list[EventGroup]

    def kept_at(self, kept: Sequence[Item]) -> npt.NDArray[np.intp]:
        """The positions of `kept` (a subsequence of the batch's items, offsets increasing) in the batch."""
        wanted = np.fromiter((item.offset for item in kept), dtype=np.int64, count=len(kept))
        return np.searchsorted(self.offsets, wanted)

    def encode(self, range_id: RangeId, at: npt.NDArray[np.intp] | None, stored_at_ms: int) -> bytes:
        """The rows of the items at `at` (None: all of them) as one JSONCompactColumns block, `[[col 1 values],
        [col 2 values], ...]`, in build_columns' order and values.

        orjson writes it in C and the engine parses it in C++ without the GIL, where the driver's Native
        encoder loops over every value in Python. A DateTime64 column goes as seconds with the milliseconds as
        the fraction (ClickHouse reads an integer as whole seconds): `ms / 1000` is the double nearest the
        exact value, and orjson prints the shortest text that reads back as that double, which for 13
        significant digits (any millisecond before 2286) is the exact decimal: no instant moves."""
        if at is None:
            picked: list[Any] = list(self.columns)
            offsets: list[int] = self.offsets.tolist()
        else:
            positions = at.tolist()
            if len(positions) == 1:
                (p,) = positions
                picked = [[column[p]] for column in self.columns]
            else:
                pick = itemgetter(*positions)
                picked = [pick(column) for column in self.columns]  # tuples: orjson writes arrays
            offsets = self.offsets[at].tolist()
        n = len(offsets)
        return orjson.dumps(
            [*picked, [stored_at_ms / 1000] * n, [range_id.topic] * n, [range_id.partition] * n, offsets]
        )


class Preparer:
    """Prepares batches; memoises what a stream repeats (key suffixes, payload prefixes, ingested_at)."""

    MEMO_LIMIT = 65_536

    def __init__(self) -> None:
        self._suffixes: dict[tuple[str, str], bytes] = {}
        self._prefixes: dict[tuple[str, str], int] = {}

    def prepare(self, items: Sequence[Item]) -> Prepared:
        """The batch's values: compiled (common/_cevents.c `prepare_items`) when the extension is built, else
        `_prepare`; the two agree on every batch (tests/unit/test_native_events.py)."""
        if not NATIVE or type(items) is not list:
            return self._prepare(items)
        keys, payloads, offsets, columns, spans = _cevents.prepare_items(items)
        return Prepared(
            np.frombuffer(keys, dtype=np.uint64),
            np.frombuffer(payloads, dtype=np.uint64),
            np.frombuffer(offsets, dtype=np.int64),
            columns,
            [EventGroup(*key, lo, hi) for key, (lo, hi) in sorted(spans.items())],
        )

    def _prepare(self, items: Sequence[Item]) -> Prepared:
        """The reference of `prepare`, in Python."""
        suffixes, prefixes = self._suffixes, self._prefixes
        if len(suffixes) >= self.MEMO_LIMIT:
            suffixes.clear()
        if len(prefixes) >= self.MEMO_LIMIT:
            prefixes.clear()
        n = len(items)
        key_hashes: list[int] = []
        payload_hashes: list[int] = []
        namespaces: list[str] = []
        ids: list[str] = []
        sources: list[str] = []
        types: list[str] = []
        subjects: list[str] = []
        times: list[float] = []
        datas: list[str] = []
        ingested: list[float] = []
        offsets = np.empty(n, dtype=np.int64)
        ingested_memo: dict[datetime, float] = {}
        spans: dict[tuple[str, str, str], list[datetime]] = {}
        for i, (offset, (namespace, event, ingested_at)) in enumerate(items):
            event_id, source, event_type, subject, time, data = event
            offsets[i] = offset
            # the key hash (keyindex.KeyHasher)
            suffix = suffixes.get((namespace, source))
            if suffix is None:
                suffix = suffixes[(namespace, source)] = f"\0{namespace}\0{source}".encode()
            high = crc32(event_id.encode())
            key_hashes.append((high << 32) | crc32(suffix, high))
            # the payload hash (keyindex.PayloadHasher)
            prefix = prefixes.get((event_type, subject))
            if prefix is None:
                prefix = prefixes[(event_type, subject)] = crc32(f"{event_type}\0{subject}\0".encode())
            time_s = time.timestamp()
            payload_hashes.append((crc32(data.encode()) << 32) | crc32(str(round(time_s * 1000)).encode(), prefix))
            # the insert columns (rows.build_columns; times as rows.seconds, inlined)
            namespaces.append(namespace)
            ids.append(event_id)
            sources.append(source)
            types.append(event_type)
            subjects.append(subject)
            times.append(time_s if not time.microsecond % 1000 else to_millis(time) / 1000)
            datas.append(data)
            at = ingested_memo.get(ingested_at)
            if at is None:
                at = ingested_memo[ingested_at] = seconds(ingested_at)
            ingested.append(at)
            # the notification groups (common.ingest_notifications.group_events)
            span = spans.get((namespace, subject, event_type))
            if span is None:
                spans[(namespace, subject, event_type)] = [time, time]
            elif time < span[0]:
                span[0] = time
            elif time > span[1]:
                span[1] = time
        groups = [EventGroup(*key, lo, hi) for key, (lo, hi) in sorted(spans.items())]
        return Prepared(
            np.array(key_hashes, dtype=np.uint64),
            np.array(payload_hashes, dtype=np.uint64),
            offsets,
            (namespaces, ids, sources, types, subjects, times, datas, ingested),
            groups,
        )

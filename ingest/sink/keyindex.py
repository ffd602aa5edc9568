"""An in-memory map of stored event keys to their payloads, as 64-bit hashes (pure: numpy, no I/O).

The key check asks ClickHouse only about the keys of a batch that this map may hold: most keys of a
batch are new, and proving a key absent from ClickHouse means reading every id stored within the
dedupe window (a scan that grows with the table). A miss is final, so the map must hold every key
stored in the time it covers (see keycheck.py for how it is filled). A hit whose payload hash equals
the stored one is a copy of a stored event; any other hit is only a candidate, checked exactly.

The hash of (namespace, source, id) is two CRC32s, computed the same way by Python (zlib) and by
ClickHouse (CRC32 is IEEE 802.3 in both), so the map loads from the table without reading an id:
the high 32 bits are CRC32(id), the low 32 bits CRC32(id NUL namespace NUL source). The payload hash
(what dedupe.Fingerprint compares) is CRC32(data) and CRC32(type NUL subject NUL time in ms).

Memory: 16 bytes per key, in sorted runs merged as they grow (like a log-structured merge tree): a
lookup is one binary search per run, and there are O(log n) runs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING
from zlib import crc32

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from ingest.sink.dedupe import Item

Hashes = npt.NDArray[np.uint64]

# The same hash in ClickHouse SQL, over the events table's columns.
KEY_HASH_SQL = (
    "bitOr(bitShiftLeft(toUInt64(CRC32(id)), 32), toUInt64(CRC32(concat(id, '\\0', namespace, '\\0', source))))"
)


class KeyHasher:
    """key_hash over a batch, with the (namespace, source) suffix memoised: a stream has few of them."""

    MEMO_LIMIT = 4096

    def __init__(self) -> None:
        self._suffixes: dict[tuple[str, str], bytes] = {}

    def of_items(self, items: Sequence[Item]) -> Hashes:
        """The hashes of a batch's keys, in order (key_hash inlined: it runs per event)."""
        suffixes = self._suffixes
        out: list[int] = []
        append = out.append
        for item in items:
            decoded = item.decoded
            event = decoded.event
            pair = (decoded.namespace, event.source)
            suffix = suffixes.get(pair)
            if suffix is None:
                if len(suffixes) >= self.MEMO_LIMIT:
                    suffixes.clear()
                suffix = suffixes[pair] = f"\0{decoded.namespace}\0{event.source}".encode()
            high = crc32(event.id.encode())
            append((high << 32) | crc32(suffix, high))
        return np.array(out, dtype=np.uint64)


# The payload hash in ClickHouse SQL: what must match for two copies to be the same event (dedupe.py's
# Fingerprint: type, subject, time in ms, data), as CRC32(data) and CRC32(type NUL subject NUL ms).
PAYLOAD_HASH_SQL = (
    "bitOr(bitShiftLeft(toUInt64(CRC32(data)), 32), "
    "toUInt64(CRC32(concat(type, '\\0', subject, '\\0', toString(toUnixTimestamp64Milli(time))))))"
)


def payload_hash(event_type: str, subject: str, time_ms: int, data: str) -> int:
    """The 64-bit hash of an event's payload (the reference form of PAYLOAD_HASH_SQL)."""
    return (crc32(data.encode()) << 32) | crc32(f"{event_type}\0{subject}\0{time_ms}".encode())


class PayloadHasher:
    """payload_hash over a batch, with CRC32(type NUL subject NUL) memoised per (type, subject): the CRC of
    the time continues from it (crc32(b, crc32(a)) is crc32(a + b))."""

    MEMO_LIMIT = 65_536

    def __init__(self) -> None:
        self._prefixes: dict[tuple[str, str], int] = {}

    def of_items(self, items: Sequence[Item]) -> Hashes:
        """The payload hashes of a batch's events, in order (payload_hash inlined: it runs per event)."""
        prefixes = self._prefixes
        out: list[int] = []
        append = out.append
        for item in items:
            event = item.decoded.event
            pair = (event.type, event.subject)
            prefix = prefixes.get(pair)
            if prefix is None:
                if len(prefixes) >= self.MEMO_LIMIT:
                    prefixes.clear()
                prefix = prefixes[pair] = crc32(f"{event.type}\0{event.subject}\0".encode())
            # round(seconds * 1000) is the exact millisecond of a time on a millisecond (validated events
            # are); any other time may differ from the stored value by one: a mismatch only costs a lookup.
            time_ms = round(event.time.timestamp() * 1000)
            append((crc32(event.data.encode()) << 32) | crc32(str(time_ms).encode(), prefix))
        return np.array(out, dtype=np.uint64)


def key_hash(namespace: str, source: str, event_id: str) -> int:
    """The 64-bit hash of an event key (the reference form of KeyHasher.of_items and KEY_HASH_SQL)."""
    raw = event_id.encode()
    return (crc32(raw) << 32) | crc32(raw + f"\0{namespace}\0{source}".encode())


def as_hashes(values: Iterable[int]) -> Hashes:
    return np.fromiter(values, dtype=np.uint64)


class KeyHashSet:
    """A growing map of 64-bit key hashes to 64-bit payload hashes: add in batches, ask for many at once."""

    def __init__(self) -> None:
        # (keys, payloads) runs, each sorted by key; sizes decrease along the list
        self._runs: list[tuple[Hashes, Hashes]] = []

    def __len__(self) -> int:
        """Keys held, counting a key added twice twice (duplicates cost memory, not answers)."""
        return sum(len(keys) for keys, _ in self._runs)

    @property
    def runs(self) -> int:
        return len(self._runs)

    def add(self, keys: Hashes, payloads: Hashes) -> None:
        if len(keys) != len(payloads):
            raise ValueError("one payload hash per key hash")
        if not len(keys):
            return
        order = np.argsort(keys, kind="stable")
        run = (keys[order].astype(np.uint64, copy=False), payloads[order].astype(np.uint64, copy=False))
        # Merge while the last run is not much larger than the new one: each hash is merged O(log n)
        # times over its life, and the runs stay few.
        while self._runs and len(self._runs[-1][0]) <= 2 * len(run[0]):
            last = self._runs.pop()
            merged_keys = np.concatenate((last[0], run[0]))
            order = np.argsort(merged_keys, kind="stable")  # two sorted runs: a linear merge
            run = (merged_keys[order], np.concatenate((last[1], run[1]))[order])
        self._runs.append(run)

    def find(self, keys: Hashes) -> tuple[npt.NDArray[np.bool_], Hashes]:
        """For each key asked: whether the map holds it, and a payload hash stored with it (0 if not)."""
        # Searching the asked keys in sorted order walks each run forward (cache-friendly: 2.5x faster
        # for 10k keys against 300k), then the answers go back to the order asked.
        order = np.argsort(keys)
        asked = keys[order]
        hit = np.zeros(len(keys), dtype=np.bool_)
        payload = np.zeros(len(keys), dtype=np.uint64)
        for run_keys, run_payloads in self._runs:
            at = np.searchsorted(run_keys, asked)
            at[at == len(run_keys)] = 0  # past the end: compare against any element (it cannot be equal)
            found = (run_keys[at] == asked) & ~hit
            payload[found] = run_payloads[at[found]]
            hit |= found
        answer_hit = np.empty_like(hit)
        answer_hit[order] = hit
        answer_payload = np.empty_like(payload)
        answer_payload[order] = payload
        return answer_hit, answer_payload

    def contains(self, keys: Hashes) -> npt.NDArray[np.bool_]:
        return self.find(keys)[0]

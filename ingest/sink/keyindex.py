"""An in-memory set of stored event keys, as 64-bit hashes (pure: numpy, no I/O).

The key check asks ClickHouse only about the keys of a batch that this set may hold: most keys of a
batch are new, and proving a key absent from ClickHouse means reading every id stored within the
dedupe window (a scan that grows with the table). A hash says "maybe stored", never "stored": a hit
is only a candidate, checked exactly against the table; a miss is final, so the set must hold every
key stored in the time it covers (see keycheck.py for how it is filled).

The hash of (namespace, source, id) is two CRC32s, computed the same way by Python (zlib) and by
ClickHouse (CRC32 is IEEE 802.3 in both), so the set loads from the table without reading an id:
the high 32 bits are CRC32(id), the low 32 bits CRC32(id NUL namespace NUL source).

Memory: 8 bytes per key, in sorted runs merged as they grow (like a log-structured merge tree): a
lookup is one binary search per run, and there are O(log n) runs.
"""

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
    "bitOr(bitShiftLeft(toUInt64(CRC32(id)), 32), "
    "toUInt64(CRC32(concat(id, '\\0', namespace, '\\0', source))))"
)


class KeyHasher:
    """key_hash with the (namespace, source) suffix memoised: a stream has few of them."""

    MEMO_LIMIT = 4096

    def __init__(self) -> None:
        self._suffixes: dict[tuple[str, str], bytes] = {}

    def __call__(self, namespace: str, source: str, event_id: str) -> int:
        suffix = self._suffixes.get((namespace, source))
        if suffix is None:
            if len(self._suffixes) >= self.MEMO_LIMIT:
                self._suffixes.clear()
            suffix = self._suffixes[(namespace, source)] = f"\0{namespace}\0{source}".encode()
        high = crc32(event_id.encode())
        return (high << 32) | crc32(suffix, high)

    def of_items(self, items: Sequence[Item]) -> Hashes:
        """The hashes of a batch's keys, in order (the loop of __call__ inlined: it runs per event)."""
        suffixes = self._suffixes
        out: list[int] = []
        append = out.append
        for item in items:
            decoded = item.decoded
            event = decoded.event
            pair = (decoded.namespace, event.source)
            suffix = suffixes.get(pair)
            if suffix is None:
                self(decoded.namespace, event.source, event.id)  # fills the memo
                suffix = suffixes[pair]
            high = crc32(event.id.encode())
            append((high << 32) | crc32(suffix, high))
        return np.array(out, dtype=np.uint64)


def key_hash(namespace: str, source: str, event_id: str) -> int:
    """The 64-bit hash of an event key (the reference form of KeyHasher and KEY_HASH_SQL)."""
    raw = event_id.encode()
    return (crc32(raw) << 32) | crc32(raw + f"\0{namespace}\0{source}".encode())


def as_hashes(values: Iterable[int]) -> Hashes:
    return np.fromiter(values, dtype=np.uint64)


class KeyHashSet:
    """A growing set of 64-bit key hashes: add in batches, ask for many at once."""

    def __init__(self) -> None:
        self._runs: list[Hashes] = []  # each sorted; sizes decrease along the list

    def __len__(self) -> int:
        """Hashes held, counting a hash added twice twice (duplicates cost memory, not answers)."""
        return sum(len(run) for run in self._runs)

    @property
    def runs(self) -> int:
        return len(self._runs)

    def clear(self) -> None:
        self._runs = []

    def add(self, hashes: Hashes) -> None:
        if not len(hashes):
            return
        run = np.sort(hashes.astype(np.uint64, copy=False))
        # Merge while the last run is not much larger than the new one: each hash is merged O(log n)
        # times over its life, and the runs stay few.
        while self._runs and len(self._runs[-1]) <= 2 * len(run):
            run = np.sort(np.concatenate((self._runs.pop(), run)), kind="stable")
        self._runs.append(run)

    def contains(self, hashes: Hashes) -> npt.NDArray[np.bool_]:
        """For each hash asked, whether the set holds it."""
        # Searching the asked hashes in sorted order walks each run forward (cache-friendly: 2.5x faster
        # for 10k hashes against 300k), then the answers go back to the order asked.
        order = np.argsort(hashes)
        asked = hashes[order]
        hit = np.zeros(len(hashes), dtype=np.bool_)
        for run in self._runs:
            at = np.searchsorted(run, asked)
            at[at == len(run)] = 0  # past the end: compare against any element (it cannot be equal)
            hit |= run[at] == asked
        answer = np.empty_like(hit)
        answer[order] = hit
        return answer

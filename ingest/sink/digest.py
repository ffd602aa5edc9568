"""The digest of a batch's messages (pure): what names one immutable set of rows in the ledger, the
write-ahead files and the insert token (ingest/sink/rows.py `RangeId.token`)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def message_digest(offsets: Sequence[int], timestamps: Sequence[int], values: Sequence[bytes | None]) -> str:
    """Digest of (offset, timestamp, value) of a batch's messages, in order: blake2b-96 over the
    (offset, timestamp, value length or -1) triples as int64, then the values. Ledger records and
    write-ahead entries keep it, so these bytes must never change (a replay would get another token)."""
    return digest_of(digest_numbers(offsets, timestamps, values), values)


def digest_numbers(offsets: Sequence[int], timestamps: Sequence[int], values: Sequence[bytes | None]) -> bytes:
    """The (offset, timestamp, value length or -1) triples of `message_digest` as native int64 bytes.

    Interleaves the three columns with numpy rather than one array.extend per message (10k messages: 12 ->
    ~4 ms); the compiled decoder writes the same bytes as it reads the records (common/_cevents.c)."""
    numbers = np.empty((len(offsets), 3), dtype=np.int64)  # native order, as array("q") had
    numbers[:, 0] = offsets
    numbers[:, 1] = timestamps
    numbers[:, 2] = [-1 if value is None else len(value) for value in values]
    return numbers.tobytes()


def digest_of(numbers: bytes, values: Sequence[bytes | None]) -> str:
    """`message_digest` from its triples (`digest_numbers`) and the values."""
    h = hashlib.blake2b(numbers, digest_size=12)
    h.update(b"".join([value for value in values if value]))
    return h.hexdigest()

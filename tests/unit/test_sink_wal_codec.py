"""The write-ahead file format: frames survive a round trip, a torn or corrupt tail ends the readable part."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.cloudevents import CloudEvent
from ingest.sink.batch import OffsetRange
from ingest.sink.decode import Decoded
from ingest.sink.dedupe import Item
from ingest.sink.embedded import items_digest
from ingest.sink.rows import RangeId, build_columns
from ingest.sink.wal_codec import (
    HEADER_SIZE,
    WalBatch,
    WalCheckpoint,
    WalCorrupt,
    WalDone,
    decode_record,
    encode_batch,
    encode_checkpoint,
    encode_done,
    frame,
    unframe,
    wal_state,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
payloads = st.lists(st.binary(max_size=64), max_size=8)


@given(payloads)
def test_frames_round_trip(parts: list[bytes]) -> None:
    buf = b"".join(frame(p) for p in parts)
    assert unframe(buf) == (parts, len(buf))


@given(payloads, st.data())
def test_a_torn_tail_leaves_the_intact_prefix(parts: list[bytes], data: st.DataObject) -> None:
    buf = b"".join(frame(p) for p in parts)
    cut = data.draw(st.integers(0, len(buf)))
    got, intact = unframe(buf[:cut])
    assert got == parts[: len(got)]
    assert intact == sum(HEADER_SIZE + len(p) for p in got) <= cut
    if cut < len(buf):
        assert len(got) < len(parts)  # the cut frame is never returned


@given(st.lists(st.binary(min_size=1, max_size=32), min_size=1, max_size=5), st.data())
def test_a_corrupt_byte_ends_the_readable_part_at_its_frame(parts: list[bytes], data: st.DataObject) -> None:
    frames = [frame(p) for p in parts]
    victim = data.draw(st.integers(0, len(frames) - 1))
    raw = bytearray(frames[victim])
    pos = data.draw(st.integers(HEADER_SIZE, len(raw) - 1))  # flip a payload byte: the crc catches it
    raw[pos] ^= 0xFF
    buf = b"".join(frames[:victim]) + bytes(raw) + b"".join(frames[victim + 1 :])
    assert unframe(buf) == (parts[:victim], sum(len(f) for f in frames[:victim]))


def batch_at(start: int, n: int) -> WalBatch:
    items = [
        Item(
            start + i,
            Decoded(
                "acme",
                CloudEvent(f"evt-{i}", "svc", "llm", "c-1", T0 + timedelta(milliseconds=i), f'{{"tokens":{i}}}'),
                T0 + timedelta(microseconds=1500 + i),  # sub-millisecond parts are cut like the rows cut them
            ),
        )
        for i in range(n)
    ]
    range_id = RangeId("embedded", 0, OffsetRange(start, start + n - 1))
    return WalBatch(range_id, items_digest(items), 1_700_000_000_123, items)


def test_a_batch_decodes_to_the_same_rows_and_digest() -> None:
    batch = batch_at(40, 5)
    (payload,), _ = unframe(encode_batch(batch))
    back = decode_record(payload)
    assert isinstance(back, WalBatch)
    assert (back.range_id, back.digest, back.stored_at_ms) == (batch.range_id, batch.digest, batch.stored_at_ms)
    assert items_digest(back.items) == batch.digest
    assert build_columns(back.range_id, back.items, back.stored_at_ms) == build_columns(
        batch.range_id, batch.items, batch.stored_at_ms
    )


def test_a_batch_must_cover_its_range() -> None:
    batch = batch_at(0, 3)
    with pytest.raises(ValueError, match="whole range"):
        encode_batch(WalBatch(batch.range_id, batch.digest, 0, batch.items[:2]))


def test_pending_are_batches_without_a_done_marker_and_offsets_continue() -> None:
    a, b, c = batch_at(0, 3), batch_at(3, 2), batch_at(5, 4)
    buf = encode_checkpoint(0) + encode_batch(a) + encode_done(a.range_id) + encode_batch(b) + encode_batch(c)
    buf += encode_done(c.range_id)
    state = wal_state([decode_record(p) for p in unframe(buf)[0]])
    assert [p.range_id for p in state.pending] == [b.range_id]
    assert state.next_offset == 9
    assert wal_state([WalCheckpoint(120), WalDone("embedded", 0, 5)]).next_offset == 120
    assert wal_state([]).next_offset == 0


def test_an_intact_record_that_is_not_a_record_is_an_error() -> None:
    with pytest.raises(WalCorrupt):
        decode_record(b'{"k":"batch","start":1}')
    with pytest.raises(WalCorrupt):
        decode_record(b"not json")


def _digest_as_defined(items: list[Item]) -> str:
    """The digest as its docstring defines it (write-ahead entries on disk carry it: it must never change)."""
    import hashlib

    import orjson

    from common.clock import to_millis

    h = hashlib.blake2b(digest_size=12)
    for item in items:
        d, e = item.decoded, item.decoded.event
        row = [item.offset, d.namespace, e.id, e.source, e.type, e.subject, to_millis(e.time), e.data]
        h.update(orjson.dumps([*row, to_millis(d.ingested_at)]))
    return h.hexdigest()


@given(
    st.lists(
        st.tuples(
            st.text(max_size=8),
            st.integers(0, 10**12),
            st.integers(0, 3),  # which of a few ingested_at instants: shared objects, equal copies, distinct
        ),
        max_size=12,
    )
)
def test_items_digest_is_its_definition(rows: list[tuple[str, int, int]]) -> None:
    ingested = [T0, T0 + timedelta(milliseconds=1), T0 + timedelta(microseconds=1500)]
    items = []
    for i, (text, ms, which) in enumerate(rows):
        at = ingested[which] if which < 3 else T0.replace()  # an equal datetime that is another object
        event = CloudEvent(f"id-{text}", "src", "t", text or "s", T0 + timedelta(milliseconds=ms), '{"v":1}')
        items.append(Item(100 + i, Decoded("ns", event, at)))
    assert items_digest(items) == _digest_as_defined(items)


def test_items_digest_bytes_are_pinned() -> None:
    """The digest of one fixed batch, as written by every earlier version (a change here breaks recovery of a
    write-ahead file written before it)."""
    event = CloudEvent("e1", "s", "t", "x", T0, '{"a":1}')
    items = [Item(0, Decoded("ns", event, T0)), Item(1, Decoded("ns", event._replace(id="e2"), T0))]
    assert items_digest(items) == "8fa3b6bfd89cb6d4e2e5f3fa"

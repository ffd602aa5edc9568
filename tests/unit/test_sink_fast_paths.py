"""The writer's fast paths give exactly the answers of the plain definitions they replace."""

from __future__ import annotations

import hashlib
from array import array
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from common.cloudevents import CloudEvent
from common.ingest_notifications import group_events
from ingest.sink.batch import OffsetRange
from ingest.sink.decode import Decoded
from ingest.sink.dedupe import Fingerprint, Item, fingerprint, resolve, resolve_hashed
from ingest.sink.digest import message_digest
from ingest.sink.keyindex import KeyHasher, PayloadHasher, as_hashes, key_hash
from ingest.sink.prepare import Preparer
from ingest.sink.rows import RangeId, build_columns

T = datetime(2026, 3, 1, tzinfo=UTC)

copies = st.tuples(
    st.sampled_from(["ns", "other"]),  # namespace
    st.sampled_from(["a", "b", "c", "d", "e"]),  # id
    st.sampled_from(['{"n":1}', '{"n":2}']),  # data: equal or conflicting copies
)


def encode_columns(columns: list[list[Any]]) -> bytes:
    """The plain definition the insert block (prepare.Prepared.encode) must match: build_columns' columns as
    JSONCompactColumns, the DateTime64 columns (time, ingested_at, stored_at) as decimal seconds."""
    block = list(columns)
    for i in (5, 7, 8):
        block[i] = [ms / 1000 for ms in columns[i]]
    return orjson.dumps(block)


def make_items(specs: list[tuple[str, str, str]]) -> list[Item]:
    return [
        Item(i, Decoded(ns, CloudEvent(id=event_id, source="src", type="t", subject="s", time=T, data=data), T))
        for i, (ns, event_id, data) in enumerate(specs)
    ]


@given(st.lists(copies, max_size=30), st.lists(copies, max_size=4), st.sampled_from([0, 1, 3, 2**64]))
def test_resolve_hashed_is_resolve(
    specs: list[tuple[str, str, str]], stored_specs: list[tuple[str, str, str]], modulus: int
) -> None:
    """Whatever the hash (modulus 1 makes every key collide), the answer is resolve's."""
    items = make_items(specs)
    stored: dict[tuple[str, str, str], Fingerprint] = {}
    for item in make_items(stored_specs):
        stored.setdefault((item.decoded.namespace, "src", item.decoded.event.id), fingerprint(item.decoded.event))

    def h(key: tuple[str, str, str]) -> int:
        return key_hash(*key) % modulus if modulus else 7

    hashes = as_hashes(h((i.decoded.namespace, i.decoded.event.source, i.decoded.event.id)) for i in items)
    fast = resolve_hashed(items, hashes, stored, as_hashes(h(key) for key in stored))
    plain = resolve(items, stored)
    assert [i.offset for i in fast.keep] == [i.offset for i in plain.keep]
    assert fast.duplicates == plain.duplicates
    assert fast.conflicts == plain.conflicts


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=7_258_118_399_999),  # event time, ms (before 2200)
            st.integers(min_value=0, max_value=7_258_118_399_999_999),  # ingested_at, us (any precision)
            st.text(max_size=8),
        ),
        max_size=20,
    )
)
def test_the_insert_block_is_encode_columns_of_build_columns(rows: list[tuple[int, int, str]]) -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    items = [
        Item(
            100 + i,
            Decoded(
                "ns",
                CloudEvent(
                    id=f"e{i}",
                    source=text,
                    type="t",
                    subject=text,
                    time=epoch + timedelta(milliseconds=ms),
                    data='{"k":"' + text.encode("unicode_escape").decode().replace('"', "") + '"}',
                ),
                epoch + timedelta(microseconds=us),
            ),
        )
        for i, (ms, us, text) in enumerate(rows)
    ]
    rid = RangeId("topic", 2, OffsetRange(100, 100 + max(len(items) - 1, 0)))
    block = Preparer().prepare(items).encode(rid, None, 1_767_225_600_123)
    assert block == encode_columns(build_columns(rid, items, 1_767_225_600_123))


@given(
    st.lists(
        st.tuples(st.sampled_from(["ns", "n2"]), st.text(max_size=5), st.text(min_size=1, max_size=9)), max_size=20
    )
)
def test_hashing_a_batch_is_hashing_each_key(keys: list[tuple[str, str, str]]) -> None:
    items = [
        Item(i, Decoded(ns, CloudEvent(id=event_id, source=source, type="t", subject="s", time=T, data="null"), T))
        for i, (ns, source, event_id) in enumerate(keys)
    ]
    assert KeyHasher().of_items(items).tolist() == [key_hash(*key) for key in keys]


def reference_digest(parts: list[tuple[int, int, bytes | None]]) -> str:
    """message_digest as first written (ledger records and write-ahead entries hold its values)."""
    numbers = array("q")
    values: list[bytes] = []
    for offset, timestamp, value in parts:
        numbers.extend((offset, timestamp, -1 if value is None else len(value)))
        if value:
            values.append(value)
    h = hashlib.blake2b(numbers.tobytes(), digest_size=12)
    h.update(b"".join(values))
    return h.hexdigest()


def columns(parts: list[tuple[int, int, bytes | None]]) -> tuple[list[int], list[int], list[bytes | None]]:
    return [p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts]


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=2**62),
            st.integers(min_value=-1, max_value=2**50),
            st.one_of(st.none(), st.binary(max_size=20)),
        ),
        max_size=30,
    )
)
def test_message_digest_never_changes(parts: list[tuple[int, int, bytes | None]]) -> None:
    assert message_digest(*columns(parts)) == reference_digest(parts)


def test_message_digest_known_value() -> None:
    """Pinned: a digest computed by an earlier version must still match after any rewrite."""
    assert message_digest([10, 12], [1, 2], [b"x", None]) == "863d50f2cbaea2ac53cf2b3e"
    assert message_digest([], [], []) == hashlib.blake2b(b"", digest_size=12).hexdigest()


prepared_events = st.lists(
    st.tuples(
        st.sampled_from(["ns", "n2"]),
        st.text(max_size=6),  # source, subject (any text, the memo keys)
        st.sampled_from(["t", "u"]),
        st.integers(min_value=0, max_value=7_258_118_399_999),  # event time, ms (before 2200)
        st.integers(min_value=0, max_value=7_258_118_399_999_999),  # ingested_at, us (any precision)
        st.sampled_from(["null", '{"n":1}', '{"k":"\\u00e9"}']),
    ),
    max_size=25,
)


@given(prepared_events, st.data())
def test_a_prepared_batch_gives_the_plain_definitions_answers(
    rows: list[tuple[str, str, str, int, int, str]], data: st.DataObject
) -> None:
    """Key and payload hashes, notification groups and the insert block of any kept subsequence, from the one
    pass (prepare.py), equal those of the separate definitions they replace."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    items = [
        Item(
            7 + 2 * i,  # offsets increase, with gaps
            Decoded(
                ns,
                CloudEvent(f"e{i}", text, event_type, text, epoch + timedelta(milliseconds=ms), payload),
                epoch + timedelta(microseconds=us),
            ),
        )
        for i, (ns, text, event_type, ms, us, payload) in enumerate(rows)
    ]
    prepared = Preparer().prepare(items)
    assert prepared.key_hashes.tolist() == KeyHasher().of_items(items).tolist()
    assert prepared.payload_hashes.tolist() == PayloadHasher().of_items(items).tolist()
    assert prepared.groups == group_events(
        (i.decoded.namespace, i.decoded.event.subject, i.decoded.event.type, i.decoded.event.time) for i in items
    )
    rid = RangeId("topic", 1, OffsetRange(7, 7 + 2 * max(len(items) - 1, 0)))
    block = prepared.encode(rid, None, 1_767_225_600_123)
    assert block == encode_columns(build_columns(rid, items, 1_767_225_600_123))
    flags = data.draw(st.lists(st.booleans(), min_size=len(items), max_size=len(items)))
    kept = [item for item, flag in zip(items, flags, strict=True) if flag]
    if kept:
        at = prepared.kept_at(kept)
        assert prepared.encode(rid, at, 5) == encode_columns(build_columns(rid, kept, 5))

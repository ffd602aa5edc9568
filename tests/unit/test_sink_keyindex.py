"""The in-memory key-hash set: a miss must be final, so it must hold everything added."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from common.cloudevents import CloudEvent
from ingest.sink.decode import Decoded
from ingest.sink.dedupe import Item
from ingest.sink.keyindex import KeyHasher, KeyHashSet, PayloadHasher, as_hashes, key_hash, payload_hash

hashes64 = st.integers(min_value=0, max_value=2**64 - 1)


@given(st.lists(st.lists(hashes64, max_size=40), max_size=30), st.lists(hashes64, max_size=40))
def test_the_set_answers_like_a_python_set(batches: list[list[int]], asked: list[int]) -> None:
    index = KeyHashSet()
    reference: set[int] = set()
    payload_of: dict[int, int] = {}
    for batch in batches:
        index.add(as_hashes(batch), as_hashes([(h * 7 + 1) % 2**64 for h in batch]))
        reference.update(batch)
        for h in batch:
            payload_of.setdefault(h, (h * 7 + 1) % 2**64)
    probe = asked + sorted(reference)[:20]
    hit, payload = index.find(as_hashes(probe))
    assert hit.tolist() == [h in reference for h in probe]
    assert payload.tolist() == [payload_of.get(h, 0) for h in probe]


def test_runs_stay_few_as_the_set_grows() -> None:
    index = KeyHashSet()
    rng = np.random.default_rng(1)
    for _ in range(1000):
        keys = rng.integers(0, 2**63, size=100, dtype=np.uint64)
        index.add(keys, keys)
    assert len(index) == 100_000
    assert index.runs <= 12  # O(log n): 100k hashes in batches of 100


def test_an_empty_set_holds_nothing() -> None:
    assert KeyHashSet().contains(as_hashes([0, 1, 2**64 - 1])).tolist() == [False, False, False]


@given(st.text(max_size=30), st.text(max_size=30), st.text(min_size=1, max_size=60))
def test_the_memoised_hasher_is_the_reference_hash(namespace: str, source: str, event_id: str) -> None:
    item = Item(
        0,
        Decoded(
            namespace,
            CloudEvent(event_id, source, "t", "s", datetime(2026, 1, 1, tzinfo=UTC), "null"),
            datetime(2026, 1, 1, tzinfo=UTC),
        ),
    )
    hasher = KeyHasher()
    expected = key_hash(namespace, source, event_id)
    assert hasher.of_items([item]).tolist() == [expected]
    assert hasher.of_items([item]).tolist() == [expected]  # memo hit
    assert 0 <= expected < 2**64


def test_the_parts_of_a_key_do_not_run_together() -> None:
    assert key_hash("ns", "ab", "c") != key_hash("ns", "a", "bc")
    assert key_hash("ns", "s", "x") != key_hash("ns2", "s", "x")


def test_a_key_added_twice_answers_with_one_of_its_payloads() -> None:
    index = KeyHashSet()
    index.add(as_hashes([5, 9]), as_hashes([50, 90]))
    index.add(as_hashes([5]), as_hashes([51]))
    hit, payload = index.find(as_hashes([5, 9, 7]))
    assert hit.tolist() == [True, True, False]
    assert payload.tolist()[0] in (50, 51)
    assert payload.tolist()[1:] == [90, 0]


@given(
    st.text(max_size=10),
    st.text(max_size=10),
    st.integers(min_value=0, max_value=7_258_118_399_999),
    st.text(max_size=30),
)
def test_the_batch_payload_hash_is_the_reference_hash(event_type: str, subject: str, ms: int, data: str) -> None:
    at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    item = Item(0, Decoded("ns", CloudEvent("id", "src", event_type, subject, at, data), at))
    hasher = PayloadHasher()
    assert hasher.of_items([item, item]).tolist() == [payload_hash(event_type, subject, ms, data)] * 2

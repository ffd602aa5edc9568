"""The in-memory key-hash set: a miss must be final, so it must hold everything added."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ingest.sink.keyindex import KeyHasher, KeyHashSet, as_hashes, key_hash

hashes64 = st.integers(min_value=0, max_value=2**64 - 1)


@given(st.lists(st.lists(hashes64, max_size=40), max_size=30), st.lists(hashes64, max_size=40))
def test_the_set_answers_like_a_python_set(batches: list[list[int]], asked: list[int]) -> None:
    index = KeyHashSet()
    reference: set[int] = set()
    for batch in batches:
        index.add(as_hashes(batch))
        reference.update(batch)
    probe = asked + sorted(reference)[:20]
    assert index.contains(as_hashes(probe)).tolist() == [h in reference for h in probe]


def test_runs_stay_few_as_the_set_grows() -> None:
    index = KeyHashSet()
    rng = np.random.default_rng(1)
    for _ in range(1000):
        index.add(rng.integers(0, 2**63, size=100, dtype=np.uint64))
    assert len(index) == 100_000
    assert index.runs <= 12  # O(log n): 100k hashes in batches of 100


def test_an_empty_set_holds_nothing() -> None:
    assert KeyHashSet().contains(as_hashes([0, 1, 2**64 - 1])).tolist() == [False, False, False]


@given(st.text(max_size=30), st.text(max_size=30), st.text(min_size=1, max_size=60))
def test_the_memoised_hasher_is_the_reference_hash(namespace: str, source: str, event_id: str) -> None:
    hasher = KeyHasher()
    assert hasher(namespace, source, event_id) == key_hash(namespace, source, event_id)
    assert hasher(namespace, source, event_id) == key_hash(namespace, source, event_id)  # memo hit
    assert 0 <= key_hash(namespace, source, event_id) < 2**64


def test_the_parts_of_a_key_do_not_run_together() -> None:
    assert key_hash("ns", "ab", "c") != key_hash("ns", "a", "bc")
    assert key_hash("ns", "s", "x") != key_hash("ns2", "s", "x")

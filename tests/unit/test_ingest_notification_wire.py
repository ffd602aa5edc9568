"""The notification topic's wire format and how a follower tells a gap from a duplicate (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.ingest_notifications import (
    EventGroup,
    Seen,
    StreamTracker,
    decode_message,
    encode_changes,
    encode_usage,
)

T = datetime(2025, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)


def test_usage_and_changes_round_trip() -> None:
    groups = [EventGroup("ns", "acme", "calls", T, T.replace(second=9)), EventGroup("ns", "ü/ß", "x", T, T)]
    message = decode_message(encode_usage("s1", 7, groups, T))
    assert (message.stream, message.sequence, message.changes) == ("s1", 7, ())
    assert [
        (n.namespace, n.subject, n.event_type, n.earliest_event_time, n.latest_event_time) for n in message.usage
    ] == [
        ("ns", "acme", "calls", T, T.replace(second=9)),
        ("ns", "ü/ß", "x", T, T),
    ]
    assert {(n.stream, n.sequence, n.stored_at) for n in message.usage} == {("s1", 7, T)}
    changes = decode_message(encode_changes("s2", 1, [("ns", "acme"), ("ns", "01JCUSTOMER")]))
    assert (changes.usage, changes.changes) == ((), (("ns", "acme"), ("ns", "01JCUSTOMER")))
    assert decode_message(encode_changes("s2", 2, [])).changes == ()  # a tick


@pytest.mark.parametrize(
    "value",
    [b"", b"not json", b"[]", b'{"v": 2, "stream": "s", "seq": 1, "changes": []}', b'{"v": 1, "stream": "s"}',
     b'{"v": 1, "stream": "s", "seq": 1, "usage": [["ns"]], "storedAt": "2025-01-01T00:00:00+00:00"}'],
)  # fmt: skip
def test_anything_else_is_refused(value: bytes) -> None:
    with pytest.raises(ValueError, match="notification"):
        decode_message(value)


def test_tracker_table() -> None:
    t = StreamTracker()
    assert t.observe("a", 1) is Seen.NEXT  # the very first stream, from its start
    assert t.observe("a", 2) is Seen.NEXT
    assert t.observe("a", 2) is Seen.DUPLICATE
    assert t.observe("a", 1) is Seen.DUPLICATE
    assert t.observe("a", 4) is Seen.GAP  # 3 was missed
    assert t.observe("b", 1) is Seen.GAP  # a new publisher: the one before it may have died mid-batch
    assert t.observe("b", 2) is Seen.NEXT
    t.forget()  # the follower lost sight of the topic: what it sees next is joined midway
    assert t.observe("b", 5) is Seen.GAP
    assert StreamTracker().observe("c", 5) is Seen.GAP  # joining a stream midway


@given(st.lists(st.integers(1, 30), max_size=60))
def test_tracker_reports_a_gap_exactly_when_a_sequence_is_skipped(seqs: list[int]) -> None:
    t, last = StreamTracker(), 0
    for n in seqs:
        seen = t.observe("s", n)
        if n <= last:
            assert seen is Seen.DUPLICATE
        else:
            assert seen is (Seen.NEXT if n == last + 1 else Seen.GAP)
            last = n

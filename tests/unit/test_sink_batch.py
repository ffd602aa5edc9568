"""Batch planning, dedupe decisions and row building: the pure pieces of exactly once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.cloudevents import CloudEvent
from ingest.sink.batch import Cut, OffsetRange, plan_cuts
from ingest.sink.decode import Decoded
from ingest.sink.dedupe import Fingerprint, Item, fingerprint, resolve
from ingest.sink.digest import message_digest
from ingest.sink.rows import RangeId, build_columns

R = OffsetRange


@pytest.mark.parametrize(
    ("offsets", "recorded", "size", "partial", "expected"),
    [
        ([], [], 3, True, []),
        ([0, 1, 2, 3, 4, 5, 6], [], 3, False, [(0, 2, False), (3, 5, False)]),
        ([0, 1, 2, 3, 4, 5, 6], [], 3, True, [(0, 2, False), (3, 5, False), (6, 6, False)]),
        # a recorded range forces its exact boundaries, whatever the size limit
        ([0, 1, 2, 3, 4, 5, 6], [R(2, 6)], 10, False, [(0, 1, False), (2, 6, True)]),
        ([0, 1, 2, 3, 4, 5, 6], [R(0, 4)], 2, False, [(0, 4, True), (5, 6, False)]),
        # not all of a recorded range is here yet: wait, even on a time-out
        ([3, 4], [R(3, 6)], 10, True, []),
        # a gap in the log at the range's end: a later offset completes it
        ([3, 4, 8], [R(3, 6)], 10, False, [(3, 6, True)]),
        # a gap at the start of a recorded range keeps the recorded start (same token)
        ([5, 6], [R(3, 6)], 10, False, [(3, 6, True)]),
        # recorded ranges before the buffer are ignored
        ([10, 11], [R(0, 4)], 1, False, [(10, 10, False), (11, 11, False)]),
    ],
)
def test_plan_cuts(
    offsets: list[int], recorded: list[OffsetRange], size: int, partial: bool, expected: list[tuple[int, int, bool]]
) -> None:
    cuts = plan_cuts(offsets, recorded, size, flush_partial=partial)
    assert [(c.range.start, c.range.end, c.recorded) for c in cuts] == expected


@st.composite
def buffers(draw: st.DrawFn) -> tuple[list[int], list[OffsetRange]]:
    offsets = sorted(draw(st.sets(st.integers(0, 200), max_size=80)))
    bounds = sorted(draw(st.sets(st.integers(0, 200), max_size=12)))
    recorded = [R(a, b) for a, b in zip(bounds[::2], bounds[1::2], strict=False)]
    return offsets, recorded


@given(buffers(), st.integers(1, 20), st.booleans())
def test_cuts_are_ordered_prefixes_that_respect_recorded_ranges(
    buf: tuple[list[int], list[OffsetRange]], size: int, partial: bool
) -> None:
    offsets, recorded = buf
    cuts = plan_cuts(offsets, recorded, size, flush_partial=partial)
    position = 0
    for cut in cuts:
        assert cut.first == position  # consecutive prefixes of the buffer
        assert cut.stop > cut.first
        taken = offsets[cut.first : cut.stop]
        assert all(cut.range.start <= o <= cut.range.end for o in taken)
        if cut.recorded:
            assert cut.range in recorded
        else:
            assert len(taken) <= size
            assert not any(r.start <= cut.range.end and cut.range.start <= r.end for r in recorded)
        position = cut.stop
    # determinism: the same buffer always cuts the same way
    assert plan_cuts(offsets, recorded, size, flush_partial=partial) == cuts
    if partial and cuts == [] and offsets:
        first = offsets[0]
        assert any(r.start <= first <= r.end for r in recorded)  # only a pending recorded range waits


def test_cut_is_a_value() -> None:
    assert Cut(R(1, 2), 0, 2, recorded=False) == Cut(R(1, 2), 0, 2, recorded=False)
    with pytest.raises(ValueError, match="bad offset range"):
        R(5, 4)


T = datetime(2026, 1, 1, tzinfo=UTC)


def item(offset: int, event_id: str, *, data: str = '{"n":1}', namespace: str = "ns", subject: str = "s") -> Item:
    event = CloudEvent(id=event_id, source="src", type="t", subject=subject, time=T, data=data)
    return Item(offset, Decoded(namespace, event, T + timedelta(seconds=1)))


def test_resolve_keeps_first_copy_and_reports_conflicts() -> None:
    items = [
        item(0, "a"),
        item(1, "b"),
        item(2, "a"),  # duplicate in the batch
        item(3, "a", data='{"n":2}'),  # conflict with the first copy
        item(4, "c"),  # already stored, same payload: duplicate
        item(5, "d", subject="other"),  # already stored, other subject: conflict
        item(6, "b", namespace="ns2"),  # another namespace: another event
    ]
    stored = {("ns", "src", "c"): fingerprint(items[4].decoded.event), ("ns", "src", "d"): Fingerprint("t", "s", 0, "")}
    out = resolve(items, stored)
    assert [i.offset for i in out.keep] == [0, 1, 6]
    assert out.duplicates == 2
    assert [(c.offset, c.key) for c in out.conflicts] == [(3, ("ns", "src", "a")), (5, ("ns", "src", "d"))]
    assert "data" in out.conflicts[0].reason
    assert "subject" in out.conflicts[1].reason


def test_rows_and_token_are_deterministic() -> None:
    rid = RangeId("topic", 3, R(10, 12))
    items = [item(10, "a"), item(12, "b")]
    columns = build_columns(rid, items, stored_at_ms=1234)
    assert columns == build_columns(rid, items, stored_at_ms=1234)
    rows = list(zip(*columns, strict=True))
    assert rows[0] == (
        "ns",
        "a",
        "src",
        "t",
        "s",
        1_767_225_600_000,
        '{"n":1}',
        1_767_225_601_000,
        1234,
        "topic",
        3,
        10,
    )
    d1 = message_digest([10, 12], [1, 2], [b"x", None])
    assert d1 == message_digest([10, 12], [1, 2], [b"x", None])
    assert d1 != message_digest([10, 12], [1, 2], [b"x", b""])
    assert rid.token(d1) != RangeId("topic", 3, R(10, 13)).token(d1)
    assert rid.token(d1) != RangeId("topic", 4, R(10, 12)).token(d1)


def test_lost_to_retention_counts_what_the_topic_deleted_before_the_sink_wrote_it() -> None:
    from ingest.sink.worker import lost_to_retention

    assert lost_to_retention(committed=100, beginning=0) == 0
    assert lost_to_retention(committed=100, beginning=100) == 0
    assert lost_to_retention(committed=100, beginning=160) == 60

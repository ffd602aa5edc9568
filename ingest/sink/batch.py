"""Batch planning (pure): cut a partition's buffered offsets into write batches.

A batch is one contiguous offset range of one partition. Ranges recorded in the ledger (written, or
about to be written, before a crash or a revoke) are forced boundaries: a replay must cut exactly
the same range again, so it rebuilds the same rows under the same insert token. New batches end at
the size limit, before the next recorded range, or on a time-out.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class OffsetRange:
    """Offsets [start, end] of one partition, both inclusive."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"bad offset range [{self.start}, {self.end}]")


@dataclass(frozen=True, slots=True)
class Cut:
    """Buffered messages [first, stop) form a batch over `range`; `recorded` when the ledger forced it."""

    range: OffsetRange
    first: int
    stop: int
    recorded: bool


def plan_cuts(
    offsets: Sequence[int],
    recorded: Sequence[OffsetRange],
    max_size: int,
    *,
    flush_partial: bool,
) -> list[Cut]:
    """Cut the buffered offsets (strictly increasing) into the batches that are ready now.

    A recorded range is ready once the buffer reaches its end (its last offset, or a later one when
    the log has a gap). A new batch is ready when it is full, when the next buffered message belongs
    to a recorded range, or when `flush_partial` (time-out, shutdown) says so.
    """
    if max_size < 1:
        raise ValueError("max_size must be at least 1")
    forced = sorted(recorded)
    cuts: list[Cut] = []
    n = len(offsets)
    i = 0
    r = 0
    while i < n:
        offset = offsets[i]
        while r < len(forced) and forced[r].end < offset:
            r += 1
        upcoming = forced[r] if r < len(forced) else None
        if upcoming is not None and upcoming.start <= offset:
            stop = bisect_right(offsets, upcoming.end, lo=i)
            if stop == n and offsets[n - 1] != upcoming.end:
                break  # the recorded range is not all here yet
            cuts.append(Cut(upcoming, i, stop, recorded=True))
            i = stop
            r += 1
            continue
        stop = n if upcoming is None else bisect_left(offsets, upcoming.start, lo=i)
        boundary = stop < n
        if stop - i >= max_size:
            stop = i + max_size
            boundary = True
        if not (boundary or flush_partial):
            break
        cuts.append(Cut(OffsetRange(offset, offsets[stop - 1]), i, stop, recorded=False))
        i = stop
    return cuts

"""Dedupe decisions (pure): which events of a batch to store, keyed on (namespace, source, id).

The first copy wins: a copy already stored (found by the key check) or an earlier copy in the same
batch. A later copy with the same payload is a duplicate and is dropped silently; a later copy with a
different payload (type, subject, time or data) is a conflict: dropped and reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from common.clock import to_millis
from common.cloudevents import CloudEvent
from ingest.sink.decode import Decoded

EventKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What must match for two copies of an event to be the same event."""

    type: str
    subject: str
    time_ms: int
    data: str


class Item(NamedTuple):
    """A decoded message of a batch at its log offset (a NamedTuple: built once per message, 0.1 us
    cheaper than a frozen dataclass)."""

    offset: int
    decoded: Decoded


@dataclass(frozen=True, slots=True)
class Conflict:
    offset: int
    key: EventKey
    reason: str


@dataclass(frozen=True, slots=True)
class Resolution:
    keep: list[Item]
    duplicates: int
    conflicts: list[Conflict]


def event_key(namespace: str, event: CloudEvent) -> EventKey:
    return (namespace, event.source, event.id)


def fingerprint(event: CloudEvent) -> Fingerprint:
    return Fingerprint(event.type, event.subject, to_millis(event.time), event.data)


def _difference(first: Fingerprint, later: Fingerprint) -> str:
    fields = [name for name in ("type", "subject", "time_ms", "data") if getattr(first, name) != getattr(later, name)]
    return "same (namespace, source, id) as an earlier event with a different " + ", ".join(
        "time" if f == "time_ms" else f for f in fields
    )


def resolve(items: Sequence[Item], stored: Mapping[EventKey, Fingerprint]) -> Resolution:
    """Keep the first copy of every key not already stored; count duplicates; report conflicts."""
    # Fingerprints are built only when a key repeats: most keys are new, and this is the hot loop.
    seen: dict[EventKey, Item | Fingerprint] = {}
    keep: list[Item] = []
    duplicates = 0
    conflicts: list[Conflict] = []
    for item in items:
        event = item.decoded.event
        key = (item.decoded.namespace, event.source, event.id)
        first = seen.get(key)
        if first is None:
            first = stored.get(key)
            if first is None:
                seen[key] = item
                keep.append(item)
                continue
        if isinstance(first, Item):
            first = seen[key] = fingerprint(first.decoded.event)
        later = fingerprint(event)
        if later == first:
            duplicates += 1
        else:
            conflicts.append(Conflict(item.offset, key, _difference(first, later)))
    return Resolution(keep, duplicates, conflicts)


def resolve_hashed(
    items: Sequence[Item],
    hashes: npt.NDArray[np.uint64],
    stored: Mapping[EventKey, Fingerprint],
    stored_hashes: npt.NDArray[np.uint64],
) -> Resolution:
    """resolve(items, stored), the same answer, with Python looking only at the items it can concern.

    `hashes[i]` is the hash of items[i]'s key and `stored_hashes` the hashes of the keys in `stored`,
    by any one function of the key. An item whose hash occurs once in the batch and not among the
    stored hashes has a key no other item has and nothing stored has: it is kept, and the others do not
    depend on it. Only the rest (usually a few percent) go through resolve; equal hashes of different
    keys only send more items there.
    """
    if not len(items):
        return Resolution([], 0, [])
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    involved = counts[inverse] > 1
    if len(stored_hashes):
        involved |= np.isin(hashes, stored_hashes)
    if not involved.any():
        return Resolution(list(items), 0, [])
    flags = involved.tolist()
    decided = resolve([item for item, flag in zip(items, flags, strict=True) if flag], stored)
    kept = {id(item) for item in decided.keep}
    keep = [item for item, flag in zip(items, flags, strict=True) if not flag or id(item) in kept]
    return Resolution(keep, decided.duplicates, decided.conflicts)

"""Ingest notifications: after each committed batch the sink says whose usage changed.

One `IngestNotification` per (namespace, subject, event type) of a committed batch, with the batch's
earliest and latest event time of that group and the batch's storage time. Followers (the balance cache
of every API process, later webhooks) use it to drop or refresh what they derived from stored usage.

A notification is sent only after the events are visible to readers (after the insert returned), so a
follower that reads after receiving one sees the events. Every notification carries the publisher's
`stream` id and a `sequence` that grows by one per notification: a follower that sees a gap (a lost
notification) or a restart (a new stream) must treat everything it derived as stale; a duplicate (a
sequence already seen) is harmless for a follower that only invalidates.

`InProcessNotifier` serves `metergate dev` (the embedded sink runs in the API process): delivery is a
synchronous call to every subscriber, so nothing can be lost or reordered.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class IngestNotification:
    namespace: str
    subject: str
    event_type: str
    earliest_event_time: datetime
    latest_event_time: datetime
    stored_at: datetime
    stream: str
    sequence: int


IngestListener = Callable[[Sequence[IngestNotification]], None]


class IngestNotifier(Protocol):
    """Where the sink announces committed batches, and where followers subscribe."""

    def publish(self, groups: Sequence[EventGroup], stored_at: datetime) -> None: ...

    def subscribe(self, listener: IngestListener) -> None: ...


@dataclass(frozen=True, slots=True)
class EventGroup:
    """The events of one batch for one (namespace, subject, event type)."""

    namespace: str
    subject: str
    event_type: str
    earliest: datetime
    latest: datetime


def group_events(events: Iterable[tuple[str, str, str, datetime]]) -> list[EventGroup]:
    """(namespace, subject, type, time) per event -> one group per (namespace, subject, type), sorted."""
    spans: dict[tuple[str, str, str], tuple[datetime, datetime]] = {}
    for ns, subject, type_, at in events:
        key = (ns, subject, type_)
        found = spans.get(key)
        spans[key] = (at, at) if found is None else (min(found[0], at), max(found[1], at))
    return [EventGroup(*key, lo, hi) for key, (lo, hi) in sorted(spans.items())]


class InProcessNotifier:
    """Synchronous fan-out inside one process (`metergate dev`): no loss, no reordering."""

    def __init__(self) -> None:
        self.stream = uuid.uuid4().hex
        self._sequence = itertools.count(1)
        self._listeners: list[IngestListener] = []

    def subscribe(self, listener: IngestListener) -> None:
        self._listeners.append(listener)

    def publish(self, groups: Sequence[EventGroup], stored_at: datetime) -> None:
        notes = [
            IngestNotification(
                g.namespace, g.subject, g.event_type, g.earliest, g.latest, stored_at, self.stream, next(self._sequence)
            )
            for g in groups
        ]
        if not notes:
            return
        for listener in self._listeners:
            try:
                listener(notes)
            except Exception:
                # A follower that fails must not fail the write: the events are stored and committed.
                log.exception("ingest_listener_failed", listener=getattr(listener, "__qualname__", repr(listener)))

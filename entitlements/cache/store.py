"""The in-memory store of computed entitlement values (no I/O, no clock: instants are passed in).

An entry is the value of one entitlement at "now", answered without SQL or ClickHouse while it is still
the value a computation from scratch would give. Three things can change that value; each is covered:

- **State** (entitlement, grants, voids, resets, overrides, deletion): every write calls
  `invalidate_subject` for the subject it touched, before its response is sent (other API processes learn of
  it through the notification topic: `on_changes`).
- **Usage**: an ingest notification (`common.ingest_notifications`) for a (namespace, subject, event type)
  marks that subject's entries of the meter's event type *stale*: their value holds up to the open window
  (`open_from`, the start of the engine's last window, the phase "now" is in), and the service refreshes a
  stale entry on its next read by re-reading the usage of that window only and running the engine from the
  entry's own start (`Entry.basis`). Re-reading the whole open window, rather than adding a delta per
  notification, is what makes a duplicate, a reordered notification or one racing the computation harmless.
  An event older than `open_from` (a late event: a closed window changed) drops the entry instead (a
  recomputation from scratch). A gap or a new publisher (a restart) in the notification sequences drops
  every entry. With Kafka, other API processes' state changes arrive on the
  same topic (`on_changes`), and while the topic cannot be followed the cache is suspended (stores nothing).
  Events whose time is still ahead of "now" when they are stored (future event times) are remembered as
  spans; an entry is never valid past the start of such a span.
- **Time**: an entry is valid on `[computed_for, valid_until)`, where `valid_until` is the next instant
  the engine knows changes the value (period end, grant activation, expiry, void, recurrence).

Races: a computation takes a `token` before it reads anything; `put` refuses the result when its subject
was invalidated after the token was taken (the value may predate the change), or when usage older than
its open window was notified meanwhile; usage inside the open window notified meanwhile stores it stale.
Invalidation generations are kept per subject in a bounded map; a subject pushed out of it raises a floor
that refuses every older token.

A value computed for an instant more than `CLOCK_SLACK` before the highest "now" the cache has seen (a
test clock moved back) is never cached: future-event spans are only remembered down to that mark. The slack
lets concurrent computations, which each read "now" a moment apart, all be stored.

Bounded by entries and by an estimate of bytes; least recently used entries go first. Eviction only costs
a recomputation.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING

from common.ingest_notifications import Seen, StreamTracker

if TYPE_CHECKING:
    from common.ingest_notifications import IngestNotification
    from entitlements.domain import CustomerRef
    from entitlements.service.balance import Value

SubjectKey = tuple[str, str]  # (namespace, subject key, or a customer's id)
# (namespace, subject or customer as asked, entitlement id or feature key as asked)
AliasKey = tuple[str, "str | CustomerRef", str]

MAX_SPANS_PER_KEY = 16
CLOCK_SLACK = timedelta(minutes=1)
MAX_GENERATIONS = 100_000
MAX_MARKS_PER_KEY = 8
# A per-entry overhead (the entry, its Value, Decimals, three aliases, map slots), measured with
# tracemalloc in bench/gateway.py; string contents are added per entry.
ENTRY_OVERHEAD_BYTES = 1650


@dataclass(frozen=True, slots=True)
class Entry:
    """`subject_key`: the entitlement's owner (a subject, or a customer's id); `depends_on`: the other keys whose
    invalidation drops the entry (a customer's subjects, whose events are its usage, and the subject asked)."""

    namespace: str
    subject_key: str
    entitlement_id: str
    event_type: str | None  # the meter's event type (metered entitlements only)
    value: Value
    computed_for: datetime  # the service-clock instant the value is the value at
    valid_until: datetime | None  # the next instant the value may change by itself; None = never
    as_of: datetime  # wall time when the computation began: every event stored before it is counted
    depends_on: tuple[str, ...] = ()
    size: int = 0
    body: bytes = b""  # the value route's JSON body (OpenMeter's fields and asOf), encoded once when stored
    # Metered values: where the engine's last window starts (usage from there on can be re-read and the value
    # refreshed), and what the service refreshes it from (opaque here). None: not refreshable, dropped instead.
    open_from: datetime | None = None
    basis: object = None
    stale: bool = False  # usage in the open window was notified after the value was computed

    def valid_at(self, now: datetime) -> bool:
        return self.computed_for <= now and (self.valid_until is None or now < self.valid_until)

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.subject_key, *(k for k in self.depends_on if k != self.subject_key))


def estimate_size(namespace: str, subject_key: str, entitlement_id: str, value: Value, *more: str) -> int:
    text = namespace + subject_key + entitlement_id + (value.config or "") + "".join(more)
    return ENTRY_OVERHEAD_BYTES + sys.getsizeof(text) + 8 * len(more)


_SHARED = (type(None), bool, Enum, type)


def deep_size(root: object, limit: int = 10_000) -> int:
    """Bytes held by `root` and what it alone reaches (dataclasses, containers, scalars), for the byte bound of
    what an entry keeps to be refreshed. Singletons and enums are shared, not counted; at most `limit` objects."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SHARED):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, tuple | list | set | frozenset):
            stack.extend(obj)
        elif hasattr(obj, "__dataclass_fields__"):
            stack.extend(getattr(obj, name) for name in obj.__dataclass_fields__)
    return total


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stores: int = 0
    refused: int = 0
    stale: int = 0  # reads that found an entry to refresh
    evictions: int = 0
    invalidations: int = 0
    gaps: int = 0


@dataclass
class _Spans:
    """Event-time spans [earliest, latest] of notified events that were ahead of the high-water mark."""

    spans: list[tuple[datetime, datetime]] = field(default_factory=list)

    def add(self, lo: datetime, hi: datetime) -> None:
        spans = self.spans
        if spans:
            last_lo, last_hi = spans[-1]
            if last_lo <= lo and hi <= last_hi:
                return  # covered already (a stream often repeats its latest span)
        spans.append((lo, hi))
        if len(spans) > MAX_SPANS_PER_KEY:
            # Merging the earliest spans into one covers more instants than they did: conservative, never
            # wrong. Down to half the bound at once, so the sort is paid once per that many spans, not per span.
            spans.sort()
            merged = len(spans) - MAX_SPANS_PER_KEY // 2 + 1
            head = spans[:merged]
            spans[:merged] = [(head[0][0], max(h for _, h in head))]

    def next_after(self, at: datetime) -> datetime | None:
        """The first instant > at (or `at` itself) that may hold a stored event not counted at `at`."""
        starts = [max(lo, at) for lo, hi in self.spans if hi >= at]
        return min(starts, default=None)

    def prune(self, mark: datetime) -> None:
        self.spans = [(lo, hi) for lo, hi in self.spans if hi >= mark]


class BalanceCache:
    def __init__(self, *, max_entries: int = 100_000, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._entries: OrderedDict[tuple[str, str], Entry] = OrderedDict()  # (namespace, entitlement id)
        self._aliases: dict[AliasKey, tuple[str, str]] = {}
        self._by_subject: dict[SubjectKey, set[tuple[str, str]]] = {}
        self._aliases_of: dict[tuple[str, str], set[AliasKey]] = {}
        self._bytes = 0
        self._generation = 0
        self._invalidated: OrderedDict[SubjectKey, int] = OrderedDict()
        self._floor = 0
        self._future: dict[tuple[str, str, str], _Spans] = {}
        # Per (namespace, subject, event type): (generation, earliest event time) of recent usage notes, for
        # `put` to judge a computation that raced them; a key pushed out raises `_floor`.
        self._marks: OrderedDict[tuple[str, str, str], list[tuple[int, datetime]]] = OrderedDict()
        self._high_water: datetime | None = None
        self._streams = StreamTracker()
        self._suspended = False

    # ---- reads ----

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def token(self) -> int:
        """Take before reading state or usage for a value that may be `put` afterwards."""
        return self._generation

    def get(self, namespace: str, subject: str | CustomerRef, id_or_feature_key: str, now: datetime) -> Entry | None:
        self._observe(now)
        if self._suspended:
            self.stats.misses += 1
            return None
        key = self._aliases.get((namespace, subject, id_or_feature_key))
        entry = None if key is None else self._entries.get(key)
        if entry is None or not entry.valid_at(now):
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)  # type: ignore[arg-type]
        if entry.stale:
            self.stats.stale += 1
        else:
            self.stats.hits += 1
        return entry

    def aliases(self, namespace: str, entitlement_id: str) -> list[AliasKey]:
        """The names an entry is found under (a refreshed entry keeps them)."""
        return list(self._aliases_of.get((namespace, entitlement_id), ()))

    # ---- writes ----

    def put(self, entry: Entry, aliases: Iterable[AliasKey], token: int) -> bool:
        """Store `entry` (found under every alias) unless one of its keys changed since `token` was taken."""
        subjects = [(entry.namespace, k) for k in entry.keys]
        self._observe(entry.computed_for)
        if self._suspended:
            return False
        if token < self._floor or any(self._invalidated.get(subject, -1) > token for subject in subjects):
            self.stats.refused += 1
            return False
        if entry.event_type is not None:
            raced = [
                earliest
                for ns, k in subjects
                for generation, earliest in self._marks.get((ns, k, entry.event_type), ())
                if generation > token
            ]
            if raced:
                if entry.open_from is None or min(raced) < entry.open_from:
                    self.stats.refused += 1
                    return False
                entry = replace(entry, stale=True)
        mark = self._mark()
        if mark is not None and entry.computed_for < mark:
            return False  # the clock was moved back: see the module docstring
        if entry.event_type is not None:
            found = [self._future.get((ns, k, entry.event_type)) for ns, k in subjects]
            nexts = [n for n in (sp.next_after(entry.computed_for) for sp in found if sp is not None) if n is not None]
            nxt = min(nexts, default=None)
            if nxt is not None and (entry.valid_until is None or nxt < entry.valid_until):
                if nxt <= entry.computed_for:
                    return False
                entry = replace(entry, valid_until=nxt)
        sized = estimate_size(entry.namespace, entry.subject_key, entry.entitlement_id, entry.value, *entry.depends_on)
        sized += len(entry.body) + 33 if entry.body else 0  # the encoded answer (bytes object overhead: 33)
        sized += 0 if entry.basis is None else deep_size(entry.basis)
        entry = replace(entry, size=sized)
        key = (entry.namespace, entry.entitlement_id)
        self._drop(key)
        self._entries[key] = entry
        self._bytes += entry.size
        for subject in subjects:
            self._by_subject.setdefault(subject, set()).add(key)
        names = self._aliases_of.setdefault(key, set())
        for alias in aliases:
            previous = self._aliases.get(alias)
            if previous is not None and previous != key:
                self._aliases_of.get(previous, set()).discard(alias)
            self._aliases[alias] = key
            names.add(alias)
        self.stats.stores += 1
        self._evict()
        return True

    def invalidate_subject(self, namespace: str, subject_key: str) -> None:
        """A state change for the subject: drop its entries and refuse values computed before now."""
        subject = (namespace, subject_key)
        self._bump(subject)
        for key in list(self._by_subject.get(subject, ())):
            self._drop(key)
        self.stats.invalidations += 1

    def on_ingest(self, notes: Sequence[IngestNotification]) -> None:
        """Follow the ingest notification stream (common.ingest_notifications), from one or more publishers."""
        observe, future, usage = self._streams.observe, self._future, self._usage
        mark = self._mark()  # moves only with reads, which cannot run during this call
        for note in notes:
            if observe(note.stream, note.sequence) is Seen.GAP:
                # A new publisher (a restart) or a skipped sequence: some notification may have been missed.
                self.stats.gaps += 1
                self.clear()
            if mark is None or note.latest_event_time >= mark:
                key = (note.namespace, note.subject, note.event_type)
                spans = future.get(key)
                if spans is None:
                    spans = future[key] = _Spans()
                spans.add(note.earliest_event_time, note.latest_event_time)
            usage(note)

    def on_changes(self, stream: str, sequence: int, changes: Sequence[tuple[str, str]]) -> None:
        """State changes another API process committed (its writes invalidate its own cache directly)."""
        if self._streams.observe(stream, sequence) is Seen.GAP:
            self.stats.gaps += 1
            self.clear()
        for namespace, key in changes:
            self.invalidate_subject(namespace, key)

    def suspend(self) -> None:
        """The notification stream cannot be followed (broker unreachable): drop everything, store nothing."""
        self._suspended = True
        self.clear()

    def resume(self) -> None:
        """Following again from the stream's end: what happened meanwhile is unknown, so start empty."""
        self._streams.forget()
        self.clear()
        self._suspended = False

    @property
    def suspended(self) -> bool:
        return self._suspended

    def clear(self) -> None:
        """Drop everything and refuse every computation in flight."""
        self._generation += 1
        self._floor = self._generation
        self._entries.clear()
        self._aliases.clear()
        self._aliases_of.clear()
        self._by_subject.clear()
        self._marks.clear()
        self._bytes = 0

    # ---- internals ----

    def _bump(self, subject: SubjectKey) -> None:
        self._generation += 1
        self._invalidated[subject] = self._generation
        self._invalidated.move_to_end(subject)
        while len(self._invalidated) > MAX_GENERATIONS:
            _, generation = self._invalidated.popitem(last=False)
            self._floor = max(self._floor, generation)

    def _mark(self) -> datetime | None:
        return None if self._high_water is None else self._high_water - CLOCK_SLACK

    def _observe(self, now: datetime) -> None:
        if self._high_water is None or now > self._high_water:
            self._high_water = now

    def _usage(self, note: IngestNotification) -> None:
        """New usage of `note.event_type` for the subject: refresh what the open window covers, drop the rest."""
        self._generation += 1
        mark_key = (note.namespace, note.subject, note.event_type)
        all_marks = self._marks
        marks = all_marks.get(mark_key)
        if marks is None:
            all_marks[mark_key] = [(self._generation, note.earliest_event_time)]
            while len(all_marks) > MAX_GENERATIONS:
                _, pushed = all_marks.popitem(last=False)
                self._floor = max(self._floor, *(g for g, _ in pushed))
        else:
            marks.append((self._generation, note.earliest_event_time))
            if len(marks) > MAX_MARKS_PER_KEY:
                # Merging the oldest marks into one keeps the newest generation of them (marks are in generation
                # order) and their earliest time: it refuses more, never less. Down to half the bound at once.
                merged = len(marks) - MAX_MARKS_PER_KEY // 2 + 1
                head = marks[:merged]
                marks[:merged] = [(head[-1][0], min(e for _, e in head))]
            all_marks.move_to_end(mark_key)
        self.stats.invalidations += 1
        cached = self._by_subject.get((note.namespace, note.subject))
        if not cached:
            return
        for key in list(cached):
            entry = self._entries.get(key)
            if entry is None or entry.event_type != note.event_type:
                continue
            if entry.open_from is not None and note.earliest_event_time >= entry.open_from:
                if not entry.stale:
                    self._entries[key] = replace(entry, stale=True)
            else:
                self._drop(key)

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._bytes -= entry.size
        for subject in [(entry.namespace, k) for k in entry.keys]:
            keys = self._by_subject.get(subject)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_subject[subject]
        for alias in self._aliases_of.pop(key, ()):
            if self._aliases.get(alias) == key:
                del self._aliases[alias]

    def _evict(self) -> None:
        while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
            key = next(iter(self._entries))
            self._drop(key)
            self.stats.evictions += 1
        mark = self._mark()
        if mark is not None and len(self._future) > 0:
            for spans in self._future.values():
                spans.prune(mark)
            self._future = {k: v for k, v in self._future.items() if v.spans}

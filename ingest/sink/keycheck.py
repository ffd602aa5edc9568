"""The key check: which (namespace, source, id) of a batch are already stored, and with what payload.

Two steps. First an in-memory set of the hashes of stored keys (keyindex.py) rules out the keys it
does not hold: most keys of a batch are new, and proving a key absent from ClickHouse itself means
reading every id stored within the dedupe window, a scan that grows with the table (measured: 40-90 ms
per 10k batch at 300k stored events, the sink's largest cost). A hit whose payload hash matches the
stored one is a copy (a key hash and a payload hash both equal by chance: ~2^-64 per pair). Only the
other candidates (hits with another payload: conflicts or key-hash collisions, every hit of a replayed
range, events too old for the set to cover) are looked up in ClickHouse, where the exact
(namespace, source, id) is compared: a key-hash collision alone costs a lookup, never an event.

What the set holds, and why a miss is final. The dedupe horizon is a window of storage time: a copy of a
key stored in the last `window` is a duplicate (or a conflict), whatever either copy's event time, as
OpenMeter keeps its dedupe keys for a window of processing time. The set holds every key stored since its
horizon (one window before it was loaded). It is loaded from the table on first use and again once a
window has passed (the horizon moves on, old keys go), every key this process stores is added after its
insert succeeded, and when the worker is assigned a partition, the keys stored from that partition (by its previous
owner, whose writes ended before the assignment did) are added before any batch of it is written.
So every key stored from a partition this process owns is in the set: copies that share the key
(namespace + source + id), which the Kafka message key guarantees, always meet. A copy published
under another key lands on another partition; it is caught when it was stored before this process
loaded its set or by this process, and not when another worker stored it meanwhile (as before, two
workers writing such copies at the same time can both store them; ingest/README.md).

Lookups (only for hits whose payload differs, and for replays) are bounded by storage time, not event
time: a conflict is reported across any event time. Up to LOOKUP_BY_ID candidates travel as ids (the
id bloom filter index skips most granules); more (a replayed range finds all its own keys in the set)
travel as their CRC32, written into the query as a literal list of integers (clickhouse-connect
formats an array parameter element by element in Python).

Rows written by the batch's own partition at or past the batch's first offset are excluded: after a
partial write (rows stored, offsets not committed) the replay must not find its own rows, or it would
build a different row set under the same token. Rows of the same partition before the range were
written by earlier batches, which are final, so the answer for a range never changes on replay.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zlib import crc32

import numpy as np
import structlog

from common.clickhouse import ClickHouse
from common.clock import Clock, to_millis
from common.events_table import EVENTS_TABLE
from ingest.sink.dedupe import EventKey, Fingerprint, Item, fingerprint
from ingest.sink.keyindex import KEY_HASH_SQL, PAYLOAD_HASH_SQL, Hashes, KeyHasher, KeyHashSet, PayloadHasher
from ingest.sink.rows import RangeId

log = structlog.get_logger(__name__)

_DEFAULT_MAX_QUERY_SIZE = 262_144
LOOKUP_BY_ID = 2_000


@dataclass(frozen=True, slots=True)
class KeyLookup:
    """The stored copies of a batch's keys, and the batch's key hashes (in item order)."""

    found: dict[EventKey, Fingerprint]
    hashes: Hashes


class ClickHouseKeyCheck:
    def __init__(self, ch: ClickHouse, *, window: timedelta, clock: Clock) -> None:
        self._ch = ch
        self._table = ch.table(EVENTS_TABLE)
        self._window = window
        self._clock = clock
        self._hasher = KeyHasher()
        self._payloads = PayloadHasher()
        self._set = KeyHashSet()
        self._lock = threading.Lock()  # the writer thread and partition loads share the set
        # Loads run one at a time: a partition load added to a set that a reload, having read the table
        # before it, then replaces would be lost.
        self._load_lock = threading.Lock()
        self._horizon: datetime | None = None  # None: not loaded yet
        self._loaded_at: datetime | None = None

    @property
    def indexed_keys(self) -> int:
        return len(self._set)

    # the set -----------------------------------------------------------------------------------
    def _load_hashes(
        self, horizon: datetime, where: str = "", parameters: dict[str, Any] | None = None
    ) -> tuple[Hashes, Hashes]:
        """(key hashes, payload hashes) of the events stored at or after `horizon` (storage time)."""
        result = self._ch.call(
            lambda c: c.query_np(
                f"SELECT {KEY_HASH_SQL}, {PAYLOAD_HASH_SQL} FROM {self._table} "
                "WHERE stored_at >= fromUnixTimestamp64Milli({horizon:Int64}, 'UTC')" + where,
                parameters={"horizon": to_millis(horizon), **(parameters or {})},
            )
        )
        pairs = np.asarray(result, dtype=np.uint64).reshape(-1, 2)
        return np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])

    def load(self) -> None:
        """(Re)load the set from the table: every key stored within the last window (storage time, whatever
        the event's time). Until the next load a window later, the set also gets every key stored since, so it
        always covers at least the last window of storage."""
        with self._load_lock:
            now = self._clock.now()
            horizon = now - self._window
            hashes, payloads = self._load_hashes(horizon)
            fresh = KeyHashSet()
            fresh.add(hashes, payloads)
            with self._lock:
                self._set, self._horizon, self._loaded_at = fresh, horizon, now
        log.info("sink_key_set_loaded", keys=len(hashes), horizon=horizon.isoformat())

    def load_assigned(self, topic: str, partitions: Sequence[int]) -> None:
        """Make the set hold every key stored from newly assigned partitions (call on assignment,
        before writing any of them): the whole set is loaded when it never was (the table is read after
        the previous owners' writes ended, so it holds theirs), else their keys are added."""
        if not partitions:
            return
        if self._horizon is None:
            self.load()
            return
        with self._load_lock:
            horizon = self._horizon
            hashes, payloads = self._load_hashes(
                horizon,
                " AND ingest_topic = {topic:String} AND ingest_partition IN {partitions:Array(Int32)}",
                {"topic": topic, "partitions": list(partitions)},
            )
            with self._lock:
                self._set.add(hashes, payloads)
        log.info("sink_key_set_partitions_loaded", partitions=list(partitions), keys=len(hashes))

    def remember(self, key_hashes: Hashes, payload_hashes: Hashes) -> None:
        """Add the key and payload hashes of the events a batch stored, once its insert succeeded. Copies that
        were dropped are not among them: their key is stored with its first payload."""
        with self._lock:
            self._set.add(key_hashes, payload_hashes)

    # the check ---------------------------------------------------------------------------------
    def stored(
        self,
        range_id: RangeId,
        items: Sequence[Item],
        *,
        replay: bool = False,
        hashes: Hashes | None = None,
        payloads: Hashes | None = None,
    ) -> KeyLookup:
        """Fingerprints of the batch's keys already stored by other ranges (blocking).

        `replay`: the range may already be (partly) stored, by this process or another (a range found
        in the ledger or the write-ahead file): its own rows are in the set, so a hit whose payload
        matches proves nothing and every hit is looked up (the lookup leaves the range's own rows out).
        `hashes`, `payloads`: the items' key and payload hashes when computed already (prepare.py).
        """
        if self._loaded_at is None or self._clock.now() - self._loaded_at >= self._window:
            self.load()
        if hashes is None:
            hashes = self._hasher.of_items(items)
        if not items:
            return KeyLookup({}, hashes)
        with self._lock:
            assert self._horizon is not None
            horizon = self._horizon
            hits, stored_payloads = self._set.find(hashes)
        # A miss is final: the set holds every key stored since the horizon, whatever its event time. A hit
        # is a copy of a stored event when its payload hash matches the stored one (both hashes equal by
        # chance: about 2^-64 per pair), else it is looked up: a conflict, or a hash collision.
        found: dict[EventKey, Fingerprint] = {}
        candidates: list[Item] = []
        hit_at = np.flatnonzero(hits)
        if len(hit_at) and not replay:
            hit_items = [items[i] for i in hit_at.tolist()]
            hit_payloads = self._payloads.of_items(hit_items) if payloads is None else payloads[hit_at]
            same = hit_payloads == stored_payloads[hit_at]
            for item, is_copy in zip(hit_items, same.tolist(), strict=True):
                if is_copy:
                    found[(item.decoded.namespace, item.decoded.event.source, item.decoded.event.id)] = fingerprint(
                        item.decoded.event
                    )
                else:
                    candidates.append(item)
        else:
            candidates.extend(items[i] for i in hit_at.tolist())
        if candidates:
            found.update(self.lookup(range_id, candidates, horizon))
        return KeyLookup(found, hashes)

    def lookup(
        self, range_id: RangeId, items: Sequence[Item], horizon: datetime | None = None
    ) -> dict[EventKey, Fingerprint]:
        """Stored copies of these items' keys stored since `horizon` (default: one window ago), whatever their
        event time, asked of ClickHouse alone (blocking)."""
        namespaces = sorted({item.decoded.namespace for item in items})
        since = horizon if horizon is not None else self._clock.now() - self._window
        parameters: dict[str, Any] = {
            "since": to_millis(since),
            "namespaces": namespaces,
            "topic": range_id.topic,
            "partition": range_id.partition,
            "start": range_id.range.start,
        }
        settings: dict[str, Any] = {}
        if len(items) <= LOOKUP_BY_ID:
            key_filter = "id IN {ids:Array(String)}"
            parameters["ids"] = sorted({item.decoded.event.id for item in items})
        else:
            crcs = ",".join(map(str, {crc32(item.decoded.event.id.encode()) for item in items}))
            key_filter = f"CRC32(id) IN ({crcs})"
            settings["use_skip_indexes"] = 0  # the id bloom filter cannot serve CRC32(id)
        query = (
            "SELECT namespace, source, id, type, subject, toUnixTimestamp64Milli(time), data "
            f"FROM {self._table} "
            "WHERE stored_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') "
            "AND namespace IN {namespaces:Array(String)} "
            f"AND {key_filter} "
            "AND NOT (ingest_topic = {topic:String} AND ingest_partition = {partition:Int32} "
            "AND ingest_offset >= {start:Int64})"
        )
        settings["max_query_size"] = max(_DEFAULT_MAX_QUERY_SIZE, 2 * len(query))
        rows = self._ch.rows(query, parameters=parameters, settings=settings)
        found: dict[EventKey, Fingerprint] = {}
        for namespace, source, event_id, event_type, subject, time_ms, data in rows:
            # setdefault: should the table ever hold two copies, compare against one of them consistently
            found.setdefault((namespace, source, event_id), Fingerprint(event_type, subject, int(time_ms), data))
        return found

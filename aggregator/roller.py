"""The roller (I/O): counts the stored events into the meters' rollups behind ingest.

An insert into `events` does no meter work at all. The roller rolls up what was stored since its mark, one
range of `inserted_at` at a time: `INSERT INTO meter_routed SELECT <router> FROM events WHERE inserted_at
in [done, hi)`, whose family views write the minute and hour states. Readers add the raw events stored at
or after `done` (`sql.build_query`'s tail), so answers are exact whatever the roller's lag.

One roll, crash-safe and exact:

1. Nothing stored since `done`: nothing to do (one key read; no mark moves). Else `hi` = the server's now
   (with no meter at all, `done` moves to `hi` and that is the roll: nothing in the range counts for a meter);
   wait until no INSERT into `events` that began before it is still running (every row stamped `< hi` is
   stored); shrink `hi` so the range holds at most `max_events` events.
2. Record the intent `hi` (`meter_rolls`), then insert the range under the dedupe token `roll:<lo>:<hi>`,
   squashed into one block (so a retry writes the same blocks and the family tables drop what the first
   attempt already wrote), then record `done = hi` (a range with no events records `done` only).
3. A roller that finds `intent > done` (a crash between 2's writes) redoes exactly that range with the same
   token: nothing is counted twice, nothing is lost.

A reader that read `done` before its query and finds `intent <= done` after it saw no row of a later roll:
its rollup part holds exactly the events stored before `done` (see `MeterService.run`).

Rolls never run concurrently: a lock in this process and, with several processes on one database, the
shared lock the state database provides (a PostgreSQL advisory lock).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

import structlog

from aggregator import routing, sql
from common.clickhouse import ClickHouse
from common.clock import EPOCH, to_millis, utc_from_storage
from common.events_table import EVENTS_TABLE, INSERTED_AT

log = structlog.get_logger(__name__)

ROLL_MAX_EVENTS = 500_000
LOG_ROLL_EVENTS = 10_000
SETTLE_TIMEOUT_S = 60.0
LOCK_KEY = "metergate:meter-roller"
# The `log_comment` of the rollup writes (rolls, backfills): `settle` waits for inserts into events only.
ROLLUP_WRITE = "metergate-rollup-write"
# One block per roll: the roll's rows reach each family table as one insert block per partition, the
# unit ClickHouse's dedupe works on, so a redo with the same token drops exactly what was written.
_ONE_BLOCK = {
    "min_insert_block_size_rows": 1_000_000_000,
    "min_insert_block_size_bytes": 1 << 40,
    "max_insert_block_size": 1_000_000_000,
    "min_insert_block_size_rows_for_materialized_views": 1_000_000_000,
    "min_insert_block_size_bytes_for_materialized_views": 1 << 40,
    "max_insert_threads": 1,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    "log_comment": ROLLUP_WRITE,
}


class Marks(NamedTuple):
    intent: datetime
    done: datetime


@dataclass(frozen=True, slots=True)
class Roll:
    lo: datetime
    hi: datetime
    events: int
    seconds: float
    redo: bool


def server_now(ch: ClickHouse) -> datetime:
    return utc_from_storage(ch.rows("SELECT now64(3, 'UTC')")[0][0])


def settle(ch: ClickHouse, instant: datetime, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """Wait until `instant` has passed on the server and no INSERT into `events` that began before it (with
    a second of margin on `elapsed`) still runs: every events row stamped before it is stored. The rollup
    writes (the roller's, the backfill's) are not waited for."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = server_now(ch)
        busy = 0
        if now >= instant:
            busy = int(
                ch.rows(
                    "SELECT count() FROM system.processes WHERE query_kind = 'Insert' "
                    f"AND Settings['log_comment'] != '{ROLLUP_WRITE}' "
                    "AND now64(3, 'UTC') - toIntervalMillisecond(toUInt64(elapsed * 1000) + 1000) "
                    "< {c:DateTime64(3, 'UTC')}",
                    parameters={"c": instant},
                )[0][0]
            )
            if busy == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"inserts into events started before {instant.isoformat()} are still running ({busy})")
        time.sleep(0.05)


@dataclass
class _Process:
    """What every roller of this process on one database shares: the lock its rolls take and, with the
    embedded engine (one process owns the database, so only its own rolls move the marks), the marks."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    marks: Marks | None = None
    initialized: bool = False  # the first marks exist (checked once per process, not once per roller)
    client: object = None  # the engine this entry belongs to (ids of collected objects are reused)


_PROCESS: dict[tuple[int, str], _Process] = {}
_PROCESS_GUARD = threading.Lock()


def _process_state(ch: ClickHouse) -> _Process:
    with _PROCESS_GUARD:
        key = (id(ch.client), ch.database)
        state = _PROCESS.get(key)
        if state is None or state.client is not ch.client:
            state = _PROCESS[key] = _Process(client=ch.client)
        return state


class ClickHouseRoller:
    def __init__(self, ch: ClickHouse, *, max_events: int = ROLL_MAX_EVENTS) -> None:
        self.ch = ch
        self.db = ch.database
        self.max_events = max_events
        self._process = _process_state(ch)
        self._shared: Callable[[str], AbstractContextManager[None]] | None = None
        self._table = sql.qualified(self.db, routing.ROLLS_TABLE)

    def share_lock(self, hold: Callable[[str], AbstractContextManager[None]]) -> None:
        """Several processes on one database: rolls also hold this lock (a PostgreSQL advisory lock)."""
        self._shared = hold

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._process.lock:
            if self._shared is None:
                yield
            else:
                with self._shared(LOCK_KEY):
                    yield

    # --- marks ---------------------------------------------------------------------------------

    def marks(self) -> Marks:
        """The greatest intent and done marks; both at 1970 before the first roll (then the rollups hold
        nothing a reader may use and the whole answer comes from the raw tail). With the embedded engine
        they are read once and then kept by this process's rolls (no other process can roll)."""
        known = self._process.marks
        if known is not None:
            return known
        found = self.ch.rows(f"SELECT kind, max(mark) FROM {self._table} GROUP BY kind")
        rows = {str(k): utc_from_storage(m) for k, m in found}
        done = rows.get("done", EPOCH)
        marks = Marks(max(rows.get("intent", done), done), done)
        if self.ch.embedded and "done" in rows:
            self._process.marks = marks
        return marks

    def known_marks(self) -> Marks | None:
        """The marks when this process keeps them (the embedded engine, after the first read): no I/O, so a
        reader on the event loop takes them without a thread hop."""
        return self._process.marks

    def stored_since(
        self,
        mark: datetime,
        namespace: str | None = None,
        event_type: str | None = None,
        subjects: tuple[str, ...] = (),
        within: tuple[datetime, datetime] | None = None,
    ) -> bool:
        """Whether any event (of this namespace and type, these subjects and event times `within` [from, to),
        where given) was stored at or after `mark`. A read with no tail skips the raw tail read (~5 ms of fixed
        work on chdb for its value rule and states, even when the `inserted_at` index finds nothing); an idle
        roll stops here. The event-time bounds keep the check to the partitions (months) and key ranges the
        read covers: without them it consulted every part of the subjects' whole history."""
        scope = [f"{INSERTED_AT} >= {{m:DateTime64(3, 'UTC')}}"]
        if namespace is not None:
            scope.append("namespace = {ns:String}")
        if event_type is not None:
            scope.append("type = {ty:String}")
        if subjects:
            scope.append("subject IN {s:Array(String)}")
        if within is not None:
            scope.append("time >= {lo:DateTime64(3, 'UTC')} AND time < {hi:DateTime64(3, 'UTC')}")
        lo, hi = within or (None, None)
        rows = self.ch.rows(
            f"SELECT 1 FROM {sql.qualified(self.db, EVENTS_TABLE)} PREWHERE {' AND '.join(scope)} LIMIT 1",
            parameters={"m": mark, "ns": namespace, "ty": event_type, "s": list(subjects), "lo": lo, "hi": hi},
        )
        return bool(rows)

    def _mark(self, kind: str, at: datetime) -> None:
        self.ch.command(
            f"INSERT INTO {self._table} (kind, mark) VALUES ({{k:String}}, {{m:DateTime64(3, 'UTC')}})",
            parameters={"k": kind, "m": at},
        )
        if self.ch.embedded:
            intent, done = self._process.marks or (EPOCH, EPOCH)
            if kind == "intent":
                self._process.marks = Marks(max(intent, at), done)
            else:
                self._process.marks = Marks(max(intent, at), max(done, at))

    def initialize(self) -> None:
        """The first mark (idempotent): the server's now, once the inserts begun before it are stored, or the
        earliest cutover of a route if one is older (a meter built before the first roll is counted from its
        cutover on). Events stored before it are counted by the meters' backfills."""
        with self._exclusive():
            self._initialize()

    def _initialize(self) -> None:
        if self._process.initialized:
            return
        if self.ch.rows(f"SELECT count() FROM {self._table} WHERE kind = 'done'")[0][0]:
            self._process.initialized = True
            return
        now = server_now(self.ch)
        settle(self.ch, now)
        routes = self.ch.rows(f"SELECT count(), min(cutover) FROM {sql.qualified(self.db, routing.ROUTES_TABLE)}")
        first = min(now, utc_from_storage(routes[0][1])) if int(routes[0][0]) else now
        self._mark("intent", first)
        self._mark("done", first)
        self._process.initialized = True
        log.info("meter_roller_initialized", mark=first.isoformat())

    # --- rolls ---------------------------------------------------------------------------------

    def roll_once(self, *, force: bool = False) -> Roll | None:
        """One roll (or the redo of an interrupted one); None when nothing was stored since the mark (an
        idle roll costs one key read and writes nothing) unless `force`, which moves `done` to now anyway."""
        with self._exclusive():
            return self._roll(force)

    def catch_up(self, until: datetime) -> None:
        """Roll until every event stored before `until` is rolled up."""
        while self.marks().done < until:
            if self.roll_once(force=True) is None:
                time.sleep(0.05)

    def _roll(self, force: bool) -> Roll | None:
        started = time.monotonic()
        self._initialize()
        intent, done = self.marks()
        redo = intent > done
        if redo:
            hi = intent
            settle(self.ch, hi)
        else:
            if not force and not self.stored_since(done):
                return None  # idle: nothing to count, no mark to move (readers find no roll in progress)
            hi = server_now(self.ch)
            if hi <= done:
                return None
            if not self._routed():
                # No meter anywhere: nothing stored before `hi` counts for a meter. A route added after this
                # read has its cutover after the moment it became visible (the repository checks that when
                # it adds one), so after `hi`: that meter's backfill counts the range. Skip reading it.
                self._mark("done", hi)
                return Roll(done, hi, 0, time.monotonic() - started, False)
            settle(self.ch, hi)
            hi = self._bounded(done, hi)
        events = int(
            self.ch.rows(
                f"SELECT count() FROM {sql.qualified(self.db, EVENTS_TABLE)} "
                f"WHERE {INSERTED_AT} >= {{lo:DateTime64(3, 'UTC')}} AND {INSERTED_AT} < {{hi:DateTime64(3, 'UTC')}}",
                parameters={"lo": done, "hi": hi},
            )[0][0]
        )
        if events:
            if not redo:
                self._mark("intent", hi)  # before any row of the range can reach a rollup table
            token = f"roll:{to_millis(done)}:{to_millis(hi)}"
            self.ch.command(
                routing.roll_sql(self.db),
                parameters={"lo": done, "hi": hi},
                settings={**_ONE_BLOCK, "insert_deduplication_token": token},
            )
        self._mark("done", hi)
        roll = Roll(done, hi, events, time.monotonic() - started, redo)
        if redo or events >= LOG_ROLL_EVENTS or roll.seconds >= 1:
            log.info(  # a redo, a large or a slow roll; the usual once-a-second roll would flood the log
                "meter_roll",
                lo=done.isoformat(),
                hi=hi.isoformat(),
                events=events,
                redo=redo,
                seconds=round(roll.seconds, 3),
            )
        return roll

    def _routed(self) -> bool:
        """Whether any meter is routed (the routes table is small: one row per meter)."""
        found = self.ch.rows(f"SELECT count() FROM {sql.qualified(self.db, routing.ROUTES_TABLE)}")
        return bool(int(found[0][0]))

    def _bounded(self, lo: datetime, hi: datetime) -> datetime:
        """`hi`, or an earlier end so that [lo, end) holds about `max_events` events (whole inserts: rows of
        one insert share their `inserted_at`; a single insert larger than that is one roll)."""
        rows = self.ch.rows(
            f"SELECT {INSERTED_AT} FROM {sql.qualified(self.db, EVENTS_TABLE)} "
            f"WHERE {INSERTED_AT} >= {{lo:DateTime64(3, 'UTC')}} AND {INSERTED_AT} < {{hi:DateTime64(3, 'UTC')}} "
            f"ORDER BY {INSERTED_AT} LIMIT 1 OFFSET {{n:UInt64}}",
            parameters={"lo": lo, "hi": hi, "n": self.max_events},
        )
        if not rows:
            return hi
        end = utc_from_storage(rows[0][0])
        return end if end > lo else lo + timedelta(milliseconds=1)

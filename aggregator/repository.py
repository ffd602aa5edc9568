"""Meters and their rollups in ClickHouse (the imperative shell of the aggregator).

`ClickHouseMeterRepository` stores meter definitions in the `meters` table (ReplacingMergeTree keyed by
namespace, slug, id; read with FINAL) and owns each meter's rollup lifecycle on the shared router
(`routing`): add its route (the roller counts from its cutover on), backfill the past under a new rollup
id, point its views at it; rebuild behind a live build (new group-by keys); remove routes, rows and views.
Every step is idempotent and `reconcile` finishes whatever a crash interrupted (a meter left in state
`creating` is rebuilt from scratch; a meter of the per-meter design is moved to the router).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from clickhouse_connect.driver.exceptions import DatabaseError

from aggregator import routing, sql
from aggregator.meter import InvalidMeter, Meter, parse_meter
from aggregator.roller import ROLLUP_WRITE, ClickHouseRoller, server_now, settle
from common.clickhouse import ClickHouse
from common.clock import utc_from_storage
from common.events_table import EVENTS_TABLE, INSERTED_AT, events_table_ddl

log = structlog.get_logger(__name__)

CREATING, BACKFILLING, READY, DELETED, FAILED = "creating", "backfilling", "ready", "deleted", "failed"
USABLE = (BACKFILLING, READY)  # a backfilling meter answers from raw events until its rollup is complete
NO_CUTOVER = datetime.fromtimestamp(0, UTC)


@dataclass(frozen=True, slots=True)
class MeterStatus:
    """Where a stored meter's build stands: its state, the build's cutover and, while backfilling, the last
    event month (YYYYMM) whose backfill is complete (0: none yet)."""

    state: str
    cutover: datetime
    backfilled: int = 0

    @property
    def backfilled_through(self) -> datetime | None:
        """Events with a time before this instant are rolled up (the month after the last complete one)."""
        if not self.backfilled:
            return None
        year, month = divmod(self.backfilled, 100)
        return datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class _Unreadable:
    namespace: str | None
    body: dict[str, Any]
    reason: str


class BuildSuperseded(Exception):
    """The meter was deleted or rebuilt while this build's backfill ran: the backfill stops."""


class MeterBuildFailed(InvalidMeter):
    """ClickHouse refused to build a meter's rollups (its definition is valid JSON but not buildable)."""


# (month YYYYMM just completed, events done, events in all): a backfill's progress, for logs and tests.
Progress = Callable[[int, int, int], None]

# The route must exist before the cutover instant; this margin covers adding it.
CUTOVER_MARGIN = timedelta(milliseconds=300)


class ClickHouseMeterRepository:
    def __init__(self, ch: ClickHouse) -> None:
        self.failures: dict[str, str] = {}
        self.ch = ch
        self.db = ch.database
        self._family_views: set[str] = set()  # family tables whose view this process has seen created
        self.roller = ClickHouseRoller(ch)

    # --- schema --------------------------------------------------------------------------------

    @staticmethod
    def schema_sql(database: str) -> list[str]:
        """The meters' schema, in order (idempotent statements): the meters table, the server-side insert
        time on events and its index (see README: the roller), the shared rollup tables and the roller's marks."""
        return [
            events_table_ddl(database),
            sql.meters_table_ddl(database),
            sql.meters_backfilled_ddl(database),
            sql.inserted_at_ddl(database),
            sql.inserted_at_index_ddl(database),
            *routing.schema_ddl(database),
        ]

    def migrate(self) -> None:
        """The schema (`schema_sql`), `inserted_at` and its index materialised on parts written before they
        existed, the roller's first mark, and the move from counting at insert (a routing view on `events`,
        the earlier design) to the roller: the view goes and every meter is rebuilt (by `reconcile`)."""
        had_index = self._has_index()
        for stmt in self.schema_sql(self.db):
            self.ch.command(stmt)
        # Every family a live route counts into has its view (created with its first meter; this also
        # mends a database that lost one, or was recreated under this repository).
        self._family_views.clear()
        routes = sql.qualified(self.db, routing.ROUTES_TABLE)
        self._family_views_for(int(r[0]) for r in self.ch.rows(f"SELECT DISTINCT agg FROM {routes}"))
        # Parts written before the column existed would compute DEFAULT now64() at read time (always
        # "after" any cutover); materialise it once so old rows carry a fixed, earlier insert time.
        rows = self.ch.rows(
            "SELECT count() FROM system.parts AS p WHERE p.database = {db:String} AND p.table = {t:String} "
            "AND p.active AND p.name NOT IN (SELECT part_name FROM system.parts_columns WHERE database = {db:String} "
            "AND table = {t:String} AND active AND column = {c:String})",
            parameters={"db": self.db, "t": EVENTS_TABLE, "c": INSERTED_AT},
        )
        events = sql.qualified(self.db, EVENTS_TABLE)
        if int(rows[0][0]) > 0:
            log.info("materializing_inserted_at", parts=int(rows[0][0]))
            self.ch.command(f"ALTER TABLE {events} MATERIALIZE COLUMN {INSERTED_AT}", settings={"mutations_sync": 2})
        if not had_index:
            self.ch.command(
                f"ALTER TABLE {events} MATERIALIZE INDEX {sql.INSERTED_AT_INDEX}", settings={"mutations_sync": 2}
            )
        if self._has_router_view():
            # Counted at insert until now: the view goes, then the roller starts and every meter is rebuilt
            # under it (its rows from the view's time are dropped with its build).
            self.ch.command(routing.drop_router_view_sql(self.db))
            moved = [m for m, state, _ in self.all_rows() if state in USABLE]
            log.info("meters_moving_to_roller", meters=len(moved))
            if moved:
                self._write_many(moved, CREATING, NO_CUTOVER)
            # Their routes counted at insert: the roller starts after them (the rebuilds add new ones).
            routes = sql.qualified(self.db, routing.ROUTES_TABLE)
            self.ch.command(f"ALTER TABLE {routes} DELETE WHERE 1", settings={"mutations_sync": 2})
        self.roller.initialize()

    def _has_index(self) -> bool:
        rows = self.ch.rows(
            "SELECT count() FROM system.data_skipping_indices WHERE database = {db:String} AND table = {t:String} "
            "AND name = {n:String}",
            parameters={"db": self.db, "t": EVENTS_TABLE, "n": sql.INSERTED_AT_INDEX},
        )
        return int(rows[0][0]) > 0

    def _has_router_view(self) -> bool:
        rows = self.ch.rows(
            "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {n:String}",
            parameters={"db": self.db, "n": routing.ROUTER_VIEW},
        )
        return int(rows[0][0]) > 0

    # --- meter rows ----------------------------------------------------------------------------

    def _write(self, meter: Meter, state: str, cutover: datetime, backfilled: int = 0) -> None:
        self._write_many([meter], state, cutover, backfilled)

    def _write_many(self, meters: list[Meter], state: str, cutover: datetime, backfilled: int = 0) -> None:
        rows = []
        for meter in meters:
            body = meter.to_api()
            body.pop("createdAt", None)
            body.pop("updatedAt", None)
            rows.append(
                [
                    meter.namespace or "",
                    meter.slug,
                    meter.id,
                    orjson.dumps(body).decode(),
                    state,
                    cutover,
                    meter.created_at or datetime.now(UTC),
                    time.time_ns(),
                    backfilled,
                ]
            )
        self.ch.call(
            lambda c: c.insert(
                sql.qualified(self.db, sql.METERS_TABLE),
                rows,
                column_names=[
                    "namespace",
                    "slug",
                    "id",
                    "definition",
                    "state",
                    "cutover",
                    "created_at",
                    "version",
                    "backfilled",
                ],
                settings=self.ch.supported({"insert_deduplicate": 0, "deduplicate_insert": "disable"}),
            )
        )

    def all_rows(self) -> list[tuple[Meter, str, datetime]]:
        """Every stored meter that still parses. One that does not (stored by an older version with rules
        since tightened) is logged and listed by `unreadable()`, never allowed to stop a start."""
        return [(m, st.state, st.cutover) for m, st in self.statuses()]

    def statuses(self) -> list[tuple[Meter, MeterStatus]]:
        """Every stored meter that still parses, with where its build stands."""
        return [row for row in self._rows() if not isinstance(row, _Unreadable)]

    def unreadable(self) -> list[tuple[str | None, dict[str, Any], str]]:
        return [(row.namespace, row.body, row.reason) for row in self._rows() if isinstance(row, _Unreadable)]

    def _rows(self) -> list[tuple[Meter, MeterStatus] | _Unreadable]:
        rows = self.ch.rows(
            f"SELECT namespace, id, definition, state, cutover, created_at, backfilled FROM "
            f"{sql.qualified(self.db, sql.METERS_TABLE)} FINAL ORDER BY namespace, slug"
        )
        out: list[tuple[Meter, MeterStatus] | _Unreadable] = []
        for namespace, meter_id, definition, state, cutover, created_at, backfilled in rows:
            if state == DELETED:
                continue
            body = orjson.loads(definition)
            try:
                meter = parse_meter(
                    body, meter_id=meter_id, namespace=namespace or None, created_at=utc_from_storage(created_at)
                )
            except InvalidMeter as exc:
                log.error("meter_unreadable", id=meter_id, namespace=namespace, reason=str(exc))  # noqa: TRY400
                reason = f"the stored definition is invalid: {exc}"
                out.append(_Unreadable(namespace or None, {**body, "id": meter_id}, reason))
                continue
            out.append((meter, MeterStatus(str(state), utc_from_storage(cutover), int(backfilled))))
        return out

    def live(self) -> list[Meter]:
        """The meters that can be queried: ready, or backfilling (answered from raw events meanwhile)."""
        return [m for m, state, _ in self.all_rows() if state in USABLE]

    # --- rollup lifecycle ------------------------------------------------------------------------

    def create(self, meter: Meter) -> None:
        """Create and backfill before returning (config meters, tests): `begin` then `complete`."""
        cutover = self.begin(meter)
        self.complete(meter, cutover)

    def begin(self, meter: Meter) -> datetime:
        """The fast part of a creation (well under a second, whatever the history): record the meter, route
        it from a cutover on and point its views at raw events; the meter is `backfilling` and queryable at
        once. `complete` rolls up the past. All or nothing: if ClickHouse refuses any step, the rollups are
        dropped and the meter is recorded as deleted, so a failed create leaves nothing behind."""
        self._write(meter, CREATING, NO_CUTOVER)
        try:
            return self.start_build(meter)
        except DatabaseError as exc:
            self._drop_rollups(meter)
            self._write(meter, DELETED, NO_CUTOVER)
            reason = str(exc).strip().splitlines()[0][:300]
            log.warning("meter_create_failed", slug=meter.slug, id=meter.id, reason=reason)
            raise MeterBuildFailed(f"ClickHouse cannot build meter {meter.slug!r}: {reason}", field=None) from None

    def build(self, meter: Meter, *, replace: bool = False) -> None:
        """A whole build at once: `start_build` then `complete`."""
        self.complete(meter, self.start_build(meter, replace=replace))

    def start_build(self, meter: Meter, *, replace: bool = False) -> datetime:
        """Route the meter from a cutover on and record it `backfilling` with that cutover; its views read
        raw events (unless `replace`: an earlier build stays live, its views answer, until `complete`)."""
        if not replace:
            self._drop_rollups(meter)
        self._family_views_for([routing.AGG_CODE[meter.aggregation]])
        cutover = server_now(self.ch) + CUTOVER_MARGIN
        rid = routing.rollup_id(meter, cutover)
        self._insert_routes([routing.route_row(meter, cutover)])
        if server_now(self.ch) >= cutover:
            # The route may have been added after the cutover: rows in between would be missed.
            log.warning("meter_cutover_missed_retrying", slug=meter.slug)
            self.ch.command(routing.delete_routes_sql(self.db, meter, only=rid), settings={"mutations_sync": 2})
            return self.start_build(meter, replace=replace)
        if not replace:
            for tier in sql.TIERS:
                self.ch.command(routing.raw_view_ddl(self.db, meter, tier))
        self._write(meter, BACKFILLING, cutover)
        return cutover

    def complete(
        self, meter: Meter, cutover: datetime, *, resume_from: int | None = None, progress: Progress | None = None
    ) -> None:
        """Backfill what was stored before the cutover, point the views at the rollup, mark the meter ready
        and forget earlier builds. `resume_from`: a backfill interrupted after that month (YYYYMM, 0 for
        none) continues with the next one, its unfinished month's rows forgotten first."""
        rid = routing.rollup_id(meter, cutover)
        settle(self.ch, cutover)
        started = time.monotonic()
        if resume_from is not None:
            self.ch.command(
                routing.delete_backfill_sql(self.db, meter, rid, resume_from + 1 if resume_from else None),
                settings={"mutations_sync": 2},
            )
        try:
            self._backfill(meter, cutover, after=resume_from or 0, progress=progress)
            stored = self._check_building(meter, cutover)
        except BuildSuperseded:
            # Deleted or rebuilt meanwhile: whoever did it removed this build's routes; its own rows go too.
            self.ch.command(routing.delete_backfill_sql(self.db, meter, rid, None))
            log.info("meter_backfill_superseded", slug=meter.slug, id=meter.id)
            return
        # The views switch to the rollup once the roller has counted from the cutover on: from then on,
        # rollup (before the roller's mark) + raw tail (after it) holds every event once.
        self.roller.catch_up(cutover)
        for tier in sql.TIERS:
            self.ch.command(routing.meter_view_ddl(self.db, meter, rid, tier))
        self._write(stored, READY, cutover)
        self._drop_rollups(meter, keep=rid)
        log.info("meter_backfilled", slug=meter.slug, id=meter.id, seconds=round(time.monotonic() - started, 3))

    def create_many(self, meters: list[Meter]) -> None:
        """Build new meters under one cutover, with one wait for older inserts (bulk creation: the
        benchmark's 10,000 meters). A failure leaves them `creating`, rebuilt one by one at the next start."""
        if not meters:
            return
        self._write_many(meters, CREATING, NO_CUTOVER)
        self._family_views_for(routing.AGG_CODE[m.aggregation] for m in meters)
        # Adding the routes takes longer with their number: the cutover leaves room for it.
        cutover = server_now(self.ch) + CUTOVER_MARGIN + timedelta(milliseconds=len(meters) // 5)
        self._insert_routes([routing.route_row(m, cutover) for m in meters])
        if server_now(self.ch) >= cutover:
            log.warning("meter_cutover_missed_retrying", meters=len(meters))
            routes = sql.qualified(self.db, routing.ROUTES_TABLE)
            self.ch.command(
                f"ALTER TABLE {routes} DELETE WHERE cutover = {{c:DateTime64(3, 'UTC')}}",
                parameters={"c": cutover},
                settings={"mutations_sync": 2},
            )
            self.create_many(meters)
            return
        self._write_many(meters, CREATING, cutover)
        settle(self.ch, cutover)
        for meter in meters:
            self._backfill(meter, cutover, record=False)
        self.roller.catch_up(cutover)
        for meter in meters:
            for tier in sql.TIERS:
                self.ch.command(routing.meter_view_ddl(self.db, meter, routing.rollup_id(meter, cutover), tier))
        self._write_many(meters, READY, cutover)

    def _backfill(
        self,
        meter: Meter,
        cutover: datetime,
        *,
        after: int = 0,
        progress: Progress | None = None,
        record: bool = True,
    ) -> None:
        """Roll up the meter's events stored before the cutover, month by month (event-time partitions), so
        a long backfill shows its progress and each insert stays bounded; the months are disjoint and cover
        every row stored before the cutover. One dedupe token per month and tier: a retry counts once. Each
        complete month is recorded (`backfilled`): a restart continues after it. `after`: months up to it
        are done already. `record=False` (bulk creation, all or nothing: the meters stay `creating` until
        every one is done, and are rebuilt from nothing after a failure) records no month and does not
        check the build against the meter's row."""
        rid = routing.rollup_id(meter, cutover)
        started = time.monotonic()
        months = [(int(m), int(n)) for m, n in self.ch.rows(sql.backfill_months_sql(self.db, meter, cutover))]
        total = sum(n for _, n in months)
        done = sum(n for m, n in months if m <= after)
        for month, events in months:
            if month <= after:
                continue
            for tier in sql.TIERS:
                self.ch.command(
                    routing.backfill_sql(self.db, meter, cutover, tier, month),
                    settings={
                        "insert_deduplication_token": f"backfill:{rid}:{tier.column}:{month}",
                        "log_comment": ROLLUP_WRITE,
                    },
                )
            done += events
            if record:
                stored = self._check_building(meter, cutover)
                self._write(stored, BACKFILLING, cutover, backfilled=month)
            if progress is not None:
                progress(month, done, total)
            log.info(
                "meter_backfill_progress",
                slug=meter.slug,
                month=month,
                events=done,
                of_events=total,
                seconds=round(time.monotonic() - started, 3),
            )

    def _family_views_for(self, codes: Iterable[int]) -> None:
        """The views of these aggregation codes' families (`routing.AGG_CODE`), created before the routes
        that count into them (a route without its family's view would count into nothing) and before a
        cutover is chosen (the CREATE takes time). A view, once created, stays: other processes may route
        into it."""
        for fam in routing.families_of(codes):
            if fam.table not in self._family_views:
                self.ch.command(routing.family_view_ddl(self.db, fam))
                self._family_views.add(fam.table)

    def _insert_routes(self, rows: list[list[object]]) -> None:
        self.ch.call(
            lambda c: c.insert(sql.qualified(self.db, routing.ROUTES_TABLE), rows, column_names=routing.ROUTE_COLUMNS)
        )

    def update_definition(self, meter: Meter) -> None:
        """A new name, description or metadata: the definition row changes, the rollup does not."""
        for stored, status in self.statuses():
            if stored.id == meter.id and status.state in USABLE:
                self._write(meter, status.state, status.cutover, status.backfilled)
                return
        raise MeterBuildFailed(f"meter {meter.slug!r} is not ready", field=None)

    def rebuild(self, meter: Meter) -> None:
        """New group-by keys: a new build behind the live one, switched when complete. If ClickHouse refuses,
        the new build is removed and the live one is restored as it was (definition, views, rows)."""
        live = [(m, c) for m, state, c in self.all_rows() if m.id == meter.id and state == READY]
        if not live:
            raise MeterBuildFailed(f"meter {meter.slug!r} is not ready (its backfill is still running)", field=None)
        old, cutover = live[0]
        try:
            self.build(meter, replace=True)
        except DatabaseError as exc:
            keep = routing.rollup_id(old, cutover)
            self.ch.command(routing.delete_routes_sql(self.db, old, keep=keep), settings={"mutations_sync": 2})
            self.ch.command(routing.delete_rows_sql(self.db, old, keep=keep))
            for tier in sql.TIERS:
                self.ch.command(routing.meter_view_ddl(self.db, old, keep, tier))
            self._write(old, READY, cutover)
            reason = str(exc).strip().splitlines()[0][:300]
            log.warning("meter_rebuild_failed", slug=meter.slug, id=meter.id, reason=reason)
            raise MeterBuildFailed(f"ClickHouse cannot rebuild meter {meter.slug!r}: {reason}", field=None) from None

    def drop(self, meter: Meter) -> None:
        self._write(meter, DELETED, NO_CUTOVER)
        self._drop_rollups(meter)
        log.info("meter_dropped", slug=meter.slug, id=meter.id)

    def _drop_rollups(self, meter: Meter, keep: str | None = None) -> None:
        """Stop routing the meter's builds (all, or all but `keep`) and forget their rows; without `keep`,
        drop its views too (and the per-meter tables of the earlier design)."""
        self.ch.command(routing.delete_routes_sql(self.db, meter, keep=keep), settings={"mutations_sync": 2})
        self.ch.command(routing.delete_rows_sql(self.db, meter, keep=keep))
        if keep is None:
            for stmt in routing.drop_views_sql(self.db, meter):
                self.ch.command(stmt)

    def reconcile(self, wanted_config: list[Meter], *, finish_backfills: bool = True) -> None:
        """Make the rollups match: config meters exist, half-built ones are rebuilt, deleted ones dropped,
        interrupted backfills resumed (unless `finish_backfills` is off: an API process resumes them in the
        background)."""
        statuses = self.statuses()
        wanted_ids = {m.id for m in wanted_config}
        known = {m.id: st.state for m, st in statuses}
        legacy = self._legacy_tables()
        for meter, status in statuses:
            state = status.state
            if state == READY and meter.rollup_table in legacy:
                # Built by the per-meter design (a table and two views per meter): rebuild on the router.
                log.info("meter_moving_to_router", slug=meter.slug, id=meter.id)
                self._build_or_mark_failed(meter)
            elif meter.namespace is None and meter.id not in wanted_ids and state != DELETED:
                self.drop(meter)  # removed from (or changed in) the config file
            elif state == DELETED:
                self._drop_rollups(meter)
            elif state in (CREATING, FAILED):
                log.info("meter_rebuilding", slug=meter.slug, id=meter.id)
                self._build_or_mark_failed(meter)
            elif state == BACKFILLING and finish_backfills:
                self.resume(meter, status)
        for meter in wanted_config:
            if known.get(meter.id) not in USABLE:
                self._write(meter, CREATING, NO_CUTOVER)
                self._build_or_mark_failed(meter)

    def resume(self, meter: Meter, status: MeterStatus, progress: Progress | None = None) -> None:
        """Continue an interrupted backfill under its own cutover: the months recorded as complete stay, the
        unfinished one is redone from nothing; the router has counted everything from the cutover on."""
        if status.backfilled:
            log.info("meter_backfill_resuming", slug=meter.slug, id=meter.id, after_month=status.backfilled)
        else:
            log.info("meter_backfill_starting", slug=meter.slug, id=meter.id)
        self.complete(meter, status.cutover, resume_from=status.backfilled, progress=progress)

    def _check_building(self, meter: Meter, cutover: datetime) -> Meter:
        """The meter as stored now (its name or metadata may have changed meanwhile), if this build is
        still the one it names; else BuildSuperseded."""
        for stored, status in self.statuses():
            if stored.id == meter.id and status.state == BACKFILLING and status.cutover == cutover:
                return stored
        raise BuildSuperseded(meter.id)

    def status(self, meter_id: str) -> MeterStatus | None:
        return next((st for m, st in self.statuses() if m.id == meter_id), None)

    def _legacy_tables(self) -> set[str]:
        rows = self.ch.rows(
            "SELECT name FROM system.tables WHERE database = {db:String} AND startsWith(name, 'meter_rollup_') "
            "AND engine != 'View'",
            parameters={"db": self.db},
        )
        return {str(r[0]) for r in rows}

    def _build_or_mark_failed(self, meter: Meter) -> None:
        """Start-up never fails because of one meter: one ClickHouse refuses is skipped, logged and marked
        failed (listed with its reason by GET /api/v1/meters), and retried at the next start."""
        try:
            self.build(meter)
        except DatabaseError as exc:
            reason = str(exc).strip().splitlines()[0][:300]
            log.error(  # noqa: TRY400 - the reason is the whole story; a traceback of SQL adds nothing
                "meter_build_failed", slug=meter.slug, id=meter.id, namespace=meter.namespace, reason=reason
            )
            self._drop_rollups(meter)
            self._write(meter, FAILED, NO_CUTOVER)
            self.failures[meter.id] = reason

    def failed(self) -> list[tuple[str | None, dict[str, Any], str]]:
        """Meters that are not usable (API bodies) and why: rollups ClickHouse refused, or a stored
        definition that no longer parses."""
        refused = [
            (m.namespace, m.to_api(), self.failures.get(m.id, "ClickHouse refused to build the meter's rollups"))
            for m, state, _ in self.all_rows()
            if state == FAILED
        ]
        return refused + self.unreadable()

    def subjects(self, meter: Meter, namespace: str) -> list[str]:
        """The subjects with counted events: from the hour rollup, and the raw tail the roller has not
        counted yet (events stored since its mark)."""
        rows = self.ch.rows(
            f"SELECT subject FROM (SELECT subject FROM {sql.qualified(self.db, sql.tier_table(meter, sql.HOUR))} "
            "WHERE namespace = {ns:String} "
            f"UNION DISTINCT SELECT subject FROM {sql.qualified(self.db, EVENTS_TABLE)} "
            f"PREWHERE namespace = {{ns:String}} AND {INSERTED_AT} >= {{mark:DateTime64(3, 'UTC')}} "
            f"WHERE {sql.meter_filter(meter)}) ORDER BY subject",
            parameters={"ns": namespace, "mark": self.roller.marks().done},
        )
        return [str(r[0]) for r in rows]

    def tier_stats(self, meter: Meter) -> sql.TierStats:
        """Row counts of the meter's minute and hour rows (unmerged parts count: an estimate) and its number
        of subjects."""
        counts = {}
        for tier in sql.TIERS:
            view = sql.qualified(self.db, sql.tier_table(meter, tier))
            counts[tier.column] = int(self.ch.rows(f"SELECT count() FROM {view}")[0][0])
        subjects = self.ch.rows(
            f"SELECT uniq(namespace, subject) FROM {sql.qualified(self.db, sql.tier_table(meter, sql.HOUR))}"
        )[0][0]
        return sql.TierStats(
            minute_rows=counts[sql.MINUTE.column], hour_rows=counts[sql.HOUR.column], subjects=int(subjects)
        )

    def stored_after(
        self, meter: Meter, namespace: str, subjects: Sequence[str], before: datetime, after: datetime
    ) -> bool:
        """Was any event of the meter's type for these subjects, with time < before, stored after `after`?

        Narrow on purpose: one filtered scan that stops at the first hit (~3 ms for 1M events of one subject
        here), where max(stored_at) over the same rows costs ~40 ms and grows with history."""
        rows = self.ch.rows(
            f"SELECT 1 FROM {sql.qualified(self.db, EVENTS_TABLE)} "
            "WHERE namespace = {ns:String} AND type = {ty:String} AND subject IN {s:Array(String)} "
            "AND time < {before:DateTime64(3, 'UTC')} AND stored_at > {after:DateTime64(3, 'UTC')} LIMIT 1",
            parameters={
                "ns": namespace,
                "ty": meter.event_type,
                "s": list(subjects),
                "before": before.astimezone(UTC),
                "after": after.astimezone(UTC),
            },
        )
        return bool(rows)

    def query_rows(self, text: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.ch.rows(text, parameters=params)]

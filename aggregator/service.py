"""The meter service: create/list/get/delete meters, run meter queries. Async shell over the repository.

ClickHouse calls run in a worker thread (`ClickHouse.run` semantics via asyncio.to_thread). Mutations are
serialised in-process by a lock; the live-meter cache is refreshed after each mutation and every
`cache_seconds` (another process may have created or deleted a meter).

A created meter is answered at once (`backfilling`, queried from raw events) while its backfill runs in a
background task of this process; a backfill left unfinished (a restart, a failure) is resumed by the next
`load`/`start`, one process at a time per meter (`catalog_lock` across API replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import structlog

from aggregator import sql
from aggregator.meter import InvalidMeter, Meter, new_meter_id, parse_meter, validation_error
from aggregator.query import (
    NO_SUBJECT,
    InvalidQuery,
    QueryParams,
    Row,
    check_customers,
    shape_rows,
    to_query,
    unknown_key,
)
from aggregator.repository import BACKFILLING, USABLE, ClickHouseMeterRepository, MeterStatus
from aggregator.roller import Marks
from common.clock import Clock, SystemClock, format_time
from common.cloudevents import CloudEvent
from common.errors import Conflict, NotFound
from common.usage import CatalogLock, CustomerDirectory, MeterRef, MeterUseGuard

log = structlog.get_logger(__name__)

STATS_SECONDS = 60.0  # how stale the tier planner's row counts may be (they only steer speed, never answers)
BACKFILL_RETRY_SECONDS = (1.0, 60.0)  # a failed backfill is retried with backoff between these bounds
# A read waits for a roll being written (or reads again after one that overlapped it) this long at most,
# polling the marks; then it is answered from raw events.
READ_WAIT_SECONDS = 2.0
READ_POLL_SECONDS = 0.01
ROLL_RETRY_SECONDS = (1.0, 30.0)  # a failed roll is retried with backoff between these bounds


class MeterNotFound(NotFound):
    def __init__(self, id_or_slug: str) -> None:
        super().__init__(f"meter {id_or_slug!r} not found", meter=id_or_slug)


class MeterInUse(Conflict):
    def __init__(self, slug: str, features: list[str]) -> None:
        super().__init__(
            f"meter {slug} is used by feature(s) {', '.join(features)}: archive them first",
            meter=slug,
            features=features,
        )


class MeterExists(Conflict):
    def __init__(self, slug: str) -> None:
        super().__init__(f"a meter with slug {slug} already exists", meter=slug)


class MeterQuotaExceeded(Conflict):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"quota reached: at most {limit} meters per namespace (METERGATE_QUOTAS__METERS_PER_NAMESPACE)",
            quota="meters_per_namespace",
            limit=limit,
        )


class GroupByInUse(Conflict):
    def __init__(self, slug: str, keys: list[str], features: list[str]) -> None:
        super().__init__(
            f"meter {slug}: group-by key(s) {', '.join(keys)} cannot be removed or changed while feature(s) "
            f"{', '.join(features)} use the meter (adding keys is always possible)",
            meter=slug,
            keys=keys,
            features=features,
        )


class MeterBackfilling(Conflict):
    def __init__(self, slug: str) -> None:
        super().__init__(
            f"meter {slug} is still backfilling: its group-by keys can change once it is READY (GET the meter)",
            meter=slug,
        )


UPDATABLE = frozenset({"name", "description", "metadata", "groupBy"})


class ConfigMeterReadOnly(Conflict):
    def __init__(self, slug: str) -> None:
        super().__init__(f"meter {slug} is defined in the meters config file: remove it there", meter=slug)


class NoMeterGuard:
    async def features_using_meter(self, namespace: str, meter_slug: str) -> list[str]:  # noqa: ARG002
        return []


class MeterService:
    def __init__(
        self,
        repository: ClickHouseMeterRepository,
        *,
        config_meters: list[Meter] | None = None,
        guard: MeterUseGuard | None = None,
        clock: Clock | None = None,
        cache_seconds: float = 2.0,
        max_meters: int = 200,
        roll_seconds: float = 1.0,
    ) -> None:
        self.repository = repository
        self.config_meters = list(config_meters or [])
        self.guard: MeterUseGuard = guard or NoMeterGuard()
        self.clock: Clock = clock or SystemClock()
        self.cache_seconds = cache_seconds
        self.max_meters = max_meters
        self.roll_seconds = roll_seconds
        self._roller: asyncio.Task[None] | None = None
        self._stop_rolling = asyncio.Event()
        self._lock = asyncio.Lock()
        self._meters: list[Meter] = []
        self._status: dict[str, MeterStatus] = {}
        self._backfills: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        self._loaded_at = float("-inf")
        self._tier_stats: dict[str, tuple[float, sql.TierStats]] = {}
        self.customers: CustomerDirectory | None = None
        self.catalog_lock: CatalogLock | None = None

    def set_guard(self, guard: MeterUseGuard) -> None:
        """Entitlements register who uses meters (DELETE of a used meter: 409)."""
        self.guard = guard

    def set_catalog_lock(self, lock: CatalogLock) -> None:
        """Meter create, update and delete hold this lock too, so two API processes cannot create one slug twice;
        the roller holds it for each roll, so one process at a time rolls up."""
        self.catalog_lock = lock
        self.repository.roller.share_lock(lock.hold_sync)

    @contextlib.asynccontextmanager
    async def _changing(self, namespace: str) -> AsyncIterator[None]:
        """One catalogue change at a time: in this process, and across processes through `catalog_lock`."""
        async with self._lock:
            if self.catalog_lock is None:
                yield
            else:
                async with self.catalog_lock.hold(f"metergate:meters:{namespace}"):
                    yield

    def set_customers(self, customers: CustomerDirectory) -> None:
        """Entitlements provide customers' usage attribution (`filterCustomerId`, `groupBy=customer_id`)."""
        self.customers = customers

    async def load(self) -> None:
        """Read the live meters (the API process; `metergate migrate` builds the rollups) and resume the
        backfills left unfinished, in the background."""
        await self._refresh()
        for meter in self._meters:
            status = self._status.get(meter.id)
            if status is not None and status.state == BACKFILLING:
                self._spawn_backfill(meter, status.cutover)

    def start_rolling(self) -> None:
        """Start the roller of this process (after `set_catalog_lock` when API processes share a database:
        a roll always holds it). Idempotent."""
        if self._roller is None and not self._closed:
            self._roller = asyncio.create_task(self._roll_loop(), name="meter-roller")

    async def _roll_loop(self) -> None:
        """Roll up the events stored since the roller's mark, every `roll_seconds` (at once again while a
        backlog is being caught up in bounded rolls); failures are retried with backoff, nothing is lost:
        the next roll starts from the mark. `close` lets the roll in flight finish (its worker thread holds
        connections and, across replicas, the shared lock)."""
        delay = ROLL_RETRY_SECONDS[0]
        roller = self.repository.roller
        while not self._stop_rolling.is_set():
            try:
                roll = await asyncio.to_thread(roller.roll_once)
                delay = ROLL_RETRY_SECONDS[0]
                behind = roll is not None and roll.events >= roller.max_events
                pause = 0 if behind else self.roll_seconds
            except Exception as exc:  # noqa: BLE001 - any failure: the next roll redoes it from the marks
                log.warning("meter_roll_failed", error=str(exc)[:300], retry_s=delay)
                pause, delay = delay, min(delay * 2, ROLL_RETRY_SECONDS[1])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_rolling.wait(), timeout=pause)

    async def start(self) -> None:
        """Migrate and reconcile (idempotent), then `load`: for tests and single-process use."""
        await asyncio.to_thread(self.repository.migrate)
        await asyncio.to_thread(lambda: self.repository.reconcile(self.config_meters, finish_backfills=False))
        await self.load()
        self.start_rolling()

    async def close(self) -> None:
        """Stop the backfills running here; each resumes from its last complete month at the next start."""
        self._closed = True
        tasks = list(self._backfills.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.stop_rolling()

    async def stop_rolling(self) -> None:
        """No new roll starts; the one in flight (a worker thread holding connections and, across replicas,
        the shared lock) finishes. Idempotent."""
        if self._roller is not None:
            self._stop_rolling.set()
            await asyncio.gather(self._roller, return_exceptions=True)

    async def _refresh(self) -> None:
        rows = await asyncio.to_thread(self.repository.statuses)
        self._status = {m.id: st for m, st in rows}
        self._meters = [m for m, st in rows if st.state in USABLE]
        self._loaded_at = time.monotonic()

    def status(self, meter: Meter) -> dict[str, Any]:
        """The meter's build, for its API resource: `status` READY or BACKFILLING and, while backfilling,
        `backfilledThrough` (events before it are rolled up; null until a first month is)."""
        status = self._status.get(meter.id)
        if status is None or status.state != BACKFILLING:
            return {"status": "READY"}
        through = status.backfilled_through
        return {"status": "BACKFILLING", "backfilledThrough": format_time(through) if through else None}

    def backfilling(self, meter: Meter) -> bool:
        status = self._status.get(meter.id)
        return status is not None and status.state == BACKFILLING

    # --- background backfills ----------------------------------------------------------------------

    def _spawn_backfill(self, meter: Meter, cutover: datetime) -> None:
        running = self._backfills.get(meter.id)
        if self._closed or (running is not None and not running.done()):
            return
        task = asyncio.create_task(self._backfill(meter, cutover), name=f"meter-backfill-{meter.id}")
        self._backfills[meter.id] = task

    async def _backfill(self, meter: Meter, cutover: datetime) -> None:
        """Complete one build: under the meter's backfill lock (one process at a time), only if the stored
        status still names this build, resuming after its last complete month; retried with backoff on
        failure (the meter stays queryable from raw events meanwhile)."""
        delay = BACKFILL_RETRY_SECONDS[0]
        while True:
            try:
                async with self._backfill_lock(meter.id):
                    status = await asyncio.to_thread(self.repository.status, meter.id)
                    if status is None or status.state != BACKFILLING or status.cutover != cutover:
                        return  # finished, deleted or rebuilt by someone else
                    await asyncio.to_thread(self.repository.resume, meter, status)
                await self._refresh()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: retried, never lost
                log.warning("meter_backfill_failed", slug=meter.slug, id=meter.id, error=str(exc)[:300], retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKFILL_RETRY_SECONDS[1])

    @contextlib.asynccontextmanager
    async def _backfill_lock(self, meter_id: str) -> AsyncIterator[None]:
        if self.catalog_lock is None:
            yield
        else:
            async with self.catalog_lock.hold(f"metergate:backfill:{meter_id}"):
                yield

    async def wait_backfills(self) -> None:
        """Wait for the backfills running in this process (tests, `metergate migrate`-like callers)."""
        while tasks := [t for t in self._backfills.values() if not t.done()]:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def failed(self, namespace: str) -> list[tuple[dict[str, Any], str]]:
        """Meters that exist but cannot be used (skipped at start-up), as API bodies with the reason."""
        rows = await asyncio.to_thread(self.repository.failed)
        return [(body, why) for ns, body, why in rows if ns in (None, namespace)]

    async def meters(self, namespace: str) -> list[Meter]:
        if time.monotonic() - self._loaded_at > self.cache_seconds:
            await self._refresh()
        return [m for m in self._meters if m.namespace in (None, namespace)]

    async def get(self, namespace: str, id_or_slug: str) -> Meter:
        for meter in await self.meters(namespace):
            if id_or_slug in (meter.id, meter.slug):
                return meter
        raise MeterNotFound(id_or_slug)

    async def create(self, namespace: str, body: Any) -> Meter:
        meter = parse_meter(body, meter_id=new_meter_id(), namespace=namespace, created_at=self.clock.now())
        async with self._changing(namespace):
            await self._refresh()
            mine = [m for m in await self.meters(namespace) if m.namespace == namespace]
            if any(m.slug == meter.slug for m in await self.meters(namespace)):
                raise MeterExists(meter.slug)
            if len(mine) >= self.max_meters:
                raise MeterQuotaExceeded(self.max_meters)
            cutover = await asyncio.to_thread(self.repository.begin, meter)
            await self._refresh()
        self._spawn_backfill(meter, cutover)
        log.info("meter_created", namespace=namespace, slug=meter.slug, id=meter.id, backfilling=True)
        return meter

    async def update(self, namespace: str, id_or_slug: str, body: Any) -> Meter:
        """PUT as OpenMeter: name (default: the slug), description, metadata and groupBy (default: none) are
        replaced; the rest cannot change. New or changed group-by keys rebuild the meter's rollup behind the
        live one (backfilled, then switched); removing or changing a key a feature may filter on is refused
        while features use the meter."""
        if not isinstance(body, dict):
            raise InvalidMeter("a meter update must be a JSON object", field=None)
        unknown = sorted(set(body) - UPDATABLE)
        if unknown:
            raise InvalidMeter(
                f"field(s) {', '.join(unknown)} cannot be updated (only {', '.join(sorted(UPDATABLE))})",
                field=unknown[0],
            )
        async with self._changing(namespace):
            await self._refresh()
            current = await self.get(namespace, id_or_slug)
            if current.namespace is None:
                raise ConfigMeterReadOnly(current.slug)
            merged = {**current.to_api(), "name": current.slug, "description": None, "metadata": {}, "groupBy": {}}
            merged.update({k: v for k, v in body.items() if v is not None})
            merged.pop("createdAt", None)
            merged.pop("updatedAt", None)
            meter = parse_meter(merged, meter_id=current.id, namespace=namespace, created_at=current.created_at)
            dropped = sorted(k for k, path in current.group_by.items() if meter.group_by.get(k) != path)
            if dropped:
                features = await self.guard.features_using_meter(namespace, current.slug)
                if features:
                    raise GroupByInUse(current.slug, dropped, features)
            if meter.group_by == current.group_by:
                await asyncio.to_thread(self.repository.update_definition, meter)
            elif self.backfilling(current):
                raise MeterBackfilling(current.slug)
            else:
                await asyncio.to_thread(self.repository.rebuild, meter)
            await self._refresh()
        log.info(
            "meter_updated",
            namespace=namespace,
            slug=meter.slug,
            id=meter.id,
            rebuilt=bool(meter.group_by != current.group_by),
        )
        return meter

    async def delete(self, namespace: str, id_or_slug: str) -> None:
        async with self._changing(namespace):
            await self._refresh()
            meter = await self.get(namespace, id_or_slug)
            if meter.namespace is None:
                raise ConfigMeterReadOnly(meter.slug)
            features = await self.guard.features_using_meter(namespace, meter.slug)
            if features:
                raise MeterInUse(meter.slug, features)
            await asyncio.to_thread(self.repository.drop, meter)
            await self._refresh()
        running = self._backfills.pop(meter.id, None)
        if running is not None:
            running.cancel()  # its thread stops at the next month: the build is no longer the stored one
        log.info("meter_deleted", namespace=namespace, slug=meter.slug, id=meter.id)

    async def query(self, namespace: str, id_or_slug: str, params: QueryParams) -> tuple[sql.Query, list[Row]]:
        meter = await self.get(namespace, id_or_slug)
        found = None
        if params.customers:
            check_customers(params)
            if self.customers is None:
                raise InvalidQuery("customer filters need the entitlement service", field="filterCustomerId")
            found = await self.customers.attributions(namespace, params.customers)
        q = to_query(meter, namespace, params, customers=found)
        if q.subjects == (NO_SUBJECT,):
            return q, []  # the customers asked for have no subjects: no usage
        return q, await self.run(q)

    async def run(self, q: sql.Query) -> list[Row]:
        if self.backfilling(q.meter):
            # Its rollup is not complete yet: the exact answer comes from raw events alone.
            return await self._raw(q)
        if q.subjects and q.hour_tier:
            # A few subjects: the hour table is worth a table read only if it saves enough rows.
            stats = await self._stats(q.meter)
            q = dataclasses.replace(q, hour_tier=sql.hour_tier_pays(stats, len(q.subjects)))
        deadline = time.monotonic() + READ_WAIT_SECONDS
        while time.monotonic() < deadline:
            # The rollups hold the events stored before `done`; the tail since is read raw. While a roll is
            # being written (intent past done) the rollups may show part of it: wait for its done. A roll
            # that began during the query (intent past `done` afterwards): read again.
            before = await self._marks()
            if before.intent > before.done:
                await asyncio.sleep(READ_POLL_SECONDS)
                continue
            rows = await asyncio.to_thread(self._read, q, before.done)
            after = await self._marks()
            if after.intent <= before.done:
                return shape_rows(q, rows)
        # Rolls kept overlapping the reads (or a roll stopped half-way and waits for its redo): raw events.
        log.info("meter_read_from_raw", slug=q.meter.slug, waited_s=READ_WAIT_SECONDS)
        return await self._raw(q)

    async def _marks(self) -> Marks:
        """The roller's marks: kept in memory with the embedded engine (no thread hop), else read."""
        roller = self.repository.roller
        known = roller.known_marks()
        return known if known is not None else await asyncio.to_thread(roller.marks)

    def _read(self, q: sql.Query, done: datetime) -> list[tuple[Any, ...]]:
        """The rollups up to `done`, plus the raw tail stored since when there is one (one thread hop: each
        hop waits for the GIL behind the event loop)."""
        # No event stored since `done` (for this namespace, type and subjects, in the event time the rollups
        # answer for): the rollups alone answer (an event stored after this check is after the read, as for
        # any snapshot). A query that reads raw events only has no tail to check.
        within = sql.rollup_interval(q)
        roller = self.repository.roller
        tail = within is not None and roller.stored_since(
            done, q.namespace, q.meter.event_type, q.subjects, within=within
        )
        text, params = sql.build_query(self.repository.db, q, stored_from=done if tail else None)
        return self.repository.query_rows(text, params)

    async def _raw(self, q: sql.Query) -> list[Row]:
        text, params = sql.raw_query(self.repository.db, q)
        return shape_rows(q, await asyncio.to_thread(self.repository.query_rows, text, params))

    async def _stats(self, meter: Meter) -> sql.TierStats:
        """The planner's row counts for a meter, re-read at most every STATS_SECONDS."""
        cached = self._tier_stats.get(meter.id)
        if cached is None or time.monotonic() - cached[0] > STATS_SECONDS:
            cached = (time.monotonic(), await asyncio.to_thread(self.repository.tier_stats, meter))
            self._tier_stats[meter.id] = cached
        return cached[1]

    async def group_by_values(
        self, namespace: str, id_or_slug: str, key: str, start: str | None, end: str | None
    ) -> list[str]:
        """Distinct values of a group-by key among the meter's counted events in [from, to) (OpenMeter: from
        defaults to 24 hours ago when neither bound is given). Read from the rollups, exact at the edges."""
        meter = await self.get(namespace, id_or_slug)
        if key not in meter.group_by:
            raise InvalidQuery(unknown_key(meter, key), field="groupByKey")
        if start is None and end is None:
            start = format_time(self.clock.now() - timedelta(hours=24))
        q = to_query(meter, namespace, QueryParams(start=start, end=end, group_by=(key,)))
        # Only the group values matter: bounds "given" keep the cheapest plan (no per-row event minutes).
        rows = await self.run(dataclasses.replace(q, from_given=True, to_given=True))
        return sorted({r.group_by[key] for r in rows})

    async def subjects(self, namespace: str, id_or_slug: str) -> list[str]:
        meter = await self.get(namespace, id_or_slug)
        return await asyncio.to_thread(self.repository.subjects, meter, namespace)

    # --- ports for other packages ----------------------------------------------------------------

    async def get_meter(self, namespace: str, slug: str) -> MeterRef | None:
        """MeterCatalog (common.usage) for entitlements."""
        try:
            meter = await self.get(namespace, slug)
        except MeterNotFound:
            return None
        return MeterRef(
            slug=meter.slug,
            aggregation=meter.aggregation.value,
            event_type=meter.event_type,
            group_by=dict(meter.group_by),
        )

    def event_validation_error(self, namespace: str, event: CloudEvent) -> str | None:
        """Why a stored event is invalid for the namespace's meters (GET /api/v1/events), or None.

        Synchronous over the cached meters (refreshed at most `cache_seconds` late), as the events
        listing calls it per event.
        """
        meters = [m for m in self._meters if m.namespace in (None, namespace)]
        return validation_error(meters, event.type, event.data)

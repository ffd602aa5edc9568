"""When to evaluate: whenever a value can change.

- state changes (grant, void, reset, override, entitlement create): `entitlement_changed`;
- new usage (the ingest notification stream): `on_ingest`, for namespaces with an active threshold rule
  (only a threshold can be crossed by usage; the set of such namespaces is read again by every sweep, and
  a rule created or changed adds its namespace at once and starts a sweep: `rule_changed`);
- time: after each evaluation the next instant the engine knows changes the value by itself (period end,
  grant activation, expiry, recurrence) is put on a timer, so a crossing caused by a grant expiring is noticed
  at that instant, not at the next event;
- a sweep every `sweep_interval` re-evaluates every metered entitlement a rule covers: the safety net after a
  restart (timers live in memory) and for a test clock moved by hand.
Work is a queue of entitlement keys, deduplicated while queued, drained by one task: a burst of usage for one
subject costs one evaluation per entitlement, and a slow evaluation never blocks ingest or requests. Changed
subjects are deduplicated too, and looked up a namespace at a time (one query for up to `LOOKUP_CHUNK` of
them): ingest reports every subject of every batch, and a lookup per report would fall behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.orm import Session

from common.errors import NotFound
from common.ingest_notifications import IngestNotification
from entitlements.domain import Entitlement, EntitlementType, Grant
from entitlements.notifications.domain import RuleType
from entitlements.notifications.repository import NotificationRepository
from entitlements.notifications.service import NotificationService
from entitlements.service.entitlements import MAX_PAGE
from entitlements.service.terms import recurrence_of

log = structlog.get_logger(__name__)

Key = tuple[str, str]  # (namespace, entitlement id)
LOOKUP_CHUNK = 500  # subjects per entitlement search


def next_change(grants: Sequence[Grant], period_end: datetime | None, now: datetime) -> datetime | None:
    """The first instant after `now` at which the value changes with no new input (pure)."""
    candidates: list[datetime] = []
    if period_end is not None and period_end > now:
        candidates.append(period_end)
    for g in grants:
        end = min((t for t in (g.expires_at, g.voided_at) if t is not None), default=None)
        if g.effective_at > now:
            candidates.append(g.effective_at)
        if end is None or end > now:
            if end is not None:
                candidates.append(end)
            if g.recurrence is not None:
                nxt = recurrence_of(g.recurrence).after(max(now, g.effective_at))
                if end is None or nxt < end:
                    candidates.append(nxt)
    return min(candidates) if candidates else None


class NotificationWatcher:
    def __init__(
        self,
        service: NotificationService,
        *,
        sweep_interval: timedelta = timedelta(seconds=60),
        on_events: Callable[[], None] | None = None,
        concurrency: int = 8,
    ) -> None:
        self.service = service
        self.deps = service.deps
        self.sweep_interval = sweep_interval
        self._on_events = on_events
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        # Changed subjects not looked up yet, by namespace; `_subjects_idle` is set when none is pending or
        # being looked up.
        self._subjects: dict[str, set[str]] = {}
        self._subjects_wake = asyncio.Event()
        self._subjects_idle = asyncio.Event()
        self._subjects_idle.set()
        # Namespaces with an active threshold rule, as of the last sweep (None before the first: then every
        # namespace's usage is followed).
        self._threshold_namespaces: frozenset[str] | None = None
        self._queued: set[Key] = set()
        self._timers: list[tuple[datetime, Key]] = []
        self._timer_wake = asyncio.Event()
        self._sweep_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._work: set[asyncio.Future[Any]] = set()
        self._slots = asyncio.Semaphore(concurrency)
        self._running: set[Key] = set()
        self._rerun: set[Key] = set()
        self.evaluations = 0

    # ---- triggers ----

    def entitlement_changed(self, namespace: str, entitlement_id: str) -> None:
        key = (namespace, entitlement_id)
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def subject_changed(self, namespace: str, subject: str) -> None:
        """The subject's usage or entitlement state changed: evaluate its metered entitlements (soon, in order).

        Synchronous, so it can listen to the entitlement services' change hook and the ingest stream."""
        pending = self._subjects.get(namespace)
        if pending is None:
            pending = self._subjects[namespace] = set()
        pending.add(subject)
        self._subjects_idle.clear()
        self._subjects_wake.set()

    def on_ingest(self, notes: Sequence[IngestNotification]) -> None:
        """Follow the ingest notification stream: the subjects of a committed batch are evaluated again,
        in namespaces where a threshold rule can fire (new usage cannot trigger anything else). A lost
        notification only delays an evaluation to the next sweep; a duplicate costs one evaluation."""
        followed = self._threshold_namespaces
        for note in notes:
            if followed is None or note.namespace in followed:
                self.subject_changed(note.namespace, note.subject)

    # ---- lifecycle ----

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._drain(), name="notification-evaluate"),
            asyncio.create_task(self._expand_subjects(), name="notification-subjects"),
            asyncio.create_task(self._timer_loop(), name="notification-timers"),
            asyncio.create_task(self._sweep_loop(), name="notification-sweep"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        # Work already running in a thread is finished, not abandoned: the database may close right after.
        await asyncio.gather(*self._work, return_exceptions=True)

    async def _shielded(self, work: Awaitable[object]) -> None:
        """Run `work` so that cancelling the loop waits for it at close instead of leaving a thread behind."""
        task = asyncio.ensure_future(work)
        self._work.add(task)
        task.add_done_callback(self._work.discard)
        await asyncio.shield(task)

    async def idle(self) -> None:
        """Wait until every queued subject and evaluation is done (tests, benchmarks)."""
        while not self._subjects_idle.is_set():
            await self._subjects_idle.wait()
        await self._queue.join()

    # ---- work ----

    async def _metered_of_subjects(self, namespace: str, subjects: list[str]) -> list[Entitlement]:
        """The metered entitlements of these subjects (their own and their customers'), every page."""
        found: list[Entitlement] = []
        while True:
            page = await self.service.ent.entitlements.search(
                namespace,
                subject_keys=subjects,
                types=[EntitlementType.METERED.value],
                limit=MAX_PAGE,
                offset=len(found),
            )
            found += page
            if len(page) < MAX_PAGE:
                return [e for e in found if e.type is EntitlementType.METERED and e.deleted_at is None]

    async def evaluate_now(self, namespace: str, entitlement_id: str) -> int:
        try:
            found = await self.service.ent.entitlements.get(namespace, None, entitlement_id)
        except NotFound:
            return 0
        return await self._evaluate(namespace, found)

    async def _evaluate(self, namespace: str, ent: Entitlement) -> int:
        created = await self.service.evaluate(namespace, ent)
        self.evaluations += 1
        if created and self._on_events is not None:
            self._on_events()
        await self._schedule(namespace, ent)
        return created

    async def _schedule(self, namespace: str, ent: Entitlement) -> None:
        if ent.type is not EntitlementType.METERED or ent.deleted_at is not None:
            return
        now = self.deps.clock.now()
        grants = await self.service.ent.grants.list_for_entitlement(namespace, ent.owner_ref, ent.id)
        period = (await self.service.ent.balances.periods([ent], now)).get(ent.id)
        at = next_change(grants, period.end if period else None, now)
        if at is not None:
            heapq.heappush(self._timers, (at, (namespace, ent.id)))
            self._timer_wake.set()

    async def _expand_subjects(self) -> None:
        """Changed subjects -> their metered entitlements on the queue, a namespace and a chunk at a time."""
        while True:
            await self._subjects_wake.wait()
            self._subjects_wake.clear()
            while self._subjects:
                namespace = next(iter(self._subjects))
                pending = self._subjects[namespace]
                chunk = [pending.pop() for _ in range(min(LOOKUP_CHUNK, len(pending)))]
                if not pending:
                    del self._subjects[namespace]
                try:
                    for ent in await self._metered_of_subjects(namespace, sorted(chunk)):
                        self.entitlement_changed(namespace, ent.id)
                except Exception:
                    log.exception("notification_subject_lookup_failed", namespace=namespace, subjects=len(chunk))
            self._subjects_idle.set()

    async def _drain(self) -> None:
        """Up to `concurrency` evaluations at a time (their reads wait on threads), never two of one key."""
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            await self._slots.acquire()
            task = asyncio.ensure_future(self._evaluate_one(key))
            self._work.add(task)
            task.add_done_callback(self._work.discard)

    async def _evaluate_one(self, key: Key) -> None:
        try:
            if key in self._running:  # changed again while being evaluated: once more, after this one
                self._rerun.add(key)
                return
            self._running.add(key)
            try:
                await self.evaluate_now(*key)
            except Exception:
                log.exception("notification_evaluation_failed", namespace=key[0], entitlement_id=key[1])
            finally:
                self._running.discard(key)
                if key in self._rerun:
                    self._rerun.discard(key)
                    self.entitlement_changed(*key)
        finally:
            self._slots.release()
            self._queue.task_done()

    async def _timer_loop(self) -> None:
        while True:
            self._timer_wake.clear()
            now = self.deps.clock.now()
            while self._timers and self._timers[0][0] <= now:
                _, key = heapq.heappop(self._timers)
                self.entitlement_changed(*key)
            delay = (self._timers[0][0] - now).total_seconds() if self._timers else 3600.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_wake.wait(), max(0.01, min(delay, 3600.0)))

    def next_timer(self) -> datetime | None:
        """The earliest instant a timer is set for (None without timers)."""
        return self._timers[0][0] if self._timers else None

    def poke_timers(self) -> None:
        """Look at the timers now (the clock was moved by hand, e.g. a test clock)."""
        self._timer_wake.set()

    def sweep_soon(self) -> None:
        """Evaluate what the rules cover now, not at the next sweep."""
        self._sweep_wake.set()

    def rule_changed(self, namespace: str) -> None:
        """A rule of the namespace was created or changed: its usage is followed from now on (until a sweep
        finds no active threshold rule there), and what the rules cover is evaluated now."""
        if self._threshold_namespaces is not None:
            self._threshold_namespaces |= {namespace}
        self.sweep_soon()

    async def sweep(self) -> None:
        """Queue every metered entitlement of every namespace that has an active threshold rule."""

        def namespaces(session: Session) -> list[str]:
            return NotificationRepository(session).namespaces_with_rules(RuleType.BALANCE_THRESHOLD)

        followed = await self.deps.reading(namespaces)
        self._threshold_namespaces = frozenset(followed)
        for namespace in followed:
            offset = 0
            while True:
                page = await self.service.ent.entitlements.search(namespace, limit=1000, offset=offset)
                for ent in page:
                    if ent.type is EntitlementType.METERED:
                        self.entitlement_changed(namespace, ent.id)
                if len(page) < 1000:
                    break
                offset += len(page)

    async def _sweep_loop(self) -> None:
        while True:
            self._sweep_wake.clear()  # before the sweep: a rule changed while it runs asks for another
            try:
                await self._shielded(self.sweep())
            except Exception:
                log.exception("notification_sweep_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sweep_wake.wait(), self.sweep_interval.total_seconds())

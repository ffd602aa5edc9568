"""The shell around the balance engine: value, history and reset.

A read is: one consistent read transaction (entitlement, feature, grants, resets, recent snapshots) ->
pick the newest usable snapshot -> the engine plans windows -> one usage round trip -> the engine runs ->
new period-start snapshots are stored if nothing changed meanwhile. So a read costs what happened since
its snapshot, not the whole history.

Snapshots are a cache, never the truth. One is unusable when
- an input before its instant changed (backdated grant, void, reset): the engine's inputs digest differs,
  and the writes also delete snapshots from the change's instant on;
- a late event arrived: an event older than the snapshot's instant was stored after the snapshot was
  taken (UsageReader.stored_after its wall-clock creation time).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy.orm import Session

from common.errors import InvalidInput
from entitlements import engine
from entitlements.db.repositories import (
    EntitlementRepository,
    FeatureRepository,
    GrantRepository,
    ResetRepository,
    SnapshotRepository,
)
from entitlements.domain import (
    Entitlement,
    EntitlementNotFound,
    EntitlementType,
    Feature,
    NotMetered,
    Owner,
    OwnerRef,
    Reset,
    StoredSnapshot,
    new_id,
)
from entitlements.service.deps import Deps
from entitlements.service.entitlements import find_entitlement
from entitlements.service.owners import owner_of
from entitlements.service.terms import Inputs, PeriodView, period_at

log = structlog.get_logger(__name__)

ZERO = Decimal(0)
SNAPSHOT_CANDIDATES = 4
# Events become visible in ClickHouse a moment after their storage time is stamped: a snapshot counts as
# taken this much earlier than its wall time, so an event stored just before a read but not yet visible
# to it still invalidates the snapshot.
VISIBILITY_MARGIN = timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class Value:
    has_access: bool
    balance: Decimal | None = None
    usage: Decimal | None = None
    overage: Decimal | None = None
    total_available_grant_amount: Decimal | None = None
    config: str | None = None


def value_fields(v: Value) -> dict[str, Any]:
    """OpenMeter's EntitlementValue fields of a value (the value routes' body, without `asOf`)."""
    out: dict[str, Any] = {"hasAccess": v.has_access}
    if v.balance is not None:
        out.update(
            {
                "balance": v.balance,
                "usage": v.usage,
                "overage": v.overage,
                "totalAvailableGrantAmount": v.total_available_grant_amount,
            }
        )
    if v.config is not None:
        out["config"] = v.config
    return out


@dataclass(frozen=True, slots=True)
class Loaded:
    """An entitlement with what its value needs; `owner.subjects`: whose usage counts (read in the same transaction)."""

    entitlement: Entitlement
    feature: Feature
    inputs: Inputs | None
    snapshots: tuple[StoredSnapshot, ...]
    owner: Owner


@dataclass(frozen=True, slots=True)
class Computed:
    result: engine.Result
    start: engine.Snapshot
    bounds: tuple[datetime, ...]
    usage: tuple[Decimal, ...]


def _active_at(e: Entitlement, at: datetime) -> bool:
    return e.deleted_at is None or at < e.deleted_at


def needs_usage(loaded: Loaded, target: datetime) -> bool:
    """A metered entitlement read at or after measureUsageFrom: its value needs the engine and usage."""
    inputs = loaded.inputs
    return inputs is not None and target >= inputs.terms.measure_usage_from


def value_of(loaded: Loaded, target: datetime, computed: Computed | None) -> Value:
    """The value at `target` (OpenMeter's fields); `computed` is the engine's run when `needs_usage`."""
    ent = loaded.entitlement
    active = _active_at(ent, target)
    if ent.type is EntitlementType.BOOLEAN:
        return Value(has_access=active)
    if ent.type is EntitlementType.STATIC:
        return Value(has_access=active, config=ent.config)
    inputs = loaded.inputs
    assert inputs is not None
    if computed is None:  # before measure_usage_from
        return Value(
            has_access=active and inputs.terms.is_soft_limit,
            balance=ZERO,
            usage=ZERO,
            overage=ZERO,
            total_available_grant_amount=ZERO,
        )
    return metered_value(active, computed.result)


def metered_value(active: bool, r: engine.Result) -> Value:
    """A metered entitlement's value from the engine's run (`active`: not deleted at the instant)."""
    return Value(
        has_access=active and r.has_access,
        balance=r.balance,
        usage=r.usage,
        overage=r.overage,
        total_available_grant_amount=r.total_available_grant_amount,
    )


class BalanceService:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    # ---- loading ----

    def _load(self, namespace: str, owner: OwnerRef, id_or_feature_key: str, snapshots_before: datetime) -> Loaded:
        with self.deps.db.read() as s:
            ent = find_entitlement(EntitlementRepository(s, lock_rows=False), namespace, owner, id_or_feature_key)
            if ent is None:
                raise EntitlementNotFound(id_or_feature_key, owner)
            feature = FeatureRepository(s).get(namespace, ent.feature_id)
            if feature is None:
                raise EntitlementNotFound(id_or_feature_key, owner)
            owned_by = owner_of(s, ent)
            if ent.type is not EntitlementType.METERED:
                return Loaded(ent, feature, None, (), owned_by)
            grants = GrantRepository(s).for_entitlement(ent.id)
            resets = ResetRepository(s).for_entitlement(ent.id)
            snaps = SnapshotRepository(s).latest_at_or_before(ent.id, snapshots_before, limit=SNAPSHOT_CANDIDATES)
            return Loaded(ent, feature, Inputs.of(ent, grants, resets), tuple(snaps), owned_by)

    def _candidates(self, loaded: Loaded) -> tuple[list[tuple[StoredSnapshot, engine.Snapshot]], list[datetime]]:
        """Stored snapshots whose inputs are unchanged (newest first), and the instants of those that changed."""
        inputs = loaded.inputs
        assert inputs is not None
        usable: list[tuple[StoredSnapshot, engine.Snapshot]] = []
        stale: list[datetime] = []
        for stored in loaded.snapshots:
            try:
                snap = engine.Snapshot.from_dict(stored.state)
            except (KeyError, ValueError, TypeError, ArithmeticError):
                stale.append(stored.at)
                continue
            if engine.snapshot_is_usable(snap, inputs.terms, inputs.grants, inputs.resets):
                usable.append((stored, snap))
            else:
                stale.append(stored.at)
        return usable, stale

    async def _usage(self, loaded: Loaded, bounds: Sequence[datetime]) -> list[Decimal]:
        if len(bounds) < 2:
            return []
        if not loaded.owner.subjects:  # a customer with no subjects has no usage
            return [ZERO] * (len(bounds) - 1)
        return await self.deps.usage.usage_windows(
            loaded.entitlement.namespace,
            loaded.feature.meter_slug or "",
            loaded.owner.subjects,
            loaded.feature.meter_group_by_filters,
            bounds,
        )

    async def _late_event_after(self, loaded: Loaded, stored: StoredSnapshot) -> bool:
        """Whether an event older than the snapshot's instant was stored after the snapshot was taken."""
        ns, meter, subject = (
            loaded.entitlement.namespace,
            loaded.feature.meter_slug or "",
            loaded.owner.subjects,
        )
        if not subject:
            return False
        # The narrow question stops at the first late event instead of scanning the whole history.
        return await self.deps.usage.stored_after(ns, meter, subject, before=stored.at, after=stored.created_at)

    async def _compute(self, loaded: Loaded, target: datetime, extra: Sequence[datetime] = ()) -> Computed:
        inputs = loaded.inputs
        assert inputs is not None
        terms, grants, resets = inputs.terms, inputs.grants, inputs.resets
        usable, stale = self._candidates(loaded)
        wall = self.deps.wall_clock.now() - VISIBILITY_MARGIN
        for stored, snap in usable:
            bounds = engine.plan_windows(snap, grants, resets, terms, target, extra)
            # Optimistic: fetch the usage after the snapshot while checking it for late events (one round
            # trip of latency on a ClickHouse server); a late event (rare) discards both.
            late, usage = await asyncio.gather(self._late_event_after(loaded, stored), self._usage(loaded, bounds))
            if late:
                log.info("snapshot_stale_late_event", entitlement_id=stored.entitlement_id, at=stored.at.isoformat())
                stale.append(stored.at)
                continue
            start = snap
            break
        else:
            start = engine.initial_snapshot(terms, grants, resets)
            bounds = engine.plan_windows(start, grants, resets, terms, target, extra)
            usage = await self._usage(loaded, bounds)
        result = engine.run(start, grants, resets, terms, bounds, usage)
        await self._persist(loaded, result, wall, stale)
        return Computed(result, start, tuple(bounds), tuple(usage))

    async def _persist(self, loaded: Loaded, result: engine.Result, wall: datetime, stale: list[datetime]) -> None:
        """Store the period-start snapshots this run passed (not future ones), if the inputs did not change."""
        now = self.deps.clock.now()
        ent = loaded.entitlement
        fresh = [
            StoredSnapshot(ent.id, snap.at, wall, ent.version, snap.to_dict())
            for snap in result.snapshots
            if snap.at <= now
        ]
        if not fresh and not stale:
            return

        def tx(s: Session) -> bool:
            current = EntitlementRepository(s, lock_rows=self.deps.db.locks_rows).get(
                ent.namespace, ent.id, for_update=True
            )
            if current is None or current.version != ent.version:
                return False  # a grant, void or reset landed meanwhile: these states may be wrong now
            snaps = SnapshotRepository(s)
            if stale:
                snaps.delete_from(ent.id, min(stale))
            snaps.put(fresh)
            return True

        stored = await self.deps.writing(tx)
        log.debug("snapshots_stored", entitlement_id=ent.id, count=len(fresh), stored=stored, dropped=len(stale))

    # ---- API ----

    async def value(self, namespace: str, owner: OwnerRef, id_or_feature_key: str, at: datetime | None) -> Value:
        target = at or self.deps.clock.now()
        return (await self.value_detail(namespace, owner, id_or_feature_key, target))[0]

    async def value_detail(
        self, namespace: str, owner: OwnerRef, id_or_feature_key: str, target: datetime
    ) -> tuple[Value, Loaded, Computed | None]:
        """The value at `target` with what it was computed from (the balance cache keeps both)."""
        loaded = await self.deps.in_thread(lambda: self._load(namespace, owner, id_or_feature_key, target))
        computed = await self._compute(loaded, target) if needs_usage(loaded, target) else None
        return value_of(loaded, target, computed), loaded, computed

    async def reset(
        self,
        namespace: str,
        owner_ref: OwnerRef,
        entitlement_id: str,
        *,
        effective_at: datetime | None,
        retain_anchor: bool,
        preserve_overage: bool | None,
    ) -> Reset:
        now = self.deps.clock.now()
        at = effective_at or now
        if at > now:
            raise InvalidInput("a reset cannot be in the future", field="effectiveAt")

        owners: list[Owner] = []

        def tx(s: Session) -> Reset:
            ents = EntitlementRepository(s, lock_rows=self.deps.db.locks_rows)
            ent = find_entitlement(ents, namespace, owner_ref, entitlement_id, for_update=True)
            if ent is None or ent.deleted_at is not None:
                raise EntitlementNotFound(entitlement_id, owner_ref)
            owners.append(owner_of(s, ent))
            if ent.type is not EntitlementType.METERED:
                raise NotMetered(ent.id, "usage to reset")
            assert ent.measure_usage_from is not None
            resets = ResetRepository(s)
            # OpenMeter's rule: a reset must be strictly after the last reset, which is the latest manual
            # reset or, before any, measureUsageFrom (entitlement/metered/reset.go).
            last = max((r.effective_at for r in resets.for_entitlement(ent.id)), default=ent.measure_usage_from)
            if at <= last:
                raise InvalidInput(
                    f"a reset must be after last reset ({last.isoformat().replace('+00:00', 'Z')})",
                    field="effectiveAt",
                )
            reset = Reset(
                id=new_id(),
                entitlement_id=ent.id,
                effective_at=at,
                retain_anchor=retain_anchor,
                preserve_overage=(ent.preserve_overage_at_reset if preserve_overage is None else preserve_overage),
                created_at=now,
            )
            resets.add(reset)
            ents.bump_version(ent.id, now)
            SnapshotRepository(s).delete_from(ent.id, at)
            return reset

        reset = await self.deps.writing(tx)
        self.deps.changed_owner(namespace, owners[-1])
        log.info("usage_reset", entitlement_id=reset.entitlement_id, at=reset.effective_at.isoformat())
        return reset

    async def load_metered(self, namespace: str, owner: OwnerRef, entitlement_id: str, before: datetime) -> Loaded:
        loaded = await self.deps.in_thread(lambda: self._load(namespace, owner, entitlement_id, before))
        if loaded.inputs is None:
            raise NotMetered(loaded.entitlement.id, "balance history")
        return loaded

    async def compute(self, loaded: Loaded, target: datetime, extra: Sequence[datetime]) -> Computed:
        return await self._compute(loaded, target, extra)

    async def periods(self, entitlements: Sequence[Entitlement], at: datetime) -> dict[str, PeriodView]:
        """The current usage period of each metered entitlement (resets can move it; grants cannot)."""
        metered = [e for e in entitlements if e.type is EntitlementType.METERED]
        if not metered:
            return {}

        def tx(s: Session) -> dict[str, list[Reset]]:
            return ResetRepository(s).for_entitlements([e.id for e in metered])

        resets = await self.deps.reading(tx)
        return {e.id: period_at(Inputs.of(e, (), resets.get(e.id, [])), at) for e in metered}

"""Many values at once (the access routes' cold items): a handful of queries, not one computation per item.

One read transaction resolves every owner and loads every entitlement with its feature, grants and resets.
Boolean and static values need nothing more. Each metered entitlement is computed from its start (its
initial snapshot: no stored snapshot, hence no late-event probe per item), and usage is read in one round
trip per (meter, group-by filters) for all subjects at once, on the union of the windows the entitlements
need: an entitlement's windows are unions of consecutive union windows, and features count SUM and COUNT
meters only, so its window usage is the sum of those (exact, and clamped per window by the engine as in the
single read). Items this path cannot answer (an entitlement named by the id of a deleted one, a subject
with none) get None and go through the single read, which also names their error.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from common.errors import MetergateError
from entitlements import engine
from entitlements.db.repositories import (
    EntitlementFilters,
    EntitlementRepository,
    FeatureRepository,
    GrantRepository,
    ResetRepository,
)
from entitlements.domain import Entitlement, EntitlementType, Owner, OwnerRef
from entitlements.service.balance import Computed, Loaded, needs_usage
from entitlements.service.deps import Deps
from entitlements.service.owners import resolve_owner
from entitlements.service.terms import Inputs

ZERO = Decimal(0)
MAX_ENTITLEMENTS = 100_000


def load_many(d: Deps, namespace: str, items: Sequence[tuple[OwnerRef, str]]) -> list[Loaded | MetergateError | None]:
    """Per item: its Loaded, the error resolving its owner, or None (the single read answers it)."""
    with d.db.read() as s:
        owners: dict[OwnerRef, Owner | MetergateError] = {}
        for ref in dict.fromkeys(ref for ref, _ in items):
            try:
                owners[ref] = resolve_owner(s, namespace, ref)
            except MetergateError as exc:
                owners[ref] = exc
        resolved = [o for o in owners.values() if isinstance(o, Owner)]
        f = EntitlementFilters(
            subject_keys=[o.key for o in resolved if o.customer is None],
            customer_ids=[o.key for o in resolved if o.customer is not None],
            owners_given=True,
        )
        found = EntitlementRepository(s, lock_rows=False).search(namespace, f, limit=MAX_ENTITLEMENTS, offset=0)
        index: dict[tuple[str, str | None], dict[str, Entitlement]] = {}
        for e in found:
            names = index.setdefault((e.subject_key, e.customer_id), {})
            names[e.id] = names[e.feature_key] = e
        ids = [e.id for e in found]
        features = FeatureRepository(s).by_ids(namespace, list({e.feature_id for e in found}))
        grants = GrantRepository(s).for_entitlements(ids)
        resets = ResetRepository(s).for_entitlements(ids)
    out: list[Loaded | MetergateError | None] = []
    for ref, key in items:
        owner = owners[ref]
        if isinstance(owner, MetergateError):
            out.append(owner)
            continue
        ent = index.get((owner.key, owner.customer_id), {}).get(key)
        feature = None if ent is None else features.get(ent.feature_id)
        if ent is None or feature is None:
            out.append(None)
            continue
        inputs = None
        if ent.type is EntitlementType.METERED:
            inputs = Inputs.of(ent, grants.get(ent.id, []), resets.get(ent.id, []))
        out.append(Loaded(ent, feature, inputs, (), owner))
    return out


async def compute_many(d: Deps, loaded: Sequence[Loaded], target: datetime) -> list[Computed | None]:
    """The engine's run at `target` for each metered entitlement that needs one (None for the others)."""
    plans: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[int, engine.Snapshot, list[datetime]]]] = {}
    for n, item in enumerate(loaded):
        if not needs_usage(item, target):
            continue
        inputs = item.inputs
        assert inputs is not None
        start = engine.initial_snapshot(inputs.terms, inputs.grants, inputs.resets)
        bounds = engine.plan_windows(start, inputs.grants, inputs.resets, inputs.terms, target)
        key = (item.feature.meter_slug or "", tuple(sorted(item.feature.meter_group_by_filters.items())))
        plans.setdefault(key, []).append((n, start, bounds))
    out: list[Computed | None] = [None] * len(loaded)
    for (meter, filters), members in plans.items():
        union = sorted({b for _, _, bounds in members for b in bounds})
        subjects = sorted({s for n, _, _ in members for s in loaded[n].owner.subjects})
        per_subject = await d.usage.usage_by_subject(
            loaded[members[0][0]].entitlement.namespace, meter, subjects, dict(filters), union
        )
        position = {b: i for i, b in enumerate(union)}
        for n, start, bounds in members:
            item = loaded[n]
            inputs = item.inputs
            assert inputs is not None
            totals = [ZERO] * (len(union) - 1)
            for subject in item.owner.subjects:
                for i, v in enumerate(per_subject.get(subject, ())):
                    totals[i] += v
            usage = [sum(totals[position[a] : position[b]], ZERO) for a, b in itertools.pairwise(bounds)]
            result = engine.run(start, inputs.grants, inputs.resets, inputs.terms, bounds, usage)
            out[n] = Computed(result, start, tuple(bounds), tuple(usage))
    return out

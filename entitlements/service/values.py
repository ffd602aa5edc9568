"""Value reads through the balance cache: warm reads touch neither SQL nor ClickHouse.

`CachedBalances.value` answers "the value of this entitlement now" from `BalanceCache` while the entry is
valid, and otherwise computes it exactly as `BalanceService` always did (cold reads keep that path) and
stores it. Every answer carries `as_of`: the wall time when its computation began, so every event stored
before `as_of` is counted (plus any stored later whose notification has not arrived yet is not).

A stale entry (usage was notified inside its open window: entitlements.cache.store) is refreshed on read:
one usage query for the open window [open_from, now) and an engine run from the entry's own start, with the
closed windows' usage it already has (no SQL, no snapshot probe, no late-event probe). If ClickHouse is
down meanwhile, the stale value is answered with its own `as_of`.

Reads at an explicit `time` are never cached. `fresh=True` (HTTP `Cache-Control: no-cache`) always
computes; if that computation finds ClickHouse unavailable, a still-valid cached value is answered with its
own `as_of`, else the 503 stands (never a made-up balance).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import cast

import structlog

from common import exactjson
from common.errors import MetergateError, Unavailable
from entitlements import engine
from entitlements.cache.store import AliasKey, BalanceCache, Entry
from entitlements.domain import EntitlementType, OwnerRef
from entitlements.service import bulk
from entitlements.service.balance import (
    BalanceService,
    Computed,
    Loaded,
    Value,
    metered_value,
    needs_usage,
    value_fields,
    value_of,
)
from entitlements.service.terms import Inputs

log = structlog.get_logger(__name__)

# The furthest ahead the next change is searched for; an entry with no change in sight expires then and is
# recomputed (one cold read a day per entitlement).
HORIZON = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Basis:
    """What a metered entry is refreshed from, and no more (it is held for every cached entry): where its usage
    comes from, the engine's inputs (state read at computation), and the engine's run (start snapshot, window
    bounds, usage per window; the last window is the open one)."""

    meter_slug: str
    subjects: tuple[str, ...]
    filters: Mapping[str, str]
    inputs: Inputs
    deleted_at: datetime | None
    start: engine.Snapshot
    bounds: tuple[datetime, ...]
    usage: tuple[Decimal, ...]

    @classmethod
    def of(cls, loaded: Loaded, computed: Computed) -> Basis:
        assert loaded.inputs is not None
        feature = loaded.feature
        return cls(
            feature.meter_slug or "",
            tuple(loaded.owner.subjects),
            feature.meter_group_by_filters,
            loaded.inputs,
            loaded.entitlement.deleted_at,
            computed.start,
            computed.bounds,
            computed.usage,
        )

    @property
    def open_from(self) -> datetime | None:
        return self.bounds[-2] if len(self.bounds) >= 2 else None  # a window needs two bounds


@dataclass(frozen=True, slots=True)
class FreshValue:
    """`body`: the JSON answer already encoded (OpenMeter's fields and `asOf`), for values from the cache."""

    value: Value
    as_of: datetime
    cached: bool
    body: bytes = b""


def value_body(value: Value, as_of: datetime) -> bytes:
    """The encoded answer a cache entry keeps. Copied to a bytes object of its own size: orjson's result keeps
    its 4 kB output buffer (measured with tracemalloc), more than the rest of the entry together."""
    return bytes(memoryview(exactjson.dumps({**value_fields(value), "asOf": as_of})))


def next_change(inputs: Inputs, final: engine.Snapshot) -> datetime:
    """The first instant after `final.at` at which the engine may change the value by itself."""
    horizon = final.at + HORIZON
    bounds = engine.plan_windows(final, inputs.grants, inputs.resets, inputs.terms, horizon)
    return bounds[1] if len(bounds) > 1 else horizon


def valid_until(loaded: Loaded, computed: Computed | None) -> datetime | None:
    if loaded.entitlement.type is not EntitlementType.METERED:
        return None
    inputs = loaded.inputs
    assert inputs is not None
    if computed is None:  # before measure_usage_from: zero until then
        return inputs.terms.measure_usage_from
    return next_change(inputs, computed.result.final)


class CachedBalances:
    """`cache=None` turns caching off (no notification stream to follow): every read computes."""

    def __init__(self, balances: BalanceService, cache: BalanceCache | None) -> None:
        self.balances = balances
        self.cache = cache
        self.deps = balances.deps
        if cache is not None:
            self.deps.change_listeners.append(cache.invalidate_subject)

    async def value(
        self,
        namespace: str,
        subject: OwnerRef,
        id_or_feature_key: str,
        at: datetime | None = None,
        *,
        fresh: bool = False,
    ) -> FreshValue:
        if at is not None:
            as_of = self.deps.wall_clock.now()
            return FreshValue(await self.balances.value(namespace, subject, id_or_feature_key, at), as_of, False)
        now = self.deps.clock.now()
        if self.cache is None:
            value = await self.balances.value(namespace, subject, id_or_feature_key, now)
            return FreshValue(value, self.deps.wall_clock.now(), False)
        entry = self.cache.get(namespace, subject, id_or_feature_key, now)
        if entry is not None and not fresh and not entry.stale:
            return FreshValue(entry.value, entry.as_of, True, entry.body)
        try:
            if entry is not None and entry.stale and not fresh:
                return await self.refresh(entry, now)
            return await self.compute(namespace, subject, id_or_feature_key, now)
        except Unavailable:
            if entry is None:
                raise
            log.warning("value_answered_from_cache", entitlement_id=entry.entitlement_id, as_of=entry.as_of.isoformat())
            return FreshValue(entry.value, entry.as_of, True, entry.body)

    def warm(self, namespace: str, subject: OwnerRef, id_or_feature_key: str) -> FreshValue | None:
        """The cached value at "now", or None (no await: bulk reads answer their warm items in one pass)."""
        if self.cache is None:
            return None
        entry = self.cache.get(namespace, subject, id_or_feature_key, self.deps.clock.now())
        return None if entry is None or entry.stale else FreshValue(entry.value, entry.as_of, True, entry.body)

    async def refresh(self, entry: Entry, now: datetime) -> FreshValue:
        """The stale entry's value at `now`: its open window's usage re-read, the engine run again from its start."""
        assert self.cache is not None
        basis = cast(Basis, entry.basis)
        token = self.cache.token()
        as_of = self.deps.wall_clock.now()
        inputs = basis.inputs
        bounds = (*basis.bounds[:-1], now)
        last = Decimal(0)
        if basis.subjects:
            windows = await self.deps.usage.usage_windows(
                entry.namespace, basis.meter_slug, basis.subjects, basis.filters, bounds[-2:]
            )
            last = windows[0]
        usage = (*basis.usage[:-1], last)
        result = engine.run(basis.start, inputs.grants, inputs.resets, inputs.terms, bounds, usage)
        value = metered_value(basis.deleted_at is None or now < basis.deleted_at, result)
        renewed = replace(
            entry,
            value=value,
            computed_for=now,
            valid_until=next_change(inputs, result.final),
            as_of=as_of,
            body=value_body(value, as_of),
            basis=replace(basis, bounds=bounds, usage=usage),
            stale=False,
        )
        self.cache.put(renewed, self.cache.aliases(entry.namespace, entry.entitlement_id), token)
        return FreshValue(value, as_of, False)

    async def compute(self, namespace: str, subject: OwnerRef, id_or_feature_key: str, now: datetime) -> FreshValue:
        """Compute from scratch at `now` and store the result (unless a change raced with it)."""
        assert self.cache is not None
        token = self.cache.token()
        as_of = self.deps.wall_clock.now()
        value, loaded, computed = await self.balances.value_detail(namespace, subject, id_or_feature_key, now)
        await self._store(namespace, subject, id_or_feature_key, loaded, computed, value, now, as_of, token)
        return FreshValue(value, as_of, False)

    async def compute_many(
        self, namespace: str, items: Sequence[tuple[OwnerRef, str]]
    ) -> list[FreshValue | MetergateError]:
        """Values at "now" for many items in a few queries (entitlements.service.bulk), stored in the cache;
        an item the bulk path cannot answer goes through the single read (which names its error)."""
        now = self.deps.clock.now()
        token = None if self.cache is None else self.cache.token()
        as_of = self.deps.wall_clock.now()
        loaded = await self.deps.in_thread(lambda: bulk.load_many(self.deps, namespace, items))
        ready = [n for n, x in enumerate(loaded) if isinstance(x, Loaded)]
        computed: dict[int, Computed | None] = {}
        try:
            runs = await bulk.compute_many(self.deps, [cast(Loaded, loaded[n]) for n in ready], now)
            computed = dict(zip(ready, runs, strict=True))
        except Unavailable:
            # ClickHouse is down: item by item, each may still answer from the cache with its own asOf.
            loaded = [None if isinstance(x, Loaded) and needs_usage(x, now) else x for x in loaded]
        out: list[FreshValue | MetergateError] = []
        for n, ((subject, key), item) in enumerate(zip(items, loaded, strict=True)):
            if isinstance(item, MetergateError):
                out.append(item)
                continue
            if item is None:
                try:
                    out.append(await self.value(namespace, subject, key, fresh=True))
                except MetergateError as exc:
                    out.append(exc)
                continue
            run = computed.get(n)
            value = value_of(item, now, run)
            if token is not None:
                await self._store(namespace, subject, key, item, run, value, now, as_of, token)
            out.append(FreshValue(value, as_of, False))
        return out

    async def _store(
        self,
        namespace: str,
        subject: OwnerRef,
        id_or_feature_key: str,
        loaded: Loaded,
        computed: Computed | None,
        value: Value,
        now: datetime,
        as_of: datetime,
        token: int,
    ) -> None:
        assert self.cache is not None
        ent = loaded.entitlement
        event_type = None
        if ent.type is EntitlementType.METERED:
            meter = await self.deps.meters.get_meter(namespace, loaded.feature.meter_slug or "")
            if meter is None:
                return
            event_type = meter.event_type
        # Dropped when the owner, one of its subjects (usage, or a customer joined) or the subject asked changes.
        depends = tuple(dict.fromkeys([*loaded.owner.subjects, *([subject] if isinstance(subject, str) else [])]))
        basis = None if computed is None else Basis.of(loaded, computed)
        until = valid_until(loaded, computed)
        body = value_body(value, as_of)
        entry = Entry(
            namespace,
            ent.subject_key,
            ent.id,
            event_type,
            value,
            now,
            until,
            as_of,
            depends,
            body=body,
            open_from=None if basis is None else basis.open_from,
            basis=basis,
        )
        aliases: list[AliasKey] = [(namespace, subject, id_or_feature_key)]
        if ent.deleted_at is None:
            aliases += [(namespace, subject, ent.id), (namespace, subject, loaded.feature.key)]
        self.cache.put(entry, aliases, token)

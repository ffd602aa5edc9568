"""The balance cache: every cached answer equals a computation from scratch at the same instant.

Service level over a real SQLite file and the in-memory meter ports; ingest notifications are delivered
by hand so the tests can lose, repeat and delay them. `BalanceCache` itself is pure: its tests are tables.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import InvalidInput, Unavailable
from common.ingest_notifications import IngestNotification
from entitlements.cache.store import ENTRY_OVERHEAD_BYTES, BalanceCache, Entry, deep_size
from entitlements.db.migrate import upgrade_database
from entitlements.db.repositories import SnapshotRepository
from entitlements.domain import EntitlementType
from entitlements.service import build_entitlements
from entitlements.service.balance import Value
from entitlements.service.entitlements import EntitlementInput
from entitlements.service.features import FeatureInput
from entitlements.service.values import FreshValue
from tests.support.entitlement_harness import NS, T0, Harness

DAY = timedelta(days=1)


class CachedHarness(Harness):
    """The harness with a balance cache and a hand-driven ingest notification stream."""

    def __init__(self, url: str, cache: BalanceCache | None = None) -> None:
        super().__init__(url)
        self.ents.close()
        self.cache = cache or BalanceCache()
        self.ents = build_entitlements(url, meters=self.meters, usage=self.usage, clock=self.clock, cache=self.cache)
        self.sequence = itertools.count(1)

    def note(self, subject: str, earliest: datetime, latest: datetime | None = None) -> IngestNotification:
        stored = datetime.now(UTC)
        return IngestNotification(
            NS, subject, "tokens", earliest, latest or earliest, stored, "s1", next(self.sequence)
        )

    def ingest(self, subject: str, at: datetime, amount: int, *, notify: bool = True) -> IngestNotification:
        self.usage.add("tokens", subject, at, amount)
        note = self.note(subject, at)
        if notify:
            self.cache.on_ingest([note])
        return note

    async def cached(self, key: str = "gpt", *, fresh: bool = False) -> FreshValue:
        return await self.ents.values.value(NS, "acme", key, fresh=fresh)

    async def scratch(self, key: str = "gpt") -> Value:
        self._drop_all_snapshots()
        return await self.ents.balances.value(NS, "acme", key, self.clock.now())

    def _drop_all_snapshots(self) -> None:
        ents = self.ents
        with ents.deps.db.read() as s:
            from entitlements.db.repositories import EntitlementFilters, EntitlementRepository

            found = EntitlementRepository(s, lock_rows=False).search(
                NS, EntitlementFilters(include_deleted=True), limit=1000, offset=0
            )
            ids = [e.id for e in found]
        with ents.deps.db.write() as s:
            for eid in ids:
                SnapshotRepository(s).delete_all(eid)


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    upgrade_database(url)
    return url


@pytest.fixture
def h(url: str) -> Iterator[CachedHarness]:
    harness = CachedHarness(url)
    yield harness
    harness.ents.close()


async def test_warm_read_touches_neither_state_nor_usage(h: CachedHarness) -> None:
    await h.setup()
    h.clock.advance_to(T0 + 3 * DAY)
    h.ingest("acme", T0 + DAY, 10)
    first = await h.cached()
    calls = h.usage.calls
    second = await h.cached()
    assert (first.cached, second.cached) == (False, True)
    assert second.value == first.value
    assert second.value.usage == Decimal(10)
    assert second.as_of == first.as_of
    assert h.usage.calls == calls


@pytest.mark.parametrize("change", ["grant", "void", "reset", "override", "delete", "create"])
async def test_every_state_change_invalidates_before_returning(h: CachedHarness, change: str) -> None:
    eid = await h.setup()
    h.clock.advance_to(T0 + 3 * DAY)
    h.ingest("acme", T0 + DAY, 10)
    await h.cached()
    assert (await h.cached()).cached
    if change == "grant":
        await h.grant(5, T0)
    elif change == "void":
        grants = await h.ents.grants.list_for_entitlement(NS, "acme", "gpt", include_voided=False)
        await h.ents.grants.void(NS, grants[0].id)
    elif change == "reset":
        await h.ents.balances.reset(NS, "acme", eid, effective_at=None, retain_anchor=False, preserve_overage=None)
    elif change == "override":
        await h.ents.entitlements.override(NS, "acme", "gpt", EntitlementInput(type=EntitlementType.BOOLEAN))
    elif change == "delete":
        await h.ents.entitlements.delete(NS, "acme", eid)
    else:
        await h.ents.features.create(NS, FeatureInput(key="sso", name="SSO"))
        await h.ents.entitlements.create(NS, "acme", EntitlementInput(type=EntitlementType.BOOLEAN, feature_key="sso"))
    assert len(h.cache) == 0
    if change != "delete":
        after = await h.cached()
        assert not after.cached
        assert after.value == await h.scratch()


async def test_usage_notification_drops_only_the_subjects_metered_entries(h: CachedHarness) -> None:
    await h.setup()
    h.clock.advance_to(T0 + 3 * DAY)
    await h.cached()
    h.ingest("other", T0 + DAY, 7)
    assert (await h.cached()).cached
    h.ingest("acme", T0 + DAY, 7)
    fresh = await h.cached()
    assert not fresh.cached
    assert fresh.value.usage == Decimal(7)


async def test_late_event_is_counted(h: CachedHarness) -> None:
    await h.setup()
    h.clock.advance_to(T0 + 40 * DAY)  # in the second period: the first period's snapshot exists
    assert (await h.cached()).value.usage == 0
    h.ingest("acme", T0 + 35 * DAY, 9)
    h.ingest("acme", T0 + 2 * DAY, 1000)  # late: older than the cached period (and its snapshot)
    v = await h.cached()
    assert v.value == await h.scratch()
    assert v.value.usage == Decimal(9)


async def test_period_boundary_ends_an_entry(h: CachedHarness) -> None:
    await h.setup()
    h.clock.advance_to(T0 + 20 * DAY)
    h.ingest("acme", T0 + DAY, 300)
    assert (await h.cached()).value.usage == 300
    entry = next(iter(h.cache._entries.values()))
    assert entry.valid_until == T0 + 21 * DAY  # nothing changes within the one-day horizon: recomputed then
    h.clock.advance_to(T0 + 30 * DAY + timedelta(hours=12))
    assert (await h.cached()).value.usage == 300
    entry = next(iter(h.cache._entries.values()))
    assert entry.valid_until == datetime(2020, 2, 1, tzinfo=UTC)  # the period ends (and the grant recurs)
    h.clock.advance_to(datetime(2020, 2, 1, tzinfo=UTC))
    after = await h.cached()
    assert not after.cached
    assert after.value.usage == 0
    assert after.value == await h.scratch()


async def test_event_stored_ahead_of_now_caps_the_entry(h: CachedHarness) -> None:
    await h.setup()
    h.clock.advance_to(T0 + 3 * DAY)
    h.ingest("acme", T0 + 5 * DAY, 50)  # event time still in the future when stored
    assert (await h.cached()).value.usage == 0
    h.clock.advance_to(T0 + 5 * DAY + timedelta(seconds=1))
    v = await h.cached()
    assert not v.cached
    assert v.value.usage == 50


async def test_lost_notification_is_detected_by_the_next_one(h: CachedHarness) -> None:
    await h.setup()
    h.clock.advance_to(T0 + 3 * DAY)
    await h.cached()
    h.ingest("acme", T0 + DAY, 10, notify=False)  # its notification is lost
    h.ingest("other", T0 + DAY, 1)  # the next one shows a gap in the sequence
    assert h.cache.stats.gaps == 1
    v = await h.cached()
    assert not v.cached
    assert v.value.usage == Decimal(10)


async def test_duplicate_notification_never_makes_a_value_wrong(h: CachedHarness) -> None:
    await h.setup()
    h.clock.advance_to(T0 + 3 * DAY)
    note = h.ingest("acme", T0 + DAY, 10)
    await h.cached()
    h.cache.on_ingest([note, note])
    assert h.cache.stats.gaps == 0
    assert (await h.cached()).value == await h.scratch()


async def test_no_cache_forces_a_computation(h: CachedHarness) -> None:
    await h.setup()
    h.clock.advance_to(T0 + 3 * DAY)
    await h.cached()
    calls = h.usage.calls
    v = await h.cached(fresh=True)
    assert not v.cached
    assert h.usage.calls > calls


async def test_a_computation_racing_a_change_is_not_stored(h: CachedHarness) -> None:
    await h.setup()
    h.clock.advance_to(T0 + 3 * DAY)
    token = h.cache.token()
    value = Value(has_access=True)
    h.cache.invalidate_subject(NS, "acme")
    entry = Entry(NS, "acme", "e1", None, value, h.clock.now(), None, datetime.now(UTC))
    assert not h.cache.put(entry, [(NS, "acme", "e1")], token)
    assert h.cache.put(entry, [(NS, "acme", "e1")], h.cache.token())


def _entry(i: int, config: str | None = None) -> Entry:
    return Entry(NS, f"s{i}", f"e{i}", None, Value(has_access=True, config=config), T0, None, T0)


def test_eviction_bounds_entries_and_bytes() -> None:
    cache = BalanceCache(max_entries=3)
    for i in range(5):
        cache.put(_entry(i), [(NS, f"s{i}", "f")], cache.token())
    assert len(cache) == 3
    assert cache.stats.evictions == 2
    assert cache.get(NS, "s0", "f", T0) is None
    assert cache.get(NS, "s4", "f", T0) is not None
    small = BalanceCache(max_bytes=10_000)
    for i in range(20):
        small.put(_entry(i, config="x" * 1000), [(NS, f"s{i}", "f")], small.token())
    assert 0 < small.bytes <= 10_000
    assert len(small) < 20


def test_clock_moved_back_is_never_cached() -> None:
    cache = BalanceCache()
    assert cache.get(NS, "s", "f", T0 + DAY) is None
    assert not cache.put(_entry(1), [(NS, "s1", "f")], cache.token())  # computed for T0 < the mark


def test_concurrent_computations_a_moment_apart_are_all_stored() -> None:
    cache = BalanceCache()
    token = cache.token()
    assert cache.get(NS, "s2", "f", T0 + timedelta(milliseconds=5)) is None  # a later read observed first
    assert cache.put(_entry(1), [(NS, "s1", "f")], token)


@dataclass(frozen=True)
class Op:
    kind: str
    n: int


OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["event", "late", "future", "dup", "lost", "race", "grant", "void", "reset", "override", "clock", "read"]
        ),
        st.integers(0, 1000),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
async def test_cached_answers_equal_a_computation_from_scratch(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]
) -> None:
    url = f"sqlite:///{tmp_path_factory.mktemp('cache') / 'state.db'}"
    upgrade_database(url)
    h = CachedHarness(url, BalanceCache(max_entries=2))
    try:
        await h.setup(grant_amount=100, recurring=False)
        notes: list[IngestNotification] = []
        for kind, n in ops:
            now = h.clock.now()
            if kind == "event":
                notes.append(h.ingest("acme", now - timedelta(minutes=1 + n % 600), n % 50))
            elif kind == "late":
                notes.append(h.ingest("acme", max(T0, now - timedelta(days=1 + n % 90)), n % 50))
            elif kind == "future":
                notes.append(h.ingest("acme", now + timedelta(hours=1 + n % 48), n % 50))
            elif kind == "race":
                # The events are visible before their notification arrives, and a computation (stored in the
                # cache) counts them in between.
                slow = h.ingest("acme", now - timedelta(minutes=1 + n % 600), n % 50, notify=False)
                assert (await h.cached(fresh=True)).value == await h.scratch(), (kind, n)
                h.cache.on_ingest([slow])
                notes.append(slow)
            elif kind == "dup" and notes:
                h.cache.on_ingest([notes[n % len(notes)]])
            elif kind == "lost":
                h.ingest("acme", now - timedelta(minutes=1), n % 50, notify=False)
                notes.append(h.ingest("other", now, 1))  # the next notification reveals the gap
            elif kind == "grant":
                await h.grant(n % 200, now - timedelta(days=n % 40))
            elif kind == "void":
                grants = await h.ents.grants.list_for_entitlement(NS, "acme", "gpt", include_voided=False)
                if grants:
                    await h.ents.grants.void(NS, grants[n % len(grants)].id)
            elif kind == "reset":
                ent = await h.ents.entitlements.get(NS, "acme", "gpt", include_deleted=False)
                if ent is not None and ent.type is EntitlementType.METERED:
                    with contextlib.suppress(InvalidInput):  # e.g. before the last reset: refused, nothing changed
                        await h.ents.balances.reset(
                            NS, "acme", ent.id, effective_at=None, retain_anchor=bool(n % 2), preserve_overage=None
                        )
            elif kind == "override":
                await h.ents.entitlements.override(
                    NS,
                    "acme",
                    "gpt",
                    EntitlementInput(
                        type=EntitlementType.METERED,
                        feature_key="gpt",
                        usage_period_interval="DAY" if n % 2 else "MONTH",
                        usage_period_anchor=T0,
                        measure_usage_from=T0,
                        is_soft_limit=n % 3 == 0,
                    ),
                )
            elif kind == "clock":
                h.clock.advance_to(now + timedelta(minutes=1 + n * 97))
            got = await h.cached()
            assert got.value == await h.scratch(), (kind, n)
            again = await h.cached()
            assert again.value == got.value
    finally:
        h.ents.close()


async def test_clickhouse_down_answers_a_valid_cached_value_or_503(h: CachedHarness) -> None:
    await h.setup()
    h.clock.advance_to(T0 + 3 * DAY)
    h.ingest("acme", T0 + DAY, 10)
    warm = await h.cached()

    async def down(*_args: object, **_kwargs: object) -> list[Decimal]:
        raise Unavailable("ClickHouse is unreachable")

    h.usage.usage_windows = down  # type: ignore[method-assign]
    forced = await h.cached(fresh=True)  # asked for a fresh value, ClickHouse down: the cached one, its asOf
    assert forced.cached
    assert (forced.value, forced.as_of) == (warm.value, warm.as_of)
    h.ingest("acme", T0 + DAY, 1)  # in the open window: the entry is stale, still true as of its asOf
    stale = await h.cached()
    assert (stale.value, stale.as_of, stale.cached) == (warm.value, warm.as_of, True)
    h.ingest("acme", T0 - DAY, 1)  # older than the open window: the entry is gone, nothing true to answer with
    with pytest.raises(Unavailable):
        await h.cached()


async def test_usage_in_the_open_window_refreshes_with_one_usage_query(h: CachedHarness) -> None:
    await h.setup()
    h.clock.advance_to(T0 + 3 * DAY)
    h.ingest("acme", T0 + DAY, 10)
    await h.cached()
    calls, probes = h.usage.calls, h.usage.probes
    h.ingest("acme", T0 + 2 * DAY, 5)
    h.clock.advance_to(T0 + 3 * DAY + timedelta(minutes=5))
    refreshed = await h.cached()
    assert not refreshed.cached
    assert h.cache.stats.stale == 1
    assert (h.usage.calls, h.usage.probes) == (calls + 1, probes)  # the open window only, no late-event probe
    assert refreshed.value == await h.scratch()
    assert refreshed.value.usage == Decimal(15)
    calls = h.usage.calls
    again = await h.cached()
    assert again.cached
    assert again.value == refreshed.value
    assert h.usage.calls == calls


async def test_a_notification_slower_than_the_computation_never_counts_twice(h: CachedHarness) -> None:
    """The events are visible (and counted) before their notification arrives: the refresh re-reads the
    window instead of adding the batch again."""
    await h.setup()
    h.clock.advance_to(T0 + 3 * DAY)
    note = h.ingest("acme", T0 + DAY, 10, notify=False)
    first = await h.cached()
    assert first.value.usage == Decimal(10)
    h.cache.on_ingest([note])
    h.cache.on_ingest([note])  # and once more, duplicated
    after = await h.cached()
    assert after.value.usage == Decimal(10)
    assert after.value == await h.scratch()


def _metered(open_from: datetime) -> Entry:
    return Entry(
        NS, "acme", "e1", "tokens", Value(has_access=True), T0 + 2 * DAY, None, T0, ("acme",), open_from=open_from
    )


def test_a_computation_racing_usage_is_stored_stale_or_refused() -> None:
    """Usage notified while a value was computed: inside its open window the value is stored stale (its next
    read refreshes it); older than its open window it is refused (a closed window may have changed)."""
    cache = BalanceCache()
    token = cache.token()
    cache.on_ingest([IngestNotification(NS, "acme", "tokens", T0 + DAY, T0 + DAY, T0, "s", 1)])
    assert cache.put(_metered(T0), [(NS, "acme", "f")], token)
    entry = cache.get(NS, "acme", "f", T0 + 2 * DAY)
    assert entry is not None
    assert entry.stale
    token = cache.token()
    cache.on_ingest([IngestNotification(NS, "acme", "tokens", T0, T0, T0, "s", 2)])
    assert not cache.put(_metered(T0 + timedelta(hours=1)), [(NS, "acme", "f")], token)
    assert cache.put(_metered(T0 + timedelta(hours=1)), [(NS, "acme", "f")], cache.token())
    other = cache.token()
    cache.on_ingest([IngestNotification(NS, "acme", "other-type", T0, T0, T0, "s", 3)])
    assert cache.put(_metered(T0 + timedelta(hours=1)), [(NS, "acme", "f")], other)  # another meter's events
    entry = cache.get(NS, "acme", "f", T0 + 2 * DAY)
    assert entry is not None
    assert not entry.stale


async def test_what_an_entry_keeps_to_refresh_counts_against_the_byte_bound(h: CachedHarness) -> None:
    await h.setup()
    h.clock.advance_to(T0 + 3 * DAY)
    await h.cached()
    entry = next(iter(h.cache._entries.values()))
    kept = deep_size(entry.basis)
    assert kept > 1000  # the entitlement, feature, grants, start snapshot, bounds and usage
    assert entry.size > kept + ENTRY_OVERHEAD_BYTES
    assert h.cache.bytes == entry.size

"""Snapshots are a cache: reads get cheaper, and every way a cached state can go wrong is caught.

Service level, over a real SQLite file and in-memory meter ports (FakeUsage counts usage windows, the cost
of a read). The engine's own snapshot equivalence is tested in the engine's tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entitlements.db.migrate import upgrade_database
from entitlements.domain import Expiration, ExpirationDuration
from entitlements.service.grants import GrantInput
from tests.support.entitlement_fakes import FakeUsage
from tests.support.entitlement_harness import NS, OLD, T0, Harness, month


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    upgrade_database(url)
    h = Harness(url)
    yield h
    h.ents.close()


async def test_read_cost_follows_what_happened_since_the_snapshot(harness: Harness) -> None:
    eid = await harness.setup()
    for n in range(60):
        harness.usage.add("tokens", "acme", month(n) + timedelta(days=3), 100, stored_at=OLD)
    harness.clock.advance_to(month(59) + timedelta(days=10))
    first = await harness.value()
    first_windows = harness.usage.windows
    assert first_windows >= 59  # every period of the history, once
    assert harness.snapshot_count(eid) >= 59
    assert (first.balance, first.usage) == (Decimal(900), Decimal(100))

    harness.usage.windows = 0
    again = await harness.value()
    assert again == first
    assert harness.usage.windows <= 2  # only the current period since its snapshot

    harness.clock.advance_to(month(60) + timedelta(days=1))
    harness.usage.windows = 0
    nxt = await harness.value()
    assert harness.usage.windows <= 3
    assert (nxt.balance, nxt.usage) == (Decimal(1000), Decimal(0))


async def test_backdated_grant_invalidates_later_snapshots(harness: Harness) -> None:
    eid = await harness.setup(grant_amount=100, recurring=False)
    for n in range(6):
        harness.usage.add("tokens", "acme", month(n) + timedelta(days=1), 30, stored_at=OLD)
    harness.clock.advance_to(month(5) + timedelta(days=5))
    assert (await harness.value()).balance == Decimal(0)  # 100 burnt by 30 x 4 (overage dropped at resets)
    assert harness.snapshot_count(eid) >= 5
    await harness.grant(50, month(1), years=1)  # backdated into a snapshotted past
    cached = await harness.value()
    harness.drop_snapshots(eid)
    fresh = await harness.value()
    assert cached == fresh
    assert harness.snapshot_count(eid) >= 5  # rebuilt


async def test_void_and_reset_keep_cached_reads_exact(harness: Harness) -> None:
    eid = await harness.setup(grant_amount=100, recurring=True)
    extra = await harness.grant(500, T0, years=5)
    for n in range(12):
        harness.usage.add("tokens", "acme", month(n) + timedelta(days=2), 70, stored_at=OLD)
    harness.clock.advance_to(month(11) + timedelta(days=5))
    await harness.value()
    await harness.ents.grants.void(NS, extra)
    await harness.ents.balances.reset(
        NS, "acme", eid, effective_at=month(11) + timedelta(days=3), retain_anchor=True, preserve_overage=None
    )
    cached = await harness.value()
    harness.drop_snapshots(eid)
    assert cached == await harness.value()


async def test_late_event_older_than_a_snapshot_is_counted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    upgrade_database(url)
    harness = Harness(url, FakeUsage())
    eid = await harness.setup(grant_amount=100, recurring=False, rollover=True)
    harness.usage.add("tokens", "acme", month(0) + timedelta(days=1), 40, stored_at=OLD)
    harness.clock.advance_to(month(3) + timedelta(days=1))
    before = await harness.value(month(1) + timedelta(days=1))
    assert before.balance == Decimal(60)
    assert harness.snapshot_count(eid) >= 1
    # An event from January arrives now, after the February snapshot was taken (stored_at = real now).
    harness.usage.add("tokens", "acme", month(0) + timedelta(days=20), 25)
    after = await harness.value(month(1) + timedelta(days=1))
    assert after.balance == Decimal(35)
    assert harness.usage.probes == 1  # the second read checked the February snapshot
    harness.ents.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    grants=st.lists(
        st.tuples(st.integers(0, 200), st.integers(0, 20), st.integers(1, 3), st.booleans(), st.booleans()),
        min_size=1,
        max_size=4,
    ),
    usage=st.lists(st.tuples(st.integers(0, 24 * 30 * 8), st.integers(0, 90)), max_size=25),
    reads=st.lists(st.integers(0, 24 * 30 * 8), min_size=1, max_size=5),
)
async def test_same_value_with_or_without_snapshots(
    tmp_path_factory: pytest.TempPathFactory,
    grants: list[tuple[int, int, int, bool, bool]],
    usage: list[tuple[int, int]],
    reads: list[int],
) -> None:
    url = f"sqlite:///{tmp_path_factory.mktemp('snap') / 'state.db'}"
    upgrade_database(url)
    h = Harness(url)
    try:
        eid = await h.setup(grant_amount=0, recurring=False)
        for amount, day, prio, recurring, rollover in grants:
            g = await h.ents.grants.create(
                NS,
                "acme",
                "gpt",
                GrantInput(
                    amount=Decimal(amount),
                    effective_at=T0 + timedelta(days=day),
                    expiration=Expiration(ExpirationDuration.MONTH, 6),
                    priority=prio,
                    max_rollover_amount=Decimal(amount if rollover else 0),
                    recurrence_interval="P1M" if recurring else None,
                ),
            )
            assert g.amount == Decimal(amount)
        for hour, amount in usage:
            h.usage.add("tokens", "acme", T0 + timedelta(hours=hour), amount, stored_at=OLD)
        h.clock.advance_to(T0 + timedelta(days=250))
        for hour in sorted(reads):
            at = T0 + timedelta(hours=hour)
            cached = await h.value(at)
            h.drop_snapshots(eid)
            assert cached == await h.value(at)
    finally:
        h.ents.close()

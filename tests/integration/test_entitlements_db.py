"""Entitlement state on real databases: SQLite and PostgreSQL (127.0.0.1:5432, a random database per run).

Migrations create exactly the models; concurrent grants, voids, resets and reads never corrupt state or
return a torn balance, and the snapshot cache agrees with a cold recomputation afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select

from common.errors import InvalidInput
from entitlements.db.migrate import upgrade_database
from entitlements.db.models import Base, EntitlementRow, GrantRow
from entitlements.db.session import make_engine
from entitlements.domain import EntitlementExists, EntitlementType, Expiration, ExpirationDuration
from entitlements.service.entitlements import EntitlementInput
from entitlements.service.features import FeatureInput
from entitlements.service.grants import GrantInput
from tests.support.entitlement_harness import NS, OLD, T0, Harness, month
from tests.support.services import postgres_url

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg_server() -> str | None:
    return postgres_url()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, pg_server: str | None) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    if pg_server is None:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (set POSTGRES_URL)")
    import psycopg

    admin = pg_server.replace("postgresql+psycopg://", "postgresql://")
    name = f"ent_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = pg_server.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrations_create_the_models_idempotently(db_url: str) -> None:
    upgrade_database(db_url)
    upgrade_database(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert [d for d in diff if not (d[0] == "remove_table" and d[1].name == "entitlements_alembic_version")] == []


@pytest.fixture
def harness(db_url: str) -> Iterator[Harness]:
    upgrade_database(db_url)
    h = Harness(db_url)
    yield h
    h.ents.close()


async def test_concurrent_grants_voids_resets_and_reads(harness: Harness) -> None:
    h = harness
    eid = await h.setup(grant_amount=100, recurring=True)
    for n in range(6):
        h.usage.add("tokens", "acme", month(n) + timedelta(days=2), 60, stored_at=OLD)
    h.clock.advance_to(month(5) + timedelta(days=20))
    to_void = [await h.grant(5, month(n % 6), years=1) for n in range(8)]
    await h.value()  # warm the snapshot cache so the writes below must invalidate it
    rng = random.Random(7)

    async def create(i: int) -> None:
        await h.grant(10, month(rng.randrange(6)) + timedelta(hours=i), years=1)

    async def void(grant_id: str) -> None:
        await h.ents.grants.void(NS, grant_id)

    async def reset(day: int) -> None:
        # A later reset may commit first: an earlier one is then refused (400), never half-applied.
        with contextlib.suppress(InvalidInput):
            await h.ents.balances.reset(
                NS, "acme", eid, effective_at=month(5) + timedelta(days=day), retain_anchor=True, preserve_overage=None
            )

    reads: list[Decimal] = []

    async def read() -> None:
        v = await h.value()
        assert v.balance is not None
        assert v.balance >= 0
        reads.append(v.balance)

    jobs = (
        [create(i) for i in range(20)]
        + [void(g) for g in to_void]
        + [reset(d) for d in (3, 6, 9)]
        + [read() for _ in range(30)]
    )
    rng.shuffle(jobs)
    await asyncio.gather(*jobs)

    with h.ents.deps.db.read() as s:
        grants = list(s.scalars(select(GrantRow).where(GrantRow.entitlement_id == eid)))
        version = s.scalars(select(EntitlementRow.version).where(EntitlementRow.id == eid)).one()
    assert len(grants) == 1 + 8 + 20
    assert sum(1 for g in grants if g.voided_at is not None) == 8
    resets = await h.ents.balances.periods([await h.ents.entitlements.get(NS, "acme", eid)], h.clock.now())
    assert resets[eid].last_reset >= month(5) + timedelta(days=3)
    # Every write bumped the version exactly once: no lost update (grants + voids + accepted resets).
    assert version >= 1 + 8 + 20 + 8 + 1
    cached = await h.value()
    h.drop_snapshots(eid)
    assert cached == await h.value()
    assert len(reads) == 30


async def test_reads_during_grant_bursts_are_never_torn(harness: Harness) -> None:
    """No usage: a consistent read sees balance == totalAvailableGrantAmount == the number of grants."""
    h = harness
    await h.setup(grant_amount=0, recurring=False)
    h.clock.advance_to(T0 + timedelta(days=3))
    seen: list[tuple[Decimal, Decimal]] = []

    async def read() -> None:
        v = await h.value()
        assert v.balance is not None
        assert v.total_available_grant_amount is not None
        seen.append((v.balance, v.total_available_grant_amount))

    jobs = [h.grant(1, T0 + timedelta(hours=i)) for i in range(25)] + [read() for _ in range(25)]
    random.Random(3).shuffle(jobs)
    await asyncio.gather(*jobs)
    assert all(b == t and b == int(b) and 0 <= b <= 25 for b, t in seen)
    assert (await h.value()).balance == Decimal(25)


async def test_one_active_entitlement_under_concurrent_creates(harness: Harness) -> None:
    h = harness
    await h.ents.features.create(NS, FeatureInput(key="sso", name="SSO"))

    async def create() -> str:
        e = await h.ents.entitlements.create(
            NS, "acme", EntitlementInput(type=EntitlementType.BOOLEAN, feature_key="sso")
        )
        return e.id

    results = await asyncio.gather(*[create() for _ in range(8)], return_exceptions=True)
    created = [r for r in results if isinstance(r, str)]
    conflicts = [r for r in results if isinstance(r, EntitlementExists)]
    assert len(created) == 1
    assert len(conflicts) == 7
    assert all(c.existing_id == created[0] for c in conflicts)


async def test_grant_amounts_survive_the_database_exactly(harness: Harness) -> None:
    h = harness
    await h.setup(grant_amount=0, recurring=False)
    amount = Decimal("12345678901234567890.123456789012345678")
    g = await h.ents.grants.create(
        NS,
        "acme",
        "gpt",
        GrantInput(amount=amount, effective_at=T0, expiration=Expiration(ExpirationDuration.DAY, 1)),
    )
    listed = await h.ents.grants.list_for_entitlement(NS, "acme", "gpt")
    assert next(x for x in listed if x.id == g.id).amount == amount
    assert datetime(2020, 1, 2, tzinfo=UTC) == next(x for x in listed if x.id == g.id).expires_at

"""Per-namespace quotas, checked in the creating transaction on SQLite and PostgreSQL (race-safe: concurrent
creates never pass a limit), and for meters on the ClickHouse engine."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from common.errors import Conflict
from entitlements.db.migrate import upgrade_database
from entitlements.domain import EntitlementType, Expiration, ExpirationDuration
from entitlements.quotas import QuotaExceeded, QuotaSettings
from entitlements.service import build_entitlements
from entitlements.service.entitlements import EntitlementInput
from entitlements.service.features import FeatureInput
from entitlements.service.grants import GrantInput
from tests.support.entitlement_fakes import FakeMeters, FakeUsage
from tests.support.entitlement_harness import NS, T0
from tests.support.services import fresh_postgres_database

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
        upgrade_database(url)
        yield url
        return
    with fresh_postgres_database("quota_test") as url:
        upgrade_database(url)
        yield url


def services(url: str, **limits: int):  # type: ignore[no-untyped-def]
    from common.clock import FrozenClock

    meters = FakeMeters()
    meters.add("tokens")
    return build_entitlements(
        url, meters=meters, usage=FakeUsage(), clock=FrozenClock(T0), quotas=QuotaSettings(**limits)
    )


async def test_feature_quota_holds_under_concurrent_creates(db_url: str) -> None:
    ents = services(db_url, features_per_namespace=3)
    try:
        results = await asyncio.gather(
            *(ents.features.create(NS, FeatureInput(key=f"f{i}", name="F", meter_slug="tokens")) for i in range(8)),
            return_exceptions=True,
        )
        created = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, QuotaExceeded)]
        assert len(created) == 3
        assert len(refused) == 5
        assert isinstance(refused[0], Conflict)
        assert "METERGATE_QUOTAS__FEATURES_PER_NAMESPACE" in str(refused[0])
        # another namespace has its own room
        await ents.features.create("other", FeatureInput(key="f", name="F", meter_slug="tokens"))
    finally:
        ents.close()


async def test_entitlement_and_grant_quotas(db_url: str) -> None:
    ents = services(db_url, entitlements_per_subject=1, grants_per_entitlement=2)
    try:
        for key in ("a", "b"):
            await ents.features.create(NS, FeatureInput(key=key, name=key, meter_slug="tokens"))
        metered = EntitlementInput(
            type=EntitlementType.METERED,
            feature_key="a",
            usage_period_interval="MONTH",
            usage_period_anchor=T0,
            measure_usage_from=T0,
        )
        await ents.entitlements.create(NS, "acme", metered)
        with pytest.raises(QuotaExceeded, match="entitlements per subject"):
            await ents.entitlements.create(NS, "acme", EntitlementInput(type=EntitlementType.BOOLEAN, feature_key="b"))
        await ents.entitlements.create(
            NS, "other-subject", EntitlementInput(type=EntitlementType.BOOLEAN, feature_key="b")
        )
        grant = GrantInput(amount=Decimal(1), effective_at=T0, expiration=Expiration(ExpirationDuration.DAY, 1))
        await ents.grants.create(NS, "acme", "a", grant)
        await ents.grants.create(NS, "acme", "a", grant)
        with pytest.raises(QuotaExceeded, match="grants per entitlement"):
            await ents.grants.create(NS, "acme", "a", grant)
        assert len(await ents.grants.list_for_entitlement(NS, "acme", "a")) == 2
    finally:
        ents.close()

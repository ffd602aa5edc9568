"""A service-level harness for entitlement tests: real database, in-memory meter ports, frozen clock."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from common.clock import FrozenClock
from entitlements.db.repositories import SnapshotRepository
from entitlements.domain import EntitlementType, Expiration, ExpirationDuration
from entitlements.service import Entitlements, build_entitlements
from entitlements.service.balance import Value
from entitlements.service.entitlements import EntitlementInput
from entitlements.service.features import FeatureInput
from entitlements.service.grants import GrantInput
from tests.support.entitlement_fakes import FakeMeters, FakeUsage

T0 = datetime(2020, 1, 1, tzinfo=UTC)
NS = "default"
OLD = datetime(2020, 1, 1, tzinfo=UTC)  # a storage time long before any snapshot is taken


def month(n: int) -> datetime:
    return datetime(2020 + n // 12, n % 12 + 1, 1, tzinfo=UTC)


class Harness:
    def __init__(self, url: str, usage: FakeUsage | None = None) -> None:
        self.clock = FrozenClock(T0)
        self.usage = usage or FakeUsage()
        self.meters = FakeMeters()
        self.meters.add("tokens")
        self.ents: Entitlements = build_entitlements(url, meters=self.meters, usage=self.usage, clock=self.clock)

    async def setup(self, *, grant_amount: int = 1000, recurring: bool = True, rollover: bool = False) -> str:
        await self.ents.features.create(NS, FeatureInput(key="gpt", name="GPT", meter_slug="tokens"))
        e = await self.ents.entitlements.create(
            NS,
            "acme",
            EntitlementInput(
                type=EntitlementType.METERED,
                feature_key="gpt",
                usage_period_interval="MONTH",
                usage_period_anchor=T0,
                measure_usage_from=T0,
            ),
        )
        await self.grant(grant_amount, T0, recurring=recurring, rollover=rollover)
        return e.id

    async def grant(
        self, amount: int, at: datetime, *, recurring: bool = False, years: int = 10, rollover: bool = False
    ) -> str:
        g = await self.ents.grants.create(
            NS,
            "acme",
            "gpt",
            GrantInput(
                amount=Decimal(amount),
                effective_at=at,
                expiration=Expiration(ExpirationDuration.YEAR, years),
                recurrence_interval="MONTH" if recurring else None,
                recurrence_anchor=at if recurring else None,
                max_rollover_amount=Decimal(amount if rollover else 0),
            ),
        )
        return g.id

    async def value(self, at: datetime | None = None) -> Value:
        return await self.ents.balances.value(NS, "acme", "gpt", at)

    def snapshot_count(self, entitlement_id: str) -> int:
        with self.ents.deps.db.read() as s:
            return SnapshotRepository(s).count(entitlement_id)

    def drop_snapshots(self, entitlement_id: str) -> None:
        with self.ents.deps.db.write() as s:
            SnapshotRepository(s).delete_all(entitlement_id)

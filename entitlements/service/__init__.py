"""The entitlement services, built once at start-up around one database and the meter ports."""

from __future__ import annotations

from dataclasses import dataclass

from common.clock import Clock, SystemClock
from common.usage import MeterCatalog, UsageReader
from entitlements.cache.store import BalanceCache
from entitlements.db.session import Database
from entitlements.quotas import QuotaSettings
from entitlements.service.access import AccessService
from entitlements.service.balance import BalanceService
from entitlements.service.customers import CustomerService
from entitlements.service.deps import Deps
from entitlements.service.entitlements import EntitlementService
from entitlements.service.features import FeatureService
from entitlements.service.grants import GrantService
from entitlements.service.values import CachedBalances


@dataclass(frozen=True)
class Entitlements:
    """Everything the HTTP layer needs. `features` is also the aggregator's MeterUseGuard."""

    deps: Deps
    features: FeatureService
    entitlements: EntitlementService
    grants: GrantService
    balances: BalanceService
    values: CachedBalances  # value reads at "now" through the balance cache (entitlements/cache)
    access: AccessService  # many (subject, entitlement) values in one call
    customers: CustomerService

    def close(self) -> None:
        self.deps.db.dispose()


def build_entitlements(
    db: Database | str,
    *,
    meters: MeterCatalog,
    usage: UsageReader,
    clock: Clock,
    wall_clock: Clock | None = None,
    cache: BalanceCache | None = None,
    quotas: QuotaSettings | None = None,
) -> Entitlements:
    """`db` is a Database or a URL; run `entitlements.db.migrate.upgrade_database` on it first.

    `cache`: the balance cache, only when something keeps it fresh (state changes in this process only,
    and an ingest notification stream it follows); None computes every value read."""
    database = Database(db) if isinstance(db, str) else db
    deps = Deps(
        db=database,
        meters=meters,
        usage=usage,
        clock=clock,
        wall_clock=wall_clock or SystemClock(),
        quotas=quotas or QuotaSettings(),
    )
    balances = BalanceService(deps)
    entitlements = EntitlementService(deps)
    values = CachedBalances(balances, cache)
    return Entitlements(
        deps=deps,
        features=FeatureService(deps),
        entitlements=entitlements,
        grants=GrantService(deps),
        balances=balances,
        values=values,
        access=AccessService(values, entitlements),
        customers=CustomerService(deps),
    )

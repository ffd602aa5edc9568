"""Access for many (subject, entitlement) pairs in one call, through the balance cache.

`AccessService.check(namespace, items)` takes a list of `AccessItem(subject, id_or_feature_key)` and returns
one `AccessResult` per item, in order: the value (with `as_of`, from the cache when warm) or the error of
that item alone (e.g. no such entitlement). `hasAccess` is the single value read's, item by item.
`for_subjects` lists every active entitlement of each subject or customer first (one transaction for all).

Cold items are computed together (`CachedBalances.compute_many`, entitlements.service.bulk): one transaction
loads them all, and usage is read once per meter for all subjects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common.errors import MetergateError
from entitlements.domain import Entitlement, OwnerRef
from entitlements.service.entitlements import EntitlementService
from entitlements.service.values import CachedBalances, FreshValue


@dataclass(frozen=True, slots=True)
class AccessItem:
    subject: OwnerRef  # a subject key, or a CustomerRef
    id_or_feature_key: str


@dataclass(frozen=True, slots=True)
class AccessResult:
    item: AccessItem
    value: FreshValue | None = None
    error: MetergateError | None = None


class AccessService:
    def __init__(self, values: CachedBalances, entitlements: EntitlementService) -> None:
        self.values = values
        self.entitlements = entitlements

    async def check(self, namespace: str, items: Sequence[AccessItem], *, fresh: bool = False) -> list[AccessResult]:
        results: list[AccessResult | None] = [None] * len(items)
        if not fresh:
            for n, item in enumerate(items):
                warm = self.values.warm(namespace, item.subject, item.id_or_feature_key)
                if warm is not None:
                    results[n] = AccessResult(item, value=warm)
        cold = [n for n, r in enumerate(results) if r is None]
        if len(cold) == 1:  # one item: the single read (it may use a stored snapshot)
            item = items[cold[0]]
            try:
                value = await self.values.value(namespace, item.subject, item.id_or_feature_key, fresh=fresh)
                results[cold[0]] = AccessResult(item, value=value)
            except MetergateError as exc:
                results[cold[0]] = AccessResult(item, error=exc)
        elif cold:
            pairs = [(items[n].subject, items[n].id_or_feature_key) for n in cold]
            for n, answer in zip(cold, await self.values.compute_many(namespace, pairs), strict=True):
                if isinstance(answer, MetergateError):
                    results[n] = AccessResult(items[n], error=answer)
                else:
                    results[n] = AccessResult(items[n], value=answer)
        return [r for r in results if r is not None]

    async def for_subjects(
        self, namespace: str, subjects: Sequence[OwnerRef], *, fresh: bool = False
    ) -> dict[OwnerRef, list[tuple[Entitlement, AccessResult]]]:
        """Every active entitlement of each subject (or customer) with its access result, by subject as asked."""
        owned = await self.entitlements.active_of_owners(namespace, subjects)
        pairs = [(ref, e) for ref, ents in owned.items() for e in ents]
        results = await self.check(namespace, [AccessItem(ref, e.id) for ref, e in pairs], fresh=fresh)
        out: dict[OwnerRef, list[tuple[Entitlement, AccessResult]]] = {ref: [] for ref in owned}
        for (ref, ent), result in zip(pairs, results, strict=True):
            out[ref].append((ent, result))
        return out

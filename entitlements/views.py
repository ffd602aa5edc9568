"""Domain values -> OpenMeter v1 response objects (camelCase dicts; Decimals stay Decimal until encoding)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from entitlements import engine
from entitlements.domain import Customer, Entitlement, EntitlementType, Feature, Grant
from entitlements.service.balance import value_fields
from entitlements.service.history import History
from entitlements.service.owners import attribution
from entitlements.service.terms import PeriodView, recurrence_of


def feature_view(f: Feature) -> dict[str, Any]:
    return {
        "id": f.id,
        "key": f.key,
        "name": f.name,
        "meterSlug": f.meter_slug,
        "meterGroupByFilters": dict(f.meter_group_by_filters) or None,
        "metadata": dict(f.metadata),
        "createdAt": f.created_at,
        "updatedAt": f.updated_at,
        "archivedAt": f.archived_at,
        "deletedAt": None,
    }


def customer_view(c: Customer) -> dict[str, Any]:
    return {
        "id": c.id,
        "key": c.key,
        "name": c.name,
        "description": c.description,
        "metadata": dict(c.metadata),
        "usageAttribution": {"subjectKeys": list(c.subject_keys)},
        "primaryEmail": c.primary_email,
        "currency": c.currency,
        "createdAt": c.created_at,
        "updatedAt": c.updated_at,
        "deletedAt": c.deleted_at,
    }


def subject_key_of(e: Entitlement, customer: Customer | None) -> str:
    """v1's `subjectKey`: the subject's, or for a customer's entitlement its first attributed subject."""
    if e.customer_id is None or customer is None:
        return e.subject_key
    subjects = attribution(customer)
    return subjects[0] if subjects else customer.id


def entitlement_v2_view(e: Entitlement, period: PeriodView | None, customer: Customer | None) -> dict[str, Any]:
    """OpenMeter's EntitlementV2: the v1 shape with customerId/customerKey instead of subjectKey, and `issue`."""
    out = entitlement_view(e, period, customer)
    del out["subjectKey"]
    out["customerId"] = e.customer_id
    out["customerKey"] = customer.key if customer is not None else None
    if e.type is EntitlementType.METERED:
        out.pop("isUnlimited", None)
        if e.issue_after_reset is not None:
            out["issue"] = {"amount": e.issue_after_reset, "priority": e.issue_after_reset_priority}
    return out


def entitlement_view(e: Entitlement, period: PeriodView | None, customer: Customer | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": e.id,
        "type": e.type.value,
        "featureId": e.feature_id,
        "featureKey": e.feature_key,
        "subjectKey": subject_key_of(e, customer),
        "metadata": dict(e.metadata),
        "createdAt": e.created_at,
        "updatedAt": e.updated_at,
        "deletedAt": e.deleted_at,
        "activeFrom": e.created_at,
        "activeTo": e.deleted_at,
    }
    if e.type is EntitlementType.STATIC:
        out["config"] = e.config
    if e.type is EntitlementType.METERED and e.usage_period is not None:
        interval = engine.Period.parse(e.usage_period.interval)
        named = (
            e.usage_period.interval.upper() if e.usage_period.interval.upper() in engine.Interval.__members__ else None
        )
        out.update(
            {
                "isSoftLimit": e.is_soft_limit,
                "isUnlimited": False,
                "issueAfterReset": e.issue_after_reset,
                "issueAfterResetPriority": e.issue_after_reset_priority,
                "preserveOverageAtReset": e.preserve_overage_at_reset,
                "measureUsageFrom": e.measure_usage_from,
                "usagePeriod": {
                    "interval": named or str(interval),
                    "intervalISO": str(interval),
                    "anchor": period.anchor if period else e.usage_period.anchor,
                },
            }
        )
        if period is not None:
            out["currentUsagePeriod"] = {"from": period.start, "to": period.end}
            out["lastReset"] = period.last_reset
    return out


def grant_view(g: Grant, now: datetime) -> dict[str, Any]:
    next_recurrence = None
    if g.recurrence is not None:
        candidate = recurrence_of(g.recurrence).after(max(now, g.effective_at))
        end = min((t for t in (g.expires_at, g.voided_at) if t is not None), default=None)
        next_recurrence = candidate if end is None or candidate < end else None
    return {
        "id": g.id,
        "entitlementId": g.entitlement_id,
        "amount": g.amount,
        "priority": g.priority,
        "effectiveAt": g.effective_at,
        "expiration": (
            None if g.expiration is None else {"duration": g.expiration.duration.value, "count": g.expiration.count}
        ),
        "expiresAt": g.expires_at,
        "minRolloverAmount": g.min_rollover_amount,
        "maxRolloverAmount": g.max_rollover_amount,
        "recurrence": (
            {
                "interval": g.recurrence.interval,
                "intervalISO": str(engine.Period.parse(g.recurrence.interval)),
                "anchor": g.recurrence.anchor,
            }
            if g.recurrence is not None
            else None
        ),
        "nextRecurrence": next_recurrence,
        "metadata": dict(g.metadata),
        "createdAt": g.created_at,
        "updatedAt": g.updated_at,
        "voidedAt": g.voided_at,
        "deletedAt": None,
    }


value_view = value_fields  # OpenMeter's EntitlementValue fields (entitlements.service.balance)


def history_view(h: History) -> dict[str, Any]:
    return {
        "windowedHistory": [
            {"period": {"from": w.start, "to": w.end}, "usage": w.usage, "balanceAtStart": w.balance_at_start}
            for w in h.windows
        ],
        "burndownHistory": [
            {
                "period": {"from": s.start, "to": s.end},
                "usage": s.usage,
                "overage": s.overage_at_end,
                "balanceAtStart": s.balance_at_start,
                "grantBalancesAtStart": dict(s.balances_at_start),
                "balanceAtEnd": s.balance_at_end,
                "grantBalancesAtEnd": dict(s.balances_at_end),
                "grantUsages": [{"grantId": u.grant_id, "usage": u.usage} for u in s.grant_usages],
            }
            for s in h.segments
        ],
    }

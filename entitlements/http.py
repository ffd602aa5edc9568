"""OpenMeter v1 routes for features, entitlements, grants, balances (value, history, reset).

Every route reaches the services one way, `ents: Ents` (an `Annotated[..., Depends]` alias over
`app.state.services.entitlements`, see metergate.wiring), as the meters, access and notification routes do;
the namespace comes from the auth middleware. Status codes come from common.http's table; success codes are
OpenMeter's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import Response

from common import http
from common.cloudevents import parse_time
from common.errors import InvalidInput, Unavailable
from common.http import Namespace
from entitlements.domain import EntitlementType, Expiration, ExpirationDuration, OwnerRef
from entitlements.openapi import ENTITLEMENT, FEATURE, GRANT, HISTORY, VALUE, array_or_page, ok
from entitlements.schemas import (
    EntitlementCreateBody,
    FeatureCreateBody,
    GrantCreateBody,
    GrantV2CreateBody,
    ResetBody,
    page_of,
    parse_body,
)
from entitlements.service import Entitlements
from entitlements.service.entitlements import EntitlementInput
from entitlements.service.features import FeatureInput
from entitlements.service.grants import GrantInput
from entitlements.service.history import WindowSize, balance_history, zone
from entitlements.views import (
    entitlement_v2_view,
    entitlement_view,
    feature_view,
    grant_view,
    history_view,
    value_view,
)

router = APIRouter(tags=["entitlements"])

ENT = "/api/v1/subjects/{subjectIdOrKey}/entitlements"
MAX_LIMIT = 1000


async def services(request: Request) -> Entitlements:
    """The app's entitlement services (the dependency behind `Ents`). Every dependency of the routes is a
    coroutine: FastAPI runs a plain function in its thread pool, a thread hop on every request."""
    found = getattr(getattr(request.app.state, "services", None), "entitlements", None)
    if not isinstance(found, Entitlements):
        raise Unavailable("the entitlement service is not configured in this process")
    return found


Ents = Annotated[Entitlements, Depends(services)]


json_response = http.json_response  # the one JSON answer (common.http)


def parse_instant(value: str | None, field: str) -> datetime | None:
    return None if value is None else parse_time(value, field=field)


def paging(page: int | None, page_size: int | None, offset: int, limit: int | None) -> tuple[int, int]:
    if page is not None or page_size is not None:
        size = min(page_size or 100, MAX_LIMIT)
        return size, ((page or 1) - 1) * size
    return min(limit or MAX_LIMIT, MAX_LIMIT), offset


Page = Annotated[int | None, Query(ge=1, le=100_000)]
PageSize = Annotated[int | None, Query(alias="pageSize", ge=1, le=MAX_LIMIT)]
Offset = Annotated[int, Query(ge=0, le=100_000_000)]
Limit = Annotated[int | None, Query(ge=1, le=MAX_LIMIT)]


# ---- features ----


@router.get("/api/v1/features", responses=ok(array_or_page(FEATURE)))
async def list_features(
    namespace: Namespace,
    ents: Ents,
    meter_slug: Annotated[list[str] | None, Query(alias="meterSlug")] = None,
    include_archived: Annotated[bool, Query(alias="includeArchived")] = False,
    page: Page = None,
    page_size: PageSize = None,
    offset: Offset = 0,
    limit: Limit = None,
) -> Response:
    n, skip = paging(page, page_size, offset, limit)
    svc = ents.features
    items = await svc.search(
        namespace, include_archived=include_archived, meter_slugs=meter_slug or (), limit=n, offset=skip
    )
    total = (
        len(items)
        if page is None and page_size is None
        else await svc.count(namespace, include_archived=include_archived, meter_slugs=meter_slug or ())
    )
    return json_response(page_of([feature_view(f) for f in items], page, page_size, total))


@router.post("/api/v1/features", status_code=201, responses=ok(FEATURE, 201))
async def create_feature(request: Request, namespace: Namespace, ents: Ents) -> Response:
    body = parse_body(FeatureCreateBody, await request.body())
    feature = await ents.features.create(
        namespace,
        FeatureInput(
            key=body.key,
            name=body.name,
            meter_slug=body.meter_slug,
            meter_group_by_filters=body.meter_group_by_filters or {},
            metadata=body.metadata or {},
        ),
    )
    return json_response(feature_view(feature), 201)


@router.get("/api/v1/features/{featureId}", responses=ok(FEATURE))
async def get_feature(
    namespace: Namespace, ents: Ents, feature_id: Annotated[str, Path(alias="featureId")]
) -> Response:
    return json_response(feature_view(await ents.features.get(namespace, feature_id)))


@router.delete("/api/v1/features/{featureId}", status_code=204)
async def archive_feature(
    namespace: Namespace, ents: Ents, feature_id: Annotated[str, Path(alias="featureId")]
) -> Response:
    await ents.features.archive(namespace, feature_id)
    return Response(status_code=204)


# ---- entitlements ----


def entitlement_input(body: EntitlementCreateBody) -> EntitlementInput:
    if body.is_unlimited:
        raise InvalidInput("isUnlimited is deprecated and not supported: use isSoftLimit", field="isUnlimited")
    return EntitlementInput(
        type=EntitlementType(body.type),
        feature_id=body.feature_id,
        feature_key=body.feature_key,
        metadata=body.metadata or {},
        config=body.config,
        usage_period_interval=body.usage_period.interval if body.usage_period else None,
        usage_period_anchor=body.usage_period.anchor if body.usage_period else None,
        measure_usage_from=body.measure_usage_from,
        is_soft_limit=body.is_soft_limit,
        issue_after_reset=body.issue_after_reset,
        issue_after_reset_priority=body.issue_after_reset_priority,
        preserve_overage_at_reset=body.preserve_overage_at_reset,
    )


async def entitlement_views(svc: Entitlements, entitlements: list[Any], *, v2: bool = False) -> list[dict[str, Any]]:
    """v1 (subjectKey) or v2 (customerId, customerKey) views, with current periods and owners loaded in bulk."""
    periods = await svc.balances.periods(entitlements, svc.deps.clock.now())
    ids = [e.customer_id for e in entitlements if e.customer_id is not None]
    namespace = entitlements[0].namespace if entitlements else ""
    customers = await svc.customers.by_ids(namespace, ids) if ids else {}
    view = entitlement_v2_view if v2 else entitlement_view
    return [view(e, periods.get(e.id), customers.get(e.customer_id or "")) for e in entitlements]


@router.post(ENT, status_code=201, responses=ok(ENTITLEMENT, 201))
async def create_entitlement(
    request: Request, namespace: Namespace, ents: Ents, subject: Annotated[str, Path(alias="subjectIdOrKey")]
) -> Response:
    svc = ents
    spec = entitlement_input(parse_body(EntitlementCreateBody, await request.body()))
    created = await svc.entitlements.create(namespace, subject, spec)
    return json_response((await entitlement_views(svc, [created]))[0], 201)


@router.get(ENT, responses=ok({"type": "array", "items": ENTITLEMENT}))
async def list_subject_entitlements(
    namespace: Namespace,
    ents: Ents,
    subject: Annotated[str, Path(alias="subjectIdOrKey")],
    include_deleted: Annotated[bool, Query(alias="includeDeleted")] = False,
) -> Response:
    svc = ents
    items = await svc.entitlements.search(namespace, subject_keys=[subject], include_deleted=include_deleted)
    return json_response(await entitlement_views(svc, items))


@router.get("/api/v1/entitlements", responses=ok(array_or_page(ENTITLEMENT)))
async def list_entitlements(
    namespace: Namespace,
    ents: Ents,
    subject: Annotated[list[str] | None, Query()] = None,
    feature: Annotated[list[str] | None, Query()] = None,
    include_deleted: Annotated[bool, Query(alias="includeDeleted")] = False,
    page: Page = None,
    page_size: PageSize = None,
    offset: Offset = 0,
    limit: Limit = None,
) -> Response:
    svc = ents
    n, skip = paging(page, page_size, offset, limit)
    filters: dict[str, Any] = {
        "subject_keys": subject or (),
        "feature_keys": feature or (),
        "include_deleted": include_deleted,
    }
    items = await svc.entitlements.search(namespace, limit=n, offset=skip, **filters)
    total = len(items)
    if page is not None or page_size is not None:
        total = await svc.entitlements.count(namespace, **filters)
    return json_response(page_of(await entitlement_views(svc, items), page, page_size, total))


@router.get("/api/v1/entitlements/{entitlementId}", responses=ok(ENTITLEMENT))
async def get_entitlement_by_id(
    namespace: Namespace, ents: Ents, entitlement_id: Annotated[str, Path(alias="entitlementId")]
) -> Response:
    svc = ents
    found = await svc.entitlements.get(namespace, None, entitlement_id)
    return json_response((await entitlement_views(svc, [found]))[0])


@router.get(ENT + "/{entitlementId}", responses=ok(ENTITLEMENT))
async def get_entitlement(
    namespace: Namespace,
    ents: Ents,
    subject: Annotated[str, Path(alias="subjectIdOrKey")],
    entitlement_id: Annotated[str, Path(alias="entitlementId")],
) -> Response:
    svc = ents
    found = await svc.entitlements.get(namespace, subject, entitlement_id)
    return json_response((await entitlement_views(svc, [found]))[0])


@router.delete(ENT + "/{entitlementId}", status_code=204)
async def delete_entitlement(
    namespace: Namespace,
    ents: Ents,
    subject: Annotated[str, Path(alias="subjectIdOrKey")],
    entitlement_id: Annotated[str, Path(alias="entitlementId")],
) -> Response:
    await ents.entitlements.delete(namespace, subject, entitlement_id)
    return Response(status_code=204)


@router.put(ENT + "/{entitlementIdOrFeatureKey}/override", status_code=201, responses=ok(ENTITLEMENT, 201))
async def override_entitlement(
    request: Request,
    namespace: Namespace,
    ents: Ents,
    subject: Annotated[str, Path(alias="subjectIdOrKey")],
    id_or_feature_key: Annotated[str, Path(alias="entitlementIdOrFeatureKey")],
) -> Response:
    svc = ents
    spec = entitlement_input(parse_body(EntitlementCreateBody, await request.body()))
    created = await svc.entitlements.override(namespace, subject, id_or_feature_key, spec)
    return json_response((await entitlement_views(svc, [created]))[0], 201)


# ---- grants ----


@router.post(ENT + "/{entitlementIdOrFeatureKey}/grants", status_code=201, responses=ok(GRANT, 201))
async def create_grant(
    request: Request,
    namespace: Namespace,
    ents: Ents,
    subject: Annotated[str, Path(alias="subjectIdOrKey")],
    id_or_feature_key: Annotated[str, Path(alias="entitlementIdOrFeatureKey")],
) -> Response:
    svc = ents
    body = parse_body(GrantCreateBody, await request.body())
    grant = await svc.grants.create(namespace, subject, id_or_feature_key, grant_input(body))
    return json_response(grant_view(grant, svc.deps.clock.now()), 201)


def grant_input(body: GrantCreateBody | GrantV2CreateBody) -> GrantInput:
    return GrantInput(
        amount=body.amount,
        effective_at=body.effective_at,
        expiration=(
            None
            if body.expiration is None
            else Expiration(ExpirationDuration(body.expiration.duration), body.expiration.count)
        ),
        priority=body.priority,
        min_rollover_amount=body.min_rollover_amount,
        max_rollover_amount=body.max_rollover_amount,
        recurrence_interval=body.recurrence.interval if body.recurrence else None,
        recurrence_anchor=body.recurrence.anchor if body.recurrence else None,
        metadata=body.metadata or {},
    )


@router.get(ENT + "/{entitlementIdOrFeatureKey}/grants", responses=ok({"type": "array", "items": GRANT}))
async def list_entitlement_grants(
    namespace: Namespace,
    ents: Ents,
    subject: Annotated[str, Path(alias="subjectIdOrKey")],
    id_or_feature_key: Annotated[str, Path(alias="entitlementIdOrFeatureKey")],
    include_deleted: Annotated[bool, Query(alias="includeDeleted")] = False,
) -> Response:
    svc = ents
    grants = await svc.grants.list_for_entitlement(
        namespace, subject, id_or_feature_key, include_voided=include_deleted
    )
    now = svc.deps.clock.now()
    return json_response([grant_view(g, now) for g in grants])


@router.get("/api/v1/grants", responses=ok(array_or_page(GRANT)))
async def list_grants(
    namespace: Namespace,
    ents: Ents,
    subject: Annotated[list[str] | None, Query()] = None,
    feature: Annotated[list[str] | None, Query()] = None,
    include_deleted: Annotated[bool, Query(alias="includeDeleted")] = False,
    page: Page = None,
    page_size: PageSize = None,
    offset: Offset = 0,
    limit: Limit = None,
) -> Response:
    svc = ents
    n, skip = paging(page, page_size, offset, limit)
    filters: dict[str, Any] = {
        "subject_keys": subject or (),
        "feature_keys": feature or (),
        "include_voided": include_deleted,
    }
    grants = await svc.grants.search(namespace, limit=n, offset=skip, **filters)
    total = len(grants)
    if page is not None or page_size is not None:
        total = await svc.grants.count(namespace, **filters)
    now = svc.deps.clock.now()
    return json_response(page_of([grant_view(g, now) for g in grants], page, page_size, total))


@router.delete("/api/v1/grants/{grantId}", status_code=204)
async def void_grant(namespace: Namespace, ents: Ents, grant_id: Annotated[str, Path(alias="grantId")]) -> Response:
    await ents.grants.void(namespace, grant_id)
    return Response(status_code=204)


# ---- balances ----


def wants_fresh(cache_control: str | None) -> bool:
    """`Cache-Control: no-cache` (or no-store, max-age=0) asks for a computation, not a cached value."""
    directives = {d.strip().lower() for d in (cache_control or "").split(",")}
    return bool(directives & {"no-cache", "no-store", "max-age=0"})


@router.get(ENT + "/{entitlementIdOrFeatureKey}/value", responses=ok(VALUE))
async def entitlement_value(
    namespace: Namespace,
    ents: Ents,
    subject: Annotated[str, Path(alias="subjectIdOrKey")],
    id_or_feature_key: Annotated[str, Path(alias="entitlementIdOrFeatureKey")],
    time: str | None = None,
    cache_control: Annotated[str | None, Header(alias="Cache-Control")] = None,
) -> Response:
    """The entitlement's value (OpenMeter's fields) plus `asOf`: every event stored before it is counted.

    At "now" (no `time`) the answer may come from the balance cache, which is kept exact by state changes,
    ingest notifications and the engine's next change instant; `Cache-Control: no-cache` forces a fresh
    computation."""
    return await value_response(ents, namespace, subject, id_or_feature_key, time, cache_control)


async def value_response(
    ents: Entitlements,
    namespace: str,
    owner: OwnerRef,
    id_or_feature_key: str,
    time: str | None,
    cache_control: str | None,
) -> Response:
    """A value read's answer (subject and customer routes): OpenMeter's fields plus `asOf`."""
    fresh = await ents.values.value(
        namespace, owner, id_or_feature_key, parse_instant(time, "time"), fresh=wants_fresh(cache_control)
    )
    if fresh.body:  # from the cache: encoded when it was stored
        return Response(fresh.body, media_type="application/json")
    return json_response({**value_view(fresh.value), "asOf": fresh.as_of})


async def history_response(
    ents: Entitlements,
    namespace: str,
    owner: OwnerRef,
    id_or_feature_key: str,
    window_size: str,
    from_: str | None,
    to: str | None,
    window_time_zone: str,
) -> Response:
    """A history read's answer (subject and customer routes): windowed history and burn-down segments."""
    try:
        size = WindowSize(window_size.upper())
    except ValueError:
        raise InvalidInput("windowSize must be MINUTE, HOUR, DAY or MONTH", field="windowSize") from None
    history = await balance_history(
        ents.balances,
        namespace,
        owner,
        id_or_feature_key,
        start=parse_instant(from_, "from"),
        end=parse_instant(to, "to"),
        size=size,
        tz=zone(window_time_zone),
    )
    return json_response(history_view(history))


async def reset_response(
    request: Request, ents: Entitlements, namespace: str, owner: OwnerRef, id_or_feature_key: str
) -> Response:
    body = parse_body(ResetBody, await request.body())
    await ents.balances.reset(
        namespace,
        owner,
        id_or_feature_key,
        effective_at=body.effective_at,
        retain_anchor=body.retain_anchor,
        preserve_overage=body.preserve_overage,
    )
    return Response(status_code=204)


@router.get(ENT + "/{entitlementId}/history", responses=ok(HISTORY))
async def entitlement_history(
    namespace: Namespace,
    ents: Ents,
    subject: Annotated[str, Path(alias="subjectIdOrKey")],
    entitlement_id: Annotated[str, Path(alias="entitlementId")],
    window_size: Annotated[str, Query(alias="windowSize")],
    from_: Annotated[str | None, Query(alias="from")] = None,
    to: str | None = None,
    window_time_zone: Annotated[str, Query(alias="windowTimeZone")] = "UTC",
) -> Response:
    return await history_response(ents, namespace, subject, entitlement_id, window_size, from_, to, window_time_zone)


@router.post(ENT + "/{entitlementId}/reset", status_code=204)
async def reset_usage(
    request: Request,
    namespace: Namespace,
    ents: Ents,
    subject: Annotated[str, Path(alias="subjectIdOrKey")],
    entitlement_id: Annotated[str, Path(alias="entitlementId")],
) -> Response:
    return await reset_response(request, ents, namespace, subject, entitlement_id)

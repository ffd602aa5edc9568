"""OpenMeter's customer routes: customers (v1), their access and values (the gateway calls), and the v2
entitlement API on customers (`/api/v2/customers/{customerIdOrKey}/entitlements...`, `/api/v2/entitlements`,
`/api/v2/grants`).

A customer's usage is the usage of its subjects (its key and `usageAttribution.subjectKeys`); a subject in a
customer stands for the customer on the v1 subject routes, so both API versions see the same entitlements.
v2 lists answer OpenMeter's paginated shape (`items, page, pageSize, totalCount`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response

from common.errors import InvalidInput
from common.http import Namespace
from entitlements.access_http import result_view
from entitlements.db.repositories import CustomerFilters
from entitlements.domain import CustomerNotFound, CustomerRef
from entitlements.http import (
    Ents,
    Limit,
    Offset,
    Page,
    PageSize,
    entitlement_input,
    entitlement_views,
    grant_input,
    history_response,
    json_response,
    paging,
    reset_response,
    value_response,
    wants_fresh,
)
from entitlements.openapi import ACCESS, CUSTOMER_BODY, ENTITLEMENT_V2, GRANT, HISTORY, VALUE, ok, page
from entitlements.schemas import CustomerBody, EntitlementV2CreateBody, GrantV2CreateBody, parse_body
from entitlements.service import Entitlements
from entitlements.service.customers import CustomerInput
from entitlements.service.entitlements import EntitlementInput
from entitlements.views import customer_view, grant_view

router = APIRouter(tags=["customers"])

CUSTOMER = "/api/v1/customers/{customerIdOrKey}"
V2 = "/api/v2/customers/{customerIdOrKey}/entitlements"
Order = Annotated[str, Query(pattern="^(ASC|DESC|asc|desc)$")]


def _paginated(items: list[Any], page: int, page_size: int, total: int) -> dict[str, Any]:
    return {"items": items, "page": page, "pageSize": page_size, "totalCount": total}


def _customer_input(body: CustomerBody) -> CustomerInput:
    return CustomerInput(
        name=body.name,
        key=body.key,
        description=body.description,
        metadata=body.metadata or {},
        subject_keys=body.usage_attribution.subject_keys if body.usage_attribution else (),
        primary_email=body.primary_email,
        currency=body.currency,
    )


# ---- customers ----


@router.post("/api/v1/customers", status_code=201, responses=ok(CUSTOMER_BODY, 201))
async def create_customer(request: Request, namespace: Namespace, ents: Ents) -> Response:
    created = await ents.customers.create(namespace, _customer_input(parse_body(CustomerBody, await request.body())))
    return json_response(customer_view(created), 201)


@router.get("/api/v1/customers", responses=ok(page(CUSTOMER_BODY)))
async def list_customers(
    namespace: Namespace,
    ents: Ents,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(alias="pageSize", ge=1, le=1000)] = 100,
    order: Order = "ASC",
    order_by: Annotated[str, Query(alias="orderBy")] = "id",
    include_deleted: Annotated[bool, Query(alias="includeDeleted")] = False,
    key: str | None = None,
    name: str | None = None,
    primary_email: Annotated[str | None, Query(alias="primaryEmail")] = None,
    subject: str | None = None,
) -> Response:
    filters = CustomerFilters(
        key=key, name=name, primary_email=primary_email, subject=subject, include_deleted=include_deleted
    )
    found, total = await ents.customers.search(
        namespace,
        filters,
        order_by=order_by,
        descending=order.upper() == "DESC",
        limit=page_size,
        offset=(page - 1) * page_size,
    )
    return json_response(_paginated([customer_view(c) for c in found], page, page_size, total))


@router.get(CUSTOMER, responses=ok(CUSTOMER_BODY))
async def get_customer(
    namespace: Namespace, ents: Ents, customer: Annotated[str, Path(alias="customerIdOrKey")]
) -> Response:
    return json_response(customer_view(await ents.customers.get(namespace, customer)))


@router.put(CUSTOMER, responses=ok(CUSTOMER_BODY))
async def update_customer(
    request: Request, namespace: Namespace, ents: Ents, customer: Annotated[str, Path(alias="customerIdOrKey")]
) -> Response:
    spec = _customer_input(parse_body(CustomerBody, await request.body()))
    return json_response(customer_view(await ents.customers.update(namespace, customer, spec)))


@router.delete(CUSTOMER, status_code=204)
async def delete_customer(
    namespace: Namespace, ents: Ents, customer: Annotated[str, Path(alias="customerIdOrKey")]
) -> Response:
    await ents.customers.delete(namespace, customer)
    return Response(status_code=204)


# ---- the gateway's calls ----


@router.get(CUSTOMER + "/access", responses=ok(ACCESS))
async def customer_access(
    namespace: Namespace,
    ents: Ents,
    customer: Annotated[str, Path(alias="customerIdOrKey")],
    cache_control: Annotated[str | None, Header(alias="Cache-Control")] = None,
) -> Response:
    """Every active entitlement of the customer keyed by feature key (OpenMeter's CustomerAccess), each with
    the value read's fields plus `asOf`, from the balance cache when warm (as the subject access route)."""
    ref = CustomerRef(customer)
    found = await ents.access.for_subjects(namespace, [ref], fresh=wants_fresh(cache_control))
    return json_response({"entitlements": {e.feature_key: result_view(r) for e, r in found.get(ref, [])}})


@router.get(CUSTOMER + "/entitlements/{featureKey}/value", responses=ok(VALUE))
async def customer_value(
    namespace: Namespace,
    ents: Ents,
    customer: Annotated[str, Path(alias="customerIdOrKey")],
    feature_key: Annotated[str, Path(alias="featureKey")],
    time: str | None = None,
    cache_control: Annotated[str | None, Header(alias="Cache-Control")] = None,
) -> Response:
    """The customer's entitlement value for the feature, plus `asOf` (the subject value route's fast path)."""
    return await value_response(ents, namespace, CustomerRef(customer), feature_key, time, cache_control)


# ---- v2 entitlements on customers ----


def _with_issue(body: EntitlementV2CreateBody) -> EntitlementInput:
    """v2's `issue: {amount, priority}` is v1's issueAfterReset / issueAfterResetPriority."""
    spec = entitlement_input(body)
    if body.issue is None:
        return spec
    if body.issue_after_reset is not None:
        raise InvalidInput("give either issue or issueAfterReset, not both", field="issue")
    return replace(spec, issue_after_reset=body.issue.amount, issue_after_reset_priority=body.issue.priority)


@router.post(V2, status_code=201, responses=ok(ENTITLEMENT_V2, 201))
async def create_customer_entitlement(
    request: Request,
    namespace: Namespace,
    ents: Ents,
    customer: Annotated[str, Path(alias="customerIdOrKey")],
) -> Response:
    body = parse_body(EntitlementV2CreateBody, await request.body())
    spec = entitlement_input(body)
    spec = _with_issue(body)
    grants = [grant_input(g) for g in body.grants or ()]
    if grants and body.type != "metered":
        raise InvalidInput("only a metered entitlement has grants", field="grants")
    for g in grants:
        ents.grants.validate(g)  # every grant is checked before anything is written
    ref = CustomerRef(customer)
    created = await ents.entitlements.create(namespace, ref, spec)
    for g in grants:
        await ents.grants.create(namespace, ref, created.id, g)
    return json_response((await entitlement_views(ents, [created], v2=True))[0], 201)


@router.get(V2, responses=ok(page(ENTITLEMENT_V2)))
async def list_customer_entitlements(
    namespace: Namespace,
    ents: Ents,
    customer: Annotated[str, Path(alias="customerIdOrKey")],
    include_deleted: Annotated[bool, Query(alias="includeDeleted")] = False,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(alias="pageSize", ge=1, le=1000)] = 100,
    order: Order = "ASC",
    order_by: Annotated[str, Query(alias="orderBy", pattern="^(createdAt|updatedAt)$")] = "createdAt",
) -> Response:
    found = await ents.customers.get(namespace, customer)
    if found.deleted_at is not None:
        raise CustomerNotFound(customer)
    filters: dict[str, Any] = {"customer_ids": [found.id], "include_deleted": include_deleted}
    items = await ents.entitlements.search(
        namespace,
        limit=page_size,
        offset=(page - 1) * page_size,
        order_by=order_by,
        descending=order.upper() == "DESC",
        **filters,
    )
    total = await ents.entitlements.count(namespace, **filters)
    return json_response(_paginated(await entitlement_views(ents, items, v2=True), page, page_size, total))


@router.get(V2 + "/{entitlementIdOrFeatureKey}", responses=ok(ENTITLEMENT_V2))
async def get_customer_entitlement(
    namespace: Namespace,
    ents: Ents,
    customer: Annotated[str, Path(alias="customerIdOrKey")],
    id_or_feature_key: Annotated[str, Path(alias="entitlementIdOrFeatureKey")],
) -> Response:
    found = await ents.entitlements.get(namespace, CustomerRef(customer), id_or_feature_key)
    return json_response((await entitlement_views(ents, [found], v2=True))[0])


@router.delete(V2 + "/{entitlementIdOrFeatureKey}", status_code=204)
async def delete_customer_entitlement(
    namespace: Namespace,
    ents: Ents,
    customer: Annotated[str, Path(alias="customerIdOrKey")],
    id_or_feature_key: Annotated[str, Path(alias="entitlementIdOrFeatureKey")],
) -> Response:
    await ents.entitlements.delete(namespace, CustomerRef(customer), id_or_feature_key)
    return Response(status_code=204)


@router.put(V2 + "/{entitlementIdOrFeatureKey}/override", status_code=201, responses=ok(ENTITLEMENT_V2, 201))
async def override_customer_entitlement(
    request: Request,
    namespace: Namespace,
    ents: Ents,
    customer: Annotated[str, Path(alias="customerIdOrKey")],
    id_or_feature_key: Annotated[str, Path(alias="entitlementIdOrFeatureKey")],
) -> Response:
    spec = _with_issue(parse_body(EntitlementV2CreateBody, await request.body()))
    created = await ents.entitlements.override(namespace, CustomerRef(customer), id_or_feature_key, spec)
    return json_response((await entitlement_views(ents, [created], v2=True))[0], 201)


@router.post(V2 + "/{entitlementIdOrFeatureKey}/grants", status_code=201, responses=ok(GRANT, 201))
async def create_customer_grant(
    request: Request,
    namespace: Namespace,
    ents: Ents,
    customer: Annotated[str, Path(alias="customerIdOrKey")],
    id_or_feature_key: Annotated[str, Path(alias="entitlementIdOrFeatureKey")],
) -> Response:
    body = parse_body(GrantV2CreateBody, await request.body())
    grant = await ents.grants.create(namespace, CustomerRef(customer), id_or_feature_key, grant_input(body))
    return json_response(grant_view(grant, ents.deps.clock.now()), 201)


@router.get(V2 + "/{entitlementIdOrFeatureKey}/grants", responses=ok(page(GRANT)))
async def list_customer_grants(
    namespace: Namespace,
    ents: Ents,
    customer: Annotated[str, Path(alias="customerIdOrKey")],
    id_or_feature_key: Annotated[str, Path(alias="entitlementIdOrFeatureKey")],
    include_deleted: Annotated[bool, Query(alias="includeDeleted")] = False,
    page: Page = None,
    page_size: PageSize = None,
    offset: Offset = 0,
    limit: Limit = None,
) -> Response:
    grants = await ents.grants.list_for_entitlement(
        namespace, CustomerRef(customer), id_or_feature_key, include_voided=include_deleted
    )
    n, skip = paging(page, page_size, offset, limit)
    now = ents.deps.clock.now()
    items = [grant_view(g, now) for g in grants[skip : skip + n]]
    return json_response(_paginated(items, page or 1, page_size or n, len(grants)))


@router.get(V2 + "/{entitlementIdOrFeatureKey}/value", responses=ok(VALUE))
async def customer_entitlement_value(
    namespace: Namespace,
    ents: Ents,
    customer: Annotated[str, Path(alias="customerIdOrKey")],
    id_or_feature_key: Annotated[str, Path(alias="entitlementIdOrFeatureKey")],
    time: str | None = None,
    cache_control: Annotated[str | None, Header(alias="Cache-Control")] = None,
) -> Response:
    ref = CustomerRef(customer)
    return await value_response(ents, namespace, ref, id_or_feature_key, time, cache_control)


@router.get(V2 + "/{entitlementIdOrFeatureKey}/history", responses=ok(HISTORY))
async def customer_entitlement_history(
    namespace: Namespace,
    ents: Ents,
    customer: Annotated[str, Path(alias="customerIdOrKey")],
    id_or_feature_key: Annotated[str, Path(alias="entitlementIdOrFeatureKey")],
    window_size: Annotated[str, Query(alias="windowSize")],
    from_: Annotated[str | None, Query(alias="from")] = None,
    to: str | None = None,
    window_time_zone: Annotated[str, Query(alias="windowTimeZone")] = "UTC",
) -> Response:
    ref = CustomerRef(customer)
    return await history_response(ents, namespace, ref, id_or_feature_key, window_size, from_, to, window_time_zone)


@router.post(V2 + "/{entitlementIdOrFeatureKey}/reset", status_code=204)
async def reset_customer_entitlement(
    request: Request,
    namespace: Namespace,
    ents: Ents,
    customer: Annotated[str, Path(alias="customerIdOrKey")],
    id_or_feature_key: Annotated[str, Path(alias="entitlementIdOrFeatureKey")],
) -> Response:
    return await reset_response(request, ents, namespace, CustomerRef(customer), id_or_feature_key)


# ---- v2 lists across customers ----


async def _customer_ids(
    ents: Entitlements, namespace: str, ids: list[str] | None, keys: list[str] | None
) -> list[str] | None:
    """Ids for the customerIds/customerKeys filters; None when neither was given."""
    if not ids and not keys:
        return None
    out: list[str] = []
    for id_or_key in [*(ids or ()), *(keys or ())]:
        try:
            out.append((await ents.customers.get(namespace, id_or_key)).id)
        except CustomerNotFound:
            continue  # an unknown customer matches nothing
    return out


@router.get("/api/v2/entitlements", responses=ok(page(ENTITLEMENT_V2)))
async def list_entitlements_v2(
    namespace: Namespace,
    ents: Ents,
    feature: Annotated[list[str] | None, Query()] = None,
    customer_keys: Annotated[list[str] | None, Query(alias="customerKeys")] = None,
    customer_ids: Annotated[list[str] | None, Query(alias="customerIds")] = None,
    entitlement_type: Annotated[list[str] | None, Query(alias="entitlementType")] = None,
    exclude_inactive: Annotated[bool, Query(alias="excludeInactive")] = False,
    page: Page = None,
    page_size: PageSize = None,
    offset: Offset = 0,
    limit: Limit = None,
    order: Order = "ASC",
    order_by: Annotated[str, Query(alias="orderBy", pattern="^(createdAt|updatedAt)$")] = "createdAt",
) -> Response:
    """Customers' entitlements (a subject in no customer has none here: its entitlements are on the v1 routes).
    Deleted ones are listed unless `excludeInactive`."""
    ids = await _customer_ids(ents, namespace, customer_ids, customer_keys)
    if ids is not None and not ids:
        return json_response(_paginated([], page or 1, page_size or 100, 0))
    filters: dict[str, Any] = {
        "customer_ids": ids or (),
        "feature_keys": feature or (),
        "include_deleted": not exclude_inactive,
        "customers_only": True,
        "types": entitlement_type or (),
    }
    n, skip = paging(page, page_size, offset, limit)
    items = await ents.entitlements.search(
        namespace, limit=n, offset=skip, order_by=order_by, descending=order.upper() == "DESC", **filters
    )
    total = await ents.entitlements.count(namespace, **filters)
    return json_response(_paginated(await entitlement_views(ents, items, v2=True), page or 1, n, total))


@router.get("/api/v2/entitlements/{entitlementId}", responses=ok(ENTITLEMENT_V2))
async def get_entitlement_v2(
    namespace: Namespace, ents: Ents, entitlement_id: Annotated[str, Path(alias="entitlementId")]
) -> Response:
    found = await ents.entitlements.get(namespace, None, entitlement_id)
    return json_response((await entitlement_views(ents, [found], v2=True))[0])


@router.get("/api/v2/grants", responses=ok(page(GRANT)))
async def list_grants_v2(
    namespace: Namespace,
    ents: Ents,
    feature: Annotated[list[str] | None, Query()] = None,
    customer: Annotated[list[str] | None, Query()] = None,
    include_deleted: Annotated[bool, Query(alias="includeDeleted")] = False,
    page: Page = None,
    page_size: PageSize = None,
    offset: Offset = 0,
    limit: Limit = None,
) -> Response:
    """Grants of customers' entitlements; `customer` takes ids or keys."""
    ids = await _customer_ids(ents, namespace, customer, None)
    if ids is not None and not ids:
        return json_response(_paginated([], page or 1, page_size or 100, 0))
    filters: dict[str, Any] = {
        "customer_ids": ids or (),
        "feature_keys": feature or (),
        "include_voided": include_deleted,
        "customers_only": True,
    }
    n, skip = paging(page, page_size, offset, limit)
    grants = await ents.grants.search(namespace, limit=n, offset=skip, **filters)
    total = await ents.grants.count(namespace, **filters)
    now = ents.deps.clock.now()
    return json_response(_paginated([grant_view(g, now) for g in grants], page or 1, n, total))

"""Access routes for gateways: every feature of a subject, or many subjects x features, in one call.

Each result is the single value read's body (`hasAccess` with the same semantics, OpenMeter's value fields,
`config` for static entitlements) plus `asOf`; an item that fails carries `error` (problem fields) instead,
and the others still answer. Warm results come from the balance cache without SQL or ClickHouse;
`Cache-Control: no-cache` recomputes every item.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Header, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from common.errors import MetergateError
from common.http import Namespace, status_for
from entitlements.http import json_response, services, wants_fresh
from entitlements.openapi import ACCESS, BULK_ACCESS
from entitlements.service import Entitlements
from entitlements.service.access import AccessItem, AccessResult, AccessService
from entitlements.views import value_view

MAX_SUBJECTS = 100
MAX_FEATURES = 100

router = APIRouter(tags=["entitlements"])


async def access_service(request: Request) -> AccessService:
    ents: Entitlements = await services(request)
    return ents.access


Access = Annotated[AccessService, Depends(access_service)]
CacheControl = Annotated[
    str | None,
    Header(alias="Cache-Control", description="`no-cache` computes every value instead of answering from the cache"),
]

_VALUE_EXAMPLE = {
    "hasAccess": True,
    "balance": 9200,
    "usage": 800,
    "overage": 0,
    "totalAvailableGrantAmount": 10000,
    "asOf": "2026-12-02T10:15:00.123Z",
}


def _error(exc: MetergateError) -> dict[str, Any]:
    return {"status": status_for(exc), "title": exc.title, "detail": exc.message}


def result_view(result: AccessResult) -> Any:
    if result.value is None:
        assert result.error is not None
        return {"error": _error(result.error)}
    if result.value.body:  # from the cache: inserted as it was encoded when stored
        return orjson.Fragment(result.value.body)
    return {**value_view(result.value.value), "asOf": result.value.as_of}


class BulkAccessBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"subjects": ["customer-1", "customer-2"], "features": ["gpt4", "sso"]}]},
    )

    subjects: list[str] = Field(min_length=1, max_length=MAX_SUBJECTS, description="subject keys (at most 100)")
    features: list[str] | None = Field(
        default=None,
        max_length=MAX_FEATURES,
        description="feature keys or entitlement ids (at most 100); omitted: every active entitlement of each subject",
    )


@router.get(
    "/api/v1/subjects/{subjectIdOrKey}/access",
    responses={
        200: {
            "content": {"application/json": {"schema": ACCESS, "example": {"entitlements": {"gpt4": _VALUE_EXAMPLE}}}}
        }
    },
)
async def subject_access(
    access: Access,
    namespace: Namespace,
    subject: Annotated[str, Path(alias="subjectIdOrKey")],
    cache_control: CacheControl = None,
) -> Response:
    """Every active entitlement of the subject, keyed by feature key: the value read's fields plus `asOf`."""
    found = await access.for_subjects(namespace, [subject], fresh=wants_fresh(cache_control))
    return json_response({"entitlements": {e.feature_key: result_view(r) for e, r in found.get(subject, [])}})


@router.post(
    "/api/v1/entitlements/access",
    responses={
        200: {
            "content": {
                "application/json": {
                    "schema": BULK_ACCESS,
                    "example": {
                        "subjects": {
                            "customer-1": {"entitlements": {"gpt4": _VALUE_EXAMPLE, "sso": {"hasAccess": True}}},
                            "customer-2": {
                                "entitlements": {
                                    "sso": {
                                        "error": {"status": 404, "title": "Not Found", "detail": "no entitlement sso"}
                                    }
                                }
                            },
                        }
                    },
                }
            }
        }
    },
)
async def bulk_access(
    access: Access,
    namespace: Namespace,
    body: Annotated[BulkAccessBody, Body()],
    cache_control: CacheControl = None,
) -> Response:
    """Access of up to 100 subjects x 100 features in one call, with a result or an error per item."""
    fresh = wants_fresh(cache_control)
    subjects = list(dict.fromkeys(body.subjects))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    if body.features is None:
        found = await access.for_subjects(namespace, subjects, fresh=fresh)
        for subject in subjects:
            out[subject] = {e.feature_key: result_view(r) for e, r in found.get(subject, [])}
    else:
        features = list(dict.fromkeys(body.features))
        items = [AccessItem(s, f) for s in subjects for f in features]
        for result in await access.check(namespace, items, fresh=fresh):
            out.setdefault(str(result.item.subject), {})[result.item.id_or_feature_key] = result_view(result)
    return json_response({"subjects": {s: {"entitlements": e} for s, e in out.items()}})

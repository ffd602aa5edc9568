"""REST API of meters (OpenMeter v1 paths and field names).

GET/POST /api/v1/meters, GET/DELETE /api/v1/meters/{meterIdOrSlug},
GET/POST /api/v1/meters/{meterIdOrSlug}/query, GET /api/v1/meters/{meterIdOrSlug}/subjects.
Errors are MetergateError subclasses; the app's handler renders them as problem+json (common.http).
Values are written as exact JSON numbers from Decimal (never through float).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from aggregator.query import InvalidQuery, decimal_text, params_from_mapping, result_body
from aggregator.service import MeterService
from common.cloudevents import decode_json
from common.http import Namespace


def render(value: Any) -> bytes:
    """JSON with Decimals as exact numbers (orjson would need float)."""
    if isinstance(value, Decimal):
        return decimal_text(value).encode()
    if isinstance(value, dict):
        return b"{" + b",".join(orjson.dumps(str(k)) + b":" + render(v) for k, v in value.items()) + b"}"
    if isinstance(value, list | tuple):
        return b"[" + b",".join(render(v) for v in value) + b"]"
    return orjson.dumps(value)


def json_response(value: Any, status_code: int = 200) -> Response:
    return Response(render(value), status_code=status_code, media_type="application/json")


def meters_router(service: MeterService) -> APIRouter:
    router = APIRouter(prefix="/api/v1/meters", tags=["meters"])

    @router.get("")
    async def list_meters(namespace: Namespace) -> Response:
        return json_response([m.to_api() for m in await service.meters(namespace)])

    @router.post("")
    async def create_meter(request: Request, namespace: Namespace) -> Response:
        body = decode_json(await request.body())
        meter = await service.create(namespace, body)
        return json_response(meter.to_api(), status_code=201)

    @router.get("/{meter_id_or_slug}")
    async def get_meter(meter_id_or_slug: str, namespace: Namespace) -> Response:
        return json_response((await service.get(namespace, meter_id_or_slug)).to_api())

    @router.delete("/{meter_id_or_slug}", status_code=204)
    async def delete_meter(meter_id_or_slug: str, namespace: Namespace) -> Response:
        await service.delete(namespace, meter_id_or_slug)
        return Response(status_code=204)

    @router.get("/{meter_id_or_slug}/query")
    async def query_meter(meter_id_or_slug: str, request: Request, namespace: Namespace) -> Response:
        params = params_from_mapping(list(request.query_params.multi_items()))
        q, rows = await service.query(namespace, meter_id_or_slug, params)
        return json_response(result_body(q, rows, explicit_from=params.start is not None))

    @router.post("/{meter_id_or_slug}/query")
    async def query_meter_post(meter_id_or_slug: str, request: Request, namespace: Namespace) -> Response:
        body = decode_json(await request.body()) if await request.body() else {}
        if not isinstance(body, dict):
            raise InvalidQuery("the query body must be a JSON object", field=None)
        params = params_from_mapping(body)
        q, rows = await service.query(namespace, meter_id_or_slug, params)
        return json_response(result_body(q, rows, explicit_from=params.start is not None))

    @router.get("/{meter_id_or_slug}/subjects")
    async def meter_subjects(meter_id_or_slug: str, namespace: Namespace) -> Response:
        return json_response(await service.subjects(namespace, meter_id_or_slug))

    return router

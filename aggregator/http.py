"""REST API of meters (OpenMeter v1 paths and field names).

GET/POST /api/v1/meters, GET/PUT/DELETE /api/v1/meters/{meterIdOrSlug},
GET/POST /api/v1/meters/{meterIdOrSlug}/query (JSON, or CSV with `Accept: text/csv`),
GET /api/v1/meters/{meterIdOrSlug}/subjects, GET /api/v1/meters/{meterIdOrSlug}/group-by/{groupByKey}/values.
The service comes from `app.state.services.meters`. Errors are MetergateError subclasses; the app's
handler renders them as problem+json (common.http).
Values are written as exact JSON numbers from Decimal (never through float).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response

from aggregator.openapi import METER, QUERY_RESULT, STRINGS
from aggregator.query import InvalidQuery, Row, csv_text, params_from_mapping, result_body
from aggregator.service import MeterService
from aggregator.sql import Query
from common import exactjson, http
from common.cloudevents import decode_json
from common.errors import Unavailable
from common.http import Namespace
from common.openapi import ok


def render(value: Any) -> bytes:
    """JSON with Decimals as exact numbers: the one encoding of every route (common.exactjson)."""
    return exactjson.dumps(value)


def json_response(value: Any, status_code: int = 200) -> Response:
    return http.json_response(value, status_code)


async def meter_service(request: Request) -> MeterService:
    """The app's MeterService (`app.state.services.meters`, see metergate/wiring.py)."""
    service = getattr(request.app.state.services, "meters", None)
    if not isinstance(service, MeterService):
        raise Unavailable("meters are not configured in this process")
    return service


Meters = Annotated[MeterService, Depends(meter_service)]
router = APIRouter(prefix="/api/v1/meters", tags=["meters"])
QUERY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "OK (JSON, or OpenMeter's CSV with `Accept: text/csv`)",
        "content": {"application/json": {"schema": QUERY_RESULT}, "text/csv": {"schema": {"type": "string"}}},
    }
}


@router.get("", responses=ok({"type": "array", "items": METER}))
async def list_meters(namespace: Namespace, service: Meters) -> Response:
    """The namespace's meters, each with its `status`: READY, BACKFILLING (created, queryable and exact
    from raw events while its past is rolled up; `backfilledThrough` says how far) or FAILED with
    `statusReason` (its rollups could not be built at start-up: not queryable, retried at every start)."""
    failed = [{**body, "status": "FAILED", "statusReason": why} for body, why in await service.failed(namespace)]
    meters = [{**m.to_api(), **service.status(m)} for m in await service.meters(namespace)]
    return json_response(meters + failed)


@router.post("", status_code=201, responses=ok(METER, 201))
async def create_meter(request: Request, namespace: Namespace, service: Meters) -> Response:
    """Answers 201 at once, whatever the history: the meter is BACKFILLING (queries, balances and the
    dashboard views are exact meanwhile, from raw events) until its past is rolled up, then READY."""
    body = decode_json(await request.body())
    meter = await service.create(namespace, body)
    return json_response({**meter.to_api(), **service.status(meter)}, status_code=201)


@router.get("/{meterIdOrSlug}", responses=ok(METER))
async def get_meter(
    meter_id_or_slug: Annotated[str, Path(alias="meterIdOrSlug")], namespace: Namespace, service: Meters
) -> Response:
    meter = await service.get(namespace, meter_id_or_slug)
    return json_response({**meter.to_api(), **service.status(meter)})


@router.put("/{meterIdOrSlug}", responses=ok(METER))
async def update_meter(
    meter_id_or_slug: Annotated[str, Path(alias="meterIdOrSlug")],
    request: Request,
    namespace: Namespace,
    service: Meters,
) -> Response:
    """OpenMeter's MeterUpdate: `name` (default: the slug), `description`, `metadata`, `groupBy` (default:
    none) replace the meter's; slug, aggregation, eventType, valueProperty and eventFrom cannot change. New
    or changed group-by keys rebuild the rollup (backfilled from every stored event) before answering."""
    body = decode_json(await request.body())
    meter = await service.update(namespace, meter_id_or_slug, body)
    return json_response({**meter.to_api(), **service.status(meter)})


@router.delete("/{meterIdOrSlug}", status_code=204)
async def delete_meter(
    meter_id_or_slug: Annotated[str, Path(alias="meterIdOrSlug")], namespace: Namespace, service: Meters
) -> Response:
    await service.delete(namespace, meter_id_or_slug)
    return Response(status_code=204)


def wants_csv(request: Request) -> bool:
    """`Accept: text/csv` (as OpenMeter: the header's media type, parameters aside); JSON otherwise."""
    first = request.headers.get("accept", "").split(",")[0]
    return first.split(";")[0].strip().lower() == "text/csv"


def query_response(request: Request, q: Query, rows: list[Row]) -> Response:
    if wants_csv(request):
        return Response(
            csv_text(q, rows),
            media_type="text/csv",
            headers={"content-disposition": f"attachment; filename={q.meter.slug}.csv"},
        )
    return json_response(result_body(q, rows))


@router.get("/{meterIdOrSlug}/query", responses=QUERY_RESPONSES)
async def query_meter(
    meter_id_or_slug: Annotated[str, Path(alias="meterIdOrSlug")],
    request: Request,
    namespace: Namespace,
    service: Meters,
) -> Response:
    """Usage in windows. `Accept: text/csv` answers OpenMeter's CSV (window_start, window_end, [subject],
    group-by keys, value) instead of JSON."""
    params = params_from_mapping(list(request.query_params.multi_items()))
    q, rows = await service.query(namespace, meter_id_or_slug, params)
    return query_response(request, q, rows)


@router.post("/{meterIdOrSlug}/query", responses=QUERY_RESPONSES)
async def query_meter_post(
    meter_id_or_slug: Annotated[str, Path(alias="meterIdOrSlug")],
    request: Request,
    namespace: Namespace,
    service: Meters,
) -> Response:
    raw = await request.body()
    body = decode_json(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise InvalidQuery("the query body must be a JSON object", field=None)
    params = params_from_mapping(body)
    q, rows = await service.query(namespace, meter_id_or_slug, params)
    return query_response(request, q, rows)


@router.get("/{meterIdOrSlug}/subjects", responses=ok(STRINGS))
async def meter_subjects(
    meter_id_or_slug: Annotated[str, Path(alias="meterIdOrSlug")], namespace: Namespace, service: Meters
) -> Response:
    return json_response(await service.subjects(namespace, meter_id_or_slug))


@router.get("/{meterIdOrSlug}/group-by/{groupByKey}/values", responses=ok(STRINGS))
async def group_by_values(
    meter_id_or_slug: Annotated[str, Path(alias="meterIdOrSlug")],
    group_by_key: Annotated[str, Path(alias="groupByKey")],
    request: Request,
    namespace: Namespace,
    service: Meters,
) -> Response:
    """Distinct values of a group-by key among the meter's events in [from, to) (dashboard filters). Without
    `from` and `to`: the last 24 hours."""
    query = dict(request.query_params)
    unknown = sorted(set(query) - {"from", "to"})
    if unknown:
        raise InvalidQuery(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
    values = await service.group_by_values(
        namespace, meter_id_or_slug, group_by_key, query.get("from"), query.get("to")
    )
    return json_response(values)

"""Helpers for the response bodies routes publish in the OpenAPI document (JSON Schema as plain dicts, pure).

The routes answer with pre-encoded JSON (exact decimals), so FastAPI cannot infer their bodies: each package
declares them with these (entitlements/openapi.py, aggregator/openapi.py) and the fuzz test holds responses
to them. Decimal amounts are JSON numbers; instants are RFC 3339 strings.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
INSTANT: Schema = {"type": "string", "format": "date-time"}
MAYBE_INSTANT: Schema = {"type": ["string", "null"], "format": "date-time"}
NUMBER: Schema = {"type": "number"}
MAYBE_NUMBER: Schema = {"type": ["number", "null"]}
METADATA: Schema = {"type": ["object", "null"], "additionalProperties": {"type": "string"}}
PERIOD: Schema = {"type": "object", "required": ["from", "to"], "properties": {"from": INSTANT, "to": INSTANT}}


def obj(required: list[str], **properties: Schema) -> Schema:
    return {"type": "object", "required": required, "properties": properties}


def page(item: Schema) -> Schema:
    """OpenMeter's paginated list."""
    return obj(
        ["items", "page", "pageSize", "totalCount"],
        items={"type": "array", "items": item},
        page={"type": "integer"},
        pageSize={"type": "integer"},
        totalCount={"type": "integer"},
    )


def array_or_page(item: Schema) -> Schema:
    """OpenMeter's v1 lists: a bare array, or the paginated object when page/pageSize is given."""
    return {"anyOf": [{"type": "array", "items": item}, page(item)]}


def ok(schema: Schema, status: int = 200) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route whose success body is `schema`."""
    return {status: {"description": "OK", "content": {"application/json": {"schema": schema}}}}

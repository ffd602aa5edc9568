"""The response bodies the meter routes publish in the OpenAPI document (OpenMeter's Meter and MeterQueryResult)."""

from __future__ import annotations

from common.openapi import INSTANT, MAYBE_INSTANT, NUMBER, STRING, Schema, obj

METER: Schema = obj(
    ["id", "slug", "aggregation", "eventType"],
    id=STRING,
    slug=STRING,
    name=STRING,
    description={"type": ["string", "null"]},
    aggregation={"type": "string", "enum": ["SUM", "COUNT", "UNIQUE_COUNT", "AVG", "MIN", "MAX", "LATEST"]},
    eventType=STRING,
    valueProperty=STRING,
    groupBy={"type": "object", "additionalProperties": STRING},
    metadata={"type": "object", "additionalProperties": STRING},
    eventFrom=INSTANT,
    createdAt=INSTANT,
    updatedAt=INSTANT,
    status={"type": "string", "enum": ["READY", "BACKFILLING", "FAILED"]},
    statusReason=STRING,
    backfilledThrough=MAYBE_INSTANT,
)
QUERY_RESULT: Schema = obj(
    ["windowSize", "data"],
    **{"from": INSTANT},
    to=INSTANT,
    windowSize={"type": ["string", "null"]},
    data={
        "type": "array",
        "items": obj(
            ["value", "windowStart", "windowEnd", "subject", "groupBy"],
            value=NUMBER,
            windowStart=INSTANT,
            windowEnd=INSTANT,
            subject={"type": ["string", "null"]},
            customerId=STRING,
            groupBy={"type": "object", "additionalProperties": {"type": ["string", "null"]}},
        ),
    },
)
STRINGS: Schema = {"type": "array", "items": STRING}

"""The response bodies the entitlement routes publish in the OpenAPI document (JSON Schema, OpenMeter's shapes).

The routes answer with pre-encoded JSON (exact decimals), so FastAPI cannot infer these: they are declared
here, and the fuzz test (tests/e2e/test_api_fuzz.py) holds every response it gets to them. Decimal amounts
are JSON numbers; instants are RFC 3339 strings; fields Metergate adds (`asOf`) are declared too.
"""

from __future__ import annotations

from common.openapi import (
    INSTANT,
    MAYBE_INSTANT,
    MAYBE_NUMBER,
    METADATA,
    NUMBER,
    PERIOD,
    STRING,
    Schema,
    array_or_page,
    obj,
    ok,
    page,
)

__all__ = ["array_or_page", "ok", "page"]


FEATURE = obj(
    ["id", "key", "name", "createdAt", "updatedAt"],
    id=STRING,
    key=STRING,
    name=STRING,
    meterSlug={"type": ["string", "null"]},
    meterGroupByFilters=METADATA,
    metadata=METADATA,
    createdAt=INSTANT,
    updatedAt=INSTANT,
    archivedAt=MAYBE_INSTANT,
    deletedAt=MAYBE_INSTANT,
)

_ENTITLEMENT_FIELDS: dict[str, Schema] = {
    "id": STRING,
    "type": {"type": "string", "enum": ["metered", "static", "boolean"]},
    "featureId": STRING,
    "featureKey": STRING,
    "metadata": METADATA,
    "createdAt": INSTANT,
    "updatedAt": INSTANT,
    "deletedAt": MAYBE_INSTANT,
    "activeFrom": INSTANT,
    "activeTo": MAYBE_INSTANT,
    "config": {"type": ["string", "null"]},
    "isSoftLimit": {"type": "boolean"},
    "issueAfterReset": MAYBE_NUMBER,
    "issueAfterResetPriority": {"type": "integer"},
    "preserveOverageAtReset": {"type": "boolean"},
    "measureUsageFrom": INSTANT,
    "usagePeriod": obj(["interval", "anchor"], interval=STRING, intervalISO=STRING, anchor=INSTANT),
    "currentUsagePeriod": PERIOD,
    "lastReset": INSTANT,
}
ENTITLEMENT = obj(
    ["id", "type", "featureId", "featureKey", "subjectKey", "createdAt", "updatedAt"],
    subjectKey=STRING,
    **_ENTITLEMENT_FIELDS,
)
ENTITLEMENT_V2 = obj(
    ["id", "type", "featureId", "featureKey", "customerId", "createdAt", "updatedAt"],
    customerId=STRING,
    customerKey={"type": ["string", "null"]},
    issue={"type": "object", "properties": {"amount": NUMBER, "priority": {"type": "integer"}}},
    **_ENTITLEMENT_FIELDS,
)

GRANT = obj(
    ["id", "entitlementId", "amount", "effectiveAt", "createdAt", "updatedAt"],
    id=STRING,
    entitlementId=STRING,
    amount=NUMBER,
    priority={"type": "integer"},
    effectiveAt=INSTANT,
    expiration={"type": ["object", "null"]},
    expiresAt=MAYBE_INSTANT,
    minRolloverAmount=NUMBER,
    maxRolloverAmount=NUMBER,
    recurrence={"type": ["object", "null"]},
    nextRecurrence=MAYBE_INSTANT,
    metadata=METADATA,
    createdAt=INSTANT,
    updatedAt=INSTANT,
    voidedAt=MAYBE_INSTANT,
    deletedAt=MAYBE_INSTANT,
)

VALUE = obj(
    ["hasAccess", "asOf"],
    hasAccess={"type": "boolean"},
    balance=NUMBER,
    usage=NUMBER,
    overage=NUMBER,
    totalAvailableGrantAmount=NUMBER,
    config=STRING,
    asOf=INSTANT,
)
ACCESS_ITEM: Schema = {
    "anyOf": [
        VALUE,
        obj(
            ["error"], error=obj(["status", "title", "detail"], status={"type": "integer"}, title=STRING, detail=STRING)
        ),
    ]
}
ACCESS = obj(["entitlements"], entitlements={"type": "object", "additionalProperties": ACCESS_ITEM})
BULK_ACCESS = obj(["subjects"], subjects={"type": "object", "additionalProperties": ACCESS})

HISTORY = obj(
    ["windowedHistory", "burndownHistory"],
    windowedHistory={
        "type": "array",
        "items": obj(["period", "usage", "balanceAtStart"], period=PERIOD, usage=NUMBER, balanceAtStart=NUMBER),
    },
    burndownHistory={
        "type": "array",
        "items": obj(
            ["period", "usage", "overage", "balanceAtStart", "balanceAtEnd", "grantUsages"],
            period=PERIOD,
            usage=NUMBER,
            overage=NUMBER,
            balanceAtStart=NUMBER,
            grantBalancesAtStart={"type": "object", "additionalProperties": NUMBER},
            balanceAtEnd=NUMBER,
            grantBalancesAtEnd={"type": "object", "additionalProperties": NUMBER},
            grantUsages={"type": "array", "items": obj(["grantId", "usage"], grantId=STRING, usage=NUMBER)},
        ),
    },
)

CUSTOMER_BODY = obj(
    ["id", "name", "usageAttribution", "createdAt", "updatedAt"],
    id=STRING,
    key={"type": ["string", "null"]},
    name=STRING,
    description={"type": ["string", "null"]},
    metadata=METADATA,
    usageAttribution=obj(["subjectKeys"], subjectKeys={"type": "array", "items": STRING}),
    primaryEmail={"type": ["string", "null"]},
    currency={"type": ["string", "null"]},
    createdAt=INSTANT,
    updatedAt=INSTANT,
    deletedAt=MAYBE_INSTANT,
)

CHANNEL = obj(
    ["id", "type", "name", "url", "disabled", "createdAt", "updatedAt"],
    id=STRING,
    type={"type": "string", "enum": ["WEBHOOK"]},
    name=STRING,
    url=STRING,
    customHeaders={"type": "object", "additionalProperties": STRING},
    disabled={"type": "boolean"},
    signingSecret=STRING,
    createdAt=INSTANT,
    updatedAt=INSTANT,
    deletedAt=MAYBE_INSTANT,
)
RULE = obj(
    ["id", "type", "name", "disabled", "channels", "features", "createdAt", "updatedAt"],
    id=STRING,
    type={"type": "string", "enum": ["entitlements.balance.threshold", "entitlements.reset"]},
    name=STRING,
    disabled={"type": "boolean"},
    channels={"type": "array", "items": obj(["id", "type"], id=STRING, type=STRING, name=STRING)},
    features={"type": "array", "items": obj(["id"], id=STRING)},
    thresholds={"type": "array", "items": obj(["type", "value"], type=STRING, value=NUMBER)},
    createdAt=INSTANT,
    updatedAt=INSTANT,
    deletedAt=MAYBE_INSTANT,
)
NOTIFICATION_EVENT = obj(
    ["id", "type", "createdAt", "rule", "deliveryStatus", "payload"],
    id=STRING,
    type=STRING,
    createdAt=INSTANT,
    rule=obj(["id"], id=STRING),
    deliveryStatus={
        "type": "array",
        "items": obj(
            ["channel", "state", "reason", "updatedAt", "attempts"],
            channel=obj(["id", "type"], id=STRING, type=STRING),
            state={"type": "string", "enum": ["PENDING", "SENDING", "SUCCESS", "FAILED"]},
            reason=STRING,
            updatedAt=INSTANT,
            attempts={"type": "integer"},
            nextAttemptAt=INSTANT,
            history={"type": "array"},
        ),
    },
    payload={"type": "object"},
)

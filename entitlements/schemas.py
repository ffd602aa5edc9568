"""The wire format: OpenMeter v1 request bodies (camelCase) in, response JSON out.

Request bodies are decoded with Decimal for every JSON number with a fraction, and responses write
Decimals as JSON numbers digit for digit, so amounts never pass through a float.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from common import exactjson
from common.errors import InvalidInput

# ---- JSON with exact decimals ----


MAX_JSON_DEPTH = 32


def decode_body(body: bytes) -> Any:
    """JSON with every number a Decimal; refuses NaN/Infinity, non-UTF-8 and nesting past MAX_JSON_DEPTH
    (checked before parsing: the recursive parser would otherwise fail deep inside itself)."""
    check_depth(body, MAX_JSON_DEPTH)
    try:
        value = json.loads(body, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    check_strings(value)
    return value


def check_strings(value: Any) -> None:
    """No string (or key) may hold a NUL or a lone surrogate (`"\\ud800"`): neither database stores them
    faithfully (PostgreSQL refuses both), so they are a 400 here rather than a 500 at the insert."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInput("strings must not contain NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput("strings must be valid Unicode (a lone surrogate escape was sent)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_strings(key)
            check_strings(item)
    elif isinstance(value, list):
        for item in value:
            check_strings(item)


_OPENERS = frozenset(b"[{")
_CLOSERS = frozenset(b"]}")


def check_depth(body: bytes, limit: int) -> None:
    """Raise InvalidInput if arrays/objects nest deeper than `limit` (string contents are skipped)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in _OPENERS:
            depth += 1
            if depth > limit:
                raise InvalidInput(f"JSON nested deeper than {limit} levels")
        elif byte in _CLOSERS:
            depth -= 1


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


decimal_text = exactjson.decimal_text  # the one exact rendering (common/exactjson.py)


def encode(value: Any) -> bytes:
    """JSON bytes; Decimal becomes a number with exactly its digits, datetimes RFC 3339 UTC (common.exactjson)."""
    return exactjson.dumps(value)


# ---- request bodies ----


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class FeatureCreateBody(_In):
    key: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=256)
    meterSlug: str | None = None  # noqa: N815 - OpenMeter's field name
    meterGroupByFilters: dict[str, str] | None = None  # noqa: N815
    metadata: dict[str, str] | None = None


class UsagePeriodBody(_In):
    interval: str
    anchor: AwareDatetime | None = None


class EntitlementCreateBody(_In):
    type: Literal["boolean", "static", "metered"]
    featureKey: str | None = None  # noqa: N815
    featureId: str | None = None  # noqa: N815
    metadata: dict[str, str] | None = None
    config: Any = None
    usagePeriod: UsagePeriodBody | None = None  # noqa: N815
    measureUsageFrom: AwareDatetime | Literal["CURRENT_PERIOD_START", "NOW"] | None = None  # noqa: N815
    isSoftLimit: bool = False  # noqa: N815
    isUnlimited: bool = False  # noqa: N815
    issueAfterReset: Decimal | None = None  # noqa: N815
    issueAfterResetPriority: int = 1  # noqa: N815
    preserveOverageAtReset: bool = False  # noqa: N815


class ExpirationBody(_In):
    duration: Literal["HOUR", "DAY", "WEEK", "MONTH", "YEAR"]
    count: int = Field(ge=1, le=100_000)


class GrantCreateBody(_In):
    amount: Decimal
    priority: int = 1
    effectiveAt: AwareDatetime  # noqa: N815
    expiration: ExpirationBody
    minRolloverAmount: Decimal = Decimal(0)  # noqa: N815
    maxRolloverAmount: Decimal = Decimal(0)  # noqa: N815
    recurrence: UsagePeriodBody | None = None
    metadata: dict[str, str] | None = None


class UsageAttributionBody(_In):
    subjectKeys: list[str] = Field(default_factory=list, max_length=100_000)  # noqa: N815


class CustomerBody(_In):
    """OpenMeter's CustomerCreate / CustomerReplaceUpdate (billingAddress is accepted and not stored)."""

    name: str = Field(min_length=1, max_length=256)
    key: str | None = Field(default=None, min_length=1, max_length=256)
    description: str | None = Field(default=None, max_length=4096)
    metadata: dict[str, str] | None = None
    usageAttribution: UsageAttributionBody | None = None  # noqa: N815
    primaryEmail: str | None = None  # noqa: N815
    currency: str | None = None


class IssueBody(_In):
    amount: Decimal
    priority: int = 1


class GrantV2CreateBody(_In):
    """OpenMeter's EntitlementGrantCreateInputV2: `expiration` is optional (no expiration: the grant never expires)."""

    amount: Decimal
    priority: int = 1
    effectiveAt: AwareDatetime  # noqa: N815
    expiration: ExpirationBody | None = None
    minRolloverAmount: Decimal = Decimal(0)  # noqa: N815
    maxRolloverAmount: Decimal = Decimal(0)  # noqa: N815
    recurrence: UsagePeriodBody | None = None
    metadata: dict[str, str] | None = None


class EntitlementV2CreateBody(EntitlementCreateBody):
    """OpenMeter's EntitlementV2CreateInputs: v1's fields plus `issue` and initial `grants` (metered)."""

    issue: IssueBody | None = None
    grants: list[GrantV2CreateBody] | None = Field(default=None, max_length=100)


class ResetBody(_In):
    effectiveAt: AwareDatetime | None = None  # noqa: N815
    retainAnchor: bool = False  # noqa: N815
    preserveOverage: bool | None = None  # noqa: N815


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], body: bytes) -> M:
    raw = decode_body(body) if body.strip() else {}
    if not isinstance(raw, dict):
        raise InvalidInput("the request body must be a JSON object")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidInput(f"{where}: {first['msg']}" if where else first["msg"], field=where) from None


def page_of(items: Sequence[Any], page: int | None, page_size: int | None, total: int) -> Any:
    """OpenMeter lists: a bare array, or {items, page, pageSize, totalCount} when paging was asked for."""
    if page is None and page_size is None:
        return list(items)
    return {"items": list(items), "page": page or 1, "pageSize": page_size or len(items), "totalCount": total}

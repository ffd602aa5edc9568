"""The wire format: OpenMeter v1 request bodies (camelCase) in, response JSON out.

Request bodies are decoded with Decimal for every JSON number with a fraction, and responses write
Decimals as JSON numbers digit for digit, so amounts never pass through a float.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from common import exactjson
from common.errors import InvalidInput

# ---- JSON with exact decimals ----


MAX_JSON_DEPTH = exactjson.MAX_JSON_DEPTH
decode_body = exactjson.loads_decimal  # the request bodies' decoder (common/exactjson.py)


decimal_text = exactjson.decimal_text  # the one exact rendering (common/exactjson.py)


def encode(value: Any) -> bytes:
    """JSON bytes; Decimal becomes a number with exactly its digits, datetimes RFC 3339 UTC (common.exactjson)."""
    return exactjson.dumps(value)


# ---- request bodies ----


class _In(BaseModel):
    """Request bodies: snake_case attributes, OpenMeter's camelCase names on the wire (errors name those)."""

    model_config = ConfigDict(extra="ignore", frozen=True, alias_generator=to_camel, populate_by_name=True)


class FeatureCreateBody(_In):
    key: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=256)
    meter_slug: str | None = None
    meter_group_by_filters: dict[str, str] | None = None
    metadata: dict[str, str] | None = None


class UsagePeriodBody(_In):
    interval: str
    anchor: AwareDatetime | None = None


class EntitlementCreateBody(_In):
    type: Literal["boolean", "static", "metered"]
    feature_key: str | None = None
    feature_id: str | None = None
    metadata: dict[str, str] | None = None
    config: Any = None
    usage_period: UsagePeriodBody | None = None
    measure_usage_from: AwareDatetime | Literal["CURRENT_PERIOD_START", "NOW"] | None = None
    is_soft_limit: bool = False
    is_unlimited: bool = False
    issue_after_reset: Decimal | None = None
    issue_after_reset_priority: int = 1
    preserve_overage_at_reset: bool = False


class ExpirationBody(_In):
    duration: Literal["HOUR", "DAY", "WEEK", "MONTH", "YEAR"]
    count: int = Field(ge=1, le=100_000)


class GrantCreateBody(_In):
    amount: Decimal
    priority: int = 1
    effective_at: AwareDatetime
    expiration: ExpirationBody
    min_rollover_amount: Decimal = Decimal(0)
    max_rollover_amount: Decimal = Decimal(0)
    recurrence: UsagePeriodBody | None = None
    metadata: dict[str, str] | None = None


class UsageAttributionBody(_In):
    subject_keys: list[str] = Field(default_factory=list, max_length=100_000)


class CustomerBody(_In):
    """OpenMeter's CustomerCreate / CustomerReplaceUpdate (billingAddress is accepted and not stored)."""

    name: str = Field(min_length=1, max_length=256)
    key: str | None = Field(default=None, min_length=1, max_length=256)
    description: str | None = Field(default=None, max_length=4096)
    metadata: dict[str, str] | None = None
    usage_attribution: UsageAttributionBody | None = None
    primary_email: str | None = None
    currency: str | None = None


class IssueBody(_In):
    amount: Decimal
    priority: int = 1


class GrantV2CreateBody(_In):
    """OpenMeter's EntitlementGrantCreateInputV2: `expiration` is optional (no expiration: the grant never expires)."""

    amount: Decimal
    priority: int = 1
    effective_at: AwareDatetime
    expiration: ExpirationBody | None = None
    min_rollover_amount: Decimal = Decimal(0)
    max_rollover_amount: Decimal = Decimal(0)
    recurrence: UsagePeriodBody | None = None
    metadata: dict[str, str] | None = None


class EntitlementV2CreateBody(EntitlementCreateBody):
    """OpenMeter's EntitlementV2CreateInputs: v1's fields plus `issue` and initial `grants` (metered)."""

    issue: IssueBody | None = None
    grants: list[GrantV2CreateBody] | None = Field(default=None, max_length=100)


class ResetBody(_In):
    effective_at: AwareDatetime | None = None
    retain_anchor: bool = False
    preserve_overage: bool | None = None


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

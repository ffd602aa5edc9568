"""Meters: domain types, validation and the per-event value rules (pure).

A meter turns events of one type into usage: an aggregation over a value read by JSONPath, split by
subject and by group-by values. The value rules here are the Python mirror of the SQL in
`aggregator.sql` (the rollups and raw queries), so `validation_error` explains exactly the events the
rollups skip: a missing, non-numeric, NaN, infinite, too large or too precise value makes the event
invalid for the meter; it is never counted as zero.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

import orjson

from aggregator.jsonpath import MISSING, Segment, evaluate, parse_path
from common.clock import format_time
from common.cloudevents import parse_time
from common.errors import InvalidInput

SLUG = re.compile(r"^[a-z0-9]+(?:[_-][a-z0-9]+)*$")
GROUP_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
RESERVED_GROUP_KEYS = frozenset({"subject", "namespace", "minute", "value", "windowstart", "windowend"})
MAX_GROUP_BY = 16
# Values are stored as Decimal(38, 9): 29 integer digits, 9 fractional digits.
VALUE_SCALE = 9
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class Aggregation(StrEnum):
    SUM = "SUM"
    COUNT = "COUNT"
    UNIQUE_COUNT = "UNIQUE_COUNT"
    AVG = "AVG"
    MIN = "MIN"
    MAX = "MAX"
    LATEST = "LATEST"


class WindowSize(StrEnum):
    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"
    MONTH = "MONTH"


class MeterSource(StrEnum):
    CONFIG = "config"  # the YAML file: the meter exists in every namespace, read-only through the API
    API = "api"  # created through POST /api/v1/meters in one namespace


class InvalidMeter(InvalidInput):
    pass


@dataclass(frozen=True, slots=True)
class Meter:
    id: str
    slug: str
    aggregation: Aggregation
    event_type: str
    value_property: str | None = None
    group_by: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    description: str | None = None
    event_from: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    namespace: str | None = None  # None: a config-file meter, present in every namespace
    created_at: datetime | None = None

    @property
    def source(self) -> MeterSource:
        return MeterSource.CONFIG if self.namespace is None else MeterSource.API

    @property
    def value_segments(self) -> tuple[Segment, ...] | None:
        return None if self.value_property is None else parse_path(self.value_property)

    def group_segments(self) -> dict[str, tuple[Segment, ...]]:
        return {key: parse_path(path) for key, path in sorted(self.group_by.items())}

    @property
    def rollup_table(self) -> str:
        return f"meter_rollup_{self.id}"

    def definition(self) -> dict[str, Any]:
        """What identifies the meter's rollup: a change to any of it needs a new rollup."""
        return {
            "slug": self.slug,
            "aggregation": self.aggregation.value,
            "eventType": self.event_type,
            "valueProperty": self.value_property,
            "groupBy": dict(sorted(self.group_by.items())),
            "eventFrom": None if self.event_from is None else format_time(self.event_from),
        }

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "slug": self.slug,
            "name": self.name or self.slug,
            "description": self.description,
            "aggregation": self.aggregation.value,
            "eventType": self.event_type,
            "valueProperty": self.value_property,
            "groupBy": dict(self.group_by),
            "metadata": dict(self.metadata),
        }
        if self.event_from is not None:
            body["eventFrom"] = format_time(self.event_from)
        if self.created_at is not None:
            body["createdAt"] = format_time(self.created_at)
            body["updatedAt"] = format_time(self.created_at)
        return {k: v for k, v in body.items() if v is not None}


def _string(obj: dict[str, Any], name: str, *, required: bool, max_len: int = 1024) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise InvalidMeter(f"{name} is required", field=name)
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidMeter(f"{name} must be a non-empty string", field=name)
    if len(value) > max_len:
        raise InvalidMeter(f"{name} is longer than {max_len} characters", field=name)
    return value


_FIELDS = frozenset(
    {
        "id",
        "slug",
        "name",
        "description",
        "aggregation",
        "eventType",
        "valueProperty",
        "groupBy",
        "eventFrom",
        "metadata",
        "windowSize",
        "createdAt",
        "updatedAt",
    }
)


def parse_meter(obj: object, *, meter_id: str, namespace: str | None, created_at: datetime | None = None) -> Meter:
    """Validate an OpenMeter v1 meter body (API or YAML). Raises InvalidMeter naming the field."""
    if not isinstance(obj, dict):
        raise InvalidMeter("a meter must be a JSON object", field=None)
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise InvalidMeter(f"unknown meter field(s): {', '.join(unknown)}", field=unknown[0])
    slug = _string(obj, "slug", required=True, max_len=63)
    assert slug is not None
    if not SLUG.match(slug):
        raise InvalidMeter("slug must be lowercase letters, digits, '_' or '-' (e.g. tokens_total)", field="slug")
    raw_aggregation = obj.get("aggregation")
    try:
        aggregation = Aggregation(str(raw_aggregation).upper())
    except ValueError:
        allowed = ", ".join(a.value for a in Aggregation)
        raise InvalidMeter(f"aggregation must be one of {allowed}", field="aggregation") from None
    event_type = _string(obj, "eventType", required=True)
    assert event_type is not None
    value_property = _string(obj, "valueProperty", required=False)
    if aggregation is Aggregation.COUNT and value_property is not None:
        raise InvalidMeter("valueProperty is not allowed with aggregation COUNT", field="valueProperty")
    if aggregation is not Aggregation.COUNT and value_property is None:
        raise InvalidMeter(f"valueProperty is required with aggregation {aggregation.value}", field="valueProperty")
    if value_property is not None:
        _check_path(value_property, "valueProperty")
    raw_group_by = obj.get("groupBy") or {}
    if not isinstance(raw_group_by, dict) or len(raw_group_by) > MAX_GROUP_BY:
        raise InvalidMeter(f"groupBy must be an object of at most {MAX_GROUP_BY} name -> JSONPath", field="groupBy")
    group_by: dict[str, str] = {}
    for key, path in raw_group_by.items():
        if not isinstance(key, str) or not GROUP_KEY.match(key) or key.lower() in RESERVED_GROUP_KEYS:
            raise InvalidMeter(
                f"groupBy key {key!r} must be an identifier (letters, digits, '_'), not a reserved name",
                field=f"groupBy.{key}",
            )
        if not isinstance(path, str):
            raise InvalidMeter(f"groupBy.{key} must be a JSONPath string", field=f"groupBy.{key}")
        _check_path(path, f"groupBy.{key}")
        group_by[key] = path
    raw_from = obj.get("eventFrom")
    try:
        event_from = None if raw_from is None else parse_time(raw_from, field="eventFrom")
    except InvalidInput as exc:
        raise InvalidMeter(exc.message, field="eventFrom") from None
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidMeter("metadata must be an object of strings", field="metadata")
    return Meter(
        id=meter_id,
        slug=slug,
        aggregation=aggregation,
        event_type=event_type,
        value_property=value_property,
        group_by=group_by,
        name=_string(obj, "name", required=False),
        description=_string(obj, "description", required=False, max_len=4096),
        event_from=event_from,
        metadata={str(k): v for k, v in metadata.items()},
        namespace=namespace,
        created_at=created_at,
    )


def _check_path(path: str, field_name: str) -> None:
    try:
        parse_path(path)
    except InvalidInput as exc:
        raise InvalidMeter(exc.message, field=field_name) from None


def new_meter_id() -> str:
    return uuid.uuid4().hex


def config_meter_id(meter: dict[str, Any]) -> str:
    """Deterministic id of a config-file meter: the same definition keeps its rollup across restarts."""
    text = orjson.dumps(meter, option=orjson.OPT_SORT_KEYS).decode()
    return uuid.uuid5(uuid.NAMESPACE_URL, "metergate:meter:" + text).hex


# --- per-event value rules (mirror of aggregator.sql) -------------------------------------------------


def parse_number(value: Any) -> Decimal | None:
    """A meter value as Decimal, or None when invalid. JSON numbers and numeric strings are accepted."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:
        return None
    if not _NUMBER.match(text):
        return None
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    if number.is_zero():
        return Decimal(0)
    # Only the digits decide, no context arithmetic (which would round past 28 digits or overflow):
    # below 1e29, and no significant digit past the 9th decimal.
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    trailing_zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    if number.adjusted() >= 29 or exponent + trailing_zeros < -VALUE_SCALE:
        return None
    return number


def value_error(meter: Meter, data: Any) -> str | None:
    """Why the event's data is invalid for this meter, or None when it counts."""
    segments = meter.value_segments
    if segments is None:
        return None
    value = evaluate(segments, data)
    if value is MISSING or value is None:
        return f"meter {meter.slug}: valueProperty {meter.value_property} is missing"
    if meter.aggregation is Aggregation.UNIQUE_COUNT:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return f"meter {meter.slug}: valueProperty {meter.value_property} must be a string or a number"
        return None
    if parse_number(value) is None:
        return (
            f"meter {meter.slug}: valueProperty {meter.value_property} must be a finite number or numeric string "
            f"with at most {VALUE_SCALE} decimals and below 1e29, got {orjson.dumps(value).decode()[:64]}"
        )
    return None


def validation_error(meters: list[Meter], event_type: str, data_json: str) -> str | None:
    """The first reason the event is invalid for a meter of its type, or None (for GET /api/v1/events)."""
    relevant = [m for m in meters if m.event_type == event_type]
    if not relevant:
        return None
    try:
        data = orjson.loads(data_json)
    except orjson.JSONDecodeError:
        return "data is not valid JSON"
    errors = [e for m in relevant if (e := value_error(m, data)) is not None]
    return "; ".join(errors) if errors else None

"""Meter query parameters and results (pure): validate a request into `sql.Query`, shape rows into
OpenMeter's MeterQueryResult. Clear InvalidInput errors for bad ranges, group-by keys and time zones.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any

from aggregator.meter import Aggregation, Meter, WindowSize
from aggregator.sql import Query
from common import exactjson
from common.clock import format_time
from common.cloudevents import MAX_EVENT_TIME, MIN_EVENT_TIME, parse_time
from common.errors import InvalidInput
from common.timezones import known_zone

MAX_WINDOWS = 100_000


class InvalidQuery(InvalidInput):
    pass


@dataclass(frozen=True, slots=True)
class QueryParams:
    """The request as given (HTTP query string or JSON body), before validation."""

    start: str | None = None
    end: str | None = None
    window_size: str | None = None
    window_time_zone: str | None = None
    subjects: tuple[str, ...] = ()
    filter_group_by: tuple[tuple[str, str], ...] = ()
    group_by: tuple[str, ...] = ()
    customers: tuple[str, ...] = ()  # filterCustomerId: ids (or keys)


MAX_CUSTOMERS = 100
CUSTOMER_ID = "customer_id"

#: customer as asked -> (customer id, its attributed subject keys)
Attributions = Mapping[str, tuple[str, tuple[str, ...]]]


def check_customers(params: QueryParams) -> None:
    """OpenMeter's rules (streaming/query_params.go): a customer_id group-by needs a customer filter, and several
    customers need the customer_id group-by (else the answer would be ambiguous); at most 100 customers."""
    if len(params.customers) > MAX_CUSTOMERS:
        raise InvalidQuery(f"at most {MAX_CUSTOMERS} customers per query", field="filterCustomerId")
    if CUSTOMER_ID in params.group_by and not params.customers:
        raise InvalidQuery("customer filter is required with customer_id group by", field="groupBy")
    if len(set(params.customers)) > 1 and CUSTOMER_ID not in params.group_by:
        raise InvalidQuery(
            "multiple customer filters are only allowed with customer_id group by", field="filterCustomerId"
        )


def check_time_zone(name: str) -> str:
    if known_zone(name) is None:
        raise InvalidQuery(
            f"unknown time zone {name[:64]!r}: use an IANA name such as Europe/Berlin", field="windowTimeZone"
        )
    return name


def to_query(meter: Meter, namespace: str, params: QueryParams, *, customers: Attributions | None = None) -> Query:
    """Without `from`/`to` a query has no time bound, as in OpenMeter: it reads every stored event (from the
    meter's eventFrom) and its windows are not cut at 1970 or at now (see `Query.from_given`).
    `customers`: the attributions of `params.customers`, resolved by the caller (every one must be there)."""
    start = MIN_EVENT_TIME if params.start is None else _instant(params.start, "from")
    end = MAX_EVENT_TIME if params.end is None else _instant(params.end, "to")
    if not start < end:
        raise InvalidQuery(f"from ({format_time(start)}) must be before to ({format_time(end)})", field="from")
    window: WindowSize | None = None
    if params.window_size is not None:
        try:
            window = WindowSize(params.window_size.upper())
        except ValueError:
            allowed = ", ".join(w.value for w in WindowSize)
            raise InvalidQuery(f"windowSize must be one of {allowed}", field="windowSize") from None
    tz = check_time_zone(params.window_time_zone or "UTC")
    bounded = params.start is not None and params.end is not None
    if bounded and window is WindowSize.MINUTE and (end - start).total_seconds() / 60 > MAX_WINDOWS:
        raise InvalidQuery(f"more than {MAX_WINDOWS} MINUTE windows: narrow from/to", field="windowSize")
    known = set(meter.group_by)
    group_subject = False
    group_customer = False
    group_by: list[str] = []
    for key in params.group_by:
        if key == "subject":
            group_subject = True
        elif key == CUSTOMER_ID and key not in known:
            group_customer = True
        elif key not in known:
            raise InvalidQuery(unknown_key(meter, key), field="groupBy")
        elif key not in group_by:
            group_by.append(key)
    for key, _ in params.filter_group_by:
        if key not in known:
            raise InvalidQuery(unknown_key(meter, key), field=f"filterGroupBy[{key}]")
    subjects = tuple(dict.fromkeys(s for s in params.subjects if s))
    subject_groups: tuple[tuple[str, str], ...] = ()
    check_customers(params)
    if params.customers:
        found = customers or {}
        missing = [c for c in params.customers if c not in found]
        if missing:
            raise InvalidQuery(f"customer {missing[0]!r} not found", field="filterCustomerId")
        pairs = {s: cid for c in dict.fromkeys(params.customers) for cid, subs in [found[c]] for s in subs}
        if subjects:  # both filters: the subjects given that belong to these customers
            pairs = {s: cid for s, cid in pairs.items() if s in subjects}
        subjects = tuple(pairs) or (NO_SUBJECT,)
        if group_customer and not group_subject:
            subject_groups = tuple(pairs.items())
    return Query(
        meter=meter,
        namespace=namespace,
        start=start,
        end=end,
        window=window,
        tz=tz,
        subjects=subjects,
        filters=tuple(sorted(dict(params.filter_group_by).items())),
        group_by=tuple(group_by),
        group_subject=group_subject or group_customer or bool(params.subjects),
        subject_groups=subject_groups,
        from_given=params.start is not None,
        to_given=params.end is not None,
    )


#: Stands for "no subject at all" in a subject filter (customers with no subjects): never a subject key, since
#: subjects are non-empty.
NO_SUBJECT = ""


def unknown_key(meter: Meter, key: str) -> str:
    known = ", ".join(sorted(meter.group_by)) or "none"
    return f"unknown group-by key {key!r} for meter {meter.slug} (its keys: {known}; or subject)"


def _instant(value: str, name: str) -> datetime:
    try:
        return parse_time(value, field=name)
    except InvalidInput as exc:
        raise InvalidQuery(exc.message, field=name) from None


def merged_value(meter: Meter, values: Sequence[Any]) -> Decimal:
    """The window's value from the merged states (exact Decimal; AVG = sum / count)."""
    if meter.aggregation is Aggregation.AVG:
        total, count = Decimal(values[0]), int(values[1])
        if count == 0:
            return Decimal(0)
        with localcontext() as ctx:
            ctx.prec = 38
            return total / count
    return Decimal(values[0])


@dataclass(frozen=True, slots=True)
class Row:
    window_start: datetime
    window_end: datetime
    subject: str | None
    group_by: dict[str, str]
    value: Decimal
    customer_id: str | None = None


def shape_rows(q: Query, rows: Sequence[Sequence[Any]]) -> list[Row]:
    """Window bounds per row. A given `from`/`to` clips the windows it cuts (exact partial windows, our
    documented choice); without them, windows are whole and an unwindowed row spans its events' minutes
    [minute of the first, minute of the last + 1 minute), as OpenMeter answers."""
    out: list[Row] = []
    ngroups = len(q.group_by)
    for row in rows:
        bucket, bucket_end, subject = int(row[0]), int(row[1]), str(row[2])
        groups = {k: str(v) for k, v in zip(q.group_by, row[3 : 3 + ngroups], strict=True)}
        value = merged_value(q.meter, row[3 + ngroups :])
        if q.boundaries is not None:
            ws, we = q.boundaries[bucket], q.boundaries[bucket + 1]
        else:
            ws = datetime.fromtimestamp(bucket, UTC)
            we = datetime.fromtimestamp(bucket_end, UTC)
            if q.from_given:
                ws = q.start if q.window is None else max(ws, q.start)
            if q.to_given:
                we = q.end if q.window is None else min(we, q.end)
        if q.subject_groups:  # grouped by customer: the key is the customer's id
            out.append(Row(ws, we, None, groups, value, subject))
        else:
            out.append(Row(ws, we, subject if q.group_subject else None, groups, value))
    return out


decimal_text = exactjson.decimal_text  # the one exact rendering (common/exactjson.py)


def result_body(q: Query, rows: list[Row]) -> dict[str, Any]:
    """OpenMeter's MeterQueryResult: `from`/`to` only when the request gave them."""
    body: dict[str, Any] = {}
    if q.from_given:
        body["from"] = format_time(q.start)
    if q.to_given:
        body["to"] = format_time(q.end)
    body["windowSize"] = None if q.window is None else q.window.value
    body["data"] = [
        {
            "value": r.value,
            "windowStart": format_time(r.window_start),
            "windowEnd": format_time(r.window_end),
            "subject": r.subject,
            **({"customerId": r.customer_id} if r.customer_id is not None else {}),
            "groupBy": r.group_by,
        }
        for r in rows
    ]
    return body


def _csv_time(t: datetime) -> str:
    """RFC 3339 as OpenMeter's CSV writes it (whole seconds), with milliseconds only when there are some."""
    text = format_time(t)
    return text[:-5] + "Z" if text.endswith(".000Z") else text


def csv_text(q: Query, rows: list[Row]) -> str:
    """The query result as OpenMeter's CSV: window_start, window_end, [subject], group-by keys..., value.

    Values are exact (decimal_text), where OpenMeter prints a float with 6 decimals."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["window_start", "window_end", *(["subject"] if q.group_subject else []), *q.group_by, "value"]
    writer.writerow(header)
    for r in rows:
        subject = [r.subject or ""] if q.group_subject else []
        groups = [r.group_by.get(k, "") for k in q.group_by]
        writer.writerow([_csv_time(r.window_start), _csv_time(r.window_end), *subject, *groups, decimal_text(r.value)])
    return out.getvalue()


def params_from_mapping(items: Mapping[str, Any] | Sequence[tuple[str, str]]) -> QueryParams:
    """From a query string (repeated keys kept) or a POST body (OpenMeter field names)."""
    pairs: list[tuple[str, Any]] = list(items.items()) if isinstance(items, Mapping) else list(items)
    values: dict[str, Any] = {}
    subjects: list[str] = []
    customers: list[str] = []
    group_by: list[str] = []
    filters: list[tuple[str, str]] = []
    for key, value in pairs:
        if key == "subject":
            subjects.extend(_strings(value, key))
        elif key == "filterCustomerId":
            customers.extend(_strings(value, key))
        elif key == "groupBy":
            group_by.extend(_strings(value, key))
        elif key == "filterGroupBy" and isinstance(value, dict):
            filters.extend((str(k), _one(v, f"filterGroupBy[{k}]")) for k, v in value.items())
        elif key.startswith("filterGroupBy[") and key.endswith("]"):
            filters.append((key[len("filterGroupBy[") : -1], _one(value, key)))
        elif key in ("from", "to", "windowSize", "windowTimeZone"):
            values[key] = _one(value, key) if value is not None else None
        else:
            raise InvalidQuery(f"unknown query parameter {key!r}", field=key)
    return QueryParams(
        start=values.get("from"),
        end=values.get("to"),
        window_size=values.get("windowSize"),
        window_time_zone=values.get("windowTimeZone"),
        subjects=tuple(subjects),
        filter_group_by=tuple(filters),
        group_by=tuple(group_by),
        customers=tuple(customers),
    )


def _strings(value: Any, key: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in items):
        raise InvalidQuery(f"{key} must be a string or a list of strings", field=key)
    return list(items)


def _one(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise InvalidQuery(f"{key} must be a string", field=key)
    return value

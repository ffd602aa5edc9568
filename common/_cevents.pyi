"""The compiled decoder (common/_cevents.c): see common.cloudevents and ingest.sink.consumer."""

from collections.abc import Callable
from datetime import datetime
from typing import Any

def configure(
    *,
    cloud_event: type[tuple[Any, ...]],
    parse_time: Callable[[str], datetime],
    default_time: Callable[[datetime], datetime],
    dumps: Callable[..., bytes],
    exact_float: Callable[[object], float],
    sort_keys: int,
    refusals: tuple[type[BaseException], ...],
    min_time_ms: int,
    max_time_ms: int,
) -> None: ...
def event_from_document(doc: Any, default_time: datetime | None, /) -> Any: ...
def fast_time(text: object, /) -> datetime | None: ...
def kafka_time(timestamp: object, /) -> datetime | None: ...
def decode_records(
    records: list[Any], decoder: Any, decoded_type: type[tuple[Any, ...]], item_type: type[tuple[Any, ...]], /
) -> tuple[list[Any], list[tuple[int, Any]], bytes | None, list[bytes | None]]: ...
def configure_sink(
    *,
    document: Callable[[bytes], Any],
    data: Callable[[bytes], Any],
    max_value_bytes: int,
    max_plan_headers: int,
    max_header_bytes: int,
    max_attribute_length: int,
    content_type_header: str,
    namespace_header: str,
    ingested_at_header: str,
    to_millis: Callable[[datetime], int],
) -> None: ...
def prepare_items(
    items: list[Any], /
) -> tuple[bytearray, bytearray, bytearray, tuple[list[Any], ...], dict[tuple[str, str, str], list[datetime]]]: ...

"""Meters from the YAML config file.

Format: a top-level `meters:` list of OpenMeter v1 meter objects (slug, aggregation, eventType, ...).
Config-file meters exist in EVERY namespace, with one rollup shared by all namespaces (rows carry the
namespace). Through the API they are listed and queried like any meter but cannot be deleted (409);
an API meter cannot take a config meter's slug (409). A config meter's id is derived from its
definition, so a changed definition gets a new rollup (rebuilt and backfilled) and the old one is dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from aggregator.meter import InvalidMeter, Meter, config_meter_id, parse_meter


def parse_config(document: Any) -> list[Meter]:
    if document is None:
        return []
    if not isinstance(document, dict) or not isinstance(document.get("meters", []), list):
        raise InvalidMeter("the meters file must hold a top-level `meters:` list", field="meters")
    meters: list[Meter] = []
    seen: set[str] = set()
    for index, item in enumerate(document.get("meters") or []):
        try:
            definition = dict(item) if isinstance(item, dict) else item
            meter = parse_meter(definition, meter_id=config_meter_id(definition), namespace=None)
        except InvalidMeter as exc:
            raise InvalidMeter(f"meters[{index}]: {exc.message}", field=f"meters[{index}]") from None
        if meter.slug in seen:
            raise InvalidMeter(f"meters[{index}]: duplicate slug {meter.slug}", field=f"meters[{index}].slug")
        seen.add(meter.slug)
        meters.append(meter)
    return meters


def load_config(path: Path | None) -> list[Meter]:
    if path is None:
        return []
    with path.open(encoding="utf-8") as fh:
        return parse_config(yaml.safe_load(fh))

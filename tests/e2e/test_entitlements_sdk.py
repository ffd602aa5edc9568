"""OpenMeter's own Python SDK (PyPI `openmeter`, pinned pre-release) against a running `metergate dev`:
create meter -> create feature -> create entitlement -> grant -> ingest -> value, decoded by the SDK's models.

The SDK's `client.subjects` attribute is bound twice in its generated client (subject upsert operations
shadow the subject-entitlement ones), so those calls go through the SDK's own generated request builders
and `client.send_request`, which is how its docs reach operations without a typed method.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_dev_server import DevServer, running_dev_server

openmeter = pytest.importorskip("openmeter", reason="install the test extras: pip install -e '.[test]'")
from openmeter._generated import models  # noqa: E402
from openmeter._generated.operations import _operations as ops  # noqa: E402

pytestmark = pytest.mark.e2e

FROZEN_AT = "2024-03-01T00:00:00Z"


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevServer]:
    with running_dev_server(tmp_path / "data", {"METERGATE_CLOCK_FROZEN_AT": FROZEN_AT}) as server:
        yield server


def test_openmeter_sdk_drives_entitlements(dev: DevServer) -> None:
    client = openmeter.Client(endpoint=dev.base_url)

    def send(request: Any, status: int) -> Any:
        response = client.send_request(request)
        assert response.status_code == status, response.text()
        return response.json() if response.content else None

    meter = client.meters.create(
        {"slug": "api_calls", "aggregation": "SUM", "eventType": "api_call", "valueProperty": "$.calls"}
    )
    assert meter.slug == "api_calls"
    feature = client.features.create({"key": "api", "name": "API", "meterSlug": "api_calls"})
    assert (feature.key, feature.meter_slug) == ("api", "api_calls")
    assert client.features.get(feature.id).name == "API"

    created = models.EntitlementMetered(
        send(
            ops.build_subjects_post_request(
                "customer-1",
                json={
                    "type": "metered",
                    "featureKey": "api",
                    "usagePeriod": {"interval": "MONTH", "anchor": FROZEN_AT},
                    "measureUsageFrom": FROZEN_AT,
                    "isSoftLimit": False,
                },
            ),
            201,
        )
    )
    assert created.feature_id == feature.id
    assert created.usage_period.interval == "MONTH"
    assert created.current_usage_period.from_property == datetime(2024, 3, 1, tzinfo=UTC)

    grant = models.EntitlementGrant(
        send(
            ops.build_subjects_create_grant_request(
                "customer-1",
                "api",
                json={
                    "amount": 100.5,
                    "priority": 1,
                    "effectiveAt": FROZEN_AT,
                    "expiration": {"duration": "MONTH", "count": 1},
                },
            ),
            201,
        )
    )
    assert grant.amount == 100.5
    assert grant.expires_at == datetime(2024, 4, 1, tzinfo=UTC)

    for i in range(3):
        client.events.ingest_event(
            {
                "specversion": "1.0",
                "id": f"sdk-{i}",
                "source": "sdk-test",
                "type": "api_call",
                "subject": "customer-1",
                "time": datetime(2024, 3, 2 + i, tzinfo=UTC),
                "data": {"calls": 20},
            }
        )
    httpx.post(f"{dev.base_url}/api/v1/debug/clock", json={"time": "2024-03-10T00:00:00Z"}).raise_for_status()

    deadline = time.monotonic() + 30
    while True:
        value = models.EntitlementValue(
            send(ops.build_subjects_get_entitlement_value_request("customer-1", "api"), 200)
        )
        if value.usage == 60 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert value.has_access is True
    assert (value.usage, value.balance, value.overage) == (60, 40.5, 0)
    assert value.total_available_grant_amount == 100.5

    listed = client.entitlements.list()
    assert [e["id"] for e in listed] == [created.id]
    assert client.entitlements.get(created.id)["subjectKey"] == "customer-1"
    assert [g["id"] for g in client.grants.list()] == [grant.id]

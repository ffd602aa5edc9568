"""OpenMeter's current JavaScript SDK (npm `@openmeter/sdk` 1.0.0-beta.232) drives a customer flow against a
running `metergate dev`: customer with two subjects -> meter -> feature -> v2 metered entitlement with
issueAfterReset -> events on both subjects -> v2 value and customer access show their sum -> grant -> reset.

npm is reachable from these machines: the SDK is installed into a cache folder on first use. The test is
skipped, saying so, only where node or npm is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_dev_server import DevServer, running_dev_server
from tests.support.npm_sdk import npm_package

pytestmark = pytest.mark.e2e

SDK = "@openmeter/sdk@1.0.0-beta.232"
SCRIPT = Path(__file__).parents[1] / "support" / "npm_openmeter_customer_flow.mjs"


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevServer]:
    with running_dev_server(tmp_path / "data", {"METERGATE_CLOCK_FROZEN_AT": "2024-03-10T00:00:00Z"}) as server:
        yield server


def test_openmeter_js_sdk_customer_flow(dev: DevServer, tmp_path: Path) -> None:
    folder = npm_package(SDK)
    # An ES module resolves packages from its own folder upwards: run a copy placed beside node_modules.
    script = folder / SCRIPT.name
    shutil.copyfile(SCRIPT, script)
    result = subprocess.run(
        ["node", str(script), dev.base_url], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{result.stderr}\n--- server ---\n{dev.output()[-4000:]}"
    out: dict[str, Any] = json.loads(result.stdout)

    customer = out["customer"]
    assert (customer["key"], customer["usageAttribution"]["subjectKeys"]) == ("acme", ["acme-api", "acme-batch"])
    ent = out["entitlement"]
    assert (ent["customerId"], ent["customerKey"], ent["type"]) == (customer["id"], "acme", "metered")
    summed = {"hasAccess": True, "balance": 850, "usage": 150, "overage": 0, "totalAvailableGrantAmount": 1000}
    assert {k: out["valueAfterEvents"][k] for k in summed} == summed
    assert {k: out["access"]["entitlements"]["gpt"][k] for k in summed} == summed
    assert out["grant"]["amount"] == 500
    assert (out["valueAfterGrant"]["balance"], out["valueAfterGrant"]["usage"]) == (1350, 150)
    assert [e["id"] for e in out["list"]["items"]] == [ent["id"]]
    after_reset = out["valueAfterReset"]
    assert (after_reset["usage"], after_reset["balance"]) == (0, 1000)  # the 500 grant does not roll over
    assert [c["key"] for c in out["customers"]["items"]] == ["acme"]

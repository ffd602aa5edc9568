"""deploy/smoke.sh, the pre-release check, run as written against a real `metergate dev` (its --no-compose mode:
every step but the Kafka one, which needs the compose stack)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_dev_server import DevServer, running_dev_server

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "smoke.sh"


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevServer]:
    with running_dev_server(tmp_path / "data") as server:
        yield server


@pytest.mark.skipif(shutil.which("curl") is None, reason="deploy/smoke.sh uses curl")
def test_smoke_script_passes_against_a_running_metergate(dev: DevServer) -> None:
    out = subprocess.run(
        ["bash", str(SCRIPT), "--no-compose", dev.base_url], capture_output=True, text=True, timeout=180, check=False
    )
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n--- server ---\n{dev.output()[-3000:]}"
    assert "smoke test passed: usage 12.5, balance 87.5" in out.stdout

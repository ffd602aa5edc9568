"""The README's walkthrough, run as written (bash + curl) against a real `metergate dev` on the system
clock: a meter, a feature, an entitlement, a grant, usage, and the access check must answer as the README
says. Real time matters: instants with microseconds and events inside the current second are the case a
frozen test clock on whole seconds never exercises.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_dev_server import DevServer, running_dev_server

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## From usage to an access check"
CUSTOMERS = "## Customers: OpenMeter's current API"


def walkthrough_script(heading: str = SECTION) -> tuple[str, str]:
    """(the shell block of the README section, the value response the README promises)."""
    text = README.read_text()
    section = text[text.index(heading) :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the README walkthrough has no ```sh block"
    script = block.group(1)
    promised = re.search(r"^# (\{\"hasAccess\".*\})$", script, re.M)
    assert promised, "the README walkthrough no longer shows the value it expects"
    return script, promised.group(1)


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevServer]:
    with running_dev_server(tmp_path / "data") as server:
        yield server


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's walkthrough uses curl")
@pytest.mark.parametrize("heading", [SECTION, CUSTOMERS])
def test_readme_walkthrough_answers_as_documented(dev: DevServer, heading: str) -> None:
    script, promised = walkthrough_script(heading)
    script = script.replace("http://127.0.0.1:8888", dev.base_url)
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert '"status":5' not in out.stdout, f"a server error during the walkthrough:\n{out.stdout}\n{dev.output()}"
    # "..." in the promise stands for a value that changes per run (asOf, the computation's wall time).
    pattern = re.escape(promised).replace(re.escape('"..."'), '"[^"]+"')
    assert re.search(pattern, out.stdout), f"expected {promised} in:\n{out.stdout}"

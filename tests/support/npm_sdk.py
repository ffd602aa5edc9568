"""npm packages for tests: `npm_package` installs one into a cache folder with npm (the registry is reachable
from these machines; the test is skipped, saying so, where node or npm is missing). `npm_sdk_messages` runs
tests/support/npm_cloudevents_emit.js with the `cloudevents` SDK."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest

SDK = "cloudevents@10.0.0"
SCRIPT = Path(__file__).with_name("npm_cloudevents_emit.js")


@cache
def npm_package(spec: str) -> Path:
    """The folder holding node_modules/<package> for `spec` (name@version), installed on first use."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip(f"node and npm are needed to run the npm package {spec}")
    name = spec.rpartition("@")[0]
    folder = Path(tempfile.gettempdir()) / ("metergate-npm-" + spec.replace("/", "-").replace("@", "-").strip("-"))
    if not (folder / "node_modules" / name).is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(folder), spec],
            check=True,
            timeout=300,
            capture_output=True,
        )
    return folder


def npm_sdk_messages() -> list[dict[str, Any]]:
    """[{kind: http|kafka, mode: structured|binary, headers, body, key}] as the SDK builds them."""
    folder = npm_package(SDK)
    result = subprocess.run(
        ["node", str(SCRIPT)],
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
        env={"NODE_PATH": str(folder / "node_modules"), "PATH": shutil.which("node").rsplit("/", 1)[0]},
    )
    messages: list[dict[str, Any]] = json.loads(result.stdout)
    return messages

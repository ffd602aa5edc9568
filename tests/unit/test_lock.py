"""deploy/requirements.lock (what the image installs) pins every server dependency of pyproject.toml at a version
its specifier allows, and nothing twice: regenerate it with scripts/lock.sh when this fails."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pins() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (ROOT / "deploy" / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, version = line.partition("==")
        assert version, f"not an exact pin: {line}"
        key = canonicalize_name(name)
        assert key not in out, f"pinned twice: {name}"
        out[key] = version
    return out


def test_every_dependency_is_pinned_within_its_range() -> None:
    pinned = pins()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        req = Requirement(dep)
        version = pinned.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name} is not in deploy/requirements.lock"
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} is outside {req.specifier}"


def test_the_image_installs_the_lock() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "pip install -r requirements.lock" in dockerfile
    assert "pip install --no-deps ." in dockerfile

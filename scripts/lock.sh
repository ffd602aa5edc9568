#!/usr/bin/env bash
# Re-resolve deploy/requirements.lock: the server dependencies of pyproject.toml in a fresh virtualenv, frozen.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip >/dev/null
python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > "$tmp/deps.txt"
"$tmp/venv/bin/python" -m pip install -q -r "$tmp/deps.txt"
{
  echo "# Exact versions of the server image's dependencies (pyproject.toml [project.dependencies] and what they pull in),"
  echo "# resolved for Python 3.11 on Linux: deploy/Dockerfile installs these, so two builds get the same packages."
  echo "# Regenerate after changing dependencies: scripts/lock.sh (tests/unit/test_lock.py checks it matches pyproject)."
  "$tmp/venv/bin/python" -m pip freeze | grep -v '^-e\|^pip=='
} > deploy/requirements.lock
echo "deploy/requirements.lock: $(grep -vc '^#' deploy/requirements.lock) packages"

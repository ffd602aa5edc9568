#!/usr/bin/env bash
# Installs Metergate into .venv and runs everything in one process on embedded defaults:
# HTTP API on 127.0.0.1:8888, ClickHouse engine in-process (chdb), SQLite for state, no broker.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
# pip's own warnings (a machine's extra package indexes, setuptools notes) say nothing about Metergate:
# show the install's output only when it fails.
mkdir -p .metergate
echo "installing Metergate into .venv (log: .metergate/install.log) ..."
if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e '.[embedded]'; } \
    >.metergate/install.log 2>&1; then
  cat .metergate/install.log
  echo "the install failed (above)" >&2
  exit 1
fi
exec .venv/bin/metergate dev "$@"

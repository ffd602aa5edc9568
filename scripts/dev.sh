#!/usr/bin/env bash
# Installs Metergate into .venv and runs everything in one process on embedded defaults:
# HTTP API on 127.0.0.1:8888, ClickHouse engine in-process (chdb), SQLite for state, no broker.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e .
exec .venv/bin/metergate dev "$@"

#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine, then runs lint, types and the whole suite.
# Safe to re-run. Used by CI (.ci/run) and by developers alike.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# PostgreSQL for the entitlement-state tests: use the one on 127.0.0.1:5432, start or install it if missing.
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing PostgreSQL from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  fi
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  # Trust auth is how these machines come; create the test role/database if a fresh cluster lacks them.
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='root'\"" 2>/dev/null | grep -q 1 \
    || su postgres -c "psql -qc 'CREATE ROLE root SUPERUSER LOGIN'" 2>/dev/null || true
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='test'\"" 2>/dev/null | grep -q 1 \
    || su postgres -c "psql -qc 'CREATE DATABASE test OWNER root'" 2>/dev/null || true
fi

# curl runs the README walkthrough in tests/e2e (the same commands a new user types).
if ! command -v curl >/dev/null 2>&1; then
  log "installing curl from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq curl >/dev/null
fi

# A C compiler builds the compiled decoder (common/_cevents.c), which the tests require (REQUIRE_COMPILED_DECODER).
if ! command -v gcc >/dev/null 2>&1; then
  log "installing gcc from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq gcc libc6-dev >/dev/null
fi

log "installing Python packages into .venv"
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

log "ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
log "mypy --strict"
.venv/bin/mypy
log "import layers (import-linter)"
.venv/bin/lint-imports --no-cache
log "pytest"
# The compiled decoder (common/_cevents.c) is optional for an install; here it must have been built.
# (Not a METERGATE_ variable: the server refuses settings it does not know, and the e2e tests start servers.)
REQUIRE_COMPILED_DECODER=1 .venv/bin/python -m pytest "$@"

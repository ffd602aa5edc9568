#!/usr/bin/env bash
# The check to run before a release: bring the compose stack up, send events through the API and straight to
# Kafka, create a meter, a feature, an entitlement and a grant, and read the value and a meter query back.
#
#   deploy/smoke.sh                      # docker compose up --build, then the checks against the proxy (:8888)
#   deploy/smoke.sh --no-compose URL     # only the checks, against a running Metergate (no Kafka step)
#
# Needs curl and python3; the API key is the first key of METERGATE_API_KEYS in .env (or $SMOKE_API_KEY).
# Exits non-zero, saying which step failed, on the first thing that is not as expected.
set -euo pipefail
cd "$(dirname "$0")/.."

compose=1
base=http://127.0.0.1:8888
if [ "${1:-}" = "--no-compose" ]; then
  compose=0
  base=${2:?usage: deploy/smoke.sh --no-compose URL}
fi

step() { printf '==> %s\n' "$*"; }
fail() { printf 'SMOKE FAILED: %s\n' "$*" >&2; exit 1; }

key=${SMOKE_API_KEY:-}
if [ -z "$key" ] && [ -f .env ]; then
  key=$(python3 -c 'import json, re, sys
text = open(".env").read()
m = re.search(r"^METERGATE_API_KEYS=(.*)$", text, re.M)
print(next(iter(json.loads(m.group(1)))) if m else "")')
fi
auth=()
[ -n "$key" ] && auth=(-H "Authorization: Bearer $key")

if [ "$compose" = 1 ]; then
  command -v docker >/dev/null || fail "docker is needed (or run with --no-compose URL)"
  step "docker compose up --build"
  docker compose up -d --build
fi

step "waiting for $base/healthz"
for _ in $(seq 1 120); do
  curl -fsS "$base/healthz" >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS "$base/healthz" >/dev/null || fail "the API did not become healthy"

run=$(python3 -c 'import uuid; print(uuid.uuid4().hex[:8])')
meter="smoke_${run}"
subject="smoke-${run}"
now=$(python3 -c 'import datetime; print(datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))')

call() {  # METHOD PATH [BODY] -> the response body; fails on a status >= 400
  local out status
  out=$(curl -sS -o /tmp/smoke-body.$$ -w '%{http_code}' -X "$1" "${auth[@]}" -H 'Content-Type: application/json' \
    ${3:+--data "$3"} "$base$2") || fail "$1 $2: no answer"
  status=$out
  out=$(cat /tmp/smoke-body.$$); rm -f /tmp/smoke-body.$$
  [ "$status" -lt 400 ] || fail "$1 $2 answered $status: $out"
  printf '%s' "$out"
}

step "meter, feature, entitlement, grant"
call POST /api/v1/meters "{\"slug\":\"$meter\",\"aggregation\":\"SUM\",\"eventType\":\"$meter\",\"valueProperty\":\"\$.n\"}" >/dev/null
call POST /api/v1/features "{\"key\":\"$meter\",\"name\":\"Smoke\",\"meterSlug\":\"$meter\"}" >/dev/null
call POST "/api/v1/subjects/$subject/entitlements" \
  "{\"type\":\"metered\",\"featureKey\":\"$meter\",\"usagePeriod\":{\"interval\":\"MONTH\",\"anchor\":\"$now\"},\"measureUsageFrom\":\"$now\"}" >/dev/null
call POST "/api/v1/subjects/$subject/entitlements/$meter/grants" \
  "{\"amount\":100,\"effectiveAt\":\"$now\",\"expiration\":{\"duration\":\"MONTH\",\"count\":1}}" >/dev/null

step "events through the API"
sleep 1  # the events' time must be after measureUsageFrom, whatever the clocks' resolution
at=$(python3 -c 'import datetime; print(datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))')
events="[{\"specversion\":\"1.0\",\"id\":\"$run-1\",\"source\":\"smoke\",\"type\":\"$meter\",\"subject\":\"$subject\",\"time\":\"$at\",\"data\":{\"n\":7}},"
events+="{\"specversion\":\"1.0\",\"id\":\"$run-2\",\"source\":\"smoke\",\"type\":\"$meter\",\"subject\":\"$subject\",\"time\":\"$at\",\"data\":{\"n\":\"5.5\"}}]"
curl -fsS -X POST "${auth[@]}" -H 'Content-Type: application/cloudevents-batch+json' --data "$events" \
  "$base/api/v1/events" >/dev/null || fail "POST /api/v1/events"
expected=12.5

if [ "$compose" = 1 ]; then
  step "an event straight to Kafka (om_events, structured mode, namespace header)"
  ns=$(python3 -c 'import json, re
m = re.search(r"^METERGATE_API_KEYS=(.*)$", open(".env").read(), re.M)
print(next(iter(json.loads(m.group(1)).values())) if m else "default")')
  # One event: its key only co-locates copies (README, "The events topic"), so a readable key does here.
  printf 'content-type:application/cloudevents+json,namespace:%s\t%s|{"specversion":"1.0","id":"%s-3","source":"smoke","type":"%s","subject":"%s","time":"%s","data":{"n":2}}\n' \
    "$ns" "$run" "$run" "$meter" "$subject" "$at" |
    docker compose exec -T kafka /opt/kafka/bin/kafka-console-producer.sh --bootstrap-server kafka:9092 \
      --topic om_events --property parse.key=true --property key.separator='|' \
      --property parse.headers=true >/dev/null || fail "producing to Kafka"
  expected=14.5
fi

step "the value counts the events (expected usage $expected)"
for _ in $(seq 1 60); do
  value=$(call GET "/api/v1/subjects/$subject/entitlements/$meter/value")
  usage=$(printf '%s' "$value" | python3 -c 'import json, sys; print(json.load(sys.stdin).get("usage"))')
  [ "$usage" = "$expected" ] && break
  sleep 1
done
[ "$usage" = "$expected" ] || fail "usage is $usage, expected $expected: $value"

step "a meter query"
query=$(call GET "/api/v1/meters/$meter/query?subject=$subject")
total=$(printf '%s' "$query" | python3 -c 'import json, sys; print(sum(r["value"] for r in json.load(sys.stdin)["data"]))')
[ "$total" = "$expected" ] || fail "the meter query says $total, expected $expected: $query"

step "smoke test passed: usage $usage, balance $(printf '%s' "$value" | python3 -c 'import json, sys; print(json.load(sys.stdin)["balance"])')"

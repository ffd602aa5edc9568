#!/bin/bash
# Least-privilege ClickHouse accounts for Metergate (deploy/README.md, "ClickHouse accounts").
#
# The clickhouse-server image runs this once, on the first start of an empty data volume, as the admin
# account of CLICKHOUSE_USER (`metergate`, which keeps DDL and access management and is used by `migrate`
# only). It is idempotent: on an existing deployment run it again by hand after setting the new passwords
# in .env:  docker compose exec clickhouse bash /docker-entrypoint-initdb.d/10-metergate-users.sh
#
#   metergate_api     the api: SELECT and INSERT, plus the meter DDL it runs when a meter is created,
#                     changed or deleted through the API (views, the rollups' and routes' row deletes)
#   metergate_worker  the ingest worker: SELECT and INSERT (events, its ledger, dead letters)
#   metergate_grafana dashboards: SELECT only, readonly = 2 (the plugin may set query settings, not write)
set -euo pipefail

: "${CLICKHOUSE_API_PASSWORD:?set CLICKHOUSE_API_PASSWORD}"
: "${CLICKHOUSE_WORKER_PASSWORD:?set CLICKHOUSE_WORKER_PASSWORD}"
: "${CLICKHOUSE_GRAFANA_PASSWORD:?set CLICKHOUSE_GRAFANA_PASSWORD}"
DB="${METERGATE_CLICKHOUSE_DATABASE:-metergate}"

# Passwords go in as query parameters, never pasted into SQL text.
run() {
  clickhouse client --user "${CLICKHOUSE_USER:-metergate}" --password "${CLICKHOUSE_PASSWORD}" \
    --param_api="${CLICKHOUSE_API_PASSWORD}" --param_worker="${CLICKHOUSE_WORKER_PASSWORD}" \
    --param_grafana="${CLICKHOUSE_GRAFANA_PASSWORD}" --multiquery --query "$1"
}

run "
CREATE DATABASE IF NOT EXISTS \`${DB}\`;
CREATE SETTINGS PROFILE IF NOT EXISTS metergate_readonly SETTINGS readonly = 2;

CREATE USER IF NOT EXISTS metergate_api;
ALTER USER metergate_api IDENTIFIED WITH sha256_password BY {api:String};
GRANT SELECT, INSERT, ALTER DELETE, CREATE VIEW, DROP VIEW, DROP TABLE ON \`${DB}\`.* TO metergate_api;

CREATE USER IF NOT EXISTS metergate_worker;
ALTER USER metergate_worker IDENTIFIED WITH sha256_password BY {worker:String};
GRANT SELECT, INSERT ON \`${DB}\`.* TO metergate_worker;

CREATE USER IF NOT EXISTS metergate_grafana;
ALTER USER metergate_grafana IDENTIFIED WITH sha256_password BY {grafana:String} SETTINGS PROFILE metergate_readonly;
GRANT SELECT ON \`${DB}\`.* TO metergate_grafana;
"
echo "metergate accounts ready: metergate_api, metergate_worker, metergate_grafana (database ${DB})"

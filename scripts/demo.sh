#!/usr/bin/env bash
# Runs the main job end to end on the embedded defaults: PostgreSQL -> local files ->
# DuckDB. If DEMO_DB_HOST is not set, it brings up a throwaway PostgreSQL (system
# initdb/postgres, temp dir, free port) with the demo data, and removes it afterwards.
# Output lands in ./pgp-data/ (objects and warehouse.duckdb).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/pgp-target}"

cargo build --release -p pgp-cli
PGP="$CARGO_TARGET_DIR/release/pgp"

if [ -z "${DEMO_DB_HOST:-}" ]; then
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  . scripts/throwaway-pg.sh
  psql -q "$PG_URL_BASE/postgres" -c "CREATE DATABASE demo"
  psql -q "$PG_URL_BASE/demo" -f manifests/demo.sql
  export DEMO_DB_HOST=127.0.0.1 DEMO_DB_PORT=$PG_PORT DEMO_DB_USER=postgres DEMO_DB_NAME=demo DEMO_DB_PASS=unused
  PORT=$PG_PORT
  echo "throwaway PostgreSQL on port $PORT with the demo data"
fi
export EXCLUDED_PROJECT_IDS="${EXCLUDED_PROJECT_IDS:-(0)}"

set -x
"$PGP" plan manifests/demo.yaml --load-type backfill
"$PGP" tap manifests/demo.yaml --load-type scd
"$PGP" tap manifests/demo.yaml --load-type backfill --chunk-rows 5000
"$PGP" tap manifests/demo.yaml --load-type incremental --execution-date 2024-01-02T00:00:00Z --hours 12

# What was loaded, and how to look at it.
"$PGP" runs
"$PGP" sql "SELECT count(*) AS projects, count(DISTINCT _uploaded_at) AS snapshots, max(_uploaded_at) AS last_loaded FROM demo.projects"
set +x
echo
echo "Query what was loaded with: $PGP sql \"SELECT * FROM demo.projects LIMIT 5\""
echo "(or any DuckDB client on pgp-data/warehouse.duckdb)."

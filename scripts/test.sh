#!/usr/bin/env bash
# The test command (README "Run the tests"): every unit, conformance and end-to-end
# test. The end-to-end tests start their own PostgreSQL from the system's server
# binaries (apt-get install postgresql), and the cloud tests their own Pub/Sub and GCS
# emulators (see .ci/run for installing them), so nothing needs to be running beforehand.
# The cloud tests run the service binaries, which `cargo test` builds for their own
# integration tests (functions/*/tests).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  CARGO_TARGET_DIR=/var/cache/pgp-target
  mkdir -p "$CARGO_TARGET_DIR" 2>/dev/null && [ -w "$CARGO_TARGET_DIR" ] || CARGO_TARGET_DIR="$HOME/.cache/pgp-target"
fi
export CARGO_TARGET_DIR

cargo test --workspace --locked -- --test-threads 4

# The Airflow DAG's hand-back logic (plain Python), then the DAG itself in Airflow's
# DagBag, and the IaC scan. .ci/run installs Airflow and checkov into virtualenvs and
# points PGP_AIRFLOW_PYTHON / PGP_CHECKOV at them; without them those two checks say
# they were skipped (set PGP_REQUIRE_ALL=1 to make that an error).
echo "== Airflow DAG hand-back logic (unittest)"
(cd infra/airflow && python3 -m unittest -q test_pgp_handback)
skipped() {
  if [ "${PGP_REQUIRE_ALL:-}" = 1 ]; then echo "error: $1 is not installed" >&2; exit 1; fi
  echo "== $1 is not installed here: skipped (.ci/run installs it)"
}
if [ -n "${PGP_AIRFLOW_PYTHON:-}" ] && [ -x "$PGP_AIRFLOW_PYTHON" ]; then
  echo "== Airflow DagBag (infra/airflow)"
  out=$("$PGP_AIRFLOW_PYTHON" scripts/check-airflow-dag.py 2>&1) || { echo "$out"; exit 1; }
  echo "$out" | grep -v -E '\[(info|warning|debug) ' || true
else
  skipped "apache-airflow"
fi
if [ -n "${PGP_CHECKOV:-}" ] && [ -x "$PGP_CHECKOV" ]; then
  echo "== checkov (infra/terraform; skipped checks are justified inline)"
  "$PGP_CHECKOV" -d infra/terraform --framework terraform --compact --quiet --skip-download
else
  skipped "checkov"
fi

#!/usr/bin/env bash
# The load protocol at scale (issue: "planning plus publishing 10,000 chunk tasks is
# measured in a benchmark"): plans a 10,000-chunk backfill against a real PostgreSQL,
# the GCS emulator, DuckDB and the Pub/Sub emulator, publishing every chunk task, and
# compares it with publishing the same 10,000 messages alone in the same run; then
# counts, in the simulation, the run state read and the warehouse statements issued
# per loader event at the first and the last-but-one of 10,000 chunks and at 10.
# Prints one JSON line. PGP_BENCH_CHUNKS overrides the size. Uses the test build
# (no release build of DuckDB needed); times are of an unoptimized build.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/pgp-target}"
cargo test -q --locked -p pgp-e2e --test e2e -- --ignored --nocapture bench_plan_and_publish 2>&1 \
  | grep '^{'

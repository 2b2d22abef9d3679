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

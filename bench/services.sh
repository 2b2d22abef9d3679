#!/usr/bin/env bash
# The Cloud Run flow timed end to end on this machine (issue: "end-to-end seconds for
# the 2M-row benchmark table through the services with 1, 4 and 16 chunks, against
# `pgp tap` on the same table").
#
# Starts a throwaway PostgreSQL with bench/extract.sh's 2,000,000-row table, the
# Pub/Sub emulator, the GCS emulator (scripts/gcs-emulator.py) and the three release
# binaries; for CHUNKS in 1 4 16 publishes one backfill request and times until the
# swap is visible in DuckDB (a small Python feeder produces the finalize events, as
# the e2e tests do). Reference in the same run: `pgp tap --load-type backfill` to a
# local folder and DuckDB. ROWS overrides the size.
set -euo pipefail
shopt -s inherit_errexit  # a failed check inside $(run_services) stops the bench
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/pgp-target}"
ROWS=${ROWS:-2000000}
cargo build --release -q -p pgp-cli -p pgp-planner -p pgp-extractor -p pgp-loader
BIN="$CARGO_TARGET_DIR/release"
EMU=/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator

PG_EXTRA_OPTS="-c shared_buffers=1GB"
. scripts/throwaway-pg.sh
WORK=$(mktemp -d /tmp/pgp-sbench-XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  "${PG_AS[@]}" "$PG_BIN_DIR/pg_ctl" -D "$PG_TMP/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$PG_TMP" "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

psql -q "$PG_URL_BASE/postgres" -c "CREATE DATABASE bench"
DB="$PG_URL_BASE/bench"
. bench/table.sh
mkdir -p "$WORK/manifests"
bench_table "$WORK/manifests/bench.yaml"

now() { python3 -c 'import time; print(time.monotonic())'; }

# Reference: pgp tap, same table, same machine, same run.
t0=$(now)
PGP_STORAGE_URL="file://$WORK/tap-objects" PGP_WAREHOUSE_URL="duckdb://$WORK/tap.duckdb" \
  "$BIN/pgp" tap "$WORK/manifests/bench.yaml" --load-type backfill --chunk-rows $((ROWS / 4)) >/dev/null
TAP=$(python3 -c "print(f'{$(now) - $t0:.2f}')")
echo "pgp tap --load-type backfill (4 chunks, --parallel 2): $TAP s"

PS_PORT=$(free_port); GCS_PORT=$(free_port)
"$EMU" --host=127.0.0.1 --port="$PS_PORT" >"$WORK/pubsub.log" 2>&1 & PIDS+=($!)
mkdir -p "$WORK/gcs"
python3 scripts/gcs-emulator.py -d "$WORK/gcs" start --host 127.0.0.1 --port "$GCS_PORT" \
  --default-bucket postgres_pipeline >"$WORK/gcs.log" 2>&1 & PIDS+=($!)
for _ in $(seq 200); do grep -q "Server started" "$WORK/pubsub.log" && break; sleep 0.1; done
PS="http://127.0.0.1:$PS_PORT/v1/projects/bench"

run_services() { # CHUNKS
  local chunks=$1 pp ep lp
  pp=$(free_port); ep=$(free_port); lp=$(free_port)
  local env=(PGP_STORAGE_URL=gs://postgres_pipeline PGP_GCS_ENDPOINT=http://127.0.0.1:$GCS_PORT
    PGP_WAREHOUSE_URL=duckdb://$WORK/svc-$chunks.duckdb PGP_PUBSUB_PROJECT=bench
    PGP_PUBSUB_ENDPOINT=http://127.0.0.1:$PS_PORT PGP_EXTRACT_TOPIC=extract-$chunks
    PGP_MANIFEST_DIR=$WORK/manifests PGP_WAREHOUSE_WAIT=600 PGP_LOG=warn)
  env "${env[@]}" PORT=$pp "$BIN/planner" >"$WORK/planner-$chunks.log" 2>&1 & PIDS+=($!)
  env "${env[@]}" PORT=$ep "$BIN/extractor" >"$WORK/extractor-$chunks.log" 2>&1 & PIDS+=($!)
  env "${env[@]}" PORT=$lp "$BIN/loader" >"$WORK/loader-$chunks.log" 2>&1 & PIDS+=($!)
  sleep 1
  for t in requests-$chunks extract-$chunks; do curl -sf -X PUT "$PS/topics/$t" >/dev/null; done
  curl -sf -X PUT "$PS/subscriptions/plan-$chunks" -H 'content-type: application/json' \
    -d "{\"topic\":\"projects/bench/topics/requests-$chunks\",\"pushConfig\":{\"pushEndpoint\":\"http://127.0.0.1:$pp/\"},\"ackDeadlineSeconds\":600}" >/dev/null
  curl -sf -X PUT "$PS/subscriptions/extract-$chunks" -H 'content-type: application/json' \
    -d "{\"topic\":\"projects/bench/topics/extract-$chunks\",\"pushConfig\":{\"pushEndpoint\":\"http://127.0.0.1:$ep/\"},\"ackDeadlineSeconds\":600}" >/dev/null
  local req data
  req="{\"manifest\":\"bench.yaml\",\"load_type\":\"backfill\",\"run_id\":\"bench-$chunks\",\"chunk_rows\":$(( (ROWS + chunks - 1) / chunks ))}"
  data=$(printf '%s' "$req" | base64 -w0)
  local start; start=$(now)
  curl -sf -X POST "$PS/topics/requests-$chunks:publish" -H 'content-type: application/json' \
    -d "{\"messages\":[{\"data\":\"$data\"}]}" >/dev/null
  # The finalize feeder: CloudEvents for each new chunk object, until the swap is visible.
  python3 - "$GCS_PORT" "$lp" "$WORK/svc-$chunks.duckdb" "$ROWS" "bench/bench/bench_$chunks/" <<'PY'
import json, sys, time, urllib.request
gcs, loader, duck, rows, prefix = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
seen = set()
def post(o):
    req = urllib.request.Request(f"http://127.0.0.1:{loader}/", data=json.dumps(o).encode(), method="POST",
        headers={"ce-specversion": "1.0", "ce-id": o["name"] + o["generation"], "ce-type": "google.cloud.storage.object.v1.finalized",
                 "ce-source": "//storage.googleapis.com/projects/_/buckets/postgres_pipeline", "content-type": "application/json"})
    for _ in range(600):
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return json.loads(r.read())
        except Exception:
            time.sleep(0.5)
deadline = time.monotonic() + 3600
while time.monotonic() < deadline:
    with urllib.request.urlopen(f"http://127.0.0.1:{gcs}/storage/v1/b/postgres_pipeline/o?prefix={prefix}") as r:
        items = json.loads(r.read()).get("items", [])
    for o in items:
        if o["name"] not in seen:
            seen.add(o["name"])
            if (post(o) or {}).get("status") == "published":
                sys.exit(0)
    time.sleep(0.1)
sys.exit("timed out")
PY
  local took; took=$(python3 -c "print(f'{$(now) - $start:.2f}')")
  # The swap is in: the table must hold every row once (duckdb is a fakesnow dependency).
  python3 - "$WORK/svc-$chunks.duckdb" "$ROWS" <<'PY' >&2
import sys, duckdb
got = duckdb.connect(sys.argv[1], read_only=True).execute("SELECT count(*), count(DISTINCT id) FROM bench.bench").fetchone()
if got != (int(sys.argv[2]), int(sys.argv[2])):
    sys.exit(f"bench.bench holds {got}, expected {sys.argv[2]} distinct rows")
PY
  echo "$took"
}

echo "| chunks | services s | vs pgp tap |"
echo "|---|---|---|"
for c in 1 4 16; do
  s=$(run_services "$c")
  echo "| $c | $s | $(python3 -c "print(f'{$s / $TAP:.2f}x')") |"
done
echo "(pgp tap reference: $TAP s; one machine, 2 cores: planner, extractor, loader, both emulators and PostgreSQL share them)"

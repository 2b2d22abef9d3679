#!/usr/bin/env bash
# Peers benchmark (issue: "embedded run at the speed of the source"). On the bench
# table (bench/table.sh: 2,000,000 rows, 13 columns: text, numeric, timestamptz, jsonb,
# arrays, uuid) in one throwaway PostgreSQL, in one run, median of REPS runs each:
#   psql \copy (SELECT * FROM bench) TO file   -- the reference
#   pgp extract --load-type scd                -- to local staged objects
#   pgp tap --load-type scd                    -- end to end into a fresh DuckDB file
#   the same with compress_strings=false       -- DuckDB stores text uncompressed
#   dlt sql_database (pyarrow backend) into a fresh DuckDB file -- the peer users
#       would pick instead (pip: dlt, duckdb, sqlalchemy, psycopg2-binary, pyarrow,
#       installed into a venv at $PEERS_VENV on first use)
# Reports seconds, the ratio to psql \copy, rows/s and peak RSS of each.
# ROWS, REPS, PGP_BIN, PEERS_VENV override.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-2000000}
REPS=${REPS:-3}
PEERS_VENV=${PEERS_VENV:-/var/cache/pgp-peers-venv}
if [ ! -x "$PEERS_VENV/bin/python" ] || ! "$PEERS_VENV/bin/python" -c 'import dlt, duckdb, sqlalchemy, psycopg2, pyarrow' 2>/dev/null; then
  echo "installing dlt into $PEERS_VENV..."
  python3 -m venv "$PEERS_VENV"
  "$PEERS_VENV/bin/pip" install -q "dlt[duckdb]" sqlalchemy psycopg2-binary pyarrow
fi
. bench/lib.sh
. bench/table.sh
bench_table "$WORK/bench.yaml"

cat > "$WORK/dlt_load.py" <<'PY'
import sys
import dlt
from dlt.sources.sql_database import sql_table

url, duck, pipelines = sys.argv[1:4]
table = sql_table(credentials=url, table="bench", backend="pyarrow")
pipeline = dlt.pipeline(
    pipeline_name="bench",
    destination=dlt.destinations.duckdb(duck),
    dataset_name="bench",
    pipelines_dir=pipelines,
)
info = pipeline.run(table, write_disposition="replace")
info.raise_on_failed_jobs()
PY

run_psql() { time_cmd psql -q "$DB" -c "\\copy (SELECT * FROM bench) TO '$WORK/psql.tsv'"; }
run_extract() {
  rm -rf "$WORK/objects" "$WORK/wh.duckdb"
  PGP_STORAGE_URL="file://$WORK/objects" PGP_WAREHOUSE_URL="duckdb://$WORK/wh.duckdb" \
    time_cmd "$PGP" extract "$WORK/bench.yaml" --load-type scd --run-id bench
}
run_tap() {
  rm -rf "$WORK/objects" "$WORK/wh.duckdb"
  PGP_STORAGE_URL="file://$WORK/objects" PGP_WAREHOUSE_URL="duckdb://$WORK/wh.duckdb" \
    time_cmd "$PGP" tap "$WORK/bench.yaml" --load-type scd
}
run_tapfast() {
  rm -rf "$WORK/objects" "$WORK/wh-fast.duckdb"
  PGP_STORAGE_URL="file://$WORK/objects" PGP_WAREHOUSE_URL="duckdb://$WORK/wh-fast.duckdb?compress_strings=false" \
    time_cmd "$PGP" tap "$WORK/bench.yaml" --load-type scd
}
run_dlt() { # dlt logs warnings about the json columns on every run
  export RUNTIME__LOG_LEVEL=ERROR
  rm -rf "$WORK/dlt" "$WORK/dlt.duckdb"
  time_cmd "$PEERS_VENV/bin/python" "$WORK/dlt_load.py" \
    "postgresql+psycopg2://postgres@127.0.0.1:$PG_PORT/bench" "$WORK/dlt.duckdb" "$WORK/dlt"
}

run_psql >/dev/null # warm the cache
declare -A T M
for what in psql extract tap tapfast dlt; do T[$what]=""; M[$what]=0; done
for i in $(seq "$REPS"); do
  for what in psql extract tap tapfast dlt; do
    read -r t m < <("run_$what")
    T[$what]+="$t "
    [ "$m" -gt "${M[$what]}" ] && M[$what]=$m
  done
done
# Every loader must have loaded every row.
tap_rows=$(PGP_WAREHOUSE_URL="duckdb://$WORK/wh.duckdb" "$PGP" sql "SELECT count(*) FROM bench.bench" | tail -1)
dlt_rows=$("$PEERS_VENV/bin/python" -c 'import duckdb,sys; print(duckdb.connect(sys.argv[1], read_only=True).sql("SELECT count(*) FROM bench.bench").fetchall()[0][0])' "$WORK/dlt.duckdb")
fast_rows=$(PGP_WAREHOUSE_URL="duckdb://$WORK/wh-fast.duckdb" "$PGP" sql "SELECT count(*) FROM bench.bench" | tail -1)
mb() { du -m "$1" | cut -f1; }
sizes="$(mb "$WORK/wh.duckdb") $(mb "$WORK/wh-fast.duckdb") $(mb "$WORK/dlt.duckdb")"
args=()
for what in psql extract tap tapfast dlt; do
  args+=("$what" "$(printf '%s\n' ${T[$what]} | median)" "${M[$what]}")
done
python3 - "$ROWS" "$REPS" "$tap_rows" "$fast_rows" "$dlt_rows" "$sizes" "${args[@]}" <<'PY'
import sys
rows, reps = int(sys.argv[1]), sys.argv[2]
tap_rows, fast_rows, dlt_rows = (x.strip() for x in sys.argv[3:6])
size = dict(zip(["tap", "tapfast", "dlt"], sys.argv[6].split()))
a = sys.argv[7:]
res = [(a[i], float(a[i + 1]), int(a[i + 2])) for i in range(0, len(a), 3)]
ref = res[0][1]
label = {
    "psql": "psql \\copy (reference)",
    "extract": "pgp extract (staged objects)",
    "tap": "pgp tap scd into DuckDB",
    "tapfast": "pgp tap, compress_strings=false",
    "dlt": "dlt sql_database (pyarrow) into DuckDB",
}
print(f"{rows:,} rows, 13 columns; median of {reps} runs; rows loaded: pgp tap {tap_rows}, "
      f"compress_strings=false {fast_rows}, dlt {dlt_rows}")
print(f"{'':<40} {'seconds':>8} {'vs psql':>8} {'k rows/s':>9} {'peak RSS':>9} {'DuckDB file':>11}")
for what, t, m in res:
    f = f"{size[what]:>8} MB" if what in size else ""
    print(f"{label[what]:<40} {t:8.2f} {t / ref:7.2f}x {rows / t / 1e3:9.0f} {m / 1024:7.0f} MB {f:>11}")
PY

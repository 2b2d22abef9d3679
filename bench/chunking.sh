#!/usr/bin/env bash
# Chunking benchmark (issue: "chunk any table"). The bench table (bench/table.sh,
# 2,000,000 rows, 13 columns) as four tables, in one throwaway PostgreSQL:
#   bench        keyed by its bigint primary key `id`          -- the reference
#   bench_uuid   the same rows, primary key on the uuid `uid`
#   bench_nokey  the same rows, no primary key and no index, chunked by `id`
#   bench_ctid   bench_nokey again, its manifest key unusable (a column the query does
#                not select): chunked by row location (ctid ranges, TID range scans)
# each re-synced with `pgp tap --load-type backfill --chunk-rows $CHUNK` into a fresh
# DuckDB (median of REPS runs), with `pgp plan` (the key splits alone) timed apart.
# Reports seconds, ranges and ratios against the integer-keyed run, and psql \copy of
# the table as the floor. ROWS, REPS, CHUNK and PGP_BIN override.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-2000000}
REPS=${REPS:-3}
CHUNK=${CHUNK:-250000}
. bench/lib.sh
. bench/table.sh
bench_table "$WORK/bench.yaml"
psql -q "$DB" <<SQL
CREATE TABLE bench_uuid AS SELECT * FROM bench;
ALTER TABLE bench_uuid ADD PRIMARY KEY (uid);
CREATE TABLE bench_nokey AS SELECT * FROM bench;
VACUUM ANALYZE bench_uuid;
VACUUM ANALYZE bench_nokey;
SQL
for v in "bench_uuid uid bench_uuid" "bench_nokey id bench_nokey" "bench_ctid no_such_column bench_nokey"; do
  set -- $v
  sed -e "s/^  bench:/  $1:/" -e "s/export_table: bench/export_table: $1/" \
      -e "s/export_table_primary_key: id/export_table_primary_key: $2/" \
      -e "s/FROM bench/FROM $3/" "$WORK/bench.yaml" > "$WORK/$1.yaml"
done


run_tap() { # manifest
  rm -rf "$WORK/objects" "$WORK/wh.duckdb"
  PGP_STORAGE_URL="file://$WORK/objects" PGP_WAREHOUSE_URL="duckdb://$WORK/wh.duckdb" \
    time_cmd "$PGP" tap "$1" --load-type backfill --chunk-rows "$CHUNK"
}
run_plan() { # manifest
  rm -rf "$WORK/wh.duckdb"
  PGP_WAREHOUSE_URL="duckdb://$WORK/wh.duckdb" \
    time_cmd "$PGP" plan "$1" --load-type backfill --chunk-rows "$CHUNK"
}
ranges() { # manifest
  rm -rf "$WORK/wh.duckdb"
  PGP_WAREHOUSE_URL="duckdb://$WORK/wh.duckdb" "$PGP" plan "$1" --load-type backfill \
    --chunk-rows "$CHUNK" --format json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)[0]["chunks"]))'
}
chunking() { # manifest: how the plan cut the table
  rm -rf "$WORK/wh.duckdb"
  PGP_WAREHOUSE_URL="duckdb://$WORK/wh.duckdb" "$PGP" plan "$1" --load-type backfill \
    --chunk-rows "$CHUNK" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0].get("chunking", "-"))'
}

psql -q "$DB" -c "\\copy (SELECT * FROM bench) TO '$WORK/psql.tsv'" # warm the cache
results=()
for t in bench bench_uuid bench_nokey bench_ctid; do
  m="$WORK/$t.yaml"; [ "$t" = bench ] && m="$WORK/bench.yaml"
  tap_t=(); plan_t=()
  for i in $(seq "$REPS"); do
    read -r s _ < <(run_tap "$m"); tap_t+=("$s")
    read -r s _ < <(run_plan "$m"); plan_t+=("$s")
  done
  results+=("$t $(printf '%s\n' "${tap_t[@]}" | median) $(printf '%s\n' "${plan_t[@]}" | median) $(ranges "$m")")
  echo "$t: $(chunking "$m")"
done
psql_t=()
for i in $(seq "$REPS"); do
  read -r s _ < <(time_cmd psql -q "$DB" -c "\\copy (SELECT * FROM bench) TO '$WORK/psql.tsv'"); psql_t+=("$s")
done
P=$(printf '%s\n' "${psql_t[@]}" | median)
python3 - "$ROWS" "$REPS" "$CHUNK" "$P" "${results[@]}" <<'PY'
import sys
rows, reps, chunk, p = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
res = [r.split() for r in sys.argv[5:]]
ref = float(res[0][1])
print(f"{rows:,} rows, --chunk-rows {chunk:,}; median of {reps} runs; psql \\copy of the table {p:.2f} s")
print(f"{'table':<12} {'key':<28} {'ranges':>6} {'plan s':>7} {'tap s':>7} {'vs int key':>10} {'vs psql':>8}")
keys = {"bench": "id bigint (primary key)", "bench_uuid": "uid uuid (primary key)",
        "bench_nokey": "id, no index", "bench_ctid": "none usable: row locations"}
for t, tap, plan, n in res:
    tap, plan = float(tap), float(plan)
    print(f"{t:<12} {keys[t]:<28} {n:>6} {plan:7.2f} {tap:7.2f} {tap/ref:9.2f}x {tap/p:7.2f}x")
PY

#!/usr/bin/env bash
# Extraction benchmark (issue: "pgp within 1.25x of psql \copy, peak memory < 100 MB").
# Builds a 2,000,000-row, 13-column table (text, numeric, timestamptz, jsonb, arrays,
# uuid) in a throwaway PostgreSQL, then in one run times, median of REPS runs each:
#   psql \copy (SELECT * FROM bench) TO file          -- the reference
#   pgp extract --compression none                     -- pgp to local storage
#   pgp extract --compression gzip
#   pgp tap --load-type scd                            -- end to end into DuckDB (once)
# and reports ratios against the reference and pgp's peak RSS. ROWS and REPS override.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-2000000}
REPS=${REPS:-3}
. bench/lib.sh
. bench/table.sh
bench_table "$WORK/bench.yaml"


run_psql() { time_cmd psql -q "$DB" -c "\\copy (SELECT * FROM bench) TO '$WORK/psql.tsv'"; }
# The same statement pgp sends (CSV, arrays as JSON): isolates pgp's own overhead.
# psql's \copy takes one line; the bench query has no comments, so newlines can go.
PGP_WAREHOUSE_URL="duckdb://$WORK/none.duckdb" "$PGP" plan "$WORK/bench.yaml" --load-type scd --format json \
  | python3 -c '
import json, sys
sql = json.load(sys.stdin)[0]["copy_sql"].replace("\n", " ")
query, opts = sql[len("COPY "):].split(" TO STDOUT ", 1)
open(sys.argv[1], "w").write(query)
open(sys.argv[2], "w").write(opts)' "$WORK/copy_query" "$WORK/copy_opts"
COPY_SQL=$(cat "$WORK/copy_query"); COPY_OPTS=$(cat "$WORK/copy_opts")
run_psql_same() { time_cmd psql -q "$DB" -c "\\copy $COPY_SQL TO '$WORK/same.tsv' $COPY_OPTS"; }
run_pgp() { # compression
  rm -rf "$WORK/objects" "$WORK/wh.duckdb"
  PGP_STORAGE_URL="file://$WORK/objects" PGP_WAREHOUSE_URL="duckdb://$WORK/wh.duckdb" \
    time_cmd "$PGP" extract "$WORK/bench.yaml" --load-type scd --compression "$1" --run-id bench
}

run_psql >/dev/null # warm the cache
psql_t=(); same_t=(); none_t=(); none_m=(); gz_t=(); gz_m=()
for i in $(seq "$REPS"); do
  read -r t m < <(run_psql); psql_t+=("$t")
  read -r t m < <(run_psql_same); same_t+=("$t")
  read -r t m < <(run_pgp none); none_t+=("$t"); none_m+=("$m")
  read -r t m < <(run_pgp gzip); gz_t+=("$t"); gz_m+=("$m")
done
text_bytes=$(stat -c %s "$WORK/psql.tsv")
pgp_none_bytes=$(du -sb "$WORK/objects" 2>/dev/null | cut -f1 || echo 0)
run_pgp gzip >/dev/null
gz_bytes=$(find "$WORK/objects" -name '*.gz' -printf '%s\n' | awk '{s+=$1} END {print s}')
rm -rf "$WORK/objects" "$WORK/wh.duckdb"
read -r tap_t tap_m < <(PGP_STORAGE_URL="file://$WORK/objects" PGP_WAREHOUSE_URL="duckdb://$WORK/wh.duckdb" \
  time_cmd "$PGP" tap "$WORK/bench.yaml" --load-type scd)

P=$(printf '%s\n' "${psql_t[@]}" | median)
S=$(printf '%s\n' "${same_t[@]}" | median)
N=$(printf '%s\n' "${none_t[@]}" | median)
G=$(printf '%s\n' "${gz_t[@]}" | median)
NM=$(printf '%s\n' "${none_m[@]}" | sort -n | tail -1)
GM=$(printf '%s\n' "${gz_m[@]}" | sort -n | tail -1)
python3 - "$ROWS" "$REPS" "$text_bytes" "$gz_bytes" "$P" "$N" "$G" "$NM" "$GM" "$tap_t" "$tap_m" "$S" <<'PY'
import sys
rows, reps, text, gz, p, n, g, nm, gm, tap, tapm, same = sys.argv[1:]
rows, reps, text, gz = int(rows), int(reps), int(text), int(gz)
p, n, g, tap, same = float(p), float(n), float(g), float(tap), float(same)
print(f"table: {rows:,} rows, {text/1e6:.0f} MB as psql text; gzip objects {gz/1e6:.0f} MB ({text/gz:.1f}x)")
print(f"median of {reps} runs each:")
print(f"  psql \\copy (reference)     {p:7.2f} s  {rows/p/1e3:7.0f} k rows/s")
print(f"  psql \\copy of pgp's COPY    {same:7.2f} s  {rows/same/1e3:7.0f} k rows/s  ratio {same/p:.2f}x  (CSV, arrays as JSON)")
print(f"  pgp extract, gzip off      {n:7.2f} s  {rows/n/1e3:7.0f} k rows/s  ratio {n/p:.2f}x  ({n/same:.2f}x of the same COPY)  peak RSS {int(nm)/1024:.0f} MB")
print(f"  pgp extract, gzip on       {g:7.2f} s  {rows/g/1e3:7.0f} k rows/s  ratio {g/p:.2f}x  peak RSS {int(gm)/1024:.0f} MB")
print(f"  pgp tap scd (into DuckDB)  {tap:7.2f} s  {rows/tap/1e3:7.0f} k rows/s  ratio {tap/p:.2f}x  peak RSS {int(tapm)/1024:.0f} MB")
PY

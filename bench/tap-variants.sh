#!/usr/bin/env bash
# Embedded-load variants (issue: "embedded run at the speed of the source"): on the
# bench table (bench/table.sh), in one run, median of REPS runs each, `pgp tap
# --load-type scd` into a fresh DuckDB file with the staging compression and DuckDB's
# memory_limit and threads varied, against psql \copy of the table. What chose the
# defaults. ROWS, REPS, PGP_BIN override.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-2000000}
REPS=${REPS:-3}
. bench/lib.sh
. bench/table.sh
bench_table "$WORK/bench.yaml"

run_psql() { time_cmd psql -q "$DB" -c "\\copy (SELECT * FROM bench) TO '$WORK/psql.tsv'"; }
run_tap() { # compression, duckdb url query
  rm -rf "$WORK/objects" "$WORK/wh.duckdb"
  PGP_STORAGE_URL="file://$WORK/objects" PGP_WAREHOUSE_URL="duckdb://$WORK/wh.duckdb?$2" \
    time_cmd "$PGP" tap "$WORK/bench.yaml" --load-type scd --compression "$1"
}
run_psql >/dev/null
variants=("gzip memory_limit=128MB" "none memory_limit=128MB" "gzip memory_limit=1GB" \
  "none memory_limit=1GB" "gzip memory_limit=128MB&threads=1" "none memory_limit=64MB")
psql_t=()
declare -A T M
for i in $(seq "$REPS"); do
  read -r t _ < <(run_psql); psql_t+=("$t")
  for v in "${variants[@]}"; do
    set -- $v
    read -r t m < <(run_tap "$1" "$2")
    T[$v]+="$t "; [ "$m" -gt "${M[$v]:-0}" ] && M[$v]=$m
  done
done
P=$(printf '%s\n' "${psql_t[@]}" | median)
echo "$ROWS rows; median of $REPS; psql \\copy $P s"
for v in "${variants[@]}"; do
  t=$(printf '%s\n' ${T[$v]} | median)
  python3 -c "import sys; v,t,p,m=sys.argv[1],float(sys.argv[2]),float(sys.argv[3]),int(sys.argv[4]); print(f'tap --compression {v.split()[0]:<5} {v.split()[1]:<28} {t:7.2f} s  {t/p:5.2f}x psql  peak RSS {m/1024:5.0f} MB')" "$v" "$t" "$P" "${M[$v]}"
done

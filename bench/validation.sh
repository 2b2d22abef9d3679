#!/usr/bin/env bash
# Validation benchmark (issue: "validation before visibility beyond row counts"): what
# the extractor's per-chunk profile costs. On the bench table (bench/table.sh:
# 2,000,000 rows, 13 columns) in one throwaway PostgreSQL, in one run, median of REPS
# runs each:
#   psql \copy (SELECT * FROM bench) TO file             -- the reference
#   pgp extract (gzip), profiling every record            -- as shipped
#   pgp extract (gzip), PGP_BENCH_NO_PROFILE=1            -- without the profile
#   pgp extract --compression none, with and without      -- where the profile has no
#                                                            gzip thread to hide behind
# Reports seconds, ratios to psql \copy and the profile's overhead. ROWS, REPS, PGP_BIN
# override.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-2000000}
REPS=${REPS:-5}
. bench/lib.sh
. bench/table.sh
bench_table "$WORK/bench.yaml"

run_psql() { time_cmd psql -q "$DB" -c "\\copy (SELECT * FROM bench) TO '$WORK/psql.tsv'"; }
run_pgp() { # compression, PGP_BENCH_NO_PROFILE
  rm -rf "$WORK/objects"
  PGP_BENCH_NO_PROFILE=$2 PGP_STORAGE_URL="file://$WORK/objects" \
    PGP_WAREHOUSE_URL="duckdb://$WORK/wh.duckdb" \
    time_cmd "$PGP" extract "$WORK/bench.yaml" --load-type scd --compression "$1" --run-id bench
}
run_psql >/dev/null # warm the cache
declare -A T
for what in psql gz_on gz_off none_on none_off; do T[$what]=""; done
for i in $(seq "$REPS"); do
  read -r t _ < <(run_psql); T[psql]+="$t "
  read -r t _ < <(run_pgp gzip 0); T[gz_on]+="$t "
  read -r t _ < <(run_pgp gzip 1); T[gz_off]+="$t "
  read -r t _ < <(run_pgp none 0); T[none_on]+="$t "
  read -r t _ < <(run_pgp none 1); T[none_off]+="$t "
done
# The profile is in the objects' metadata when on.
run_pgp gzip 0 >/dev/null
grep -rqs '"profile"' "$WORK/objects" || { echo "no profile in the objects' metadata" >&2; exit 1; }
args=()
for what in psql gz_on gz_off none_on none_off; do
  args+=("$what" "$(printf '%s\n' ${T[$what]} | median)")
done
python3 - "$ROWS" "$REPS" "${args[@]}" <<'PY'
import sys
rows, reps = int(sys.argv[1]), sys.argv[2]
a = sys.argv[3:]
t = {a[i]: float(a[i + 1]) for i in range(0, len(a), 2)}
ref = t["psql"]
print(f"{rows:,} rows, 13 columns; median of {reps} runs")
print(f"{'':<34} {'seconds':>8} {'vs psql':>8}")
for what, label in [("psql", "psql \\copy (reference)"),
                    ("gz_on", "pgp extract gzip, profiled"),
                    ("gz_off", "pgp extract gzip, no profile"),
                    ("none_on", "pgp extract none, profiled"),
                    ("none_off", "pgp extract none, no profile")]:
    print(f"{label:<34} {t[what]:8.2f} {t[what] / ref:7.2f}x")
for c in ["gz", "none"]:
    print(f"profile overhead ({c}): {100 * (t[c + '_on'] / t[c + '_off'] - 1):+.1f} %")
PY

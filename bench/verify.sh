#!/usr/bin/env bash
# `pgp verify` benchmark (issue: "validation before visibility … and pgp verify"): what
# comparing a published target with its source costs, against reading the table once.
# On the bench table (bench/table.sh: 2,000,000 rows, 13 columns) in one throwaway
# PostgreSQL, loaded once by `pgp tap --load-type scd` into DuckDB; in one run, median
# of REPS runs each:
#   psql \copy (SELECT * FROM bench) TO file    -- the reference (one read of the table)
#   pgp verify, target equal to the source      -- exit 0
#   pgp verify, after a deleted, an inserted and an updated row at the source -- exit
#     1, and the JSON must name exactly those keys
# Reports seconds, ratios to psql \copy, statements per side and peak RSS. ROWS, REPS,
# PGP_BIN override.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-2000000}
REPS=${REPS:-5}
. bench/lib.sh
. bench/table.sh
bench_table "$WORK/bench.yaml"
export PGP_STORAGE_URL="file://$WORK/objects" PGP_WAREHOUSE_URL="duckdb://$WORK/wh.duckdb"
echo "loading the target..."
"$PGP" tap "$WORK/bench.yaml" --load-type scd --run-id bench >/dev/null

run_psql() { time_cmd psql -q "$DB" -c "\\copy (SELECT * FROM bench) TO '$WORK/psql.tsv'"; }
# run_verify EXPECTED_EXIT: time of `pgp verify`, its JSON kept in $WORK/verify.json.
run_verify() {
  time_cmd bash -c '"$0" verify "$1" --format json > "$2"; test $? = "$3"' \
    "$PGP" "$WORK/bench.yaml" "$WORK/verify.json" "$1"
}
run_psql >/dev/null # warm the cache
declare -A T M
for what in psql equal differs; do T[$what]=""; M[$what]=0; done
record() { # what, "seconds rss"
  local t m
  read -r t m <<<"$2"
  T[$1]+="$t "
  [ "$m" -gt "${M[$1]}" ] && M[$1]=$m
  return 0
}
for i in $(seq "$REPS"); do
  record psql "$(run_psql)"
  record equal "$(run_verify 0)"
done
cp "$WORK/verify.json" "$WORK/equal.json"
psql -q "$DB" -c "DELETE FROM bench WHERE id = 500000;
  INSERT INTO bench (id, name) VALUES ($ROWS + 7, 'new');
  UPDATE bench SET note = 'changed' WHERE id = 1500000;"
for i in $(seq "$REPS"); do
  record differs "$(run_verify 1)"
done
args=()
for what in psql equal differs; do
  args+=("$what" "$(printf '%s\n' ${T[$what]} | median)" "${M[$what]}")
done
python3 - "$ROWS" "$REPS" "$WORK/equal.json" "$WORK/verify.json" "${args[@]}" <<'PY'
import json, sys
rows, reps, equal, differs = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
a = sys.argv[5:]
t = {a[i]: (float(a[i + 1]), int(a[i + 2])) for i in range(0, len(a), 3)}
e, d = json.load(open(equal))[0], json.load(open(differs))[0]
assert e["verdict"] == "equal", e
found = sorted(
    [("extra", k) for r in d["ranges"] for k in r["extra"]]
    + [("missing", k) for r in d["ranges"] for k in r["missing"]]
    + [("changed", c["key"]) for r in d["ranges"] for c in r["changed"]])
want = sorted([("extra", "500000"), ("missing", str(rows + 7)), ("changed", "1500000")])
assert found == want, (found, d)
ref = t["psql"][0]
print(f"{rows:,} rows, 13 columns; median of {reps} runs")
print(f"{'':<44} {'seconds':>8} {'vs psql':>8} {'peak RSS':>9} {'statements':>11}")
for what, label, doc in [("psql", "psql \\copy (reference)", None),
                         ("equal", "pgp verify, equal (exit 0)", e),
                         ("differs", "pgp verify, 3 rows differ (exit 1)", d)]:
    s = f"{doc['source_statements']}+{doc['target_statements']}" if doc else ""
    print(f"{label:<44} {t[what][0]:8.2f} {t[what][0] / ref:7.2f}x {t[what][1] / 1024:6.0f} MB {s:>11}")
print("ranges found:", ", ".join(f"{r['range']} ({r['source_rows']} rows)" for r in d["ranges"]))
PY

# Sourced by the benchmarks: the one prelude they share. Builds (or takes PGP_BIN) the
# pgp binary, starts a throwaway PostgreSQL with a `bench` database, makes a work dir
# removed on exit, and defines time_cmd and median.
# Sets PGP, DB, WORK (and PG_PORT, PG_URL_BASE from scripts/throwaway-pg.sh).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/pgp-target}"
# PGP_BIN: an already built pgp (e.g. a debug build: ratios between pgp runs then still
# compare like with like, the absolute times and the ratios to psql do not).
if [ -n "${PGP_BIN:-}" ]; then
  PGP=$PGP_BIN
else
  cargo build --release -q -p pgp-cli
  PGP="$CARGO_TARGET_DIR/release/pgp"
fi
PG_EXTRA_OPTS="-c shared_buffers=1GB"
. scripts/throwaway-pg.sh
WORK=$(mktemp -d /tmp/pgp-bench-XXXXXX)
trap '"${PG_AS[@]}" "$PG_BIN_DIR/pg_ctl" -D "$PG_TMP/data" -m fast stop >/dev/null 2>&1; rm -rf "$PG_TMP" "$WORK"' EXIT
psql -q "$PG_URL_BASE/postgres" -c "CREATE DATABASE bench"
DB="$PG_URL_BASE/bench"

# time_cmd CMD...: prints "seconds peak_rss_kb" of CMD (a child of a fresh python: the
# peak is the largest of CMD's process tree).
time_cmd() {
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.monotonic()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
dt = time.monotonic() - t
if r.returncode != 0:
    sys.exit(f"command failed ({r.returncode}): {sys.argv[1:]}")
print(f"{dt:.3f} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
PY
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

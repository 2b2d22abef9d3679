# Sourced by demo.sh and bench: starts a throwaway PostgreSQL (system initdb/pg_ctl,
# temp dir, free loopback port) and stops and removes it when the calling script exits.
# Sets PG_PORT, PG_TMP, PG_URL_BASE (postgresql://postgres@127.0.0.1:PORT).
PG_BIN_DIR=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PG_BIN_DIR/initdb" ] || { echo "no PostgreSQL server binaries: apt-get install postgresql" >&2; exit 1; }
PG_TMP=$(mktemp -d /tmp/pgp-pg-XXXXXX)
PG_AS=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$PG_TMP"; PG_AS=(runuser -u postgres --); fi
PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${PG_AS[@]}" "$PG_BIN_DIR/initdb" -D "$PG_TMP/data" -U postgres -A trust -E UTF8 --locale=C >/dev/null
"${PG_AS[@]}" "$PG_BIN_DIR/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/log" -w \
  -o "-p $PG_PORT -k $PG_TMP -c listen_addresses=127.0.0.1 ${PG_EXTRA_OPTS:-}" start >/dev/null
trap '"${PG_AS[@]}" "$PG_BIN_DIR/pg_ctl" -D "$PG_TMP/data" -m fast stop >/dev/null 2>&1; rm -rf "$PG_TMP"' EXIT
PG_URL_BASE="postgresql://postgres@127.0.0.1:$PG_PORT"

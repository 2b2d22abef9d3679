# Shared by the benchmarks (sourced): builds the $ROWS-row, 13-column `bench` table in
# database $DB and writes its manifest to $1. Needs psql, $DB, $ROWS, $PG_PORT.
bench_table() {
  local manifest=$1
  echo "building the $ROWS-row table..."
  psql -q "$DB" <<SQL
CREATE TABLE bench AS SELECT
  g::bigint AS id,
  md5(g::text) AS name,
  md5((g * 7)::text) || ' ' || md5((g * 13)::text) || E'\t' || md5(g::text) AS description,
  (g * 1.2345)::numeric(20,4) AS amount,
  timestamptz '2024-01-01 00:00:00+00' - g * interval '1 second' AS created_at,
  timestamptz '2024-01-01 00:00:00+00' - g * interval '1 minute' AS updated_at,
  (g % 1000)::int AS project_id,
  (g % 2 = 0) AS active,
  jsonb_build_object('k', g, 'v', md5(g::text), 'n', NULL) AS props,
  ARRAY[g, g + 1, g + 2] AS ids,
  ARRAY['tag' || (g % 10), 'b'] AS tags,
  md5(g::text)::uuid AS uid,
  CASE WHEN g % 10 = 0 THEN NULL ELSE 'note ' || g END AS note
FROM generate_series(1, $ROWS) g;
ALTER TABLE bench ADD PRIMARY KEY (id);
VACUUM ANALYZE bench;
SQL
  cat > "$manifest" <<YAML
connection_info:
  database: B_NAME
  host: B_HOST
  pass: B_PASS
  port: B_PORT
  user: B_USER
tables:
  bench:
    import_db: BENCH
    export_schema: bench
    export_table: bench
    export_table_primary_key: id
    import_query: SELECT * FROM bench
YAML
  export B_NAME=bench B_HOST=127.0.0.1 B_PASS=unused B_PORT=$PG_PORT B_USER=postgres PGP_LOG=warn
}

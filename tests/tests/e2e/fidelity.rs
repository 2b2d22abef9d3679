//! Every value arrives exactly as PostgreSQL holds it: PostgreSQL -> COPY -> gzip
//! object -> DuckDB, compared value by value against PostgreSQL itself.

use crate::common::*;
use pgp::plan::LoadType;
use pgp::run::Outcome;

const SETUP: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'it''s "complicated"');
CREATE TABLE fidelity (
  id bigint PRIMARY KEY,
  t text, vc varchar(20), ch char(3),
  n numeric(38,10), nw numeric, n2 numeric(10,2),
  f4 real, f8 double precision,
  b boolean, i2 smallint, i4 integer,
  d date, ts timestamp, tstz timestamptz, tm time,
  j json, jb jsonb,
  ia int[], ta text[], na numeric(12,3)[], tsa timestamptz[],
  u uuid, e mood, by bytea, iv interval, inet_c inet,
  nua numeric[], ea mood[]
);
INSERT INTO fidelity (id, t) VALUES (1, NULL), (2, '');
INSERT INTO fidelity (id, t, vc) VALUES
  (3, E'tab\there', E'a\tb'),
  (4, E'newline\nhere and crlf\r\nthere', E'cr\ronly'),
  (5, E'back\\slash \\\\ double', E'\\'),
  (6, E'\\N', 'NULL'),
  (7, '日本語 🎉 café ß', 'ñ'),
  (8, '"quoted" ''single'' ""', '"'),
  (9, E'\\.', '.'),
  (10, E'trailing tab\t', E' lead space');
INSERT INTO fidelity (id, n, nw, n2, f4, f8) VALUES
  (20, 9999999999999999999999999999.9999999999, 123456789012345678901234567890.123456789012345, -99999999.99, 3.4028235e38, 1.7976931348623157e308),
  (21, -9999999999999999999999999999.9999999999, 'NaN', 0, 'NaN', 'NaN'),
  (22, 0.0000000001, 0.1, 0.01, 'Infinity', 'Infinity'),
  (23, 0, -0.000000000000000000001, NULL, '-Infinity', '-Infinity'),
  (24, 1, NULL, 1.5, 1.1, 5e-324);
INSERT INTO fidelity (id, b, i2, i4, d, ts, tstz, tm) VALUES
  (30, true, -32768, 2147483647, '1969-07-20', '1900-01-01 00:00:00', '1965-06-01 12:00:00+05:30', '00:00:00'),
  (31, false, 32767, -2147483648, '9999-12-31', '9999-12-31 23:59:59.999999', '2262-04-11 23:47:16.854775+00', '23:59:59.999999'),
  (32, NULL, 0, 0, '1970-01-01', '1969-12-31 23:59:59.999999', '1969-12-31 23:59:59.999999-08', '12:34:56.789'),
  (33, true, 1, 1, '0001-01-01', '2000-02-29 12:00:00.5', '2024-03-10 02:30:00 America/New_York', NULL);
INSERT INTO fidelity (id, j, jb) VALUES
  (40, '{"b": 1, "a": [1, null, "x\ty"], "k": "\\N"}', '{"b": 1, "a": [1, null, "x\ty"], "k": "\\N", "u": "\u00e9"}'),
  (41, '[]', 'null'),
  (42, '"just a string with \"quotes\""', '{"nested": {"deep": [[1, 2], {"x": 1.50}]}}'),
  (43, 'null', NULL);
INSERT INTO fidelity (id, ia, ta, na, tsa) VALUES
  (50, '{1,NULL,3}', '{"a\"b",NULL,"c,d","NULL","","tab\there"}', '{1.500,NULL,-2.250}', '{"2020-01-01 00:00:00+00",NULL}'),
  (51, '{}', '{}', '{}', '{}'),
  (52, NULL, '{"back\\\\slash","new\nline","{brace}"}', NULL, NULL);
INSERT INTO fidelity (id, nua, ea) VALUES
  (53, '{123456789012345678901234567890.123456789012345,NaN,NULL,-0.000000000000000000001,1e-30}', '{happy,NULL,"it''s \"complicated\""}'),
  (54, '{}', '{}');
INSERT INTO fidelity (id, u, e, by, iv, inet_c) VALUES
  (60, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', '\x00ff0a090d5c', '1 year 2 months 3 days 04:05:06.5', '192.168.0.1/24'),
  (61, NULL, 'it''s "complicated"', '', '-1 day', '::1'),
  (62, '00000000-0000-0000-0000-000000000000', NULL, NULL, NULL, NULL);
"#;

const TABLES: &str = "  fidelity:
    import_db: TEST_DB
    export_schema: 'fidelity_schema'
    export_table: 'fidelity'
    export_table_primary_key: id
    advanced_metadata: true
    import_query: |-
      SELECT * FROM fidelity
";

/// (column, PostgreSQL text expression, DuckDB text expression): both sides render
/// the value in the same canonical text, so equality means the value is the same.
const CHECKS: &[(&str, &str, &str)] = &[
    ("t", "t", "t"),
    ("vc", "vc::text", "vc"),
    ("ch", "ch::text", "ch"),
    ("n", "n::text", "n::VARCHAR"),
    ("nw", "nw::text", "nw"),
    ("n2", "n2::text", "n2::VARCHAR"),
    ("f4", "CASE WHEN f4 = 'NaN' THEN 'nan' WHEN f4 = 'Infinity' THEN 'inf' WHEN f4 = '-Infinity' THEN '-inf' ELSE f4::float8::text END",
     "CASE WHEN isnan(f4) THEN 'nan' WHEN f4 = 'inf'::FLOAT THEN 'inf' WHEN f4 = '-inf'::FLOAT THEN '-inf' ELSE f4::DOUBLE::VARCHAR END"),
    ("f8", "CASE WHEN f8 = 'NaN' THEN 'nan' WHEN f8 = 'Infinity' THEN 'inf' WHEN f8 = '-Infinity' THEN '-inf' ELSE f8::text END",
     "CASE WHEN isnan(f8) THEN 'nan' WHEN f8 = 'inf'::DOUBLE THEN 'inf' WHEN f8 = '-inf'::DOUBLE THEN '-inf' ELSE f8::VARCHAR END"),
    ("b", "b::text", "CASE WHEN b THEN 'true' WHEN NOT b THEN 'false' END"),
    ("i2", "i2::text", "i2::VARCHAR"),
    ("i4", "i4::text", "i4::VARCHAR"),
    ("d", "d::text", "d::VARCHAR"),
    ("ts", "(extract(epoch from ts) * 1000000)::bigint::text", "epoch_us(ts)::VARCHAR"),
    ("tstz", "(extract(epoch from tstz) * 1000000)::bigint::text", "epoch_us(tstz)::VARCHAR"),
    ("tm", "tm::text", "tm::VARCHAR"),
    ("j", "j::text", "j::VARCHAR"),
    ("jb", "jb::text", "jb::VARCHAR"),
    ("ia", "to_json(ia)::text", "to_json(ia)::VARCHAR"),
    ("ta", "to_json(ta)::text", "to_json(ta)::VARCHAR"),
    ("na", "array_to_string(na, ',', 'NULL')", "array_to_string(list_transform(na, lambda x: coalesce(x::VARCHAR, 'NULL')), ',')"),
    ("tsa", "CASE WHEN tsa IS NOT NULL THEN coalesce((SELECT string_agg(coalesce((extract(epoch from x) * 1000000)::bigint::text, 'NULL'), ',') FROM unnest(tsa) x), '') END",
     "array_to_string(list_transform(tsa, lambda x: coalesce(epoch_us(x)::VARCHAR, 'NULL')), ',')"),
    ("nua", "array_to_string(nua, ',', 'NULL')", "array_to_string(list_transform(nua, lambda x: coalesce(x, 'NULL')), ',')"),
    ("ea", "array_to_string(ea, ',', 'NULL')", "array_to_string(list_transform(ea, lambda x: coalesce(x, 'NULL')), ',')"),
    ("u", "u::text", "u::VARCHAR"),
    ("e", "e::text", "e"),
    ("by", "encode(by, 'hex')", "lower(hex(\"by\"))"),
    ("iv", "iv::text", "iv"),
    // inet's output function (what COPY writes) omits a host's /32 or /128; ::text adds it.
    ("inet_c", "CASE WHEN inet_c IS NOT NULL THEN format('%s', inet_c) END", "inet_c"),
];

/// Every value of the `fidelity` table in DuckDB equals PostgreSQL's ([`CHECKS`]).
async fn assert_values_match(w: &World) {
    // The interval column travels as ISO 8601 text (IntervalStyle iso_8601).
    w.db.exec("SET IntervalStyle = 'iso_8601'").await;
    let mut failures = Vec::new();
    for (col, pg_expr, duck_expr) in CHECKS {
        let pg = w
            .pg(&format!(
                "SELECT id::text, {pg_expr} FROM fidelity ORDER BY fidelity.id"
            ))
            .await;
        let duck = w.duck(&format!(
            "SELECT id::VARCHAR, {duck_expr} FROM fidelity_schema.fidelity ORDER BY fidelity.id"
        ));
        assert_eq!(pg.len(), duck.len());
        for (p, d) in pg.iter().zip(&duck) {
            if p != d {
                failures.push(format!("{col}: postgres {p:?} vs duckdb {d:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "values differ:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn every_value_arrives_exactly_as_postgres_holds_it() {
    let w = World::new("fidelity", SETUP, TABLES).await;
    let mut opts = w.options(LoadType::Scd, chrono::Utc::now());
    opts.params.task_instance = Some("dag.task.2024-01-01".into());
    let r = w.run(opts).await;
    assert_eq!(outcome(&r, "fidelity"), &Outcome::Swapped, "{r:#?}");
    let n = w.pg("SELECT count(*)::text FROM fidelity").await[0][0]
        .clone()
        .unwrap();
    assert_eq!(rows(&r, "fidelity").to_string(), n);

    assert_values_match(&w).await;

    // NULL and empty string stay apart, and the text \N stays text.
    let t = w.duck("SELECT id::VARCHAR, (t IS NULL)::VARCHAR, t FROM fidelity_schema.fidelity WHERE id IN (1, 2, 6) ORDER BY id");
    assert_eq!(t[0][1].as_deref(), Some("true"));
    assert_eq!(t[1][1].as_deref(), Some("false"));
    assert_eq!(t[1][2].as_deref(), Some(""));
    assert_eq!(t[2][2].as_deref(), Some("\\N"));

    // Types keep their shape in the warehouse.
    let types = w.duck(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'fidelity_schema' AND table_name = 'fidelity' ORDER BY ordinal_position",
    );
    let ty = |c: &str| {
        types.iter().find(|r| r[0].as_deref() == Some(c)).unwrap()[1]
            .clone()
            .unwrap()
    };
    assert_eq!(ty("n"), "DECIMAL(38,10)");
    assert_eq!(ty("tstz"), "TIMESTAMP WITH TIME ZONE");
    assert_eq!(ty("jb"), "JSON");
    assert_eq!(ty("ia"), "INTEGER[]");
    assert_eq!(ty("by"), "BLOB");
    assert_eq!(ty("_uploaded_at"), "TIMESTAMP WITH TIME ZONE");

    // Metadata: one _uploaded_at for the run, the task instance on every row.
    assert_eq!(
        w.duck_count("SELECT count(DISTINCT _uploaded_at) FROM fidelity_schema.fidelity"),
        1
    );
    assert_eq!(
        w.duck_count("SELECT count(*) FROM fidelity_schema.fidelity WHERE _task_instance = 'dag.task.2024-01-01'"),
        n.parse::<i64>().unwrap()
    );

    // `pgp verify` measures every value the same way on both sides: no difference.
    let v = verify_tables(&w, &["fidelity"], 256).await.remove(0);
    assert_eq!(v.verdict, pgp::verify::Verdict::Equal, "{v:#?}");
}

/// DuckDB's storage of text (`compress_strings=false`: uncompressed) changes nothing
/// of what arrives.
#[tokio::test]
async fn every_value_arrives_the_same_with_text_stored_uncompressed() {
    let w = World::new("fidelity_plain", SETUP, TABLES).await;
    let settings = pgp::warehouse::DuckDbSettings::from_query("compress_strings=false").unwrap();
    let mut p = w.pipeline();
    p.warehouse = std::sync::Arc::new(
        pgp::warehouse::DuckDb::open_with(&w.duckdb_path(), p.store.clone(), &settings).unwrap(),
    );
    let m = pgp::manifest::Manifest::from_file(&w.manifest).unwrap();
    let r = p
        .run(
            &m,
            &w.options(LoadType::Scd, chrono::Utc::now()),
            &pgp::run::Quiet,
        )
        .await
        .unwrap();
    assert_eq!(outcome(&r, "fidelity"), &Outcome::Swapped, "{r:#?}");
    drop(p);
    assert_values_match(&w).await;
    // ... and the setting reached the load: its text columns are stored uncompressed.
    let kinds = w.duck(
        "SELECT DISTINCT compression FROM pragma_storage_info('fidelity_schema.fidelity') \
         WHERE segment_type = 'VARCHAR' ORDER BY 1",
    );
    assert_eq!(kinds, vec![vec![Some("Uncompressed".to_string())]]);
}

/// Objects staged as zstd (`--compression zstd`) carry every value as gzip or plain
/// ones do.
#[tokio::test]
async fn every_value_arrives_the_same_staged_as_zstd() {
    let w = World::new("fidelity_zstd", SETUP, TABLES).await;
    let mut opts = w.options(LoadType::Scd, chrono::Utc::now());
    opts.compression = pgp::format::Compression::Zstd;
    opts.keep_objects = true;
    let r = w.run(opts).await;
    assert_eq!(outcome(&r, "fidelity"), &Outcome::Swapped, "{r:#?}");
    assert_values_match(&w).await;
    // ... and the objects were zstd frames (magic 28 b5 2f fd).
    let objects: Vec<_> = walk(&w.store_path())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tsv.zst"))
        .collect();
    assert!(!objects.is_empty(), "no .tsv.zst object staged");
    for p in objects {
        let head = std::fs::read(&p).unwrap();
        assert_eq!(&head[..4], &[0x28, 0xb5, 0x2f, 0xfd], "{}", p.display());
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A value that begins with U+FEFF (the byte order mark) keeps it, also when it is the
/// very first bytes of a staged file — where a CSV reader that skips a BOM would drop
/// it (Snowflake's default, `SKIP_BYTE_ORDER_MARK = TRUE`, does; pgp sets FALSE).
#[tokio::test]
async fn a_leading_byte_order_mark_is_data() {
    let setup = "CREATE TABLE bom (t text, id int PRIMARY KEY);
        INSERT INTO bom VALUES (E'\\uFEFFfirst', 1), (E'\\uFEFF', 2), (E'mid\\uFEFFdle', 3);";
    let tables = "  bom:
    import_db: TEST_DB
    export_schema: 'bom_schema'
    export_table: 'bom'
    export_table_primary_key: id
    import_query: SELECT t, id FROM bom ORDER BY id
";
    let w = World::new("bom", setup, tables).await;
    let r = w.run(w.options(LoadType::Scd, chrono::Utc::now())).await;
    assert_eq!(outcome(&r, "bom"), &Outcome::Swapped, "{r:#?}");
    let pg = w
        .pg("SELECT id::text, encode(convert_to(t, 'UTF8'), 'hex') FROM bom ORDER BY id")
        .await;
    let duck = w.duck("SELECT id::VARCHAR, lower(hex(encode(t))) FROM bom_schema.bom ORDER BY id");
    assert_eq!(pg, duck);
    assert!(pg[0][1].as_deref().unwrap().starts_with("efbbbf"));
}

/// Arrays whose elements no warehouse list reads back exactly travel as one JSON
/// document, PostgreSQL's `to_json` of the array: `{}` is `[]`, NULL elements are
/// `null`, json elements stay JSON, the others their PostgreSQL text.
#[tokio::test]
async fn arrays_of_json_bytea_time_and_interval_arrive_as_json() {
    let setup = r#"CREATE TABLE arr (id int PRIMARY KEY, j json[], jb jsonb[], by bytea[], tm time[], iv interval[]);
        INSERT INTO arr VALUES
          (1, NULL, NULL, NULL, NULL, NULL),
          (2, '{}', '{}', '{}', '{}', '{}'),
          (3, ARRAY['{"a": [1, "x\ty"]}'::json, NULL, '"s"'::json, '[]'::json],
              ARRAY['{"b": {"c": null}}'::jsonb, '1.50'::jsonb],
              ARRAY['\x00ff'::bytea, NULL, ''::bytea],
              ARRAY['00:00:00'::time, '23:59:59.999999', NULL],
              ARRAY['1 year 2 months'::interval, '-3 days 04:05:06.5', NULL]);"#;
    let tables = "  arr:
    import_db: TEST_DB
    export_schema: 'arr_schema'
    export_table: 'arr'
    export_table_primary_key: id
    import_query: SELECT * FROM arr
";
    let w = World::new("arrjson", setup, tables).await;
    let r = w.run(w.options(LoadType::Scd, chrono::Utc::now())).await;
    assert_eq!(outcome(&r, "arr"), &Outcome::Swapped, "{r:#?}");
    w.db.exec("SET IntervalStyle = 'iso_8601'; SET bytea_output = 'hex'")
        .await;
    // interval[] is a list of exact texts (interval travels as text); the others JSON.
    for (col, duck_expr) in [
        ("j", "j::VARCHAR"),
        ("jb", "jb::VARCHAR"),
        ("by", "\"by\"::VARCHAR"),
        ("tm", "tm::VARCHAR"),
        ("iv", "to_json(iv)::VARCHAR"),
    ] {
        let pg = w
            .pg(&format!(
                "SELECT id::text, to_json({col})::text FROM arr ORDER BY id"
            ))
            .await;
        let duck = w.duck(&format!(
            "SELECT id::VARCHAR, {duck_expr} FROM arr_schema.arr ORDER BY id"
        ));
        assert_eq!(pg, duck, "{col}");
        assert_eq!(
            duck[1][1].as_deref(),
            Some("[]"),
            "{col}: {{}} is an empty array"
        );
    }
    let types = w.duck(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'arr_schema' AND column_name IN ('j', 'by', 'tm', 'iv') ORDER BY column_name",
    );
    let types: Vec<_> = types.into_iter().map(|r| r[1].clone().unwrap()).collect();
    assert_eq!(
        types,
        ["JSON", "VARCHAR[]", "JSON", "JSON"],
        "by, iv, j, tm"
    );
}

/// Dates and timestamps beyond the everyday range arrive as the same instants: BC
/// (PostgreSQL writes `… BC`, DuckDB reads `(BC)`), `infinity` and `-infinity`, the
/// first day PostgreSQL holds (4713 BC) and years past 9999.
#[tokio::test]
async fn infinite_bc_and_far_dates_and_timestamps_arrive_in_duckdb() {
    let setup = "CREATE TABLE far (id int PRIMARY KEY, d date, ts timestamp, tstz timestamptz);
        INSERT INTO far VALUES
          (1, 'infinity', 'infinity', 'infinity'),
          (2, '-infinity', '-infinity', '-infinity'),
          (3, '0044-03-15 BC', '0044-03-15 12:00:00.5 BC', '0044-03-15 12:00:00.25+00 BC'),
          (4, '4713-01-01 BC', '4713-11-24 00:00:00 BC', '4713-11-24 00:00:00+00 BC'),
          (5, '0001-12-31 BC', '0001-12-31 23:59:59.999999 BC', '0001-01-01 00:00:00+00'),
          (6, '12345-06-07', '12345-06-07 08:09:10.111213', '12345-06-07 08:09:10.111213+00'),
          (7, NULL, NULL, NULL);";
    let tables = "  far:
    import_db: TEST_DB
    export_schema: 'far_schema'
    export_table: 'far'
    export_table_primary_key: id
    import_query: SELECT * FROM far
";
    let w = World::new("fardates", setup, tables).await;
    let r = w.run(w.options(LoadType::Scd, chrono::Utc::now())).await;
    assert_eq!(outcome(&r, "far"), &Outcome::Swapped, "{r:#?}");
    // Days and microseconds from 1970 where finite, else the infinity's name.
    for (col, pg_expr, duck_expr) in [
        (
            "d",
            "CASE WHEN isfinite(d) THEN (d - DATE '1970-01-01')::text ELSE d::text END",
            "CASE WHEN isfinite(d) THEN (d - DATE '1970-01-01')::VARCHAR ELSE d::VARCHAR END",
        ),
        (
            "ts",
            "CASE WHEN isfinite(ts) THEN (extract(epoch from ts) * 1000000)::bigint::text ELSE ts::text END",
            "CASE WHEN isfinite(ts) THEN epoch_us(ts)::VARCHAR ELSE ts::VARCHAR END",
        ),
        (
            "tstz",
            "CASE WHEN isfinite(tstz) THEN (extract(epoch from tstz) * 1000000)::bigint::text ELSE tstz::text END",
            "CASE WHEN isfinite(tstz) THEN epoch_us(tstz)::VARCHAR ELSE tstz::VARCHAR END",
        ),
    ] {
        let pg = w
            .pg(&format!("SELECT id::text, {pg_expr} FROM far ORDER BY id"))
            .await;
        let duck = w.duck(&format!(
            "SELECT id::VARCHAR, {duck_expr} FROM far_schema.far ORDER BY id"
        ));
        assert_eq!(pg, duck, "{col}");
        assert_eq!(pg[0][1].as_deref(), Some("infinity"), "{col}");
        assert_eq!(pg[1][1].as_deref(), Some("-infinity"), "{col}");
    }
    // `pgp verify` sums the finite ones alike on both sides, and sees one moved by a
    // microsecond (a BC one).
    let v = verify_tables(&w, &["far"], 256).await.remove(0);
    assert_eq!(v.verdict, pgp::verify::Verdict::Equal, "{v:#?}");
    w.db.exec("UPDATE far SET ts = ts + interval '1 microsecond' WHERE id = 4")
        .await;
    let v = verify_tables(&w, &["far"], 256).await.remove(0);
    assert_eq!(v.ranges.len(), 1, "{v:#?}");
    assert_eq!(v.ranges[0].changed[0].key, "4");
    assert_eq!(v.ranges[0].changed[0].columns, vec!["ts"]);
}

/// A list has one depth per column; PostgreSQL lets any array column hold values of
/// any dimensions. A column declared with dimensions (`text[][]`) loads as lists of
/// that depth, exactly; a value of another depth fails its table, naming the column,
/// and the target stays as it was: nothing is flattened (DuckDB would read `{{a,b}}`
/// into VARCHAR[] as the string `["a","b"]`).
#[tokio::test]
async fn multidimensional_arrays_load_at_their_declared_depth_or_are_refused() {
    let setup = r#"CREATE TABLE md (id int PRIMARY KEY, ta text[], ia int[], m text[][], d date[][][]);
        INSERT INTO md VALUES
          (1, '{a,b}', '{1,2}', ARRAY[ARRAY[E'a\tb', NULL], ARRAY['', 'x']], '{{{2024-01-01,infinity}},{{0044-03-15 BC,NULL}}}'),
          (2, '{{a,b},{c,d}}', '{3}', '{}', NULL);"#;
    let tables = "  md:
    import_db: TEST_DB
    export_schema: 'md_schema'
    export_table: 'md'
    export_table_primary_key: id
    import_query: SELECT * FROM md
";
    let w = World::new("mdarr", setup, tables).await;
    let r = w.run(w.options(LoadType::Scd, chrono::Utc::now())).await;
    match outcome(&r, "md") {
        Outcome::Failed(m) => {
            assert!(m.contains("pgp refuses column ta"), "{m}");
            assert!(m.contains("2-dimensional"), "{m}");
        }
        o => panic!("a 2-dimensional value was loaded: {o:?}"),
    }
    assert!(!w.duck_has_table("md_schema", "md"), "no target");
    // The other values load: declared dimensions give nested lists.
    w.db.exec("DELETE FROM md WHERE id = 2").await;
    let r = w.run(w.options(LoadType::Scd, chrono::Utc::now())).await;
    assert_eq!(outcome(&r, "md"), &Outcome::Swapped, "{r:#?}");
    let types = w.duck(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'md_schema' \
         AND column_name IN ('ta', 'm', 'd') ORDER BY column_name",
    );
    assert_eq!(
        types,
        [
            ["d", "DATE[][][]"],
            ["m", "VARCHAR[][]"],
            ["ta", "VARCHAR[]"]
        ]
        .map(|r| r.map(|v| Some(v.to_string())).to_vec())
        .to_vec()
    );
    let loaded = w.duck(
        "SELECT m[1][1], (m[1][2] IS NULL)::VARCHAR, m[2][1], m[2][2], len(m)::VARCHAR, d[1][1][2]::VARCHAR, \
         d[2][1][1]::VARCHAR, (d[2][1][2] IS NULL)::VARCHAR FROM md_schema.md",
    );
    assert_eq!(
        loaded,
        vec![[
            "a\tb",
            "true",
            "",
            "x",
            "2",
            "infinity",
            "0044-03-15 (BC)",
            "true"
        ]
        .map(|v| Some(v.to_string()))
        .to_vec()]
    );
}

/// A warehouse that stores JSON numbers of at most 38 digits exactly (Snowflake's
/// PARSE_JSON; longer ones become DOUBLEs) gets the limit checked while PostgreSQL
/// extracts: a value with a longer number fails the chunk naming the column; values
/// within it, and JSON strings of any length, pass unchanged. (DuckDB has no limit.)
/// And every record ends with Snowflake's record-end field.
#[tokio::test]
async fn snowflake_bound_extraction_checks_json_digits_and_ends_every_record() {
    use futures::StreamExt;
    use pgp::source::{ChunkQuery, PgSource, Source, SourceConfig};
    let db = pgp_e2e::Pg::get().fresh_db("jsondigits").await;
    db.exec(
        "CREATE TABLE j (id int PRIMARY KEY, jb jsonb, ja jsonb[]);
         INSERT INTO j VALUES
           (1, '{\"a\": [1.5, 12345678901234567890123456789012345678]}', NULL),
           (2, '{\"s\": \"123456789012345678901234567890123456789012345\"}', '{}'),
           (3, NULL, ARRAY['{\"n\": 0.1}'::jsonb]);",
    )
    .await;
    let src = PgSource::connect(&SourceConfig::new(
        "127.0.0.1",
        pgp_e2e::Pg::get().port,
        "postgres",
        &db.name,
        pgp_e2e::PASSWORD,
    ))
    .await
    .unwrap();
    let read_with = |query: &'static str, digits: Option<u8>, fixed: bool, record_end: bool| {
        let src = &src;
        async move {
            let columns = &src.describe("j", query).await?;
            let range = pgp::query::KeyRange::ALL;
            let chunk = ChunkQuery {
                table: "j",
                query,
                columns,
                key: None,
                range: &range,
                limit: None,
                json_number_digits: digits,
                fixed_list_depth: fixed,
                record_end,
            };
            let mut out = Vec::new();
            let mut s = src.copy_chunk(&chunk).await?;
            while let Some(b) = s.next().await {
                out.extend_from_slice(&b?);
            }
            Ok::<_, pgp::Error>(String::from_utf8(out).unwrap())
        }
    };
    let read = |query: &'static str, digits: Option<u8>| read_with(query, digits, true, false);
    let within = read("SELECT * FROM j", Some(38)).await.unwrap();
    assert_eq!(within, read("SELECT * FROM j", None).await.unwrap());
    assert!(within.contains("12345678901234567890123456789012345678"));

    for (query, column) in [
        ("SELECT id, jb || '{\"x\": 1e39}' AS jb, ja FROM j", "jb"),
        (
            "SELECT id, jb, ARRAY['{\"y\": 0.00000000000000000000000000000000000000001}'::jsonb] AS ja FROM j",
            "ja",
        ),
    ] {
        let e = read(query, Some(38)).await.unwrap_err().to_string();
        assert!(
            e.contains(&format!("pgp refuses column {column}: a JSON number of more than 38 digits")),
            "{e}"
        );
        read(query, None).await.unwrap();
    }

    // Snowflake's record-end field: the last field of every record, so that a short
    // record is seen and a one-column NULL row is not an empty line.
    let ended = read_with(
        "SELECT NULL::text AS t FROM j ORDER BY id",
        None,
        false,
        true,
    )
    .await
    .unwrap();
    assert_eq!(ended, "\t1\n\t1\n\t1\n");
    let plain = read_with(
        "SELECT NULL::text AS t FROM j ORDER BY id",
        None,
        true,
        false,
    )
    .await
    .unwrap();
    assert_eq!(plain, "\n\n\n");

    // Snowflake's ARRAY holds any nesting: a 2-dimensional value in an int[] column is
    // carried as nested JSON there, and refused only where lists have one depth.
    let nested = "SELECT '{{1,2},{3,NULL}}'::int[] AS a";
    let carried = read_with(nested, Some(38), false, true).await.unwrap();
    assert_eq!(carried, "\"[[1,2],[3,null]]\"\t1\n");
    let e = read_with(nested, None, true, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("pgp refuses column a: a 2-dimensional array value, and the column is loaded as a 1-dimensional list"), "{e}");
    // Lower bounds other than 1 cannot travel in JSON, for either warehouse.
    for fixed in [false, true] {
        let e = read_with("SELECT '[0:1]={a,b}'::text[] AS b", None, fixed, false)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pgp refuses column b: an array value with subscripts [0:1]"),
            "{e}"
        );
        if !fixed {
            let e = read_with(
                "SELECT '[1:1][2:3]={{a,b}}'::text[] AS b",
                None,
                fixed,
                false,
            )
            .await
            .unwrap_err()
            .to_string();
            assert!(e.contains("subscripts [1:1][2:3]"), "{e}");
        }
        let e = read_with("SELECT '[2:2]={1}'::jsonb[] AS j", None, fixed, false)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pgp refuses column j: an array value with subscripts [2:2]"),
            "{e}"
        );
    }
}

/// DuckDB reads a staged row through a buffer as long as the longest row it accepts (an
/// eighth of its memory limit, `PGP_WAREHOUSE_URL=duckdb:///f.duckdb?memory_limit=…`).
/// The extractor counts each chunk's longest row into its object, and a chunk with a
/// longer row loads with a buffer and memory limit that fit it: the row arrives whole,
/// at any configured limit.
#[tokio::test]
async fn a_row_longer_than_the_default_read_buffer_loads_whole() {
    let tables = "  long_row:
    import_db: TEST_DB
    export_schema: 'wide'
    export_table: 'long_row'
    export_table_primary_key: id
    import_query: SELECT id, v FROM long_row
";
    let w = World::new(
        "longrow",
        "CREATE TABLE long_row (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO long_row VALUES (1, repeat('x', 20000000)), (2, 'short');",
        tables,
    )
    .await;
    let m = pgp::manifest::Manifest::from_file(&w.manifest).unwrap();
    let run = |limit: &str| {
        let limit = limit.to_string();
        let (m, w) = (&m, &w);
        async move {
            let settings =
                pgp::warehouse::DuckDbSettings::from_query(&format!("memory_limit={limit}"))
                    .unwrap();
            let mut p = w.pipeline();
            p.warehouse = std::sync::Arc::new(
                pgp::warehouse::DuckDb::open_with(&w.duckdb_path(), p.store.clone(), &settings)
                    .unwrap(),
            );
            p.run(
                m,
                &w.options(LoadType::Scd, chrono::Utc::now()),
                &pgp::run::Quiet,
            )
            .await
            .unwrap()
        }
    };
    let r = run("16MB").await;
    assert_eq!(outcome(&r, "long_row"), &Outcome::Swapped, "{r:#?}");
    assert_eq!(
        w.duck("SELECT length(v)::VARCHAR FROM wide.long_row ORDER BY id"),
        vec![vec![Some("20000000".into())], vec![Some("5".into())]]
    );
}

//! The type matrix: one table per PostgreSQL type, its value and its one-dimensional
//! array, holding edge values (NULL, empty, extremes, NaN, infinities, `24:00:00`, BC
//! dates, long and unicode text, a leading U+FEFF), loaded end to end into DuckDB with
//! `pgp tap` and compared with PostgreSQL value by value. Both sides render each value
//! in one canonical text per warehouse type (days and microseconds since 1970 for
//! dates and times, hex for bytes, the type's own output function for values carried
//! as text), so equal text means the same value.
//!
//! The README's type matrix is generated from what this test finds (the DuckDB types
//! information_schema reports, and the Snowflake type or refusal pgp's Snowflake
//! mapping gives each column type); the test fails when the README differs from it.
//! `PGP_BLESS=1` rewrites the README section.

use crate::common::*;
use pgp::plan::LoadType;
use pgp::run::Outcome;
use pgp::types::{from_pg_dims, ColumnType};

/// (PostgreSQL type, edge values as SQL literals).
pub(crate) const MATRIX: &[(&str, &[&str])] = &[
    ("boolean", &["true", "false"]),
    ("smallint", &["-32768", "32767", "0"]),
    ("integer", &["-2147483648", "2147483647"]),
    ("bigint", &["-9223372036854775808", "9223372036854775807"]),
    ("oid", &["0", "4294967295"]),
    (
        "real",
        &[
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "3.4028235e38",
            "1.4e-45",
            "0.1",
        ],
    ),
    (
        "double precision",
        &[
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "1.7976931348623157e308",
            "5e-324",
            "0.1",
        ],
    ),
    (
        "numeric(38,10)",
        &[
            "9999999999999999999999999999.9999999999",
            "-0.0000000001",
            "0",
        ],
    ),
    ("numeric(10,2)", &["-99999999.99", "0.01"]),
    (
        "numeric(38,38)",
        &["0.12345678901234567890123456789012345678"],
    ),
    (
        "numeric",
        &[
            "'NaN'",
            "123456789012345678901234567890.123456789012345",
            "1e-30",
            "'Infinity'",
        ],
    ),
    (
        "text",
        &[
            "''",
            "E'\\\\N'",
            "E'tab\\there\\nnewline\\r'",
            "E'\\uFEFFbom'",
            "'日本語 🎉 café'",
            "repeat('x', 100000)",
            "'\"q\"'",
        ],
    ),
    ("varchar(10)", &["''", "'ten chars!'"]),
    ("char(5)", &["'a'", "''"]),
    ("name", &["'pg_catalog'"]),
    ("bytea", &["''", "'\\x00ff0a090d5c'"]),
    (
        "date",
        &[
            "'infinity'",
            "'-infinity'",
            "'4713-01-01 BC'",
            "'0044-03-15 BC'",
            "'9999-12-31'",
            "'12345-06-07'",
        ],
    ),
    ("time", &["'00:00:00'", "'23:59:59.999999'", "'24:00:00'"]),
    ("timetz", &["'00:00:00+14'", "'24:00:00-12'"]),
    (
        "timestamp",
        &[
            "'infinity'",
            "'-infinity'",
            "'4713-11-24 00:00:00 BC'",
            "'1969-12-31 23:59:59.999999'",
            "'12345-06-07 08:09:10.111213'",
        ],
    ),
    (
        "timestamptz",
        &[
            "'infinity'",
            "'-infinity'",
            "'0044-03-15 12:00:00.25+00 BC'",
            "'1965-06-01 12:00:00+05:30'",
            "'2024-03-10 02:30:00 America/New_York'",
        ],
    ),
    (
        "interval",
        &["'1 year 2 months 3 days 04:05:06.5'", "'-1 day'", "'0'"],
    ),
    (
        "uuid",
        &[
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            "'00000000-0000-0000-0000-000000000000'",
        ],
    ),
    (
        "json",
        &[
            "'{\"b\": 1, \"a\": [1, null, \"x\\ty\"]}'",
            "'[]'",
            "'null'",
            "'1e400'",
        ],
    ),
    (
        "jsonb",
        &[
            "'{\"b\": 1, \"a\": [1, null]}'",
            "'\"s\"'",
            "'123456789012345678901234567890.5'",
        ],
    ),
    ("inet", &["'192.168.0.1/24'", "'::1'", "'10.0.0.1'"]),
    ("cidr", &["'10.0.0.0/8'"]),
    ("macaddr", &["'08:00:2b:01:02:03'"]),
    ("money", &["'12.34'", "'-0.01'"]),
    ("bit(4)", &["B'1010'"]),
    ("varbit", &["B''", "B'1'"]),
    ("point", &["'(1.5,-2)'"]),
    ("int4range", &["'[1,5)'", "'empty'", "'(,)'"]),
    ("tstzrange", &["'[2020-01-01 00:00:00+00,infinity)'"]),
    ("tsvector", &["'a fat cat'"]),
    ("xml", &["'<a>b</a>'"]),
    ("pg_lsn", &["'16/B374D848'"]),
    ("\"char\"", &["'a'", "''"]),
    ("macaddr8", &["'08:00:2b:01:02:03:04:05'"]),
    ("line", &["'{1,-1,0}'"]),
    ("lseg", &["'[(0,0),(1,1)]'"]),
    ("box", &["'(1,1),(0,0)'"]),
    ("path", &["'[(0,0),(1,1),(2,0)]'"]),
    ("polygon", &["'((0,0),(1,1),(1,0))'"]),
    ("circle", &["'<(0,0),1.5>'"]),
    ("int8range", &["'[1,9223372036854775807)'"]),
    ("numrange", &["'(0.5,1e30]'"]),
    ("tsrange", &["'[2020-01-01,2021-01-01)'"]),
    ("daterange", &["'[2020-01-01,infinity)'"]),
    ("int4multirange", &["'{[1,3), [5,7)}'", "'{}'"]),
    ("tsquery", &["'fat & (rat | cat)'"]),
    ("jsonpath", &["'$.a[*] ? (@ > 1)'"]),
    ("pg_snapshot", &["'10:20:10,14,15'"]),
    ("mood", &["'ok'", "'it''s \"complicated\"'"]),
    ("posint", &["1", "2147483647"]),
];

pub(crate) const SETUP: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'it''s "complicated"');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
"#;

/// The test table of the `i`th type.
pub(crate) fn table(i: usize) -> String {
    format!("matrix_{i:02}")
}

/// (PostgreSQL expression, DuckDB expression) rendering a value of DuckDB type
/// `duck_type` (and its PostgreSQL counterpart) as one canonical text.
fn canon(duck_type: &str, pg: &str, duck: &str) -> (String, String) {
    // A two-dimensional array: its subscripts, then its elements in row-major order
    // (PostgreSQL's arrays are rectangular, so that is the whole value).
    if let Some(elem) = duck_type.strip_suffix("[][]") {
        let (pe, de) = canon(elem, "x", "x");
        return (
            format!(
                "CASE WHEN {pg} IS NOT NULL THEN coalesce(array_dims({pg}), '') || ':' || \
                 coalesce((SELECT string_agg(coalesce({pe}, 'NULL'), '|' ORDER BY i) \
                 FROM unnest({pg}) WITH ORDINALITY AS u(x, i)), '') END"
            ),
            format!(
                "CASE WHEN len({duck}) = 0 THEN '' ELSE '[1:' || len({duck}) || '][1:' || len({duck}[1]) || ']' END \
                 || ':' || array_to_string(list_transform(flatten({duck}), lambda x: coalesce({de}, 'NULL')), '|')"
            ),
        );
    }
    if let Some(elem) = duck_type.strip_suffix("[]") {
        let (pe, de) = canon(elem, "x", "x");
        return (
            format!(
                "CASE WHEN {pg} IS NOT NULL THEN coalesce((SELECT string_agg(coalesce({pe}, 'NULL'), '|' ORDER BY i) \
                 FROM unnest({pg}) WITH ORDINALITY AS u(x, i)), '') END"
            ),
            format!("array_to_string(list_transform({duck}, lambda x: coalesce({de}, 'NULL')), '|')"),
        );
    }
    let same = |p: &str, d: &str| (p.replace("{}", pg), d.replace("{}", duck));
    match duck_type {
        "BOOLEAN" => same("{}::text", "CASE WHEN {} THEN 'true' WHEN NOT {} THEN 'false' END"),
        "SMALLINT" | "INTEGER" | "BIGINT" | "UUID" | "TIME" => same("{}::text", "{}::VARCHAR"),
        // DuckDB writes DECIMAL(38,38) without the leading zero.
        t if t.starts_with("DECIMAL") => same(
            "{}::text",
            "regexp_replace({}::VARCHAR, '^(-?)[.]', '\\10.')",
        ),
        "FLOAT" | "DOUBLE" => same(
            "CASE WHEN {} = 'NaN' THEN 'nan' WHEN {} = 'Infinity' THEN 'inf' WHEN {} = '-Infinity' THEN '-inf' ELSE {}::float8::text END",
            "CASE WHEN isnan({}) THEN 'nan' WHEN {} = 'inf'::DOUBLE THEN 'inf' WHEN {} = '-inf'::DOUBLE THEN '-inf' ELSE {}::DOUBLE::VARCHAR END",
        ),
        // Carried as the type's own output text (what COPY writes).
        "VARCHAR" => same("CASE WHEN {} IS NOT NULL THEN format('%s', {}) END", "{}"),
        "DATE" => same(
            "CASE WHEN isfinite({}) THEN ({} - DATE '1970-01-01')::text ELSE {}::text END",
            "CASE WHEN isfinite({}) THEN ({} - DATE '1970-01-01')::VARCHAR ELSE {}::VARCHAR END",
        ),
        "TIMESTAMP" | "TIMESTAMP WITH TIME ZONE" => same(
            "CASE WHEN isfinite({}) THEN (extract(epoch FROM {}) * 1000000)::bigint::text ELSE {}::text END",
            "CASE WHEN isfinite({}) THEN epoch_us({})::VARCHAR ELSE {}::VARCHAR END",
        ),
        "BLOB" => same("encode({}, 'hex')", "lower(hex({}))"),
        // json keeps its text, jsonb its normalized text; arrays travel as to_json.
        "JSON" => same("CASE WHEN pg_typeof({})::text LIKE '%[]' THEN to_json({})::text ELSE {}::text END", "{}::VARCHAR"),
        t => panic!("no canonical text for DuckDB type {t}"),
    }
}

/// What pgp's Snowflake mapping does with a column type: its type, or the refusal.
/// Why each type is exact is argued in `snowflake::exactness` and printed below the
/// matrix.
fn snowflake(ty: &ColumnType) -> String {
    match pgp::warehouse::snowflake::exactness(ty) {
        Err(reason) => format!("refused: {}", reason.split(';').next().unwrap_or(&reason)),
        Ok(_) => pgp::warehouse::snowflake::render(ty),
    }
}

/// The Snowflake section: one line per Snowflake type, with the argument.
fn snowflake_arguments() -> String {
    use ColumnType as C;
    let samples = [
        C::Boolean,
        C::BigInt,
        C::Double,
        C::Decimal {
            precision: 38,
            scale: 10,
        },
        C::Text,
        C::Date,
        C::Time,
        C::Timestamp,
        C::TimestampTz,
        C::Json,
        C::Bytes,
        C::List(Box::new(C::Integer)),
    ];
    let mut lines = Vec::new();
    for ty in samples {
        let arg = pgp::warehouse::snowflake::exactness(&ty).expect("exact");
        let name = match &ty {
            C::Decimal { .. } => "NUMBER(p,s)".to_string(),
            t => pgp::warehouse::snowflake::render(t),
        };
        lines.push(format!("- **{name}**: {arg}."));
    }
    lines.join("\n")
}

const BEGIN: &str = "<!-- type-matrix:begin (generated by tests/tests/e2e/type_matrix.rs; PGP_BLESS=1 rewrites it) -->";
const END: &str = "<!-- type-matrix:end -->";

#[tokio::test]
async fn every_type_and_its_array_arrive_exactly_or_are_refused() {
    let mut setup = SETUP.to_string();
    let mut tables = String::new();
    for (i, (ty, values)) in MATRIX.iter().enumerate() {
        let t = table(i);
        setup.push_str(&format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, v {ty}, a {ty}[], m {ty}[][]);\n\
             INSERT INTO {t} VALUES (0, NULL, NULL, NULL), (1, NULL, '{{}}', '{{}}');\n"
        ));
        for (k, v) in values.iter().enumerate() {
            setup.push_str(&format!(
                "INSERT INTO {t} VALUES ({}, {v}, ARRAY[{v}, NULL]::{ty}[], \
                 ARRAY[ARRAY[{v}, NULL], ARRAY[NULL, {v}], ARRAY[{v}, {v}]]::{ty}[][]);\n",
                k + 2
            ));
        }
        tables.push_str(&format!(
            "  {t}:\n    import_db: TEST_DB\n    export_schema: 'matrix'\n    export_table: '{t}'\n    export_table_primary_key: id\n    import_query: SELECT * FROM {t}\n"
        ));
    }
    let w = World::new("typematrix", &setup, &tables).await;
    let r = w.run(w.options(LoadType::Scd, chrono::Utc::now())).await;
    // The session the extractor uses, so that the output functions agree.
    w.db.exec(
        "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'iso_8601'; \
         SET extra_float_digits = 3; SET bytea_output = 'hex'",
    )
    .await;

    let mut failures = Vec::new();
    let mut lines = vec![
        "| PostgreSQL | DuckDB | DuckDB, `[]` | DuckDB, `[][]` | Snowflake | Snowflake, `[]` and `[][]` | edge values |"
            .to_string(),
        "|---|---|---|---|---|---|---|".to_string(),
    ];
    for (i, (ty, values)) in MATRIX.iter().enumerate() {
        let t = table(i);
        let stmt =
            w.db.client
                .prepare(&format!("SELECT v, a, m FROM {t}"))
                .await
                .unwrap();
        let cols: Vec<ColumnType> = stmt
            .columns()
            .iter()
            .map(|c| from_pg_dims(c.type_(), c.type_modifier(), 2))
            .collect();
        let duck_types: Vec<String> = w
            .duck(&format!(
                "SELECT data_type FROM information_schema.columns WHERE table_schema = 'matrix' \
                 AND table_name = '{t}' AND column_name IN ('v', 'a', 'm') ORDER BY ordinal_position"
            ))
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect();
        match outcome(&r, &t) {
            Outcome::Swapped => {}
            o => failures.push(format!("{ty}: {o:?}")),
        }
        if duck_types.len() == 3 {
            for (col, duck_type) in ["v", "a", "m"].iter().zip(&duck_types) {
                let (pe, de) = canon(duck_type, col, col);
                let pg = w
                    .pg(&format!("SELECT id::text, {pe} FROM {t} ORDER BY id"))
                    .await;
                let duck = w.duck(&format!(
                    "SELECT id::VARCHAR, {de} FROM matrix.{t} ORDER BY id"
                ));
                for (p, d) in pg.iter().zip(&duck) {
                    if p != d {
                        failures.push(format!("{ty}.{col}: postgres {p:?} vs duckdb {d:?}"));
                    }
                }
                if pg.len() != duck.len() {
                    failures.push(format!("{ty}.{col}: {} rows vs {}", pg.len(), duck.len()));
                }
            }
        }
        let shown: Vec<String> = values
            .iter()
            .map(|v| {
                let v = if v.len() > 24 {
                    format!(
                        "{}…",
                        &v[..v.char_indices().nth(22).map(|(i, _)| i).unwrap_or(v.len())]
                    )
                } else {
                    v.to_string()
                };
                format!("`{}`", v.replace('|', "\\|").replace('`', "'"))
            })
            .collect();
        lines.push(format!(
            "| `{ty}` | {} | {} | {} | {} | {} | NULL, `{{}}`, {} |",
            duck_types.first().map(String::as_str).unwrap_or("-"),
            duck_types.get(1).map(String::as_str).unwrap_or("-"),
            duck_types.get(2).map(String::as_str).unwrap_or("-"),
            snowflake(&cols[0]),
            snowflake(&cols[1]),
            shown.join(", ")
        ));
    }
    assert!(
        failures.is_empty(),
        "values differ or tables failed:\n{}",
        failures.join("\n")
    );

    bless(BEGIN, END, &lines.join("\n"));
    bless(SF_BEGIN, SF_END, &snowflake_arguments());
}

const SF_BEGIN: &str = "<!-- snowflake-types:begin (generated by tests/tests/e2e/type_matrix.rs; PGP_BLESS=1 rewrites it) -->";
const SF_END: &str = "<!-- snowflake-types:end -->";

/// Check (or with `PGP_BLESS=1` rewrite) the README section between two markers.
fn bless(begin: &str, end: &str, body: &str) {
    let generated = format!("{begin}\n{body}\n{end}");
    let readme_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let (Some(b), Some(e)) = (readme.find(begin), readme.find(end)) else {
        panic!("README.md has no section {begin}; add the markers and run with PGP_BLESS=1");
    };
    let current = &readme[b..e + end.len()];
    if current != generated {
        if std::env::var("PGP_BLESS").is_ok() {
            let updated = format!("{}{generated}{}", &readme[..b], &readme[e + end.len()..]);
            std::fs::write(&readme_path, updated).unwrap();
        } else {
            panic!("README.md's section {begin} is stale; run with PGP_BLESS=1:\n{generated}");
        }
    }
}

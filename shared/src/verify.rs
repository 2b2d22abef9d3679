//! `pgp verify`: does a published target hold what its source holds now?
//!
//! Every load is checked before it becomes visible ([`crate::profile`]), but a target
//! can drift from its source afterwards: rows deleted at the source (an incremental
//! target keeps them forever), rows changed without touching the column a window
//! reads (GitLab's background migrations do this), a window that was never loaded.
//! `verify` compares the two where they live, with aggregates, and never pulls either
//! table through pgp:
//! 1. the source's keys are cut into ranges of about equal rows (ranks of the key in
//!    the source: one sorted pass over the key column);
//! 2. per range, each side computes its row count and the chunk profile's measures
//!    (per column the NULL count and one exact integer, [`crate::profile::Measure`])
//!    in one `GROUP BY` statement;
//! 3. a range that differs is cut again (`fanout` ways, by the source's ranks) until
//!    it holds at most `leaf_rows` source rows; there both sides give the measures
//!    per key, which names the missing, extra and changed keys and the changed
//!    columns. Each reported range carries the SQL to look at it on either side.
//!
//! Work is bounded: a differing table costs at most [`VerifyOptions::max_splits`]
//! bisection steps (three statements each) and reports at most
//! [`VerifyOptions::max_ranges`] ranges; the rest is flagged as truncated.
//!
//! What is compared, against the table's full query now (an incremental query
//! without its window, as a backfill reads it):
//! - an SCD target by its latest snapshot: the rows with its largest `_uploaded_at`
//!   (every row of a run carries the run's);
//! - an incremental target by the latest loaded version of each key
//!   (`QUALIFY row_number() OVER (PARTITION BY key ORDER BY _uploaded_at DESC) = 1`).
//!
//! For a range to hold the same keys on both sides, both must order the key alike:
//! integer keys compare as numbers; text keys byte by byte (`COLLATE "C"` in
//! PostgreSQL, the default binary order of DuckDB and Snowflake); uuid keys as their
//! lower-case text (PostgreSQL orders uuids by their bytes, which is the order of that
//! text, as is DuckDB's UUID order; Snowflake holds the text). The e2e test
//! `text_and_uuid_keys_are_ranged_alike_on_both_sides` fails when an order differs
//! (it did without `COLLATE "C"`, against a linguistic collation). A table whose key is another
//! type or an expression is compared as one range, without bisection.
//!
//! The source side runs in one `REPEATABLE READ` transaction, so every statement
//! reads one snapshot. The target side is read as committed at each statement: run
//! `verify` between loads, or a range may differ at one level and not the next.

use crate::error::{Error, Result};
use crate::ident::{Ident, TableName};
use crate::manifest::{Manifest, PrimaryKey, TableSpec};
use crate::params::{Env, Resolver, RunParams};
use crate::profile::{from_aggregates, Measure, Profile};
use crate::query::{self, Kind};
use crate::source::{Connector, Source};
use crate::types::{Column, ColumnType};
use crate::warehouse::{
    profile_select, schema_state, Dialect, SchemaState, Warehouse, UPLOADED_AT,
};
use async_trait::async_trait;
use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Instant;

/// Runs `verify`'s read-only statements on one side: PostgreSQL (the source), DuckDB
/// or Snowflake (the target).
#[async_trait]
pub trait Reader: Send + Sync {
    fn dialect(&self) -> Dialect;
    /// A table as a `FROM` item.
    fn relation(&self, table: &TableName) -> String;
    /// Run one statement; every cell as text (NULL as `None`).
    async fn rows(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>>;
}

/// Settings of a verification.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Only these manifest tables (all when empty).
    pub tables: Vec<String>,
    /// Values of the queries' non-window placeholders.
    pub params: RunParams,
    /// Ranges the whole key is first cut into.
    pub top_ranges: u64,
    /// Ranges a differing range is cut into.
    pub fanout: u64,
    /// A differing range with at most this many source rows is compared key by key.
    pub leaf_rows: u64,
    /// Most bisection steps per table.
    pub max_splits: usize,
    /// Most differing ranges reported per table.
    pub max_ranges: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            tables: Vec::new(),
            params: RunParams::default(),
            top_ranges: 64,
            fanout: 16,
            leaf_rows: 256,
            max_splits: 64,
            max_ranges: 50,
        }
    }
}

/// A table's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every range holds the same rows with the same measures.
    Equal,
    /// The target differs (see `reason` and `ranges`).
    Differs,
    /// The comparison could not run (see `reason`).
    Failed,
}

/// One table's comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableVerification {
    /// The manifest key.
    pub table: String,
    /// `schema.table` in the warehouse.
    pub target: String,
    pub kind: Kind,
    pub verdict: Verdict,
    /// Why the target differs as a whole (missing, another schema) or why the
    /// comparison could not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The key the ranges are over; `None`: compared as one range (`key_note` says why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_note: Option<String>,
    pub source_rows: u64,
    pub target_rows: u64,
    /// Columns measured by their NULL count only: another non-NULL value there is not
    /// seen (floats, times of day, JSON, arrays, wide decimals; [`Measure::of`] and
    /// `Extra` say why).
    pub unmeasured: Vec<String>,
    /// The differing ranges, in key order.
    pub ranges: Vec<RangeDiff>,
    /// More ranges differ than are reported, or bisection stopped at its budget.
    pub truncated: bool,
    /// Statements run on the source and on the target.
    pub source_statements: u64,
    pub target_statements: u64,
    pub seconds: f64,
}

/// A key range where the target differs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RangeDiff {
    /// `[lo, hi)` (`-inf`, `+inf` when open), `NULL keys`, or `whole table`.
    pub range: String,
    pub lo: Option<String>,
    pub hi: Option<String>,
    pub source_rows: u64,
    pub target_rows: u64,
    /// Columns whose measures differ over the range (`text of a|b` when only the
    /// hash of the texts of a row's columns together does); for a range compared key
    /// by key, the columns of its changed keys.
    pub columns: Vec<String>,
    /// Whether the range was compared key by key (then `missing`, `extra` and
    /// `changed` are complete; otherwise only the counts and columns are known).
    pub by_key: bool,
    /// Keys in the source and not in the target.
    pub missing: Vec<String>,
    /// Keys in the target and not in the source (a key the target holds twice is
    /// listed once per extra copy).
    pub extra: Vec<String>,
    /// Keys on both sides whose values differ.
    pub changed: Vec<ChangedKey>,
    /// The statements that show the range's rows on each side.
    pub source_sql: String,
    pub target_sql: String,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ChangedKey {
    pub key: String,
    pub columns: Vec<String>,
}

/// The exit status of `pgp verify`: 1 when some table differs, else 2 when some
/// table could not be compared, else 0 (every target equals its source).
pub fn exit_code(results: &[TableVerification]) -> i32 {
    if results.iter().any(|r| r.verdict == Verdict::Differs) {
        1
    } else if results.iter().any(|r| r.verdict == Verdict::Failed) {
        2
    } else {
        0
    }
}

/// Compare the selected tables of `manifest` with their targets in `wh`, reading the
/// source through `sources`.
pub async fn verify(
    manifest: &Manifest,
    opts: &VerifyOptions,
    sources: &dyn Connector,
    env: &dyn Env,
    wh: &dyn Warehouse,
) -> Result<Vec<TableVerification>> {
    let unknown: Vec<&str> = opts
        .tables
        .iter()
        .filter(|t| manifest.table(t).is_none())
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(Error::Config(format!(
            "--table {}: not in {}",
            unknown.join(", "),
            manifest.path.display()
        )));
    }
    let target_reader = wh
        .reader()
        .ok_or_else(|| Error::Config(format!("{} cannot run verify's statements", wh.url())))?;
    let src = sources.connect(&manifest.connection_info).await?;
    let source_reader = src
        .reader()
        .ok_or_else(|| Error::Config(format!("{} cannot run verify's statements", src.name())))?;
    let resolver = Resolver::new(&opts.params, env, None);
    let mut out = Vec::new();
    for spec in manifest
        .tables
        .iter()
        .filter(|t| opts.tables.is_empty() || opts.tables.contains(&t.name))
    {
        let started = Instant::now();
        let kind = query::classify(&spec.import_query);
        let mut v = TableVerification {
            table: spec.name.clone(),
            target: spec.target.to_string(),
            kind,
            verdict: Verdict::Equal,
            reason: None,
            key: None,
            key_note: None,
            source_rows: 0,
            target_rows: 0,
            unmeasured: Vec::new(),
            ranges: Vec::new(),
            truncated: false,
            source_statements: 0,
            target_statements: 0,
            seconds: 0.0,
        };
        let sides = Counters::default();
        let r = verify_table(
            spec,
            kind,
            opts,
            &resolver,
            src.as_ref(),
            source_reader,
            wh,
            target_reader,
            &sides,
            &mut v,
        )
        .await;
        // The snapshot transaction ends whatever happened (a no-op when none began).
        let _ = source_reader.rows("ROLLBACK").await;
        if let Err(e) = r {
            v.verdict = Verdict::Failed;
            v.reason = Some(e.to_string());
        }
        v.source_statements = sides.source.load(AtomicOrdering::Relaxed);
        v.target_statements = sides.target.load(AtomicOrdering::Relaxed);
        v.seconds = started.elapsed().as_secs_f64();
        out.push(v);
    }
    Ok(out)
}

#[derive(Default)]
struct Counters {
    source: AtomicU64,
    target: AtomicU64,
}

/// How a key is ordered on both sides (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyOrder {
    Int,
    Text,
    Uuid,
}

#[derive(Debug, Clone)]
struct Key {
    column: Ident,
    order: KeyOrder,
}

impl Key {
    /// Key values as the sides print them, in the key's order.
    fn cmp(&self, a: &str, b: &str) -> Ordering {
        match self.order {
            KeyOrder::Int => match (a.parse::<i128>(), b.parse::<i128>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                _ => a.cmp(b),
            },
            KeyOrder::Text | KeyOrder::Uuid => a.as_bytes().cmp(b.as_bytes()),
        }
    }
}

/// The key ranges are over: `export_table_primary_key` when it is one column of the
/// query of a type both sides order alike; otherwise why not.
fn key_of(spec: &TableSpec, columns: &[Column]) -> std::result::Result<Key, String> {
    let name = match &spec.primary_key {
        PrimaryKey::Column(k) => k,
        PrimaryKey::Expression(e) => {
            return Err(format!(
                "export_table_primary_key `{e}` is an expression, not a column"
            ))
        }
    };
    let col = columns
        .iter()
        .find(|c| c.name.as_str().eq_ignore_ascii_case(name.as_str()))
        .ok_or_else(|| format!("export_table_primary_key `{name}` is not a column of the query"))?;
    let order = match col.ty {
        ColumnType::SmallInt | ColumnType::Integer | ColumnType::BigInt => KeyOrder::Int,
        ColumnType::Text => KeyOrder::Text,
        ColumnType::Uuid => KeyOrder::Uuid,
        _ => {
            return Err(format!(
                "key `{}` is {}, which the warehouse may order differently",
                col.name, col.pg_type
            ))
        }
    };
    Ok(Key {
        column: col.name.clone(),
        order,
    })
}

/// A half-open range of keys, or the rows whose key is NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Range {
    lo: Option<String>,
    hi: Option<String>,
    nulls: bool,
}

impl Range {
    const ALL: Range = Range {
        lo: None,
        hi: None,
        nulls: false,
    };

    fn label(&self) -> String {
        if self.nulls {
            return "NULL keys".into();
        }
        format!(
            "[{}, {})",
            self.lo.as_deref().unwrap_or("-inf"),
            self.hi.as_deref().unwrap_or("+inf")
        )
    }
}

/// One side's count and measures over a range (or for one key).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Agg {
    rows: u64,
    profile: Profile,
    /// Per column with an [`Extra`] measure, in column order, its sum.
    extras: Vec<i128>,
}

/// What `verify` measures of a column beyond the load check's [`Measure`]: both sides
/// are SQL here, so values can be measured by what the engines compute alike, where
/// the extractor (which measures the text it ships, without a calendar) cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    /// The sum of the first 32 bits of each value's MD5, as an integer. A character
    /// count does not see a text changed to another of the same length ('7' to 'x'),
    /// which the load check can live with (it compares the bytes just shipped) but a
    /// comparison of two stores cannot. All three engines hash the same UTF-8 bytes.
    /// Only for values whose text is the same on both sides: text, and uuid
    /// (lower-case in all three). Floats and JSON print differently per engine, and
    /// bytea's hex is upper-case in DuckDB.
    Hash,
    /// The sum of microseconds since 1970-01-01 00:00 UTC (a timestamp without time
    /// zone read as UTC), of finite values: PostgreSQL's `±infinity` are left out on
    /// both sides (Snowflake has none: pgp refuses them there).
    Micros,
    /// The sum of days since 1970-01-01, of finite values.
    Days,
}

impl Extra {
    fn of(c: &Column) -> Option<Extra> {
        match c.ty {
            ColumnType::Text | ColumnType::Uuid => Some(Extra::Hash),
            ColumnType::Timestamp | ColumnType::TimestampTz => Some(Extra::Micros),
            ColumnType::Date => Some(Extra::Days),
            _ => None,
        }
    }

    /// The measure of a non-NULL value of column `c` (quoted, of type `ty`) as an
    /// integer (NULL for a value left out).
    fn expr(self, dialect: Dialect, c: &str, ty: &ColumnType) -> String {
        match (self, dialect) {
            (Extra::Hash, _) => md5_int(dialect, &value_text(dialect, c, ty)),
            // Whole seconds, then the microseconds of the second: exact also where
            // `extract` returns a double (before PostgreSQL 14).
            (Extra::Micros, Dialect::Postgres) => format!(
                "CASE WHEN isfinite({c}) THEN extract(epoch FROM date_trunc('second', {c}))::bigint * 1000000 \
                 + extract(microseconds FROM {c})::bigint % 1000000 END"
            ),
            (Extra::Micros, Dialect::DuckDb) => {
                format!("CASE WHEN isfinite({c}) THEN epoch_us({c}) END")
            }
            (Extra::Micros, Dialect::Snowflake) => format!("DATE_PART(epoch_microsecond, {c})"),
            (Extra::Days, Dialect::Postgres) => {
                format!("CASE WHEN isfinite({c}) THEN {c} - DATE '1970-01-01' END")
            }
            (Extra::Days, Dialect::DuckDb) => {
                format!("CASE WHEN isfinite({c}) THEN date_diff('day', DATE '1970-01-01', {c}) END")
            }
            (Extra::Days, Dialect::Snowflake) => format!("DATEDIFF(day, DATE '1970-01-01', {c})"),
        }
    }
}

/// The text of a value of column `c` (quoted) as the dialect renders it: PostgreSQL's
/// output text (`concat`: see profile_select; NULL gives ''), DuckDB's VARCHAR.
fn value_text(dialect: Dialect, c: &str, ty: &ColumnType) -> String {
    match dialect {
        Dialect::Postgres => format!("concat({c})"),
        Dialect::DuckDb if *ty == ColumnType::Uuid => format!("CAST({c} AS VARCHAR)"),
        Dialect::DuckDb | Dialect::Snowflake => c.to_string(),
    }
}

/// The texts of `columns` (quoted, with their types) in one text, separated by the
/// unit separator (U+001F), NULL as '' (the NULL counts tell those apart).
fn row_text(dialect: Dialect, columns: &[(String, &ColumnType)]) -> String {
    match dialect {
        Dialect::Postgres | Dialect::DuckDb => format!(
            "concat({})",
            columns
                .iter()
                .map(|(c, ty)| value_text(dialect, c, ty))
                .collect::<Vec<_>>()
                .join(", chr(31), ")
        ),
        // CONCAT and || are NULL when an argument is.
        Dialect::Snowflake => columns
            .iter()
            .map(|(c, _)| format!("COALESCE({c}, '')"))
            .collect::<Vec<_>>()
            .join(" || CHR(31) || "),
    }
}

/// The first 32 bits of the MD5 of `text`'s UTF-8 bytes, as an integer.
fn md5_int(dialect: Dialect, text: &str) -> String {
    match dialect {
        // UTF-8 bytes whatever the database's encoding.
        Dialect::Postgres => {
            format!("('x' || substr(md5(convert_to({text}, 'UTF8')), 1, 8))::bit(32)::bigint")
        }
        Dialect::DuckDb => format!("CAST('0x' || substr(md5({text}), 1, 8) AS BIGINT)"),
        // Snowflake reads hex with TO_NUMBER(…, 'XXXXXXXX'), which the emulator does
        // not implement; the digits' places are summed instead (POSITION … IN is
        // standard SQL).
        Dialect::Snowflake => (0..8)
            .map(|i| {
                format!(
                    "(POSITION(SUBSTR(MD5({text}), {}, 1) IN '0123456789abcdef') - 1) * {}",
                    i + 1,
                    1u64 << (4 * (7 - i))
                )
            })
            .collect::<Vec<_>>()
            .join(" + "),
    }
}

/// How finely a statement measures [`Extra::Hash`] columns: over ranges, one MD5 of
/// each row's hashed texts together (detection: one hash per row instead of one per
/// column, which measured 1.9 s against 4 x 1.4 s on the bench table's four text
/// columns); per key, one per column (which column changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grain {
    Ranges,
    Keys,
}

/// One extra sum a statement reads back, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    /// The row hash of these hashed columns (indexes into the columns).
    Rows(Vec<usize>),
    /// The [`Extra`] measure of one column.
    Column(usize, Extra),
}

fn slots(columns: &[Column], grain: Grain) -> Vec<Slot> {
    let mut out = Vec::new();
    if grain == Grain::Ranges {
        let hashed: Vec<usize> = (0..columns.len())
            .filter(|&i| Extra::of(&columns[i]) == Some(Extra::Hash))
            .collect();
        if !hashed.is_empty() {
            out.push(Slot::Rows(hashed));
        }
    }
    for (i, c) in columns.iter().enumerate() {
        match Extra::of(c) {
            Some(Extra::Hash) if grain == Grain::Ranges => {}
            Some(e) => out.push(Slot::Column(i, e)),
            None => {}
        }
    }
    out
}

/// One side of the comparison: where its rows are and how its SQL is written.
struct Side<'a> {
    reader: &'a dyn Reader,
    /// The rows compared, as a `FROM` item.
    from: String,
    columns: &'a [Column],
    key: Option<&'a Key>,
    what: &'static str,
    statements: &'a AtomicU64,
}

impl Side<'_> {
    fn dialect(&self) -> Dialect {
        self.reader.dialect()
    }

    fn quote(&self, name: &Ident) -> String {
        quote(self.dialect(), name)
    }

    fn lit(&self, v: &str) -> String {
        match self.dialect() {
            Dialect::Snowflake => crate::warehouse::snowflake::lit(v),
            Dialect::DuckDb | Dialect::Postgres => crate::warehouse::duckdb::sql_string(v),
        }
    }

    fn key(&self) -> &Key {
        self.key.expect("a keyed comparison")
    }

    /// The key column.
    fn key_ref(&self) -> String {
        self.quote(&self.key().column)
    }

    /// The key as compared and ordered.
    fn key_cmp(&self) -> String {
        let k = self.key_ref();
        match (self.key().order, self.dialect()) {
            (KeyOrder::Text, Dialect::Postgres) => format!("({k} COLLATE \"C\")"),
            _ => k,
        }
    }

    /// A key value as a literal (an integer key's value is checked to be one).
    fn bound(&self, v: &str) -> Result<String> {
        match self.key().order {
            KeyOrder::Int => v
                .parse::<i128>()
                .map(|n| n.to_string())
                .map_err(|_| Error::Config(format!("key value {v:?} is not an integer"))),
            KeyOrder::Text | KeyOrder::Uuid => Ok(self.lit(v)),
        }
    }

    fn condition(&self, r: &Range) -> Result<String> {
        if r.nulls {
            return Ok(format!("{} IS NULL", self.key_ref()));
        }
        let k = self.key_cmp();
        let mut parts = Vec::new();
        if let Some(lo) = &r.lo {
            parts.push(format!("{k} >= {}", self.bound(lo)?));
        }
        if let Some(hi) = &r.hi {
            parts.push(format!("{k} < {}", self.bound(hi)?));
        }
        if parts.is_empty() {
            parts.push(format!("{} IS NOT NULL", self.key_ref()));
        }
        Ok(parts.join(" AND "))
    }

    /// The profile's measures, then the sum of each [`Slot`] of `grain`.
    fn measures(&self, grain: Grain) -> String {
        let d = self.dialect();
        let mut items = profile_select(self.columns, |c| self.quote(&c.name), d);
        // NUMBER(38,0): see profile_select (the emulator's SUM casts to DOUBLE).
        let sum_type = match d {
            Dialect::Snowflake => "NUMBER(38,0)",
            Dialect::DuckDb | Dialect::Postgres => "BIGINT",
        };
        for slot in slots(self.columns, grain) {
            let value = match slot {
                Slot::Rows(cols) => {
                    let cols: Vec<(String, &ColumnType)> = cols
                        .iter()
                        .map(|&i| (self.quote(&self.columns[i].name), &self.columns[i].ty))
                        .collect();
                    md5_int(d, &row_text(d, &cols))
                }
                Slot::Column(i, extra) => {
                    let c = &self.columns[i];
                    let q = self.quote(&c.name);
                    format!(
                        "CASE WHEN {q} IS NOT NULL THEN {} END",
                        extra.expr(d, &q, &c.ty)
                    )
                }
            };
            items.push_str(&format!(
                ", CAST(sum(CAST({value} AS {sum_type})) AS {})",
                self.text()
            ));
        }
        items
    }

    fn text(&self) -> &'static str {
        self.dialect().text_type()
    }

    async fn run(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        self.statements.fetch_add(1, AtomicOrdering::Relaxed);
        let started = Instant::now();
        let rows = self.reader.rows(sql).await;
        tracing::debug!(
            side = self.what,
            seconds = started.elapsed().as_secs_f64(),
            %sql,
            "verify statement"
        );
        rows
    }

    fn agg(&self, row: &[Option<String>], from: usize) -> Result<Agg> {
        let ctx = format!("verify: read the {} side's aggregates", self.what);
        let rows = row
            .get(from)
            .and_then(|v| v.as_deref())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| Error::Config(format!("{ctx}: unreadable row count {row:?}")))?;
        let n = 2 * self.columns.len();
        let measures = row.get(from + 1..from + 1 + n).unwrap_or_default();
        let extras = row
            .get(from + 1 + n..)
            .unwrap_or_default()
            .iter()
            .map(|v| Measure::Sum.read(v.as_deref()))
            .collect::<Option<Vec<i128>>>()
            .ok_or_else(|| Error::Config(format!("{ctx}: unreadable sums {row:?}")))?;
        Ok(Agg {
            rows,
            profile: from_aggregates(self.columns, measures, &ctx)?,
            extras,
        })
    }

    /// The whole table's count and measures.
    async fn whole(&self) -> Result<Agg> {
        let sql = format!(
            "SELECT CAST(count(*) AS {}), {} FROM {}",
            self.text(),
            self.measures(Grain::Ranges),
            self.from
        );
        let rows = self.run(&sql).await?;
        self.agg(rows.first().map(Vec::as_slice).unwrap_or_default(), 0)
    }

    fn buckets_sql(&self, r: &Range, bounds: &[String], nulls: bool) -> Result<String> {
        let k = self.key_cmp();
        let mut case = String::from("CASE");
        if nulls {
            case.push_str(&format!(" WHEN {} IS NULL THEN -1", self.key_ref()));
        }
        for (i, b) in bounds.iter().enumerate() {
            case.push_str(&format!(" WHEN {k} < {} THEN {i}", self.bound(b)?));
        }
        case.push_str(&format!(" ELSE {} END", bounds.len()));
        let filter = if nulls {
            String::new()
        } else {
            format!(" WHERE {}", self.condition(r)?)
        };
        Ok(format!(
            "SELECT CAST({case} AS {t}), CAST(count(*) AS {t}), {} FROM {}{filter} GROUP BY 1",
            self.measures(Grain::Ranges),
            self.from,
            t = self.text()
        ))
    }

    /// Count and measures per bucket of `r` cut at `bounds` (bucket `i` holds the keys
    /// from `bounds[i-1]` to `bounds[i]`); with `nulls`, `r` is the whole table and
    /// bucket -1 holds the rows with a NULL key.
    async fn buckets(
        &self,
        r: &Range,
        bounds: &[String],
        nulls: bool,
    ) -> Result<BTreeMap<i64, Agg>> {
        let sql = self.buckets_sql(r, bounds, nulls)?;
        let mut out = BTreeMap::new();
        for row in self.run(&sql).await? {
            let b = row
                .first()
                .and_then(|v| v.as_deref())
                .and_then(|v| v.trim().parse::<i64>().ok())
                .ok_or_else(|| Error::Config(format!("verify: unreadable bucket in {row:?}")))?;
            out.insert(b, self.agg(&row, 1)?);
        }
        Ok(out)
    }

    /// Where to cut `r` into `n` ranges of about equal rows: every `ceil(rows / n)`-th
    /// key by rank (the source's side only).
    async fn splits(&self, r: &Range, n: u64) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT CAST(pgp_k AS {t}) FROM (SELECT {k} AS pgp_k, row_number() OVER (ORDER BY {kc}) AS pgp_rn, \
             count(*) OVER () AS pgp_n FROM {from} WHERE {cond}) AS pgp_s \
             WHERE pgp_rn > 1 AND (pgp_rn - 1) % ((pgp_n + {n} - 1) / {n}) = 0 ORDER BY pgp_rn",
            t = self.text(),
            k = self.key_ref(),
            kc = self.key_cmp(),
            from = self.from,
            cond = self.condition(r)?,
        );
        let mut out: Vec<String> = Vec::new();
        for row in self.run(&sql).await? {
            let Some(Some(v)) = row.into_iter().next() else {
                continue;
            };
            // Equal keys (a key that is not unique) give one bound; a bound at the
            // range's own start would make an empty range.
            if out.last() != Some(&v) && r.lo.as_ref() != Some(&v) {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Count and measures per key in `r`; `None` when more than `cap` keys.
    async fn per_key(&self, r: &Range, cap: u64) -> Result<Option<BTreeMap<String, Agg>>> {
        let k = self.key_ref();
        let sql = format!(
            "SELECT CAST({k} AS {t}), CAST(count(*) AS {t}), {} FROM {} WHERE {} GROUP BY {k} LIMIT {}",
            self.measures(Grain::Keys),
            self.from,
            self.condition(r)?,
            cap + 1,
            t = self.text(),
        );
        let rows = self.run(&sql).await?;
        if rows.len() as u64 > cap {
            return Ok(None);
        }
        let mut out = BTreeMap::new();
        for row in rows {
            let key = row
                .first()
                .cloned()
                .flatten()
                .unwrap_or_else(|| "NULL".into());
            out.insert(key, self.agg(&row, 1)?);
        }
        Ok(Some(out))
    }

    /// The statement that shows a range's rows.
    fn inspect(&self, r: Option<&Range>) -> Result<String> {
        Ok(match r {
            None => format!("SELECT * FROM {}", self.from),
            Some(r) => format!(
                "SELECT * FROM {} WHERE {} ORDER BY {}",
                self.from,
                self.condition(r)?,
                self.key_cmp()
            ),
        })
    }
}

/// A column name as the dialect writes it (Snowflake folds pgp's names to upper case).
fn quote(dialect: Dialect, name: &Ident) -> String {
    match dialect {
        Dialect::Snowflake => crate::warehouse::snowflake::q(name.as_str()),
        Dialect::DuckDb | Dialect::Postgres => name.quoted(),
    }
}

/// The target's rows that stand for the source now: the latest snapshot of an SCD
/// target, the latest version of each key of an incremental one.
fn target_rows(
    reader: &dyn Reader,
    target: &TableName,
    kind: Kind,
    key: Option<&Key>,
) -> Result<String> {
    let rel = reader.relation(target);
    let at = quote(
        reader.dialect(),
        &Ident::parse("column", UPLOADED_AT).expect("a valid identifier"),
    );
    Ok(match (kind, key) {
        (Kind::Scd, _) => format!(
            "(SELECT * FROM {rel} WHERE {at} = (SELECT max({at}) FROM {rel})) AS pgp_t"
        ),
        (Kind::Incremental, Some(k)) => format!(
            "(SELECT * FROM {rel} QUALIFY row_number() OVER (PARTITION BY {} ORDER BY {at} DESC) = 1) AS pgp_t",
            quote(reader.dialect(), &k.column)
        ),
        (Kind::Incremental, None) => {
            return Err(Error::Config(
                "an incremental target is compared by the latest version of each key, and this table has no usable key".into(),
            ))
        }
    })
}

/// The columns whose measures differ (a row hash that differs names its columns
/// together: which of them changed is known per key).
fn differing(a: &Agg, b: &Agg, columns: &[Column], grain: Grain) -> Vec<String> {
    let mut out: Vec<String> = columns
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            let (x, y) = (a.profile.columns.get(*i), b.profile.columns.get(*i));
            match (x, y) {
                (Some(x), Some(y)) => {
                    x.nulls != y.nulls
                        || (x.value.is_some() && y.value.is_some() && x.value != y.value)
                }
                _ => x != y,
            }
        })
        .map(|(_, c)| c.name.as_str().to_string())
        .collect();
    for (n, slot) in slots(columns, grain).into_iter().enumerate() {
        if a.extras.get(n) == b.extras.get(n) {
            continue;
        }
        let name = match slot {
            Slot::Column(i, _) => columns[i].name.as_str().to_string(),
            Slot::Rows(cols) if cols.len() == 1 => columns[cols[0]].name.as_str().to_string(),
            Slot::Rows(cols) => format!(
                "text of {}",
                cols.iter()
                    .map(|&i| columns[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join("|")
            ),
        };
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn verify_table(
    spec: &TableSpec,
    kind: Kind,
    opts: &VerifyOptions,
    resolver: &Resolver<'_>,
    src: &dyn Source,
    source_reader: &dyn Reader,
    wh: &dyn Warehouse,
    target_reader: &dyn Reader,
    counters: &Counters,
    v: &mut TableVerification,
) -> Result<()> {
    let query = crate::plan::full_query(spec, kind, resolver)?;
    let columns = src.describe(&spec.name, &query).await?;
    v.unmeasured = columns
        .iter()
        .filter(|c| Measure::of(&c.ty) == Measure::Nulls && Extra::of(c).is_none())
        .map(|c| c.name.as_str().to_string())
        .collect();
    let actual = wh.columns(&spec.target).await?;
    match schema_state(wh, &columns, actual.as_deref()) {
        SchemaState::Same => {}
        SchemaState::Missing => {
            v.verdict = Verdict::Differs;
            v.reason = Some(format!("target {} does not exist", spec.target));
            return Ok(());
        }
        SchemaState::Changed(d) => {
            v.verdict = Verdict::Differs;
            v.reason = Some(format!("target {} has another schema: {d}", spec.target));
            return Ok(());
        }
    }
    let key = match key_of(spec, &columns) {
        Ok(k) => {
            v.key = Some(k.column.as_str().to_string());
            Some(k)
        }
        Err(why) => {
            v.key_note = Some(format!("compared as one range: {why}"));
            None
        }
    };
    let source = Side {
        reader: source_reader,
        from: format!("(\n{}\n) AS pgp_src", query::strip_terminator(&query)),
        columns: &columns,
        key: key.as_ref(),
        what: "source",
        statements: &counters.source,
    };
    let target = Side {
        reader: target_reader,
        from: target_rows(target_reader, &spec.target, kind, key.as_ref())?,
        columns: &columns,
        key: key.as_ref(),
        what: "target",
        statements: &counters.target,
    };
    source
        .run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    // The planner cannot estimate how many buckets a CASE makes and plans every row a
    // group: a sort of the whole table (spilled to disk) and one aggregating process.
    // Without sorts it hashes the 64 groups, partially in each parallel worker; the
    // bench table's first statement went from 9.2 s to 4.3 s. JIT compiling a
    // statement that runs once cost another 1.1 s.
    source.run("SET LOCAL enable_sort = off").await?;
    source.run("SET LOCAL jit = off").await?;

    if key.is_none() {
        let (s, t) = futures::try_join!(source.whole(), target.whole())?;
        v.source_rows = s.rows;
        v.target_rows = t.rows;
        if s != t {
            v.verdict = Verdict::Differs;
            v.ranges.push(range_diff(None, &s, &t, &source, &target)?);
        }
        return Ok(());
    }
    let key = key.as_ref().expect("checked above");

    // The first level: the whole key in `top_ranges`, NULL keys apart.
    let bounds = source.splits(&Range::ALL, opts.top_ranges).await?;
    // Both sides at once: the source's and the target's engines work in parallel.
    let (s, t) = futures::try_join!(
        source.buckets(&Range::ALL, &bounds, true),
        target.buckets(&Range::ALL, &bounds, true),
    )?;
    v.source_rows = s.values().map(|a| a.rows).sum();
    v.target_rows = t.values().map(|a| a.rows).sum();
    let mut pending: VecDeque<(Range, Agg, Agg)> = VecDeque::new();
    queue_differing(&Range::ALL, &bounds, true, &s, &t, &mut pending);

    let cap = opts.leaf_rows.saturating_mul(4).max(opts.leaf_rows);
    let mut splits = 0usize;
    while let Some((r, s, t)) = pending.pop_front() {
        if v.ranges.len() >= opts.max_ranges {
            v.truncated = true;
            break;
        }
        let small = r.nulls || s.rows == 0 || t.rows == 0 || s.rows <= opts.leaf_rows;
        if !small && splits < opts.max_splits {
            let bounds = source.splits(&r, opts.fanout).await?;
            if !bounds.is_empty() {
                splits += 1;
                let (ss, ts) = futures::try_join!(
                    source.buckets(&r, &bounds, false),
                    target.buckets(&r, &bounds, false),
                )?;
                queue_differing(&r, &bounds, false, &ss, &ts, &mut pending);
                continue;
            }
        }
        if !small {
            v.truncated = true;
        }
        let mut d = range_diff(Some(&r), &s, &t, &source, &target)?;
        if small && s.rows.max(t.rows) <= cap {
            let (sk, tk) = futures::try_join!(source.per_key(&r, cap), target.per_key(&r, cap))?;
            if let (Some(sk), Some(tk)) = (sk, tk) {
                compare_keys(&sk, &tk, &columns, &mut d);
                // What changed in the rows on both sides (a missing or extra row moves
                // every column's measures, which says nothing more).
                d.columns = columns
                    .iter()
                    .map(|c| c.name.as_str().to_string())
                    .filter(|n| d.changed.iter().any(|k| k.columns.contains(n)))
                    .collect();
            }
        }
        let sort = |v: &mut Vec<String>| v.sort_by(|a, b| key.cmp(a, b));
        sort(&mut d.missing);
        sort(&mut d.extra);
        d.changed.sort_by(|a, b| key.cmp(&a.key, &b.key));
        v.ranges.push(d);
    }
    if !v.ranges.is_empty() || v.truncated {
        v.verdict = Verdict::Differs;
    }
    v.ranges.sort_by(|a, b| match (&a.lo, &b.lo) {
        _ if a.range == b.range => Ordering::Equal,
        (None, None) => a.hi.is_some().cmp(&b.hi.is_some()),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => key.cmp(x, y),
    });
    Ok(())
}

/// A differing range (`None`: the whole table) as its counts, the columns whose
/// measures differ, and the SQL that shows it; its keys are not compared yet.
fn range_diff(
    r: Option<&Range>,
    s: &Agg,
    t: &Agg,
    source: &Side<'_>,
    target: &Side<'_>,
) -> Result<RangeDiff> {
    Ok(RangeDiff {
        range: r.map_or_else(|| "whole table".into(), Range::label),
        lo: r.and_then(|r| r.lo.clone()),
        hi: r.and_then(|r| r.hi.clone()),
        source_rows: s.rows,
        target_rows: t.rows,
        columns: differing(s, t, source.columns, Grain::Ranges),
        source_sql: source.inspect(r)?,
        target_sql: target.inspect(r)?,
        ..RangeDiff::default()
    })
}

/// Queue the buckets of `r` (cut at `bounds`) whose sides differ.
fn queue_differing(
    r: &Range,
    bounds: &[String],
    nulls: bool,
    s: &BTreeMap<i64, Agg>,
    t: &BTreeMap<i64, Agg>,
    out: &mut VecDeque<(Range, Agg, Agg)>,
) {
    let first = if nulls { -1 } else { 0 };
    for b in first..=bounds.len() as i64 {
        let (sa, ta) = (s.get(&b).cloned(), t.get(&b).cloned());
        if sa == ta {
            continue;
        }
        let sub = if b == -1 {
            Range {
                lo: None,
                hi: None,
                nulls: true,
            }
        } else {
            let i = b as usize;
            Range {
                lo: if i == 0 {
                    r.lo.clone()
                } else {
                    Some(bounds[i - 1].clone())
                },
                hi: if i == bounds.len() {
                    r.hi.clone()
                } else {
                    Some(bounds[i].clone())
                },
                nulls: false,
            }
        };
        out.push_back((sub, sa.unwrap_or_default(), ta.unwrap_or_default()));
    }
}

/// Name the missing, extra and changed keys of a range compared key by key.
fn compare_keys(
    s: &BTreeMap<String, Agg>,
    t: &BTreeMap<String, Agg>,
    columns: &[Column],
    d: &mut RangeDiff,
) {
    d.by_key = true;
    for (k, sa) in s {
        match t.get(k) {
            None => d.missing.push(k.clone()),
            // Copies of a key: the measures of unequal copies do not compare.
            Some(ta) if ta.rows != sa.rows => {
                for _ in sa.rows..ta.rows {
                    d.extra.push(k.clone());
                }
                for _ in ta.rows..sa.rows {
                    d.missing.push(k.clone());
                }
            }
            Some(ta) => {
                let cols = differing(sa, ta, columns, Grain::Keys);
                if !cols.is_empty() {
                    d.changed.push(ChangedKey {
                        key: k.clone(),
                        columns: cols,
                    });
                }
            }
        }
    }
    for (k, ta) in t {
        if !s.contains_key(k) {
            for _ in 0..ta.rows {
                d.extra.push(k.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warehouse::conformance::col;

    /// A side whose statements are only written here, never run.
    struct Written(Dialect);

    #[async_trait]
    impl Reader for Written {
        fn dialect(&self) -> Dialect {
            self.0
        }
        fn relation(&self, t: &TableName) -> String {
            format!("\"DB\".{}", t.quoted().to_uppercase())
        }
        async fn rows(&self, _: &str) -> Result<Vec<Vec<Option<String>>>> {
            unreachable!("statements are only written in these tests")
        }
    }

    fn target() -> TableName {
        TableName::new(
            Ident::parse("schema", "gitlab_com").unwrap(),
            Ident::parse("table", "labels").unwrap(),
        )
    }

    /// Snowflake's statements, pinned: the latest version of each key, the bucket of
    /// each key in binary text order with backslashes and quotes escaped as
    /// Snowflake reads literals, every sum cast to NUMBER(38,s), and the MD5 of each
    /// row's texts (NULL as '', unit separators between) summed by its digits' places.
    #[test]
    fn snowflake_statements_are_pinned() {
        let columns = vec![
            col("name", ColumnType::Text),
            col(
                "amount",
                ColumnType::Decimal {
                    precision: 12,
                    scale: 2,
                },
            ),
            col("note", ColumnType::Text),
        ];
        let key = Key {
            column: Ident::parse("key", "name").unwrap(),
            order: KeyOrder::Text,
        };
        let reader = Written(Dialect::Snowflake);
        let counter = AtomicU64::new(0);
        let side = Side {
            reader: &reader,
            from: target_rows(&reader, &target(), Kind::Incremental, Some(&key)).unwrap(),
            columns: &columns,
            key: Some(&key),
            what: "target",
            statements: &counter,
        };
        let hash: Vec<String> = (0..8)
            .map(|i| {
                format!(
                    "(POSITION(SUBSTR(MD5(COALESCE(\"NAME\", '') || CHR(31) || COALESCE(\"NOTE\", '')), {}, 1) IN '0123456789abcdef') - 1) * {}",
                    i + 1,
                    16u64.pow(7 - i)
                )
            })
            .collect();
        let r = Range {
            lo: Some("a'b".into()),
            hi: Some("c\\d".into()),
            nulls: false,
        };
        assert_eq!(
            side.buckets_sql(&r, &["b".into()], false).unwrap(),
            format!(
                "SELECT CAST(CASE WHEN \"NAME\" < 'b' THEN 0 ELSE 1 END AS TEXT), CAST(count(*) AS TEXT), \
                 CAST(count(*) - count(\"NAME\") AS TEXT), CAST(sum(CAST(length(\"NAME\") AS NUMBER(38,0))) AS TEXT), \
                 CAST(count(*) - count(\"AMOUNT\") AS TEXT), CAST(sum(CAST(\"AMOUNT\" AS NUMBER(38,2))) AS TEXT), \
                 CAST(count(*) - count(\"NOTE\") AS TEXT), CAST(sum(CAST(length(\"NOTE\") AS NUMBER(38,0))) AS TEXT), \
                 CAST(sum(CAST({} AS NUMBER(38,0))) AS TEXT) \
                 FROM (SELECT * FROM \"DB\".\"GITLAB_COM\".\"LABELS\" QUALIFY row_number() OVER (PARTITION BY \"NAME\" ORDER BY \"_UPLOADED_AT\" DESC) = 1) AS pgp_t \
                 WHERE \"NAME\" >= 'a''b' AND \"NAME\" < 'c\\\\d' GROUP BY 1",
                hash.join(" + ")
            )
        );
        assert_eq!(
            target_rows(&reader, &target(), Kind::Scd, Some(&key)).unwrap(),
            "(SELECT * FROM \"DB\".\"GITLAB_COM\".\"LABELS\" WHERE \"_UPLOADED_AT\" = (SELECT max(\"_UPLOADED_AT\") FROM \"DB\".\"GITLAB_COM\".\"LABELS\")) AS pgp_t"
        );
        assert!(target_rows(&reader, &target(), Kind::Incremental, None).is_err());
    }

    /// The source side orders text keys byte by byte and refuses an integer bound
    /// that is not one (a bound is spliced into SQL).
    #[test]
    fn source_keys_are_ordered_as_bytes_and_bounds_checked() {
        let columns = vec![col("id", ColumnType::BigInt)];
        let reader = Written(Dialect::Postgres);
        let counter = AtomicU64::new(0);
        let text = Key {
            column: Ident::parse("key", "id").unwrap(),
            order: KeyOrder::Text,
        };
        let side = Side {
            reader: &reader,
            from: "(\nSELECT 1\n) AS pgp_src".into(),
            columns: &columns,
            key: Some(&text),
            what: "source",
            statements: &counter,
        };
        assert_eq!(
            side.condition(&Range {
                lo: Some("x".into()),
                hi: None,
                nulls: false
            })
            .unwrap(),
            "(\"id\" COLLATE \"C\") >= 'x'"
        );
        let int = Key {
            column: Ident::parse("key", "id").unwrap(),
            order: KeyOrder::Int,
        };
        let side = Side {
            key: Some(&int),
            ..side
        };
        assert!(side.bound("1; DROP TABLE t").is_err());
        assert_eq!(side.bound("-42").unwrap(), "-42");
        assert_eq!(int.cmp("9", "10"), Ordering::Less);
        assert_eq!(text.cmp("9", "10"), Ordering::Greater);
    }

    fn agg(rows: u64, nulls: u64, value: i128, hash: i128) -> Agg {
        Agg {
            rows,
            profile: Profile {
                columns: vec![crate::profile::ColumnProfile {
                    nulls,
                    value: Some(value),
                }],
            },
            extras: vec![hash],
        }
    }

    /// Key by key: a key only in the source is missing, only in the target extra (once
    /// per copy), a key held twice is extra once, and equal counts with other measures
    /// or hashes are a change of that column.
    #[test]
    fn keys_are_classified_missing_extra_and_changed() {
        let columns = vec![col("name", ColumnType::Text)];
        let s: BTreeMap<String, Agg> = [
            ("1".into(), agg(1, 0, 5, 10)),
            ("2".into(), agg(1, 0, 5, 10)),
            ("3".into(), agg(1, 0, 5, 10)),
            ("4".into(), agg(1, 0, 5, 10)),
        ]
        .into();
        let t: BTreeMap<String, Agg> = [
            ("2".into(), agg(1, 0, 5, 10)),
            ("3".into(), agg(2, 0, 10, 20)),
            ("4".into(), agg(1, 0, 5, 11)),
            ("5".into(), agg(2, 0, 5, 10)),
        ]
        .into();
        let mut d = RangeDiff::default();
        compare_keys(&s, &t, &columns, &mut d);
        assert!(d.by_key);
        assert_eq!(d.missing, vec!["1"]);
        assert_eq!(d.extra, vec!["3", "5", "5"]);
        assert_eq!(d.changed.len(), 1);
        assert_eq!(d.changed[0].key, "4");
        assert_eq!(d.changed[0].columns, vec!["name"]);
    }

    /// Buckets queue only where the sides differ, with the bounds of their place and
    /// the range's own ends outside; bucket -1 is the NULL keys.
    #[test]
    fn differing_buckets_become_ranges() {
        let bounds = vec!["10".to_string(), "20".to_string()];
        let same = agg(3, 0, 1, 1);
        let s: BTreeMap<i64, Agg> = [
            (-1, same.clone()),
            (0, same.clone()),
            (1, same.clone()),
            (2, same.clone()),
        ]
        .into();
        let t: BTreeMap<i64, Agg> =
            [(0, same.clone()), (1, agg(3, 1, 1, 1)), (2, same.clone())].into();
        let r = Range {
            lo: Some("5".into()),
            hi: Some("30".into()),
            nulls: false,
        };
        let mut out = VecDeque::new();
        queue_differing(&r, &bounds, true, &s, &t, &mut out);
        let got: Vec<(String, u64, u64)> = out
            .iter()
            .map(|(r, s, t)| (r.label(), s.rows, t.rows))
            .collect();
        assert_eq!(
            got,
            vec![("NULL keys".into(), 3, 0), ("[10, 20)".into(), 3, 3)]
        );
        let t: BTreeMap<i64, Agg> = [(0, same.clone()), (1, same.clone())].into();
        let mut out = VecDeque::new();
        queue_differing(&r, &bounds, false, &s, &t, &mut out);
        let got: Vec<String> = out.iter().map(|(r, _, _)| r.label()).collect();
        assert_eq!(got, vec!["[20, 30)"]);
    }
}

//! Snowflake: the production warehouse, over its connector protocol ([`client`]).
//!
//! Names: Snowflake folds unquoted identifiers to upper case, and GitLab's pipeline
//! created unquoted names, so dbt models read `RAW.GITLAB_COM.USERS`. pgp keeps that:
//! every schema, table and column name is upper-cased and then quoted (quoting keeps
//! `$`, reserved words and leading underscores safe; names are checked `Ident`s).
//!
//! The primitives of [`crate::warehouse`], in Snowflake terms:
//! - loading: `COPY INTO <load table> (columns) FROM (SELECT $1::type, ..., '<uploaded
//!   at>'::TIMESTAMP_TZ, '<task instance>', '<load id>' FROM @stage) FILES = ('<object>')
//!   FILE_FORMAT = (<the core's format>) FORCE = TRUE` inside the caller's transaction;
//!   COPY's per-file result (`status`, `rows_loaded`, `errors_seen`, `first_error`) is
//!   the count and the error. FORCE because the ledger, not Snowflake's 64-day load
//!   metadata, decides what was loaded: a rolled-back load must be loadable again, and
//!   two loaders loading one object are told apart by their load id, not prevented;
//! - the lock of a target: `UPDATE` of the one row of the target's own lock table
//!   `_PGP."LOCK$<SCHEMA>$<TABLE>"`. Snowflake runs one UPDATE/DELETE/MERGE per table
//!   at a time and holds it to the end of the transaction
//!   (<https://docs.snowflake.com/en/sql-reference/transactions#resource-locking>), so a
//!   table per target keeps publishers of different targets from waiting on each other.
//!   Waiting is bounded by the session's `LOCK_TIMEOUT` (set at login), then the
//!   statement fails and the step is retried;
//! - the swap: `ALTER TABLE <from> SWAP WITH <to>` (a rename when `to` is missing),
//!   atomic for readers, after `COMMENT ON TABLE <from>` with the run's marker;
//! - the ledger `_PGP.LOAD_LEDGER` and run table `_PGP.RUNS`: plain tables, no keys.
//!
//! A transaction holds the session (one statement at a time) from `BEGIN` to `COMMIT`.
//! One dropped half-way (request cancelled, deadline) is rolled back at once by a task
//! that keeps the session until `ROLLBACK` returns; without a runtime to run it, the
//! session remembers it and rolls back before its next statement.
//!
//! Emulator fallbacks (`copy=staged`, `swap=rename`, `arrays=variant` in the URL; used
//! against fakesnow, which lacks COPY transformations, several FILE_FORMAT options,
//! `SWAP WITH` and an ARRAY type of its own): COPY into an all-text scratch table (one
//! per load attempt) with the format minus its default-valued options, then `INSERT ...
//! SELECT` with the same casts; rename the target away and the new table in; expect
//! `VARIANT` where an `ARRAY` was created. Production SQL is unit-tested below as text.

pub mod client;
pub mod config;
pub mod jwt;

use self::client::{Client, Rows};
use self::config::{CopyMode, SnowflakeConfig, Stage, SwapMode};
use super::{
    profile_select, ActualColumn, AppendJob, AppendJobs, ChosenLoad, Dialect, LedgerSummary,
    LoadRecord, RunMeta, RunRecord, RunState, RunStatus, RunUpdate, Staged, TableSchema,
    Transaction, Warehouse, LOAD_ID, RECORD_END, TASK_INSTANCE, UPLOADED_AT,
};
use crate::error::{Error, ErrorKind, Result};
use crate::format::{Compression, SNOWFLAKE_FILE_FORMAT};
use crate::ident::TableName;
use crate::profile::Profile;
use crate::storage::ObjectKey;
use crate::types::{Column, ColumnType};
use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// A Snowflake database pgp loads into.
pub struct Snowflake {
    cfg: SnowflakeConfig,
    client: Arc<Mutex<Client>>,
    /// Emulator only (`copy=staged`): a second session for the scratch tables a load
    /// copies into, which must be created outside the loading transaction (fakesnow
    /// cannot run DDL inside one).
    side: Arc<Mutex<Option<Client>>>,
    ready: tokio::sync::OnceCell<()>,
}

/// `"NAME"`: upper-cased, quoted.
pub(crate) fn q(name: &str) -> String {
    format!("\"{}\"", name.to_uppercase())
}

/// A string literal: Snowflake reads backslash escapes inside quotes, so both `\` and
/// `'` are escaped.
pub(crate) fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// The Snowflake type a column is created with, as `information_schema` names it
/// (NUMBER with its precision and scale).
pub fn render(ty: &ColumnType) -> String {
    match ty {
        ColumnType::Boolean => "BOOLEAN".into(),
        ColumnType::SmallInt | ColumnType::Integer | ColumnType::BigInt => "NUMBER(38,0)".into(),
        ColumnType::Real | ColumnType::Double => "FLOAT".into(),
        ColumnType::Decimal { precision, scale } => format!("NUMBER({precision},{scale})"),
        ColumnType::Text | ColumnType::Uuid => "TEXT".into(),
        ColumnType::Date => "DATE".into(),
        ColumnType::Time => "TIME".into(),
        ColumnType::Timestamp => "TIMESTAMP_NTZ".into(),
        ColumnType::TimestampTz => "TIMESTAMP_TZ".into(),
        ColumnType::Json | ColumnType::JsonArray => "VARIANT".into(),
        ColumnType::Bytes => "BINARY".into(),
        ColumnType::List(_) => "ARRAY".into(),
    }
}

/// The largest scale of Snowflake's NUMBER: "precision 1 to 38, scale 0 to 37"
/// (<https://docs.snowflake.com/en/sql-reference/data-types-numeric>,
/// "NUMBER"). PostgreSQL allows `numeric(38,38)`.
pub const MAX_NUMBER_SCALE: u8 = 37;

/// The most digits of a JSON number that `PARSE_JSON` stores exactly (NUMBER's 38).
pub const JSON_NUMBER_DIGITS: u8 = 38;

/// Why Snowflake cannot hold a column type exactly (see [`Warehouse::refuse`]).
pub fn refuse(ty: &ColumnType) -> Option<String> {
    match ty {
        ColumnType::Decimal { scale, .. } if *scale > MAX_NUMBER_SCALE => Some(format!(
            "Snowflake's NUMBER has at most {MAX_NUMBER_SCALE} decimal places and this column \
             has {scale}; rounding would change values (cast it in import_query to a \
             numeric it can hold, or to text)"
        )),
        ColumnType::List(e) => refuse(e),
        _ => None,
    }
}

/// Why Snowflake holds every value of a column type exactly (the argument, from
/// Snowflake's documentation), or why it cannot ([`refuse`]). Values outside a
/// type's documented range fail the COPY (`ON_ERROR = ABORT_STATEMENT`), which fails
/// the table before anything becomes visible; none is altered. The README's type
/// table prints these arguments (generated by `tests/tests/e2e/type_matrix.rs`).
pub fn exactness(ty: &ColumnType) -> std::result::Result<&'static str, String> {
    if let Some(reason) = refuse(ty) {
        return Err(reason);
    }
    Ok(match ty {
        ColumnType::Boolean => {
            "BOOLEAN reads PostgreSQL's `t`/`f` as TRUE/FALSE (data-types-logical: \
             \"Strings: 't', 'f' … are converted\")"
        }
        ColumnType::SmallInt | ColumnType::Integer | ColumnType::BigInt => {
            "NUMBER(38,0) holds 38 digits (data-types-numeric), more than `bigint`'s 19"
        }
        ColumnType::Real | ColumnType::Double => {
            "FLOAT is an IEEE 754 double with NaN and ±inf (data-types-numeric, \"Special \
             values\"); PostgreSQL writes the shortest text that reads back as the same \
             value, so a `double precision` is the same double, and a `real` the double \
             nearest its shortest decimal, which rounds back to the same `real`"
        }
        ColumnType::Decimal { .. } => {
            "NUMBER(p,s) with PostgreSQL's precision and scale (precision up to 38, scale \
             up to 37: data-types-numeric); the text is read without rounding"
        }
        ColumnType::Text | ColumnType::Uuid => {
            "VARCHAR(134217728) holds any UTF-8 text up to 128 MB (data-types-text); the \
             CSV format keeps every byte (no escapes, `TRIM_SPACE = FALSE`, \
             `SKIP_BYTE_ORDER_MARK = FALSE`, `REPLACE_INVALID_CHARACTERS = FALSE`); \
             PostgreSQL's 1 GB values over 128 MB fail the COPY"
        }
        ColumnType::Date => {
            "DATE, from ISO text (data-types-datetime); exact for the years 1582–9999 \
             Snowflake documents; `±infinity` and BC dates fail the COPY"
        }
        ColumnType::Time => {
            "TIME(9) holds microseconds (data-types-datetime: 00:00:00 to \
             23:59:59.999999999); PostgreSQL's `24:00:00` fails the COPY"
        }
        ColumnType::Timestamp => {
            "TIMESTAMP_NTZ(9) holds the wall-clock value to the nanosecond \
             (data-types-datetime); years 1582–9999 as for DATE, infinities and BC fail \
             the COPY"
        }
        ColumnType::TimestampTz => {
            "TIMESTAMP_TZ(9) stores the UTC instant with the offset given (+00: the \
             session runs in UTC), and PostgreSQL keeps only the instant \
             (data-types-datetime); range as for TIMESTAMP_NTZ"
        }
        ColumnType::Json | ColumnType::JsonArray => {
            "VARIANT from PARSE_JSON keeps every JSON value (strings, booleans, nulls, \
             nesting; data-types-semistructured); numbers of more than 38 digits, which it \
             would store as DOUBLE, are refused when extracted; duplicate keys fail (the \
             default strict mode: functions/parse_json); `json`'s whitespace and key order \
             are text, not value, and are not kept"
        }
        ColumnType::Bytes => {
            "BINARY(67108864) from hex (`TO_BINARY(…, 'HEX')`) holds any bytes up to \
             64 MB (data-types-text, BINARY); larger values fail the COPY"
        }
        ColumnType::List(_) => {
            "ARRAY from PARSE_JSON of `to_json`: each element a VARIANT (numbers as \
             NUMBER within 38 digits or DOUBLE for floats, NaN/±Infinity and \
             dates/times/uuids as their PostgreSQL text strings), NULL elements as JSON \
             null, any number of dimensions nested (data-types-semistructured, ARRAY)"
        }
    })
}

/// The type a column is *created* with: [`render`], with text and binary columns at
/// Snowflake's maximum sizes instead of their defaults (VARCHAR 16 MB, BINARY 8 MB),
/// so that every value PostgreSQL can send up to 128 MB / 64 MB loads
/// (<https://docs.snowflake.com/en/sql-reference/data-types-text>: "If no length is
/// specified, the default is 16777216", maximum 134217728 bytes; BINARY maximum
/// 67108864 bytes). `information_schema` still names them TEXT and BINARY, which is
/// what the schema check compares, so existing targets are not seen as changed.
/// `sized` is false only on the emulator path (`copy=staged`): fakesnow's DuckDB takes
/// no size on BLOB.
pub fn create_type(ty: &ColumnType, sized: bool) -> String {
    match ty {
        ColumnType::Text | ColumnType::Uuid if sized => "VARCHAR(134217728)".into(),
        ColumnType::Bytes if sized => "BINARY(67108864)".into(),
        ty => render(ty),
    }
}

/// The expression turning staged text field `f` into the column's value.
fn cast(c: &Column, f: &str) -> String {
    match &c.ty {
        ColumnType::Text | ColumnType::Uuid => f.to_string(),
        ColumnType::Json | ColumnType::JsonArray => format!("PARSE_JSON({f})"),
        ColumnType::List(_) => format!("PARSE_JSON({f})::ARRAY"),
        ColumnType::Bytes => format!("TO_BINARY({f}, 'HEX')"),
        // PostgreSQL writes Infinity/-Infinity; Snowflake's spellings are inf/-inf.
        ColumnType::Real | ColumnType::Double => format!(
            "(CASE {f} WHEN 'Infinity' THEN 'inf' WHEN '-Infinity' THEN '-inf' ELSE {f} END)::FLOAT"
        ),
        ty => format!("{f}::{}", render(ty)),
    }
}

/// The inline FILE_FORMAT of a COPY.
fn file_format(c: Compression) -> String {
    let fmt = match c {
        Compression::Gzip => SNOWFLAKE_FILE_FORMAT.to_string(),
        Compression::None => {
            SNOWFLAKE_FILE_FORMAT.replace("COMPRESSION = GZIP", "COMPRESSION = NONE")
        }
        // Snowflake's CSV file format: "ZSTD: Zstandard v0.8 (and higher)" among the
        // COMPRESSION values it loads. (fakesnow reads GZIP and NONE only.)
        Compression::Zstd => {
            SNOWFLAKE_FILE_FORMAT.replace("COMPRESSION = GZIP", "COMPRESSION = ZSTD")
        }
    };
    format!("({fmt})")
}

/// Options of [`SNOWFLAKE_FILE_FORMAT`] that only restate Snowflake's documented CSV
/// defaults. The emulator (fakesnow) refuses options it does not implement, so the
/// emulator-only `copy=staged` path leaves these out: the format it sends means the
/// same to Snowflake. Production (`copy=transform`) always sends the full format.
const DEFAULT_VALUED_OPTIONS: [&str; 7] = [
    "RECORD_DELIMITER = '\\n'",
    "ESCAPE = NONE",
    "TRIM_SPACE = FALSE",
    "ERROR_ON_COLUMN_COUNT_MISMATCH = TRUE",
    "REPLACE_INVALID_CHARACTERS = FALSE",
    "ENCODING = 'UTF8'",
    "TIMESTAMP_FORMAT = AUTO",
];

/// Options the emulator does not implement (it refuses them) although Snowflake needs
/// them: left out on the emulator-only path, so what fakesnow proves there excludes
/// them. `SKIP_BYTE_ORDER_MARK = FALSE` keeps a U+FEFF that begins a file's first value
/// (see [`SNOWFLAKE_FILE_FORMAT`]); the production SQL is pinned by a unit test.
const EMULATOR_UNSUPPORTED_OPTIONS: [&str; 1] = ["SKIP_BYTE_ORDER_MARK = FALSE"];

/// [`file_format`] without [`DEFAULT_VALUED_OPTIONS`] and
/// [`EMULATOR_UNSUPPORTED_OPTIONS`], for the emulator path.
fn emulator_file_format(c: Compression) -> String {
    let mut fmt = file_format(c);
    for option in DEFAULT_VALUED_OPTIONS
        .iter()
        .chain(EMULATOR_UNSUPPORTED_OPTIONS.iter())
    {
        fmt = fmt.replace(&format!(" {option}"), "");
    }
    fmt
}

/// Target column list and value expressions (over fields named by `field(i)`) of a load.
fn load_columns(
    schema: &TableSchema,
    run: &RunMeta,
    load_id: &str,
    field: impl Fn(usize) -> String,
) -> (Vec<String>, Vec<String>) {
    let mut cols: Vec<String> = schema.columns.iter().map(|c| q(c.name.as_str())).collect();
    let mut exprs: Vec<String> = schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| cast(c, &field(i)))
        .collect();
    cols.push(q(UPLOADED_AT));
    exprs.push(format!(
        "{}::TIMESTAMP_TZ",
        lit(&run.uploaded_at.to_rfc3339())
    ));
    if schema.task_instance {
        cols.push(q(TASK_INSTANCE));
        exprs.push(match &run.task_instance {
            Some(t) => lit(t),
            None => "NULL::TEXT".into(),
        });
    }
    cols.push(q(LOAD_ID));
    exprs.push(lit(load_id));
    // The record-end field, after the query's columns (see `record_end_marker`).
    cols.push(q(RECORD_END));
    exprs.push(format!("{}::NUMBER(1,0)", field(schema.columns.len())));
    (cols, exprs)
}

/// The column definitions of a table pgp creates: the query's columns, the metadata
/// columns, and for a load table (`stamped`) the load stamp and the record-end field
/// (`NOT NULL`: Snowflake enforces it, and that is the record-end check).
pub fn table_columns(schema: &TableSchema, stamped: bool, sized: bool) -> Vec<String> {
    let mut cols: Vec<String> = schema
        .columns
        .iter()
        .map(|c| format!("{} {}", q(c.name.as_str()), create_type(&c.ty, sized)))
        .collect();
    cols.push(format!("{} TIMESTAMP_TZ", q(UPLOADED_AT)));
    if schema.task_instance {
        cols.push(format!("{} TEXT", q(TASK_INSTANCE)));
    }
    if stamped {
        cols.push(format!("{} TEXT", q(LOAD_ID)));
        cols.push(format!("{} NUMBER(1,0) NOT NULL", q(RECORD_END)));
    }
    cols
}

/// The production load: one COPY with a transformation.
pub fn copy_transform_sql(
    table: &str,
    schema: &TableSchema,
    run: &RunMeta,
    stage: &str,
    object: &ObjectKey,
    compression: Compression,
    load_id: &str,
) -> String {
    let (cols, exprs) = load_columns(schema, run, load_id, |i| format!("${}", i + 1));
    format!(
        "COPY INTO {table} ({}) FROM (SELECT {} FROM {stage}) FILES = ({}) FILE_FORMAT = {} ON_ERROR = ABORT_STATEMENT FORCE = TRUE",
        cols.join(", "),
        exprs.join(", "),
        lit(object.as_str()),
        file_format(compression)
    )
}

/// The production swap.
pub fn swap_sql(temp: &str, target: &str) -> String {
    format!("ALTER TABLE {temp} SWAP WITH {target}")
}

/// `DATABASE."_PGP"."NAME"`.
fn ledger(cfg: &SnowflakeConfig, name: &str) -> String {
    format!("{}.\"_PGP\".{}", q(&cfg.database), q(name))
}

/// `DATABASE."SCHEMA"."TABLE"`.
fn full(cfg: &SnowflakeConfig, t: &TableName) -> String {
    format!(
        "{}.{}.{}",
        q(&cfg.database),
        q(t.schema.as_str()),
        q(t.table.as_str())
    )
}

/// The lock table of one target.
fn lock_table(cfg: &SnowflakeConfig, target: &TableName) -> String {
    ledger(
        cfg,
        &format!("LOCK${}${}", target.schema.as_str(), target.table.as_str()),
    )
}

/// `INSERT INTO to (…) SELECT … FROM from WHERE <stamp> <which>`: the rows of chosen
/// load attempts, without the stamp.
fn insert_stamped_sql(
    cfg: &SnowflakeConfig,
    from: &TableName,
    to: &TableName,
    schema: &TableSchema,
    which: &str,
) -> String {
    let mut cols: Vec<String> = schema.columns.iter().map(|c| q(c.name.as_str())).collect();
    cols.push(q(UPLOADED_AT));
    if schema.task_instance {
        cols.push(q(TASK_INSTANCE));
    }
    let cols = cols.join(", ");
    format!(
        "INSERT INTO {to} ({cols}) SELECT {cols} FROM {from} WHERE {stamp} {which}",
        to = full(cfg, to),
        from = full(cfg, from),
        stamp = q(LOAD_ID),
    )
}

/// `UPDATE` of a run's record, only where `and` (`" AND …"`, or empty) holds too.
fn update_run_sql(
    cfg: &SnowflakeConfig,
    target: &TableName,
    run_id: &str,
    update: &RunUpdate,
    and: &str,
) -> String {
    let set = match update {
        RunUpdate::Claim(c) => format!(
            "STATE = 'claimed', CLAIM = {}, CLAIMED_AT = CURRENT_TIMESTAMP()",
            lit(c)
        ),
        RunUpdate::Published { rows } => format!("STATE = 'published', ROWS = {rows}"),
        RunUpdate::Abandoned { reason } => {
            format!("STATE = 'abandoned', REASON = {}", lit(reason))
        }
    };
    format!(
        "UPDATE {} SET {set}, UPDATED_AT = CURRENT_TIMESTAMP() WHERE TARGET = {} AND RUN_ID = {}{and}",
        ledger(cfg, "RUNS"),
        lit(&target.to_string()),
        lit(run_id)
    )
}

/// The statement that takes a target's lock (the first write of a transaction that
/// needs it: it holds the lock's row until the transaction ends).
fn lock_sql(cfg: &SnowflakeConfig, target: &TableName) -> String {
    format!("UPDATE {} SET N = N + 1", lock_table(cfg, target))
}

/// The session setting that ends a transaction whose statement failed (rolled back),
/// instead of leaving it open for the client's next statement.
pub const ABORT_ON_ERROR: &str = "ALTER SESSION SET TRANSACTION_ABORT_ON_ERROR = TRUE";

/// The statements of an [`AppendJob`], one transaction that decides nothing in the
/// client: the first write takes the target's lock, and every later write is guarded
/// by the run still being claimed by the job's claim id (read under that lock), so the
/// job inserts its loads and records the run published, or changes nothing — what
/// `protocol::publish::run_append_job` does load by load, here one `INSERT`. Rows are recorded from the
/// ledger's counts of the loads (each checked against its source when it committed, and
/// a committed load never changes), not counted again. Snowflake runs the list as one
/// asynchronous multi-statement request (`MULTI_STATEMENT_COUNT`, `asyncExec`), so that
/// it goes on after the loader has answered ([`AppendJobs`] for [`Snowflake`]).
///
/// It first sets `TRANSACTION_ABORT_ON_ERROR`: a request stops at its first failing
/// statement, and by default Snowflake would leave the transaction open — holding the
/// target's lock in a session nobody uses again until it expires (hours). Aborted at
/// once, it releases the lock and changes nothing; the claim expires and a redelivery
/// takes the publish over.
pub fn append_job_sql(cfg: &SnowflakeConfig, job: &AppendJob) -> Vec<String> {
    let runs = ledger(cfg, "RUNS");
    // The claim is still this job's, and the target still carries the marker it had
    // when claimed (no swap since: see `run_append_job`).
    let marker = job.marker.as_deref().map_or("NULL".to_string(), lit);
    let claimed = format!(
        "STATE = 'claimed' AND CLAIM = {} AND ({}) IS NOT DISTINCT FROM {marker}",
        lit(&job.claim),
        table_info_sql(cfg, &job.target, "COMMENT")
    );
    let this_claim = format!(
        "TARGET = {} AND RUN_ID = {} AND {claimed}",
        lit(&job.target.to_string()),
        lit(&job.run_id),
    );
    let mut s = vec![
        ABORT_ON_ERROR.to_string(),
        "BEGIN".to_string(),
        lock_sql(cfg, &job.target),
    ];
    // One INSERT of all the chosen loads: the request's text stays within Snowflake's
    // 1 MB statement limit for ~20,000 chunks, where one INSERT per chunk (its column
    // list twice) would reach it at a few hundred chunks of a wide table.
    if !job.loads.is_empty() {
        let ids: Vec<String> = job.loads.iter().map(|l| lit(&l.load_id)).collect();
        s.push(insert_stamped_sql(
            cfg,
            &job.load_table,
            &job.target,
            &job.schema,
            &format!(
                "IN ({}) AND EXISTS (SELECT 1 FROM {runs} WHERE {this_claim})",
                ids.join(", ")
            ),
        ));
    }
    let rows: u64 = job.loads.iter().map(|l| l.rows).sum();
    s.push(update_run_sql(
        cfg,
        &job.target,
        &job.run_id,
        &RunUpdate::Published { rows },
        &format!(" AND {claimed}"),
    ));
    s.push("COMMIT".to_string());
    s
}

/// The profile query of one load attempt's rows (see [`super::profile_select`]).
fn profile_sql(
    cfg: &SnowflakeConfig,
    table: &TableName,
    schema: &TableSchema,
    load_id: &str,
) -> String {
    format!(
        "SELECT {} FROM {} WHERE {} = {}",
        profile_select(&schema.columns, |c| q(c.name.as_str()), Dialect::Snowflake),
        full(cfg, table),
        q(LOAD_ID),
        lit(load_id)
    )
}

fn stage_ref(cfg: &SnowflakeConfig) -> String {
    match &cfg.stage {
        Stage::Named(n) => format!("@{n}"),
        Stage::Create { .. } => format!("@{}", ledger(cfg, "PGP_STAGE")),
    }
}

fn num(v: &Option<String>) -> Option<i64> {
    // Snowflake sends NUMBER(38,0) as text, sometimes with a `.0` scale.
    v.as_deref()
        .and_then(|s| s.split('.').next())
        .and_then(|s| s.parse().ok())
}

const RUN_COLUMNS: &str = "TARGET, RUN_ID, LOAD_TABLE, MODE, CHUNKS, FINGERPRINT, STATE, CLAIM, \
     DATEDIFF('second', CLAIMED_AT, CURRENT_TIMESTAMP()), ROWS, REASON";

fn run_records(target: &TableName, r: &Rows) -> Result<Vec<RunRecord>> {
    r.rows.iter().map(|row| run_record(target, row)).collect()
}

/// One row of [`RUN_COLUMNS`].
fn run_record(target: &TableName, row: &[Option<String>]) -> Result<RunRecord> {
    let text = |i: usize| row[i].clone().unwrap_or_default();
    Ok(RunRecord {
        target: target.clone(),
        run_id: text(1),
        load_table: super::duckdb::parse_table(&text(2))?,
        mode: text(3),
        chunks: num(&row[4]).unwrap_or(0) as u64,
        fingerprint: text(5),
        state: RunState::parse(&text(6))?,
        claim: row[7].clone(),
        claim_age_seconds: num(&row[8]),
        rows: num(&row[9]).map(|n| n as u64),
        reason: row[10].clone(),
    })
}

/// Every run with its ledger totals, newest first: [`RUN_COLUMNS`], then the ages and
/// the totals (one load per chunk for the rows).
fn run_overview_sql(cfg: &SnowflakeConfig) -> String {
    format!(
        "SELECT {RUN_COLUMNS}, DATEDIFF('second', CREATED_AT, CURRENT_TIMESTAMP()), \
         DATEDIFF('second', GREATEST(UPDATED_AT, COALESCE(L_LAST, UPDATED_AT)), CURRENT_TIMESTAMP()), \
         COALESCE(L_CHUNKS, 0), COALESCE(L_ROWS, 0), COALESCE(L_LOADS, 0) \
         FROM {runs} LEFT JOIN ( \
           SELECT L_LOAD_TABLE, L_RUN_ID, COUNT(*) AS L_CHUNKS, SUM(R) AS L_ROWS, SUM(N) AS L_LOADS, \
                  MAX(LAST) AS L_LAST FROM ( \
             SELECT LOAD_TABLE AS L_LOAD_TABLE, RUN_ID AS L_RUN_ID, CHUNK, MAX(ROWS) AS R, \
                    COUNT(*) AS N, MAX(LOADED_AT) AS LAST \
             FROM {ledger} GROUP BY LOAD_TABLE, RUN_ID, CHUNK) \
           GROUP BY L_LOAD_TABLE, L_RUN_ID) \
         ON L_LOAD_TABLE = LOAD_TABLE AND L_RUN_ID = RUN_ID \
         ORDER BY CREATED_AT DESC, RUN_ID",
        runs = ledger(cfg, "RUNS"),
        ledger = ledger(cfg, "LOAD_LEDGER"),
    )
}

fn columns_sql(cfg: &SnowflakeConfig, table: &TableName) -> String {
    format!(
        "SELECT COLUMN_NAME, DATA_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE FROM {}.INFORMATION_SCHEMA.COLUMNS \
         WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} ORDER BY ORDINAL_POSITION",
        q(&cfg.database),
        lit(&table.schema.as_str().to_uppercase()),
        lit(&table.table.as_str().to_uppercase())
    )
}

fn actual_columns(r: &Rows) -> Option<Vec<ActualColumn>> {
    let cols: Vec<ActualColumn> = r
        .rows
        .iter()
        .map(|row| {
            let ty = row[1].clone().unwrap_or_default().to_uppercase();
            let data_type = match (ty.as_str(), &row[2], &row[3]) {
                ("NUMBER", Some(p), Some(s)) => format!("NUMBER({p},{s})"),
                _ => ty,
            };
            ActualColumn {
                name: row[0].clone().unwrap_or_default(),
                data_type,
            }
        })
        .collect();
    if cols.is_empty() {
        None
    } else {
        Some(cols)
    }
}

/// `SELECT <col> FROM INFORMATION_SCHEMA.TABLES` for one table.
fn table_info_sql(cfg: &SnowflakeConfig, t: &TableName, col: &str) -> String {
    format!(
        "SELECT {col} FROM {}.INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
        q(&cfg.database),
        lit(&t.schema.as_str().to_uppercase()),
        lit(&t.table.as_str().to_uppercase())
    )
}

/// Run a statement of the emulator-only rename fallback, retrying transient failures a
/// few times.
async fn emulator_retry(c: &mut Client, sql: &str) -> Result<Rows> {
    let mut pause = std::time::Duration::from_millis(100);
    for attempt in 1.. {
        match c.query(sql).await {
            Err(e) if e.is_retriable() && attempt < 8 => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
            r => return r,
        }
    }
    unreachable!("the loop returns")
}

/// Sum a COPY result's `rows_loaded`, failing on any file that did not load whole.
fn copy_rows(cfg: &SnowflakeConfig, object: &ObjectKey, r: &Rows) -> Result<u64> {
    let ctx = format!("{} load {object}", cfg.display());
    let (Some(status), Some(loaded)) = (r.col("status"), r.col("rows_loaded")) else {
        // COPY answers "Copy executed with 0 files processed." when it found no file:
        // the object is missing from the stage, which waiting does not fix.
        return Err(Error::warehouse(
            ctx,
            format!(
                "COPY loaded no file (is {object} in the stage?): {:?}",
                r.rows
            ),
            ErrorKind::Permanent,
        ));
    };
    let errors = r.col("errors_seen");
    let first = r.col("first_error");
    let mut rows = 0u64;
    for row in &r.rows {
        let st = row[status].as_deref().unwrap_or("");
        let seen: u64 = errors
            .and_then(|i| row[i].as_deref())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if !st.eq_ignore_ascii_case("LOADED") || seen > 0 {
            let why = first.and_then(|i| row[i].clone()).unwrap_or_default();
            return Err(Error::warehouse(
                ctx,
                format!("COPY status {st}, {seen} errors: {why}"),
                ErrorKind::Permanent,
            ));
        }
        rows += row[loaded]
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(rows)
}

impl Snowflake {
    pub fn new(cfg: SnowflakeConfig) -> Result<Self> {
        let client = Client::new(cfg.clone())?;
        Ok(Snowflake {
            cfg,
            client: Arc::new(Mutex::new(client)),
            side: Arc::new(Mutex::new(None)),
            ready: tokio::sync::OnceCell::new(),
        })
    }

    fn db(&self) -> String {
        q(&self.cfg.database)
    }

    fn table(&self, t: &TableName) -> String {
        full(&self.cfg, t)
    }

    /// The session, with any transaction a dropped caller left open rolled back.
    async fn session(&self) -> Result<OwnedMutexGuard<Client>> {
        let mut c = self.client.clone().lock_owned().await;
        if c.in_txn {
            c.query("ROLLBACK").await?;
            c.in_txn = false;
        }
        Ok(c)
    }

    /// Run one statement (also for operators and tests: `pgp` itself only runs the
    /// statements in this module).
    pub async fn query(&self, sql: &str) -> Result<Rows> {
        self.setup().await?;
        self.session().await?.query(sql).await
    }

    /// The ledger schema and tables, and the stage when pgp owns it; once per process.
    async fn setup(&self) -> Result<()> {
        self.ready
            .get_or_try_init(|| async {
                let mut c = self.session().await?;
                let l = |n: &str| ledger(&self.cfg, n);
                let mut stmts = vec![
                    format!("CREATE SCHEMA IF NOT EXISTS {}.\"_PGP\"", self.db()),
                    format!(
                        "CREATE TABLE IF NOT EXISTS {} (LOAD_TABLE TEXT NOT NULL, RUN_ID TEXT NOT NULL, CHUNK NUMBER(38,0) NOT NULL, OBJECT TEXT NOT NULL, LOAD_ID TEXT NOT NULL, ROWS NUMBER(38,0) NOT NULL, LOADED_AT TIMESTAMP_TZ DEFAULT CURRENT_TIMESTAMP())",
                        l("LOAD_LEDGER")
                    ),
                    format!(
                        "CREATE TABLE IF NOT EXISTS {} (TARGET TEXT NOT NULL, RUN_ID TEXT NOT NULL, LOAD_TABLE TEXT NOT NULL, MODE TEXT NOT NULL, CHUNKS NUMBER(38,0) NOT NULL, FINGERPRINT TEXT NOT NULL, STATE TEXT NOT NULL, CLAIM TEXT, CLAIMED_AT TIMESTAMP_TZ, ROWS NUMBER(38,0), REASON TEXT, CREATED_AT TIMESTAMP_TZ DEFAULT CURRENT_TIMESTAMP(), UPDATED_AT TIMESTAMP_TZ DEFAULT CURRENT_TIMESTAMP())",
                        l("RUNS")
                    ),
                ];
                if let Stage::Create { url, integration } = &self.cfg.stage {
                    let integ = integration
                        .as_ref()
                        .map(|i| format!(" STORAGE_INTEGRATION = {i}"))
                        .unwrap_or_default();
                    stmts.push(format!(
                        "CREATE STAGE IF NOT EXISTS {} URL = {}{integ}",
                        l("PGP_STAGE"),
                        lit(url)
                    ));
                }
                for s in stmts {
                    c.query(&s).await?;
                }
                Ok::<_, Error>(())
            })
            .await
            .map(|_| ())
    }

    async fn info_schema(&self, c: &mut Client, t: &TableName, col: &str) -> Result<Rows> {
        c.query(&table_info_sql(&self.cfg, t, col)).await
    }
}

/// The target's side of `pgp verify` (Snowflake sends every cell as text).
#[async_trait]
impl crate::verify::Reader for Snowflake {
    fn dialect(&self) -> Dialect {
        Dialect::Snowflake
    }
    fn relation(&self, table: &TableName) -> String {
        self.table(table)
    }
    async fn rows(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        Ok(self.query(sql).await?.rows)
    }
}

/// With `publish=job`: an append's publish goes to Snowflake as one asynchronous
/// multi-statement request ([`append_job_sql`]) on a session of its own, which nothing
/// else uses while the job's transaction runs in it; the session is left to expire.
#[async_trait]
impl AppendJobs for Snowflake {
    async fn submit(&self, job: AppendJob) -> Result<()> {
        self.setup().await?;
        let statements = append_job_sql(&self.cfg, &job);
        let mut c = Client::new(self.cfg.clone())?;
        let query_id = c.submit_async(&statements).await?;
        tracing::info!(run_id = %job.run_id, target_table = %job.target, claim = %job.claim, %query_id, "append job submitted to Snowflake");
        Ok(())
    }
}

#[async_trait]
impl Warehouse for Snowflake {
    fn url(&self) -> String {
        self.cfg.display()
    }

    fn jobs(&self) -> Option<&dyn AppendJobs> {
        self.cfg.append_jobs.then_some(self as &dyn AppendJobs)
    }

    fn reader(&self) -> Option<&dyn crate::verify::Reader> {
        Some(self)
    }

    async fn health(&self) -> Result<()> {
        self.query("SELECT 1").await.map(|_| ())
    }

    fn render_type(&self, ty: &ColumnType) -> String {
        match ty {
            ColumnType::List(_) if self.cfg.arrays_as_variant => "VARIANT".into(),
            ty => render(ty),
        }
    }

    fn refuse(&self, ty: &ColumnType) -> Option<String> {
        refuse(ty)
    }

    /// `PARSE_JSON` keeps a JSON number as a NUMBER when it fits one (at most 38
    /// digits) and stores any other as a DOUBLE, rounding it to about 15 digits
    /// (<https://docs.snowflake.com/en/sql-reference/data-types-semistructured>: "If the
    /// value is too large for NUMBER, it is stored as a DOUBLE"); DuckDB keeps the text.
    fn json_number_digits(&self) -> Option<u8> {
        Some(JSON_NUMBER_DIGITS)
    }

    /// A COPY with a transformation ignores `ERROR_ON_COLUMN_COUNT_MISMATCH`
    /// (<https://docs.snowflake.com/en/user-guide/data-load-transform>: "When querying
    /// staged data files, the ERROR_ON_COLUMN_COUNT_MISMATCH option is ignored"): a
    /// record short of fields would load NULLs, one with extra fields shifted values.
    /// So every staged record ends with the field `1`, loaded into the load table's
    /// `_PGP_END NUMBER(1,0) NOT NULL`: a short record leaves it NULL and a long one
    /// puts another field's text there, and either fails the COPY (a NULL in a NOT NULL
    /// column, or a failed cast) before anything commits. It also means no record is
    /// an empty line (a one-column table's NULL row), which Snowflake reads as a record
    /// that ends too early.
    fn record_end_marker(&self) -> bool {
        true
    }

    /// ARRAY is a VARIANT of any nesting
    /// (<https://docs.snowflake.com/en/sql-reference/data-types-semistructured#array>:
    /// "Each value in an ARRAY is of type VARIANT", and a VARIANT can hold an ARRAY), so
    /// `PARSE_JSON` of `[[1,2],[3,4]]` is kept as it is, whatever the column declares.
    fn fixed_list_depth(&self) -> bool {
        false
    }

    async fn columns(&self, table: &TableName) -> Result<Option<Vec<ActualColumn>>> {
        let r = self.query(&columns_sql(&self.cfg, table)).await?;
        Ok(actual_columns(&r))
    }

    async fn create_table(
        &self,
        table: &TableName,
        schema: &TableSchema,
        stamped: bool,
    ) -> Result<()> {
        let cols = table_columns(schema, stamped, self.cfg.copy == CopyMode::Transform);
        self.query(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}.{}",
            self.db(),
            q(table.schema.as_str())
        ))
        .await?;
        self.query(&format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.table(table),
            cols.join(", ")
        ))
        .await?;
        Ok(())
    }

    async fn prepare_lock(&self, target: &TableName) -> Result<()> {
        // The target's lock table: created outside any transaction (DDL would commit
        // it), so that `lock` inside one finds it. One row, never deleted; a race may
        // insert two, which changes nothing (the lock is the UPDATE's, on the table).
        let lock = lock_table(&self.cfg, target);
        self.query(&format!(
            "CREATE TABLE IF NOT EXISTS {lock} (N NUMBER(38,0))"
        ))
        .await?;
        self.query(&format!(
            "INSERT INTO {lock} (N) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM {lock})"
        ))
        .await
        .map(|_| ())
    }

    async fn drop_table(&self, table: &TableName) -> Result<()> {
        self.query(&format!("DROP TABLE IF EXISTS {}", self.table(table)))
            .await
            .map(|_| ())
    }

    async fn swap_in(&self, from: &TableName, to: &TableName, marker: &str) -> Result<()> {
        self.setup().await?;
        let mut c = self.session().await?;
        let comment = format!("COMMENT ON TABLE {} IS {}", self.table(to), lit(marker));
        // Snowflake keeps a table's comment through RENAME and SWAP WITH swaps it with
        // the rest of the metadata, so marking `from` first marks the new `to`.
        c.query(&format!(
            "COMMENT ON TABLE {} IS {}",
            self.table(from),
            lit(marker)
        ))
        .await?;
        let exists = self.info_schema(&mut c, to, "COUNT(*)").await?.scalar() != Some("0");
        if !exists {
            c.query(&format!(
                "ALTER TABLE {} RENAME TO {}",
                self.table(from),
                self.table(to)
            ))
            .await?;
        } else {
            match self.cfg.swap {
                SwapMode::Swap => {
                    c.query(&swap_sql(&self.table(from), &self.table(to)))
                        .await?;
                }
                SwapMode::Rename => {
                    // Emulator only: not atomic for readers (see the module doc). The
                    // emulator answers a catalog conflict with a concurrent session as
                    // a transient error; a dance left half-way would leave the target
                    // without this run's marker for a lease, so each step is retried.
                    let old = to.with_suffix("_PGP_OLD")?;
                    for sql in [
                        format!("DROP TABLE IF EXISTS {}", self.table(&old)),
                        format!(
                            "ALTER TABLE {} RENAME TO {}",
                            self.table(to),
                            self.table(&old)
                        ),
                        format!(
                            "ALTER TABLE {} RENAME TO {}",
                            self.table(from),
                            self.table(to)
                        ),
                        format!(
                            "ALTER TABLE {} RENAME TO {}",
                            self.table(&old),
                            self.table(from)
                        ),
                    ] {
                        emulator_retry(&mut c, &sql).await?;
                    }
                }
            }
        }
        if self.cfg.swap == SwapMode::Rename {
            // The emulator drops comments on rename: mark the new table again.
            emulator_retry(&mut c, &comment).await?;
        }
        Ok(())
    }

    async fn marker(&self, table: &TableName) -> Result<Option<String>> {
        self.setup().await?;
        let mut c = self.session().await?;
        Ok(self
            .info_schema(&mut c, table, "COMMENT")
            .await?
            .scalar()
            .map(str::to_string))
    }

    async fn row_count(&self, table: &TableName) -> Result<u64> {
        let r = self
            .query(&format!("SELECT COUNT(*) FROM {}", self.table(table)))
            .await?;
        Ok(num(&r.rows.first().and_then(|r| r.first().cloned()).flatten()).unwrap_or(0) as u64)
    }

    async fn loaded_chunks(&self, load_table: &TableName, run_id: &str) -> Result<Vec<u32>> {
        let r = self
            .query(&format!(
                "SELECT DISTINCT CHUNK FROM {} WHERE LOAD_TABLE = {} AND RUN_ID = {} ORDER BY CHUNK",
                ledger(&self.cfg, "LOAD_LEDGER"),
                lit(&load_table.to_string()),
                lit(run_id)
            ))
            .await?;
        Ok(r.rows
            .iter()
            .filter_map(|row| num(&row[0]))
            .map(|c| c as u32)
            .collect())
    }

    async fn run_overview(&self) -> Result<Vec<RunStatus>> {
        let r = self.query(&run_overview_sql(&self.cfg)).await?;
        r.rows
            .iter()
            .map(|row| {
                let target = super::duckdb::parse_table(&row[0].clone().unwrap_or_default())?;
                let n = |i: usize| num(&row[i]).unwrap_or(0);
                Ok(RunStatus {
                    record: run_record(&target, row)?,
                    age_seconds: n(11).max(0),
                    idle_seconds: n(12).max(0),
                    loaded_chunks: n(13) as u64,
                    loaded_rows: n(14) as u64,
                    loads: n(15) as u64,
                })
            })
            .collect()
    }

    async fn trim_ledger(&self, load_table: &TableName, run_id: &str) -> Result<u64> {
        let r = self
            .query(&format!(
                "DELETE FROM {} WHERE LOAD_TABLE = {} AND RUN_ID = {}",
                ledger(&self.cfg, "LOAD_LEDGER"),
                lit(&load_table.to_string()),
                lit(run_id)
            ))
            .await?;
        Ok(num(&r.rows.first().and_then(|r| r.first().cloned()).flatten()).unwrap_or(0) as u64)
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        self.setup().await?;
        let c = self.session().await?;
        Ok(Box::new(SfTxn {
            cfg: self.cfg.clone(),
            client: Some(c),
            begun: false,
            side: self.side.clone(),
            scratch: Vec::new(),
        }))
    }
}

/// A transaction holding the session.
struct SfTxn {
    cfg: SnowflakeConfig,
    client: Option<OwnedMutexGuard<Client>>,
    /// `BEGIN` was sent. It is sent before the first write: reads before it run on
    /// their own, which under READ COMMITTED sees what a read inside would, and an
    /// emulator scratch table created before it is visible to the transaction.
    begun: bool,
    side: Arc<Mutex<Option<Client>>>,
    /// Scratch tables to drop once the transaction ended (emulator only).
    scratch: Vec<String>,
}

impl SfTxn {
    /// A read.
    async fn q(&mut self, sql: &str) -> Result<Rows> {
        match self.client.as_mut() {
            Some(c) => c.query(sql).await,
            None => Err(Error::warehouse(
                self.cfg.display(),
                "transaction already ended",
                ErrorKind::Permanent,
            )),
        }
    }

    /// A write: inside the transaction, begun first if need be.
    async fn w(&mut self, sql: &str) -> Result<Rows> {
        if !self.begun {
            self.q("BEGIN").await?;
            self.begun = true;
            if let Some(c) = self.client.as_mut() {
                c.in_txn = true;
            }
        }
        self.q(sql).await
    }

    async fn end(mut self: Box<Self>, stmt: &str) -> Result<()> {
        let mut c = self
            .client
            .take()
            .expect("an open transaction has its session");
        let r = if self.begun {
            c.query(stmt).await.map(|_| ())
        } else {
            Ok(())
        };
        if r.is_ok() || stmt == "ROLLBACK" {
            c.in_txn = false;
        }
        if !c.in_txn {
            for t in std::mem::take(&mut self.scratch) {
                let _ = c.query(&format!("DROP TABLE IF EXISTS {t}")).await;
            }
        }
        r
    }

    /// Run DDL and the scratch COPY on the side session (emulator only).
    async fn side(&self, sql: &str) -> Result<Rows> {
        let mut side = self.side.lock().await;
        if side.is_none() {
            *side = Some(Client::new(self.cfg.clone())?);
        }
        side.as_mut().expect("just set").query(sql).await
    }
}

impl Drop for SfTxn {
    fn drop(&mut self) {
        let Some(mut c) = self.client.take() else {
            return;
        };
        if !self.begun {
            return;
        }
        // Dropped before commit or rollback (a cancelled request, a failed step that
        // did not roll back): roll back now, holding the session until done so that
        // nobody uses it inside this transaction, and so that the lock goes at once.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if c.query("ROLLBACK").await.is_ok() {
                    c.in_txn = false;
                }
            });
        }
        // Without a runtime, `in_txn` stays set: the next user rolls back first.
    }
}

#[async_trait]
impl Transaction for SfTxn {
    async fn lock(&mut self, target: &TableName) -> Result<()> {
        let sql = lock_sql(&self.cfg, target);
        self.w(&sql).await.map(|_| ())
    }

    async fn copy_into(
        &mut self,
        table: &TableName,
        schema: &TableSchema,
        run: &RunMeta,
        staged: Staged<'_>,
        load_id: &str,
    ) -> Result<u64> {
        let Staged {
            key: object,
            compression,
            ..
        } = staged;
        let cfg = self.cfg.clone();
        let tbl = full(&cfg, table);
        match cfg.copy {
            CopyMode::Transform => {
                let copy = copy_transform_sql(
                    &tbl,
                    schema,
                    run,
                    &stage_ref(&cfg),
                    object,
                    compression,
                    load_id,
                );
                let r = self.w(&copy).await?;
                copy_rows(&cfg, object, &r)
            }
            CopyMode::Staged => {
                // Emulator only: COPY into a scratch table of this attempt on the side
                // session (DDL and the raw COPY need no transaction: nobody else sees
                // the table), then move its rows in this transaction.
                let scratch = ledger(
                    &cfg,
                    &format!(
                        "RAW_{}",
                        load_id
                            .chars()
                            .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
                            .collect::<String>()
                    ),
                );
                // The query's columns and the record-end field.
                let raw_cols: Vec<String> = (0..=schema.columns.len())
                    .map(|i| format!("\"C{i}\" TEXT"))
                    .collect();
                self.side(&format!(
                    "CREATE OR REPLACE TABLE {scratch} ({})",
                    raw_cols.join(", ")
                ))
                .await?;
                self.scratch.push(scratch.clone());
                let (cols, exprs) = load_columns(schema, run, load_id, |i| format!("\"C{i}\""));
                let copy = format!(
                    "COPY INTO {scratch} FROM {} FILES = ({}) FILE_FORMAT = {} ON_ERROR = ABORT_STATEMENT FORCE = TRUE",
                    stage_ref(&cfg),
                    lit(object.as_str()),
                    emulator_file_format(compression)
                );
                let rows = copy_rows(&cfg, object, &self.side(&copy).await?)?;
                self.w(&format!(
                    "INSERT INTO {tbl} ({}) SELECT {} FROM {scratch}",
                    cols.join(", "),
                    exprs.join(", ")
                ))
                .await?;
                Ok(rows)
            }
        }
    }

    async fn profile(
        &mut self,
        table: &TableName,
        schema: &TableSchema,
        load_id: &str,
    ) -> Result<Profile> {
        let sql = profile_sql(&self.cfg, table, schema, load_id);
        let r = self.q(&sql).await?;
        let values = r.rows.first().cloned().unwrap_or_default();
        crate::profile::from_aggregates(
            &schema.columns,
            &values,
            &format!("profile the load {load_id} in {table}"),
        )
    }

    async fn columns(&mut self, table: &TableName) -> Result<Option<Vec<ActualColumn>>> {
        let sql = columns_sql(&self.cfg, table);
        Ok(actual_columns(&self.q(&sql).await?))
    }

    async fn marker(&mut self, table: &TableName) -> Result<Option<String>> {
        let sql = table_info_sql(&self.cfg, table, "COMMENT");
        Ok(self.q(&sql).await?.scalar().map(str::to_string))
    }

    async fn record_load(&mut self, r: &LoadRecord) -> Result<()> {
        let sql = format!(
            "INSERT INTO {} (LOAD_TABLE, RUN_ID, CHUNK, OBJECT, LOAD_ID, ROWS) VALUES ({}, {}, {}, {}, {}, {})",
            ledger(&self.cfg, "LOAD_LEDGER"),
            lit(&r.load_table.to_string()),
            lit(&r.run_id),
            r.chunk,
            lit(&r.object),
            lit(&r.load_id),
            r.rows
        );
        self.w(&sql).await.map(|_| ())
    }

    async fn chunk_loaded(
        &mut self,
        load_table: &TableName,
        run_id: &str,
        chunk: u32,
    ) -> Result<Option<ChosenLoad>> {
        let sql = format!(
            "SELECT LOAD_ID, ROWS FROM {} WHERE LOAD_TABLE = {} AND RUN_ID = {} AND CHUNK = {chunk} ORDER BY LOAD_ID LIMIT 1",
            ledger(&self.cfg, "LOAD_LEDGER"),
            lit(&load_table.to_string()),
            lit(run_id)
        );
        let r = self.q(&sql).await?;
        Ok(r.rows.first().and_then(|row| {
            Some(ChosenLoad {
                load_id: row.first()?.clone()?,
                rows: num(row.get(1)?)? as u64,
            })
        }))
    }

    async fn chosen_loads(
        &mut self,
        load_table: &TableName,
        run_id: &str,
    ) -> Result<std::collections::BTreeMap<u32, ChosenLoad>> {
        let sql = format!(
            "SELECT CHUNK, LOAD_ID, ROWS FROM {} WHERE LOAD_TABLE = {} AND RUN_ID = {} \
             QUALIFY ROW_NUMBER() OVER (PARTITION BY CHUNK ORDER BY LOAD_ID) = 1",
            ledger(&self.cfg, "LOAD_LEDGER"),
            lit(&load_table.to_string()),
            lit(run_id)
        );
        let r = self.q(&sql).await?;
        r.rows
            .iter()
            .map(|row| {
                let chunk = num(&row[0]);
                let rows = num(&row[2]);
                match (chunk, row[1].clone(), rows) {
                    (Some(c), Some(load_id), Some(rows)) => Ok((
                        c as u32,
                        ChosenLoad {
                            load_id,
                            rows: rows as u64,
                        },
                    )),
                    _ => Err(Error::warehouse(
                        self.cfg.display(),
                        format!("unreadable load ledger row {row:?}"),
                        ErrorKind::Permanent,
                    )),
                }
            })
            .collect()
    }

    async fn unbuilt_chunks(
        &mut self,
        load_table: &TableName,
        built: &TableName,
        run_id: &str,
        limit: usize,
    ) -> Result<Vec<u32>> {
        let sql = format!(
            "SELECT DISTINCT L.CHUNK FROM {l} AS L WHERE L.LOAD_TABLE = {t} AND L.RUN_ID = {run} \
             AND NOT EXISTS (SELECT 1 FROM {l} AS B WHERE B.LOAD_TABLE = {b} AND B.RUN_ID = {run} AND B.CHUNK = L.CHUNK) \
             ORDER BY L.CHUNK LIMIT {limit}",
            l = ledger(&self.cfg, "LOAD_LEDGER"),
            t = lit(&load_table.to_string()),
            b = lit(&built.to_string()),
            run = lit(run_id),
        );
        let r = self.q(&sql).await?;
        Ok(r.rows
            .iter()
            .filter_map(|row| num(&row[0]))
            .map(|c| c as u32)
            .collect())
    }

    async fn ledger_summary(
        &mut self,
        load_table: &TableName,
        run_id: &str,
    ) -> Result<LedgerSummary> {
        let l = ledger(&self.cfg, "LOAD_LEDGER");
        let (t, run) = (lit(&load_table.to_string()), lit(run_id));
        let sql = format!(
            "SELECT COUNT(*), COALESCE(SUM(L.ROWS), 0) FROM \
             (SELECT CHUNK, MIN(LOAD_ID) AS LOAD_ID FROM {l} WHERE LOAD_TABLE = {t} AND RUN_ID = {run} GROUP BY CHUNK) AS C \
             JOIN {l} AS L ON L.LOAD_ID = C.LOAD_ID AND L.LOAD_TABLE = {t} AND L.RUN_ID = {run}"
        );
        let r = self.q(&sql).await?;
        let row = r.rows.first().cloned().unwrap_or_default();
        Ok(LedgerSummary {
            chunks: row.first().and_then(num).unwrap_or(0) as u64,
            rows: row.get(1).and_then(num).unwrap_or(0) as u64,
        })
    }

    async fn insert_chosen(
        &mut self,
        from: &TableName,
        to: &TableName,
        schema: &TableSchema,
        run_id: &str,
    ) -> Result<u64> {
        let chosen = format!(
            "IN (SELECT MIN(LOAD_ID) FROM {l} WHERE LOAD_TABLE = {t} AND RUN_ID = {run} GROUP BY CHUNK)",
            l = ledger(&self.cfg, "LOAD_LEDGER"),
            t = lit(&from.to_string()),
            run = lit(run_id),
        );
        let sql = insert_stamped_sql(&self.cfg, from, to, schema, &chosen);
        let r = self.w(&sql).await?;
        Ok(num(&r.rows.first().and_then(|r| r.first().cloned()).flatten()).unwrap_or(0) as u64)
    }

    async fn insert_load(
        &mut self,
        from: &TableName,
        to: &TableName,
        schema: &TableSchema,
        load_id: &str,
    ) -> Result<u64> {
        let sql = insert_stamped_sql(&self.cfg, from, to, schema, &format!("= {}", lit(load_id)));
        let r = self.w(&sql).await?;
        Ok(num(&r.rows.first().and_then(|r| r.first().cloned()).flatten()).unwrap_or(0) as u64)
    }

    async fn open_runs(&mut self, target: &TableName) -> Result<Vec<RunRecord>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM {} WHERE TARGET = {} AND STATE IN ('planned', 'claimed') ORDER BY CREATED_AT, RUN_ID",
            ledger(&self.cfg, "RUNS"),
            lit(&target.to_string())
        );
        let r = self.q(&sql).await?;
        run_records(target, &r)
    }

    async fn run(&mut self, target: &TableName, run_id: &str) -> Result<Option<RunRecord>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM {} WHERE TARGET = {} AND RUN_ID = {} ORDER BY CREATED_AT LIMIT 1",
            ledger(&self.cfg, "RUNS"),
            lit(&target.to_string()),
            lit(run_id)
        );
        let r = self.q(&sql).await?;
        Ok(run_records(target, &r)?.into_iter().next())
    }

    async fn insert_run(&mut self, r: &RunRecord) -> Result<()> {
        let sql = format!(
            "INSERT INTO {} (TARGET, RUN_ID, LOAD_TABLE, MODE, CHUNKS, FINGERPRINT, STATE) VALUES ({}, {}, {}, {}, {}, {}, {})",
            ledger(&self.cfg, "RUNS"),
            lit(&r.target.to_string()),
            lit(&r.run_id),
            lit(&r.load_table.to_string()),
            lit(&r.mode),
            r.chunks,
            lit(&r.fingerprint),
            lit(r.state.as_str())
        );
        self.w(&sql).await.map(|_| ())
    }

    async fn update_run(
        &mut self,
        target: &TableName,
        run_id: &str,
        update: &RunUpdate,
    ) -> Result<()> {
        let sql = update_run_sql(&self.cfg, target, run_id, update, "");
        self.w(&sql).await.map(|_| ())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.end("COMMIT").await
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        self.end("ROLLBACK").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warehouse::conformance::col;

    /// A configuration with a password and a storage integration, for SQL rendering.
    fn test_config() -> config::SnowflakeConfig {
        test_config_with("")
    }

    /// The same, with URL query `query` (e.g. `?publish=job`).
    fn test_config_with(query: &str) -> config::SnowflakeConfig {
        let env: std::collections::BTreeMap<String, String> = [
            ("PGP_SNOWFLAKE_PASSWORD", "pw"),
            ("PGP_SNOWFLAKE_STORAGE_INTEGRATION", "PGP_GCS"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        config::SnowflakeConfig::from_url(&format!("snowflake://U@ACCT/RAW{query}"), &env, "gs://b")
            .unwrap()
    }

    #[test]
    fn load_tables_end_with_a_not_null_record_end_column() {
        let schema = TableSchema {
            columns: vec![Column {
                name: crate::ident::Ident::parse("c", "id").unwrap(),
                ty: ColumnType::BigInt,
                pg_type: "bigint".into(),
            }],
            task_instance: false,
        };
        assert_eq!(
            table_columns(&schema, true, true),
            [
                "\"ID\" NUMBER(38,0)",
                "\"_UPLOADED_AT\" TIMESTAMP_TZ",
                "\"_PGP_LOAD\" TEXT",
                "\"_PGP_END\" NUMBER(1,0) NOT NULL"
            ]
        );
        assert_eq!(
            table_columns(&schema, false, true),
            ["\"ID\" NUMBER(38,0)", "\"_UPLOADED_AT\" TIMESTAMP_TZ"],
            "targets have no pgp-internal columns"
        );
        let wh = Snowflake::new(test_config()).unwrap();
        assert!(wh.record_end_marker());
        assert_eq!(wh.json_number_digits(), Some(38));
    }

    #[test]
    fn profile_sql_measures_each_column_by_its_type() {
        let schema = TableSchema {
            columns: vec![
                col("id", ColumnType::BigInt),
                col("name", ColumnType::Text),
                col("ok", ColumnType::Boolean),
                col(
                    "amount",
                    ColumnType::Decimal {
                        precision: 12,
                        scale: 2,
                    },
                ),
                col("raw", ColumnType::Bytes),
                col("props", ColumnType::Json),
            ],
            task_instance: false,
        };
        let cfg = test_config();
        let t = TableName::new(
            crate::ident::Ident::parse("schema", "gitlab_com").unwrap(),
            crate::ident::Ident::parse("table", "users_pgp_load_r1").unwrap(),
        );
        assert_eq!(
            profile_sql(&cfg, &t, &schema, "l'1"),
            "SELECT CAST(count(*) - count(\"ID\") AS TEXT), \
             CAST(sum(CAST(\"ID\" AS NUMBER(38,0))) AS TEXT), \
             CAST(count(*) - count(\"NAME\") AS TEXT), \
             CAST(sum(CAST(length(\"NAME\") AS NUMBER(38,0))) AS TEXT), \
             CAST(count(*) - count(\"OK\") AS TEXT), CAST(count_if(\"OK\") AS TEXT), \
             CAST(count(*) - count(\"AMOUNT\") AS TEXT), \
             CAST(sum(CAST(\"AMOUNT\" AS NUMBER(38,2))) AS TEXT), \
             CAST(count(*) - count(\"RAW\") AS TEXT), \
             CAST(sum(CAST(length(\"RAW\") AS NUMBER(38,0))) AS TEXT), \
             CAST(count(*) - count(\"PROPS\") AS TEXT), CAST(NULL AS TEXT) \
             FROM \"RAW\".\"GITLAB_COM\".\"USERS_PGP_LOAD_R1\" WHERE \"_PGP_LOAD\" = 'l''1'"
        );
    }

    #[test]
    fn production_copy_and_swap_sql() {
        let schema = TableSchema {
            columns: vec![
                col("id", ColumnType::BigInt),
                col("name", ColumnType::Text),
                col("props", ColumnType::Json),
                col("tags", ColumnType::List(Box::new(ColumnType::Text))),
                col(
                    "amount",
                    ColumnType::Decimal {
                        precision: 20,
                        scale: 4,
                    },
                ),
                col("at", ColumnType::TimestampTz),
                col("raw", ColumnType::Bytes),
                col("f", ColumnType::Double),
            ],
            task_instance: true,
        };
        let run = RunMeta {
            run_id: "r1".into(),
            uploaded_at: "2026-11-24T10:00:00Z".parse().unwrap(),
            task_instance: Some("dag.task.o'clock\\".into()),
        };
        let key = ObjectKey::parse("gitlab_com/users/r1/00000.tsv.gz").unwrap();
        let sql = copy_transform_sql(
            "\"RAW\".\"GITLAB_COM\".\"USERS_PGP_LOAD_r1\"",
            &schema,
            &run,
            "@\"RAW\".\"_PGP\".\"PGP_STAGE\"",
            &key,
            Compression::Gzip,
            "l1",
        );
        assert_eq!(
            sql,
            "COPY INTO \"RAW\".\"GITLAB_COM\".\"USERS_PGP_LOAD_r1\" (\"ID\", \"NAME\", \"PROPS\", \"TAGS\", \"AMOUNT\", \"AT\", \"RAW\", \"F\", \"_UPLOADED_AT\", \"_TASK_INSTANCE\", \"_PGP_LOAD\", \"_PGP_END\") \
             FROM (SELECT $1::NUMBER(38,0), $2, PARSE_JSON($3), PARSE_JSON($4)::ARRAY, $5::NUMBER(20,4), $6::TIMESTAMP_TZ, TO_BINARY($7, 'HEX'), \
             (CASE $8 WHEN 'Infinity' THEN 'inf' WHEN '-Infinity' THEN '-inf' ELSE $8 END)::FLOAT, \
             '2026-11-24T10:00:00+00:00'::TIMESTAMP_TZ, 'dag.task.o''clock\\\\', 'l1', $9::NUMBER(1,0) FROM @\"RAW\".\"_PGP\".\"PGP_STAGE\") \
             FILES = ('gitlab_com/users/r1/00000.tsv.gz') \
             FILE_FORMAT = (TYPE = CSV FIELD_DELIMITER = '\\t' RECORD_DELIMITER = '\\n' FIELD_OPTIONALLY_ENCLOSED_BY = '\"' ESCAPE = NONE ESCAPE_UNENCLOSED_FIELD = NONE EMPTY_FIELD_AS_NULL = TRUE NULL_IF = () SKIP_HEADER = 0 TRIM_SPACE = FALSE ERROR_ON_COLUMN_COUNT_MISMATCH = TRUE REPLACE_INVALID_CHARACTERS = FALSE SKIP_BYTE_ORDER_MARK = FALSE ENCODING = 'UTF8' COMPRESSION = GZIP TIMESTAMP_FORMAT = AUTO) \
             ON_ERROR = ABORT_STATEMENT FORCE = TRUE"
        );
        assert_eq!(
            swap_sql("\"RAW\".\"GITLAB_COM\".\"USERS_PGP_SWAP_r1_c1\"", "\"RAW\".\"GITLAB_COM\".\"USERS\""),
            "ALTER TABLE \"RAW\".\"GITLAB_COM\".\"USERS_PGP_SWAP_r1_c1\" SWAP WITH \"RAW\".\"GITLAB_COM\".\"USERS\""
        );
        assert!(file_format(Compression::None).contains("COMPRESSION = NONE"));
        let z = file_format(Compression::Zstd);
        assert!(
            z.contains("COMPRESSION = ZSTD") && !z.contains("GZIP"),
            "{z}"
        );
    }

    #[test]
    fn only_publish_job_makes_snowflake_run_append_jobs() {
        assert!(Snowflake::new(test_config()).unwrap().jobs().is_none());
        let cfg = test_config_with("?publish=job");
        assert!(Snowflake::new(cfg).unwrap().jobs().is_some());
    }

    #[test]
    fn an_append_jobs_writes_all_wait_for_the_lock_and_its_claim() {
        use crate::ident::Ident;
        let cfg = test_config();
        let t = |s: &str, n: &str| {
            TableName::new(Ident::parse("s", s).unwrap(), Ident::parse("t", n).unwrap())
        };
        let job = AppendJob {
            target: t("GITLAB_COM", "USERS"),
            load_table: t("GITLAB_COM", "USERS_PGP_LOAD_r1"),
            schema: TableSchema {
                columns: vec![col("id", ColumnType::BigInt)],
                task_instance: false,
            },
            run_id: "r1".into(),
            claim: "c'1".into(),
            loads: [("a", 2), ("b", 1)]
                .map(|(id, rows)| ChosenLoad {
                    load_id: id.into(),
                    rows,
                })
                .to_vec(),
            marker: Some("pgp run b1".into()),
        };
        let s = append_job_sql(&cfg, &job);
        let unswapped = "(SELECT COMMENT FROM \"RAW\".INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = 'GITLAB_COM' AND TABLE_NAME = 'USERS') IS NOT DISTINCT FROM 'pgp run b1'";
        let claim = format!("EXISTS (SELECT 1 FROM \"RAW\".\"_PGP\".\"RUNS\" WHERE TARGET = 'GITLAB_COM.USERS' AND RUN_ID = 'r1' AND STATE = 'claimed' AND CLAIM = 'c''1' AND {unswapped})");
        assert_eq!(s.len(), 6, "{s:#?}");
        assert_eq!(s[0], ABORT_ON_ERROR);
        let s = &s[1..];
        assert_eq!(s[0], "BEGIN");
        assert_eq!(s[1], lock_sql(&cfg, &job.target));
        assert_eq!(
            s[2],
            format!(
                "INSERT INTO \"RAW\".\"GITLAB_COM\".\"USERS\" (\"ID\", \"_UPLOADED_AT\") SELECT \"ID\", \"_UPLOADED_AT\" FROM \"RAW\".\"GITLAB_COM\".\"USERS_PGP_LOAD_R1\" WHERE \"_PGP_LOAD\" IN ('a', 'b') AND {claim}"
            )
        );
        assert_eq!(
            s[3],
            format!("UPDATE \"RAW\".\"_PGP\".\"RUNS\" SET STATE = 'published', ROWS = 3, UPDATED_AT = CURRENT_TIMESTAMP() WHERE TARGET = 'GITLAB_COM.USERS' AND RUN_ID = 'r1' AND STATE = 'claimed' AND CLAIM = 'c''1' AND {unswapped}")
        );
        assert_eq!(s[4], "COMMIT");
    }

    #[test]
    fn emulator_format_drops_only_default_valued_and_unsupported_options() {
        let full = file_format(Compression::Gzip);
        let emu = emulator_file_format(Compression::Gzip);
        for option in DEFAULT_VALUED_OPTIONS
            .iter()
            .chain(EMULATOR_UNSUPPORTED_OPTIONS.iter())
        {
            assert!(
                full.contains(option),
                "{option} is not in the production format"
            );
            assert!(
                !emu.contains(option),
                "{option} left in the emulator format"
            );
        }
        assert_eq!(
            emu,
            "(TYPE = CSV FIELD_DELIMITER = '\\t' FIELD_OPTIONALLY_ENCLOSED_BY = '\"' \
             ESCAPE_UNENCLOSED_FIELD = NONE EMPTY_FIELD_AS_NULL = TRUE NULL_IF = () \
             SKIP_HEADER = 0 COMPRESSION = GZIP)"
        );
    }

    #[test]
    fn text_and_binary_columns_are_created_at_their_maximum_sizes() {
        assert_eq!(create_type(&ColumnType::Text, true), "VARCHAR(134217728)");
        assert_eq!(create_type(&ColumnType::Uuid, true), "VARCHAR(134217728)");
        assert_eq!(create_type(&ColumnType::Bytes, true), "BINARY(67108864)");
        assert_eq!(create_type(&ColumnType::Json, true), "VARIANT");
        assert_eq!(create_type(&ColumnType::Bytes, false), "BINARY");
        // the schema check still compares the information schema's names
        assert_eq!(render(&ColumnType::Text), "TEXT");
    }

    #[test]
    fn only_what_number_cannot_hold_is_refused() {
        let d = |precision, scale| ColumnType::Decimal { precision, scale };
        assert_eq!(refuse(&d(38, 37)), None);
        assert_eq!(refuse(&d(10, 2)), None);
        assert!(refuse(&d(38, 38)).unwrap().contains("at most 37"));
        assert!(refuse(&ColumnType::List(Box::new(d(38, 38)))).is_some());
        assert_eq!(refuse(&ColumnType::Text), None);
    }

    #[test]
    fn names_are_upper_cased_and_quoted_literals_escaped() {
        assert_eq!(q("gitlab_com"), "\"GITLAB_COM\"");
        assert_eq!(lit("a'b\\c"), "'a''b\\\\c'");
        assert_eq!(
            render(&ColumnType::Decimal {
                precision: 38,
                scale: 10
            }),
            "NUMBER(38,10)"
        );
        assert_eq!(render(&ColumnType::Integer), "NUMBER(38,0)");
    }
}

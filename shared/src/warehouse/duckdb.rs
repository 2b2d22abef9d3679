//! DuckDB, embedded: the warehouse of `pgp tap` on one machine and of the tests.
//!
//! DuckDB reads staged objects in place (`read_csv` over the local store's files), so a
//! remote object is first streamed to a temporary file. All work runs on a blocking
//! thread behind one connection. A transaction holds the connection from `begin` to
//! `commit`, so transactions of one process run one after the other and
//! [`Transaction::lock`] has nothing left to do; an embedded file admits one writing
//! process at a time (the services take turns through [`crate::warehouse`]'s caller).
//! A transaction abandoned half-way (its future dropped) leaves a flag on the
//! connection, and the next user rolls it back before anything else.

use super::{
    profile_select, ActualColumn, ChosenLoad, Dialect, LedgerSummary, LoadRecord, RunMeta,
    RunRecord, RunState, RunStatus, RunUpdate, Staged, TableSchema, Transaction, Warehouse,
    LOAD_ID, TASK_INSTANCE, UPLOADED_AT,
};
use crate::error::{Error, ErrorKind, Result};
use crate::format::{duckdb_read_options, Compression};
use crate::ident::TableName;
use crate::profile::Profile;
use crate::storage::ObjectStore;
use crate::types::{Column, ColumnType};
use async_trait::async_trait;
use duckdb::{params, Connection, OptionalExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

const LEDGER: &str = "CREATE SCHEMA IF NOT EXISTS _pgp;
CREATE TABLE IF NOT EXISTS _pgp.load_ledger (
    load_table VARCHAR NOT NULL, run_id VARCHAR NOT NULL, chunk INTEGER NOT NULL,
    object VARCHAR NOT NULL, load_id VARCHAR NOT NULL, rows BIGINT NOT NULL,
    loaded_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp);
CREATE TABLE IF NOT EXISTS _pgp.runs (
    target VARCHAR NOT NULL, run_id VARCHAR NOT NULL, load_table VARCHAR NOT NULL,
    mode VARCHAR NOT NULL, chunks BIGINT NOT NULL, fingerprint VARCHAR NOT NULL,
    state VARCHAR NOT NULL, claim VARCHAR, claimed_at_ms BIGINT, rows BIGINT,
    reason VARCHAR, created_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp);";

/// DuckDB reports no error class through its C API, so a failed statement is taken as
/// permanent: the file is local and only pgp writes it, so nothing else can hold a lock
/// or conflict; I/O failures of the local disk are the operator's to fix.
fn db_err(ctx: impl Into<String>) -> impl Fn(duckdb::Error) -> Error {
    let ctx = ctx.into();
    move |e| Error::warehouse(ctx.clone(), e, ErrorKind::Permanent)
}

/// The connection and whether a transaction was left open on it.
struct Slot {
    conn: Connection,
    in_txn: bool,
    /// DuckDB's `memory_limit` in bytes now: the configured one, or more once a load
    /// needed more ([`load_budget`]).
    memory_limit: u64,
}

impl Slot {
    /// Raise DuckDB's `memory_limit` to `need` bytes when it is lower, for the rest of
    /// this database's use, not only the next statement: a load's commit, its profile
    /// and a publish read the same rows again. The limit is a bound, not an
    /// allocation: memory is still used only as needed.
    fn raise_memory(&mut self, need: u64, ctx: &str, why: &str) -> Result<()> {
        if need > self.memory_limit {
            self.conn
                .execute_batch(&format!("SET memory_limit = '{need}B'"))
                .map_err(db_err(format!("{ctx}: raise DuckDB's memory_limit")))?;
            tracing::info!(
                "{ctx}: DuckDB's memory_limit raised from {} to {need} bytes for {why}",
                self.memory_limit
            );
            self.memory_limit = need;
        }
        Ok(())
    }

    /// Roll back a transaction an earlier user abandoned.
    fn clean(&mut self) -> Result<()> {
        if self.in_txn {
            self.conn
                .execute_batch("ROLLBACK")
                .map_err(db_err("roll back an abandoned transaction"))?;
            self.in_txn = false;
        }
        Ok(())
    }
}

/// An embedded DuckDB database file.
pub struct DuckDb {
    path: PathBuf,
    slot: Arc<Mutex<Slot>>,
    store: Arc<dyn ObjectStore>,
    /// The longest row a load reads with the default buffer ([`max_line`]).
    max_line: u64,
    /// DuckDB's worker threads: each builds its own row groups while loading.
    threads: u64,
}

impl std::fmt::Debug for DuckDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DuckDb({})", self.path.display())
    }
}

/// A standard SQL string literal (quotes doubled, backslashes literal): DuckDB's, and
/// PostgreSQL's under pgp's session (`standard_conforming_strings`).
pub(crate) fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Run `f` on the slot on a blocking thread, keeping the guard.
async fn blocking<T: Send + 'static>(
    mut guard: OwnedMutexGuard<Slot>,
    f: impl FnOnce(&mut Slot) -> Result<T> + Send + 'static,
) -> (Option<OwnedMutexGuard<Slot>>, Result<T>) {
    match tokio::task::spawn_blocking(move || {
        let r = f(&mut guard);
        (guard, r)
    })
    .await
    {
        Ok((g, r)) => (Some(g), r),
        Err(e) => (
            None,
            Err(Error::warehouse("duckdb worker", e, ErrorKind::Transient)),
        ),
    }
}

/// DuckDB's resources, set when the file is opened (`PGP_WAREHOUSE_URL` query
/// parameters: `duckdb:///abs/file.duckdb?memory_limit=1GB&threads=4&compress_strings=false`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuckDbSettings {
    /// DuckDB's buffer memory (`memory_limit`): past it, DuckDB spills to a temporary
    /// directory beside the file. DuckDB's own default is 80 % of the machine's memory,
    /// which it fills while loading a large table; pgp's loads stream each chunk in
    /// once, and need far less. A load reads rows up to an eighth of it ([`max_line`]).
    /// A load that needs more ([`load_budget`]: a chunk whose longest row is longer, or
    /// a table whose columns times DuckDB's threads need more for their row groups)
    /// raises the limit for the rest of the process, and logs it.
    pub memory_limit: String,
    /// Worker threads (`threads`); `None` keeps DuckDB's default (one per core).
    pub threads: Option<u32>,
    /// Whether DuckDB compresses text columns (`compress_strings`, default true).
    /// DuckDB's string compression (`dict_fsst`) costs the most CPU of a load: on the
    /// 2,000,000-row bench table it took 9.6–11.0 CPU-s of a 2-thread load against
    /// 7.1–8.7 without it, for a 249 MB file against 509 MB (the staged text was 752
    /// MB). `false` stores new text uncompressed (other types keep DuckDB's light
    /// compression): for laptops where the load's speed matters more than the
    /// file's size. Rows written earlier keep their storage; any DuckDB reads both.
    pub compress_strings: bool,
}

/// Bytes of a DuckDB size setting (`128MB`, `1GB`, `512MiB`, `1.5GB`), `None` when it
/// does not parse.
fn size_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        "TIB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((n * mult) as u64)
}

/// The longest row a load reads: an eighth of the memory limit (DuckDB holds the read
/// buffer, a second one while it parses across a buffer's end, and the rows it builds
/// at once: with a quarter, a 64 MB limit ran out of memory before the line-size
/// check), at least 2 MB, at most 1 GB (PostgreSQL's own limit on a value).
fn max_line(settings: &DuckDbSettings) -> u64 {
    (size_bytes(&settings.memory_limit).unwrap_or(0) / 8).clamp(2_000_000, 1 << 30)
}

/// The read buffer of one load and the `memory_limit` it needs.
/// - The buffer: the default ([`max_line`]), or for a chunk whose longest record (its
///   extractor's count, [`Staged::longest_row`]) is longer, one that holds it, rounded
///   up to a MiB, needing eight times that in memory (the eighth of [`max_line`]).
/// - The rows: each of DuckDB's threads builds its own row groups, with a block and a
///   compression state per column. Measured on DuckDB 1.2 (Python duckdb 2.0.1, text
///   columns, 8 MB buffers): 100 columns failed at 96MB with two threads and loaded at
///   128MB; with four threads they failed at 192MB and loaded at 256MB; with one, they
///   loaded at 64MB; 300 columns on two threads loaded at 300MB. So 3/4 MiB per column
///   per thread plus four buffers, which holds every case above with a margin.
fn load_budget(
    max_line: u64,
    longest_row: Option<u64>,
    columns: usize,
    threads: u64,
) -> (u64, u64) {
    const MIB: u64 = 1 << 20;
    // PostgreSQL sends no row over 1 GB (its allocation limit); a larger count in an
    // object's metadata is not believed past it.
    let (line, for_line) = match longest_row.map(|n| n.min(1 << 30).saturating_add(1)) {
        Some(need) if need > max_line => {
            let line = need.div_ceil(MIB).saturating_mul(MIB);
            (line, line.saturating_mul(8))
        }
        _ => (max_line, 0),
    };
    let for_rows = (columns as u64)
        .saturating_mul(threads)
        .saturating_mul(3 * MIB / 4)
        .saturating_add(line.saturating_mul(4));
    (line, for_line.max(for_rows))
}

impl Default for DuckDbSettings {
    fn default() -> Self {
        DuckDbSettings {
            memory_limit: DEFAULT_MEMORY_LIMIT.into(),
            threads: None,
            compress_strings: true,
        }
    }
}

/// Default of [`DuckDbSettings::memory_limit`].
pub const DEFAULT_MEMORY_LIMIT: &str = "64MB";

impl DuckDbSettings {
    /// Settings from a URL query (`memory_limit=…&threads=…&compress_strings=…`);
    /// anything else is an error naming it.
    pub fn from_query(query: &str) -> Result<Self> {
        let mut s = DuckDbSettings::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "memory_limit" if size_bytes(v).is_some() => {
                    s.memory_limit = v.to_string()
                }
                "compress_strings" => {
                    s.compress_strings = match v {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(Error::Config(format!(
                                "PGP_WAREHOUSE_URL: compress_strings={v:?} is neither true nor false"
                            )))
                        }
                    }
                }
                "threads" => {
                    s.threads = Some(v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        Error::Config(format!("PGP_WAREHOUSE_URL: threads={v:?} is not a positive number"))
                    })?)
                }
                _ => {
                    return Err(Error::Config(format!(
                        "PGP_WAREHOUSE_URL: unknown or malformed DuckDB setting {pair:?} (memory_limit=SIZE, threads=N, compress_strings=true|false)"
                    )))
                }
            }
        }
        Ok(s)
    }

    fn config(&self) -> Result<duckdb::Config> {
        let cfg = duckdb::Config::default()
            .max_memory(&self.memory_limit)
            .map_err(db_err("memory_limit"))?
            // Rows of a table have no order: DuckDB need not keep the file's.
            .with("preserve_insertion_order", "false")
            .map_err(db_err("preserve_insertion_order"))?;
        match self.threads {
            Some(n) => cfg.threads(i64::from(n)).map_err(db_err("threads")),
            None => Ok(cfg),
        }
    }
}

impl DuckDb {
    /// Open (or create) the database file with default settings; `store` is where
    /// staged objects are read.
    pub fn open(path: &Path, store: Arc<dyn ObjectStore>) -> Result<Self> {
        Self::open_with(path, store, &DuckDbSettings::default())
    }

    /// Open (or create) the database file with `settings`.
    pub fn open_with(
        path: &Path,
        store: Arc<dyn ObjectStore>,
        settings: &DuckDbSettings,
    ) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::warehouse(
                    format!("create {}", dir.display()),
                    &e,
                    ErrorKind::from_io(&e),
                )
            })?;
        }
        let conn = Connection::open_with_flags(path, settings.config()?).map_err(|e| {
            // Another process holding the file is the one failure that passes.
            Error::warehouse(format!("open {}", path.display()), e, ErrorKind::Busy)
        })?;
        conn.execute_batch(LEDGER)
            .map_err(db_err("create the load ledger"))?;
        if !settings.compress_strings {
            // A setting DuckDB takes only once the database is open (in the open
            // configuration it is silently ignored); it is the database's, so it holds
            // for every statement of this process.
            conn.execute_batch("SET disabled_compression_methods = 'dict_fsst'")
                .map_err(db_err("compress_strings=false"))?;
        }
        Self::with_conn(path, conn, store, settings)
    }

    /// Open an existing file read-only, or, when there is none, an empty in-memory
    /// database (every target then reads as missing). Creates nothing on disk.
    pub fn open_read_only(path: &Path, store: Arc<dyn ObjectStore>) -> Result<Self> {
        Self::open_read_only_with(path, store, &DuckDbSettings::default())
    }

    /// As [`DuckDb::open_read_only`], within `settings`' memory and threads (what
    /// `pgp verify` aggregates is bounded by them, as a load is).
    pub fn open_read_only_with(
        path: &Path,
        store: Arc<dyn ObjectStore>,
        settings: &DuckDbSettings,
    ) -> Result<Self> {
        let conn = if path.exists() {
            let cfg = settings
                .config()?
                .access_mode(duckdb::AccessMode::ReadOnly)
                .map_err(db_err("read-only config"))?;
            Connection::open_with_flags(path, cfg)
        } else {
            Connection::open_in_memory()
        }
        .map_err(|e| Error::warehouse(format!("open {}", path.display()), e, ErrorKind::Busy))?;
        Self::with_conn(path, conn, store, settings)
    }

    fn with_conn(
        path: &Path,
        conn: Connection,
        store: Arc<dyn ObjectStore>,
        settings: &DuckDbSettings,
    ) -> Result<Self> {
        let threads: i64 = conn
            .query_row("SELECT current_setting('threads')", [], |r| r.get(0))
            .map_err(db_err("read DuckDB's threads"))?;
        Ok(DuckDb {
            path: path.to_path_buf(),
            slot: Arc::new(Mutex::new(Slot {
                conn,
                in_txn: false,
                memory_limit: size_bytes(&settings.memory_limit).unwrap_or(0),
            })),
            store,
            max_line: max_line(settings),
            threads: threads.max(1) as u64,
        })
    }

    /// Run `f` with the connection, outside any transaction.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let guard = self.slot.clone().lock_owned().await;
        blocking(guard, move |s| {
            s.clean()?;
            f(&mut s.conn)
        })
        .await
        .1
    }

    /// DuckDB's name of a column type.
    pub(crate) fn render(ty: &ColumnType) -> String {
        match ty {
            ColumnType::Boolean => "BOOLEAN".into(),
            ColumnType::SmallInt => "SMALLINT".into(),
            ColumnType::Integer => "INTEGER".into(),
            ColumnType::BigInt => "BIGINT".into(),
            ColumnType::Real => "FLOAT".into(),
            ColumnType::Double => "DOUBLE".into(),
            ColumnType::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
            ColumnType::Text => "VARCHAR".into(),
            ColumnType::Date => "DATE".into(),
            ColumnType::Time => "TIME".into(),
            ColumnType::Timestamp => "TIMESTAMP".into(),
            ColumnType::TimestampTz => "TIMESTAMP WITH TIME ZONE".into(),
            ColumnType::Json | ColumnType::JsonArray => "JSON".into(),
            ColumnType::Uuid => "UUID".into(),
            ColumnType::Bytes => "BLOB".into(),
            ColumnType::List(e) => format!("{}[]", Self::render(e)),
        }
    }

    /// The expression turning the file's text field `f` into the column's value.
    fn load_expr(c: &Column, f: &str) -> String {
        match &c.ty {
            ColumnType::Text => f.to_string(),
            ColumnType::Bytes => format!("unhex({f})"),
            // Lists of dates and timestamps (of any depth): element by element, through
            // the BC rewrite below (DuckDB would read `4713-11-24T00:00:00 BC` in a
            // JSON list as the year 4713 AD, silently).
            ColumnType::List(_)
                if c.list_depth().is_some_and(|(e, _)| {
                    matches!(
                        e,
                        ColumnType::Date | ColumnType::Timestamp | ColumnType::TimestampTz
                    )
                }) =>
            {
                let (e, depth) = c.list_depth().expect("a list");
                let as_text = (0..depth).fold("VARCHAR".to_string(), |t, _| t + "[]");
                let mut each = Self::dated(&format!("x{depth}"), e);
                for level in (1..depth).rev() {
                    let inner = level + 1;
                    each = format!("list_transform(x{level}, lambda x{inner}: {each})");
                }
                format!("list_transform(CAST(CAST({f} AS JSON) AS {as_text}), lambda x1: {each})")
            }
            ColumnType::List(_) => format!("CAST(CAST({f} AS JSON) AS {})", Self::render(&c.ty)),
            ty @ (ColumnType::Date | ColumnType::Timestamp | ColumnType::TimestampTz) => {
                Self::dated(f, ty)
            }
            ty => format!("CAST({f} AS {})", Self::render(ty)),
        }
    }

    /// A date or timestamp text `f` read as `ty`. PostgreSQL writes a BC value with a
    /// trailing ` BC` (`0044-03-15 12:00:00+00 BC`, in JSON `0044-03-15T12:00:00+00:00
    /// BC`); DuckDB reads the same instant with ` (BC)` after the date (`0044-03-15 (BC)
    /// 12:00:00+00`). Both count years the same way (proleptic Gregorian, 1 BC before
    /// 1 AD). `infinity` and `-infinity` read as they are. Only values that end in
    /// ` BC` pay for the rewrite.
    fn dated(f: &str, ty: &ColumnType) -> String {
        format!(
            "CAST(CASE WHEN suffix({f}, ' BC') THEN trim(regexp_replace({f}, '^([0-9]+-[0-9]+-[0-9]+)[T ]?(.*) BC$', '\\1 (BC) \\2')) ELSE {f} END AS {})",
            Self::render(ty)
        )
    }

    /// `INSERT INTO to (…) SELECT … FROM from WHERE <stamp> <which>`: the rows of chosen
    /// load attempts, without the stamp.
    fn insert_stamped_sql(
        from: &TableName,
        to: &TableName,
        schema: &TableSchema,
        which: &str,
    ) -> String {
        let mut cols: Vec<String> = schema.columns.iter().map(|c| c.name.quoted()).collect();
        cols.extend(Self::meta_columns(schema));
        let cols = cols.join(", ");
        format!(
            "INSERT INTO {to} ({cols}) SELECT {cols} FROM {from} WHERE \"{LOAD_ID}\" {which}",
            to = to.quoted(),
            from = from.quoted(),
        )
    }

    /// The metadata columns' names after the query's columns.
    fn meta_columns(schema: &TableSchema) -> Vec<String> {
        let mut cols = vec![format!("\"{UPLOADED_AT}\"")];
        if schema.task_instance {
            cols.push(format!("\"{TASK_INSTANCE}\""));
        }
        cols
    }

    fn create_sql(table: &TableName, schema: &TableSchema, stamped: bool) -> String {
        let mut cols: Vec<String> = schema
            .columns
            .iter()
            .map(|c| format!("{} {}", c.name.quoted(), Self::render(&c.ty)))
            .collect();
        cols.push(format!("\"{UPLOADED_AT}\" TIMESTAMP WITH TIME ZONE"));
        if schema.task_instance {
            cols.push(format!("\"{TASK_INSTANCE}\" VARCHAR"));
        }
        if stamped {
            cols.push(format!("\"{LOAD_ID}\" VARCHAR"));
        }
        format!(
            "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {} ({});",
            table.schema.quoted(),
            table.quoted(),
            cols.join(", ")
        )
    }

    fn load_sql(
        table: &TableName,
        schema: &TableSchema,
        run: &RunMeta,
        path: &Path,
        compression: Compression,
        load_id: &str,
        max_line: u64,
    ) -> String {
        let fields: Vec<String> = (0..schema.columns.len()).map(|i| format!("c{i}")).collect();
        let mut targets: Vec<String> = schema.columns.iter().map(|c| c.name.quoted()).collect();
        let mut exprs: Vec<String> = schema
            .columns
            .iter()
            .zip(&fields)
            .map(|(c, f)| Self::load_expr(c, f))
            .collect();
        targets.extend(Self::meta_columns(schema));
        exprs.push(format!(
            "CAST({} AS TIMESTAMP WITH TIME ZONE)",
            sql_string(&run.uploaded_at.to_rfc3339())
        ));
        if schema.task_instance {
            exprs.push(match &run.task_instance {
                Some(t) => sql_string(t),
                None => "CAST(NULL AS VARCHAR)".into(),
            });
        }
        targets.push(format!("\"{LOAD_ID}\""));
        exprs.push(sql_string(load_id));
        let columns = fields
            .iter()
            .map(|f| format!("'{f}': 'VARCHAR'"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "INSERT INTO {} ({}) SELECT {} FROM read_csv({}, columns = {{{}}}, {})",
            table.quoted(),
            targets.join(", "),
            exprs.join(", "),
            sql_string(&path.to_string_lossy()),
            columns,
            duckdb_read_options(compression, max_line)
        )
    }
}

fn has_table(conn: &Connection, t: &TableName) -> duckdb::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM information_schema.tables WHERE lower(table_schema) = lower(?) AND lower(table_name) = lower(?)",
        params![t.schema.as_str(), t.table.as_str()],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

fn columns_of(c: &Connection, t: &TableName) -> Result<Option<Vec<ActualColumn>>> {
    let e = db_err(format!("columns of {t}"));
    let mut st = c
        .prepare(
            "SELECT column_name, data_type FROM information_schema.columns \
             WHERE lower(table_schema) = lower(?) AND lower(table_name) = lower(?) \
             ORDER BY ordinal_position",
        )
        .map_err(&e)?;
    let cols = st
        .query_map(params![t.schema.as_str(), t.table.as_str()], |r| {
            Ok(ActualColumn {
                name: r.get(0)?,
                data_type: r.get(1)?,
            })
        })
        .map_err(&e)?
        .collect::<duckdb::Result<Vec<_>>>()
        .map_err(&e)?;
    Ok(if cols.is_empty() { None } else { Some(cols) })
}

fn marker_of(c: &Connection, t: &TableName) -> Result<Option<String>> {
    c.query_row(
        "SELECT comment FROM duckdb_tables() WHERE lower(schema_name) = lower(?) AND lower(table_name) = lower(?)",
        params![t.schema.as_str(), t.table.as_str()],
        |r| r.get::<_, Option<String>>(0),
    )
    .optional()
    .map(Option::flatten)
    .map_err(db_err(format!("comment of {t}")))
}

/// The run table's columns as [`run_row`] reads them. The claim time is epoch
/// milliseconds of this machine's clock (an embedded file has one process at a time,
/// and DuckDB's time arithmetic on `TIMESTAMPTZ` needs the ICU extension, which is not
/// bundled); the age is computed when read.
const RUN_COLUMNS: &str =
    "target, run_id, load_table, mode, chunks, fingerprint, state, claim, claimed_at_ms, rows, reason";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn run_row(r: &duckdb::Row<'_>) -> duckdb::Result<RawRun> {
    Ok((
        vec![
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(5)?,
            r.get::<_, String>(6)?,
        ],
        r.get::<_, i64>(4)?,
        r.get::<_, Option<String>>(7)?,
        r.get::<_, Option<i64>>(8)?
            .map(|at| (now_ms() - at).max(0) / 1000),
        r.get::<_, Option<i64>>(9)?,
        r.get::<_, Option<String>>(10)?,
    ))
}

type RawRun = (
    Vec<String>,
    i64,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

fn to_record(target: &TableName, load_table: &TableName, raw: RawRun) -> Result<RunRecord> {
    let (s, chunks, claim, age, rows, reason) = raw;
    Ok(RunRecord {
        target: target.clone(),
        run_id: s[1].clone(),
        load_table: if s[2] == load_table.to_string() {
            load_table.clone()
        } else {
            parse_table(&s[2])?
        },
        mode: s[3].clone(),
        chunks: chunks as u64,
        fingerprint: s[4].clone(),
        state: RunState::parse(&s[5])?,
        claim,
        claim_age_seconds: age,
        rows: rows.map(|r| r as u64),
        reason,
    })
}

/// Parse `schema.table` as the ledger stores it.
pub(crate) fn parse_table(s: &str) -> Result<TableName> {
    let (schema, table) = s.split_once('.').ok_or_else(|| {
        Error::warehouse(
            "run table",
            format!("bad table name {s:?}"),
            ErrorKind::Permanent,
        )
    })?;
    Ok(TableName::new(
        crate::ident::Ident::parse("schema", schema)?,
        crate::ident::Ident::parse("table", table)?,
    ))
}

/// The target's side of `pgp verify` (its statements cast every cell to VARCHAR).
#[async_trait]
impl crate::verify::Reader for DuckDb {
    fn dialect(&self) -> Dialect {
        Dialect::DuckDb
    }
    fn relation(&self, table: &TableName) -> String {
        table.quoted()
    }
    async fn rows(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let sql = sql.to_string();
        self.with(move |c| {
            let e = db_err("verify: a comparison statement");
            let mut st = c.prepare(&sql).map_err(&e)?;
            let mut rows = st.query([]).map_err(&e)?;
            let n = rows.as_ref().map_or(0, |s| s.column_count());
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(&e)? {
                out.push(
                    (0..n)
                        .map(|i| r.get::<_, Option<String>>(i))
                        .collect::<duckdb::Result<Vec<_>>>()
                        .map_err(&e)?,
                );
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl Warehouse for DuckDb {
    fn url(&self) -> String {
        format!("duckdb://{}", self.path.display())
    }

    fn reader(&self) -> Option<&dyn crate::verify::Reader> {
        Some(self)
    }

    async fn health(&self) -> Result<()> {
        self.with(|c| {
            c.query_row("SELECT 1", [], |r| r.get::<_, i32>(0))
                .map(|_| ())
                .map_err(db_err("health"))
        })
        .await
    }

    fn render_type(&self, ty: &ColumnType) -> String {
        Self::render(ty)
    }

    async fn columns(&self, table: &TableName) -> Result<Option<Vec<ActualColumn>>> {
        let t = table.clone();
        self.with(move |c| columns_of(c, &t)).await
    }

    async fn create_table(
        &self,
        table: &TableName,
        schema: &TableSchema,
        stamped: bool,
    ) -> Result<()> {
        let sql = Self::create_sql(table, schema, stamped);
        let e = db_err(format!("create {table}"));
        self.with(move |c| c.execute_batch(&sql).map_err(e)).await
    }

    async fn prepare_lock(&self, _target: &TableName) -> Result<()> {
        Ok(())
    }

    async fn drop_table(&self, table: &TableName) -> Result<()> {
        let sql = format!("DROP TABLE IF EXISTS {}", table.quoted());
        let e = db_err(format!("drop {table}"));
        self.with(move |c| c.execute_batch(&sql).map_err(e)).await
    }

    /// One transaction at a time: the connection is held from `begin` to the end.
    fn serial(&self) -> bool {
        true
    }

    async fn swap_in(&self, from: &TableName, to: &TableName, marker: &str) -> Result<()> {
        let (from, to, marker) = (from.clone(), to.clone(), marker.to_string());
        let e = db_err(format!("swap {from} into {to}"));
        self.with(move |c| {
            // DuckDB's transactions cover DDL: readers see the old or the new table.
            let tx = c.transaction().map_err(&e)?;
            // A load table swapped in itself (see `serial`) loses its stamp first (a
            // new catalog entry: the comment comes after). DuckDB drops a column
            // without rewriting the others.
            tx.execute_batch(&format!(
                "ALTER TABLE {} DROP COLUMN IF EXISTS \"{LOAD_ID}\"",
                from.quoted()
            ))
            .map_err(&e)?;
            tx.execute_batch(&format!(
                "COMMENT ON TABLE {} IS {}",
                from.quoted(),
                sql_string(&marker)
            ))
            .map_err(&e)?;
            if has_table(&tx, &to).map_err(&e)? {
                tx.execute_batch(&format!("DROP TABLE {}", to.quoted()))
                    .map_err(&e)?;
            }
            tx.execute_batch(&format!(
                "ALTER TABLE {} RENAME TO {}",
                from.quoted(),
                to.table.quoted()
            ))
            .map_err(&e)?;
            tx.commit().map_err(&e)
        })
        .await
    }

    async fn marker(&self, table: &TableName) -> Result<Option<String>> {
        let t = table.clone();
        self.with(move |c| marker_of(c, &t)).await
    }

    async fn row_count(&self, table: &TableName) -> Result<u64> {
        let sql = format!("SELECT count(*) FROM {}", table.quoted());
        let e = db_err(format!("count {table}"));
        self.with(move |c| {
            c.query_row(&sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(e)
        })
        .await
    }

    async fn loaded_chunks(&self, load_table: &TableName, run_id: &str) -> Result<Vec<u32>> {
        let (t, run) = (load_table.to_string(), run_id.to_string());
        let e = db_err(format!("ledger of {load_table}"));
        self.with(move |c| {
            let mut st = c
                .prepare("SELECT DISTINCT chunk FROM _pgp.load_ledger WHERE load_table = ? AND run_id = ? ORDER BY chunk")
                .map_err(&e)?;
            let rows = st
                .query_map(params![t, run], |r| r.get::<_, i64>(0))
                .map_err(&e)?
                .collect::<duckdb::Result<Vec<_>>>()
                .map_err(&e)?;
            Ok(rows.into_iter().map(|c| c as u32).collect())
        })
        .await
    }

    async fn run_overview(&self) -> Result<Vec<RunStatus>> {
        let e = db_err("read the run table");
        // Ages are computed here from the text of the timestamps: DuckDB's arithmetic
        // on TIMESTAMPTZ needs the ICU extension, which is not bundled.
        let raws = self
            .with(move |c| {
                let mut st = c
                    .prepare(&format!(
                        "SELECT {RUN_COLUMNS}, CAST(created_at AS VARCHAR), \
                         CAST(greatest(updated_at, coalesce(l_last, updated_at)) AS VARCHAR), \
                         CAST(coalesce(l_chunks, 0) AS BIGINT), CAST(coalesce(l_rows, 0) AS BIGINT), \
                         CAST(coalesce(l_loads, 0) AS BIGINT) \
                         FROM _pgp.runs LEFT JOIN ( \
                           SELECT l_load_table, l_run_id, count(*) AS l_chunks, sum(r) AS l_rows, \
                                  sum(n) AS l_loads, max(last) AS l_last FROM ( \
                             SELECT load_table AS l_load_table, run_id AS l_run_id, chunk, \
                                    max(rows) AS r, count(*) AS n, max(loaded_at) AS last \
                             FROM _pgp.load_ledger GROUP BY load_table, run_id, chunk) \
                           GROUP BY l_load_table, l_run_id) \
                         ON l_load_table = load_table AND l_run_id = run_id \
                         ORDER BY created_at DESC, run_id"
                    ))
                    .map_err(&e)?;
                let rows = st
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            run_row(r)?,
                            r.get::<_, String>(11)?,
                            r.get::<_, String>(12)?,
                            [r.get::<_, i64>(13)?, r.get::<_, i64>(14)?, r.get::<_, i64>(15)?],
                        ))
                    })
                    .map_err(&e)?
                    .collect::<duckdb::Result<Vec<_>>>()
                    .map_err(&e)?;
                Ok(rows)
            })
            .await?;
        let now = chrono::Utc::now();
        let since = |text: &str| -> Result<i64> {
            let at = chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
                .map_err(|err| Error::Config(format!("run table timestamp {text:?}: {err}")))?;
            Ok((now - at.with_timezone(&chrono::Utc)).num_seconds().max(0))
        };
        raws.into_iter()
            .map(|(target, raw, created, changed, [chunks, rows, loads])| {
                let target = parse_table(&target)?;
                let load = parse_table(&raw.0[2])?;
                Ok(RunStatus {
                    record: to_record(&target, &load, raw)?,
                    age_seconds: since(&created)?,
                    idle_seconds: since(&changed)?,
                    loaded_chunks: chunks as u64,
                    loaded_rows: rows as u64,
                    loads: loads as u64,
                })
            })
            .collect()
    }

    async fn trim_ledger(&self, load_table: &TableName, run_id: &str) -> Result<u64> {
        let (t, run) = (load_table.to_string(), run_id.to_string());
        let e = db_err(format!("trim the ledger of {load_table}"));
        self.with(move |c| {
            c.execute(
                "DELETE FROM _pgp.load_ledger WHERE load_table = ? AND run_id = ?",
                params![t, run],
            )
            .map(|n| n as u64)
            .map_err(e)
        })
        .await
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        let guard = self.slot.clone().lock_owned().await;
        let (guard, r) = blocking(guard, |s| {
            s.clean()?;
            s.conn
                .execute_batch("BEGIN TRANSACTION")
                .map_err(db_err("begin"))?;
            s.in_txn = true;
            Ok(())
        })
        .await;
        r?;
        Ok(Box::new(DuckTxn {
            guard,
            store: self.store.clone(),
            max_line: self.max_line,
            threads: self.threads,
        }))
    }
}

/// A transaction holding the connection.
struct DuckTxn {
    guard: Option<OwnedMutexGuard<Slot>>,
    store: Arc<dyn ObjectStore>,
    max_line: u64,
    threads: u64,
}

impl DuckTxn {
    async fn op<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.op_slot(move |s| f(&mut s.conn)).await
    }

    /// Columns of a load table of `schema`: the query's, the metadata ones, the stamp.
    fn columns(schema: &TableSchema) -> usize {
        schema.columns.len() + DuckDb::meta_columns(schema).len() + 1
    }

    /// The memory an `INSERT … SELECT` of `schema`'s rows needs ([`load_budget`]), and
    /// why, for the log.
    fn rows_budget(&self, schema: &TableSchema) -> (u64, String) {
        let columns = DuckTxn::columns(schema);
        let (_, need) = load_budget(self.max_line, None, columns, self.threads);
        (
            need,
            format!("{columns} columns on {} threads", self.threads),
        )
    }

    async fn op_slot<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Slot) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let guard = self.guard.take().ok_or_else(|| {
            Error::warehouse(
                "duckdb transaction",
                "the connection was lost by an earlier failure",
                ErrorKind::Transient,
            )
        })?;
        let (guard, r) = blocking(guard, f).await;
        self.guard = guard;
        r
    }

    async fn end(mut self: Box<Self>, stmt: &'static str) -> Result<()> {
        let guard = self.guard.take().ok_or_else(|| {
            Error::warehouse(
                "duckdb transaction",
                "connection lost",
                ErrorKind::Transient,
            )
        })?;
        blocking(guard, move |s| {
            let r = s.conn.execute_batch(stmt).map_err(db_err(stmt));
            if r.is_ok() || stmt == "ROLLBACK" {
                s.in_txn = false;
            }
            r
        })
        .await
        .1
    }
}

#[async_trait]
impl Transaction for DuckTxn {
    async fn lock(&mut self, _target: &TableName) -> Result<()> {
        // The transaction holds the only connection of the only writing process.
        Ok(())
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
            longest_row,
        } = staged;
        // DuckDB reads local files: a remote object (gs://) is streamed to a temporary
        // file first, removed when the load is done.
        let mut download = None;
        let tmp = |e: std::io::Error| {
            Error::warehouse(format!("load {object}"), &e, ErrorKind::from_io(&e))
        };
        let mut path = match self.store.local_path(object) {
            Some(p) => p,
            None => {
                let dir = tempfile::tempdir().map_err(tmp)?;
                let p = dir.path().join(format!("chunk.{}", compression.suffix()));
                self.store.copy_to_file(object, &p).await?;
                download = Some(dir);
                p
            }
        };
        // DuckDB reads zstd files only through its parquet extension, which this build
        // leaves out: a zstd object is decompressed to a temporary file first, removed
        // with it (Snowflake, the warehouse zstd staging is for, reads it as is).
        let mut compression = compression;
        if compression == Compression::Zstd {
            let dir = match download.take() {
                Some(d) => d,
                None => tempfile::tempdir().map_err(tmp)?,
            };
            let plain = dir.path().join("chunk.tsv");
            let (from, to) = (path.clone(), plain.clone());
            tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
                let mut r = Compression::Zstd.decoder(std::fs::File::open(&from)?)?;
                let mut w = std::io::BufWriter::new(std::fs::File::create(&to)?);
                let n = std::io::copy(&mut r, &mut w)?;
                std::io::Write::flush(&mut w)?;
                Ok(n)
            })
            .await
            .map_err(|e| Error::warehouse(format!("load {object}"), e, ErrorKind::Transient))?
            .map_err(|e| {
                // A corrupt or truncated object (zstd says Other or UnexpectedEof) will
                // not read better later.
                let kind = match e.kind() {
                    std::io::ErrorKind::Other | std::io::ErrorKind::UnexpectedEof => {
                        ErrorKind::Permanent
                    }
                    _ => ErrorKind::from_io(&e),
                };
                Error::warehouse(format!("decompress {object}"), &e, kind)
            })?;
            // A downloaded object is not needed once decompressed.
            let _ = std::fs::remove_file(
                dir.path()
                    .join(format!("chunk.{}", Compression::Zstd.suffix())),
            );
            download = Some(dir);
            path = plain;
            compression = Compression::None;
        }
        let (columns, threads) = (DuckTxn::columns(schema), self.threads);
        let (max_line, need) = load_budget(self.max_line, longest_row, columns, threads);
        let sql = DuckDb::load_sql(table, schema, run, &path, compression, load_id, max_line);
        let ctx = format!("load {object} into {table}");
        let n = self
            .op_slot(move |s| {
                s.raise_memory(
                    need,
                    &ctx,
                    &format!("{columns} columns on {threads} threads, rows up to {max_line} bytes"),
                )?;
                let limit_now = s.memory_limit;
                s.conn.execute(&sql, []).map(|n| n as u64).map_err(|err| {
                    // A row longer than the read buffer shows as one of these; say what
                    // to change.
                    let m = err.to_string();
                    let hint = if ["line size", "full read on this file", "Out of Memory"]
                        .iter()
                        .any(|s| m.contains(s))
                    {
                        format!(
                            " (rows up to {max_line} bytes load within DuckDB's memory_limit, \
                             {limit_now} bytes for {columns} columns on {threads} threads; \
                             raise it in PGP_WAREHOUSE_URL, e.g. ?memory_limit=1GB)"
                        )
                    } else {
                        String::new()
                    };
                    db_err(format!("{ctx}{hint}"))(err)
                })
            })
            .await;
        drop(download);
        n
    }

    async fn profile(
        &mut self,
        table: &TableName,
        schema: &TableSchema,
        load_id: &str,
    ) -> Result<Profile> {
        let sql = format!(
            "SELECT {} FROM {} WHERE \"{LOAD_ID}\" = ?",
            profile_select(&schema.columns, |c| c.name.quoted(), Dialect::DuckDb),
            table.quoted()
        );
        let id = load_id.to_string();
        let ctx = format!("profile the load {load_id} in {table}");
        let n = schema.columns.len() * 2;
        let e = db_err(ctx.clone());
        let values = self
            .op(move |c| {
                c.query_row(&sql, params![id], |r| {
                    (0..n)
                        .map(|i| r.get::<_, Option<String>>(i))
                        .collect::<duckdb::Result<Vec<_>>>()
                })
                .map_err(e)
            })
            .await?;
        crate::profile::from_aggregates(&schema.columns, &values, &ctx)
    }

    async fn columns(&mut self, table: &TableName) -> Result<Option<Vec<ActualColumn>>> {
        let t = table.clone();
        self.op(move |c| columns_of(c, &t)).await
    }

    async fn marker(&mut self, table: &TableName) -> Result<Option<String>> {
        let t = table.clone();
        self.op(move |c| marker_of(c, &t)).await
    }

    async fn record_load(&mut self, r: &LoadRecord) -> Result<()> {
        let r = r.clone();
        self.op(move |c| {
            c.execute(
                "INSERT INTO _pgp.load_ledger (load_table, run_id, chunk, object, load_id, rows) VALUES (?, ?, ?, ?, ?, ?)",
                params![r.load_table.to_string(), r.run_id, r.chunk, r.object, r.load_id, r.rows as i64],
            )
            .map(|_| ())
            .map_err(db_err("record a load"))
        })
        .await
    }

    async fn chunk_loaded(
        &mut self,
        load_table: &TableName,
        run_id: &str,
        chunk: u32,
    ) -> Result<Option<ChosenLoad>> {
        let (t, run) = (load_table.to_string(), run_id.to_string());
        self.op(move |c| {
            c.query_row(
                "SELECT load_id, rows FROM _pgp.load_ledger WHERE load_table = ? AND run_id = ? AND chunk = ? ORDER BY load_id LIMIT 1",
                params![t, run, chunk],
                |r| Ok(ChosenLoad {
                    load_id: r.get(0)?,
                    rows: r.get::<_, i64>(1)? as u64,
                }),
            )
            .optional()
            .map_err(db_err("read the load ledger"))
        })
        .await
    }

    async fn chosen_loads(
        &mut self,
        load_table: &TableName,
        run_id: &str,
    ) -> Result<std::collections::BTreeMap<u32, ChosenLoad>> {
        let (t, run) = (load_table.to_string(), run_id.to_string());
        self.op(move |c| {
            let e = db_err("read the load ledger");
            let mut st = c
                .prepare(
                    "SELECT chunk, load_id, rows FROM _pgp.load_ledger WHERE load_table = ? AND run_id = ? \
                     QUALIFY row_number() OVER (PARTITION BY chunk ORDER BY load_id) = 1",
                )
                .map_err(&e)?;
            let rows = st
                .query_map(params![t, run], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u32,
                        ChosenLoad {
                            load_id: r.get(1)?,
                            rows: r.get::<_, i64>(2)? as u64,
                        },
                    ))
                })
                .map_err(&e)?
                .collect::<duckdb::Result<std::collections::BTreeMap<_, _>>>()
                .map_err(&e)?;
            Ok(rows)
        })
        .await
    }

    async fn unbuilt_chunks(
        &mut self,
        load_table: &TableName,
        built: &TableName,
        run_id: &str,
        limit: usize,
    ) -> Result<Vec<u32>> {
        let (t, b, run) = (
            load_table.to_string(),
            built.to_string(),
            run_id.to_string(),
        );
        self.op(move |c| {
            let e = db_err("read the load ledger");
            let mut st = c
                .prepare(
                    "SELECT DISTINCT l.chunk FROM _pgp.load_ledger AS l WHERE l.load_table = ? AND l.run_id = ? \
                     AND NOT EXISTS (SELECT 1 FROM _pgp.load_ledger AS b WHERE b.load_table = ? AND b.run_id = ? AND b.chunk = l.chunk) \
                     ORDER BY l.chunk LIMIT ?",
                )
                .map_err(&e)?;
            let rows = st
                .query_map(params![t, run, b, run, limit as i64], |r| r.get::<_, i64>(0))
                .map_err(&e)?
                .collect::<duckdb::Result<Vec<_>>>()
                .map_err(&e)?;
            Ok(rows.into_iter().map(|c| c as u32).collect())
        })
        .await
    }

    async fn ledger_summary(
        &mut self,
        load_table: &TableName,
        run_id: &str,
    ) -> Result<LedgerSummary> {
        let (t, run) = (load_table.to_string(), run_id.to_string());
        self.op(move |c| {
            c.query_row(
                "SELECT count(*), coalesce(sum(l.rows), 0) FROM \
                 (SELECT chunk, min(load_id) AS load_id FROM _pgp.load_ledger \
                  WHERE load_table = ? AND run_id = ? GROUP BY chunk) AS c \
                 JOIN _pgp.load_ledger AS l ON l.load_id = c.load_id AND l.load_table = ? AND l.run_id = ?",
                params![t, run, t, run],
                |r| Ok(LedgerSummary {
                    chunks: r.get::<_, i64>(0)? as u64,
                    rows: r.get::<_, i64>(1)? as u64,
                }),
            )
            .map_err(db_err("summarize the load ledger"))
        })
        .await
    }

    async fn insert_chosen(
        &mut self,
        from: &TableName,
        to: &TableName,
        schema: &TableSchema,
        run_id: &str,
    ) -> Result<u64> {
        let sql = DuckDb::insert_stamped_sql(
            from,
            to,
            schema,
            "IN (SELECT min(load_id) FROM _pgp.load_ledger WHERE load_table = ? AND run_id = ? GROUP BY chunk)",
        );
        let (t, run) = (from.to_string(), run_id.to_string());
        let ctx = format!("publish {from} into {to}");
        let (need, why) = self.rows_budget(schema);
        self.op_slot(move |s| {
            s.raise_memory(need, &ctx, &why)?;
            s.conn
                .execute(&sql, params![t, run])
                .map(|n| n as u64)
                .map_err(db_err(ctx))
        })
        .await
    }

    async fn insert_load(
        &mut self,
        from: &TableName,
        to: &TableName,
        schema: &TableSchema,
        load_id: &str,
    ) -> Result<u64> {
        let sql = DuckDb::insert_stamped_sql(from, to, schema, "= ?");
        let id = load_id.to_string();
        let ctx = format!("build {to} from {from}");
        let (need, why) = self.rows_budget(schema);
        self.op_slot(move |s| {
            s.raise_memory(need, &ctx, &why)?;
            s.conn
                .execute(&sql, params![id])
                .map(|n| n as u64)
                .map_err(db_err(ctx))
        })
        .await
    }

    async fn open_runs(&mut self, target: &TableName) -> Result<Vec<RunRecord>> {
        let t = target.clone();
        let raws = self
            .op(move |c| {
                let e = db_err("read the run table");
                let mut st = c
                    .prepare(&format!(
                        "SELECT {RUN_COLUMNS} FROM _pgp.runs WHERE target = ? AND state IN ('planned', 'claimed') ORDER BY created_at, run_id"
                    ))
                    .map_err(&e)?;
                let rows = st
                    .query_map(params![t.to_string()], run_row)
                    .map_err(&e)?
                    .collect::<duckdb::Result<Vec<_>>>()
                    .map_err(&e)?;
                Ok(rows)
            })
            .await?;
        raws.into_iter()
            .map(|raw| {
                let load = parse_table(&raw.0[2])?;
                to_record(target, &load, raw)
            })
            .collect()
    }

    async fn run(&mut self, target: &TableName, run_id: &str) -> Result<Option<RunRecord>> {
        let (t, run) = (target.to_string(), run_id.to_string());
        let raw = self
            .op(move |c| {
                c.query_row(
                    &format!("SELECT {RUN_COLUMNS} FROM _pgp.runs WHERE target = ? AND run_id = ? ORDER BY created_at LIMIT 1"),
                    params![t, run],
                    run_row,
                )
                .optional()
                .map_err(db_err("read the run table"))
            })
            .await?;
        match raw {
            None => Ok(None),
            Some(raw) => {
                let load = parse_table(&raw.0[2])?;
                to_record(target, &load, raw).map(Some)
            }
        }
    }

    async fn insert_run(&mut self, r: &RunRecord) -> Result<()> {
        let r = r.clone();
        self.op(move |c| {
            c.execute(
                "INSERT INTO _pgp.runs (target, run_id, load_table, mode, chunks, fingerprint, state) VALUES (?, ?, ?, ?, ?, ?, ?)",
                params![
                    r.target.to_string(),
                    r.run_id,
                    r.load_table.to_string(),
                    r.mode,
                    r.chunks as i64,
                    r.fingerprint,
                    r.state.as_str()
                ],
            )
            .map(|_| ())
            .map_err(db_err("record a run"))
        })
        .await
    }

    async fn update_run(
        &mut self,
        target: &TableName,
        run_id: &str,
        update: &RunUpdate,
    ) -> Result<()> {
        let (t, run, u) = (target.to_string(), run_id.to_string(), update.clone());
        self.op(move |c| {
            let e = db_err("update the run table");
            match u {
                RunUpdate::Claim(claim) => c.execute(
                    "UPDATE _pgp.runs SET state = 'claimed', claim = ?, claimed_at_ms = ?, updated_at = current_timestamp WHERE target = ? AND run_id = ?",
                    params![claim, now_ms(), t, run],
                ),
                RunUpdate::Published { rows } => c.execute(
                    "UPDATE _pgp.runs SET state = 'published', rows = ?, updated_at = current_timestamp WHERE target = ? AND run_id = ?",
                    params![rows as i64, t, run],
                ),
                RunUpdate::Abandoned { reason } => c.execute(
                    "UPDATE _pgp.runs SET state = 'abandoned', reason = ?, updated_at = current_timestamp WHERE target = ? AND run_id = ?",
                    params![reason, t, run],
                ),
            }
            .map(|_| ())
            .map_err(e)
        })
        .await
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
    use crate::format::Compression;
    use crate::ident::{Ident, TableName};
    use crate::storage::{ObjectKey, ObjectStore, ObjectStoreExt};
    use crate::types::ColumnType;
    use crate::warehouse::conformance::col;
    use crate::warehouse::{RunMeta, Staged, TableSchema, Warehouse};
    use std::sync::Arc;

    /// A DuckDB file with `settings` (a URL query) over a local store, and the name of
    /// a table `wide.<table>` in it.
    fn small_duck(
        settings: &str,
        table: &str,
    ) -> (
        tempfile::TempDir,
        Arc<dyn ObjectStore>,
        super::DuckDb,
        TableName,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(crate::storage::LocalStore::new(dir.path().join("store")).unwrap());
        let settings = super::DuckDbSettings::from_query(settings).unwrap();
        let wh = super::DuckDb::open_with(&dir.path().join("w.duckdb"), store.clone(), &settings)
            .unwrap();
        let table = TableName::new(
            Ident::parse("s", "wide").unwrap(),
            Ident::parse("t", table).unwrap(),
        );
        (dir, store, wh, table)
    }

    fn run_meta() -> RunMeta {
        RunMeta {
            run_id: "r".into(),
            uploaded_at: "2024-05-01T00:00:00Z".parse().unwrap(),
            task_instance: None,
        }
    }

    #[tokio::test]
    async fn duckdb_passes_the_conformance_suite() {
        let (_dir, store, wh, _) = small_duck("", "t");
        crate::warehouse::conformance::run(&wh, store.as_ref()).await;
    }

    #[test]
    fn a_load_budget_fits_the_longest_row_and_the_columns_threads_build() {
        const MIB: u64 = 1 << 20;
        let budget = super::load_budget;
        // the bench table on two threads: within the default 64MB
        assert_eq!(
            budget(8_000_000, None, 16, 2),
            (8_000_000, 24 * MIB + 32_000_000)
        );
        assert_eq!(budget(8_000_000, Some(7_999_998), 16, 2).0, 8_000_000);
        // a row one byte over the buffer: a buffer of 8 MiB and eight of them
        assert_eq!(
            budget(8_000_000, Some(8_000_000), 16, 2),
            (8 * MIB, 64 * MIB)
        );
        assert_eq!(
            budget(2_000_000, Some(20_000_001), 3, 1),
            (20 * MIB, 160 * MIB)
        );
        assert_eq!(
            budget(2_000_000, Some(u64::MAX), 3, 1),
            (1025 * MIB, 8200 * MIB)
        );
        // 100 columns on two threads (failed at 96MB, loaded at 128MB) and on four
        // (failed at 192MB, loaded at 256MB); 300 columns on two (loaded at 300MB)
        assert_eq!(budget(8_000_000, None, 100, 2).1, 150 * MIB + 32_000_000);
        assert_eq!(budget(8_000_000, None, 100, 4).1, 300 * MIB + 32_000_000);
        assert!(budget(8_000_000, None, 300, 2).1 > 300_000_000);
    }

    /// A chunk whose longest row does not fit the default read buffer (an eighth of
    /// `memory_limit`) loads whole when its object says how long that row is: DuckDB's
    /// limit is raised to fit it. An object that does not say (an earlier pgp's) fails
    /// its load naming the longest row it could read.
    #[tokio::test]
    async fn a_row_longer_than_the_default_buffer_loads_when_its_object_says_how_long() {
        let (_dir, store, wh, table) = small_duck("memory_limit=16MB", "long_row");
        let ts = TableSchema {
            columns: vec![col("id", ColumnType::BigInt), col("v", ColumnType::Text)],
            task_instance: false,
        };
        wh.create_table(&table, &ts, true).await.unwrap();
        let run = run_meta();
        let long = format!("1\t{}\n", "x".repeat(12_000_000));
        let text = format!("{long}2\tshort\n");
        let key = ObjectKey::parse("t/r/00000.a.tsv").unwrap();
        store
            .put(&key, bytes::Bytes::from(text), Default::default())
            .await
            .unwrap();
        let limit = |wh: &super::DuckDb| -> String {
            let s = wh.slot.try_lock().unwrap();
            s.conn
                .query_row("SELECT current_setting('memory_limit')", [], |r| r.get(0))
                .unwrap()
        };
        let before = limit(&wh);

        let mut txn = wh.begin().await.unwrap();
        let e = txn
            .copy_into(&table, &ts, &run, Staged::new(&key, Compression::None), "a")
            .await
            .unwrap_err()
            .to_string();
        let _ = txn.rollback().await;
        assert!(e.contains("rows up to 2000000 bytes"), "{e}");
        assert_eq!(wh.row_count(&table).await.unwrap(), 0);

        let staged = Staged {
            longest_row: Some(long.len() as u64),
            ..Staged::new(&key, Compression::None)
        };
        let mut txn = wh.begin().await.unwrap();
        let n = txn.copy_into(&table, &ts, &run, staged, "b").await.unwrap();
        txn.commit().await.unwrap();
        assert_eq!(n, 2);
        assert_ne!(limit(&wh), before);
        let s = wh.slot.try_lock().unwrap();
        let got: i64 = s
            .conn
            .query_row("SELECT max(length(v)) FROM wide.long_row", [], |r| r.get(0))
            .unwrap();
        assert_eq!(got, 12_000_000);
    }

    /// DuckDB's threads each build row groups with a block per column: a wide table
    /// needs more than a small limit, and its load and its publish raise the limit to
    /// what its columns and threads need (both ran out of memory at 16MB before).
    #[tokio::test]
    async fn a_wide_table_loads_with_the_memory_its_columns_need() {
        let (dir, store, wh, table) = small_duck("memory_limit=16MB&threads=2", "many");
        let mut columns = vec![col("id", ColumnType::BigInt)];
        columns.extend((0..100).map(|i| col(&format!("c{i}"), ColumnType::Text)));
        let ts = TableSchema {
            columns,
            task_instance: false,
        };
        wh.create_table(&table, &ts, true).await.unwrap();
        let rows = 20_000;
        let mut text = String::new();
        for r in 0..rows {
            text.push_str(&r.to_string());
            for c in 0..100 {
                text.push_str(&format!("\t{:x}", r * 7919 + c));
            }
            text.push('\n');
        }
        let longest = text.lines().map(|l| l.len() as u64 + 1).max();
        let key = ObjectKey::parse("t/r/00000.a.tsv").unwrap();
        store
            .put(&key, bytes::Bytes::from(text), Default::default())
            .await
            .unwrap();
        let run = run_meta();
        let staged = Staged {
            longest_row: longest,
            ..Staged::new(&key, Compression::None)
        };
        let mut txn = wh.begin().await.unwrap();
        let n = txn.copy_into(&table, &ts, &run, staged, "a").await.unwrap();
        txn.commit().await.unwrap();
        assert_eq!(n, rows);
        assert_eq!(wh.row_count(&table).await.unwrap(), rows);

        // a publish in a process that loaded nothing (a resumed run) needs as much
        drop(wh);
        let settings = super::DuckDbSettings::from_query("memory_limit=16MB&threads=2").unwrap();
        let wh = super::DuckDb::open_with(&dir.path().join("w.duckdb"), store, &settings).unwrap();
        let target = table.with_suffix("_target").unwrap();
        wh.create_table(&target, &ts, false).await.unwrap();
        let mut txn = wh.begin().await.unwrap();
        let n = txn.insert_load(&table, &target, &ts, "a").await.unwrap();
        txn.commit().await.unwrap();
        assert_eq!(n, rows);
    }

    #[test]
    fn settings_come_from_the_url_and_reach_duckdb() {
        use super::DuckDbSettings;
        assert_eq!(
            DuckDbSettings::from_query("").unwrap(),
            DuckDbSettings::default()
        );
        let s = DuckDbSettings::from_query("memory_limit=64MB&threads=1").unwrap();
        assert_eq!((s.memory_limit.as_str(), s.threads), ("64MB", Some(1)));
        assert_eq!(super::size_bytes("128MB"), Some(128_000_000));
        assert_eq!(super::size_bytes("1.5GiB"), Some(1_610_612_736));
        assert_eq!(super::max_line(&s), 8_000_000);
        assert_eq!(super::max_line(&DuckDbSettings::default()), 8_000_000);
        for bad in [
            "threads=0",
            "threads=x",
            "memory_limit=1GB';",
            "memory_limit=lots",
            "color=red",
            "compress_strings=no",
        ] {
            let e = DuckDbSettings::from_query(bad).unwrap_err().to_string();
            assert!(e.contains("PGP_WAREHOUSE_URL"), "{bad}: {e}");
        }
        let (_dir, _store, wh, _) = small_duck("memory_limit=64MB&threads=1", "t");
        let conn = wh.slot.try_lock().unwrap();
        let got: (String, i64, bool) = conn
            .conn
            .query_row(
                "SELECT current_setting('memory_limit'), current_setting('threads'), \
                 current_setting('preserve_insertion_order')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(got.1, 1);
        assert!(!got.2);
        assert!(
            got.0.starts_with("61.0 MiB") || got.0.starts_with("64.0 MB"),
            "{}",
            got.0
        );
    }

    #[test]
    fn text_is_stored_uncompressed_only_when_asked() {
        for (query, want) in [
            ("", "DICT_FSST"),
            ("compress_strings=false", "Uncompressed"),
        ] {
            let (_dir, _store, wh, _) = small_duck(query, "t");
            let conn = wh.slot.try_lock().unwrap();
            conn.conn
                .execute_batch(
                    "CREATE TABLE t AS SELECT 'value ' || (i % 100) AS s, md5(i::text) AS h \
                     FROM range(100000) r(i); CHECKPOINT",
                )
                .unwrap();
            let got: String = conn
                .conn
                .query_row(
                    "SELECT string_agg(DISTINCT compression, ',') FROM pragma_storage_info('t') \
                     WHERE segment_type = 'VARCHAR'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(got, want, "{query:?}");
        }
    }

    #[tokio::test]
    async fn a_zstd_object_loads_and_a_corrupt_one_fails_for_good() {
        let (_dir, store, wh, table) = small_duck("", "zstd");
        let ts = TableSchema {
            columns: vec![col("id", ColumnType::BigInt), col("v", ColumnType::Text)],
            task_instance: false,
        };
        wh.create_table(&table, &ts, true).await.unwrap();
        let text = "1\t\"a\tb\"\n2\t\n3\t\"\"\n";
        let key = ObjectKey::parse("t/r/00000.a.tsv.zst").unwrap();
        let z = zstd::stream::encode_all(text.as_bytes(), 1).unwrap();
        store
            .put(&key, bytes::Bytes::from(z), Default::default())
            .await
            .unwrap();
        let mut txn = wh.begin().await.unwrap();
        let n = txn
            .copy_into(
                &table,
                &ts,
                &run_meta(),
                Staged::new(&key, Compression::Zstd),
                "a",
            )
            .await
            .unwrap();
        txn.commit().await.unwrap();
        assert_eq!(n, 3);
        let s = wh.slot.try_lock().unwrap();
        let got: String = s
            .conn
            .query_row(
                "SELECT string_agg(coalesce(v, '<null>'), '|' ORDER BY id) FROM wide.zstd",
                [],
                |r| r.get(0),
            )
            .unwrap();
        drop(s);
        assert_eq!(got, "a\tb|<null>|");

        let bad = ObjectKey::parse("t/r/00001.b.tsv.zst").unwrap();
        store
            .put(
                &bad,
                bytes::Bytes::from_static(b"not zstd at all"),
                Default::default(),
            )
            .await
            .unwrap();
        let mut txn = wh.begin().await.unwrap();
        let e = txn
            .copy_into(
                &table,
                &ts,
                &run_meta(),
                Staged::new(&bad, Compression::Zstd),
                "b",
            )
            .await
            .unwrap_err();
        let _ = txn.rollback().await;
        assert!(!e.is_retriable(), "{e}");
        assert!(
            e.to_string().contains("decompress t/r/00001.b.tsv.zst"),
            "{e}"
        );
    }
}

//! The warehouse: where staged objects are loaded, checked and published.
//!
//! One small trait with three implementations: DuckDB (embedded: laptops, tests),
//! Snowflake (production) and the simulation's warehouse ([`crate::sim`]), all passing
//! one conformance suite. The trait offers *primitives with the guarantees Snowflake
//! gives and no more*; the load protocol built from them lives once, in
//! [`crate::protocol`], so every backend runs the same decisions:
//! - a [`Transaction`] is all-or-nothing and reads committed data (READ COMMITTED, as
//!   Snowflake); nothing enforces uniqueness (Snowflake has no unique keys), so two
//!   transactions may both insert "the same" ledger row;
//! - [`Transaction::lock`] serializes the transactions that take the lock of one target
//!   (Snowflake: an `UPDATE` of the target's row in `_PGP.LOCKS`, which Snowflake runs
//!   one at a time per table); it is released at commit or rollback;
//! - DDL (create, drop, swap, marker) is never inside a transaction (Snowflake commits
//!   any open transaction before DDL);
//! - every loaded row is stamped with its load attempt ([`LOAD_ID`]) so that the
//!   publish can take exactly one attempt per chunk even when two loaders loaded the
//!   same object concurrently.

pub(crate) mod duckdb;
pub mod snowflake;
pub use self::duckdb::{DuckDb, DuckDbSettings, DEFAULT_MEMORY_LIMIT};
pub use self::snowflake::Snowflake;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

use crate::error::{Error, ErrorKind, Result};
use crate::format::Compression;
use crate::ident::TableName;
use crate::profile::{Measure, Profile};
use crate::storage::ObjectKey;
use crate::types::{Column, ColumnType};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// Name of the per-run metadata column every row carries.
pub const UPLOADED_AT: &str = "_uploaded_at";
/// Name of the task-instance column of `advanced_metadata: true` tables.
pub const TASK_INSTANCE: &str = "_task_instance";
/// The load-attempt stamp of every row in a load table (never in a target).
pub const LOAD_ID: &str = "_pgp_load";
/// The record-end field a staged record ends with when the warehouse checks it
/// ([`Warehouse::record_end_marker`]); a column of load tables only.
pub const RECORD_END: &str = "_pgp_end";

/// The columns of a warehouse table pgp creates or loads: the query's columns, then
/// the metadata columns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableSchema {
    /// Columns from the source query, in query order.
    pub columns: Vec<Column>,
    /// Whether the table has `_task_instance`.
    pub task_instance: bool,
}

/// One staged object as a load reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staged<'a> {
    pub key: &'a ObjectKey,
    pub compression: Compression,
    /// Bytes of the object's longest record, as its extractor counted them; `None`
    /// when the object does not say (written by an earlier pgp). A warehouse that reads
    /// through a bounded buffer (DuckDB) sizes the load's buffer and memory by it.
    pub longest_row: Option<u64>,
}

impl<'a> Staged<'a> {
    /// An object whose longest record is not known.
    pub fn new(key: &'a ObjectKey, compression: Compression) -> Self {
        Staged {
            key,
            compression,
            longest_row: None,
        }
    }
}

/// Values of the metadata columns for one run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunMeta {
    /// The run id.
    pub run_id: String,
    /// `_uploaded_at` of every row of the run.
    pub uploaded_at: DateTime<Utc>,
    /// `_task_instance` of every row of the run (for tables that have the column).
    pub task_instance: Option<String>,
}

/// A column as the warehouse reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ActualColumn {
    pub name: String,
    /// The type as the warehouse names it (comparable with `render_type`).
    pub data_type: String,
}

/// Where the schema of a target stands against the query.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum SchemaState {
    Missing,
    Same,
    /// Columns were added, dropped, renamed or retyped (a description of the first
    /// difference found).
    Changed(String),
}

/// One committed load attempt of one chunk: a row of the load ledger, written in the
/// same transaction as the rows it stamps.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadRecord {
    /// The run's load table.
    pub load_table: TableName,
    pub run_id: String,
    /// The chunk's index in the run.
    pub chunk: u32,
    /// The object loaded.
    pub object: String,
    /// The attempt's stamp (the value of [`LOAD_ID`] in its rows).
    pub load_id: String,
    /// Rows the attempt inserted (checked against the source's count before commit).
    pub rows: u64,
}

/// The load of a chunk a publish takes: the committed attempt with the smallest load id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChosenLoad {
    pub load_id: String,
    pub rows: u64,
}

/// What the load ledger holds for a run, counting one attempt per chunk (the attempt
/// with the smallest load id, the one a publish takes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LedgerSummary {
    /// Distinct chunks with at least one committed attempt.
    pub chunks: u64,
    /// Rows of the chosen attempts.
    pub rows: u64,
}

/// Where a run stands, as the run table records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Planned; chunks are loading.
    Planned,
    /// A loader claimed the swap (see [`RunRecord::claim`]).
    Claimed,
    /// Visible in the target. Final.
    Published,
    /// Will never be published (a later run replaced it, or it failed permanently);
    /// [`RunRecord::reason`] says why. Final.
    Abandoned,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Planned => "planned",
            RunState::Claimed => "claimed",
            RunState::Published => "published",
            RunState::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "planned" => RunState::Planned,
            "claimed" => RunState::Claimed,
            "published" => RunState::Published,
            "abandoned" => RunState::Abandoned,
            o => {
                return Err(Error::warehouse(
                    "run table",
                    format!("unknown run state {o:?}"),
                    ErrorKind::Permanent,
                ))
            }
        })
    }

    /// Published or abandoned: nothing will change it again.
    pub fn is_final(self) -> bool {
        matches!(self, RunState::Published | RunState::Abandoned)
    }
}

/// A run of one target, as the warehouse's run table (`_pgp.runs`) holds it. Only
/// written by transactions that hold the target's lock, so one row per (target, run)
/// although nothing enforces it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunRecord {
    pub target: TableName,
    pub run_id: String,
    pub load_table: TableName,
    /// `append`, `swap` or `test`.
    pub mode: String,
    /// Chunks the run was planned with.
    pub chunks: u64,
    /// What the run loads (schema, query, key): a resumed run must match it.
    pub fingerprint: String,
    pub state: RunState,
    /// The claim id of the loader swapping it in (state `claimed`).
    pub claim: Option<String>,
    /// Seconds since the claim, by the warehouse's clock.
    pub claim_age_seconds: Option<i64>,
    /// Rows published.
    pub rows: Option<u64>,
    /// Why it was abandoned.
    pub reason: Option<String>,
}

impl RunRecord {
    /// A run's row as its planner records it: `planned`, no claim, no outcome.
    pub fn planned(
        target: &TableName,
        run_id: &str,
        load_table: &TableName,
        mode: &str,
        chunks: u64,
        fingerprint: &str,
    ) -> Self {
        Self {
            target: target.clone(),
            run_id: run_id.into(),
            load_table: load_table.clone(),
            mode: mode.into(),
            chunks,
            fingerprint: fingerprint.into(),
            state: RunState::Planned,
            claim: None,
            claim_age_seconds: None,
            rows: None,
            reason: None,
        }
    }
}

/// A run as operators see it (`pgp runs`, `pgp gc`): its row and its ledger totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStatus {
    pub record: RunRecord,
    /// Seconds since the run was recorded, by the warehouse's clock.
    pub age_seconds: i64,
    /// Seconds since anything happened to it: its row changed or a chunk loaded.
    pub idle_seconds: i64,
    /// Chunks with a committed load, and their rows (one load per chunk).
    pub loaded_chunks: u64,
    pub loaded_rows: u64,
    /// Committed loads, duplicates included.
    pub loads: u64,
}

/// A change to a run's state, written under the target's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunUpdate {
    /// Claim the swap under a fresh claim id; the claim time is the warehouse's now.
    Claim(String),
    Published {
        rows: u64,
    },
    Abandoned {
        reason: String,
    },
}

/// The publish of an append run, as the warehouse runs it on its own: one transaction
/// that takes the target's lock and, only while the run is still claimed by `claim`,
/// inserts exactly `loads` (the chosen load of every chunk, read when the claim was
/// taken) and records the run published with their rows. Whatever it finds instead (the
/// claim taken over, the run finished, the target swapped since), it changes nothing. It may run late, or not
/// at all; never twice with effect, since its first effect ends the claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendJob {
    pub target: TableName,
    pub load_table: TableName,
    pub schema: TableSchema,
    pub run_id: String,
    pub claim: String,
    pub loads: Vec<ChosenLoad>,
    /// The target's marker when the claim was taken: a job that finds another (the
    /// target swapped since, its columns checked against the old table) changes nothing.
    pub marker: Option<String>,
}

/// A warehouse that runs [`AppendJob`]s on its own ([`Warehouse::jobs`]).
#[async_trait]
pub trait AppendJobs: Send + Sync {
    /// Hand the job to the warehouse; it runs after this returns, or never (an error
    /// after the warehouse took it is possible: the claim's lease covers both).
    async fn submit(&self, job: AppendJob) -> Result<()>;
}

/// A warehouse pgp loads into.
#[async_trait]
pub trait Warehouse: Send + Sync {
    /// A URL naming the warehouse, secrets redacted.
    fn url(&self) -> String;
    /// A cheap reachability check (`SELECT 1`).
    async fn health(&self) -> Result<()>;
    /// How this warehouse names a column type (as its information schema reports it).
    fn render_type(&self, ty: &ColumnType) -> String;
    /// Why this warehouse cannot hold every value of a column type exactly, if it
    /// cannot: the table is then refused when planned, naming the column, its
    /// PostgreSQL type and this reason, before anything is created or loaded.
    fn refuse(&self, ty: &ColumnType) -> Option<String> {
        let _ = ty;
        None
    }
    /// The most digits a JSON number may have for this warehouse to store it exactly,
    /// if it has a limit: a `json`, `jsonb` or JSON-array value with a longer number
    /// fails its table when extracted, naming the column, instead of loading rounded.
    fn json_number_digits(&self) -> Option<u8> {
        None
    }
    /// Whether staged records end with the record-end field ([`RECORD_END`], the value
    /// `1`) that this warehouse's load checks: a record cut short or run long (fields
    /// added or lost on the way) then fails its load instead of loading shifted or NULL
    /// values, and no record is an empty line.
    fn record_end_marker(&self) -> bool {
        false
    }
    /// Whether this warehouse's list type has one depth per column (DuckDB's
    /// `INTEGER[]` holds one dimension, `INTEGER[][]` two): an array value with another
    /// number of dimensions than its column's declared ones then fails its table when
    /// extracted, naming the column, instead of loading altered. A warehouse whose
    /// array holds any nesting (Snowflake's ARRAY) carries every value.
    fn fixed_list_depth(&self) -> bool {
        true
    }
    /// This warehouse as a side of `pgp verify`, when it can be one (DuckDB,
    /// Snowflake; the simulation's warehouse runs no SQL).
    fn reader(&self) -> Option<&dyn crate::verify::Reader> {
        None
    }
    /// The columns of a table in order, `None` when the table does not exist.
    async fn columns(&self, table: &TableName) -> Result<Option<Vec<ActualColumn>>>;
    /// Create a table (and its schema) with these columns unless it exists; `stamped`
    /// adds the [`LOAD_ID`] column of load tables.
    async fn create_table(
        &self,
        table: &TableName,
        schema: &TableSchema,
        stamped: bool,
    ) -> Result<()>;
    /// Whether this warehouse runs one transaction at a time, from `begin` to its end
    /// (DuckDB: one connection, one writing process). A load's check that its chunk is
    /// not loaded yet and its `COPY` then commit before anyone else looks, so a load
    /// table holds exactly one load per chunk. Such a table is what a swap needs: it is
    /// swapped in itself, its stamp column dropped by [`Warehouse::swap_in`], instead of
    /// being copied chunk by chunk into a build table (module `protocol::build`), and
    /// the data is written once, not twice.
    fn serial(&self) -> bool {
        false
    }
    /// The warehouse's own job runner, if it runs an append's publish on its own after
    /// the request that submitted it has answered (Snowflake's asynchronous queries):
    /// then no request waits for a statement that grows with the run (module
    /// `protocol::publish`). `None`: the publish runs inside the request.
    fn jobs(&self) -> Option<&dyn AppendJobs> {
        None
    }
    /// Make `target` lockable by [`Transaction::lock`] (idempotent DDL, run before the
    /// transaction that locks it).
    async fn prepare_lock(&self, target: &TableName) -> Result<()>;
    /// Drop a table if it exists.
    async fn drop_table(&self, table: &TableName) -> Result<()>;
    /// Put `from` in place of `to` in one step readers cannot see half of (Snowflake's
    /// `SWAP WITH`; a rename when `to` is missing), first marking `from` with `marker`
    /// (a table comment) so that the new `to` carries it. Afterwards `from` holds the
    /// old table, if there was one. On a [`Warehouse::serial`] warehouse `from` may be
    /// a load table: its stamp column ([`LOAD_ID`]) is dropped in the same step.
    async fn swap_in(&self, from: &TableName, to: &TableName, marker: &str) -> Result<()>;
    /// The marker (comment) of a table; `None` when absent or the table is missing.
    async fn marker(&self, table: &TableName) -> Result<Option<String>>;
    /// Rows in a table.
    async fn row_count(&self, table: &TableName) -> Result<u64>;
    /// Chunks of a run with a committed load (for the planner resuming it).
    async fn loaded_chunks(&self, load_table: &TableName, run_id: &str) -> Result<Vec<u32>>;
    /// Open a transaction. Dropping it without `commit` rolls it back (at the latest
    /// before the session's next statement), releasing its lock.
    async fn begin(&self) -> Result<Box<dyn Transaction>>;
    /// Every run in the run table with its ledger totals, newest first.
    async fn run_overview(&self) -> Result<Vec<RunStatus>>;
    /// Delete the ledger rows of a finished run; returns how many there were.
    async fn trim_ledger(&self, load_table: &TableName, run_id: &str) -> Result<u64>;
}

/// An open transaction (see the module doc for its guarantees).
#[async_trait]
pub trait Transaction: Send {
    /// Hold the publish lock of `target` until commit or rollback. Waits a bounded time
    /// (Snowflake: `LOCK_TIMEOUT`) for another holder, then fails as busy.
    async fn lock(&mut self, target: &TableName) -> Result<()>;
    /// Load one staged object into `table`, every row stamped `load_id` and given the
    /// run's metadata columns; returns the rows inserted.
    async fn copy_into(
        &mut self,
        table: &TableName,
        schema: &TableSchema,
        run: &RunMeta,
        staged: Staged<'_>,
        load_id: &str,
    ) -> Result<u64>;
    /// The profile ([`crate::profile`]) of the rows that one load attempt stamped
    /// `load_id` in `table`: per column of `schema`, its NULL count and its measure,
    /// computed by the warehouse (one aggregate statement, one row back).
    async fn profile(
        &mut self,
        table: &TableName,
        schema: &TableSchema,
        load_id: &str,
    ) -> Result<Profile>;
    /// The columns of a table (as [`Warehouse::columns`], inside the transaction).
    async fn columns(&mut self, table: &TableName) -> Result<Option<Vec<ActualColumn>>>;
    /// The marker of a table (as [`Warehouse::marker`], inside the transaction).
    async fn marker(&mut self, table: &TableName) -> Result<Option<String>>;
    /// Add a row to the load ledger.
    async fn record_load(&mut self, record: &LoadRecord) -> Result<()>;
    /// The chosen committed load of this chunk (the smallest load id), if any.
    async fn chunk_loaded(
        &mut self,
        load_table: &TableName,
        run_id: &str,
        chunk: u32,
    ) -> Result<Option<ChosenLoad>>;
    /// The chosen committed load of every chunk of a run that has one, by chunk: one
    /// statement however many chunks (what [`Transaction::chunk_loaded`] gives chunk
    /// by chunk), so that claiming an append job costs the same for 13 chunks or 5,000.
    async fn chosen_loads(
        &mut self,
        load_table: &TableName,
        run_id: &str,
    ) -> Result<std::collections::BTreeMap<u32, ChosenLoad>>;
    /// Chunks of a run with a committed load in the ledger of `load_table` and none in
    /// the ledger of `built`, ascending, at most `limit` (one statement, at most
    /// `limit` rows back, whatever the run's size).
    async fn unbuilt_chunks(
        &mut self,
        load_table: &TableName,
        built: &TableName,
        run_id: &str,
        limit: usize,
    ) -> Result<Vec<u32>>;
    /// The ledger's chunks and rows for a run (one statement, one row back).
    async fn ledger_summary(
        &mut self,
        load_table: &TableName,
        run_id: &str,
    ) -> Result<LedgerSummary>;
    /// Insert into `to` the rows of `from` that the chosen attempt of each chunk of the
    /// run loaded (the smallest load id per chunk in the ledger), without the stamp;
    /// returns the rows inserted.
    async fn insert_chosen(
        &mut self,
        from: &TableName,
        to: &TableName,
        schema: &TableSchema,
        run_id: &str,
    ) -> Result<u64>;
    /// Insert into `to` the rows of `from` that one load attempt stamped `load_id`,
    /// without the stamp; returns the rows inserted. (The incremental build of a swap:
    /// one chunk's chosen load at a time, so no statement grows with the run.)
    async fn insert_load(
        &mut self,
        from: &TableName,
        to: &TableName,
        schema: &TableSchema,
        load_id: &str,
    ) -> Result<u64>;
    /// The runs of a target that are not final (planned or claimed).
    async fn open_runs(&mut self, target: &TableName) -> Result<Vec<RunRecord>>;
    /// One run of a target.
    async fn run(&mut self, target: &TableName, run_id: &str) -> Result<Option<RunRecord>>;
    /// Add a run (state `planned`).
    async fn insert_run(&mut self, run: &RunRecord) -> Result<()>;
    /// Change a run's state.
    async fn update_run(
        &mut self,
        target: &TableName,
        run_id: &str,
        update: &RunUpdate,
    ) -> Result<()>;
    async fn commit(self: Box<Self>) -> Result<()>;
    async fn rollback(self: Box<Self>) -> Result<()>;
}

/// Compare the target's columns with the expected ones, ignoring pgp's metadata
/// columns. Names compare case-insensitively (both warehouses fold or ignore case).
pub fn schema_state(
    wh: &dyn Warehouse,
    expected: &[Column],
    actual: Option<&[ActualColumn]>,
) -> SchemaState {
    let Some(actual) = actual else {
        return SchemaState::Missing;
    };
    let actual: Vec<&ActualColumn> = actual
        .iter()
        .filter(|c| {
            !c.name.eq_ignore_ascii_case(UPLOADED_AT)
                && !c.name.eq_ignore_ascii_case(TASK_INSTANCE)
                && !c.name.eq_ignore_ascii_case(LOAD_ID)
                && !c.name.eq_ignore_ascii_case(RECORD_END)
        })
        .collect();
    for (i, e) in expected.iter().enumerate() {
        let want = wh.render_type(&e.ty);
        match actual.get(i) {
            None => return SchemaState::Changed(format!("column `{}` was added", e.name)),
            Some(a) if !a.name.eq_ignore_ascii_case(e.name.as_str()) => {
                return SchemaState::Changed(format!(
                    "column {} is `{}` in the query but `{}` in the target (added, dropped or renamed)",
                    i + 1,
                    e.name,
                    a.name
                ))
            }
            Some(a) if !a.data_type.eq_ignore_ascii_case(&want) => {
                return SchemaState::Changed(format!(
                    "column `{}` changed type: {} in the target, {} from the query",
                    e.name, a.data_type, want
                ))
            }
            Some(_) => {}
        }
    }
    if actual.len() > expected.len() {
        return SchemaState::Changed(format!(
            "column `{}` was dropped",
            actual[expected.len()].name
        ));
    }
    SchemaState::Same
}

/// Open a warehouse from `PGP_WAREHOUSE_URL` (`duckdb:///abs/file.duckdb`); `store` is
/// the object store the warehouse loads from.
pub fn open(url: &str, store: Arc<dyn crate::storage::ObjectStore>) -> Result<Arc<dyn Warehouse>> {
    open_with(url, store, false)
}

/// Open a warehouse for reading only (`pgp plan`): nothing is created or changed.
pub fn open_read_only(
    url: &str,
    store: Arc<dyn crate::storage::ObjectStore>,
) -> Result<Arc<dyn Warehouse>> {
    open_with(url, store, true)
}

fn open_with(
    url: &str,
    store: Arc<dyn crate::storage::ObjectStore>,
    read_only: bool,
) -> Result<Arc<dyn Warehouse>> {
    if let Some(rest) = url.strip_prefix("duckdb://") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let settings = DuckDbSettings::from_query(query)?;
        if !path.starts_with('/') {
            return Err(Error::Config(format!(
                "PGP_WAREHOUSE_URL {url:?}: use duckdb:///absolute/path.duckdb"
            )));
        }
        let path = std::path::Path::new(path);
        return Ok(Arc::new(if read_only {
            DuckDb::open_read_only_with(path, store, &settings)?
        } else {
            DuckDb::open_with(path, store, &settings)?
        }));
    }
    if url.starts_with("snowflake://") {
        // Reads nothing and changes nothing until the first statement (which logs in).
        let cfg = snowflake::config::SnowflakeConfig::from_url(
            url,
            &crate::params::ProcessEnv,
            &store.url(),
        )?;
        return Ok(Arc::new(Snowflake::new(cfg)?));
    }
    let scheme = url.split("://").next().unwrap_or(url);
    Err(Error::Config(format!(
        "PGP_WAREHOUSE_URL: unsupported scheme {scheme:?} (duckdb:///path or snowflake://USER@ACCOUNT/DATABASE)"
    )))
}

/// A warehouse URL fit for logs: any password replaced by `***`.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparsable warehouse url>".into(),
    }
}

/// The SQL dialect of a profile query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    DuckDb,
    Snowflake,
    /// The source's side of `pgp verify` ([`crate::verify`]).
    Postgres,
}

impl Dialect {
    /// The dialect's name of the text type every aggregate is read back as.
    pub fn text_type(self) -> &'static str {
        match self {
            Dialect::DuckDb => "VARCHAR",
            Dialect::Snowflake => "TEXT",
            Dialect::Postgres => "text",
        }
    }
}

/// The select list of a profile query over `columns` (already quoted for the dialect):
/// per column its NULL count and its measure's aggregate, each as text, in the order
/// [`crate::profile::from_aggregates`] reads them (a schema has at least one column).
/// The functions, by dialect:
/// - characters: DuckDB `length` counts code points (`strlen` would count bytes);
///   Snowflake `LENGTH` counts UTF-8 characters as one
///   (<https://docs.snowflake.com/en/sql-reference/functions/length>);
/// - bytes of binary values: DuckDB `octet_length`; Snowflake `LENGTH` of a BINARY is
///   its bytes (same page);
/// - true values: `count_if` / `COUNT_IF`;
/// - sums: `sum` of the column as loaded (HUGEINT or DECIMAL(38,s) in DuckDB,
///   NUMBER(38,s) in Snowflake), read back at the column's scale. In Snowflake every
///   summed value is cast to NUMBER(38,s) first: a no-op widening there (SUM of NUMBER
///   is NUMBER(38,s) anyway), and it keeps the emulator (fakesnow), which wraps a bare
///   numeric aggregate's argument in `TRY_CAST(… AS DOUBLE)`, exact;
/// - PostgreSQL (the source, for `pgp verify`): `length(concat(c))`, the characters of
///   the type's output text (what was shipped), `octet_length` of bytea, `count(*)
///   FILTER (WHERE c)`, and `sum` (bigint or numeric, exact).
///
/// `quote` names a column in the dialect.
pub fn profile_select(
    columns: &[Column],
    quote: impl Fn(&Column) -> String,
    dialect: Dialect,
) -> String {
    let text = dialect.text_type();
    let mut items = Vec::with_capacity(2 * columns.len());
    for col in columns {
        let (c, m) = (quote(col), Measure::of(&col.ty));
        items.push(format!("CAST(count(*) - count({c}) AS {text})"));
        let agg = match (m, dialect) {
            (Measure::Nulls, _) => "NULL".to_string(),
            (Measure::Chars, Dialect::DuckDb) => format!("sum(length({c}))"),
            (Measure::Octets, Dialect::DuckDb) => format!("sum(octet_length({c}))"),
            (Measure::Sum | Measure::Unscaled(_), Dialect::DuckDb) => format!("sum({c})"),
            (Measure::Chars | Measure::Octets, Dialect::Snowflake) => {
                format!("sum(CAST(length({c}) AS NUMBER(38,0)))")
            }
            (Measure::Sum, Dialect::Snowflake) => format!("sum(CAST({c} AS NUMBER(38,0)))"),
            (Measure::Unscaled(s), Dialect::Snowflake) => {
                format!("sum(CAST({c} AS NUMBER(38,{s})))")
            }
            (Measure::Trues, Dialect::Postgres) => format!("count(*) FILTER (WHERE {c})"),
            (Measure::Trues, _) => format!("count_if({c})"),
            // The length of the type's output text, which is what was shipped:
            // `concat` renders each argument with its type's output function, while a
            // cast to text may not (`char(n)` loses its padding, `inet` gains a netmask).
            (Measure::Chars, Dialect::Postgres) => format!("sum(length(concat({c})))"),
            (Measure::Octets, Dialect::Postgres) => format!("sum(octet_length({c}))"),
            (Measure::Sum | Measure::Unscaled(_), Dialect::Postgres) => format!("sum({c})"),
        };
        items.push(format!("CAST({agg} AS {text})"));
    }
    items.join(", ")
}

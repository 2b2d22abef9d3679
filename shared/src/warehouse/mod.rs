//! The warehouse: where staged objects are loaded, checked and published.
//!
//! One small trait; DuckDB (embedded, laptops and tests) implements it here, Snowflake
//! in production. Both pass the same conformance suite. The trait is shaped around the
//! guarantees the pipeline gives its readers:
//! - chunks load into a *stage* (a per-run staging table or `<table>_TEMP`), each in
//!   one transaction that also records the object in a load ledger, so a redelivered
//!   chunk is a no-op;
//! - a run becomes visible in one step: one transaction appends the stage to the
//!   target, or swaps `_TEMP` in; the publish is recorded too, so it never happens
//!   twice for one run.

mod duckdb;
pub mod snowflake;
pub use self::duckdb::DuckDb;
pub use self::snowflake::Snowflake;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

use crate::error::{Error, Result};
use crate::format::Compression;
use crate::ident::{Ident, TableName};
use crate::storage::ObjectKey;
use crate::types::{Column, ColumnType};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// Name of the per-run metadata column every row carries.
pub const UPLOADED_AT: &str = "_uploaded_at";
/// Name of the task-instance column of `advanced_metadata: true` tables.
pub const TASK_INSTANCE: &str = "_task_instance";

/// The columns of a warehouse table pgp creates or loads: the query's columns, then
/// the metadata columns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableSchema {
    /// Columns from the source query, in query order.
    pub columns: Vec<Column>,
    /// Whether the table has `_task_instance`.
    pub task_instance: bool,
}

/// Values of the metadata columns for one run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunMeta {
    /// The run id, recorded in the load ledger.
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

/// The outcome of loading one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// Rows the warehouse inserted (or had inserted, when already loaded).
    pub rows: u64,
    /// True when the ledger showed this object was loaded before: nothing was done.
    pub already: bool,
}

/// The outcome of publishing a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Rows made visible.
    pub rows: u64,
    /// True when this run was already published for this target: nothing was done.
    pub already: bool,
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

/// A warehouse pgp loads into.
#[async_trait]
pub trait Warehouse: Send + Sync {
    /// A URL naming the warehouse, secrets redacted.
    fn url(&self) -> String;
    /// A cheap reachability check (`SELECT 1`).
    async fn health(&self) -> Result<()>;
    /// How this warehouse names a column type (as its information schema reports it).
    fn render_type(&self, ty: &ColumnType) -> String;
    /// The columns of a table in order, `None` when the table does not exist.
    async fn columns(&self, table: &TableName) -> Result<Option<Vec<ActualColumn>>>;
    /// Create a table (and its schema) with these columns, replacing any existing one.
    async fn create_table(&self, table: &TableName, schema: &TableSchema) -> Result<()>;
    /// Drop a table if it exists.
    async fn drop_table(&self, table: &TableName) -> Result<()>;
    /// Load one staged object into `table`, in one transaction with its ledger entry;
    /// an object already in the ledger for (`table`, run) is skipped.
    async fn load(
        &self,
        table: &TableName,
        schema: &TableSchema,
        run: &RunMeta,
        object: &ObjectKey,
        compression: Compression,
    ) -> Result<Loaded>;
    /// The objects the load ledger holds for (`table`, run), with their row counts:
    /// how a loader that handled one chunk learns whether the run's last one landed.
    async fn loaded_objects(&self, table: &TableName, run_id: &str) -> Result<Vec<(String, u64)>>;
    /// Whether `run_id` was already published into `target` (append or swap).
    async fn published(&self, target: &TableName, run_id: &str) -> Result<bool>;
    /// Append `stage` to `target` and drop `stage`, atomically, once per run.
    async fn publish_append(
        &self,
        stage: &TableName,
        target: &TableName,
        run_id: &str,
    ) -> Result<Published>;
    /// Replace `target` by `temp` atomically (readers see the old or the new table,
    /// never neither), once per run.
    async fn publish_swap(
        &self,
        temp: &TableName,
        target: &TableName,
        run_id: &str,
    ) -> Result<Published>;
    /// The largest value of an integer column (`None` for an empty table).
    async fn max_key(&self, table: &TableName, key: &Ident) -> Result<Option<i64>>;
    /// Rows in a table.
    async fn row_count(&self, table: &TableName) -> Result<u64>;
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
            !c.name.eq_ignore_ascii_case(UPLOADED_AT) && !c.name.eq_ignore_ascii_case(TASK_INSTANCE)
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
    if let Some(path) = url.strip_prefix("duckdb://") {
        if !path.starts_with('/') {
            return Err(Error::Config(format!(
                "PGP_WAREHOUSE_URL {url:?}: use duckdb:///absolute/path.duckdb"
            )));
        }
        let path = std::path::Path::new(path);
        return Ok(Arc::new(if read_only {
            DuckDb::open_read_only(path, store)?
        } else {
            DuckDb::open(path, store)?
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

//! Planning: what each table of a manifest needs in this run, decided from the load
//! type, the table's kind, its query's columns and the target's current schema.
//! Planning touches nothing (`pgp plan` prints it); running executes it. The Cloud Run
//! planner publishes the same plan as chunk messages.

use crate::error::{Error, Result};
use crate::ident::TableName;
use crate::manifest::{PrimaryKey, TableSpec};
use crate::params::{Resolver, WINDOW_RELATED};
use crate::query::ChunkKey;
use crate::query::{self, KeyRange, Kind};
use crate::source::Source;
use crate::types::Column;
use crate::warehouse::{schema_state, SchemaState, TableSchema, Warehouse, TASK_INSTANCE};

/// `--load-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadType {
    /// Full snapshot of SCD tables, appended every run.
    Scd,
    /// The time window of incremental tables, appended.
    Incremental,
    /// Full re-sync of tables whose target is missing or changed (alias `sync`).
    #[serde(alias = "sync")]
    Backfill,
    /// A bounded sample load of new or changed tables into a scratch table.
    Test,
}

impl std::str::FromStr for LoadType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "scd" => Ok(LoadType::Scd),
            "incremental" => Ok(LoadType::Incremental),
            "backfill" | "sync" => Ok(LoadType::Backfill),
            "test" => Ok(LoadType::Test),
            o => Err(format!(
                "unknown load type {o:?} (scd|incremental|backfill|test)"
            )),
        }
    }
}

impl std::fmt::Display for LoadType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LoadType::Scd => "scd",
            LoadType::Incremental => "incremental",
            LoadType::Backfill => "backfill",
            LoadType::Test => "test",
        })
    }
}

/// What the plan decides for a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Load rows this run.
    Load,
    /// Nothing to do in this run (see `reason`).
    Skip,
    /// A full re-sync is needed: done in this run for `backfill` (and for `scd` of
    /// new or changed SCD tables); only reported for `incremental`.
    Backfill,
    /// The table cannot be planned (see `reason`).
    Error,
}

/// How loaded rows reach the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Into the run's load table, then one atomic append.
    Append,
    /// Into the run's load table in key ranges, then one atomic swap.
    Swap,
    /// Into the run's load table, then swapped into the scratch table
    /// `<table>_PGP_TEST`; the target is untouched.
    Test,
    /// Nothing is loaded this run.
    None,
}

/// The plan for one table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TablePlan {
    /// The manifest key.
    pub table: String,
    pub kind: Kind,
    pub action: Action,
    pub mode: Mode,
    /// Why: a skip, a needed backfill, an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `schema.table`.
    pub target: String,
    /// The run's own load table (`<table>_PGP_LOAD_<run>`), where chunks land before
    /// the publish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_table: Option<String>,
    /// The key ranges, one object each; a single unbounded range when not chunked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<KeyRange>,
    /// The key the ranges are over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<crate::query::ChunkKey>,
    /// How the chunks were cut: the key and how its bounds were found, ranges of row
    /// locations and why, or why the table is one chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunking: Option<String>,
    /// Row cap of a test load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// The resolved query the chunks read (window or full table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The exact `COPY` statement sent to PostgreSQL for the whole table (each chunk
    /// adds its key range to it): what to compare with `psql \copy` when measuring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_sql: Option<String>,
    /// The columns and types as they will be created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<TableSchema>,
    #[serde(skip)]
    pub target_name: Option<TableName>,
    #[serde(skip)]
    pub load_name: Option<TableName>,
    /// Where a loading plan's rows become visible: the target, or the scratch table
    /// `<table>_PGP_TEST` of a test load.
    #[serde(skip)]
    pub visible_name: Option<TableName>,
}

impl TablePlan {
    fn new(spec: &TableSpec, kind: Kind) -> Self {
        TablePlan {
            table: spec.name.clone(),
            kind,
            action: Action::Skip,
            mode: Mode::None,
            reason: None,
            target: spec.target.to_string(),
            load_table: None,
            chunks: Vec::new(),
            key: None,
            chunking: None,
            limit: None,
            query: None,
            copy_sql: None,
            schema: None,
            target_name: Some(spec.target.clone()),
            load_name: None,
            visible_name: None,
        }
    }

    fn skip(mut self, reason: impl Into<String>) -> Self {
        self.action = Action::Skip;
        self.reason = Some(reason.into());
        self
    }

    /// A plan that failed before anything was decided.
    pub fn error(spec: &TableSpec, e: &Error) -> Self {
        let mut p = TablePlan::new(spec, query::classify(&spec.import_query));
        p.action = Action::Error;
        p.reason = Some(e.to_string());
        p
    }

    /// Whether running this plan loads rows.
    pub fn loads(&self) -> bool {
        self.mode != Mode::None && matches!(self.action, Action::Load | Action::Backfill)
    }
}

/// Settings of planning.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub load_type: LoadType,
    /// Rows per chunk; `None` sizes chunks from a sample of row sizes.
    pub chunk_rows: Option<u64>,
    /// Row cap of test loads.
    pub test_rows: u64,
    /// The run id (names the per-run stage).
    pub run_id: String,
    /// How the chunks will be staged (sizes them, [`chunk_rows_for`]).
    pub compression: crate::format::Compression,
}

/// Chunk size aim: uncompressed bytes per object. gzip shrinks table text 2-4x
/// (measured 2.2x on the benchmark's hash-heavy table), so ~400 MB of text gives the
/// 100-250 MB objects Snowflake recommends across that whole range. zstd shrinks the
/// same text 4x (180 MB for the bench table's 718 MB, against gzip's 312 MB), so its
/// chunks hold 1.5x the text ([`ZSTD_TEXT_FACTOR`]): ~150 MB objects there, not 90.
pub const TARGET_CHUNK_TEXT_BYTES: f64 = 400.0 * 1024.0 * 1024.0;
/// How much more text a zstd chunk holds than a gzip or plain one.
pub const ZSTD_TEXT_FACTOR: f64 = 1.5;
/// Chunk size when the sample says nothing (an empty table).
pub const DEFAULT_CHUNK_ROWS: u64 = 2_000_000;

/// Rows per chunk for a mean row size, staged with `compression`.
pub fn chunk_rows_for(mean_row_bytes: Option<f64>, compression: crate::format::Compression) -> u64 {
    let text = match compression {
        crate::format::Compression::Zstd => TARGET_CHUNK_TEXT_BYTES * ZSTD_TEXT_FACTOR,
        _ => TARGET_CHUNK_TEXT_BYTES,
    };
    match mean_row_bytes {
        Some(b) if b > 0.0 => ((text / b) as u64).clamp(10_000, 50_000_000),
        _ => DEFAULT_CHUNK_ROWS,
    }
}

/// The key a table's chunks are ranges of: `export_table_primary_key` as a column of
/// the query (matched case-insensitively; any type with an ordering), or as SQL
/// expressions over its columns (`CONCAT(sha, '_', issue_id)`, or `a, b` for a
/// composite key). The key need not be unique: equal keys share a range.
fn chunk_key(spec: &TableSpec, columns: &[Column]) -> std::result::Result<ChunkKey, String> {
    match &spec.primary_key {
        PrimaryKey::Column(k) => match columns
            .iter()
            .find(|c| c.name.as_str().eq_ignore_ascii_case(k.as_str()))
        {
            None => Err(format!(
                "export_table_primary_key `{k}` is not a column of the query"
            )),
            Some(c) => Ok(ChunkKey::column(&c.name)),
        },
        PrimaryKey::Expression(e) => {
            ChunkKey::parse(e).map_err(|why| format!("export_table_primary_key {why}"))
        }
    }
}

/// Cut a loading plan's rows into chunks (`p.query` holds the query they read): key
/// ranges of `export_table_primary_key` when it can split the rows; else, when every
/// chunk reads one snapshot (`pgp tap`) and the query's rows come one per row of one
/// table, ranges of row locations (`ctid`, read as TID range scans); else one chunk.
/// `p.chunking` says which and why.
async fn chunk(
    p: &mut TablePlan,
    spec: &TableSpec,
    columns: &[Column],
    opts: &PlanOptions,
    src: &dyn Source,
) -> Result<()> {
    let query = p.query.clone().unwrap_or_default();
    let step = match opts.chunk_rows {
        Some(n) => n,
        None => chunk_rows_for(
            src.mean_row_bytes(&spec.name, &query).await?,
            opts.compression,
        ),
    };
    let unusable = match chunk_key(spec, columns) {
        Ok(key) => match src.key_splits(&spec.name, &query, &key, step).await {
            Ok(splits) => {
                p.chunking = Some(format!("key `{key}`, {}", splits.method));
                p.chunks = splits.ranges();
                p.key = Some(key);
                return Ok(());
            }
            Err(e) if e.is_retriable() => return Err(e),
            // The key does not fit the query (a column it does not select, a type
            // without an ordering).
            Err(e) => e.to_string(),
        },
        Err(why) => why,
    };
    let physical = if !src.shares_snapshot() {
        Err(
            "its chunks would not read one snapshot (only an embedded run's do), and ranges of \
             row locations could then miss or repeat a row that moves while they are read"
                .to_string(),
        )
    } else {
        match query::with_row_location(&query) {
            Err(why) => Err(format!("it cannot be cut by row location: {why}")),
            Ok(located) => {
                let key = ChunkKey::physical();
                match src.key_splits(&spec.name, &located, &key, step).await {
                    Ok(splits) => Ok((located, key, splits)),
                    Err(e) if e.is_retriable() => return Err(e),
                    Err(Error::Query { message, .. }) => {
                        Err(format!("it cannot be cut by row location: {message}"))
                    }
                    Err(e) => Err(format!("it cannot be cut by row location: {e}")),
                }
            }
        }
    };
    match physical {
        Ok((_, _, splits)) if splits.bounds.is_empty() => {
            p.chunking = Some(format!("one chunk: it fits (no usable key: {unusable})"));
            p.chunks = vec![KeyRange::ALL];
        }
        Ok((located, key, splits)) => {
            p.chunking = Some(format!(
                "row locations (ctid), {} (no usable key: {unusable})",
                splits.method
            ));
            p.chunks = splits.ranges();
            p.key = Some(key);
            p.query = Some(located);
        }
        Err(why) => {
            tracing::warn!(table = %spec.name, key = %unusable, reason = %why, "loading in one chunk");
            p.chunking = Some(format!("one chunk: no usable key ({unusable}); {why}"));
            p.chunks = vec![KeyRange::ALL];
        }
    }
    Ok(())
}

/// The query text with every non-window placeholder resolved, and the full-table
/// query derived for incremental tables.
pub(crate) fn full_query(spec: &TableSpec, kind: Kind, resolver: &Resolver) -> Result<String> {
    let text = query::with_filtering(&spec.import_query, spec.additional_filtering.as_deref());
    let keep = |n: &str| WINDOW_RELATED.contains(&n);
    let resolved = resolver.resolve(&spec.name, &text, &keep)?;
    match kind {
        Kind::Scd => {
            // An SCD query has no window; any window-related name left is unresolved.
            resolver.resolve(&spec.name, &resolved, &|_| false)
        }
        Kind::Incremental => query::full_table_query(&spec.name, &resolved),
    }
}

fn window_query(spec: &TableSpec, resolver: &Resolver) -> Result<String> {
    let text = query::with_filtering(&spec.import_query, spec.additional_filtering.as_deref());
    resolver.resolve(&spec.name, &text, &|_| false)
}

/// Plan one table. `src` is the open source connection, `wh` the warehouse; only
/// reads happen.
pub async fn plan_table(
    spec: &TableSpec,
    opts: &PlanOptions,
    resolver: &Resolver<'_>,
    src: &dyn Source,
    wh: &dyn Warehouse,
) -> Result<TablePlan> {
    let kind = query::classify(&spec.import_query);
    let mut p = TablePlan::new(spec, kind);
    match (opts.load_type, kind) {
        (LoadType::Scd, Kind::Incremental) => {
            return Ok(p.skip("incremental table: loaded by --load-type incremental"))
        }
        (LoadType::Incremental, Kind::Scd) => {
            return Ok(p.skip("SCD table: loaded by --load-type scd"))
        }
        _ => {}
    }
    let query = match (opts.load_type, kind) {
        (LoadType::Incremental, _) => window_query(spec, resolver)?,
        _ => full_query(spec, kind, resolver)?,
    };
    let columns = src.describe(&spec.name, &query).await?;
    // Refused loudly, never altered: a column the warehouse cannot hold exactly fails
    // the table here, before any table is created or row read.
    let refused: Vec<String> = columns
        .iter()
        .filter_map(|c| {
            wh.refuse(&c.ty)
                .map(|why| format!("column {} ({}): {why}", c.name, c.pg_type))
        })
        .collect();
    if !refused.is_empty() {
        p.action = Action::Error;
        p.reason = Some(format!(
            "the warehouse cannot hold these values exactly: {}",
            refused.join("; ")
        ));
        return Ok(p);
    }
    let target = spec.target.clone();
    let actual = wh.columns(&target).await?;
    let state = schema_state(wh, &columns, actual.as_deref());
    // An existing target keeps its own metadata columns (the schema check ignores them).
    let task_instance = match &actual {
        Some(cols) => cols
            .iter()
            .any(|c| c.name.eq_ignore_ascii_case(TASK_INSTANCE)),
        None => spec.advanced_metadata,
    };
    let schema = TableSchema {
        columns: columns.clone(),
        task_instance,
    };
    p.query = Some(query.clone());
    let changed = match &state {
        SchemaState::Same => None,
        SchemaState::Missing => Some(format!("target {target} does not exist")),
        SchemaState::Changed(d) => Some(format!("target {target} changed: {d}")),
    };

    // Every run loads into a table of its own.
    let load = target.with_suffix(&format!("_PGP_LOAD_{}", stage_suffix(&opts.run_id)))?;
    match (opts.load_type, changed) {
        (LoadType::Scd | LoadType::Incremental, None) => {
            p.action = Action::Load;
            p.mode = Mode::Append;
            p.visible_name = Some(target.clone());
            // Appends are chunked like re-syncs when the rows need more than one
            // chunk, so no extract request grows with the table.
            chunk(&mut p, spec, &columns, opts, src).await?;
        }
        (LoadType::Incremental, Some(why)) => {
            p.action = Action::Backfill;
            p.reason = Some(format!(
                "{why}: needs --load-type backfill before incremental loads"
            ));
        }
        (LoadType::Backfill | LoadType::Scd, Some(why)) => {
            p.action = Action::Backfill;
            p.mode = Mode::Swap;
            p.reason = Some(why);
            p.visible_name = Some(target.clone());
            chunk(&mut p, spec, &columns, opts, src).await?;
        }
        (LoadType::Backfill, None) | (LoadType::Test, None) => {
            return Ok(p.skip(format!("target {target} is up to date with the query")));
        }
        (LoadType::Test, Some(why)) => {
            p.action = Action::Load;
            p.mode = Mode::Test;
            p.reason = Some(why);
            p.limit = Some(opts.test_rows);
            p.chunks = vec![KeyRange::ALL];
            p.chunking = Some(format!(
                "one chunk: a test load reads at most {} rows",
                opts.test_rows
            ));
            p.visible_name = Some(target.with_suffix("_PGP_TEST")?);
        }
    }
    p.load_table = Some(load.to_string());
    p.load_name = Some(load);
    p.schema = Some(schema);
    p.copy_sql = Some(
        crate::source::ChunkQuery {
            table: &p.table,
            query: p.query.as_deref().unwrap_or_default(),
            columns: &p.schema.as_ref().expect("set above").columns,
            key: p.key.as_ref(),
            range: &KeyRange::ALL,
            limit: p.limit,
            json_number_digits: wh.json_number_digits(),
            fixed_list_depth: wh.fixed_list_depth(),
            record_end: wh.record_end_marker(),
        }
        .copy_sql(),
    );
    Ok(p)
}

/// A run id made safe for a table-name suffix.
pub fn stage_suffix(run_id: &str) -> String {
    run_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_follows_row_size() {
        use crate::format::Compression;
        assert_eq!(chunk_rows_for(None, Compression::Gzip), DEFAULT_CHUNK_ROWS);
        assert_eq!(
            chunk_rows_for(Some(262.0), Compression::Gzip),
            (TARGET_CHUNK_TEXT_BYTES / 262.0) as u64
        );
        assert_eq!(
            chunk_rows_for(Some(262.0), Compression::None),
            chunk_rows_for(Some(262.0), Compression::Gzip)
        );
        assert_eq!(
            chunk_rows_for(Some(262.0), Compression::Zstd),
            (TARGET_CHUNK_TEXT_BYTES * ZSTD_TEXT_FACTOR / 262.0) as u64
        );
        assert_eq!(chunk_rows_for(Some(1e12), Compression::Gzip), 10_000);
    }

    #[test]
    fn sync_is_backfill() {
        assert_eq!("sync".parse::<LoadType>().unwrap(), LoadType::Backfill);
    }
}

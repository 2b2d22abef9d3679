//! Running a manifest on one machine: plan each table, extract its chunks into the
//! object store, load them into the warehouse, check counts, publish atomically.
//!
//! The steps are the same functions the Cloud Run services call (`extract_chunk`,
//! `load_chunk`, `publish`); here they run in-process, one after another.

use crate::error::{Error, Result};
use crate::extract::{extract_chunk, Destination, Extracted};
use crate::format::{copy_statement, Compression};
use crate::ident::TableName;
use crate::manifest::{Manifest, TableSpec};
use crate::params::{Env, Resolver, RunParams, Window};
use crate::plan::{plan_table, Action, LoadType, Mode, PlanOptions, TablePlan};
use crate::query::{self, KeyRange, Kind};
use crate::source::{PgSource, SourceConfig};
use crate::storage::{Metadata, ObjectKey, ObjectStore};
use crate::types::projection;
use crate::warehouse::{Published, RunMeta, TableSchema, Warehouse};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Instant;

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub load_type: LoadType,
    /// Only these manifest tables (all when empty).
    pub tables: Vec<String>,
    pub params: RunParams,
    /// Rows per chunk of a re-sync (`None`: sized from the rows).
    pub chunk_rows: Option<u64>,
    /// Row cap of test loads.
    pub test_rows: u64,
    pub compression: Compression,
    /// Names objects, stages and ledger entries; a retry with the same id is a no-op
    /// for what already landed.
    pub run_id: String,
    /// The run's start: default execution date and `_uploaded_at`.
    pub started_at: DateTime<Utc>,
    /// Keep staged objects after a successful load (default: delete them).
    pub keep_objects: bool,
    /// Only extract into the object store (kept); load nothing (`pgp extract`).
    pub extract_only: bool,
    /// Chunks extracted at once, each on its own PostgreSQL connection. Loads still
    /// happen in key order, so an interrupted re-sync resumes without a gap.
    pub parallel: usize,
}

impl RunOptions {
    /// Defaults for a load type, started now.
    pub fn new(load_type: LoadType, now: DateTime<Utc>) -> Self {
        RunOptions {
            load_type,
            tables: Vec::new(),
            params: RunParams::default(),
            chunk_rows: None,
            test_rows: 1_000_000,
            compression: Compression::Gzip,
            run_id: default_run_id(now),
            started_at: now,
            keep_objects: false,
            extract_only: false,
            parallel: 2,
        }
    }
}

/// `YYYYMMDDTHHMMSSmmmZ` of the start time.
pub fn default_run_id(now: DateTime<Utc>) -> String {
    now.format("%Y%m%dT%H%M%S%3fZ").to_string()
}

/// How a table's run ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "kebab-case")]
pub enum Outcome {
    /// Rows were appended to the target.
    Appended,
    /// The target was re-synced and swapped in.
    Swapped,
    /// A test load into the scratch table succeeded.
    Tested,
    /// Extracted into the object store only (`pgp extract`).
    Extracted,
    /// Nothing to do (reason).
    Skipped(String),
    /// Not loaded: a backfill must run first (reason).
    NeedsBackfill(String),
    /// Failed; the target is untouched (message).
    Failed(String),
}

/// One table's line of the run summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableReport {
    pub table: String,
    pub target: String,
    pub kind: Kind,
    pub outcome: Outcome,
    /// Rows made visible (or loaded into the scratch table).
    pub rows: u64,
    /// Uncompressed bytes read from PostgreSQL.
    pub bytes: u64,
    /// Bytes staged in the object store.
    pub object_bytes: u64,
    pub chunks: usize,
    pub seconds: f64,
}

impl TableReport {
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Failed(_))
    }
}

/// The summary of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub load_type: LoadType,
    /// The window of incremental tables, when the run had one: pass `window.end` back
    /// as `LAST_LOADED` next time.
    pub window: Option<Window>,
    pub tables: Vec<TableReport>,
}

impl RunReport {
    pub fn failures(&self) -> usize {
        self.tables.iter().filter(|t| t.failed()).count()
    }
}

/// Progress of a run, for a terminal display or log lines.
pub trait Progress: Send + Sync {
    fn table_started(&self, _plan: &TablePlan) {}
    /// Running totals of the table's current chunk.
    fn chunk_progress(&self, _table: &str, _chunk: usize, _rows: u64, _bytes: u64) {}
    fn chunk_done(&self, _table: &str, _chunk: usize, _of: usize, _x: &Extracted) {}
    fn table_finished(&self, _report: &TableReport) {}
}

/// No progress output.
pub struct Quiet;
impl Progress for Quiet {}

/// The pipeline's parts.
pub struct Pipeline {
    pub store: Arc<dyn ObjectStore>,
    pub warehouse: Arc<dyn Warehouse>,
    pub env: Arc<dyn Env + Send + Sync>,
}

/// The object name of a chunk: `<schema>/<table>/<run id>/<chunk>.tsv.gz`.
pub fn object_key(
    target: &TableName,
    run_id: &str,
    chunk: usize,
    c: Compression,
) -> Result<ObjectKey> {
    ObjectKey::parse(&format!(
        "{}/{}/{}/{:05}.{}",
        target.schema,
        target.table,
        crate::plan::stage_suffix(run_id),
        chunk,
        c.suffix()
    ))
}

/// The COPY statement of one chunk of a plan.
pub fn chunk_copy_sql(plan: &TablePlan, range: &KeyRange) -> Result<String> {
    let q = plan.query.as_deref().ok_or_else(|| Error::Unsupported {
        table: plan.table.clone(),
        message: "plan has no query".into(),
    })?;
    let schema = plan.schema.as_ref().expect("a loading plan has a schema");
    let wrapped = query::wrap(
        q,
        &projection(&schema.columns),
        plan.key.as_ref().map(|k| (k, range)),
        plan.limit,
    );
    Ok(copy_statement(&wrapped))
}

impl Pipeline {
    /// Plan every selected table (reads only).
    pub async fn plan(
        &self,
        manifest: &Manifest,
        opts: &RunOptions,
    ) -> Result<(Vec<TablePlan>, Option<Window>)> {
        let specs = select_tables(manifest, &opts.tables)?;
        let params = opts.params.clone();
        let window = match opts.load_type {
            LoadType::Incremental => Some(params.window(opts.started_at)?),
            _ => params.window(opts.started_at).ok(),
        };
        let resolver = Resolver::new(&params, self.env.as_ref(), window);
        let popts = PlanOptions {
            load_type: opts.load_type,
            chunk_rows: opts.chunk_rows,
            test_rows: opts.test_rows,
            run_id: opts.run_id.clone(),
        };
        let cfg = SourceConfig::from_connection_info(&manifest.connection_info, self.env.as_ref());
        let src = match cfg {
            Ok(cfg) => PgSource::connect(&cfg).await,
            Err(e) => Err(e),
        };
        let mut plans = Vec::new();
        for spec in specs {
            let plan = match &src {
                Ok(src) => plan_table(spec, &popts, &resolver, src, self.warehouse.as_ref())
                    .await
                    .unwrap_or_else(|e| TablePlan::error(spec, &e)),
                Err(e) => TablePlan::error(spec, e),
            };
            plans.push(plan);
        }
        Ok((plans, window))
    }

    /// Plan and run every selected table; one failing table does not stop the others.
    pub async fn run(
        &self,
        manifest: &Manifest,
        opts: &RunOptions,
        progress: &dyn Progress,
    ) -> Result<RunReport> {
        let (plans, window) = self.plan(manifest, opts).await?;
        let meta = RunMeta {
            run_id: opts.run_id.clone(),
            uploaded_at: opts.started_at,
            task_instance: opts.params.task_instance.clone(),
        };
        let cfg = SourceConfig::from_connection_info(&manifest.connection_info, self.env.as_ref());
        let mut reports = Vec::new();
        for plan in plans {
            let start = Instant::now();
            progress.table_started(&plan);
            let mut report = TableReport {
                table: plan.table.clone(),
                target: plan.target.clone(),
                kind: plan.kind,
                outcome: Outcome::Skipped(String::new()),
                rows: 0,
                bytes: 0,
                object_bytes: 0,
                chunks: 0,
                seconds: 0.0,
            };
            report.outcome = match (plan.action, plan.mode) {
                (Action::Error, _) => Outcome::Failed(plan.reason.clone().unwrap_or_default()),
                (Action::Skip, _) => Outcome::Skipped(plan.reason.clone().unwrap_or_default()),
                (Action::Backfill, Mode::None) => {
                    Outcome::NeedsBackfill(plan.reason.clone().unwrap_or_default())
                }
                _ => match &cfg {
                    Err(e) => Outcome::Failed(e.to_string()),
                    Ok(cfg) => match self
                        .execute(&plan, opts, &meta, cfg, &mut report, progress)
                        .await
                    {
                        Ok(o) => o,
                        Err(e) => {
                            tracing::error!(table = %plan.table, error = %e, "table failed");
                            Outcome::Failed(e.to_string())
                        }
                    },
                },
            };
            report.seconds = start.elapsed().as_secs_f64();
            progress.table_finished(&report);
            reports.push(report);
        }
        Ok(RunReport {
            run_id: opts.run_id.clone(),
            load_type: opts.load_type,
            window: if opts.load_type == LoadType::Incremental {
                window
            } else {
                None
            },
            tables: reports,
        })
    }

    async fn execute(
        &self,
        plan: &TablePlan,
        opts: &RunOptions,
        meta: &RunMeta,
        src: &SourceConfig,
        report: &mut TableReport,
        progress: &dyn Progress,
    ) -> Result<Outcome> {
        let wh = self.warehouse.as_ref();
        let schema = plan.schema.as_ref().expect("a loading plan has a schema");
        let target = plan.target_name.clone().expect("target");
        let load = plan
            .load_name
            .clone()
            .expect("a loading plan has a load table");
        if opts.extract_only {
            self.process_chunks(plan, opts, src, &target, ChunkSink::Keep, report, progress)
                .await?;
            return Ok(Outcome::Extracted);
        }
        if plan.resume_after.is_none() {
            wh.create_table(&load, schema).await?;
        } else {
            tracing::info!(table = %plan.table, after = ?plan.resume_after, "resuming {load}");
        }
        let sink = ChunkSink::Load {
            table: &load,
            schema,
            meta,
        };
        let result = self
            .process_chunks(plan, opts, src, &target, sink, report, progress)
            .await;
        if let Err(e) = result {
            // A per-run stage is useless after a failure; a _TEMP is kept for resume.
            if plan.mode == Mode::Append {
                let _ = wh.drop_table(&load).await;
            }
            return Err(e);
        }
        let p = publish(wh, plan.mode, &load, &target, &meta.run_id).await?;
        report.rows = p.rows;
        Ok(match plan.mode {
            Mode::Append => Outcome::Appended,
            Mode::Swap => Outcome::Swapped,
            _ => Outcome::Tested,
        })
    }

    /// Extract every chunk of a plan; load and check each one into `sink`'s table, or
    /// keep the objects (`pgp extract`).
    #[allow(clippy::too_many_arguments)]
    async fn process_chunks(
        &self,
        plan: &TablePlan,
        opts: &RunOptions,
        src: &SourceConfig,
        target: &TableName,
        sink: ChunkSink<'_>,
        report: &mut TableReport,
        progress: &dyn Progress,
    ) -> Result<()> {
        let n = plan.chunks.len();
        let store = self.store.as_ref();
        let mut jobs = Vec::with_capacity(n);
        for (i, range) in plan.chunks.iter().enumerate() {
            let key = object_key(target, &opts.run_id, i, opts.compression)?;
            let sql = chunk_copy_sql(plan, range)?;
            let md = chunk_metadata(&opts.run_id, &plan.table, i, n, range);
            jobs.push(async move {
                let table = plan.table.clone();
                let cb =
                    move |rows: u64, bytes: u64| progress.chunk_progress(&table, i, rows, bytes);
                let conn = PgSource::connect(src).await?;
                let dest = Destination {
                    store,
                    key: &key,
                    compression: opts.compression,
                    metadata: md,
                };
                let x = extract_chunk(&conn, &plan.table, &sql, dest, &cb).await?;
                Ok::<_, Error>((i, range, key, x))
            });
        }
        // Extract up to `parallel` chunks at once, but take (and load) them in key
        // order: a failure stops before any later chunk is loaded, so `_TEMP` never
        // holds a gap that resume-after-max(key) would skip. Dropping the stream cancels
        // the extractions still running (their objects never finalize).
        let results = futures::stream::iter(jobs).buffered(opts.parallel.max(1));
        futures::pin_mut!(results);
        while let Some(done) = results.next().await {
            let (i, range, key, x) = done?;
            if let ChunkSink::Load {
                table,
                schema,
                meta,
            } = sink
            {
                let chunk = format!("{i} {range}");
                load_chunk(
                    self.warehouse.as_ref(),
                    &plan.table,
                    &chunk,
                    table,
                    schema,
                    meta,
                    &key,
                    opts.compression,
                    x.rows,
                )
                .await?;
                if !opts.keep_objects {
                    store.delete(&key).await?;
                }
            }
            report.add(&x);
            progress.chunk_done(&plan.table, i, n, &x);
        }
        Ok(())
    }
}

/// Where extracted chunks go.
#[derive(Clone, Copy)]
enum ChunkSink<'a> {
    /// Loaded into this table (a stage, `_TEMP` or the scratch table).
    Load {
        table: &'a TableName,
        schema: &'a TableSchema,
        meta: &'a RunMeta,
    },
    /// Kept in the object store only.
    Keep,
}

/// Load one staged object into `load` and check the warehouse's count against the
/// rows PostgreSQL sent for it; a mismatch fails before anything is published. The
/// step the Cloud Run loader runs per object-finalize event.
#[allow(clippy::too_many_arguments)]
pub async fn load_chunk(
    wh: &dyn Warehouse,
    table: &str,
    chunk: &str,
    load: &TableName,
    schema: &TableSchema,
    meta: &RunMeta,
    key: &ObjectKey,
    compression: Compression,
    source_rows: u64,
) -> Result<crate::warehouse::Loaded> {
    let loaded = wh.load(load, schema, meta, key, compression).await?;
    if loaded.rows != source_rows {
        return Err(Error::CountMismatch {
            table: table.to_string(),
            chunk: chunk.to_string(),
            source_rows,
            loaded_rows: loaded.rows,
        });
    }
    Ok(loaded)
}

/// The metadata stored with a chunk's object (`rows` is added when it is finished).
pub(crate) fn chunk_metadata(
    run_id: &str,
    table: &str,
    i: usize,
    n: usize,
    range: &KeyRange,
) -> Metadata {
    let mut md = Metadata::new();
    md.insert("run_id".into(), run_id.to_string());
    md.insert("table".into(), table.to_string());
    md.insert("chunk".into(), i.to_string());
    md.insert("chunks".into(), n.to_string());
    md.insert("range".into(), range.to_string());
    md
}

/// Make a loaded run visible: append the stage or swap `_TEMP` in (once per run, by
/// the warehouse's publish ledger); a test load only counts its scratch table.
pub async fn publish(
    wh: &dyn Warehouse,
    mode: Mode,
    load: &TableName,
    target: &TableName,
    run_id: &str,
) -> Result<Published> {
    match mode {
        Mode::Append => wh.publish_append(load, target, run_id).await,
        Mode::Swap => wh.publish_swap(load, target, run_id).await,
        Mode::Test => Ok(Published {
            rows: wh.row_count(load).await?,
            already: false,
        }),
        Mode::None => Err(Error::Unsupported {
            table: target.to_string(),
            message: "nothing to publish for a plan that loads nothing".into(),
        }),
    }
}

impl TableReport {
    fn add(&mut self, x: &Extracted) {
        self.bytes += x.bytes;
        self.object_bytes += x.object_bytes;
        self.chunks += 1;
        self.rows += x.rows;
    }
}

fn select_tables<'a>(manifest: &'a Manifest, names: &[String]) -> Result<Vec<&'a TableSpec>> {
    if names.is_empty() {
        return Ok(manifest.tables.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            manifest.table(n).ok_or_else(|| Error::Manifest {
                file: manifest.path.clone(),
                message: format!("no table `{n}` in this manifest"),
            })
        })
        .collect()
}

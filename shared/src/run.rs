//! `pgp tap` on one machine: the load protocol's three steps ([`crate::protocol`]) run
//! through an in-process queue by a pool of workers, the way the Cloud Run services
//! run them one HTTP request at a time. Nothing here decides anything about a table's
//! run; it plans (step 1), hands each chunk task to an extraction worker (step 2),
//! hands each finished object to the loader (step 3), and reports how each table's run
//! ended. Extraction of later chunks overlaps loading of earlier ones.
//!
//! Retries stand in for redelivery: a transient or busy failure of a step is retried
//! with backoff a few times; a permanent one ends the table (the protocol records the
//! run as abandoned with the reason). One failing table never stops the others.

use crate::clock::{Clock, Ids, RandomIds, SystemClock};
use crate::error::{Error, Result};
use crate::extract::Extracted;
use crate::format::Compression;
use crate::manifest::Manifest;
use crate::params::{Env, RunParams, Window};
use crate::plan::{Action, LoadType, Mode, TablePlan};
use crate::protocol::extract::{extract_step, ExtractOutcome};
use crate::protocol::load::{load_step, LoadOutcome};
use crate::protocol::plan::{plan_step, plan_tables, PlannedTable};
use crate::protocol::publish::Finished;
use crate::protocol::{ChunkTask, Parts, RunHeader};
use crate::query::Kind;
use crate::source::{Connector, PgConnector, SnapshotConnector};
use crate::storage::{ObjectInfo, ObjectStore};
use crate::warehouse::Warehouse;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Names objects, load tables and ledger entries; a retry with the same id is a
    /// no-op for what already landed.
    pub run_id: String,
    /// The run's start: default execution date and `_uploaded_at`.
    pub started_at: DateTime<Utc>,
    /// Keep staged objects and run records after a table is published (default:
    /// delete them).
    pub keep_objects: bool,
    /// Only extract into the object store (kept); load nothing (`pgp extract`).
    pub extract_only: bool,
    /// Chunks extracted at once, each on its own PostgreSQL connection.
    pub parallel: usize,
    /// Tries of a step that fails transiently before its table fails (the table's run
    /// then stays open; the next request for it resumes it).
    pub attempts: u32,
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
            attempts: 6,
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
    /// Rows made visible (or loaded into the scratch table; or extracted).
    pub rows: u64,
    /// Uncompressed bytes read from PostgreSQL.
    pub bytes: u64,
    /// Bytes staged in the object store.
    pub object_bytes: u64,
    /// Chunks extracted by this run.
    pub chunks: usize,
    /// The run the table loaded under, when it resumed an earlier one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed: Option<String>,
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

/// The pipeline's parts on one machine.
pub struct Pipeline {
    pub store: Arc<dyn ObjectStore>,
    pub warehouse: Arc<dyn Warehouse>,
    pub env: Arc<dyn Env + Send + Sync>,
}

/// A table's state while its run goes on.
struct Live {
    report: TableReport,
    header: Option<RunHeader>,
    started: Instant,
    /// Set when the table has ended (published, failed, ...).
    done: bool,
    /// Chunks extracted so far (for progress).
    extracted: usize,
}

impl Pipeline {
    /// The protocol's parts: this pipeline's store and warehouse, PostgreSQL from the
    /// environment, the system clock, random ids, no queue (tasks come back).
    pub fn parts(&self) -> Parts {
        Parts {
            store: self.store.clone(),
            warehouse: Some(self.warehouse.clone()),
            sources: Arc::new(PgConnector {
                env: self.env.clone(),
            }) as Arc<dyn Connector>,
            queue: None,
            clock: Arc::new(SystemClock::default()) as Arc<dyn Clock>,
            ids: Arc::new(RandomIds) as Arc<dyn Ids>,
            env: self.env.clone(),
        }
    }

    /// Plan every selected table (reads only).
    pub async fn plan(
        &self,
        manifest: &Manifest,
        opts: &RunOptions,
    ) -> Result<(Vec<TablePlan>, Option<Window>)> {
        // As `run` plans: through the snapshot connector (chunks may then be ranges
        // of row locations).
        let mut parts = self.parts();
        parts.sources = Arc::new(SnapshotConnector::new(self.env.clone()));
        plan_tables(&parts, self.warehouse.as_ref(), manifest, opts).await
    }

    /// Plan and run every selected table; one failing table does not stop the others.
    pub async fn run(
        &self,
        manifest: &Manifest,
        opts: &RunOptions,
        progress: &dyn Progress,
    ) -> Result<RunReport> {
        // Every chunk of this run reads one exported snapshot of its source.
        let mut parts = self.parts();
        parts.sources = Arc::new(SnapshotConnector::new(self.env.clone()));
        let report = match retry("plan", opts.attempts, || {
            plan_step(&parts, manifest, opts, opts.extract_only)
        })
        .await
        {
            Ok(r) => r,
            // The source never answered (or its configuration is missing): every table
            // fails with the reason; the warehouse was not touched.
            Err(e @ (Error::Source { .. } | Error::SourceConfig(_))) => {
                return source_failed(manifest, opts, &e, progress)
            }
            Err(e) => return Err(e),
        };
        let live: Mutex<HashMap<String, Live>> = Mutex::new(HashMap::new());
        let mut order = Vec::new();
        let mut tasks: Vec<ChunkTask> = Vec::new();
        for t in &report.tables {
            order.push(t.plan.table.clone());
            progress.table_started(&t.plan);
            let mut l = Live {
                report: initial_report(t, &opts.run_id),
                header: t.header.clone(),
                started: Instant::now(),
                done: false,
                extracted: 0,
            };
            if let Some(outcome) = planned_outcome(t) {
                l.report.outcome = outcome;
                l.done = true;
            }
            if let Some(f) = &t.finished {
                finish(&mut l, f, progress);
            }
            if !l.done {
                tasks.extend(t.tasks.iter().cloned());
            }
            live.lock().unwrap().insert(t.plan.table.clone(), l);
        }

        // Extraction workers feed the loader through a bounded channel, so extraction
        // of later chunks overlaps loading of earlier ones without piling up objects.
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<(ChunkTask, ObjectInfo)>(opts.parallel.max(1));
        let queue = Mutex::new(std::collections::VecDeque::from(tasks));
        let extract = async {
            let worker = |_: usize| {
                let tx = tx.clone();
                let (parts, live, queue) = (&parts, &live, &queue);
                async move {
                    loop {
                        let Some(task) = queue.lock().unwrap().pop_front() else {
                            break;
                        };
                        if live.lock().unwrap().get(&task.table).is_none_or(|l| l.done) {
                            continue;
                        }
                        let table = task.table.clone();
                        let chunk = task.chunk as usize;
                        let cb = |rows: u64, bytes: u64| {
                            progress.chunk_progress(&table, chunk, rows, bytes)
                        };
                        match retry("extract", opts.attempts, || extract_step(parts, &task, &cb))
                            .await
                        {
                            Ok(out) => {
                                let of = task.chunks as usize;
                                let stats = match &out {
                                    ExtractOutcome::Extracted { stats, .. } => *stats,
                                    _ => Extracted::default(),
                                };
                                if let Some(l) = live.lock().unwrap().get_mut(&task.table) {
                                    l.report.bytes += stats.bytes;
                                    l.report.object_bytes += stats.object_bytes;
                                    l.report.chunks += 1;
                                    l.extracted += 1;
                                    if opts.extract_only {
                                        l.report.rows += stats.rows;
                                    }
                                }
                                progress.chunk_done(&task.table, chunk, of, &stats);
                                if opts.extract_only {
                                    continue;
                                }
                                let object = out.object().clone();
                                if tx.send((task, object)).await.is_err() {
                                    break;
                                }
                            }
                            Err(e) => fail(live, &task.table, &e, progress),
                        }
                    }
                }
            };
            futures::future::join_all((0..opts.parallel.max(1)).map(worker)).await;
            drop(tx);
        };
        let load = async {
            // Every extracted object is loaded, even after its table failed elsewhere:
            // what loads now, a later request resuming the run does not read again.
            while let Some((task, object)) = rx.recv().await {
                match retry("load", opts.attempts, || load_step(&parts, &object)).await {
                    Ok(LoadOutcome::Finished(f)) => {
                        if let Some(l) = live.lock().unwrap().get_mut(&task.table) {
                            finish(l, &f, progress);
                        }
                    }
                    Err(e)
                        if live
                            .lock()
                            .unwrap()
                            .get(&task.table)
                            .is_some_and(|l| l.done) =>
                    {
                        tracing::warn!(table = %task.table, error = %e, "a chunk of a failed table did not load");
                    }
                    Ok(_) => {}
                    Err(e) => fail(&live, &task.table, &e, progress),
                }
            }
        };
        tokio::join!(extract, load);

        let mut live = live.into_inner().unwrap();
        let mut tables = Vec::new();
        for name in order {
            let mut l = live.remove(&name).expect("every table is tracked");
            if !l.done {
                l.report.outcome = if opts.extract_only {
                    Outcome::Extracted
                } else {
                    Outcome::Failed("the run ended with chunks neither loaded nor failed".into())
                };
                l.report.seconds = l.started.elapsed().as_secs_f64();
                progress.table_finished(&l.report);
            }
            if !opts.keep_objects && !opts.extract_only {
                match (&l.header, &l.report.outcome) {
                    (Some(h), Outcome::Appended | Outcome::Swapped | Outcome::Tested) => {
                        cleanup(self.store.as_ref(), h, &opts.run_id).await;
                    }
                    (None, Outcome::Skipped(_) | Outcome::NeedsBackfill(_)) => {
                        // The recorded decision to skip is only for concurrent
                        // deliveries of one request; this request has ended.
                        if let Ok(k) = RunHeader::key(&opts.run_id, &name) {
                            let _ = self.store.delete(&k).await;
                        }
                    }
                    _ => {}
                }
            }
            tables.push(l.report);
        }
        Ok(RunReport {
            run_id: opts.run_id.clone(),
            load_type: opts.load_type,
            window: if opts.load_type == LoadType::Incremental {
                report.window
            } else {
                None
            },
            tables,
        })
    }
}

/// The report of a run whose source could not be reached: every table failed.
fn source_failed(
    manifest: &Manifest,
    opts: &RunOptions,
    e: &Error,
    progress: &dyn Progress,
) -> Result<RunReport> {
    let specs = crate::protocol::plan::select_tables(manifest, &opts.tables)?;
    let tables = specs
        .into_iter()
        .map(|spec| {
            let plan = TablePlan::error(spec, e);
            progress.table_started(&plan);
            let r = TableReport {
                table: plan.table.clone(),
                target: plan.target.clone(),
                kind: plan.kind,
                outcome: Outcome::Failed(e.to_string()),
                rows: 0,
                bytes: 0,
                object_bytes: 0,
                chunks: 0,
                resumed: None,
                seconds: 0.0,
            };
            progress.table_finished(&r);
            r
        })
        .collect();
    Ok(RunReport {
        run_id: opts.run_id.clone(),
        load_type: opts.load_type,
        window: None,
        tables,
    })
}

fn initial_report(t: &PlannedTable, run_id: &str) -> TableReport {
    TableReport {
        table: t.plan.table.clone(),
        target: t.plan.target.clone(),
        kind: t.plan.kind,
        outcome: Outcome::Skipped(String::new()),
        rows: 0,
        bytes: 0,
        object_bytes: 0,
        chunks: 0,
        resumed: t
            .header
            .as_ref()
            .filter(|h| h.run_id != run_id)
            .map(|h| h.run_id.clone()),
        seconds: 0.0,
    }
}

/// The outcome of a table that loads nothing this run.
fn planned_outcome(t: &PlannedTable) -> Option<Outcome> {
    let reason = t.plan.reason.clone().unwrap_or_default();
    match (t.plan.action, t.plan.mode) {
        (Action::Error, _) => Some(Outcome::Failed(reason)),
        (Action::Skip, _) => Some(Outcome::Skipped(reason)),
        (Action::Backfill, Mode::None) => Some(Outcome::NeedsBackfill(reason)),
        _ if t.header.is_none() => Some(Outcome::Skipped(reason)),
        _ => None,
    }
}

fn finish(l: &mut Live, f: &Finished, progress: &dyn Progress) {
    if l.done {
        return;
    }
    let mode = l.header.as_ref().map(|h| h.mode).unwrap_or(Mode::None);
    l.report.outcome = match f {
        Finished::Published { rows } | Finished::AlreadyPublished { rows } => {
            l.report.rows = *rows;
            match mode {
                Mode::Append => Outcome::Appended,
                Mode::Swap => Outcome::Swapped,
                _ => Outcome::Tested,
            }
        }
        Finished::Abandoned { reason } => Outcome::Failed(reason.clone()),
    };
    l.done = true;
    l.report.seconds = l.started.elapsed().as_secs_f64();
    progress.table_finished(&l.report);
}

fn fail(live: &Mutex<HashMap<String, Live>>, table: &str, e: &Error, progress: &dyn Progress) {
    tracing::error!(table, error = %e, "table failed");
    if let Some(l) = live.lock().unwrap().get_mut(table) {
        if !l.done {
            l.report.outcome = Outcome::Failed(e.to_string());
            l.done = true;
            l.report.seconds = l.started.elapsed().as_secs_f64();
            progress.table_finished(&l.report);
        }
    }
}

/// Run a step, retrying transient and busy failures with backoff (the redelivery of
/// the services).
async fn retry<T, F, Fut>(what: &str, attempts: u32, mut step: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut pause = Duration::from_millis(250);
    for attempt in 1.. {
        match step().await {
            Err(e) if e.is_retriable() && attempt < attempts => {
                tracing::warn!(step = what, attempt, error = %e, kind = %e.kind(), "retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(8));
            }
            r => return r,
        }
    }
    unreachable!("the loop returns")
}

/// Remove a published table's objects and run records (its own, and this request's
/// pointer to it when it was resumed).
async fn cleanup(store: &dyn ObjectStore, h: &RunHeader, request: &str) {
    let records = |run: &str| format!("{}{run}/{}.", crate::protocol::RUNS_PREFIX, h.table);
    for prefix in [h.run_prefix(), records(&h.run_id), records(request)] {
        if let Ok(objects) = store.list(&prefix).await {
            for o in objects {
                let _ = store.delete(&o.key).await;
            }
        }
    }
}

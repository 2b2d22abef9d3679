//! Step 1, the planner: a load request in, runs recorded and chunk tasks out.
//!
//! Per selected table: plan (read only: the query's columns, the target's schema, key
//! bounds), then either find the run already recorded under this request's run id (a
//! redelivery), resume an earlier unfinished run that loads exactly the same, or record
//! a new run: its load table, its chunk ranges, its header (create-only: of two
//! planners of one request, the first header wins and both publish its chunks), and its
//! row in the warehouse's run table (which retires older unfinished runs of the same
//! target that it replaces). Then the tasks of the chunks the run still misses are
//! published; a run missing none is published right here.

use super::publish::{finish_run, Finished};
use super::record::{create_run_file, fingerprint, read_run_file, ChunkTask, RunFile, RunHeader};
use super::Parts;
use crate::error::{Error, ErrorKind, Result};
use crate::manifest::{Manifest, TableSpec};
use crate::params::{Resolver, Window};
use crate::plan::{plan_table, LoadType, Mode, PlanOptions, TablePlan};
use crate::query::KeyRange;
use crate::run::RunOptions;
use crate::storage::{ObjectKey, ObjectStoreExt};
use crate::warehouse::{RunState, RunUpdate, Warehouse};

/// Plan every selected table, reading only. Per-table problems that will not go away
/// (a bad query, a missing column) become that table's `error` plan; failures worth
/// retrying (the source or the warehouse unreachable) fail the whole call.
pub async fn plan_tables(
    parts: &Parts,
    wh: &dyn Warehouse,
    manifest: &Manifest,
    opts: &RunOptions,
) -> Result<(Vec<TablePlan>, Option<Window>)> {
    let specs = select_tables(manifest, &opts.tables)?;
    let params = opts.params.clone();
    let window = match opts.load_type {
        LoadType::Incremental => Some(params.window(opts.started_at)?),
        _ => params.window(opts.started_at).ok(),
    };
    let resolver = Resolver::new(&params, parts.env.as_ref(), window);
    let popts = PlanOptions {
        load_type: opts.load_type,
        chunk_rows: opts.chunk_rows,
        test_rows: opts.test_rows,
        run_id: opts.run_id.clone(),
        compression: opts.compression,
    };
    let src = match parts.sources.connect(&manifest.connection_info).await {
        Ok(s) => Ok(s),
        Err(e) if e.is_retriable() => return Err(e),
        Err(e) => Err(e),
    };
    let mut plans = Vec::new();
    for spec in specs {
        let plan = match &src {
            Ok(src) => match plan_table(spec, &popts, &resolver, src.as_ref(), wh).await {
                Ok(p) => p,
                Err(e) if e.is_retriable() => return Err(e),
                Err(e) => TablePlan::error(spec, &e),
            },
            Err(e) => TablePlan::error(spec, e),
        };
        plans.push(plan);
    }
    Ok((plans, window))
}

/// The manifest tables a request names (all when none).
pub fn select_tables<'a>(manifest: &'a Manifest, names: &[String]) -> Result<Vec<&'a TableSpec>> {
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

/// What the planner did with one table.
#[derive(Debug, Clone)]
pub struct PlannedTable {
    /// The planning decision (action, mode, reason) for reports.
    pub plan: TablePlan,
    /// The run the table loads under: this request's, or the earlier run it resumes.
    /// `None` when the table loads nothing.
    pub header: Option<RunHeader>,
    /// The header's run was recorded by an earlier request (this one resumes it) or by
    /// an earlier delivery of this one.
    pub existing: bool,
    /// Tasks published (the chunks the run misses).
    pub tasks: Vec<ChunkTask>,
    /// Set when the run needed no more chunks and the planner published it (or found
    /// it published or abandoned).
    pub finished: Option<Finished>,
}

/// What a planning request produced.
#[derive(Debug, Clone)]
pub struct PlanReport {
    pub run_id: String,
    pub window: Option<Window>,
    pub tables: Vec<PlannedTable>,
}

/// Step 1: plan `opts.tables` of `manifest`, record the runs, publish the chunk tasks
/// to `parts.queue` (or return them when there is no queue). With `extract_only`
/// nothing is written to the warehouse (`pgp extract`).
pub async fn plan_step(
    parts: &Parts,
    manifest: &Manifest,
    opts: &RunOptions,
    extract_only: bool,
) -> Result<PlanReport> {
    let wh = parts.wh()?;
    let (plans, window) = plan_tables(parts, wh, manifest, opts).await?;
    let mut tables = Vec::with_capacity(plans.len());
    for plan in plans {
        let key = RunHeader::key(&opts.run_id, &plan.table)?;
        // What an earlier delivery of this request decided for the table stands,
        // whatever planning says now (the target may have changed meanwhile): a run it
        // recorded goes on and must still end; a skip stays a skip.
        let mut decided = if extract_only {
            None
        } else {
            read_run_file(parts.store.as_ref(), &key).await?
        };
        if decided.is_none() && !plan.loads() && !extract_only && plan.query.is_some() {
            // A skip that depends on the warehouse's state: record it (create-only),
            // or learn what a concurrent delivery recorded first.
            let skip = RunFile::Skipped {
                reason: plan.reason.clone().unwrap_or_default(),
            };
            decided = Some(create_run_file(parts.store.as_ref(), &key, &skip).await?);
        }
        let loads = match &decided {
            Some(RunFile::Skipped { .. }) => false,
            Some(_) => true,
            None => plan.loads(),
        };
        if !loads {
            tables.push(PlannedTable {
                plan,
                header: None,
                existing: decided.is_some(),
                tasks: Vec::new(),
                finished: None,
            });
            continue;
        }
        tables.push(prepare_run(parts, wh, manifest, opts, plan, decided, extract_only).await?);
    }
    let tasks: Vec<_> = tables
        .iter()
        .flat_map(|t| t.tasks.iter().map(ChunkTask::to_message))
        .collect();
    if let Some(q) = &parts.queue {
        if !tasks.is_empty() {
            q.publish(tasks).await?;
        }
    }
    Ok(PlanReport {
        run_id: opts.run_id.clone(),
        window,
        tables,
    })
}

/// Record (or find) the run of one loading plan and list the chunks it misses.
async fn prepare_run(
    parts: &Parts,
    wh: &dyn Warehouse,
    manifest: &Manifest,
    opts: &RunOptions,
    plan: TablePlan,
    decided: Option<RunFile>,
    extract_only: bool,
) -> Result<PlannedTable> {
    let store = parts.store.as_ref();
    let key = RunHeader::key(&opts.run_id, &plan.table)?;
    let mut existing = true;
    let header = match decided {
        Some(file) => follow(store, file, &plan.table).await?,
        None => {
            let fresh = new_header(parts, manifest, opts, &plan)?;
            // A run cut by row location is never resumed: its chunks must all read
            // the one snapshot of the run that reads them.
            let physical = fresh.key.as_ref().is_some_and(|k| k.is_physical());
            let adopted = if extract_only || fresh.mode == Mode::Append || physical {
                None
            } else {
                adoptable(parts, wh, &fresh).await?
            };
            match adopted {
                Some(earlier) => {
                    tracing::info!(table = %plan.table, resumes = %earlier.run_id, "resuming an unfinished run");
                    let file = RunFile::Resumes {
                        run_id: earlier.run_id.clone(),
                    };
                    let file = create_run_file(store, &key, &file).await?;
                    follow(store, file, &plan.table).await?
                }
                None => {
                    existing = false;
                    if !extract_only {
                        wh.create_table(&fresh.load_table, &fresh.schema, true)
                            .await?;
                        wh.prepare_lock(&fresh.target).await?;
                    }
                    let ranges = serde_json::to_vec(&plan.chunks).expect("ranges serialize");
                    store
                        .put(&fresh.ranges, ranges.into(), Default::default())
                        .await?;
                    let load_table = fresh.load_table.clone();
                    let file = RunFile::Run(Box::new(fresh));
                    let file = create_run_file(store, &key, &file).await?;
                    let followed = follow(store, file, &plan.table).await?;
                    if followed.is_none() && !extract_only {
                        // A concurrent delivery decided to skip: this load table is
                        // nobody's.
                        let _ = wh.drop_table(&load_table).await;
                    }
                    followed
                }
            }
        }
    };
    let Some(header) = header else {
        return Ok(PlannedTable {
            plan,
            header: None,
            existing: true,
            tasks: Vec::new(),
            finished: None,
        });
    };
    let ranges: Vec<KeyRange> =
        serde_json::from_slice(&store.get(&header.ranges).await?).map_err(|e| {
            Error::storage(
                header.ranges.as_str(),
                format!("unreadable ranges: {e}"),
                ErrorKind::Permanent,
            )
        })?;
    let mut missing: Vec<u32> = (0..header.chunks).collect();
    let mut finished = None;
    if !extract_only {
        match register(parts, wh, &header).await? {
            Some(done) => {
                finished = Some(done);
                missing.clear();
            }
            None => {
                let loaded = wh.loaded_chunks(&header.load_table, &header.run_id).await?;
                missing.retain(|c| loaded.binary_search(c).is_err());
                if missing.is_empty() {
                    finished = Some(finish_run(parts, &header).await?);
                }
            }
        }
    }
    let tasks = missing
        .into_iter()
        .map(|c| ChunkTask {
            run_id: header.run_id.clone(),
            table: header.table.clone(),
            chunk: c,
            chunks: header.chunks,
            range: ranges.get(c as usize).cloned().unwrap_or(KeyRange::ALL),
        })
        .collect();
    Ok(PlannedTable {
        plan,
        header: Some(header),
        existing,
        tasks,
        finished,
    })
}

/// The header a record leads to (a run, or the run a resuming request points at);
/// `None` for a recorded skip.
async fn follow(
    store: &dyn crate::storage::ObjectStore,
    file: RunFile,
    table: &str,
) -> Result<Option<RunHeader>> {
    match file {
        RunFile::Run(h) => Ok(Some(*h)),
        RunFile::Resumes { run_id } => super::record::read_header(store, &run_id, table)
            .await
            .map(Some),
        RunFile::Skipped { .. } => Ok(None),
    }
}

fn new_header(
    parts: &Parts,
    manifest: &Manifest,
    opts: &RunOptions,
    plan: &TablePlan,
) -> Result<RunHeader> {
    let missing = |what: &str| Error::Unsupported {
        table: plan.table.clone(),
        message: format!("a loading plan lacks its {what}"),
    };
    let schema = plan.schema.clone().ok_or_else(|| missing("schema"))?;
    let target = plan.visible_name.clone().ok_or_else(|| missing("target"))?;
    let load_table = plan
        .load_name
        .clone()
        .ok_or_else(|| missing("load table"))?;
    let query = plan.query.clone().ok_or_else(|| missing("query"))?;
    let fp = fingerprint(
        &target,
        plan.mode,
        &schema,
        &query,
        plan.key.as_ref(),
        plan.limit,
    );
    let ranges = ObjectKey::parse(&format!(
        "{}{}/{}.{}.ranges.json",
        super::RUNS_PREFIX,
        opts.run_id,
        plan.table,
        parts.ids.fresh()
    ))?;
    Ok(RunHeader {
        run_id: opts.run_id.clone(),
        load_type: opts.load_type,
        table: plan.table.clone(),
        target,
        load_table,
        mode: plan.mode,
        schema,
        meta: crate::warehouse::RunMeta {
            run_id: opts.run_id.clone(),
            uploaded_at: opts.started_at,
            task_instance: opts.params.task_instance.clone(),
        },
        compression: opts.compression,
        connection_info: manifest.connection_info.clone(),
        query,
        key: plan.key.clone(),
        limit: plan.limit,
        chunks: plan.chunks.len() as u32,
        ranges,
        fingerprint: fp,
        json_number_digits: parts.wh()?.json_number_digits(),
        record_end: parts.wh()?.record_end_marker(),
        fixed_list_depth: parts.wh()?.fixed_list_depth(),
    })
}

/// An earlier unfinished run of the same target that loads exactly what this one
/// would (same mode, schema, query, key): resuming it finishes its missing chunks
/// instead of starting over.
async fn adoptable(
    parts: &Parts,
    wh: &dyn Warehouse,
    fresh: &RunHeader,
) -> Result<Option<RunHeader>> {
    let mut txn = wh.begin().await?;
    let open = txn.open_runs(&fresh.target).await;
    txn.rollback().await?;
    let open = open?;
    for r in open.iter().rev() {
        if r.state != RunState::Planned
            || r.fingerprint != fresh.fingerprint
            || r.run_id == fresh.run_id
        {
            continue;
        }
        let header =
            match super::record::read_header(parts.store.as_ref(), &r.run_id, &fresh.table).await {
                Ok(h) => h,
                Err(e) if e.is_retriable() => return Err(e),
                Err(_) => continue, // recorded under another manifest name, or collected
            };
        if wh.columns(&header.load_table).await?.is_some() {
            return Ok(Some(header));
        }
    }
    Ok(None)
}

/// Make sure the run has its row in the run table; a new swap or test run retires the
/// older unfinished runs of its target that it replaces. Returns the run's end when it
/// has one already (published, or abandoned with its reason).
async fn register(parts: &Parts, wh: &dyn Warehouse, h: &RunHeader) -> Result<Option<Finished>> {
    let _ = parts;
    in_txn!(wh, |txn| {
        txn.lock(&h.target).await?;
        if let Some(run) = txn.run(&h.target, &h.run_id).await? {
            return Ok(match run.state {
                RunState::Published => Some(Finished::AlreadyPublished {
                    rows: run.rows.unwrap_or(0),
                }),
                RunState::Abandoned => Some(Finished::Abandoned {
                    reason: run.reason.unwrap_or_default(),
                }),
                _ => None,
            });
        }
        if h.mode != Mode::Append {
            for other in txn.open_runs(&h.target).await? {
                if other.state == RunState::Planned && other.mode == mode_name(h.mode) {
                    tracing::info!(target_table = %h.target, retired = %other.run_id, by = %h.run_id, "retiring an unfinished run");
                    txn.update_run(
                        &h.target,
                        &other.run_id,
                        &RunUpdate::Abandoned {
                            reason: format!("superseded by run {}", h.run_id),
                        },
                    )
                    .await?;
                }
            }
        }
        txn.insert_run(&h.run_record()).await?;
        Ok(None)
    })
}

/// The run table's name of a mode.
pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Append => "append",
        Mode::Swap => "swap",
        Mode::Test => "test",
        Mode::None => "none",
    }
}

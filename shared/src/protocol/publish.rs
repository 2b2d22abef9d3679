//! Publishing a run whose ledger holds every chunk: the one step readers can see.
//!
//! **Append** (scd, incremental): one transaction under the target's lock checks the
//! run's state (published or abandoned already?), that no swap of the target is in
//! flight, that the target still has the columns the run was planned with, and that
//! the ledger holds every chunk; inserts the chosen attempt of each chunk; checks the
//! rows inserted against the ledger's total; and records the run published. All or
//! nothing.
//!
//! **Swap** (backfill, rebuilt scd tables; test loads into their scratch table): DDL
//! cannot be inside a transaction, so:
//! 1. the run's build table (`<target>_PGP_SWAP_<run>`) holds one chosen load per
//!    chunk, built chunk by chunk as loads arrive and at most [`BUILD_BUDGET`] chunks
//!    per publishing event (module [`super::build`]); while chunks are missing the
//!    event answers busy and its redelivery goes on. On a serial warehouse (DuckDB)
//!    the load table holds one load per chunk already and is swapped in itself;
//! 2. once complete, check the built table's rows against the build ledger;
//! 3. claim the swap under the target's lock (`claimed`, with a fresh claim id and the
//!    warehouse's time), once every chunk is built. A claim whose swap already happened
//!    (the target carries the claimant's marker) is recorded published by whoever
//!    finds it; any other fresh claim makes this loader busy; one older than
//!    [`CLAIM_LEASE`] never swapped and never will: it is taken over (or, for another
//!    run, abandoned);
//! 4. swap the built table in, marked `pgp run <id>`; but only while less than a third
//!    of the lease has passed since the claim (measured from before it was taken), so a
//!    slow claimant stops before anyone may take over;
//! 5. record the run published under the lock; drop what is left (the old table, now
//!    under the build table's name, and the load table).
//!
//! No statement of a publish grows with the run, except the append's one `INSERT` of
//! every chunk's chosen attempt: appends are chunked like re-syncs (so no extract
//! grows with the table), but their publish is one server-side statement, atomic by
//! the transaction.
//!
//! **Append as a warehouse job** (a warehouse whose [`Warehouse::jobs`] runs it on its
//! own, as Snowflake runs asynchronous queries): the request claims the run's publish
//! under the lock, after the same checks, reads the chosen load of every chunk, submits
//! an [`AppendJob`] and answers busy; the job, one transaction under the lock, inserts
//! those loads and records the run published only while the claim is still its own
//! ([`run_append_job`]). So no request waits for the insert, a redelivery finds the
//! run published or the claim fresh (busy) or expired (taken over: a job queued past the
//! lease then changes nothing). The simulation runs this path (its warehouse queues a
//! job for up to twice the lease); Snowflake runs it with `publish=job` on its URL, as
//! one asynchronous multi-statement query.
//!
//! [`Warehouse::jobs`]: crate::warehouse::Warehouse::jobs
//!
//! A loader that dies (or fails) after its swap leaves a claim the next event of the run
//! records at once; one that dies before the swap leaves a claim that expires, and the
//! next event of the run (or the next request for the target) takes it over or retires
//! it.

use super::build::{
    build, build_table, insert_counted, not_built, swap_source, Build, BUILD_BUDGET,
};
use super::{Parts, RunHeader, CLAIM_LEASE};
use crate::error::{Error, Result};
use crate::ident::TableName;
use crate::plan::Mode;
use crate::warehouse::{
    schema_state, AppendJob, ChosenLoad, LedgerSummary, RunRecord, RunState, RunUpdate,
    SchemaState, Transaction,
};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Finished {
    /// Made visible now.
    Published { rows: u64 },
    /// Made visible earlier (by another loader, or an earlier delivery).
    AlreadyPublished { rows: u64 },
    /// Will never be visible, and why.
    Abandoned { reason: String },
}

/// The marker a swapped-in table carries.
pub fn marker(run_id: &str) -> String {
    format!("pgp run {run_id}")
}

/// The run's row, added when a planner died before adding it.
pub(crate) async fn ensure_run(txn: &mut Box<dyn Transaction>, h: &RunHeader) -> Result<RunRecord> {
    if let Some(r) = txn.run(&h.target, &h.run_id).await? {
        return Ok(r);
    }
    let r = h.run_record();
    txn.insert_run(&r).await?;
    Ok(r)
}

/// The ledger's summary of a run in `table` (its load table, or its build table), read
/// outside any lock.
pub(crate) async fn read_summary(
    parts: &Parts,
    table: &TableName,
    run_id: &str,
) -> Result<LedgerSummary> {
    let mut txn = parts.wh()?.begin().await?;
    let s = txn.ledger_summary(table, run_id).await;
    let _ = txn.rollback().await;
    s
}

/// The run's row, if any.
pub async fn run_state(parts: &Parts, h: &RunHeader) -> Result<Option<RunRecord>> {
    let wh = parts.wh()?;
    let mut txn = wh.begin().await?;
    let r = txn.run(&h.target, &h.run_id).await;
    let _ = txn.rollback().await;
    r
}

/// End a run for good with `reason` (unless it ended already); drop its load table.
pub async fn abandon(parts: &Parts, h: &RunHeader, reason: &str) -> Result<Finished> {
    let wh = parts.wh()?;
    wh.prepare_lock(&h.target).await?;
    let end = in_txn!(wh, |txn| {
        txn.lock(&h.target).await?;
        let r = ensure_run(&mut txn, h).await?;
        Ok(match r.state {
            RunState::Published => Finished::AlreadyPublished {
                rows: r.rows.unwrap_or(0),
            },
            RunState::Abandoned => Finished::Abandoned {
                reason: r.reason.unwrap_or_default(),
            },
            _ => {
                txn.update_run(
                    &h.target,
                    &h.run_id,
                    &RunUpdate::Abandoned {
                        reason: reason.to_string(),
                    },
                )
                .await?;
                tracing::error!(run_id = %h.run_id, target_table = %h.target, %reason, "run abandoned");
                Finished::Abandoned {
                    reason: reason.to_string(),
                }
            }
        })
    })?;
    if matches!(end, Finished::Abandoned { .. }) {
        let _ = wh.drop_table(&h.load_table).await;
        if let Ok(b) = build_table(&h.target, &h.run_id) {
            let _ = wh.drop_table(&b).await;
        }
    }
    Ok(end)
}

/// What a finished state says, if final.
fn final_state(r: &RunRecord) -> Option<Finished> {
    match r.state {
        RunState::Published => Some(Finished::AlreadyPublished {
            rows: r.rows.unwrap_or(0),
        }),
        RunState::Abandoned => Some(Finished::Abandoned {
            reason: r.reason.clone().unwrap_or_default(),
        }),
        _ => None,
    }
}

/// Other runs' swap claims on the target: one whose swap happened (the target carries
/// its marker) is recorded published; one that is fresh otherwise makes this loader
/// busy; a stale one never swapped and never will: abandoned.
/// Returns the swap tables of resolved claims, to drop after commit.
async fn settle_other_claims(
    wh: &dyn crate::warehouse::Warehouse,
    txn: &mut Box<dyn Transaction>,
    h: &RunHeader,
) -> Result<Vec<TableName>> {
    let mut leftovers = Vec::new();
    for other in txn.open_runs(&h.target).await? {
        // An append's claim guards only its own publish (its job checks it): appends of
        // different runs commute, and a swap replaces the table whatever was appended.
        if other.run_id == h.run_id
            || other.state != RunState::Claimed
            || other.mode == super::plan::mode_name(Mode::Append)
        {
            continue;
        }
        let swapped = txn.marker(&h.target).await?.as_deref() == Some(&marker(&other.run_id));
        let age = other.claim_age_seconds.unwrap_or(0);
        if !swapped && age < CLAIM_LEASE.as_secs() as i64 {
            return Err(Error::Busy(format!(
                "run {} is swapping {} (claimed {age} s ago)",
                other.run_id, h.target
            )));
        }
        let other_build = swap_source(wh, &h.target, &other.run_id, &other.load_table)?;
        let update = if swapped {
            let s = txn.ledger_summary(&other_build, &other.run_id).await?;
            RunUpdate::Published { rows: s.rows }
        } else {
            RunUpdate::Abandoned {
                reason: format!(
                    "its swap claim expired before the swap; run {} went on",
                    h.run_id
                ),
            }
        };
        tracing::warn!(target_table = %h.target, stale = %other.run_id, ?update, "settled an expired swap claim");
        txn.update_run(&h.target, &other.run_id, &update).await?;
        leftovers.push(other_build);
        leftovers.push(other.load_table.clone());
    }
    Ok(leftovers)
}

/// Publish a run whose ledger holds every chunk (or find how it ended). A permanent
/// failure of a run that another loader has meanwhile finished (its load table dropped
/// under this one's feet) is that end, not a failure.
pub async fn finish_run(parts: &Parts, h: &RunHeader) -> Result<Finished> {
    match publish(parts, h).await {
        Err(e) if !e.is_retriable() => match run_state(parts, h).await? {
            Some(r) => match final_state(&r) {
                Some(f) => Ok(f),
                None => Err(e),
            },
            None => Err(e),
        },
        r => r,
    }
}

async fn publish(parts: &Parts, h: &RunHeader) -> Result<Finished> {
    match h.mode {
        Mode::Append => publish_append(parts, h).await,
        Mode::Swap | Mode::Test => publish_swap(parts, h).await,
        Mode::None => Err(Error::Unsupported {
            table: h.table.clone(),
            message: "nothing to publish for a plan that loads nothing".into(),
        }),
    }
}

enum AppendEnd {
    Done(Finished),
    /// Cannot be published; abandon with this reason.
    Refused(String),
}

/// What both append publishes check under the lock once the run's own state allows
/// it: other runs' expired swap claims settled (their leftover tables put in
/// `leftovers`, to drop after the commit), the target's columns as planned (else the
/// reason to refuse), and every chunk loaded (else busy). The ledger's summary.
async fn append_ready(
    wh: &dyn crate::warehouse::Warehouse,
    txn: &mut Box<dyn Transaction>,
    h: &RunHeader,
    leftovers: &mut Vec<TableName>,
) -> Result<std::result::Result<LedgerSummary, String>> {
    *leftovers = settle_other_claims(wh, txn, h).await?;
    let actual = txn.columns(&h.target).await?;
    match schema_state(wh, &h.schema.columns, actual.as_deref()) {
        SchemaState::Same => {}
        s => {
            return Ok(Err(format!(
                "{} changed since the run was planned ({s:?}); nothing appended; run a backfill",
                h.target
            )))
        }
    }
    let summary = txn.ledger_summary(&h.load_table, &h.run_id).await?;
    if summary.chunks != h.chunks as u64 {
        return Err(not_complete(h, summary.chunks));
    }
    Ok(Ok(summary))
}

async fn publish_append(parts: &Parts, h: &RunHeader) -> Result<Finished> {
    let wh = parts.wh()?;
    if let Some(jobs) = wh.jobs() {
        return publish_append_job(parts, h, jobs).await;
    }
    wh.prepare_lock(&h.target).await?;
    let mut leftovers = Vec::new();
    let end = in_txn!(wh, |txn| {
        txn.lock(&h.target).await?;
        let run = ensure_run(&mut txn, h).await?;
        if let Some(f) = final_state(&run) {
            return Ok(AppendEnd::Done(f));
        }
        let summary = match append_ready(wh, &mut txn, h, &mut leftovers).await? {
            Ok(summary) => summary,
            Err(reason) => return Ok(AppendEnd::Refused(reason)),
        };
        let rows = txn
            .insert_chosen(&h.load_table, &h.target, &h.schema, &h.run_id)
            .await?;
        if rows != summary.rows {
            moved_on(&mut txn, h, summary).await?;
            // Roll the insert back (by failing the transaction), then abandon.
            return Err(Error::CountMismatch {
                table: h.table.clone(),
                chunk: format!("all {} chunks", h.chunks),
                source_rows: summary.rows,
                loaded_rows: rows,
            });
        }
        txn.update_run(&h.target, &h.run_id, &RunUpdate::Published { rows })
            .await?;
        Ok(AppendEnd::Done(Finished::Published { rows }))
    });
    if end.is_ok() {
        // Only once the settlement of expired claims is committed are their tables
        // garbage; after a failed commit those runs may still be finished.
        for t in leftovers {
            let _ = wh.drop_table(&t).await;
        }
    }
    match end {
        Ok(AppendEnd::Done(f)) => {
            if !matches!(f, Finished::Abandoned { .. }) {
                let _ = wh.drop_table(&h.load_table).await;
            }
            Ok(f)
        }
        Ok(AppendEnd::Refused(reason)) => abandon(parts, h, &reason).await,
        Err(e @ Error::CountMismatch { .. }) => abandon(parts, h, &e.to_string()).await,
        Err(e) => Err(e),
    }
}

enum AppendClaim {
    Done(Finished),
    Refused(String),
    /// This request holds the claim; the chosen load of every chunk, and the target's
    /// marker.
    Held(Vec<ChosenLoad>, Option<String>),
}

/// The append publish on a warehouse that runs it as its own job ([`Warehouse::jobs`]):
/// 1. under the target's lock: the run's state (finished? its publish claimed by
///    another request less than [`CLAIM_LEASE`] ago? then busy), other runs' swap
///    claims, the target's columns and the ledger's completeness, as the one-
///    transaction publish checks them; then the chosen load of every chunk is read and
///    the publish is claimed (`claimed`, a fresh claim id);
/// 2. the job ([`run_append_job`]) is submitted and this request answers busy: a
///    redelivery finds the run published, or its claim fresh (busy again), or expired
///    (the job never ran, or has not yet: it is taken over, and the old job, guarded by
///    its claim id, changes nothing when it runs).
///
/// A job that runs holds the target's lock from its first statement, so a take-over
/// that waits for the lock finds the run published. Append claims do not block other
/// runs (appends of different runs commute; see [`settle_other_claims`]).
async fn publish_append_job(
    parts: &Parts,
    h: &RunHeader,
    jobs: &dyn crate::warehouse::AppendJobs,
) -> Result<Finished> {
    let wh = parts.wh()?;
    wh.prepare_lock(&h.target).await?;
    let attempt = parts.ids.fresh();
    let mut leftovers = Vec::new();
    let claim = in_txn!(wh, |txn| {
        txn.lock(&h.target).await?;
        let run = ensure_run(&mut txn, h).await?;
        if let Some(f) = final_state(&run) {
            return Ok(AppendClaim::Done(f));
        }
        if run.state == RunState::Claimed {
            let age = run.claim_age_seconds.unwrap_or(0);
            if age < CLAIM_LEASE.as_secs() as i64 {
                return Err(Error::Busy(format!(
                    "the publish of run {} into {} is under way (claimed {age} s ago)",
                    h.run_id, h.target
                )));
            }
            // Its job never ran, or has yet to: take over (that job then finds
            // another claim and changes nothing).
        }
        let summary = match append_ready(wh, &mut txn, h, &mut leftovers).await? {
            Ok(summary) => summary,
            Err(reason) => return Ok(AppendClaim::Refused(reason)),
        };
        let mut chosen = txn.chosen_loads(&h.load_table, &h.run_id).await?;
        let Some(loads) = (0..h.chunks)
            .map(|chunk| chosen.remove(&chunk))
            .collect::<Option<Vec<ChosenLoad>>>()
        else {
            return Err(not_complete(h, summary.chunks));
        };
        if loads.iter().map(|l| l.rows).sum::<u64>() != summary.rows {
            // A load committed between the statements (READ COMMITTED): read again.
            moved_on(&mut txn, h, summary).await?;
            return Err(Error::Busy(format!(
                "the ledger of run {} moved while its publish was claimed",
                h.run_id
            )));
        }
        let marker = txn.marker(&h.target).await?;
        txn.update_run(&h.target, &h.run_id, &RunUpdate::Claim(attempt.clone()))
            .await?;
        Ok(AppendClaim::Held(loads, marker))
    });
    if claim.is_ok() {
        for t in leftovers {
            let _ = wh.drop_table(&t).await;
        }
    }
    let (loads, marker) = match claim? {
        AppendClaim::Done(f) => {
            if !matches!(f, Finished::Abandoned { .. }) {
                let _ = wh.drop_table(&h.load_table).await;
            }
            return Ok(f);
        }
        AppendClaim::Refused(reason) => return abandon(parts, h, &reason).await,
        AppendClaim::Held(loads, marker) => (loads, marker),
    };
    let rows: u64 = loads.iter().map(|l| l.rows).sum();
    jobs.submit(AppendJob {
        target: h.target.clone(),
        load_table: h.load_table.clone(),
        schema: h.schema.clone(),
        run_id: h.run_id.clone(),
        claim: attempt.clone(),
        loads,
        marker,
    })
    .await?;
    tracing::info!(run_id = %h.run_id, target_table = %h.target, claim = %attempt, rows, "append publish submitted");
    Err(Error::Busy(format!(
        "the publish of run {} into {} ({rows} rows) was submitted to the warehouse; \
         a redelivery finds it done",
        h.run_id, h.target
    )))
}

/// What an [`AppendJob`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    Published {
        rows: u64,
    },
    /// The run was no longer claimed by this job, or the target was swapped since the
    /// claim: nothing changed.
    Superseded,
}

/// An [`AppendJob`] as one transaction of [`Transaction`] steps: what a warehouse's job
/// runner executes (the simulation's runs this very function; Snowflake's submits the
/// same statements). A load whose rows differ from its ledger row fails the job (rolled
/// back); the claim then expires and is taken over.
pub async fn run_append_job(
    wh: &dyn crate::warehouse::Warehouse,
    job: &AppendJob,
) -> Result<JobEnd> {
    in_txn!(wh, |txn| {
        txn.lock(&job.target).await?;
        match txn.run(&job.target, &job.run_id).await? {
            Some(r) if r.state == RunState::Claimed && r.claim.as_deref() == Some(&job.claim) => {}
            _ => return Ok(JobEnd::Superseded),
        }
        // A swap since the claim (its DDL runs outside the lock, between its claim and
        // its record): appending now would put rows checked against the old table into
        // the new one, recorded before the swap. The claim expires and is taken over.
        if txn.marker(&job.target).await? != job.marker {
            return Ok(JobEnd::Superseded);
        }
        let mut rows = 0;
        for l in &job.loads {
            rows += insert_counted(
                &mut txn,
                &job.load_table,
                &job.target,
                &job.schema,
                l,
                &job.target.to_string(),
                format!("load {}", l.load_id),
            )
            .await?;
        }
        txn.update_run(&job.target, &job.run_id, &RunUpdate::Published { rows })
            .await?;
        Ok(JobEnd::Published { rows })
    })
}

/// After a publish inserted other than the ledger's total: whether a load of the run
/// committed between the two statements. Snowflake runs transactions at READ
/// COMMITTED, so the insert may see a duplicate load (a chunk extracted twice while
/// the source changed) that the summary before it did not, with a smaller load id and
/// another row count. Then the totals differ through no fault: busy, and the retry
/// reads one state. If the ledger did not move, nothing committed in between and the
/// difference is real (`Ok`, the caller abandons). Loads are only ever added, so a
/// summary equal to the first means none landed since.
async fn moved_on(
    txn: &mut Box<dyn Transaction>,
    h: &RunHeader,
    first: LedgerSummary,
) -> Result<()> {
    let again = txn.ledger_summary(&h.load_table, &h.run_id).await?;
    if again != first {
        return Err(Error::Busy(format!(
            "a load of run {} committed while it was being published ({} rows then, {} now); publishing again",
            h.run_id, first.rows, again.rows
        )));
    }
    Ok(())
}

fn not_complete(h: &RunHeader, loaded: u64) -> Error {
    Error::Busy(format!(
        "run {} of {} has {loaded} of {} chunks loaded; not publishing yet",
        h.run_id, h.target, h.chunks
    ))
}

enum Claim {
    Done(Finished),
    /// This loader holds the claim; the built table has this many rows.
    Held(u64),
}

async fn publish_swap(parts: &Parts, h: &RunHeader) -> Result<Finished> {
    let wh = parts.wh()?;
    // A late event of a finished run builds nothing.
    if let Some(f) = run_state(parts, h).await?.as_ref().and_then(final_state) {
        return Ok(f);
    }
    let b = swap_source(wh, &h.target, &h.run_id, &h.load_table)?;

    // 1. Build what is left, a bounded share per event (module `build`). A serial
    // warehouse builds nothing: its load table, one load per chunk, is swapped in.
    let progress = if wh.serial() {
        Build::Progress(read_summary(parts, &h.load_table, &h.run_id).await?)
    } else {
        build(parts, h, BUILD_BUDGET).await?
    };
    if let Build::Progress(built) = progress {
        if built.chunks < h.chunks as u64 {
            let loaded = read_summary(parts, &h.load_table, &h.run_id).await?;
            if loaded.chunks < h.chunks as u64 {
                return Err(not_complete(h, loaded.chunks));
            }
            return Err(not_built(h, &built));
        }
        // 2. Complete: nothing writes into the table any more. Check its rows against
        // the build ledger (each chunk's insert was checked when it committed; this
        // catches anything else writing into it). A claimant may meanwhile have
        // swapped it: then the table is gone or holds the old target, and the run is
        // claimed or final.
        let counted = wh.row_count(&b).await;
        if counted.as_ref().ok() != Some(&built.rows) {
            // Read after the count: while the run is still planned nobody has claimed
            // it, so nobody has swapped, and the count was of the built table.
            match run_state(parts, h).await? {
                // Claimed by another loader, which counted it: the table may be gone or
                // hold the old target now. The claim step finds out whether the swap
                // happened (marker) or takes over.
                Some(r) if r.state == RunState::Claimed => {}
                Some(r) if r.state.is_final() => {
                    return Ok(final_state(&r).expect("final"));
                }
                _ => {
                    let counted = counted?;
                    let e = Error::CountMismatch {
                        table: h.table.clone(),
                        chunk: format!("all {} chunks, in {b}", h.chunks),
                        source_rows: built.rows,
                        loaded_rows: counted,
                    };
                    return abandon(parts, h, &e.to_string()).await;
                }
            }
        }
    }

    // 3. Claim the swap of the built table.
    wh.prepare_lock(&h.target).await?;
    let attempt = parts.ids.fresh();
    let started = parts.clock.monotonic();
    let mut leftovers = Vec::new();
    let claim = in_txn!(wh, |txn| {
        txn.lock(&h.target).await?;
        let run = ensure_run(&mut txn, h).await?;
        if let Some(f) = final_state(&run) {
            return Ok(Claim::Done(f));
        }
        let built = txn.ledger_summary(&b, &h.run_id).await?;
        if run.state == RunState::Claimed {
            // The target carries this run's marker: the claimant swapped, and has not
            // recorded it yet (or never will). Recording it is safe whoever does it.
            if txn.marker(&h.target).await?.as_deref() == Some(&marker(&h.run_id)) {
                leftovers.push(b.clone());
                txn.update_run(
                    &h.target,
                    &h.run_id,
                    &RunUpdate::Published { rows: built.rows },
                )
                .await?;
                return Ok(Claim::Done(Finished::AlreadyPublished { rows: built.rows }));
            }
            let age = run.claim_age_seconds.unwrap_or(0);
            if age < CLAIM_LEASE.as_secs() as i64 {
                return Err(Error::Busy(format!(
                    "another loader is swapping run {} into {} (claimed {age} s ago)",
                    h.run_id, h.target
                )));
            }
            // That claimant is gone, and its swap never happened: take over (the
            // build table is the run's, complete since the claim).
        } else if built.chunks != h.chunks as u64 {
            return Err(not_built(h, &built));
        }
        leftovers.extend(settle_other_claims(wh, &mut txn, h).await?);
        txn.update_run(&h.target, &h.run_id, &RunUpdate::Claim(attempt.clone()))
            .await?;
        Ok(Claim::Held(built.rows))
    });
    if claim.is_ok() {
        for t in leftovers {
            let _ = wh.drop_table(&t).await;
        }
    }
    let rows = match claim? {
        Claim::Held(rows) => rows,
        Claim::Done(f) => {
            if !matches!(f, Finished::Abandoned { .. }) {
                let _ = wh.drop_table(&h.load_table).await;
            }
            return Ok(f);
        }
    };
    tracing::info!(run_id = %h.run_id, target_table = %h.target, claim = %attempt, "claimed the swap");

    // 4. Swap, while the claim is young enough that nobody can have taken it over. (An
    // earlier claimant of this run that swapped and died was found out by the marker
    // check under the lock, when its claim was taken over.)
    if parts.clock.monotonic().saturating_sub(started) > CLAIM_LEASE / 3 {
        return Err(Error::Busy(format!(
            "the swap claim of run {} on {} is too old to act on; the next attempt takes it over",
            h.run_id, h.target
        )));
    }
    wh.swap_in(&b, &h.target, &marker(&h.run_id)).await?;
    tracing::info!(run_id = %h.run_id, target_table = %h.target, "swap done; recording it");

    // 5. Record it (unless a loader that took over the expired claim found the swap by
    // its marker and recorded it), and drop the old table (now under the build table's
    // name) and the load table.
    in_txn!(wh, |txn| {
        txn.lock(&h.target).await?;
        let run = ensure_run(&mut txn, h).await?;
        if run.state == RunState::Claimed && run.claim.as_deref() == Some(attempt.as_str()) {
            txn.update_run(&h.target, &h.run_id, &RunUpdate::Published { rows })
                .await?;
        }
        Ok(())
    })?;
    let _ = wh.drop_table(&b).await;
    let _ = wh.drop_table(&h.load_table).await;
    tracing::info!(run_id = %h.run_id, target_table = %h.target, rows, "swapped in");
    Ok(Finished::Published { rows })
}

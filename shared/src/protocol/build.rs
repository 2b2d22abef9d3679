//! The build of a swap: the run's chosen loads copied into the table that will be
//! swapped in, one chunk per statement, a bounded number of chunks per event.
//!
//! Why it exists: a publish that copied the whole run in one `INSERT … SELECT` would
//! take time growing with the table. A multi-terabyte backfill could then never finish
//! inside one Cloud Run request (540 s): cut off, redelivered and redone forever. So
//! every loader event, right after its load, builds up to [`BUILD_BUDGET`] loaded
//! chunks that are not built yet (its own, or others' when their loaders are waiting
//! for the lock or died in between), and the event that finds every chunk loaded builds
//! at most as many again and answers busy while any remain, so redelivery carries the
//! build on. Every statement moves one chunk's rows, which the
//! planner's chunk sizing bounds as it bounds the chunk's `COPY`.
//!
//! A warehouse that runs one transaction at a time ([`Warehouse::serial`], DuckDB)
//! builds nothing: its load table holds one load per chunk and is swapped in itself
//! ([`swap_source`]).
//!
//! Exactly once, with Snowflake's guarantees and no more: the build table belongs to the
//! run ([`build_table`]); one chunk's rows and its row in the build ledger (the load
//! ledger, keyed by the build table, naming the load it copied) commit in one
//! transaction that holds the target's lock, finds the run still `planned` and the
//! chunk not built, and checks the rows inserted against the load's ledger row. Builds
//! of a target therefore run one at a time and each chunk is built once; the swap claim,
//! under the same lock, needs every chunk built, and after it no build touches the table.

use super::publish::ensure_run;
use super::{Parts, RunHeader};
use crate::error::{Error, Result};
use crate::ident::TableName;
use crate::warehouse::{LedgerSummary, LoadRecord, RunState, Warehouse};

/// Insert the rows of one chosen load from `from` into `to`, failing (so the
/// transaction rolls back) unless they are the rows its ledger row counted: the count
/// check of every build step and of an append job. `table` and `chunk` name it in the
/// error.
pub(super) async fn insert_counted(
    txn: &mut Box<dyn crate::warehouse::Transaction>,
    from: &TableName,
    to: &TableName,
    schema: &crate::warehouse::TableSchema,
    load: &crate::warehouse::ChosenLoad,
    table: &str,
    chunk: String,
) -> Result<u64> {
    let n = txn.insert_load(from, to, schema, &load.load_id).await?;
    if n != load.rows {
        return Err(Error::CountMismatch {
            table: table.to_string(),
            chunk,
            source_rows: load.rows,
            loaded_rows: n,
        });
    }
    Ok(n)
}

/// Chunks one build builds at most. A loader event runs at most two builds (after its
/// load, and in the publish when it loaded the last chunk), so its work is one chunk's
/// `COPY` and at most `2 × BUILD_BUDGET` chunk-sized `INSERT … SELECT`s (see
/// infra/README.md, "Deadlines"). A builder builds other loaders' chunks too: under
/// contention the lock is taken fewer times than there are chunks.
pub const BUILD_BUDGET: usize = 3;

/// The table a swap builds and swaps in: `<target>_PGP_SWAP_<run>`.
pub fn build_table(target: &TableName, run_id: &str) -> Result<TableName> {
    target.with_suffix(&format!("_PGP_SWAP_{}", crate::plan::stage_suffix(run_id)))
}

/// The table a swap swaps in: the run's build table, or, on a warehouse whose loads
/// are one per chunk ([`Warehouse::serial`]), the run's load table itself (nothing is
/// built: the data is written once).
pub fn swap_source(
    wh: &dyn Warehouse,
    target: &TableName,
    run_id: &str,
    load_table: &TableName,
) -> Result<TableName> {
    if wh.serial() {
        Ok(load_table.clone())
    } else {
        build_table(target, run_id)
    }
}

/// Where a build stands after an event's share of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Build {
    /// Chunks built so far and their rows (complete when `chunks` is the run's).
    Progress(LedgerSummary),
    /// The run is not `planned` any more: claimed (building is over) or final.
    Over,
}

/// Build up to `budget` loaded chunks that are not built yet.
pub async fn build(parts: &Parts, h: &RunHeader, budget: usize) -> Result<Build> {
    let wh = parts.wh()?;
    let b = build_table(&h.target, &h.run_id)?;
    // Anything to build? Read without the lock (a redelivered event of a built chunk,
    // or a build that is complete, takes no lock; the claim re-checks under it).
    let mut txn = wh.begin().await?;
    let todo = txn
        .unbuilt_chunks(&h.load_table, &b, &h.run_id, budget)
        .await;
    let summary = match &todo {
        Ok(t) if t.is_empty() => Some(txn.ledger_summary(&b, &h.run_id).await),
        _ => None,
    };
    let _ = txn.rollback().await;
    if todo?.is_empty() {
        return Ok(Build::Progress(summary.expect("read above")?));
    }
    // Idempotent; a table created by a late event after the swap is an empty leftover
    // that the claimant (or gc) drops.
    wh.create_table(&b, &h.schema, false).await?;
    wh.prepare_lock(&h.target).await?;
    in_txn!(wh, |txn| {
        txn.lock(&h.target).await?;
        let run = ensure_run(&mut txn, h).await?;
        if run.state != RunState::Planned {
            return Ok(Build::Over);
        }
        // Under the lock: builds of the target are serialized, so what is unbuilt now
        // stays unbuilt until this transaction ends.
        for chunk in txn
            .unbuilt_chunks(&h.load_table, &b, &h.run_id, budget)
            .await?
        {
            let Some(load) = txn.chunk_loaded(&h.load_table, &h.run_id, chunk).await? else {
                continue;
            };
            let n = insert_counted(
                &mut txn,
                &h.load_table,
                &b,
                &h.schema,
                &load,
                &h.table,
                format!("{chunk} (load {} into {b})", load.load_id),
            )
            .await?;
            txn.record_load(&LoadRecord {
                load_table: b.clone(),
                run_id: h.run_id.clone(),
                chunk,
                object: format!("load {} of {}", load.load_id, h.load_table),
                load_id: load.load_id,
                rows: n,
            })
            .await?;
        }
        Ok(Build::Progress(txn.ledger_summary(&b, &h.run_id).await?))
    })
}

/// What a build's end means for an event that found the run's loads complete.
pub(crate) fn not_built(h: &RunHeader, built: &LedgerSummary) -> Error {
    Error::Busy(format!(
        "run {} of {}: {} of {} chunks built into the swap table; the build goes on with the next delivery",
        h.run_id, h.target, built.chunks, h.chunks
    ))
}

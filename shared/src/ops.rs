//! What operators ask of a running pipeline, answered from the records the steps keep
//! (the warehouse's run table and ledger, the bucket's run records and objects), so
//! that what they see is what the services act on:
//! - [`runs`]: what every recent run is doing (`pgp runs`);
//! - [`gc`]: what abandoned or finished runs left behind — load and swap tables,
//!   staged objects, run records, ledger rows — removed after a retention (`pgp gc`,
//!   and the planner's `/gc` request in the cloud). A dry run unless told to apply.
//!
//! Nothing here decides a run's outcome except one case, under the target's lock and
//! with the same checks the publish step makes: a run idle past the retention is
//! recorded published when the target carries its marker (its swap happened and its
//! loader died before recording it), else abandoned as stalled.

use crate::error::Result;
use crate::ident::TableName;
use crate::protocol::publish::marker;
use crate::protocol::record::{
    read_run_file, run_objects_prefix, ChunkObject, RunFile, RUNS_PREFIX,
};
use crate::storage::{ObjectKey, ObjectStore};
use crate::warehouse::{RunState, RunStatus, RunUpdate, Warehouse};
use std::collections::BTreeSet;
use std::time::Duration;

/// One run as `pgp runs` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunView {
    pub run_id: String,
    pub target: String,
    /// `append`, `swap` or `test`.
    pub mode: String,
    /// `planned`, `claimed`, `published` or `abandoned`.
    pub state: String,
    pub chunks_planned: u64,
    /// Chunks with a staged object (objects are removed once a run is published
    /// embedded, and by the bucket's lifecycle rule).
    pub chunks_extracted: u64,
    pub chunks_loaded: u64,
    /// Chunks an extractor gave up on, with the reason it left.
    pub chunks_failed: u64,
    /// Rows published, or loaded so far.
    pub rows: u64,
    /// Committed loads, duplicates included.
    pub loads: u64,
    /// Why it was abandoned, or the last reason an extractor left.
    pub last_error: Option<String>,
    pub age_seconds: i64,
    pub idle_seconds: i64,
}

/// Every run recorded in the last `since` (by its last activity), newest first.
pub async fn runs(
    store: &dyn ObjectStore,
    wh: &dyn Warehouse,
    since: Option<Duration>,
) -> Result<Vec<RunView>> {
    let mut out = Vec::new();
    for s in wh.run_overview().await? {
        if since.is_some_and(|d| s.idle_seconds as u64 > d.as_secs()) {
            continue;
        }
        let r = &s.record;
        let objects = store
            .list(&run_objects_prefix(&r.target, &r.run_id))
            .await?;
        let mut extracted = BTreeSet::new();
        let mut failed = BTreeSet::new();
        let mut last_failure = None;
        // What the loader reads of an object, read the same way (objects without
        // complete chunk metadata are not chunks, as for the loader).
        for c in objects
            .iter()
            .filter_map(|o| ChunkObject::from_info(o).ok().flatten())
        {
            match c.failed {
                Some(e) => {
                    failed.insert(c.chunk);
                    last_failure = Some(e);
                }
                None => {
                    extracted.insert(c.chunk);
                }
            }
        }
        out.push(RunView {
            run_id: r.run_id.clone(),
            target: r.target.to_string(),
            mode: r.mode.clone(),
            state: r.state.as_str().into(),
            chunks_planned: r.chunks,
            chunks_extracted: extracted.len() as u64,
            chunks_loaded: s.loaded_chunks,
            chunks_failed: failed.len() as u64,
            rows: r.rows.unwrap_or(s.loaded_rows),
            loads: s.loads,
            last_error: r.reason.clone().or(last_failure),
            age_seconds: s.age_seconds,
            idle_seconds: s.idle_seconds,
        });
    }
    Ok(out)
}

/// What [`gc`] keeps and removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// Runs idle this long are no longer in flight: an unfinished one is settled, and
    /// the tables and objects of a settled one are removed.
    pub retention: Duration,
    /// Ledger rows of runs settled this long are deleted (the run's row stays).
    pub ledger_retention: Duration,
    /// Act; otherwise only say what would be done.
    pub apply: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            ledger_retention: Duration::from_secs(30 * 24 * 3600),
            apply: false,
        }
    }
}

/// What [`gc`] did (or would do) to one run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GcItem {
    pub run_id: String,
    pub target: String,
    /// The state it was found in.
    pub state: String,
    pub idle_seconds: i64,
    /// In order, e.g. `drop table S.T_PGP_LOAD_R`, `delete 3 objects under s/t/r/`.
    pub actions: Vec<String>,
}

/// The whole of a [`gc`] pass.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub applied: bool,
    pub items: Vec<GcItem>,
    /// Runs left alone because they are in flight.
    pub in_flight: u64,
}

/// Remove what runs that are neither in flight nor published-and-recent left behind.
pub async fn gc(store: &dyn ObjectStore, wh: &dyn Warehouse, opts: GcOptions) -> Result<GcReport> {
    let mut report = GcReport {
        applied: opts.apply,
        items: Vec::new(),
        in_flight: 0,
    };
    for s in wh.run_overview().await? {
        let idle = s.idle_seconds.max(0) as u64;
        let settled = matches!(s.record.state, RunState::Published | RunState::Abandoned);
        if idle < opts.retention.as_secs() {
            if !settled {
                report.in_flight += 1;
            }
            continue;
        }
        let mut item = GcItem {
            run_id: s.record.run_id.clone(),
            target: s.record.target.to_string(),
            state: s.record.state.as_str().into(),
            idle_seconds: s.idle_seconds,
            actions: Vec::new(),
        };
        if !settled {
            let decided = settle_stalled(wh, &s, opts.apply).await?;
            item.actions.push(decided);
        }
        collect_leftovers(store, wh, &s, opts.apply, &mut item.actions).await?;
        if s.loads > 0 && idle >= opts.ledger_retention.as_secs() {
            let n = if opts.apply {
                // The load ledger, and the build ledger of a swap (keyed by its table).
                let built =
                    crate::protocol::build::build_table(&s.record.target, &s.record.run_id)?;
                wh.trim_ledger(&s.record.load_table, &s.record.run_id)
                    .await?
                    + wh.trim_ledger(&built, &s.record.run_id).await?
            } else {
                s.loads
            };
            item.actions.push(format!("delete {n} ledger rows"));
        }
        if !item.actions.is_empty() {
            report.items.push(item);
        }
    }
    Ok(report)
}

/// Record a run idle past the retention as what it is: published if the target carries
/// its marker, else abandoned. Re-read under the lock: it may have moved meanwhile.
async fn settle_stalled(wh: &dyn Warehouse, s: &RunStatus, apply: bool) -> Result<String> {
    let r = &s.record;
    let reason = format!(
        "stalled: nothing happened for {} s (garbage collection)",
        s.idle_seconds
    );
    if !apply {
        return Ok(format!("record as abandoned or published ({reason})"));
    }
    wh.prepare_lock(&r.target).await?;
    let mut txn = wh.begin().await?;
    let body = async {
        txn.lock(&r.target).await?;
        let Some(now) = txn.run(&r.target, &r.run_id).await? else {
            return Ok("gone meanwhile".to_string());
        };
        if now.state != r.state || now.claim != r.claim {
            return Ok(format!("moved on meanwhile ({:?})", now.state));
        }
        if now.state == RunState::Claimed
            && txn.marker(&r.target).await?.as_deref() == Some(marker(&r.run_id).as_str())
        {
            let built =
                crate::protocol::build::swap_source(wh, &r.target, &r.run_id, &r.load_table)?;
            let rows = txn.ledger_summary(&built, &r.run_id).await?.rows;
            txn.update_run(&r.target, &r.run_id, &RunUpdate::Published { rows })
                .await?;
            return Ok("recorded as published (the target carries its marker)".to_string());
        }
        txn.update_run(
            &r.target,
            &r.run_id,
            &RunUpdate::Abandoned {
                reason: reason.clone(),
            },
        )
        .await?;
        Ok(format!("recorded as abandoned ({reason})"))
    }
    .await;
    crate::protocol::settle(txn, body).await
}

/// The tables, objects and run records a settled run no longer needs.
async fn collect_leftovers(
    store: &dyn ObjectStore,
    wh: &dyn Warehouse,
    s: &RunStatus,
    apply: bool,
    actions: &mut Vec<String>,
) -> Result<()> {
    let r = &s.record;
    let tables: Vec<TableName> = vec![
        r.load_table.clone(),
        crate::protocol::build::build_table(&r.target, &r.run_id)?,
    ];
    for t in tables {
        if wh.columns(&t).await?.is_some() {
            if apply {
                wh.drop_table(&t).await?;
            }
            actions.push(format!("drop table {t}"));
        }
    }
    let prefix = run_objects_prefix(&r.target, &r.run_id);
    let objects = store.list(&prefix).await?;
    if !objects.is_empty() {
        if apply {
            for o in &objects {
                store.delete(&o.key).await?;
            }
        }
        actions.push(format!("delete {} objects under {prefix}", objects.len()));
    }
    // The run's record (and its ranges), found among the request's records by target.
    for o in store.list(&format!("{RUNS_PREFIX}{}/", r.run_id)).await? {
        if o.key.as_str().ends_with(".ranges.json") {
            continue; // deleted with the record that names it
        }
        if let Some(RunFile::Run(h)) = read_run_file(store, &o.key).await? {
            if h.target == r.target {
                if apply {
                    delete_if_present(store, &h.ranges).await?;
                    store.delete(&o.key).await?;
                }
                actions.push(format!("delete run record {}", o.key));
            }
        }
    }
    Ok(())
}

async fn delete_if_present(store: &dyn ObjectStore, key: &ObjectKey) -> Result<()> {
    if store.head(key).await?.is_some() {
        store.delete(key).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ident::Ident;
    use crate::storage::{LocalStore, ObjectStoreExt};
    use crate::types::ColumnType;
    use crate::warehouse::conformance::{all_types, col};
    use crate::warehouse::{DuckDb, LoadRecord, RunRecord, TableSchema};
    use std::sync::Arc;

    fn table(name: &str) -> TableName {
        TableName::new(
            Ident::parse("s", "ops").unwrap(),
            Ident::parse("t", name).unwrap(),
        )
    }

    /// A run row in `state` (planned, or claimed as `claim`) with chunk 0 loaded twice
    /// and chunk 1 once, its load table, and objects for chunks 0 and 1 plus a failed
    /// chunk 2.
    async fn seed(
        wh: &dyn Warehouse,
        store: &dyn ObjectStore,
        target: &TableName,
        run_id: &str,
        claim: Option<&str>,
    ) -> TableName {
        let load = target.with_suffix(&format!("_PGP_LOAD_{run_id}")).unwrap();
        let ts = TableSchema {
            columns: vec![col("id", ColumnType::BigInt)],
            task_instance: false,
        };
        wh.create_table(&load, &ts, true).await.unwrap();
        wh.prepare_lock(target).await.unwrap();
        let mut txn = wh.begin().await.unwrap();
        txn.lock(target).await.unwrap();
        txn.insert_run(&RunRecord::planned(target, run_id, &load, "swap", 3, "fp"))
            .await
            .unwrap();
        for (chunk, id, rows) in [(0, "a", 5), (0, "b", 5), (1, "c", 7)] {
            txn.record_load(&LoadRecord {
                load_table: load.clone(),
                run_id: run_id.into(),
                chunk,
                object: format!("o{chunk}"),
                load_id: id.into(),
                rows,
            })
            .await
            .unwrap();
        }
        if let Some(c) = claim {
            // A claimed run's swap table was built: one load per chunk.
            let built = crate::protocol::build::build_table(target, run_id).unwrap();
            for (chunk, id, rows) in [(0, "a", 5), (1, "c", 7)] {
                txn.record_load(&LoadRecord {
                    load_table: built.clone(),
                    run_id: run_id.into(),
                    chunk,
                    object: format!("load {id}"),
                    load_id: id.into(),
                    rows,
                })
                .await
                .unwrap();
            }
            txn.update_run(target, run_id, &RunUpdate::Claim(c.into()))
                .await
                .unwrap();
        }
        txn.commit().await.unwrap();
        let prefix = run_objects_prefix(target, run_id);
        for (chunk, md) in [
            (0, ("rows", "5")),
            (1, ("rows", "7")),
            (2, ("error", "boom")),
        ] {
            let mut meta = crate::storage::Metadata::new();
            meta.insert("run_id".into(), run_id.into());
            meta.insert("table".into(), target.table.to_string());
            meta.insert("chunks".into(), "3".into());
            meta.insert("chunk".into(), chunk.to_string());
            meta.insert(md.0.into(), md.1.into());
            let key = ObjectKey::parse(&format!("{prefix}{chunk:05}.x.tsv.gz")).unwrap();
            store.put(&key, bytes::Bytes::new(), meta).await.unwrap();
        }
        load
    }

    fn opts(apply: bool, retention_s: u64) -> GcOptions {
        GcOptions {
            retention: Duration::from_secs(retention_s),
            ledger_retention: Duration::from_secs(retention_s),
            apply,
        }
    }

    #[tokio::test]
    async fn stalled_runs_are_shown_then_settled_by_what_the_target_says() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("o")).unwrap());
        let wh = DuckDb::open(&dir.path().join("w.duckdb"), store.clone()).unwrap();
        let (a, b) = (table("stalled"), table("swapped"));
        let load_a = seed(&wh, store.as_ref(), &a, "r1", None).await;
        let load_b = seed(&wh, store.as_ref(), &b, "r2", Some("c1")).await;
        // r2's claimant swapped in its table (which carries its marker), then died.
        let fresh = crate::protocol::build::build_table(&b, "r2").unwrap();
        let ts = TableSchema {
            columns: all_types(),
            task_instance: false,
        };
        wh.create_table(&fresh, &ts, false).await.unwrap();
        wh.swap_in(&fresh, &b, &marker("r2")).await.unwrap();

        let views = runs(store.as_ref(), &wh, None).await.unwrap();
        let v = views.iter().find(|v| v.run_id == "r1").unwrap();
        assert_eq!(
            (
                v.state.as_str(),
                v.chunks_planned,
                v.chunks_extracted,
                v.chunks_loaded
            ),
            ("planned", 3, 2, 2)
        );
        assert_eq!((v.chunks_failed, v.rows, v.loads), (1, 12, 3));
        assert_eq!(v.last_error.as_deref(), Some("boom"));
        assert_eq!(
            runs(store.as_ref(), &wh, Some(Duration::from_secs(3600)))
                .await
                .unwrap()
                .len(),
            2
        );

        // in flight within the retention: left alone
        let r = gc(store.as_ref(), &wh, opts(true, 3600)).await.unwrap();
        assert_eq!((r.items.len(), r.in_flight), (0, 2));

        // a dry run past the retention changes nothing
        let r = gc(store.as_ref(), &wh, opts(false, 0)).await.unwrap();
        assert_eq!(r.items.len(), 2, "{r:?}");
        assert!(wh.columns(&load_a).await.unwrap().is_some());
        assert_eq!(
            store
                .list(&run_objects_prefix(&a, "r1"))
                .await
                .unwrap()
                .len(),
            3
        );

        let r = gc(store.as_ref(), &wh, opts(true, 0)).await.unwrap();
        let views = runs(store.as_ref(), &wh, None).await.unwrap();
        let state = |id: &str| views.iter().find(|v| v.run_id == id).unwrap().clone();
        assert_eq!(state("r1").state, "abandoned", "{r:?}");
        assert!(state("r1").last_error.unwrap().starts_with("stalled"));
        assert_eq!(
            state("r2").state,
            "published",
            "the marker says it swapped: {r:?}"
        );
        assert_eq!(state("r2").rows, 12);
        for t in [&load_a, &load_b, &fresh] {
            assert_eq!(wh.columns(t).await.unwrap(), None, "{t} dropped");
        }
        assert!(wh.columns(&b).await.unwrap().is_some(), "the target stays");
        assert!(store.list("s/").await.unwrap().is_empty());
        assert_eq!((state("r1").loads, state("r2").loads), (0, 0));
        let again = gc(store.as_ref(), &wh, opts(true, 0)).await.unwrap();
        assert!(again.items.is_empty(), "{again:?}");
    }
}

//! Schedules the random simulation reaches too rarely to rely on, written out: each
//! test drives the real steps over the simulation's components into one situation and
//! checks the guarantee that the code under test provides (each fails when that code
//! is removed).

use super::extract::extract_step;
use super::load::{load_step, LoadOutcome};
use super::plan::plan_step;
use super::publish::{finish_run, marker, Finished};
use super::{Parts, RunHeader, CLAIM_LEASE};
use crate::clock::Clock;
use crate::plan::LoadType;
use crate::queue::MemoryQueue;
use crate::run::RunOptions;
use crate::sim::world::{target, Config, SimTable, World};
use crate::storage::ObjectStore;
use crate::warehouse::{RunState, Warehouse};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A world with one table `t` of 10 rows, and no faults.
async fn world(existing: bool) -> World {
    world_with(existing, false).await
}

/// [`world`], its warehouse running append publishes as its own jobs when `jobs`.
async fn world_with(existing: bool, jobs: bool) -> World {
    let mut cfg = Config::from_seed(1);
    cfg.faults = Default::default();
    cfg.jobs = jobs;
    let rows: Vec<(i64, String)> = (1..=10).map(|i| (i, format!("v{i}"))).collect();
    let w = World::new(
        cfg,
        vec![SimTable {
            name: "t".into(),
            existing: existing.then(|| rows.clone()),
            rows,
        }],
        Vec::new(),
    );
    w.seed_targets().await;
    w
}

fn opts(parts: &Parts, load_type: LoadType, run_id: &str) -> RunOptions {
    let mut o = RunOptions::new(load_type, parts.clock.now());
    o.run_id = run_id.into();
    o.chunk_rows = Some(4);
    o.compression = crate::format::Compression::None;
    o
}

/// Plan a backfill of `t` and load every chunk; the last load publishes unless the
/// warehouse is told otherwise. Returns the header and the last chunk's object.
async fn load_all(w: &World, parts: &Parts, run_id: &str) -> (RunHeader, Vec<LoadOutcome>) {
    let queue = Arc::new(MemoryQueue::default());
    let mut p = parts.clone();
    p.queue = Some(queue.clone());
    let manifest = w.manifest();
    let report = plan_step(&p, &manifest, &opts(&p, LoadType::Backfill, run_id), false)
        .await
        .unwrap();
    let header = report.tables[0].header.clone().expect("loads");
    let mut outcomes = Vec::new();
    for m in queue.take() {
        let task = serde_json::from_slice(&m.data).unwrap();
        let out = extract_step(parts, &task, &|_, _| {}).await.unwrap();
        outcomes.push(load_step(parts, out.object()).await.unwrap());
    }
    (header, outcomes)
}

/// Plan a backfill of `t` as `run_id`, load every chunk but the last with `parts`, and
/// load the last with `last` (the loader the test is about); its outcome back.
async fn load_with_last(
    w: &World,
    parts: &Parts,
    run_id: &str,
    last: &Parts,
) -> (RunHeader, crate::Result<LoadOutcome>) {
    let queue = Arc::new(MemoryQueue::default());
    let mut p = parts.clone();
    p.queue = Some(queue.clone());
    let report = plan_step(
        &p,
        &w.manifest(),
        &opts(&p, LoadType::Backfill, run_id),
        false,
    )
    .await
    .unwrap();
    let h = report.tables[0].header.clone().unwrap();
    let tasks = queue.take();
    let (final_task, rest) = tasks.split_last().unwrap();
    for m in rest {
        let task = serde_json::from_slice(&m.data).unwrap();
        let out = extract_step(parts, &task, &|_, _| {}).await.unwrap();
        load_step(parts, out.object()).await.unwrap();
    }
    let task = serde_json::from_slice(&final_task.data).unwrap();
    let out = extract_step(parts, &task, &|_, _| {}).await.unwrap();
    (h, load_step(last, out.object()).await)
}

/// A clock whose monotonic time jumps by `step` on every read.
struct Jumping {
    now: AtomicU64,
    step: u64,
}

impl Clock for Jumping {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }
    fn monotonic(&self) -> Duration {
        Duration::from_secs(self.now.fetch_add(self.step, Ordering::SeqCst))
    }
}

#[tokio::test]
async fn a_claimant_that_was_paused_past_a_third_of_its_lease_does_not_swap() {
    let w = world(false).await;
    let parts = w.parts(true, false);
    let (h, outcomes) = load_all(&w, &parts, "r1").await;
    assert!(matches!(outcomes.last(), Some(LoadOutcome::Finished(_))));
    // Start over: a second run, loaded, whose publishing loader is paused between its
    // claim and its swap for longer than a third of the lease.
    let mut paused = parts.clone();
    paused.clock = Arc::new(Jumping {
        now: AtomicU64::new(0),
        step: CLAIM_LEASE.as_secs() / 2,
    });
    let before = w.wh.swaps().len();
    w.wh.drop_table(&target("t")).await.unwrap();
    // The planner of a missing target; the last chunk's loader is the paused one.
    let (h2, r) = load_with_last(&w, &parts, "r2", &paused).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == crate::error::ErrorKind::Busy),
        "{r:?}"
    );
    assert_eq!(
        w.wh.swaps().len(),
        before,
        "no swap after the budget ran out"
    );
    assert!(w.wh.columns(&target("t")).await.unwrap().is_none());
    // Once the claim expired, the next loader takes it over and publishes, once.
    w.sim.lock().unwrap().now_ms += CLAIM_LEASE.as_millis() as u64 + 1;
    let f = finish_run(&parts, &h2).await.unwrap();
    assert_eq!(f, Finished::Published { rows: 10 });
    assert_eq!(w.wh.swaps().len(), before + 1);
    let _ = h;
}

/// A warehouse whose process dies right after its first swap: every statement after
/// it fails (the swap happened; recording it never does). With `slip` set, the first
/// `insert_chosen` of a transaction is preceded by another loader's committed load
/// (as READ COMMITTED lets a statement see what committed after the transaction began).
/// With `no_build` set, every build statement fails (a loader that dies between its
/// load and its build).
struct DiesAfterSwap {
    inner: crate::sim::warehouse::SimWarehouse,
    dead: std::sync::atomic::AtomicBool,
    slip: Arc<std::sync::Mutex<Option<Slip>>>,
    no_build: bool,
    /// What it answers for [`Warehouse::json_number_digits`].
    json_digits: Option<u8>,
}

impl DiesAfterSwap {
    fn new(inner: &crate::sim::warehouse::SimWarehouse) -> Self {
        Self {
            inner: inner.clone(),
            dead: Default::default(),
            slip: Default::default(),
            no_build: false,
            json_digits: None,
        }
    }
}

/// A load another loader commits in the middle of a transaction: its ledger row (the
/// rows are counted by the copy) and what the copy needs.
type Slip = (
    crate::warehouse::LoadRecord,
    crate::warehouse::TableSchema,
    crate::warehouse::RunMeta,
);

/// A transaction of [`DiesAfterSwap`] that may have a load slipped in before its insert.
struct SlipTxn {
    inner: Box<dyn crate::warehouse::Transaction>,
    wh: crate::sim::warehouse::SimWarehouse,
    slip: Arc<std::sync::Mutex<Option<Slip>>>,
    no_build: bool,
}

#[async_trait::async_trait]
impl crate::warehouse::Transaction for SlipTxn {
    async fn lock(&mut self, t: &crate::ident::TableName) -> crate::Result<()> {
        self.inner.lock(t).await
    }
    async fn copy_into(
        &mut self,
        table: &crate::ident::TableName,
        schema: &crate::warehouse::TableSchema,
        run: &crate::warehouse::RunMeta,
        staged: crate::warehouse::Staged<'_>,
        load_id: &str,
    ) -> crate::Result<u64> {
        self.inner
            .copy_into(table, schema, run, staged, load_id)
            .await
    }
    async fn profile(
        &mut self,
        table: &crate::ident::TableName,
        schema: &crate::warehouse::TableSchema,
        load_id: &str,
    ) -> crate::Result<crate::profile::Profile> {
        self.inner.profile(table, schema, load_id).await
    }
    async fn columns(
        &mut self,
        t: &crate::ident::TableName,
    ) -> crate::Result<Option<Vec<crate::warehouse::ActualColumn>>> {
        self.inner.columns(t).await
    }
    async fn marker(&mut self, t: &crate::ident::TableName) -> crate::Result<Option<String>> {
        self.inner.marker(t).await
    }
    async fn record_load(&mut self, r: &crate::warehouse::LoadRecord) -> crate::Result<()> {
        self.inner.record_load(r).await
    }
    async fn chunk_loaded(
        &mut self,
        t: &crate::ident::TableName,
        run_id: &str,
        chunk: u32,
    ) -> crate::Result<Option<crate::warehouse::ChosenLoad>> {
        self.inner.chunk_loaded(t, run_id, chunk).await
    }
    async fn chosen_loads(
        &mut self,
        t: &crate::ident::TableName,
        run_id: &str,
    ) -> crate::Result<std::collections::BTreeMap<u32, crate::warehouse::ChosenLoad>> {
        self.inner.chosen_loads(t, run_id).await
    }
    async fn insert_load(
        &mut self,
        from: &crate::ident::TableName,
        to: &crate::ident::TableName,
        schema: &crate::warehouse::TableSchema,
        load_id: &str,
    ) -> crate::Result<u64> {
        if self.no_build {
            return Err(crate::Error::warehouse(
                "test",
                "the process is gone",
                crate::error::ErrorKind::Transient,
            ));
        }
        self.inner.insert_load(from, to, schema, load_id).await
    }
    async fn unbuilt_chunks(
        &mut self,
        t: &crate::ident::TableName,
        b: &crate::ident::TableName,
        run_id: &str,
        limit: usize,
    ) -> crate::Result<Vec<u32>> {
        self.inner.unbuilt_chunks(t, b, run_id, limit).await
    }
    async fn ledger_summary(
        &mut self,
        t: &crate::ident::TableName,
        run_id: &str,
    ) -> crate::Result<crate::warehouse::LedgerSummary> {
        self.inner.ledger_summary(t, run_id).await
    }
    async fn insert_chosen(
        &mut self,
        from: &crate::ident::TableName,
        to: &crate::ident::TableName,
        schema: &crate::warehouse::TableSchema,
        run_id: &str,
    ) -> crate::Result<u64> {
        let slip = self.slip.lock().unwrap().take();
        if let Some((r, ts, meta)) = slip {
            let object = crate::storage::ObjectKey::parse(&r.object).unwrap();
            let mut other = self.wh.begin().await?;
            let n = other
                .copy_into(
                    from,
                    &ts,
                    &meta,
                    crate::warehouse::Staged::new(&object, crate::format::Compression::None),
                    &r.load_id,
                )
                .await?;
            other
                .record_load(&crate::warehouse::LoadRecord { rows: n, ..r })
                .await?;
            other.commit().await?;
        }
        self.inner.insert_chosen(from, to, schema, run_id).await
    }
    async fn open_runs(
        &mut self,
        t: &crate::ident::TableName,
    ) -> crate::Result<Vec<crate::warehouse::RunRecord>> {
        self.inner.open_runs(t).await
    }
    async fn run(
        &mut self,
        t: &crate::ident::TableName,
        run_id: &str,
    ) -> crate::Result<Option<crate::warehouse::RunRecord>> {
        self.inner.run(t, run_id).await
    }
    async fn insert_run(&mut self, r: &crate::warehouse::RunRecord) -> crate::Result<()> {
        self.inner.insert_run(r).await
    }
    async fn update_run(
        &mut self,
        t: &crate::ident::TableName,
        run_id: &str,
        u: &crate::warehouse::RunUpdate,
    ) -> crate::Result<()> {
        self.inner.update_run(t, run_id, u).await
    }
    async fn commit(self: Box<Self>) -> crate::Result<()> {
        self.inner.commit().await
    }
    async fn rollback(self: Box<Self>) -> crate::Result<()> {
        self.inner.rollback().await
    }
}

impl DiesAfterSwap {
    fn check(&self) -> crate::Result<()> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(crate::Error::warehouse(
                "test",
                "the process is gone",
                crate::error::ErrorKind::Transient,
            ));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Warehouse for DiesAfterSwap {
    fn url(&self) -> String {
        self.inner.url()
    }
    async fn health(&self) -> crate::Result<()> {
        self.inner.health().await
    }
    fn render_type(&self, ty: &crate::types::ColumnType) -> String {
        self.inner.render_type(ty)
    }
    fn json_number_digits(&self) -> Option<u8> {
        self.json_digits
    }
    async fn columns(
        &self,
        t: &crate::ident::TableName,
    ) -> crate::Result<Option<Vec<crate::warehouse::ActualColumn>>> {
        self.check()?;
        self.inner.columns(t).await
    }
    async fn create_table(
        &self,
        t: &crate::ident::TableName,
        s: &crate::warehouse::TableSchema,
        stamped: bool,
    ) -> crate::Result<()> {
        self.check()?;
        self.inner.create_table(t, s, stamped).await
    }
    async fn prepare_lock(&self, t: &crate::ident::TableName) -> crate::Result<()> {
        self.check()?;
        self.inner.prepare_lock(t).await
    }
    async fn drop_table(&self, t: &crate::ident::TableName) -> crate::Result<()> {
        self.check()?;
        self.inner.drop_table(t).await
    }
    async fn swap_in(
        &self,
        from: &crate::ident::TableName,
        to: &crate::ident::TableName,
        marker: &str,
    ) -> crate::Result<()> {
        self.check()?;
        self.inner.swap_in(from, to, marker).await?;
        self.dead.store(true, Ordering::SeqCst);
        Ok(())
    }
    async fn marker(&self, t: &crate::ident::TableName) -> crate::Result<Option<String>> {
        self.check()?;
        self.inner.marker(t).await
    }
    async fn row_count(&self, t: &crate::ident::TableName) -> crate::Result<u64> {
        self.check()?;
        self.inner.row_count(t).await
    }
    async fn loaded_chunks(
        &self,
        t: &crate::ident::TableName,
        run_id: &str,
    ) -> crate::Result<Vec<u32>> {
        self.check()?;
        self.inner.loaded_chunks(t, run_id).await
    }
    async fn begin(&self) -> crate::Result<Box<dyn crate::warehouse::Transaction>> {
        self.check()?;
        Ok(Box::new(SlipTxn {
            inner: self.inner.begin().await?,
            wh: self.inner.clone(),
            slip: self.slip.clone(),
            no_build: self.no_build,
        }))
    }
    async fn run_overview(&self) -> crate::Result<Vec<crate::warehouse::RunStatus>> {
        self.check()?;
        self.inner.run_overview().await
    }
    async fn trim_ledger(&self, t: &crate::ident::TableName, run_id: &str) -> crate::Result<u64> {
        self.check()?;
        self.inner.trim_ledger(t, run_id).await
    }
}

#[tokio::test]
async fn a_swap_that_happened_before_its_claimant_died_is_recorded_not_repeated() {
    let w = world(false).await;
    let parts = w.parts(true, false);
    // The last chunk's loader swaps and dies before it records the publish.
    let mut dying = parts.clone();
    dying.warehouse = Some(Arc::new(DiesAfterSwap::new(&w.wh)));
    let (h, r) = load_with_last(&w, &parts, "r1", &dying).await;
    assert!(r.is_err());
    assert_eq!(w.wh.swaps().len(), 1);
    assert_eq!(
        w.wh.marker(&h.target).await.unwrap().as_deref(),
        Some(marker("r1").as_str())
    );
    assert_eq!(w.wh.runs()[0].state, RunState::Claimed);
    // The next event finds the marker: recorded at once, not swapped again, although
    // the claim is young.
    let f = finish_run(&parts, &h).await.unwrap();
    assert!(
        matches!(f, Finished::AlreadyPublished { rows: 10 }),
        "{f:?}"
    );
    assert_eq!(w.wh.swaps().len(), 1, "not swapped twice");
    assert_eq!(w.wh.runs()[0].state, RunState::Published);
    assert_eq!(w.wh.row_count(&h.target).await.unwrap(), 10);
}

#[tokio::test]
async fn a_requests_decision_to_skip_stands_for_its_later_deliveries() {
    let w = world(false).await;
    let parts = w.parts(true, false);
    load_all(&w, &parts, "first").await;
    // Delivery 1 of request "again": the target is up to date, nothing to do.
    let manifest = w.manifest();
    let o = opts(&parts, LoadType::Backfill, "again");
    let r = plan_step(&parts, &manifest, &o, false).await.unwrap();
    assert!(r.tables[0].header.is_none());
    // Meanwhile the target went away; a late delivery of the same request must not
    // record a run the first delivery's acknowledgement left no message to drive.
    w.wh.drop_table(&target("t")).await.unwrap();
    let r = plan_step(&parts, &manifest, &o, false).await.unwrap();
    assert!(r.tables[0].header.is_none(), "{:?}", r.tables[0].header);
    assert!(w.wh.runs().iter().all(|r| r.run_id != "again"));
}

#[tokio::test]
async fn a_chunk_whose_object_lost_rows_is_refused_before_anything_is_visible() {
    let w = world(false).await;
    let parts = w.parts(true, false);
    let queue = Arc::new(MemoryQueue::default());
    let mut p = parts.clone();
    p.queue = Some(queue.clone());
    plan_step(
        &p,
        &w.manifest(),
        &opts(&p, LoadType::Backfill, "r1"),
        false,
    )
    .await
    .unwrap();
    let mut last = None;
    for (i, m) in queue.take().into_iter().enumerate() {
        let task = serde_json::from_slice(&m.data).unwrap();
        let out = extract_step(&parts, &task, &|_, _| {}).await.unwrap();
        if i == 0 {
            // Between extraction and load, the object loses its last row (its
            // metadata still says how many PostgreSQL sent).
            w.store.truncate_last_line(&out.object().key);
        }
        last = Some(load_step(&parts, out.object()).await);
    }
    let runs = w.wh.runs();
    assert_eq!(runs[0].state, RunState::Abandoned, "{runs:?}");
    assert!(
        runs[0].reason.as_deref().unwrap().contains("postgres sent"),
        "{:?}",
        runs[0].reason
    );
    assert!(w.wh.columns(&target("t")).await.unwrap().is_none());
    assert!(w.wh.swaps().is_empty());
    let _ = last;
}

/// An empty table (or an empty incremental window) stages an object with no rows: it is
/// recorded as a 0-row load without a COPY, and the run publishes an empty target.
#[tokio::test]
async fn an_object_without_rows_is_recorded_without_a_copy() {
    let mut cfg = Config::from_seed(1);
    cfg.faults = Default::default();
    // The publish inside the request (the job path has its own tests).
    cfg.jobs = false;
    let w = World::new(
        cfg,
        vec![SimTable {
            name: "t".into(),
            existing: None,
            rows: Vec::new(),
        }],
        Vec::new(),
    );
    w.seed_targets().await;
    let parts = w.parts(true, false);
    let (_, outcomes) = load_all(&w, &parts, "empty").await;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert!(
        matches!(
            outcomes[0],
            LoadOutcome::Finished(Finished::Published { rows: 0 })
        ),
        "{outcomes:?}"
    );
    assert_eq!(w.wh.copies(), 0, "no COPY for an object without rows");
    assert_eq!(w.wh.row_count(&target("t")).await.unwrap(), 0);
    // ... while a table with rows is copied, one COPY per chunk.
    let w = world(false).await;
    let parts = w.parts(true, false);
    let (h, _) = load_all(&w, &parts, "full").await;
    assert_eq!(w.wh.copies(), h.chunks as u64);
}

/// Plan an SCD append of `t` (which exists) and extract its one chunk.
async fn append_run(
    w: &World,
    parts: &Parts,
    run_id: &str,
) -> (RunHeader, crate::storage::ObjectInfo) {
    let queue = Arc::new(MemoryQueue::default());
    let mut p = parts.clone();
    p.queue = Some(queue.clone());
    // One chunk: the tests using this drive that chunk by hand (appends of more rows
    // than a chunk holds are chunked; the simulation covers those).
    let mut o = opts(&p, LoadType::Scd, run_id);
    o.chunk_rows = Some(1_000);
    let report = plan_step(&p, &w.manifest(), &o, false).await.unwrap();
    let h = report.tables[0].header.clone().unwrap();
    assert_eq!(h.mode, crate::plan::Mode::Append);
    assert_eq!(h.chunks, 1);
    let task = serde_json::from_slice(&queue.take()[0].data).unwrap();
    let out = extract_step(parts, &task, &|_, _| {}).await.unwrap();
    (h, out.object().clone())
}

/// Load `object` as chunk 0 of `h` the way a loader does, stamped `load_id`.
async fn load_chunk_0(
    w: &World,
    h: &RunHeader,
    object: &crate::storage::ObjectInfo,
    load_id: &str,
) {
    let mut txn = w.wh.begin().await.unwrap();
    let n = txn
        .copy_into(
            &h.load_table,
            &h.schema,
            &h.meta,
            crate::warehouse::Staged::new(&object.key, h.compression),
            load_id,
        )
        .await
        .unwrap();
    txn.record_load(&crate::warehouse::LoadRecord {
        load_table: h.load_table.clone(),
        run_id: h.run_id.clone(),
        chunk: 0,
        object: object.key.to_string(),
        load_id: load_id.into(),
        rows: n,
    })
    .await
    .unwrap();
    txn.commit().await.unwrap();
}

/// Snowflake's READ COMMITTED: between a publish's ledger summary and its insert of the
/// chosen loads, another loader commits a second load of the chunk (extracted again
/// after the source lost a row) whose load id is smaller. The insert takes it, so the
/// totals differ through no fault: the publish answers busy instead of abandoning the
/// run, and the next attempt publishes the load the ledger now chooses, once.
#[tokio::test]
async fn a_load_committed_during_a_publish_makes_it_retry_not_abandon() {
    let w = world(true).await;
    let parts = w.parts(true, false);
    let (h, object) = append_run(&w, &parts, "scd1").await;
    load_chunk_0(&w, &h, &object, "bbbb").await;
    // The second extraction of chunk 0: one row fewer.
    let again =
        crate::storage::ObjectKey::parse(&format!("{}again.tsv", h.chunk_prefix(0))).unwrap();
    w.store
        .copy(&object.key, &again, object.metadata.clone())
        .await
        .unwrap();
    w.store.truncate_last_line(&again);
    let racing = DiesAfterSwap::new(&w.wh);
    *racing.slip.lock().unwrap() = Some((
        crate::warehouse::LoadRecord {
            load_table: h.load_table.clone(),
            run_id: h.run_id.clone(),
            chunk: 0,
            object: again.to_string(),
            load_id: "0000".into(),
            rows: 0,
        },
        h.schema.clone(),
        h.meta.clone(),
    ));
    let mut p = parts.clone();
    p.warehouse = Some(Arc::new(racing));
    let e = finish_run(&p, &h).await.unwrap_err();
    assert_eq!(e.kind(), crate::error::ErrorKind::Busy, "{e}");
    assert_eq!(w.wh.runs()[0].state, RunState::Planned);
    assert_eq!(
        w.wh.row_count(&h.target).await.unwrap(),
        10,
        "target untouched"
    );
    let f = finish_run(&parts, &h).await.unwrap();
    assert_eq!(f, Finished::Published { rows: 9 });
    assert_eq!(w.wh.row_count(&h.target).await.unwrap(), 19);
}

#[tokio::test]
async fn a_publish_refuses_a_load_table_whose_total_differs_from_the_ledger() {
    let w = world(true).await;
    let parts = w.parts(true, false);
    let (h, object) = append_run(&w, &parts, "scd1").await;
    // The chunk loads as a loader loads it ...
    load_chunk_0(&w, &h, &object, "aaaa").await;
    // ... and its COPY is applied a second time under the same stamp (a statement the
    // warehouse ran twice): the ledger says 10 rows, the load table holds 20.
    let mut txn = w.wh.begin().await.unwrap();
    txn.copy_into(
        &h.load_table,
        &h.schema,
        &h.meta,
        crate::warehouse::Staged::new(&object.key, h.compression),
        "aaaa",
    )
    .await
    .unwrap();
    txn.commit().await.unwrap();
    let f = finish_run(&parts, &h).await.unwrap();
    match f {
        Finished::Abandoned { reason } => {
            assert!(
                reason.contains("postgres sent 10 rows but the warehouse loaded 20"),
                "{reason}"
            )
        }
        f => panic!("{f:?}"),
    }
    assert_eq!(
        w.wh.row_count(&h.target).await.unwrap(),
        10,
        "target untouched"
    );
}

#[tokio::test]
async fn an_append_waits_while_another_run_holds_a_fresh_swap_claim_on_the_target() {
    let w = world(true).await;
    let parts = w.parts(true, false);
    // Another run of the target claimed its swap a moment ago.
    let mut txn = w.wh.begin().await.unwrap();
    txn.lock(&target("t")).await.unwrap();
    txn.insert_run(&crate::warehouse::RunRecord::planned(
        &target("t"),
        "swapper",
        &target("t").with_suffix("_PGP_LOAD_swapper").unwrap(),
        "swap",
        1,
        "f",
    ))
    .await
    .unwrap();
    txn.update_run(
        &target("t"),
        "swapper",
        &crate::warehouse::RunUpdate::Claim("c".into()),
    )
    .await
    .unwrap();
    txn.commit().await.unwrap();
    let (_, object) = append_run(&w, &parts, "scd1").await;
    let r = load_step(&parts, &object).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == crate::error::ErrorKind::Busy),
        "{r:?}"
    );
    assert_eq!(
        w.wh.row_count(&target("t")).await.unwrap(),
        10,
        "nothing appended"
    );
    // Once that claim expired unresolved (no marker: its swap never happened), the run
    // that held it is retired and the append goes on.
    w.sim.lock().unwrap().now_ms += CLAIM_LEASE.as_millis() as u64 + 1;
    let r = load_step(&parts, &object).await.unwrap();
    assert_eq!(r, LoadOutcome::Finished(Finished::Published { rows: 10 }));
    assert_eq!(w.wh.row_count(&target("t")).await.unwrap(), 20);
    let swapper =
        w.wh.runs()
            .into_iter()
            .find(|r| r.run_id == "swapper")
            .unwrap();
    assert_eq!(swapper.state, RunState::Abandoned);
}

#[tokio::test]
async fn a_swap_is_built_chunk_by_chunk_and_a_publish_builds_a_bounded_share() {
    use super::build::{build_table, BUILD_BUDGET};
    let w = world(false).await;
    let parts = w.parts(true, false);
    let mut no_build = parts.clone();
    no_build.warehouse = Some(Arc::new(DiesAfterSwap {
        no_build: true,
        ..DiesAfterSwap::new(&w.wh)
    }));
    let queue = Arc::new(MemoryQueue::default());
    let mut p = parts.clone();
    p.queue = Some(queue.clone());
    let mut o = opts(&p, LoadType::Backfill, "r1");
    o.chunk_rows = Some(1);
    let report = plan_step(&p, &w.manifest(), &o, false).await.unwrap();
    let h = report.tables[0].header.clone().unwrap();
    assert_eq!(h.chunks, 10);
    let b = build_table(&h.target, "r1").unwrap();
    // The first chunk's loader builds its chunk right after loading it; the others die
    // between their load and their build.
    for (i, m) in queue.take().into_iter().enumerate() {
        let task = serde_json::from_slice(&m.data).unwrap();
        let out = extract_step(&parts, &task, &|_, _| {}).await.unwrap();
        let r = load_step(if i == 0 { &parts } else { &no_build }, out.object()).await;
        assert_eq!(r.is_ok(), i == 0, "{r:?}");
        if i == 0 {
            assert_eq!(w.wh.loaded_chunks(&b, "r1").await.unwrap(), vec![0]);
        }
    }
    // Each publishing event builds at most BUILD_BUDGET chunks and answers busy while
    // some are missing; the redeliveries finish the build, then one swap.
    let mut built = vec![1];
    let f = loop {
        match finish_run(&parts, &h).await {
            Ok(f) => break f,
            Err(e) => {
                assert_eq!(e.kind(), crate::error::ErrorKind::Busy, "{e}");
                built.push(w.wh.loaded_chunks(&b, "r1").await.unwrap().len());
                assert!(built.len() < 10, "{built:?}");
            }
        }
    };
    assert_eq!(f, Finished::Published { rows: 10 });
    assert_eq!(built, vec![1, 1 + BUILD_BUDGET, 1 + 2 * BUILD_BUDGET]);
    assert_eq!(w.wh.swaps().len(), 1);
    assert_eq!(w.wh.row_count(&h.target).await.unwrap(), 10);
    assert!(w.wh.columns(&b).await.unwrap().is_none(), "dropped");
}

#[tokio::test]
async fn a_run_carries_its_warehouses_json_number_limit_to_the_extractors() {
    for digits in [None, Some(38)] {
        let w = world(false).await;
        let mut parts = w.parts(true, false);
        parts.warehouse = Some(Arc::new(DiesAfterSwap {
            json_digits: digits,
            ..DiesAfterSwap::new(&w.wh)
        }));
        let run_id = format!("r{}", digits.unwrap_or(0));
        let mut p = parts.clone();
        p.queue = Some(Arc::new(MemoryQueue::default()));
        let report = plan_step(
            &p,
            &w.manifest(),
            &opts(&p, LoadType::Backfill, &run_id),
            false,
        )
        .await
        .unwrap();
        let h = report.tables[0].header.clone().expect("loads");
        assert_eq!(h.json_number_digits, digits);
        let stored = super::record::read_header(parts.store.as_ref(), &run_id, "t")
            .await
            .unwrap();
        assert_eq!(stored.json_number_digits, digits, "in the run record");
    }
}

/// The append publish as a warehouse job: the request claims the publish, submits the
/// job and answers busy; while the claim is fresh a redelivery is busy and submits
/// nothing; once it expired (the job sat in the warehouse's queue) a redelivery takes
/// it over and submits again; the old job, when it runs at last, changes nothing, and
/// the run's rows land once.
#[tokio::test]
async fn an_append_job_queued_past_its_claim_changes_nothing_and_rows_land_once() {
    use super::publish::{run_append_job, JobEnd};
    let w = world_with(true, true).await;
    let parts = w.parts(true, false);
    let (h, object) = append_run(&w, &parts, "scd1").await;
    load_chunk_0(&w, &h, &object, "aaaa").await;

    let e = finish_run(&parts, &h).await.unwrap_err();
    assert_eq!(e.kind(), crate::error::ErrorKind::Busy, "{e}");
    assert_eq!(w.wh.runs()[0].state, RunState::Claimed);
    let first = w.wh.take_jobs();
    assert_eq!(first.len(), 1);
    assert_eq!(w.wh.row_count(&h.target).await.unwrap(), 10, "nothing yet");

    // A redelivery while the claim is fresh: busy, nothing submitted again.
    let e = finish_run(&parts, &h).await.unwrap_err();
    assert_eq!(e.kind(), crate::error::ErrorKind::Busy, "{e}");
    assert!(w.wh.take_jobs().is_empty());

    // The first job is still queued when the lease runs out: taken over.
    w.sim.lock().unwrap().now_ms += CLAIM_LEASE.as_millis() as u64 + 1;
    let e = finish_run(&parts, &h).await.unwrap_err();
    assert_eq!(e.kind(), crate::error::ErrorKind::Busy, "{e}");
    let second = w.wh.take_jobs();
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].claim, first[0].claim);

    assert_eq!(
        run_append_job(&w.wh, &first[0]).await.unwrap(),
        JobEnd::Superseded
    );
    assert_eq!(w.wh.row_count(&h.target).await.unwrap(), 10);
    assert_eq!(
        run_append_job(&w.wh, &second[0]).await.unwrap(),
        JobEnd::Published { rows: 10 }
    );
    assert_eq!(w.wh.row_count(&h.target).await.unwrap(), 20);
    // Run again (a warehouse never does; the guard holds anyway), and redelivered.
    assert_eq!(
        run_append_job(&w.wh, &second[0]).await.unwrap(),
        JobEnd::Superseded
    );
    assert_eq!(
        finish_run(&parts, &h).await.unwrap(),
        Finished::AlreadyPublished { rows: 10 }
    );
    assert_eq!(w.wh.row_count(&h.target).await.unwrap(), 20);
    assert!(w.wh.take_jobs().is_empty());
}

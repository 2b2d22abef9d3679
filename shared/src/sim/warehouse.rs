//! The simulation's warehouse: Snowflake's guarantees, and no more.
//!
//! - A transaction reads committed data plus its own writes (READ COMMITTED), and its
//!   writes become visible together at commit or never.
//! - Nothing is unique: two transactions may insert the same ledger or run row.
//! - [`Transaction::lock`] gives a target's lock to one transaction at a time. A
//!   waiter does not wait: it fails as busy, as a Snowflake statement does once its
//!   `LOCK_TIMEOUT` runs out (the shortest wait is the weakest promise).
//! - DDL (create, drop, swap, marker) is never in a transaction and takes effect at
//!   once; a transaction's rows follow their table by identity, so rows committed into
//!   a table that was dropped meanwhile are lost, and into a renamed one land there.
//! - A transaction dropped by a live process is rolled back; one whose process crashed
//!   is *detached*: it keeps its lock until Snowflake's idle limit (4 hours) aborts it.
//! - Every statement is a step boundary and may fail transiently before or after it
//!   took effect; a commit whose answer was lost has committed.
//!
//! Or, made [`SimWarehouse::with_serial`], DuckDB's: one transaction at a time (`begin`
//! waits while another is open, and fails as busy after a lock timeout), a crashed
//! process's transaction rolled back at once (its connection is gone), and a swap
//! that drops a load table's stamp. DDL still does not wait for transactions: a
//! weaker promise than DuckDB's.

use super::exec::{point, point_for, Sim, Strike};
use super::store::SimStore;
use crate::error::{Error, ErrorKind, Result};
use crate::ident::TableName;
use crate::profile::{Profile, Profiler};
use crate::types::ColumnType;
use crate::warehouse::{
    ActualColumn, AppendJob, AppendJobs, ChosenLoad, LedgerSummary, LoadRecord, RunMeta, RunRecord,
    RunState, RunStatus, RunUpdate, Staged, TableSchema, Transaction, Warehouse, LOAD_ID,
    TASK_INSTANCE, UPLOADED_AT,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::{Arc, Mutex};

/// How long a statement waits for a lock before it fails (pgp's `LOCK_TIMEOUT`).
const LOCK_TIMEOUT_MS: u64 = 60_000;
/// How often a waiting statement looks again (the simulation's granularity).
const LOCK_POLL_MS: u64 = 5_000;
/// How long a detached transaction keeps its locks (Snowflake aborts transactions of a
/// disconnected session after four hours idle).
pub const DETACHED_ABORT_MS: u64 = 4 * 3600 * 1000;

type Row = Vec<Option<String>>;

#[derive(Debug, Clone)]
struct Table {
    id: u64,
    /// (lower-case name, type)
    columns: Vec<(String, String)>,
    rows: Vec<Row>,
    /// Of a load table: the rows of each load id (an index, so that building a swap
    /// one load at a time does not scan the whole table per chunk).
    stamped: BTreeMap<String, Vec<usize>>,
    comment: Option<String>,
}

#[derive(Debug, Clone)]
struct RunRow {
    rec: RunRecord,
    claimed_at_ms: Option<u64>,
    created_ms: u64,
    changed_ms: u64,
}

#[derive(Debug, Clone)]
enum Op {
    Insert {
        table: u64,
        rows: Vec<Row>,
    },
    Ledger(LoadRecord),
    RunInsert(RunRow),
    RunUpdate {
        target: String,
        run_id: String,
        update: RunUpdate,
        at_ms: u64,
    },
}

#[derive(Debug)]
struct TxnInfo {
    /// When its process died (then it is detached).
    detached_at: Option<u64>,
}

/// The ledger of one run, indexed: the chosen attempt of each chunk and their rows.
#[derive(Debug, Clone, Default)]
struct RunLedger {
    chosen: BTreeMap<u32, LoadRecord>,
    rows: u64,
    /// Every committed load, and when the last one committed.
    loads: u64,
    last_ms: u64,
}

impl RunLedger {
    fn add(&mut self, r: &LoadRecord, at_ms: u64) {
        self.loads += 1;
        self.last_ms = self.last_ms.max(at_ms);
        match self.chosen.get(&r.chunk) {
            Some(c) if c.load_id <= r.load_id => {}
            Some(c) => {
                self.rows = self.rows - c.rows + r.rows;
                self.chosen.insert(r.chunk, r.clone());
            }
            None => {
                self.rows += r.rows;
                self.chosen.insert(r.chunk, r.clone());
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    tables: BTreeMap<String, Table>,
    /// The load ledger by (load table, run).
    ledger: BTreeMap<(String, String), RunLedger>,
    runs: Vec<RunRow>,
    locks: BTreeMap<String, u64>,
    txns: BTreeMap<u64, TxnInfo>,
    next: u64,
    /// (target, run id) of every committed publish, in commit order.
    publishes: Vec<(String, String)>,
    /// (target, marker) of every swap that took effect.
    swaps: Vec<(String, String)>,
    /// Statements per kind, for the scale measurement.
    pub statements: u64,
    /// COPY statements issued.
    copies: u64,
}

/// An in-memory warehouse.
#[derive(Clone)]
pub struct SimWarehouse {
    sim: Sim,
    store: SimStore,
    state: Arc<Mutex<State>>,
    /// One transaction at a time ([`Warehouse::serial`]).
    serial: bool,
    /// Runs append publishes as its own jobs ([`Warehouse::jobs`]): submitted jobs wait
    /// here until the world starts them ([`SimWarehouse::take_jobs`]).
    jobs: Option<Arc<Mutex<Vec<AppendJob>>>>,
}

fn name(t: &TableName) -> String {
    t.to_string().to_lowercase()
}

fn transient() -> Error {
    Error::warehouse("sim", "injected transient failure", ErrorKind::Transient)
}

fn permanent(m: impl std::fmt::Display) -> Error {
    Error::warehouse("sim", m, ErrorKind::Permanent)
}

#[async_trait]
impl AppendJobs for SimWarehouse {
    /// The submission is a statement: it may fail before the warehouse took the job, or
    /// after (the job then runs although the submitter saw an error).
    async fn submit(&self, job: AppendJob) -> Result<()> {
        let strike = self.stmt(&format!("submit append job {}", job.claim)).await;
        if strike == Some(Strike::Before) {
            return Err(transient());
        }
        if let Some(q) = &self.jobs {
            q.lock().unwrap().push(job);
        }
        match strike {
            Some(_) => Err(transient()),
            None => Ok(()),
        }
    }
}

/// Types are named as DuckDB names them (the simulation stands in for a warehouse
/// whose names are its own; any consistent naming serves the schema check).
fn render(ty: &ColumnType) -> String {
    crate::warehouse::DuckDb::render(ty)
}

/// Parse the staged format (PostgreSQL CSV, tab-delimited; see `crate::format`): an
/// unquoted empty field is NULL, a quoted one is text with `""` for a quote.
pub fn parse_staged(data: &[u8]) -> std::result::Result<Vec<Row>, String> {
    let text = std::str::from_utf8(data).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut rows = Vec::new();
    let mut row: Row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut in_quotes = false;
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !quoted => {
                quoted = true;
                in_quotes = true;
            }
            '\t' | '\n' => {
                let v = std::mem::take(&mut field);
                row.push(if v.is_empty() && !quoted {
                    None
                } else {
                    Some(v)
                });
                quoted = false;
                if c == '\n' {
                    rows.push(std::mem::take(&mut row));
                    any = false;
                }
            }
            c => field.push(c),
        }
    }
    if in_quotes {
        return Err("unterminated quoted field".into());
    }
    if any {
        row.push(if field.is_empty() && !quoted {
            None
        } else {
            Some(field)
        });
        rows.push(row);
    }
    Ok(rows)
}

fn check_value(ty: &ColumnType, v: &str) -> bool {
    match ty {
        ColumnType::SmallInt => v.parse::<i16>().is_ok(),
        ColumnType::Integer => v.parse::<i32>().is_ok(),
        ColumnType::BigInt => v.parse::<i64>().is_ok(),
        ColumnType::Boolean => matches!(v, "t" | "f" | "true" | "false"),
        _ => true,
    }
}

impl SimWarehouse {
    pub fn new(sim: Sim, store: SimStore) -> Self {
        SimWarehouse {
            sim,
            store,
            state: Arc::default(),
            serial: false,
            jobs: None,
        }
    }

    /// The same warehouse running append publishes as its own jobs, as Snowflake runs
    /// asynchronous queries: a job outlives the request that submitted it, may start
    /// late, and fails (rolled back) like any statement.
    pub fn with_jobs(mut self, jobs: bool) -> Self {
        self.jobs = jobs.then(Arc::default);
        self
    }

    /// Jobs submitted since the last call, for the world to run.
    pub fn take_jobs(&self) -> Vec<AppendJob> {
        self.jobs
            .as_ref()
            .map(|j| std::mem::take(&mut *j.lock().unwrap()))
            .unwrap_or_default()
    }

    /// The same warehouse with DuckDB's transactions: one at a time.
    pub fn with_serial(mut self, serial: bool) -> Self {
        self.serial = serial;
        self
    }

    /// Statements run so far.
    pub fn statements(&self) -> u64 {
        self.state.lock().unwrap().statements
    }

    /// COPY statements issued so far.
    pub fn copies(&self) -> u64 {
        self.state.lock().unwrap().copies
    }

    /// A step boundary and the fault dice for one statement.
    async fn stmt(&self, what: &str) -> Option<Strike> {
        point_for(
            &self.sim,
            if what.starts_with("swap") { "swap" } else { "" },
        )
        .await;
        self.state.lock().unwrap().statements += 1;
        let mut s = self.sim.lock().unwrap();
        s.note(format!("wh {what}"));
        s.strike()
    }

    fn now(&self) -> u64 {
        self.sim.lock().unwrap().now_ms
    }

    /// The rows of a table, with every column, for the invariant checks.
    pub fn dump(&self, t: &TableName) -> Option<(Vec<String>, Vec<Row>)> {
        let st = self.state.lock().unwrap();
        st.tables.get(&name(t)).map(|t| {
            (
                t.columns.iter().map(|(n, _)| n.clone()).collect(),
                t.rows.clone(),
            )
        })
    }

    /// Every run row, for the invariant checks.
    pub fn runs(&self) -> Vec<RunRecord> {
        let now = self.now();
        let st = self.state.lock().unwrap();
        st.runs.iter().map(|r| with_age(r, now)).collect()
    }

    /// (target, run id) of every committed publish, in commit order.
    pub fn publishes(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().publishes.clone()
    }

    /// (target, marker) of every swap that took effect, in order.
    pub fn swaps(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().swaps.clone()
    }

    /// Table names, for the invariant checks.
    pub fn table_names(&self) -> Vec<String> {
        self.state.lock().unwrap().tables.keys().cloned().collect()
    }

    /// Open (non-detached) transactions.
    pub fn open_transactions(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .txns
            .values()
            .filter(|t| t.detached_at.is_none())
            .count()
    }

    /// Insert rows directly (a target that exists before the scenario starts).
    pub fn seed_rows(&self, t: &TableName, rows: Vec<Row>) {
        let mut st = self.state.lock().unwrap();
        st.tables
            .get_mut(&name(t))
            .expect("seeded table exists")
            .rows
            .extend(rows);
    }
}

fn with_age(r: &RunRow, now: u64) -> RunRecord {
    let mut rec = r.rec.clone();
    rec.claim_age_seconds = r
        .claimed_at_ms
        .map(|c| (now.saturating_sub(c) / 1000) as i64);
    rec
}

fn apply_update(r: &mut RunRow, u: &RunUpdate, at_ms: u64) {
    match u {
        RunUpdate::Claim(c) => {
            r.rec.state = RunState::Claimed;
            r.rec.claim = Some(c.clone());
            r.claimed_at_ms = Some(at_ms);
        }
        RunUpdate::Published { rows } => {
            r.rec.state = RunState::Published;
            r.rec.rows = Some(*rows);
        }
        RunUpdate::Abandoned { reason } => {
            r.rec.state = RunState::Abandoned;
            r.rec.reason = Some(reason.clone());
        }
    }
}

#[async_trait]
impl Warehouse for SimWarehouse {
    fn url(&self) -> String {
        "sim://warehouse".into()
    }

    fn serial(&self) -> bool {
        self.serial
    }

    fn jobs(&self) -> Option<&dyn AppendJobs> {
        self.jobs.is_some().then_some(self as &dyn AppendJobs)
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }

    fn render_type(&self, ty: &ColumnType) -> String {
        render(ty)
    }

    async fn columns(&self, table: &TableName) -> Result<Option<Vec<ActualColumn>>> {
        if self.stmt("columns").await.is_some() {
            return Err(transient());
        }
        Ok(columns_of(&self.state.lock().unwrap(), table))
    }

    async fn create_table(
        &self,
        table: &TableName,
        schema: &TableSchema,
        stamped: bool,
    ) -> Result<()> {
        let strike = self.stmt(&format!("create {table}")).await;
        if strike == Some(Strike::Before) {
            return Err(transient());
        }
        {
            let mut st = self.state.lock().unwrap();
            if !st.tables.contains_key(&name(table)) {
                st.next += 1;
                let mut columns: Vec<(String, String)> = schema
                    .columns
                    .iter()
                    .map(|c| (c.name.as_str().to_lowercase(), render(&c.ty)))
                    .collect();
                columns.push((UPLOADED_AT.into(), "TIMESTAMP WITH TIME ZONE".into()));
                if schema.task_instance {
                    columns.push((TASK_INSTANCE.into(), "VARCHAR".into()));
                }
                if stamped {
                    columns.push((LOAD_ID.into(), "VARCHAR".into()));
                }
                let id = st.next;
                st.tables.insert(
                    name(table),
                    Table {
                        id,
                        columns,
                        rows: Vec::new(),
                        stamped: BTreeMap::new(),
                        comment: None,
                    },
                );
            }
        }
        if strike == Some(Strike::After) {
            return Err(transient());
        }
        Ok(())
    }

    async fn prepare_lock(&self, _target: &TableName) -> Result<()> {
        match self.stmt("prepare lock").await {
            Some(Strike::Before) => Err(transient()),
            Some(Strike::After) => Err(transient()),
            None => Ok(()),
        }
    }

    async fn drop_table(&self, table: &TableName) -> Result<()> {
        let strike = self.stmt(&format!("drop {table}")).await;
        if strike == Some(Strike::Before) {
            return Err(transient());
        }
        self.state.lock().unwrap().tables.remove(&name(table));
        if strike == Some(Strike::After) {
            return Err(transient());
        }
        Ok(())
    }

    async fn swap_in(&self, from: &TableName, to: &TableName, marker: &str) -> Result<()> {
        let strike = self.stmt(&format!("swap {from} -> {to}")).await;
        if strike == Some(Strike::Before) {
            return Err(transient());
        }
        {
            let mut st = self.state.lock().unwrap();
            let mut new = st
                .tables
                .remove(&name(from))
                .ok_or_else(|| permanent(format!("swap: {from} does not exist")))?;
            new.comment = Some(marker.to_string());
            // A load table swapped in itself (serial): its stamp column goes.
            if let Some(i) = new.columns.iter().position(|(n, _)| n == LOAD_ID) {
                new.columns.remove(i);
                for r in &mut new.rows {
                    r.remove(i);
                }
                new.stamped.clear();
            }
            if let Some(old) = st.tables.insert(name(to), new) {
                st.tables.insert(name(from), old);
            }
            st.swaps.push((to.to_string(), marker.to_string()));
        }
        if strike == Some(Strike::After) {
            return Err(transient());
        }
        Ok(())
    }

    async fn marker(&self, table: &TableName) -> Result<Option<String>> {
        if self.stmt("marker").await.is_some() {
            return Err(transient());
        }
        let st = self.state.lock().unwrap();
        Ok(st.tables.get(&name(table)).and_then(|t| t.comment.clone()))
    }

    async fn row_count(&self, table: &TableName) -> Result<u64> {
        if self.stmt("count").await.is_some() {
            return Err(transient());
        }
        let st = self.state.lock().unwrap();
        st.tables
            .get(&name(table))
            .map(|t| t.rows.len() as u64)
            .ok_or_else(|| permanent(format!("{table} does not exist")))
    }

    async fn loaded_chunks(&self, load_table: &TableName, run_id: &str) -> Result<Vec<u32>> {
        if self.stmt("loaded chunks").await.is_some() {
            return Err(transient());
        }
        let st = self.state.lock().unwrap();
        Ok(st
            .ledger
            .get(&(load_table.to_string(), run_id.to_string()))
            .map(|l| l.chosen.keys().copied().collect())
            .unwrap_or_default())
    }

    async fn run_overview(&self) -> Result<Vec<RunStatus>> {
        if self.stmt("run overview").await.is_some() {
            return Err(transient());
        }
        let now = self.now();
        let st = self.state.lock().unwrap();
        let secs = |ms: u64| (now.saturating_sub(ms) / 1000) as i64;
        let mut out: Vec<(u64, RunStatus)> = st
            .runs
            .iter()
            .map(|r| {
                let l = st
                    .ledger
                    .get(&(r.rec.load_table.to_string(), r.rec.run_id.clone()))
                    .cloned()
                    .unwrap_or_default();
                let status = RunStatus {
                    record: with_age(r, now),
                    age_seconds: secs(r.created_ms),
                    idle_seconds: secs(r.changed_ms.max(l.last_ms)),
                    loaded_chunks: l.chosen.len() as u64,
                    loaded_rows: l.rows,
                    loads: l.loads,
                };
                (r.created_ms, status)
            })
            .collect();
        out.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then(a.1.record.run_id.cmp(&b.1.record.run_id))
        });
        Ok(out.into_iter().map(|(_, s)| s).collect())
    }

    async fn trim_ledger(&self, load_table: &TableName, run_id: &str) -> Result<u64> {
        if self.stmt("trim ledger").await.is_some() {
            return Err(transient());
        }
        let mut st = self.state.lock().unwrap();
        Ok(st
            .ledger
            .remove(&(load_table.to_string(), run_id.to_string()))
            .map_or(0, |l| l.loads))
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        if self.stmt("begin").await == Some(Strike::Before) {
            return Err(transient());
        }
        let process = self.sim.lock().unwrap().current.unwrap_or(0);
        // Serial: wait for the connection. DuckDB waits as long as it takes; here the
        // wait fails as busy after LOCK_TIMEOUT, the weaker promise (and a bounded one:
        // redeliveries do not pile up waiters behind a stalled holder).
        let started = self.now();
        while self.serial && !self.state.lock().unwrap().txns.is_empty() {
            if self.now() - started >= LOCK_TIMEOUT_MS {
                return Err(Error::warehouse(
                    "sim",
                    "another transaction holds the connection",
                    ErrorKind::Busy,
                ));
            }
            super::exec::sleep(&self.sim, LOCK_POLL_MS).await;
        }
        let mut st = self.state.lock().unwrap();
        st.next += 1;
        let id = st.next;
        st.txns.insert(id, TxnInfo { detached_at: None });
        Ok(Box::new(SimTxn {
            wh: self.clone(),
            id,
            process,
            ops: Vec::new(),
            ended: false,
        }))
    }
}

fn columns_of(st: &State, table: &TableName) -> Option<Vec<ActualColumn>> {
    st.tables.get(&name(table)).map(|t| {
        t.columns
            .iter()
            .map(|(n, ty)| ActualColumn {
                name: n.clone(),
                data_type: ty.clone(),
            })
            .collect()
    })
}

/// A transaction: its writes wait in `ops` until commit.
struct SimTxn {
    wh: SimWarehouse,
    id: u64,
    process: u64,
    ops: Vec<Op>,
    ended: bool,
}

impl SimTxn {
    async fn stmt(&self, what: &str) -> Option<Strike> {
        self.wh.stmt(what).await
    }

    /// The run rows as this transaction sees them.
    fn runs(&self, st: &State) -> Vec<RunRow> {
        let mut runs = st.runs.clone();
        for op in &self.ops {
            match op {
                Op::RunInsert(r) => runs.push(r.clone()),
                Op::RunUpdate {
                    target,
                    run_id,
                    update,
                    at_ms,
                } => {
                    for r in runs.iter_mut() {
                        if r.rec.target.to_string() == *target && r.rec.run_id == *run_id {
                            apply_update(r, update, *at_ms);
                        }
                    }
                }
                _ => {}
            }
        }
        runs
    }

    /// This transaction's own ledger rows of a run, the smallest load id per chunk.
    fn own_ledger(&self, load_table: &TableName, run_id: &str) -> BTreeMap<u32, &LoadRecord> {
        let mut mine: BTreeMap<u32, &LoadRecord> = BTreeMap::new();
        for op in &self.ops {
            if let Op::Ledger(r) = op {
                if r.load_table == *load_table && r.run_id == run_id {
                    match mine.get(&r.chunk) {
                        Some(c) if c.load_id <= r.load_id => {}
                        _ => {
                            mine.insert(r.chunk, r);
                        }
                    }
                }
            }
        }
        mine
    }

    /// A run's ledger as this transaction sees it (cloned: for the publish only).
    fn ledger(&self, st: &State, load_table: &TableName, run_id: &str) -> RunLedger {
        let key = (load_table.to_string(), run_id.to_string());
        let mut l = st.ledger.get(&key).cloned().unwrap_or_default();
        for r in self.own_ledger(load_table, run_id).into_values() {
            l.add(r, 0);
        }
        l
    }

    /// (chunks, rows) of a run's chosen loads as this transaction sees them, without
    /// copying the ledger (it is read on every loader event).
    fn summary(&self, st: &State, load_table: &TableName, run_id: &str) -> (u64, u64) {
        let key = (load_table.to_string(), run_id.to_string());
        let committed = st.ledger.get(&key);
        let (mut chunks, mut rows) = committed
            .map(|l| (l.chosen.len() as u64, l.rows))
            .unwrap_or((0, 0));
        for (chunk, r) in self.own_ledger(load_table, run_id) {
            match committed.and_then(|l| l.chosen.get(&chunk)) {
                Some(c) if c.load_id <= r.load_id => {}
                Some(c) => rows = rows - c.rows + r.rows,
                None => {
                    chunks += 1;
                    rows += r.rows;
                }
            }
        }
        (chunks, rows)
    }

    /// Rows of the chosen load of one chunk, if any.
    fn chunk_rows(
        &self,
        st: &State,
        load_table: &TableName,
        run_id: &str,
        chunk: u32,
    ) -> Option<ChosenLoad> {
        let key = (load_table.to_string(), run_id.to_string());
        let committed = st.ledger.get(&key).and_then(|l| l.chosen.get(&chunk));
        let own = self.own_ledger(load_table, run_id).get(&chunk).copied();
        let chosen = match (committed, own) {
            (Some(c), Some(o)) if o.load_id < c.load_id => o,
            (Some(c), _) => c,
            (None, Some(o)) => o,
            (None, None) => return None,
        };
        Some(ChosenLoad {
            load_id: chosen.load_id.clone(),
            rows: chosen.rows,
        })
    }

    /// The chosen load of each chunk of a run (the smallest load id).
    fn chosen(
        &self,
        st: &State,
        load_table: &TableName,
        run_id: &str,
    ) -> BTreeMap<u32, LoadRecord> {
        self.ledger(st, load_table, run_id).chosen
    }

    /// Insert into `to` the rows of `from` stamped with one of `ids`, without the stamp.
    fn insert_stamped(
        &mut self,
        from: &TableName,
        to: &TableName,
        schema: &TableSchema,
        ids: &BTreeSet<String>,
    ) -> Result<u64> {
        let st = self.wh.state.lock().unwrap();
        let src = st
            .tables
            .get(&name(from))
            .ok_or_else(|| permanent(format!("{from} does not exist")))?;
        let dst = st
            .tables
            .get(&name(to))
            .ok_or_else(|| permanent(format!("{to} does not exist")))?;
        let mut wanted: Vec<String> = schema
            .columns
            .iter()
            .map(|c| c.name.as_str().to_lowercase())
            .collect();
        wanted.push(UPLOADED_AT.into());
        if schema.task_instance {
            wanted.push(TASK_INSTANCE.into());
        }
        let pos = |t: &Table, n: &str| t.columns.iter().position(|(c, _)| c == n);
        let src_idx: Vec<usize> = wanted
            .iter()
            .map(|n| pos(src, n).ok_or_else(|| permanent(format!("{from} has no column {n}"))))
            .collect::<Result<_>>()?;
        if dst.columns.len() != wanted.len()
            || wanted
                .iter()
                .enumerate()
                .any(|(i, n)| dst.columns[i].0 != *n)
        {
            return Err(permanent(format!("{to} does not have the run's columns")));
        }
        let stamp = pos(src, LOAD_ID).ok_or_else(|| permanent(format!("{from} is not stamped")))?;
        let mut own: Vec<&Row> = Vec::new();
        for op in &self.ops {
            if let Op::Insert { table, rows } = op {
                if *table == src.id {
                    own.extend(rows.iter());
                }
            }
        }
        let mut committed: Vec<usize> = ids
            .iter()
            .flat_map(|id| src.stamped.get(id).into_iter().flatten().copied())
            .collect();
        committed.sort_unstable();
        let rows: Vec<Row> = committed
            .into_iter()
            .map(|i| &src.rows[i])
            .chain(own)
            .filter(|r| r[stamp].as_ref().is_some_and(|id| ids.contains(id)))
            .map(|r| src_idx.iter().map(|&i| r[i].clone()).collect())
            .collect();
        let n = rows.len() as u64;
        let id = dst.id;
        drop(st);
        self.ops.push(Op::Insert { table: id, rows });
        Ok(n)
    }

    fn end(&mut self) {
        self.ended = true;
        let mut st = self.wh.state.lock().unwrap();
        st.txns.remove(&self.id);
        st.locks.retain(|_, holder| *holder != self.id);
    }
}

impl Drop for SimTxn {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (dead, now) = {
            let s = self.wh.sim.lock().unwrap();
            (s.is_dead(self.process), s.now_ms)
        };
        if dead && !self.wh.serial {
            // The process is gone: the session's transaction stays open, with its
            // locks, until the warehouse gives up on it. (A serial warehouse's
            // connection went with the process: rolled back.)
            if let Some(t) = self.wh.state.lock().unwrap().txns.get_mut(&self.id) {
                t.detached_at = Some(now);
            }
        } else {
            self.end();
        }
    }
}

#[async_trait]
impl Transaction for SimTxn {
    async fn lock(&mut self, target: &TableName) -> Result<()> {
        if self.stmt("lock").await == Some(Strike::Before) {
            return Err(transient());
        }
        // Snowflake queues the statement behind the holder for up to LOCK_TIMEOUT
        // (pgp sets 60 s), then fails it.
        let started = self.wh.now();
        loop {
            let now = self.wh.now();
            {
                let mut st = self.wh.state.lock().unwrap();
                let key = name(target);
                let free = match st.locks.get(&key) {
                    None => true,
                    Some(&holder) if holder == self.id => return Ok(()),
                    Some(&holder) => {
                        let expired = st
                            .txns
                            .get(&holder)
                            .map(|t| t.detached_at.is_some_and(|d| now - d >= DETACHED_ABORT_MS))
                            .unwrap_or(true);
                        if expired {
                            st.txns.remove(&holder);
                            st.locks.retain(|_, h| *h != holder);
                        }
                        expired
                    }
                };
                if free {
                    st.locks.insert(key, self.id);
                    return Ok(());
                }
            }
            if now - started >= LOCK_TIMEOUT_MS {
                return Err(Error::warehouse(
                    "sim",
                    format!("{target} is locked by another transaction (lock timeout)"),
                    ErrorKind::Busy,
                ));
            }
            super::exec::sleep(&self.wh.sim, LOCK_POLL_MS).await;
        }
    }

    async fn copy_into(
        &mut self,
        table: &TableName,
        schema: &TableSchema,
        run: &RunMeta,
        staged: Staged<'_>,
        load_id: &str,
    ) -> Result<u64> {
        let Staged {
            key: object,
            compression,
            ..
        } = staged;
        self.wh.state.lock().unwrap().copies += 1;
        if self
            .stmt(&format!("copy {object} -> {table}"))
            .await
            .is_some()
        {
            return Err(transient());
        }
        let data = self
            .wh
            .store
            .bytes(object)
            .ok_or_else(|| permanent(format!("COPY found no file {object}")))?;
        let mut out = Vec::new();
        compression
            .decoder(&data[..])
            .and_then(|mut r| r.read_to_end(&mut out))
            .map_err(|e| permanent(format!("{object}: {e}")))?;
        let data = out;
        let parsed = parse_staged(&data).map_err(|e| permanent(format!("{object}: {e}")))?;
        let st = self.wh.state.lock().unwrap();
        let t = st
            .tables
            .get(&name(table))
            .ok_or_else(|| permanent(format!("{table} does not exist")))?;
        let mut rows = Vec::with_capacity(parsed.len());
        for (i, mut r) in parsed.into_iter().enumerate() {
            if r.len() != schema.columns.len() {
                return Err(permanent(format!(
                    "{object}, record {}: {} fields for {} columns",
                    i + 1,
                    r.len(),
                    schema.columns.len()
                )));
            }
            for (c, v) in schema.columns.iter().zip(&r) {
                if let Some(v) = v {
                    if !check_value(&c.ty, v) {
                        return Err(permanent(format!(
                            "{object}, record {}: {v:?} is not a {}",
                            i + 1,
                            render(&c.ty)
                        )));
                    }
                }
            }
            r.push(Some(run.uploaded_at.to_rfc3339()));
            if schema.task_instance {
                r.push(run.task_instance.clone());
            }
            r.push(Some(load_id.to_string()));
            if r.len() != t.columns.len() {
                return Err(permanent(format!(
                    "{table} has other columns than the load"
                )));
            }
            rows.push(r);
        }
        let n = rows.len() as u64;
        let id = t.id;
        drop(st);
        self.ops.push(Op::Insert { table: id, rows });
        Ok(n)
    }

    async fn profile(
        &mut self,
        table: &TableName,
        schema: &TableSchema,
        load_id: &str,
    ) -> Result<Profile> {
        if self
            .stmt(&format!("profile {load_id} {table}"))
            .await
            .is_some()
        {
            return Err(transient());
        }
        let st = self.wh.state.lock().unwrap();
        let t = st
            .tables
            .get(&name(table))
            .ok_or_else(|| permanent(format!("{table} does not exist")))?;
        let pos = |n: &str| t.columns.iter().position(|(c, _)| c == n);
        let idx: Vec<usize> = schema
            .columns
            .iter()
            .map(|c| {
                let n = c.name.as_str().to_lowercase();
                pos(&n).ok_or_else(|| permanent(format!("{table} has no column {n}")))
            })
            .collect::<Result<_>>()?;
        let stamp = pos(LOAD_ID).ok_or_else(|| permanent(format!("{table} is not stamped")))?;
        // The committed rows of the load and this transaction's own, as a statement in
        // it sees them.
        let committed = t
            .stamped
            .get(load_id)
            .into_iter()
            .flatten()
            .map(|&i| &t.rows[i]);
        let own = self
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Insert { table, rows } if *table == t.id => Some(rows.iter()),
                _ => None,
            })
            .flatten();
        let mut p = Profiler::new(&schema.columns, false);
        for r in committed
            .chain(own)
            .filter(|r| r[stamp].as_deref() == Some(load_id))
        {
            for (i, &k) in idx.iter().enumerate() {
                p.add_value(i, r[k].as_deref());
            }
        }
        Ok(p.finish().unwrap_or_default())
    }

    async fn columns(&mut self, table: &TableName) -> Result<Option<Vec<ActualColumn>>> {
        if self.stmt("columns").await.is_some() {
            return Err(transient());
        }
        Ok(columns_of(&self.wh.state.lock().unwrap(), table))
    }

    async fn marker(&mut self, table: &TableName) -> Result<Option<String>> {
        if self.stmt("marker").await.is_some() {
            return Err(transient());
        }
        let st = self.wh.state.lock().unwrap();
        Ok(st.tables.get(&name(table)).and_then(|t| t.comment.clone()))
    }

    async fn record_load(&mut self, record: &LoadRecord) -> Result<()> {
        if self.stmt("record load").await.is_some() {
            return Err(transient());
        }
        self.ops.push(Op::Ledger(record.clone()));
        Ok(())
    }

    async fn chunk_loaded(
        &mut self,
        load_table: &TableName,
        run_id: &str,
        chunk: u32,
    ) -> Result<Option<ChosenLoad>> {
        if self.stmt("chunk loaded?").await.is_some() {
            return Err(transient());
        }
        let st = self.wh.state.lock().unwrap();
        Ok(self.chunk_rows(&st, load_table, run_id, chunk))
    }

    async fn chosen_loads(
        &mut self,
        load_table: &TableName,
        run_id: &str,
    ) -> Result<BTreeMap<u32, ChosenLoad>> {
        if self.stmt("chosen loads").await.is_some() {
            return Err(transient());
        }
        let st = self.wh.state.lock().unwrap();
        Ok(self
            .chosen(&st, load_table, run_id)
            .into_iter()
            .map(|(chunk, r)| {
                (
                    chunk,
                    ChosenLoad {
                        load_id: r.load_id,
                        rows: r.rows,
                    },
                )
            })
            .collect())
    }

    async fn unbuilt_chunks(
        &mut self,
        load_table: &TableName,
        built: &TableName,
        run_id: &str,
        limit: usize,
    ) -> Result<Vec<u32>> {
        if self.stmt("unbuilt chunks").await.is_some() {
            return Err(transient());
        }
        // Without copying the ledgers (read on every loader event of a swap), and
        // skipping a built prefix at once: the 10,000-chunk scale run stays linear.
        let st = self.wh.state.lock().unwrap();
        let key = |t: &TableName| (t.to_string(), run_id.to_string());
        let loaded = st.ledger.get(&key(load_table)).map(|l| &l.chosen);
        let done = st.ledger.get(&key(built)).map(|l| &l.chosen);
        let (own_loaded, own_done) = (
            self.own_ledger(load_table, run_id),
            self.own_ledger(built, run_id),
        );
        let is_built =
            |c: u32| done.is_some_and(|m| m.contains_key(&c)) || own_done.contains_key(&c);
        let start = match done {
            Some(m)
                if m.keys().next() == Some(&0)
                    && m.keys().next_back() == Some(&(m.len() as u32 - 1)) =>
            {
                m.len() as u32
            }
            _ => 0,
        };
        let mut out = BTreeSet::new();
        for c in loaded
            .into_iter()
            .flat_map(|m| m.range(start..).map(|(k, _)| *k))
        {
            if out.len() == limit {
                break;
            }
            if !is_built(c) {
                out.insert(c);
            }
        }
        out.extend(own_loaded.into_keys().filter(|&c| !is_built(c)));
        Ok(out.into_iter().take(limit).collect())
    }

    async fn ledger_summary(
        &mut self,
        load_table: &TableName,
        run_id: &str,
    ) -> Result<LedgerSummary> {
        if self.stmt("ledger summary").await.is_some() {
            return Err(transient());
        }
        let st = self.wh.state.lock().unwrap();
        let (chunks, rows) = self.summary(&st, load_table, run_id);
        Ok(LedgerSummary { chunks, rows })
    }

    async fn insert_chosen(
        &mut self,
        from: &TableName,
        to: &TableName,
        schema: &TableSchema,
        run_id: &str,
    ) -> Result<u64> {
        if self
            .stmt(&format!("insert chosen {from} -> {to}"))
            .await
            .is_some()
        {
            return Err(transient());
        }
        let ids: BTreeSet<String> = {
            let st = self.wh.state.lock().unwrap();
            self.chosen(&st, from, run_id)
                .into_values()
                .map(|l| l.load_id)
                .collect()
        };
        self.insert_stamped(from, to, schema, &ids)
    }

    async fn insert_load(
        &mut self,
        from: &TableName,
        to: &TableName,
        schema: &TableSchema,
        load_id: &str,
    ) -> Result<u64> {
        if self
            .stmt(&format!("insert load {load_id} {from} -> {to}"))
            .await
            .is_some()
        {
            return Err(transient());
        }
        self.insert_stamped(from, to, schema, &BTreeSet::from([load_id.to_string()]))
    }

    async fn open_runs(&mut self, target: &TableName) -> Result<Vec<RunRecord>> {
        if self.stmt("open runs").await.is_some() {
            return Err(transient());
        }
        let now = self.wh.now();
        let st = self.wh.state.lock().unwrap();
        Ok(self
            .runs(&st)
            .iter()
            .filter(|r| r.rec.target == *target && !r.rec.state.is_final())
            .map(|r| with_age(r, now))
            .collect())
    }

    async fn run(&mut self, target: &TableName, run_id: &str) -> Result<Option<RunRecord>> {
        if self.stmt("run").await.is_some() {
            return Err(transient());
        }
        let now = self.wh.now();
        let st = self.wh.state.lock().unwrap();
        Ok(self
            .runs(&st)
            .iter()
            .find(|r| r.rec.target == *target && r.rec.run_id == run_id)
            .map(|r| with_age(r, now)))
    }

    async fn insert_run(&mut self, run: &RunRecord) -> Result<()> {
        if self.stmt("insert run").await.is_some() {
            return Err(transient());
        }
        self.ops.push(Op::RunInsert(RunRow {
            rec: run.clone(),
            claimed_at_ms: None,
            created_ms: 0,
            changed_ms: 0,
        }));
        Ok(())
    }

    async fn update_run(
        &mut self,
        target: &TableName,
        run_id: &str,
        update: &RunUpdate,
    ) -> Result<()> {
        if self.stmt("update run").await.is_some() {
            return Err(transient());
        }
        let at_ms = self.wh.now();
        self.ops.push(Op::RunUpdate {
            target: target.to_string(),
            run_id: run_id.to_string(),
            update: update.clone(),
            at_ms,
        });
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let strike = self.stmt("commit").await;
        if strike == Some(Strike::Before) {
            self.end();
            return Err(transient());
        }
        {
            let now = self.wh.now();
            let mut st = self.wh.state.lock().unwrap();
            for op in std::mem::take(&mut self.ops) {
                match op {
                    Op::Insert { table, rows } => {
                        if let Some(t) = st.tables.values_mut().find(|t| t.id == table) {
                            if let Some(p) = t.columns.iter().position(|(c, _)| c == LOAD_ID) {
                                for (i, r) in rows.iter().enumerate() {
                                    if let Some(id) = &r[p] {
                                        t.stamped
                                            .entry(id.clone())
                                            .or_default()
                                            .push(t.rows.len() + i);
                                    }
                                }
                            }
                            t.rows.extend(rows);
                        }
                    }
                    Op::Ledger(r) => st
                        .ledger
                        .entry((r.load_table.to_string(), r.run_id.clone()))
                        .or_default()
                        .add(&r, now),
                    Op::RunInsert(mut r) => {
                        (r.created_ms, r.changed_ms) = (now, now);
                        st.runs.push(r)
                    }
                    Op::RunUpdate {
                        target,
                        run_id,
                        update,
                        at_ms,
                    } => {
                        if matches!(update, RunUpdate::Published { .. }) {
                            st.publishes.push((target.clone(), run_id.clone()));
                        }
                        for r in st.runs.iter_mut() {
                            if r.rec.target.to_string() == target && r.rec.run_id == run_id {
                                apply_update(r, &update, at_ms);
                                r.changed_ms = now;
                            }
                        }
                    }
                }
            }
        }
        self.end();
        // The answer travels back: the process may pause (or die) with the transaction
        // committed and before it learns so.
        point(&self.wh.sim).await;
        if strike == Some(Strike::After) {
            return Err(transient());
        }
        Ok(())
    }

    async fn rollback(mut self: Box<Self>) -> Result<()> {
        let _ = self.stmt("rollback").await;
        self.end();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sim_warehouse_passes_the_warehouse_conformance_suite() {
        let sim = super::super::exec::SimState::new(7);
        let store = SimStore::new(sim.clone());
        let wh = SimWarehouse::new(sim.clone(), store.clone());
        crate::warehouse::conformance::run(&wh, &store).await;
        // and with DuckDB's one transaction at a time
        let store = SimStore::new(sim.clone());
        let wh = SimWarehouse::new(sim, store.clone()).with_serial(true);
        crate::warehouse::conformance::run(&wh, &store).await;
    }

    #[test]
    fn the_staged_format_parses_nulls_quotes_and_newlines() {
        let rows = parse_staged(b"1\t\t\"\"\n2\t\"a\tb\nc\"\"d\"\tx\n").unwrap();
        assert_eq!(
            rows,
            vec![
                vec![Some("1".into()), None, Some("".into())],
                vec![
                    Some("2".into()),
                    Some("a\tb\nc\"d".into()),
                    Some("x".into())
                ],
            ]
        );
    }
}

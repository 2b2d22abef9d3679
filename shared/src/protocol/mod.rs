//! The load protocol: the only orchestration pgp has. Three steps, each a function of
//! one message, written once over the small traits of the external systems, and run
//! unchanged by the Cloud Run services (one step per HTTP request), by `pgp tap` (an
//! in-process queue with workers, [`crate::run`]) and by the deterministic simulation
//! that proves the protocol ([`crate::sim`]):
//!
//! 1. [`plan`]: a load request in; per table a run record frozen in the bucket, a load
//!    table of the run's own, a row in the warehouse's run table, and one chunk task
//!    per key range out (only the chunks a resumed run is missing).
//! 2. [`extract`]: a chunk task in; one new, immutable object out (or, when an object
//!    of that chunk exists, a copy of it under a new name, which announces it again).
//! 3. [`load`]: an object-finalize event in; the chunk's rows, its count check and its
//!    ledger row committed in one transaction; when the ledger holds every chunk, the
//!    publish ([`publish`]).
//!
//! Delivery is at least once, in any order, possibly while an earlier delivery still
//! runs; a process may die between any two statements. What keeps every row exactly
//! once, with Snowflake's guarantees and no more (transactions, no unique keys, no
//! compare-and-set; a lock held by one transaction at a time; GCS create-only writes):
//! - every load attempt stamps its rows with a fresh load id and records it in the
//!   ledger in the same transaction; a publish takes exactly one attempt per chunk (the
//!   smallest load id), so two loaders loading one object concurrently both commit
//!   and one copy is published;
//! - a publish runs under the target's lock, checks the run's state and the ledger's
//!   totals against the rows it moves, and records the run published in the same
//!   transaction (append), or claims the swap first and marks it done after (swap);
//! - a swap claim is a lease: its holder stops issuing statements a third of the way
//!   through it, so a claim found older than the lease belongs to a dead or given-up
//!   loader and is taken over; the target's marker tells whether its swap happened;
//! - the run record is created once (create-only), so two planners of one request
//!   agree on one set of chunks; a later request for the same target and load resumes
//!   the earlier run's missing chunks, and a different one retires it.

/// End a transaction by the outcome of its body: commit on `Ok`, roll back on `Err`.
pub(crate) async fn settle<T>(
    txn: Box<dyn crate::warehouse::Transaction>,
    body: Result<T>,
) -> Result<T> {
    match body {
        Ok(v) => {
            txn.commit().await?;
            Ok(v)
        }
        Err(e) => {
            let _ = txn.rollback().await;
            Err(e)
        }
    }
}

/// Run a block in a transaction `$txn` of `$wh`: commit on `Ok`, roll back on `Err`.
/// (A macro, not a function taking an async closure: such closures lose `Send` in the
/// services' spawned tasks.)
macro_rules! in_txn {
    ($wh:expr, |$txn:ident| $body:block) => {{
        let mut $txn = $wh.begin().await?;
        let body = async { $body }.await;
        $crate::protocol::settle($txn, body).await
    }};
}

pub mod build;
pub mod extract;
pub mod load;
pub mod plan;
pub mod publish;
pub mod record;
#[cfg(test)]
mod tests;

pub use record::{ChunkObject, ChunkTask, RunFile, RunHeader, RUNS_PREFIX};

use crate::clock::{Clock, Ids};
use crate::error::{Error, ErrorKind, Result};
use crate::params::Env;
use crate::queue::TaskQueue;
use crate::source::Connector;
use crate::storage::ObjectStore;
use crate::warehouse::Warehouse;
use std::sync::Arc;
use std::time::Duration;

/// How long a swap claim lasts. A claimant issues no statement later than a third of
/// it after taking the claim, and every statement ends within the session's lock
/// timeout (60 s) plus its own short run time (the swap is metadata only), so by the
/// time a claim is older than this its holder can no longer act; only then may
/// another loader take it over.
pub const CLAIM_LEASE: Duration = Duration::from_secs(900);

/// The parts a step works with. The extractor has no warehouse and no queue.
#[derive(Clone)]
pub struct Parts {
    pub store: Arc<dyn ObjectStore>,
    pub warehouse: Option<Arc<dyn Warehouse>>,
    pub sources: Arc<dyn Connector>,
    /// Where the planner publishes chunk tasks.
    pub queue: Option<Arc<dyn TaskQueue>>,
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn Ids>,
    /// Placeholders and connection variables.
    pub env: Arc<dyn Env + Send + Sync>,
}

impl Parts {
    pub(crate) fn wh(&self) -> Result<&dyn Warehouse> {
        self.warehouse
            .as_deref()
            .ok_or_else(|| Error::Config("this step needs a warehouse".into()))
    }
}

/// What a service answers for a step's result: the acknowledgement follows from the
/// error's kind alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done, or nothing to do: acknowledge.
    Done,
    /// Permanent failure: acknowledge (retrying cannot help), log the reason.
    Rejected,
    /// Transient or busy: do not acknowledge; the message comes back.
    Retry,
}

impl Disposition {
    pub fn of<T>(r: &Result<T>) -> Self {
        match r {
            Ok(_) => Disposition::Done,
            Err(e) => match e.kind() {
                ErrorKind::Permanent => Disposition::Rejected,
                ErrorKind::Transient | ErrorKind::Busy => Disposition::Retry,
            },
        }
    }
}

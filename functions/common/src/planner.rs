//! The planner service: a load request in, one chunk task per table and key range out.
//!
//! The work is the protocol's first step ([`pgp::protocol::plan::plan_step`]), the one
//! `pgp tap` runs: each loading table's run recorded once (create-only), its load
//! table created, the tasks of its missing chunks published. A redelivered request
//! (same run id) finds the records and re-publishes the missing chunks; a request for
//! a target whose earlier run of the same kind stalled resumes that run.
//!
//! The step runs in a task of its own, so a client that goes away (or a deadline that
//! passes) does not cancel it half-way through a warehouse transaction.

use crate::config::WarehouseAccess;
use crate::contract::{check_run_id, LoadRequest};
use crate::events::{self, Delivery};
use crate::queue::TaskQueue;
use crate::service::{health, Reply};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use chrono::Utc;
use pgp::clock::{RandomIds, SystemClock};
use pgp::manifest::Manifest;
use pgp::params::{Env, RunParams};
use pgp::protocol::plan::{plan_step, PlannedTable};
use pgp::protocol::Parts;
use pgp::run::{default_run_id, RunOptions};
use pgp::source::PgConnector;
use pgp::storage::{ObjectKey, ObjectStore};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use tracing::Instrument;

/// What the planner needs.
pub struct PlannerState {
    pub store: Arc<dyn ObjectStore>,
    pub warehouse: Arc<WarehouseAccess>,
    pub queue: Arc<dyn TaskQueue>,
    pub env: Arc<dyn Env + Send + Sync>,
    /// Where relative manifest paths resolve (`PGP_MANIFEST_DIR`).
    pub manifest_dir: PathBuf,
    /// For `gs://` manifests on an emulator.
    pub gcs_endpoint: Option<String>,
    /// Row cap of test loads.
    pub test_rows: u64,
}

pub fn router(state: Arc<PlannerState>) -> Router {
    Router::new()
        .route("/", post(handle))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn healthz(State(st): State<Arc<PlannerState>>) -> axum::response::Response {
    let store = st.store.health().await.map_err(|e| e.to_string());
    let wh = match st.warehouse.lease().await {
        Ok(l) => l.wh.health().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    health(vec![("storage", store), ("warehouse", wh)])
}

async fn handle(State(st): State<Arc<PlannerState>>, headers: HeaderMap, body: Bytes) -> Reply {
    let delivery = match events::decode(&headers, &body) {
        Ok(d) => d,
        Err(e) => return Reply::BadRequest(e.0),
    };
    let plain = matches!(delivery, Delivery::Plain(_));
    let reject = |m: String| {
        if plain {
            Reply::BadRequest(m)
        } else {
            Reply::Rejected(m)
        }
    };
    let delivery_id = delivery.id().map(str::to_string);
    let value = match delivery {
        Delivery::Plain(v) => v,
        Delivery::Message { data, .. } => match serde_json::from_slice(&data) {
            Ok(v) => v,
            Err(e) => return reject(format!("message data is not a JSON load request: {e}")),
        },
        Delivery::Storage { .. } => {
            return reject("the planner takes load requests, not storage events".into())
        }
    };
    let req: LoadRequest = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => return reject(format!("invalid load request: {e}")),
    };
    let run_id = match run_id_for(&req, delivery_id.as_deref(), &headers) {
        Ok(id) => id,
        Err(e) => return reject(e),
    };
    let span = tracing::info_span!("plan", run_id = %run_id, load_type = %req.load_type);
    let work = {
        let (st, span) = (st.clone(), span.clone());
        tokio::spawn(async move { plan(&st, req, run_id, plain).instrument(span).await })
    };
    let reply = work
        .await
        .unwrap_or_else(|e| Reply::Retry(format!("planning task failed: {e}")));
    span.in_scope(|| Reply::Sent(reply.into_response()))
}

/// The run id: the request's own, else one derived from the delivery so that a
/// redelivery maps to the same run, else the current time.
fn run_id_for(
    req: &LoadRequest,
    delivery: Option<&str>,
    headers: &HeaderMap,
) -> Result<String, String> {
    if let Some(id) = &req.run_id {
        check_run_id(id)?;
        return Ok(id.clone());
    }
    let clean = |prefix: &str, s: &str| {
        let mut id: String = s
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        id.truncate(60);
        format!("{prefix}{id}")
    };
    if let Some(d) = delivery.filter(|d| !d.is_empty()) {
        return Ok(clean("m", d));
    }
    // Cloud Scheduler sends the same schedule time on its retries of one run.
    if let Some(t) = headers
        .get("x-cloudscheduler-scheduletime")
        .and_then(|v| v.to_str().ok())
    {
        return Ok(clean("s", t));
    }
    Ok(default_run_id(Utc::now()))
}

async fn plan(st: &PlannerState, req: LoadRequest, run_id: String, plain: bool) -> Reply {
    let manifest = match load_manifest(st, &req.manifest).await {
        Ok(m) => m,
        Err(e) if plain && !e.is_retriable() => return Reply::BadRequest(e.to_string()),
        Err(e) => return Reply::from_error(&e),
    };
    let mut opts = RunOptions::new(req.load_type, Utc::now());
    opts.run_id = run_id.clone();
    opts.chunk_rows = req.chunk_rows;
    opts.test_rows = st.test_rows;
    opts.tables = req.tables.clone();
    opts.params = RunParams {
        execution_date: req.execution_date,
        hours: req.hours,
        days: req.days,
        last_loaded: req.last_loaded,
        task_instance: req.task_instance.clone(),
        vars: Default::default(),
    };
    // An embedded DuckDB file admits one writing process: requests take turns.
    let lease = match st.warehouse.lease().await {
        Ok(l) => l,
        Err(e) => return Reply::from_error(&e),
    };
    let parts = Parts {
        store: st.store.clone(),
        warehouse: Some(lease.wh.clone()),
        sources: Arc::new(PgConnector {
            env: st.env.clone(),
        }),
        queue: Some(st.queue.clone()),
        clock: Arc::new(SystemClock::default()),
        ids: Arc::new(RandomIds),
        env: st.env.clone(),
    };
    let report = match plan_step(&parts, &manifest, &opts, false).await {
        Ok(r) => r,
        Err(e) => return Reply::from_error(&e),
    };
    drop(lease);
    let messages: usize = report.tables.iter().map(|t| t.tasks.len()).sum();
    tracing::info!(
        tables = report.tables.len(),
        messages,
        "planned and published"
    );
    let planned: Vec<_> = report
        .tables
        .iter()
        .filter_map(|t| table_json(t, &run_id))
        .collect();
    let not_loaded: Vec<_> = report
        .tables
        .iter()
        .filter(|t| t.header.is_none())
        .map(|t| {
            tracing::warn!(table = %t.plan.table, action = ?t.plan.action, reason = ?t.plan.reason, "table not loaded");
            serde_json::json!({
                "table": t.plan.table, "action": t.plan.action, "loads": false,
                "reason": t.plan.reason,
            })
        })
        .collect();
    Reply::Ok(serde_json::json!({
        "status": "planned",
        "run_id": run_id,
        "messages": messages,
        "planned": planned,
        "not_loaded": not_loaded,
    }))
}

fn table_json(t: &PlannedTable, run_id: &str) -> Option<serde_json::Value> {
    let h = t.header.as_ref()?;
    Some(serde_json::json!({
        "table": h.table, "target": h.target.to_string(), "load_table": h.load_table.to_string(),
        "mode": h.mode, "chunks": h.chunks, "tasks": t.tasks.len(),
        "run_id": h.run_id,
        "resumes": (h.run_id != run_id).then(|| h.run_id.clone()),
        "finished": t.finished,
    }))
}

/// Read a manifest: a `gs://bucket/path` URL, or a path under the manifest folder.
async fn load_manifest(st: &PlannerState, name: &str) -> pgp::Result<Manifest> {
    if let Some(rest) = name.strip_prefix("gs://") {
        let (bucket, path) = rest.split_once('/').ok_or_else(|| {
            pgp::Error::Config(format!("manifest {name:?}: use gs://bucket/path"))
        })?;
        let store = pgp::storage::GcsStore::connect(bucket, st.gcs_endpoint.as_deref()).await?;
        let key = ObjectKey::parse(path)?;
        let text = store.get(&key).await?;
        let text = String::from_utf8(text.to_vec())
            .map_err(|_| pgp::Error::Config(format!("manifest {name:?} is not UTF-8")))?;
        return Manifest::parse(Path::new(name), &text);
    }
    let rel = Path::new(name);
    let path = if rel.is_absolute() {
        rel.to_path_buf()
    } else {
        st.manifest_dir.join(rel)
    };
    let escapes = rel.components().any(|c| matches!(c, Component::ParentDir))
        || !path.starts_with(&st.manifest_dir);
    if escapes {
        return Err(pgp::Error::Config(format!(
            "manifest {name:?} is outside PGP_MANIFEST_DIR ({})",
            st.manifest_dir.display()
        )));
    }
    Manifest::from_file(&path)
}

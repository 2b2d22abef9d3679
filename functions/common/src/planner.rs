//! The planner service: a load request in, one chunk task per table and key range out.
//!
//! It plans exactly as `pgp tap` does (`Pipeline::plan`), freezes each loading table's
//! plan as a [`TableRun`] record in the bucket, creates the table chunks load into,
//! then publishes the chunk tasks. A redelivered request (same run id) finds the
//! records and re-publishes the same tasks, which every later step treats as no-ops
//! once done.

use crate::config::WarehouseAccess;
use crate::contract::{check_run_id, ChunkTask, LoadRequest};
use crate::events::{self, Delivery};
use crate::queue::{Outgoing, TaskQueue};
use crate::service::{health, Reply};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use chrono::Utc;
use pgp::dist::TableRun;
use pgp::manifest::Manifest;
use pgp::params::{Env, RunParams};
use pgp::plan::TablePlan;
use pgp::run::{default_run_id, Pipeline, RunOptions};
use pgp::source::{PgSource, SourceConfig};
use pgp::storage::{ObjectKey, ObjectStore, ObjectStoreExt};
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
    let reply = plan(&st, req, run_id, plain).instrument(span.clone()).await;
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
    opts.params = RunParams {
        execution_date: req.execution_date,
        hours: req.hours,
        days: req.days,
        last_loaded: req.last_loaded,
        task_instance: req.task_instance.clone(),
        vars: Default::default(),
    };
    let selected: Vec<String> = if req.tables.is_empty() {
        manifest.tables.iter().map(|t| t.name.clone()).collect()
    } else {
        for t in &req.tables {
            if manifest.table(t).is_none() {
                return Reply::Rejected(format!(
                    "manifest {}: no table `{t}`",
                    manifest.path.display()
                ));
            }
        }
        req.tables.clone()
    };

    // One planning at a time per warehouse (a DuckDB file admits one process; the
    // Cloud Run planner runs with max-instances 1): two deliveries of one request
    // never both create the run's load tables.
    let lease = match st.warehouse.lease().await {
        Ok(l) => l,
        Err(e) => return Reply::from_error(&e),
    };
    // Tables already planned under this run id (a redelivery) keep their record.
    let mut records = Vec::new();
    let mut fresh = Vec::new();
    for t in &selected {
        let key = match TableRun::key(&run_id, t) {
            Ok(k) => k,
            Err(e) => return Reply::Rejected(e.to_string()),
        };
        match read_record(st.store.as_ref(), &key).await {
            Ok(Some(r)) => records.push(r),
            Ok(None) => fresh.push(t.clone()),
            Err(e) => return Reply::from_error(&e),
        }
    }
    let mut report = Vec::new();
    if !fresh.is_empty() {
        // A source that is down now is a reason to retry, not a planning error.
        let cfg =
            match SourceConfig::from_connection_info(&manifest.connection_info, st.env.as_ref()) {
                Ok(c) => c,
                Err(e) => return Reply::Rejected(e.to_string()),
            };
        if let Err(e) = PgSource::connect(&cfg).await {
            return Reply::from_error(&e);
        }
        let pipeline = Pipeline {
            store: st.store.clone(),
            warehouse: lease.wh.clone(),
            env: st.env.clone(),
        };
        opts.tables = fresh;
        let plans = match pipeline.plan(&manifest, &opts).await {
            Ok((plans, _)) => plans,
            Err(e) => return Reply::from_error(&e),
        };
        for plan in plans {
            let rec = match TableRun::from_plan(&plan, &opts, &manifest.connection_info) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    report.push(table_report(&plan, None));
                    continue;
                }
                Err(e) => {
                    report.push(table_report(&plan, Some(&e.to_string())));
                    continue;
                }
            };
            if !rec.resumed {
                if let Err(e) = lease.wh.create_table(&rec.load, &rec.schema).await {
                    return Reply::from_error(&e);
                }
            }
            let key = TableRun::key(&run_id, &rec.table).expect("checked above");
            let body = serde_json::to_vec_pretty(&rec).expect("a record serializes");
            if let Err(e) = st.store.put(&key, body.into(), Default::default()).await {
                return Reply::from_error(&e);
            }
            report.push(table_report(&plan, None));
            records.push(rec);
        }
    }
    drop(lease);

    let mut messages = Vec::new();
    for rec in &records {
        for c in &rec.chunks {
            let task = ChunkTask {
                run_id: run_id.clone(),
                table: rec.table.clone(),
                chunk: c.index,
                chunks: rec.chunks.len(),
            };
            messages.push(Outgoing {
                data: serde_json::to_vec(&task).expect("a task serializes"),
                attributes: [
                    ("run_id".to_string(), run_id.clone()),
                    ("table".to_string(), rec.table.clone()),
                    ("chunk".to_string(), c.index.to_string()),
                ]
                .into(),
            });
        }
    }
    let n = messages.len();
    if let Err(e) = st.queue.publish(messages).await {
        return Reply::Retry(e.to_string());
    }
    tracing::info!(
        tables = records.len(),
        messages = n,
        "planned and published"
    );
    let planned: Vec<_> = records
        .iter()
        .map(|r| {
            serde_json::json!({
                "table": r.table, "target": r.target.to_string(), "load_table": r.load.to_string(),
                "mode": r.mode, "chunks": r.chunks.len(),
            })
        })
        .collect();
    Reply::Ok(serde_json::json!({
        "status": "planned",
        "run_id": run_id,
        "messages": n,
        "planned": planned,
        "not_loaded": report.into_iter().filter(|r| r["loads"] == false).collect::<Vec<_>>(),
    }))
}

fn table_report(plan: &TablePlan, error: Option<&str>) -> serde_json::Value {
    let loads = error.is_none()
        && matches!(
            plan.action,
            pgp::plan::Action::Load | pgp::plan::Action::Backfill
        )
        && plan.mode != pgp::plan::Mode::None;
    if !loads {
        tracing::warn!(table = %plan.table, action = ?plan.action, reason = ?plan.reason.as_deref().or(error), "table not loaded");
    }
    serde_json::json!({
        "table": plan.table,
        "action": plan.action,
        "loads": loads,
        "reason": error.or(plan.reason.as_deref()),
    })
}

async fn read_record(store: &dyn ObjectStore, key: &ObjectKey) -> pgp::Result<Option<TableRun>> {
    if store.head(key).await?.is_none() {
        return Ok(None);
    }
    let bytes = store.get(key).await?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| pgp::Error::Config(format!("run record {key} is unreadable: {e}")))
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

/// Exposed for the extractor and loader: read a run record.
pub(crate) async fn record(
    store: &dyn ObjectStore,
    key: &ObjectKey,
) -> pgp::Result<Option<TableRun>> {
    read_record(store, key).await
}

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
    /// The only `gs://` places manifests may come from (`PGP_MANIFEST_GCS_PREFIXES`);
    /// empty: none. A manifest names the SQL the pipeline runs with its credentials,
    /// so a request may only pick one that the deployment trusts.
    pub manifest_prefixes: Vec<ManifestPrefix>,
    /// For `gs://` manifests on an emulator.
    pub gcs_endpoint: Option<String>,
    /// Row cap of test loads.
    pub test_rows: u64,
}

pub fn router(state: Arc<PlannerState>) -> Router {
    Router::new()
        .route("/", post(handle))
        .route("/healthz", get(healthz))
        .route("/livez", get(crate::service::livez))
        .route("/gc", post(gc))
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

/// A garbage-collection request (`POST /gc`, from Cloud Scheduler): what
/// [`pgp::ops::gc`] removes, and whether it acts.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GcRequest {
    /// Runs idle this many days are no longer in flight (default 7).
    #[serde(default = "seven")]
    retention_days: u64,
    /// Ledger rows of runs settled this many days are deleted (default 30).
    #[serde(default = "thirty")]
    ledger_retention_days: u64,
    /// Act; otherwise answer what would be done (default false).
    #[serde(default)]
    apply: bool,
}

fn seven() -> u64 {
    7
}

fn thirty() -> u64 {
    30
}

/// Run a garbage collection and answer its report; every removal is also logged.
async fn gc(State(st): State<Arc<PlannerState>>, body: Bytes) -> Reply {
    let req: GcRequest = match serde_json::from_slice(if body.is_empty() { b"{}" } else { &body }) {
        Ok(r) => r,
        Err(e) => return Reply::BadRequest(format!("not a gc request: {e}")),
    };
    let opts = pgp::ops::GcOptions {
        retention: std::time::Duration::from_secs(req.retention_days * 86_400),
        ledger_retention: std::time::Duration::from_secs(req.ledger_retention_days * 86_400),
        apply: req.apply,
    };
    let lease = match st.warehouse.lease().await {
        Ok(l) => l,
        Err(e) => return Reply::from_error(&e),
    };
    let store = st.store.clone();
    // In a task of its own, like every step: a client that goes away does not stop it
    // inside a warehouse transaction.
    let work = tokio::spawn(async move {
        let r = pgp::ops::gc(store.as_ref(), lease.wh.as_ref(), opts).await;
        drop(lease);
        r
    });
    match work.await {
        Ok(Ok(report)) => {
            for item in &report.items {
                tracing::info!(run_id = %item.run_id, target_table = %item.target, state = %item.state,
                    applied = report.applied, actions = ?item.actions, "garbage collection");
            }
            let mut v = serde_json::to_value(&report).unwrap_or_default();
            v["status"] = "collected".into();
            Reply::Ok(v)
        }
        Ok(Err(e)) => Reply::from_error(&e),
        Err(e) => Reply::Retry(format!("gc task failed: {e}")),
    }
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

/// An allow-listed place for `gs://` manifests: `gs://bucket/` or `gs://bucket/folder/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestPrefix {
    bucket: String,
    /// Empty (the whole bucket) or ending in `/`.
    folder: String,
}

impl ManifestPrefix {
    /// Parse `gs://bucket/` or `gs://bucket/folder/` (the trailing `/` is required, so
    /// that `gs://b/manifests` cannot be read as also allowing `gs://b/manifests-evil/`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("manifest prefix {s:?}: {why} (use gs://bucket/folder/)");
        let rest = s
            .strip_prefix("gs://")
            .ok_or_else(|| bad("not a gs:// URL"))?;
        let (bucket, folder) = rest.split_once('/').ok_or_else(|| bad("no folder"))?;
        if bucket.is_empty() {
            return Err(bad("no bucket"));
        }
        if !(folder.is_empty() || folder.ends_with('/')) {
            return Err(bad("a folder must end with /"));
        }
        if folder.split('/').any(|p| p == "." || p == "..") {
            return Err(bad("dot segments"));
        }
        Ok(Self {
            bucket: bucket.into(),
            folder: folder.into(),
        })
    }

    /// Parse a comma-separated list (`PGP_MANIFEST_GCS_PREFIXES`); blank: none.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Self::parse)
            .collect()
    }

    fn allows(&self, bucket: &str, path: &str) -> bool {
        bucket == self.bucket
            && path.starts_with(&self.folder)
            && !path
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
    }
}

impl std::fmt::Display for ManifestPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gs://{}/{}", self.bucket, self.folder)
    }
}

/// Whether a `gs://` manifest is in an allow-listed place; the error says why not.
fn check_gcs_manifest<'a>(
    prefixes: &[ManifestPrefix],
    name: &'a str,
) -> pgp::Result<(&'a str, &'a str)> {
    let rest = name.strip_prefix("gs://").unwrap_or(name);
    let (bucket, path) = rest
        .split_once('/')
        .ok_or_else(|| pgp::Error::Config(format!("manifest {name:?}: use gs://bucket/path")))?;
    if prefixes.iter().any(|p| p.allows(bucket, path)) {
        return Ok((bucket, path));
    }
    let allowed = if prefixes.is_empty() {
        "none are allowed: PGP_MANIFEST_GCS_PREFIXES is empty".to_string()
    } else {
        let list: Vec<String> = prefixes.iter().map(ToString::to_string).collect();
        format!("PGP_MANIFEST_GCS_PREFIXES allows {}", list.join(", "))
    };
    Err(pgp::Error::Config(format!(
        "manifest {name:?} is not in an allowed place ({allowed})"
    )))
}

/// Read a manifest: a `gs://bucket/path` URL under an allow-listed prefix, or a path
/// under the manifest folder.
async fn load_manifest(st: &PlannerState, name: &str) -> pgp::Result<Manifest> {
    if name.starts_with("gs://") {
        let (bucket, path) = check_gcs_manifest(&st.manifest_prefixes, name)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcs_manifests_come_only_from_allowed_prefixes() {
        let list = ManifestPrefix::parse_list(" gs://m/pgp/ , gs://whole/").unwrap();
        assert_eq!(list.len(), 2);
        for ok in [
            "gs://m/pgp/a.yaml",
            "gs://m/pgp/sub/b.yaml",
            "gs://whole/x.yaml",
        ] {
            assert!(check_gcs_manifest(&list, ok).is_ok(), "{ok}");
        }
        for bad in [
            "gs://m/other/a.yaml",
            "gs://m/pgp-evil/a.yaml",
            "gs://m/pgp/../other/a.yaml",
            "gs://m/pgp//a.yaml",
            "gs://other/pgp/a.yaml",
            "gs://m",
        ] {
            let e = check_gcs_manifest(&list, bad).unwrap_err().to_string();
            assert!(!e.is_empty(), "{bad}");
        }
        let e = check_gcs_manifest(&list, "gs://m/other/a.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gs://m/pgp/, gs://whole/"), "{e}");
        let e = check_gcs_manifest(&[], "gs://m/pgp/a.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("PGP_MANIFEST_GCS_PREFIXES is empty"), "{e}");
        for bad in ["m/pgp/", "gs://m/pgp", "gs:///pgp/", "gs://m", "gs://m/../"] {
            assert!(ManifestPrefix::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ManifestPrefix::parse_list("").unwrap(), vec![]);
    }
}

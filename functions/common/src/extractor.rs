//! The extractor service: one chunk task in, one finalized object out.
//!
//! It reads the run record the planner stored, connects to PostgreSQL with the
//! manifest's `connection_info` variables, and streams the chunk's COPY into its
//! object (`extract_chunk`, as `pgp tap` does). A task whose object already exists for
//! the same run is a no-op, so redeliveries and duplicates cost one metadata read. A
//! crash mid-stream finalizes nothing; the redelivered task rewrites the same name.

use crate::contract::{check_run_id, ChunkTask};
use crate::events::{self, Delivery};
use crate::service::{health, Reply};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use pgp::dist::TableRun;
use pgp::params::Env;
use pgp::source::{PgSource, SourceConfig};
use pgp::storage::ObjectStore;
use std::sync::Arc;
use tracing::Instrument;

pub struct ExtractorState {
    pub store: Arc<dyn ObjectStore>,
    /// Holds the source credentials the manifests' `connection_info` names.
    pub env: Arc<dyn Env + Send + Sync>,
}

pub fn router(state: Arc<ExtractorState>) -> Router {
    Router::new()
        .route("/", post(handle))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn healthz(State(st): State<Arc<ExtractorState>>) -> axum::response::Response {
    health(vec![(
        "storage",
        st.store.health().await.map_err(|e| e.to_string()),
    )])
}

async fn handle(State(st): State<Arc<ExtractorState>>, headers: HeaderMap, body: Bytes) -> Reply {
    let data = match events::decode(&headers, &body) {
        Err(e) => return Reply::BadRequest(e.0),
        Ok(Delivery::Message { data, .. }) => data,
        Ok(Delivery::Plain(_)) => {
            return Reply::BadRequest(
                "the extractor takes Pub/Sub push envelopes or CloudEvents".into(),
            )
        }
        Ok(Delivery::Storage { .. }) => {
            return Reply::Rejected("the extractor takes chunk tasks, not storage events".into())
        }
    };
    let task: ChunkTask = match serde_json::from_slice(&data) {
        Ok(t) => t,
        Err(e) => return Reply::Rejected(format!("invalid chunk task: {e}")),
    };
    if let Err(e) = check_run_id(&task.run_id) {
        return Reply::Rejected(e);
    }
    let span = tracing::info_span!("extract", run_id = %task.run_id, table = %task.table, chunk = task.chunk);
    let reply = extract(&st, task).instrument(span.clone()).await;
    span.in_scope(|| Reply::Sent(reply.into_response()))
}

async fn extract(st: &ExtractorState, task: ChunkTask) -> Reply {
    let key = match TableRun::key(&task.run_id, &task.table) {
        Ok(k) => k,
        Err(e) => return Reply::Rejected(e.to_string()),
    };
    let rec = match crate::planner::record(st.store.as_ref(), &key).await {
        Ok(Some(r)) => r,
        Ok(None) => return Reply::Rejected(format!("no run record {key}")),
        Err(e) => return Reply::from_error(&e),
    };
    let chunk = match rec.chunk(task.chunk) {
        Ok(c) => c,
        Err(e) => return Reply::Rejected(e.to_string()),
    };
    match st.store.head(&chunk.object).await {
        Ok(Some(info)) if info.metadata.get("run_id") == Some(&rec.run_id) => {
            tracing::info!(object = %chunk.object, "already extracted");
            return Reply::Ok(serde_json::json!({
                "status": "already_extracted", "object": chunk.object,
                "rows": info.metadata.get("rows"),
            }));
        }
        Ok(_) => {}
        Err(e) => return Reply::from_error(&e),
    }
    let cfg = match SourceConfig::from_connection_info(&rec.connection_info, st.env.as_ref()) {
        Ok(c) => c,
        Err(e) => return Reply::Rejected(e.to_string()),
    };
    let src = match PgSource::connect(&cfg).await {
        Ok(s) => s,
        Err(e) => return Reply::from_error(&e),
    };
    let started = std::time::Instant::now();
    tracing::info!(object = %chunk.object, range = %chunk.range, "extracting");
    match rec
        .extract(task.chunk, &src, st.store.as_ref(), &|_, _| {})
        .await
    {
        Ok(x) => {
            tracing::info!(object = %chunk.object, rows = x.rows, bytes = x.bytes,
                object_bytes = x.object_bytes, seconds = started.elapsed().as_secs_f64(), "extracted");
            Reply::Ok(serde_json::json!({
                "status": "extracted", "object": chunk.object, "rows": x.rows,
                "bytes": x.bytes, "object_bytes": x.object_bytes,
            }))
        }
        Err(e) => Reply::from_error(&e),
    }
}

//! The extractor service: one chunk task in, one finalized object out.
//!
//! The work is the protocol's second step ([`pgp::protocol::extract::extract_step`],
//! as `pgp tap` runs it): the run header read, the chunk's COPY streamed into a new
//! object of its own name. A task whose chunk has an object already copies it under a
//! new name (the loader hears of it again; a no-op there if loaded). A crash mid-stream
//! finalizes nothing. The step runs in a task of its own, so a client that goes away
//! does not cut an upload half-way.

use crate::contract::{check_run_id, ChunkTask};
use crate::events::{self, Delivery};
use crate::service::{health, Reply};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use pgp::clock::{RandomIds, SystemClock};
use pgp::params::Env;
use pgp::protocol::extract::{extract_step, ExtractOutcome};
use pgp::protocol::Parts;
use pgp::source::PgConnector;
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
        .route("/livez", get(crate::service::livez))
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
    let work = {
        let (st, span) = (st.clone(), span.clone());
        tokio::spawn(async move { extract(&st, task).instrument(span).await })
    };
    let reply = work
        .await
        .unwrap_or_else(|e| Reply::Retry(format!("extraction task failed: {e}")));
    span.in_scope(|| Reply::Sent(reply.into_response()))
}

async fn extract(st: &ExtractorState, task: ChunkTask) -> Reply {
    let parts = Parts {
        store: st.store.clone(),
        warehouse: None,
        sources: Arc::new(PgConnector {
            env: st.env.clone(),
        }),
        queue: None,
        clock: Arc::new(SystemClock::default()),
        ids: Arc::new(RandomIds),
        env: st.env.clone(),
    };
    let started = std::time::Instant::now();
    tracing::info!(range = %task.range, "extracting");
    match extract_step(&parts, &task, &|_, _| {}).await {
        Ok(ExtractOutcome::Extracted { object, stats }) => {
            tracing::info!(object = %object.key, rows = stats.rows, bytes = stats.bytes,
                object_bytes = stats.object_bytes, seconds = started.elapsed().as_secs_f64(), "extracted");
            Reply::Ok(serde_json::json!({
                "status": "extracted", "object": object.key, "rows": stats.rows,
                "bytes": stats.bytes, "object_bytes": stats.object_bytes,
            }))
        }
        Ok(ExtractOutcome::Reannounced { object }) => Reply::Ok(serde_json::json!({
            "status": "already_extracted", "object": object.key,
            "rows": object.metadata.get("rows"),
        })),
        // Acknowledged: the failure object carries the reason to the loader.
        Ok(ExtractOutcome::Failed { object, reason }) => Reply::Ok(serde_json::json!({
            "status": "failed", "object": object.key, "reason": reason,
        })),
        Err(e) => Reply::from_error(&e),
    }
}

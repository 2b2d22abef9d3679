//! The loader service: an object-finalize event in; the chunk loaded into the run's
//! load table; when the run's ledger holds every chunk, the publish.
//!
//! The work is the protocol's third step ([`pgp::protocol::load::load_step`], as `pgp
//! tap` runs it): the COPY, the count check and the ledger row in one transaction, each
//! attempt's rows stamped so that the publish takes one attempt per chunk however many
//! loaders loaded it; the publish under the target's lock, checked against the ledger's
//! totals. The step runs in a task of its own, so a client that goes away (or a
//! deadline that passes) does not leave a warehouse session inside a transaction.

use crate::config::WarehouseAccess;
use crate::events::{self, Delivery};
use crate::service::{health, Reply};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use pgp::clock::{RandomIds, SystemClock};
use pgp::protocol::load::{load_step, LoadOutcome};
use pgp::protocol::publish::Finished;
use pgp::protocol::Parts;
use pgp::storage::ObjectStore;
use std::sync::Arc;
use tracing::Instrument;

pub struct LoaderState {
    pub store: Arc<dyn ObjectStore>,
    pub warehouse: Arc<WarehouseAccess>,
}

pub fn router(state: Arc<LoaderState>) -> Router {
    Router::new()
        .route("/", post(handle))
        .route("/healthz", get(healthz))
        .route("/livez", get(crate::service::livez))
        .with_state(state)
}

async fn healthz(State(st): State<Arc<LoaderState>>) -> axum::response::Response {
    let store = st.store.health().await.map_err(|e| e.to_string());
    let wh = match st.warehouse.lease().await {
        Ok(l) => l.wh.health().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    health(vec![("storage", store), ("warehouse", wh)])
}

fn ignored(reason: impl Into<String>) -> Reply {
    let reason = reason.into();
    tracing::info!(%reason, "ignored");
    Reply::Ok(serde_json::json!({"status": "ignored", "reason": reason}))
}

async fn handle(State(st): State<Arc<LoaderState>>, headers: HeaderMap, body: Bytes) -> Reply {
    let (finalized, event_type, object) = match events::decode(&headers, &body) {
        Err(e) => return Reply::BadRequest(e.0),
        Ok(Delivery::Storage {
            finalized,
            event_type,
            object,
            ..
        }) => (finalized, event_type, object),
        Ok(Delivery::Plain(_)) => {
            return Reply::BadRequest(
                "the loader takes storage CloudEvents or notifications".into(),
            )
        }
        Ok(Delivery::Message { .. }) => {
            return Reply::Rejected("the loader takes storage events, not plain messages".into())
        }
    };
    if !finalized {
        return ignored(format!("event type {event_type}"));
    }
    let info = match pgp::storage::object_info(&object) {
        Ok(i) => i,
        Err(e) => return Reply::Rejected(format!("object resource: {e}")),
    };
    let md = |k: &str| info.metadata.get(k).cloned().unwrap_or_default();
    let span = tracing::info_span!("load", run_id = %md("run_id"), table = %md("table"), chunk = %md("chunk"));
    let work = {
        let (st, span) = (st.clone(), span.clone());
        tokio::spawn(async move { load(&st, info).instrument(span).await })
    };
    let reply = work
        .await
        .unwrap_or_else(|e| Reply::Retry(format!("loading task failed: {e}")));
    span.in_scope(|| Reply::Sent(reply.into_response()))
}

async fn load(st: &LoaderState, info: pgp::storage::ObjectInfo) -> Reply {
    let lease = match st.warehouse.lease().await {
        Ok(l) => l,
        Err(e) => return Reply::from_error(&e),
    };
    let parts = Parts {
        store: st.store.clone(),
        warehouse: Some(lease.wh.clone()),
        sources: Arc::new(pgp::source::PgConnector {
            env: Arc::new(pgp::params::ProcessEnv),
        }),
        queue: None,
        clock: Arc::new(SystemClock::default()),
        ids: Arc::new(RandomIds),
        env: Arc::new(pgp::params::ProcessEnv),
    };
    let object = info.key.to_string();
    match load_step(&parts, &info).await {
        Ok(LoadOutcome::Ignored(reason)) => ignored(reason),
        Ok(LoadOutcome::Loaded { rows, already }) => {
            tracing::info!(rows, already, "chunk loaded");
            Reply::Ok(serde_json::json!({
                "status": "loaded", "object": object, "rows": rows, "already": already,
            }))
        }
        Ok(LoadOutcome::Finished(f)) => {
            match &f {
                Finished::Published { rows } => tracing::info!(rows, "published"),
                Finished::AlreadyPublished { rows } => tracing::info!(rows, "already published"),
                Finished::Abandoned { reason } => tracing::error!(%reason, "run abandoned"),
            }
            let mut v = serde_json::to_value(&f).expect("serializes");
            v["object"] = object.into();
            Reply::Ok(v)
        }
        Err(e) => Reply::from_error(&e),
    }
}

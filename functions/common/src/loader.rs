//! The loader service: an object-finalize event in; the chunk loaded into the run's
//! load table; when the run's last chunk has landed, the schema check and the one
//! atomic append or swap.
//!
//! Every step is idempotent: the warehouse's load ledger skips an object it already
//! loaded for the run, and its publish ledger never appends or swaps a run twice. Two
//! loaders finishing a table's last chunks at once may both try to publish; the
//! warehouse lets one win and the other finds the run published (or, on a transaction
//! conflict, answers 503 and finds it so on redelivery).

use crate::config::WarehouseAccess;
use crate::events::{self, Delivery};
use crate::service::{health, Reply};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use pgp::dist::{TableRun, RUNS_PREFIX};
use pgp::plan::Mode;
use pgp::storage::{ObjectStore, UPLOAD_PREFIX};
use pgp::warehouse::{schema_state, SchemaState};
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
    let Some(name) = object["name"].as_str() else {
        return Reply::Rejected("object resource without a name".into());
    };
    if name.starts_with(RUNS_PREFIX) || name.starts_with(UPLOAD_PREFIX) {
        return ignored(format!("{name} is not a chunk"));
    }
    let md = |k: &str| object["metadata"][k].as_str().map(str::to_string);
    let (Some(run_id), Some(table), Some(chunk), Some(rows)) =
        (md("run_id"), md("table"), md("chunk"), md("rows"))
    else {
        return ignored(format!("{name} carries no pgp chunk metadata"));
    };
    let (Ok(chunk), Ok(rows)) = (chunk.parse::<usize>(), rows.parse::<u64>()) else {
        return Reply::Rejected(format!("{name}: bad chunk/rows metadata"));
    };
    let span = tracing::info_span!("load", run_id = %run_id, table = %table, chunk = chunk);
    let reply = load(&st, name.to_string(), run_id, table, chunk, rows)
        .instrument(span.clone())
        .await;
    span.in_scope(|| Reply::Sent(reply.into_response()))
}

async fn load(
    st: &LoaderState,
    name: String,
    run_id: String,
    table: String,
    chunk: usize,
    rows: u64,
) -> Reply {
    let key = match TableRun::key(&run_id, &table) {
        Ok(k) => k,
        Err(e) => return Reply::Rejected(e.to_string()),
    };
    let rec = match crate::planner::record(st.store.as_ref(), &key).await {
        Ok(Some(r)) => r,
        Ok(None) => return Reply::Rejected(format!("{name}: no run record {key}")),
        Err(e) => return Reply::from_error(&e),
    };
    match rec.chunk(chunk) {
        Ok(c) if c.object.as_str() == name => {}
        Ok(c) => {
            return ignored(format!(
                "{name} is not chunk {chunk}'s object ({})",
                c.object
            ))
        }
        Err(e) => return Reply::Rejected(e.to_string()),
    }
    let lease = match st.warehouse.lease().await {
        Ok(l) => l,
        Err(e) => return Reply::from_error(&e),
    };
    let wh = lease.wh.as_ref();
    if rec.mode != Mode::Test {
        match wh.published(&rec.target, &rec.run_id).await {
            Ok(true) => {
                return ignored(format!(
                    "run {} already published to {}",
                    rec.run_id, rec.target
                ))
            }
            Ok(false) => {}
            Err(e) => return Reply::from_error(&e),
        }
    }
    let loaded = match rec.load(wh, chunk, rows).await {
        Ok(l) => l,
        Err(e) => return Reply::from_error(&e),
    };
    tracing::info!(
        rows = loaded.rows,
        already = loaded.already,
        "chunk loaded into {}",
        rec.load
    );
    let complete = match rec.complete(wh).await {
        Ok(c) => c,
        Err(e) => return Reply::from_error(&e),
    };
    if !complete {
        return Reply::Ok(serde_json::json!({
            "status": "loaded", "object": name, "rows": loaded.rows, "already": loaded.already,
        }));
    }
    if rec.mode == Mode::Append {
        // The target must still have the columns the run was planned against.
        let actual = match wh.columns(&rec.target).await {
            Ok(a) => a,
            Err(e) => return Reply::from_error(&e),
        };
        match schema_state(wh, &rec.schema.columns, actual.as_deref()) {
            SchemaState::Same => {}
            s => {
                return Reply::Rejected(format!(
                    "{} changed since run {} was planned ({s:?}); not appended, the stage {} is kept; run a backfill",
                    rec.target, rec.run_id, rec.load
                ))
            }
        }
    }
    match rec.publish(wh).await {
        Ok(p) => {
            tracing::info!(rows = p.rows, already = p.already, mode = ?rec.mode, "published {}", rec.target);
            Reply::Ok(serde_json::json!({
                "status": if p.already { "already_published" } else { "published" },
                "object": name, "target": rec.target.to_string(), "mode": rec.mode, "rows": p.rows,
            }))
        }
        Err(e) => Reply::from_error(&e),
    }
}

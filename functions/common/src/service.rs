//! What every service shares: the acknowledgement rules, JSON logs for Cloud Logging,
//! listening on `$PORT`, graceful shutdown.
//!
//! HTTP status is the acknowledgement. Pub/Sub push and Eventarc treat 102, 200, 201,
//! 202 and 204 as success and redeliver everything else with backoff (then dead-letter):
//! - `200` done, or nothing to do (a redelivery, an object that is not a chunk);
//! - `200` with `"status":"rejected"`: a *permanent* failure of a real event (malformed
//!   message data, unknown table or run, manifest error, count mismatch). Logged at
//!   ERROR with the reason and acknowledged: retrying cannot help;
//! - `400`: a body that is no event at all (no real delivery looks like that), or a
//!   malformed plain load request (Cloud Scheduler shows the error);
//! - `503`: transient or busy (database unreachable, warehouse busy or locked, storage
//!   or Pub/Sub errors): redelivered until it works or reaches the dead-letter topic.
//!
//! Which is which follows from the error's kind alone ([`pgp::error::ErrorKind`]), set
//! where the error arose from a SQLSTATE, an HTTP status or an I/O error kind.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::future::Future;
use tokio::net::TcpListener;

/// A handler's verdict.
#[derive(Debug)]
pub enum Reply {
    /// Acknowledged; work done or nothing to do. The body says which.
    Ok(serde_json::Value),
    /// Acknowledged without effect: a permanent failure, logged.
    Rejected(String),
    /// Not an event / malformed plain request.
    BadRequest(String),
    /// Not acknowledged: redeliver later.
    Retry(String),
    /// Already turned into a response (and logged) inside the event's span, so the
    /// log line carries its run id, table and chunk.
    Sent(Response),
}

impl Reply {
    /// Answer a library error by its kind: transient and busy ones are redelivered,
    /// permanent ones acknowledged.
    pub fn from_error(e: &pgp::Error) -> Reply {
        match e.kind() {
            pgp::error::ErrorKind::Permanent => Reply::Rejected(e.to_string()),
            pgp::error::ErrorKind::Transient | pgp::error::ErrorKind::Busy => {
                Reply::Retry(format!("{}: {e}", e.kind()))
            }
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Reply::Ok(_) | Reply::Rejected(_) => StatusCode::OK,
            Reply::BadRequest(_) => StatusCode::BAD_REQUEST,
            Reply::Retry(_) => StatusCode::SERVICE_UNAVAILABLE,
            Reply::Sent(r) => r.status(),
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Reply::Sent(_) => {}
            Reply::Ok(v) => tracing::info!(status = %v["status"].as_str().unwrap_or("ok"), "done"),
            Reply::Rejected(r) => {
                tracing::error!(reason = %r, "rejected permanently; acknowledged")
            }
            Reply::BadRequest(r) => tracing::warn!(reason = %r, "bad request"),
            Reply::Retry(r) => {
                tracing::warn!(reason = %r, "transient failure; will be redelivered")
            }
        }
        let body = match self {
            Reply::Sent(r) => return r,
            Reply::Ok(v) => v,
            Reply::Rejected(r) => serde_json::json!({"status": "rejected", "reason": r}),
            Reply::BadRequest(r) => serde_json::json!({"status": "bad_request", "reason": r}),
            Reply::Retry(r) => serde_json::json!({"status": "retry", "reason": r}),
        };
        (status, Json(body)).into_response()
    }
}

/// The `/livez` answer: the process serves HTTP. Cloud Run's startup and liveness
/// probes call this, not `/healthz`: it needs no permission on any dependency, and a
/// PostgreSQL or Snowflake outage must not stop new instances from starting (their
/// requests fail with a transient kind and are redelivered instead).
pub async fn livez() -> &'static str {
    "ok"
}

/// The `/healthz` answer: each dependency's state; 503 when one is down. For people
/// and alerts (uptime checks), never for the platform's probes.
pub fn health(checks: Vec<(&'static str, Result<(), String>)>) -> Response {
    let ok = checks.iter().all(|(_, r)| r.is_ok());
    let body: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|(k, r)| {
            (
                k.to_string(),
                match r {
                    Ok(()) => "ok".into(),
                    Err(e) => e.into(),
                },
            )
        })
        .collect();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({"ok": ok, "dependencies": body})),
    )
        .into_response()
}

/// Logs: one JSON object per line in Cloud Logging's format (severity, message, span
/// fields such as run id, table and chunk) unless `PGP_LOG_FORMAT=text`. Level from
/// `PGP_LOG` (default `info`).
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let text = std::env::var("PGP_LOG_FORMAT").is_ok_and(|v| v == "text");
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if text {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init()
    } else {
        registry.with(tracing_stackdriver::layer()).try_init()
    };
}

/// Resolves on SIGTERM (Cloud Run's stop signal) or Ctrl-C.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// Serve `router` on `0.0.0.0:port` until `shutdown` resolves; requests in flight
/// finish first.
pub async fn serve(
    router: axum::Router,
    port: u16,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).await?;
    tracing::info!(port = listener.local_addr()?.port(), "listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

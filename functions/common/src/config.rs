//! Configuration of the services: environment variables (Cloud Run's way), each also a
//! flag, all listed by every binary's `--help`. The names are a fixed contract.

use pgp::storage::ObjectStore;
use pgp::warehouse::Warehouse;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Where the service listens.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Port to listen on (Cloud Run sets it).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
}

/// The bucket chunks are staged in.
#[derive(clap::Args, Debug, Clone)]
pub struct StorageArgs {
    /// `gs://bucket` (production) or `file:///dir`.
    #[arg(long, env = "PGP_STORAGE_URL")]
    pub storage_url: String,
    /// Base URL of a GCS emulator; requests are then anonymous.
    #[arg(long, env = "PGP_GCS_ENDPOINT")]
    pub gcs_endpoint: Option<String>,
}

impl StorageArgs {
    pub async fn open(&self) -> pgp::Result<Arc<dyn ObjectStore>> {
        pgp::storage::open(&self.storage_url, self.gcs_endpoint.as_deref()).await
    }
}

/// The warehouse loads go to.
#[derive(clap::Args, Debug, Clone)]
pub struct WarehouseArgs {
    /// `duckdb:///abs/file.duckdb` (embedded) or, with the Snowflake backend, `snowflake://…`.
    #[arg(long, env = "PGP_WAREHOUSE_URL")]
    pub warehouse_url: String,
}

/// Pub/Sub.
#[derive(clap::Args, Debug, Clone)]
pub struct PubSubArgs {
    /// Google Cloud project of the topics.
    #[arg(long, env = "PGP_PUBSUB_PROJECT")]
    pub pubsub_project: String,
    /// `http://host:port` of a Pub/Sub emulator; requests are then anonymous.
    #[arg(long, env = "PGP_PUBSUB_ENDPOINT")]
    pub pubsub_endpoint: Option<String>,
}

/// Access to the warehouse from a service.
///
/// A server warehouse (Snowflake) is one shared client. An embedded DuckDB file admits
/// one writing process at a time, and planner and loader are separate processes: each
/// request takes an exclusive `flock` on `<file>.lock` (non-blocking, retried with
/// backoff up to `PGP_WAREHOUSE_WAIT`), opens the file, works, closes it and releases
/// the lock; requests inside one process take turns. A lock still held when the wait
/// ends is a busy error (the request is redelivered), decided by the `flock` result,
/// not by reading an error message.
pub struct WarehouseAccess {
    url: String,
    store: Arc<dyn ObjectStore>,
    turn: Arc<Mutex<()>>,
    wait: Duration,
    shared: tokio::sync::OnceCell<Arc<dyn Warehouse>>,
}

/// A warehouse for the duration of one request.
pub struct Lease {
    pub wh: Arc<dyn Warehouse>,
    // Field order is drop order: the warehouse closes before the file lock goes.
    _file_lock: Option<std::fs::File>,
    _turn: Option<OwnedMutexGuard<()>>,
}

/// Take an exclusive, non-blocking `flock` on `path`; `Ok(None)` when another process
/// holds it.
fn try_flock(path: &std::path::Path) -> std::io::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: flock on a file descriptor we own for the duration of the call.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(Some(f));
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(None)
    } else {
        Err(e)
    }
}

impl WarehouseAccess {
    pub fn new(url: &str, store: Arc<dyn ObjectStore>) -> Self {
        let wait = std::env::var("PGP_WAREHOUSE_WAIT")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(30));
        WarehouseAccess {
            url: url.to_string(),
            store,
            turn: Arc::new(Mutex::new(())),
            wait,
            shared: tokio::sync::OnceCell::new(),
        }
    }

    /// The warehouse URL, secrets redacted.
    pub fn url(&self) -> String {
        pgp::warehouse::redact(&self.url)
    }

    pub async fn lease(&self) -> pgp::Result<Lease> {
        if !self.url.starts_with("duckdb://") {
            let wh = self
                .shared
                .get_or_try_init(|| async { pgp::warehouse::open(&self.url, self.store.clone()) })
                .await?
                .clone();
            return Ok(Lease {
                wh,
                _file_lock: None,
                _turn: None,
            });
        }
        let turn = self.turn.clone().lock_owned().await;
        let lock_path = format!("{}.lock", self.url.trim_start_matches("duckdb://"));
        let deadline = Instant::now() + self.wait;
        let mut pause = Duration::from_millis(20);
        let file_lock = loop {
            let io = |e: std::io::Error| {
                pgp::Error::warehouse(
                    format!("lock {lock_path}"),
                    &e,
                    pgp::error::ErrorKind::from_io(&e),
                )
            };
            match try_flock(std::path::Path::new(&lock_path)).map_err(io)? {
                Some(f) => break f,
                None if Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                None => {
                    return Err(pgp::Error::Busy(format!(
                        "{} is held by another process",
                        self.url()
                    )))
                }
            }
        };
        let (url, store) = (self.url.clone(), self.store.clone());
        let wh = tokio::task::spawn_blocking(move || pgp::warehouse::open(&url, store))
            .await
            .map_err(|e| pgp::Error::Config(format!("warehouse open: {e}")))??;
        Ok(Lease {
            wh,
            _file_lock: Some(file_lock),
            _turn: Some(turn),
        })
    }
}

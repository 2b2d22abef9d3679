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
/// request opens the file, works, and closes it, waiting (up to `PGP_WAREHOUSE_WAIT`)
/// while another process holds it; requests inside one process take turns.
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
    _turn: Option<OwnedMutexGuard<()>>,
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
            return Ok(Lease { wh, _turn: None });
        }
        let turn = self.turn.clone().lock_owned().await;
        let deadline = Instant::now() + self.wait;
        let mut pause = Duration::from_millis(20);
        loop {
            let (url, store) = (self.url.clone(), self.store.clone());
            let opened = tokio::task::spawn_blocking(move || pgp::warehouse::open(&url, store))
                .await
                .map_err(|e| pgp::Error::Config(format!("warehouse open: {e}")))?;
            match opened {
                Ok(wh) => {
                    return Ok(Lease {
                        wh,
                        _turn: Some(turn),
                    })
                }
                Err(e) if e.to_string().contains("lock") && Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

//! The planner Cloud Run service: load requests in (Cloud Scheduler POST, Pub/Sub push,
//! Eventarc), chunk tasks out to the extract topic. See the README for the contract.

use clap::Parser;
use pgp_functions::config::{PubSubArgs, ServerArgs, StorageArgs, WarehouseAccess, WarehouseArgs};
use pgp_functions::planner::{router, ManifestPrefix, PlannerState};
use pgp_functions::queue::PubSubQueue;
use pgp_functions::service::{init_logging, serve, shutdown_signal};
use std::sync::Arc;

/// Plans load requests and publishes one chunk task per table and key range.
#[derive(Parser, Debug)]
#[command(name = "planner", version)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    warehouse: WarehouseArgs,
    #[command(flatten)]
    pubsub: PubSubArgs,
    /// Topic id the chunk tasks go to.
    #[arg(long, env = "PGP_EXTRACT_TOPIC")]
    extract_topic: String,
    /// Folder relative manifest paths resolve in.
    #[arg(long, env = "PGP_MANIFEST_DIR", default_value = "/manifests")]
    manifest_dir: std::path::PathBuf,
    /// The `gs://` places manifests may be read from, comma-separated
    /// (`gs://bucket/folder/`); empty: only `PGP_MANIFEST_DIR`.
    #[arg(long, env = "PGP_MANIFEST_GCS_PREFIXES", default_value = "")]
    manifest_gcs_prefixes: String,
    /// Row cap of `test` loads.
    #[arg(long, env = "PGP_TEST_ROWS", default_value_t = 1_000_000)]
    test_rows: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging();
    let manifest_prefixes =
        ManifestPrefix::parse_list(&args.manifest_gcs_prefixes).map_err(anyhow::Error::msg)?;
    let store = args.storage.open().await?;
    let queue = PubSubQueue::connect(
        &args.pubsub.pubsub_project,
        &args.extract_topic,
        args.pubsub.pubsub_endpoint.as_deref(),
    )
    .await?;
    let state = PlannerState {
        warehouse: Arc::new(WarehouseAccess::new(
            &args.warehouse.warehouse_url,
            store.clone(),
        )),
        store,
        queue: Arc::new(queue),
        env: Arc::new(pgp::params::ProcessEnv),
        manifest_dir: std::path::absolute(&args.manifest_dir)?,
        manifest_prefixes,
        gcs_endpoint: args.storage.gcs_endpoint.clone(),
        test_rows: args.test_rows,
    };
    serve(router(Arc::new(state)), args.server.port, shutdown_signal()).await?;
    Ok(())
}

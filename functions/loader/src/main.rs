//! The loader Cloud Run service: GCS object-finalize events in (Eventarc CloudEvent or
//! Pub/Sub notification), chunks loaded, runs published.

use clap::Parser;
use pgp_functions::config::{ServerArgs, StorageArgs, WarehouseAccess, WarehouseArgs};
use pgp_functions::loader::{router, LoaderState};
use pgp_functions::service::{init_logging, serve, shutdown_signal};
use std::sync::Arc;

/// Loads finalized chunk objects into the warehouse and publishes complete runs.
#[derive(Parser, Debug)]
#[command(name = "loader", version)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    warehouse: WarehouseArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging();
    let store = args.storage.open().await?;
    let state = LoaderState {
        warehouse: Arc::new(WarehouseAccess::new(
            &args.warehouse.warehouse_url,
            store.clone(),
        )),
        store,
    };
    serve(router(Arc::new(state)), args.server.port, shutdown_signal()).await?;
    Ok(())
}

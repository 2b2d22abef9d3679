//! The extractor Cloud Run service: one chunk task in (Pub/Sub push or Eventarc), one
//! compressed TSV object out in the bucket.

use clap::Parser;
use pgp_functions::config::{ServerArgs, StorageArgs};
use pgp_functions::extractor::{router, ExtractorState};
use pgp_functions::service::{init_logging, serve, shutdown_signal};
use std::sync::Arc;

/// Streams one chunk of a table from PostgreSQL into the bucket. Source credentials
/// come from the environment variables the manifest's `connection_info` names.
#[derive(Parser, Debug)]
#[command(name = "extractor", version)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    storage: StorageArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging();
    let state = ExtractorState {
        store: args.storage.open().await?,
        env: Arc::new(pgp::params::ProcessEnv),
    };
    serve(router(Arc::new(state)), args.server.port, shutdown_signal()).await?;
    Ok(())
}

//! The Cloud Run services of pgp: planner, extractor and loader.
//!
//! Each service is an axum `Router` built from its state (`planner::router`,
//! `extractor::router`, `loader::router`), so handler tests drive them with
//! `tower::ServiceExt::oneshot` and the binaries only read configuration and serve.
//! The work itself is the library's: planning, `extract_chunk`, `load_chunk` and the
//! warehouse's publish, exactly what `pgp tap` runs in one process.
//!
//! - [`events`] decodes Pub/Sub push envelopes, CloudEvents and GCS notifications;
//! - [`contract`] holds the published message schemas;
//! - [`queue`] publishes chunk tasks (Pub/Sub, or in memory);
//! - [`service`] has the acknowledgement rules, logging, `$PORT` and shutdown;
//! - [`config`] the environment variables and warehouse access.

pub mod config;
pub mod contract;
pub mod events;
pub mod extractor;
pub mod loader;
pub mod planner;
pub mod queue;
pub mod service;

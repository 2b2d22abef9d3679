//! pgp: load PostgreSQL tables into a warehouse through an object store, driven by
//! GitLab `postgres_pipeline` manifests.
//!
//! Layout, in the order data flows:
//! - [`manifest`] reads manifests unchanged; [`params`] resolves placeholders and the
//!   time window; [`query`] classifies tables and rewrites queries (full table, key
//!   ranges); [`types`] maps PostgreSQL types to warehouse types;
//! - [`plan`] decides per table what a run does; [`source`] reads PostgreSQL;
//!   [`extract`] streams one chunk into [`storage`] in the [`format`] every warehouse
//!   reads; [`warehouse`] loads, checks and publishes;
//! - [`protocol`] is the load protocol: the planner, extractor and loader steps, the
//!   only orchestration there is. The Cloud Run services run them one event at a time;
//!   [`run`] runs them through an in-process queue for one machine (`pgp tap`);
//!   [`sim`] runs them in a deterministic simulation with injected faults that checks
//!   the protocol's guarantees ([`clock`] and [`queue`] are what it injects);
//! - [`verify`] compares a published target with its source afterwards (`pgp verify`).

pub mod clock;
pub mod error;
pub mod extract;
pub mod format;
pub mod ident;
pub mod manifest;
pub mod ops;
pub mod params;
pub mod plan;
pub mod profile;
pub mod protocol;
pub mod query;
pub mod queue;
pub mod run;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod source;
pub mod storage;
pub mod types;
pub mod verify;
pub mod warehouse;

pub use error::{Error, Result};
pub use warehouse::{TASK_INSTANCE, UPLOADED_AT};

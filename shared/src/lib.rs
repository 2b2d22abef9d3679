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
//! - [`run`] strings the steps together for one machine (`pgp tap`). The Cloud Run
//!   services call the same steps one event at a time, sharing a [`dist::TableRun`]
//!   record through the bucket.

pub mod dist;
pub mod error;
pub mod extract;
pub mod format;
pub mod ident;
pub mod manifest;
pub mod params;
pub mod plan;
pub mod query;
pub mod run;
pub mod source;
pub mod storage;
pub mod types;
pub mod warehouse;

pub use error::{Error, Result};
pub use warehouse::{TASK_INSTANCE, UPLOADED_AT};

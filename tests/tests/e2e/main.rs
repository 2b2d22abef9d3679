//! The end-to-end tests, in one binary (one link of DuckDB instead of one per file):
//! a real PostgreSQL started by the harness ([`pgp_e2e::Pg`]), local storage and
//! embedded DuckDB; the services against the Pub/Sub, GCS and Snowflake emulators.

#![allow(dead_code)]

mod bad_input;
mod bench_protocol;
mod chunking;
mod cloud;
mod common;
mod fidelity;
mod gitlab_manifests;
mod infra;
mod load_types;
mod snowflake;
mod tls;
mod type_matrix;
mod validation;
mod verify;

//! A deterministic simulation of the load protocol, in the spirit of FoundationDB's
//! simulator and TigerBeetle's VOPR: the real step code ([`crate::protocol`]) runs over
//! in-process components that promise no more than production does, under a seeded
//! scheduler that interleaves concurrent workers one operation at a time and injects
//! faults at every step boundary; invariants are checked after every schedule.
//!
//! - [`exec`]: the scheduler. Every component operation starts at a *yield point*;
//!   between two of them a task runs alone, so a schedule is a sequence of operations
//!   chosen by the seed. At a yield point the scheduler may crash the task's process
//!   (its tasks vanish without running any more code; its warehouse sessions are left
//!   detached, holding their locks, as when a Cloud Run instance dies).
//! - [`store::SimStore`]: an object store that finalizes an object once per
//!   generation and announces each finalize as an event; create-only writes are exact.
//! - [`warehouse::SimWarehouse`]: transactions reading committed data, a lock per
//!   target that one transaction holds at a time, no unique keys, DDL outside
//!   transactions, detached transactions aborted only after Snowflake's idle limit.
//!   It passes the same conformance suite as DuckDB and Snowflake.
//! - [`world`]: Pub/Sub and Eventarc as the protocol sees them: at-least-once delivery
//!   in any order, duplicates, redelivery when the ack deadline passes while the first
//!   delivery still runs; several instances of each service; the scenarios and the
//!   invariants.
//!
//! Faults are transient errors returned before or after an operation took effect (a
//! commit that happened but whose answer was lost), crashes at any yield point, stalls,
//! and duplicated and delayed deliveries. A failing seed prints itself; `PGP_SIM_SEED=n`
//! replays it.

pub mod exec;
pub mod scale;
pub mod source;
pub mod store;
pub mod warehouse;
pub mod world;

pub use exec::{point, Rng, SimClock, SimIds};

//! Time and fresh ids, injected: the steps of the load protocol never read the wall
//! clock or a random generator themselves, so the deterministic simulation
//! ([`crate::sim`]) can run them on its own clock and seeded ids, and a failing seed
//! replays exactly.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// A clock.
pub trait Clock: Send + Sync {
    /// Wall time (run start, `_uploaded_at`).
    fn now(&self) -> DateTime<Utc>;
    /// Time since an arbitrary fixed point, never going back (deadlines, leases).
    fn monotonic(&self) -> Duration;
}

/// The machine's clock.
pub struct SystemClock {
    start: std::time::Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            start: std::time::Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn monotonic(&self) -> Duration {
        self.start.elapsed()
    }
}

/// A source of ids no other worker will produce (load attempts, extraction attempts,
/// claims): short lowercase hex, safe in object names, table names and SQL literals.
pub trait Ids: Send + Sync {
    fn fresh(&self) -> String;
}

/// Random version-4 UUIDs, first 16 hex digits (64 random bits).
pub struct RandomIds;

impl Ids for RandomIds {
    fn fresh(&self) -> String {
        uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
    }
}

//! The source: PostgreSQL, read with `COPY (query) TO STDOUT`.
//!
//! There is one real implementation (there is nothing to stand in for PostgreSQL: tests
//! start a real server), so this is a concrete type rather than a trait.

mod postgres;
mod tls;
pub use self::postgres::{PgSource, SourceConfig};
pub use self::tls::{SslMode, TlsConfig};

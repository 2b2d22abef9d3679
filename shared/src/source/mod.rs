//! The source: PostgreSQL, read with `COPY (query) TO STDOUT`.
//!
//! A small trait so that the load protocol's steps run unchanged over the simulation's
//! in-memory source ([`crate::sim`]); PostgreSQL ([`PgSource`]) is the one real
//! implementation, and the tests run it against a real server.

mod postgres;
mod tls;
pub use self::postgres::{PgConnector, PgSource, SnapshotConnector, SourceConfig};
pub use self::tls::{SslMode, TlsConfig};

use crate::error::Result;
use crate::manifest::ConnectionInfo;
use crate::query::KeyRange;
use crate::types::Column;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

/// What one chunk reads: the table's resolved query, the columns it ships, and the
/// chunk's key range (or a row cap for test loads).
#[derive(Debug, Clone, Copy)]
pub struct ChunkQuery<'a> {
    /// The manifest's name of the table (for messages).
    pub table: &'a str,
    /// The resolved query (window or full table).
    pub query: &'a str,
    pub columns: &'a [Column],
    /// The key the range is over; `None` reads the whole query.
    pub key: Option<&'a crate::query::ChunkKey>,
    pub range: &'a KeyRange,
    pub limit: Option<u64>,
    /// JSON numbers with more digits fail the extraction (the warehouse's limit).
    pub json_number_digits: Option<u8>,
    /// Refuse array values whose dimensions differ from their list column's depth
    /// ([`crate::warehouse::Warehouse::fixed_list_depth`]).
    pub fixed_list_depth: bool,
    /// End every record with the record-end field (`1`, the last column).
    pub record_end: bool,
}

impl ChunkQuery<'_> {
    /// The exact `COPY` statement PostgreSQL runs for this chunk.
    pub fn copy_sql(&self) -> String {
        let wrapped = crate::query::wrap(
            self.query,
            &crate::types::projection(
                self.columns,
                self.json_number_digits,
                self.fixed_list_depth,
                self.record_end,
            ),
            self.key.map(|k| (k, self.range)),
            self.limit,
        );
        let first = self.columns.first().map(|c| c.name.quoted());
        crate::format::copy_statement(&wrapped, first.as_deref())
    }
}

/// A read connection to the source.
#[async_trait]
pub trait Source: Send + Sync {
    /// `postgres://user@host:port/db` (never a password).
    fn name(&self) -> String;
    /// Whether every chunk read through this source's connector reads one snapshot
    /// (an embedded run's exported snapshot). Only then can chunks be ranges of row
    /// locations ([`crate::query::ChunkKey::physical`]): an update moves a row to
    /// another location, so chunks read in different snapshots could each see it,
    /// or neither.
    fn shares_snapshot(&self) -> bool {
        false
    }
    /// This source as a side of `pgp verify`, when it can be one (PostgreSQL).
    fn reader(&self) -> Option<&dyn crate::verify::Reader> {
        None
    }
    /// The result columns of `query` (prepared, not run).
    async fn describe(&self, table: &str, query: &str) -> Result<Vec<Column>>;
    /// Where to cut the query's rows into ranges of `key` holding about
    /// `rows_per_range` rows each (at most [`crate::query::MAX_KEY_RANGES`] ranges),
    /// and whether some row has a NULL key.
    async fn key_splits(
        &self,
        table: &str,
        query: &str,
        key: &crate::query::ChunkKey,
        rows_per_range: u64,
    ) -> Result<crate::query::KeySplits>;
    /// The mean size in bytes of the query's rows, from a sample.
    async fn mean_row_bytes(&self, table: &str, query: &str) -> Result<Option<f64>>;
    /// Stream a chunk in the staged format ([`crate::format`]), one item per row.
    async fn copy_chunk(&self, chunk: &ChunkQuery<'_>)
        -> Result<BoxStream<'static, Result<Bytes>>>;
}

/// Opens source connections from a manifest's `connection_info`.
#[async_trait]
pub trait Connector: Send + Sync {
    async fn connect(&self, info: &ConnectionInfo) -> Result<Box<dyn Source>>;
}

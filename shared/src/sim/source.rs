//! The simulation's PostgreSQL: tables of `(id bigint, v text)` rows, keyed by the
//! query that reads them. Connecting and starting a COPY are step boundaries that may
//! fail transiently; a COPY may also break off half-way with a transient error, after
//! some rows were sent (a connection reset mid-stream).

use super::exec::{point, Sim, Strike};
use crate::error::{Error, ErrorKind, Result};
use crate::ident::Ident;
use crate::manifest::ConnectionInfo;
use crate::source::{ChunkQuery, Connector, Source};
use crate::types::{Column, ColumnType};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Rows of a simulated table.
pub type SimRows = Vec<(i64, String)>;

/// The simulated database: query text -> rows.
#[derive(Clone)]
pub struct SimSource {
    sim: Sim,
    tables: Arc<Mutex<BTreeMap<String, SimRows>>>,
}

fn transient(what: &str) -> Error {
    Error::Source {
        context: what.into(),
        message: "injected: server closed the connection unexpectedly".into(),
        kind: ErrorKind::Transient,
    }
}

impl SimSource {
    pub fn new(sim: Sim) -> Self {
        SimSource {
            sim,
            tables: Arc::default(),
        }
    }

    /// Serve `rows` for `query`.
    pub fn add(&self, query: &str, rows: SimRows) {
        self.tables
            .lock()
            .unwrap()
            .insert(query.trim().to_string(), rows);
    }

    /// Insert a row while the scenario runs (a source that changes under the run).
    pub fn insert(&self, query: &str, row: (i64, String)) {
        let mut t = self.tables.lock().unwrap();
        let rows = t.get_mut(query.trim()).expect("a scenario table");
        if !rows.iter().any(|r| r.0 == row.0) {
            rows.push(row);
            rows.sort();
        }
    }

    /// The rows now.
    pub fn snapshot(&self, query: &str) -> SimRows {
        self.tables.lock().unwrap()[query.trim()].clone()
    }

    fn rows(&self, table: &str, query: &str) -> Result<SimRows> {
        self.tables
            .lock()
            .unwrap()
            .get(query.trim())
            .cloned()
            .ok_or_else(|| Error::Source {
                context: format!("table `{table}`"),
                message: "relation does not exist (SQLSTATE 42P01)".into(),
                kind: ErrorKind::Permanent,
            })
    }

    async fn op(&self, what: &str) -> Option<Strike> {
        point(&self.sim).await;
        let mut s = self.sim.lock().unwrap();
        s.note(format!("pg {what}"));
        s.strike()
    }
}

#[async_trait]
impl Connector for SimSource {
    async fn connect(&self, _info: &ConnectionInfo) -> Result<Box<dyn Source>> {
        if self.op("connect").await.is_some() {
            return Err(transient("connect"));
        }
        Ok(Box::new(self.clone()))
    }
}

#[async_trait]
impl Source for SimSource {
    fn name(&self) -> String {
        "postgres://sim@sim:5432/sim".into()
    }

    async fn describe(&self, table: &str, query: &str) -> Result<Vec<Column>> {
        if self.op("describe").await.is_some() {
            return Err(transient("describe"));
        }
        self.rows(table, query)?;
        Ok(vec![
            Column {
                name: Ident::parse("column", "id")?,
                ty: ColumnType::BigInt,
                pg_type: "bigint".into(),
            },
            Column {
                name: Ident::parse("column", "v")?,
                ty: ColumnType::Text,
                pg_type: "text".into(),
            },
        ])
    }

    async fn key_splits(
        &self,
        table: &str,
        query: &str,
        _key: &crate::query::ChunkKey,
        rows_per_range: u64,
    ) -> Result<crate::query::KeySplits> {
        if self.op("key splits").await.is_some() {
            return Err(transient("key splits"));
        }
        // As PostgreSQL's exact splits: every `rows_per_range`th key by rank.
        let mut ids: Vec<i64> = self.rows(table, query)?.iter().map(|r| r.0).collect();
        ids.sort_unstable();
        ids.dedup();
        let step = rows_per_range.max(1) as usize;
        Ok(crate::query::KeySplits {
            bounds: ids
                .iter()
                .enumerate()
                .filter(|(i, _)| *i > 0 && i % step == 0)
                .map(|(_, id)| crate::query::KeyBound(vec![id.to_string()]))
                .collect(),
            nulls: false,
            nullable: true,
            method: crate::query::SplitMethod::Sorted,
        })
    }

    async fn mean_row_bytes(&self, table: &str, query: &str) -> Result<Option<f64>> {
        let rows = self.rows(table, query)?;
        Ok((!rows.is_empty()).then_some(16.0))
    }

    async fn copy_chunk(
        &self,
        chunk: &ChunkQuery<'_>,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let strike = self.op("copy").await;
        if strike == Some(Strike::Before) {
            return Err(transient("copy"));
        }
        let r = chunk.range;
        let mut rows: Vec<Result<Bytes>> = self
            .rows(chunk.table, chunk.query)?
            .into_iter()
            .filter(|(id, _)| {
                let at =
                    |b: &crate::query::KeyBound| b.0[0].parse::<i64>().expect("an integer key");
                r.lo.as_ref().is_none_or(|lo| *id >= at(lo))
                    && r.hi.as_ref().is_none_or(|hi| *id < at(hi))
            })
            .take(chunk.limit.map(|l| l as usize).unwrap_or(usize::MAX))
            .map(|(id, v)| Ok(Bytes::from(format!("{id}\t{v}\n"))))
            .collect();
        if strike == Some(Strike::After) {
            // The connection breaks half-way through the stream.
            rows.truncate(rows.len() / 2);
            rows.push(Err(transient("COPY stream")));
        }
        Ok(futures::stream::iter(rows).boxed())
    }
}

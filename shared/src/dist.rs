//! One table's run as the Cloud Run services share it: the planner writes it to the
//! bucket, each extractor reads its chunk's COPY from it, each loader reads the stage,
//! schema and chunk list from it.
//!
//! The record is the planner's decision, frozen: chunk messages carry only the run id,
//! the table and a chunk number, never SQL, so a forged or garbled message cannot make
//! an extractor run anything the planner did not plan. Every step below is the same
//! function `pgp tap` runs in-process (`extract_chunk`, `load_chunk`, `publish`).

use crate::error::{Error, Result};
use crate::extract::{extract_chunk, Destination, Extracted, ProgressFn};
use crate::format::Compression;
use crate::ident::TableName;
use crate::manifest::ConnectionInfo;
use crate::plan::{Action, LoadType, Mode, TablePlan};
use crate::query::KeyRange;
use crate::run::{chunk_copy_sql, chunk_metadata, object_key, publish, RunOptions};
use crate::source::PgSource;
use crate::storage::{ObjectKey, ObjectStore};
use crate::warehouse::{Loaded, Published, RunMeta, TableSchema, Warehouse};

/// Where run records live in the bucket (the loader ignores these objects).
pub const RUNS_PREFIX: &str = "_pgp_runs/";

/// One chunk of a table's run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkSpec {
    pub index: usize,
    pub range: KeyRange,
    /// The object the chunk is staged as.
    pub object: ObjectKey,
    /// The exact COPY statement of the chunk.
    pub copy_sql: String,
}

/// A table's planned run, as stored at [`TableRun::key`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableRun {
    pub run_id: String,
    pub load_type: LoadType,
    /// The manifest's name of the table.
    pub table: String,
    pub target: TableName,
    /// The stage, `_TEMP` or scratch table chunks load into.
    pub load: TableName,
    pub mode: Mode,
    pub schema: TableSchema,
    pub meta: RunMeta,
    pub compression: Compression,
    /// Names of the environment variables with the source connection (no secrets).
    pub connection_info: ConnectionInfo,
    /// Whether the load table already held rows from an interrupted re-sync (then the
    /// planner did not recreate it).
    pub resumed: bool,
    pub chunks: Vec<ChunkSpec>,
}

impl TableRun {
    /// The record's object name: `_pgp_runs/<run id>/<table>.json`.
    pub fn key(run_id: &str, table: &str) -> Result<ObjectKey> {
        ObjectKey::parse(&format!("{RUNS_PREFIX}{run_id}/{table}.json"))
    }

    /// The record of a loading plan; `None` for plans that load nothing (skipped,
    /// failed, or needing a backfill that this load type does not run).
    pub fn from_plan(
        plan: &TablePlan,
        opts: &RunOptions,
        connection_info: &ConnectionInfo,
    ) -> Result<Option<Self>> {
        let loads =
            matches!(plan.action, Action::Load | Action::Backfill) && plan.mode != Mode::None;
        if !loads {
            return Ok(None);
        }
        let (Some(schema), Some(target), Some(load)) = (
            plan.schema.clone(),
            plan.target_name.clone(),
            plan.load_name.clone(),
        ) else {
            return Err(Error::Unsupported {
                table: plan.table.clone(),
                message: "a loading plan lacks its schema or tables".into(),
            });
        };
        let n = plan.chunks.len();
        let mut chunks = Vec::with_capacity(n);
        for (i, range) in plan.chunks.iter().enumerate() {
            chunks.push(ChunkSpec {
                index: i,
                range: *range,
                object: object_key(&target, &opts.run_id, i, opts.compression)?,
                copy_sql: chunk_copy_sql(plan, range)?,
            });
        }
        Ok(Some(TableRun {
            run_id: opts.run_id.clone(),
            load_type: opts.load_type,
            table: plan.table.clone(),
            target,
            load,
            mode: plan.mode,
            schema,
            meta: RunMeta {
                run_id: opts.run_id.clone(),
                uploaded_at: opts.started_at,
                task_instance: opts.params.task_instance.clone(),
            },
            compression: opts.compression,
            connection_info: connection_info.clone(),
            resumed: plan.resume_after.is_some(),
            chunks,
        }))
    }

    pub fn chunk(&self, i: usize) -> Result<&ChunkSpec> {
        self.chunks.get(i).ok_or_else(|| Error::Unsupported {
            table: self.table.clone(),
            message: format!(
                "run {} has {} chunks, not chunk {i}",
                self.run_id,
                self.chunks.len()
            ),
        })
    }

    /// Stream chunk `i` from PostgreSQL into its object.
    pub async fn extract(
        &self,
        i: usize,
        src: &PgSource,
        store: &dyn ObjectStore,
        progress: ProgressFn<'_>,
    ) -> Result<Extracted> {
        let c = self.chunk(i)?;
        let dest = Destination {
            store,
            key: &c.object,
            compression: self.compression,
            metadata: chunk_metadata(&self.run_id, &self.table, i, self.chunks.len(), &c.range),
        };
        extract_chunk(src, &self.table, &c.copy_sql, dest, progress).await
    }

    /// Load chunk `i` into the load table and check its count against the rows
    /// PostgreSQL sent (`source_rows`, from the object's metadata).
    pub async fn load(&self, wh: &dyn Warehouse, i: usize, source_rows: u64) -> Result<Loaded> {
        let c = self.chunk(i)?;
        crate::run::load_chunk(
            wh,
            &self.table,
            &format!("{i} {}", c.range),
            &self.load,
            &self.schema,
            &self.meta,
            &c.object,
            self.compression,
            source_rows,
        )
        .await
    }

    /// Whether every chunk of the run is in the load ledger.
    pub async fn complete(&self, wh: &dyn Warehouse) -> Result<bool> {
        let loaded = wh.loaded_objects(&self.load, &self.run_id).await?;
        Ok(self
            .chunks
            .iter()
            .all(|c| loaded.iter().any(|(o, _)| o == c.object.as_str())))
    }

    /// Make the run visible: one atomic append or swap (once per run), or for a test
    /// load, count the scratch table.
    pub async fn publish(&self, wh: &dyn Warehouse) -> Result<Published> {
        publish(wh, self.mode, &self.load, &self.target, &self.run_id).await
    }
}

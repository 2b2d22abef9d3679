//! What the steps hand each other: the run record a planner freezes in the bucket, the
//! chunk task on the extract topic, and the names and metadata of staged objects.
//!
//! The record is the planner's decision, frozen: a chunk task carries the run id, the
//! table, a chunk number and its key range (typed values, never SQL), so a forged or
//! garbled message cannot make an extractor run anything the planner did not plan.
//! Every step reads O(1) bytes of it per chunk: the header (query, schema, tables) is
//! one small object whatever the chunk count; the list of ranges is a separate object
//! only a planner resuming the run reads.

use crate::error::{Error, ErrorKind, Result};
use crate::format::Compression;
use crate::ident::TableName;
use crate::manifest::ConnectionInfo;
use crate::plan::{LoadType, Mode};
use crate::query::KeyRange;
use crate::storage::{Metadata, ObjectInfo, ObjectKey, ObjectStore, ObjectStoreExt};
use crate::warehouse::{RunMeta, TableSchema};
use sha2::Digest;

/// Where run records live in the bucket (the loader ignores these objects).
pub const RUNS_PREFIX: &str = "_pgp_runs/";

/// A table's planned run, frozen by the planner at [`RunHeader::key`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunHeader {
    pub run_id: String,
    pub load_type: LoadType,
    /// The manifest's name of the table.
    pub table: String,
    /// Where the run becomes visible: the target, or the scratch table of a test load.
    pub target: TableName,
    /// The table chunks load into; it belongs to this run alone.
    pub load_table: TableName,
    pub mode: Mode,
    pub schema: TableSchema,
    pub meta: RunMeta,
    pub compression: Compression,
    /// Names of the environment variables with the source connection (no secrets).
    pub connection_info: ConnectionInfo,
    /// The resolved query every chunk reads.
    pub query: String,
    /// The key chunk ranges are over (`None`: one chunk, the whole query).
    pub key: Option<crate::query::ChunkKey>,
    /// Row cap of a test load.
    pub limit: Option<u64>,
    /// How many chunks the run has.
    pub chunks: u32,
    /// The object holding the chunks' key ranges (read only by a planner resuming).
    pub ranges: ObjectKey,
    /// What the run loads (see [`fingerprint`]): a later request resumes this run only
    /// if it would load exactly the same.
    pub fingerprint: String,
    /// The warehouse's limit on JSON number digits, checked while extracting
    /// ([`crate::warehouse::Warehouse::json_number_digits`]).
    #[serde(default)]
    pub json_number_digits: Option<u8>,
    /// Whether each staged record ends with the record-end field
    /// ([`crate::warehouse::Warehouse::record_end_marker`]).
    #[serde(default)]
    pub record_end: bool,
    /// Whether array values must have their list column's depth
    /// ([`crate::warehouse::Warehouse::fixed_list_depth`]).
    #[serde(default = "fixed_list_depth_default")]
    pub fixed_list_depth: bool,
}

/// Records written before the field existed were checked as fixed-depth.
fn fixed_list_depth_default() -> bool {
    true
}

/// The prefix of every staged object of a run of `target`: `<schema>/<table>/<run>/`.
pub fn run_objects_prefix(target: &TableName, run_id: &str) -> String {
    format!(
        "{}/{}/{}/",
        target.schema,
        target.table,
        crate::plan::stage_suffix(run_id)
    )
}

/// What the record at a run's key holds: the run itself, or (when a request resumed
/// an earlier run instead of starting its own) the id of the run it resumed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunFile {
    Run(Box<RunHeader>),
    Resumes {
        run_id: String,
    },
    /// The request's decision to load nothing for this table (its target was up to
    /// date, or needs a backfill first), recorded so that a concurrent delivery of the
    /// same request cannot record a run that no message would then drive to its end.
    Skipped {
        reason: String,
    },
}

impl RunHeader {
    /// The record's object name: `_pgp_runs/<run id>/<table>.json`.
    pub fn key(run_id: &str, table: &str) -> Result<ObjectKey> {
        ObjectKey::parse(&format!("{RUNS_PREFIX}{run_id}/{table}.json"))
    }

    /// The prefix of every object of a chunk: `<schema>/<table>/<run>/<chunk>.`.
    pub fn chunk_prefix(&self, chunk: u32) -> String {
        format!(
            "{}/{}/{}/{:05}.",
            self.target.schema,
            self.target.table,
            crate::plan::stage_suffix(&self.run_id),
            chunk
        )
    }

    /// The prefix of every object of the run.
    pub fn run_prefix(&self) -> String {
        run_objects_prefix(&self.target, &self.run_id)
    }

    /// The object one extraction attempt writes: `<chunk prefix><attempt>.tsv[.gz]`.
    /// Every attempt has its own name, so an object never changes once finalized and
    /// each finalize event names exactly the bytes it announces.
    pub fn object_key(&self, chunk: u32, attempt: &str) -> Result<ObjectKey> {
        ObjectKey::parse(&format!(
            "{}{attempt}.{}",
            self.chunk_prefix(chunk),
            self.compression.suffix()
        ))
    }

    /// The run's row in the warehouse's run table, as planned.
    pub fn run_record(&self) -> crate::warehouse::RunRecord {
        crate::warehouse::RunRecord::planned(
            &self.target,
            &self.run_id,
            &self.load_table,
            super::plan::mode_name(self.mode),
            self.chunks as u64,
            &self.fingerprint,
        )
    }

    /// Check a task against the record it names.
    pub fn check_chunk(&self, chunk: u32, chunks: u32) -> Result<()> {
        if chunk >= self.chunks || chunks != self.chunks {
            return Err(Error::Run {
                run_id: self.run_id.clone(),
                target: self.target.to_string(),
                message: format!(
                    "chunk {chunk} of {chunks} does not fit the run's {} chunks",
                    self.chunks
                ),
            });
        }
        Ok(())
    }
}

/// A digest of what a run loads: target, mode, schema, query, key and row cap.
pub fn fingerprint(
    target: &TableName,
    mode: Mode,
    schema: &TableSchema,
    query: &str,
    key: Option<&crate::query::ChunkKey>,
    limit: Option<u64>,
) -> String {
    let text = serde_json::json!({
        "target": target, "mode": mode, "schema": schema, "query": query,
        "key": key, "limit": limit,
    })
    .to_string();
    let d = sha2::Sha256::digest(text.as_bytes());
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Read the record at `key`: `None` when absent.
pub async fn read_run_file(store: &dyn ObjectStore, key: &ObjectKey) -> Result<Option<RunFile>> {
    if store.head(key).await?.is_none() {
        return Ok(None);
    }
    let bytes = match store.get(key).await {
        Ok(b) => b,
        // Deleted between the two calls (a garbage collection): as absent.
        Err(e) if e.kind() == ErrorKind::Permanent => return Ok(None),
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        Error::storage(
            key.as_str(),
            format!("run record is unreadable: {e}"),
            ErrorKind::Permanent,
        )
    })
}

/// The run header a task or object names (`run_id`, `table`), following nothing: a
/// task always names the run that owns the chunk.
pub async fn read_header(store: &dyn ObjectStore, run_id: &str, table: &str) -> Result<RunHeader> {
    let key = RunHeader::key(run_id, table)?;
    match read_run_file(store, &key).await? {
        Some(RunFile::Run(h)) => Ok(*h),
        Some(RunFile::Resumes { run_id: other }) => Err(Error::Run {
            run_id: run_id.to_string(),
            target: table.to_string(),
            message: format!("this request resumed run {other}; its chunks run under that id"),
        }),
        Some(RunFile::Skipped { reason }) => Err(Error::Run {
            run_id: run_id.to_string(),
            target: table.to_string(),
            message: format!("this request loads nothing for the table: {reason}"),
        }),
        None => Err(Error::Run {
            run_id: run_id.to_string(),
            target: table.to_string(),
            message: format!("no run record {key}"),
        }),
    }
}

/// Store the record at `key` unless one is there; returns the record that is there
/// afterwards (ours, or the one another planner stored first).
pub async fn create_run_file(
    store: &dyn ObjectStore,
    key: &ObjectKey,
    file: &RunFile,
) -> Result<RunFile> {
    let body = serde_json::to_vec_pretty(file).expect("a run record serializes");
    match store
        .put_if_absent(key, body.into(), Metadata::new())
        .await?
    {
        Some(_) => Ok(file.clone()),
        None => read_run_file(store, key).await?.ok_or_else(|| {
            Error::storage(
                key.as_str(),
                "run record vanished right after another planner wrote it",
                ErrorKind::Transient,
            )
        }),
    }
}

/// One chunk to extract: the data of a message on the extract topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkTask {
    pub run_id: String,
    /// The manifest's name of the table.
    pub table: String,
    pub chunk: u32,
    pub chunks: u32,
    /// The chunk's key range.
    pub range: KeyRange,
}

impl ChunkTask {
    /// The message: JSON data, and attributes for filtering.
    pub fn to_message(&self) -> crate::queue::Outgoing {
        crate::queue::Outgoing {
            data: serde_json::to_vec(self).expect("a task serializes"),
            attributes: [
                ("run_id".to_string(), self.run_id.clone()),
                ("table".to_string(), self.table.clone()),
                ("chunk".to_string(), self.chunk.to_string()),
            ]
            .into(),
        }
    }
}

/// What the loader learns from an object's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkObject {
    pub key: ObjectKey,
    pub run_id: String,
    pub table: String,
    pub chunk: u32,
    pub chunks: u32,
    /// Rows PostgreSQL sent for it.
    pub rows: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Set on the object an extractor leaves when the chunk cannot be extracted at all
    /// (a permanent error): the loader ends the run with this reason.
    pub failed: Option<String>,
    /// What the extractor measured of the chunk's columns ([`crate::profile`]);
    /// `None` for an object without one (written by an earlier pgp, or whose records
    /// the extractor could not read as CSV): its chunk is checked by count only.
    pub profile: Option<crate::profile::Profile>,
    /// Bytes of its longest record ([`crate::warehouse::Staged::longest_row`]); `None`
    /// for an object written by an earlier pgp.
    pub longest_row: Option<u64>,
}

impl ChunkObject {
    /// The chunk an object holds, from its metadata; `Ok(None)` for objects that are no
    /// chunk (run records, uploads in flight, anything without pgp's metadata).
    pub fn from_info(info: &ObjectInfo) -> Result<Option<Self>> {
        let name = info.key.as_str();
        if name.starts_with(RUNS_PREFIX) || name.starts_with(crate::storage::UPLOAD_PREFIX) {
            return Ok(None);
        }
        let md = |k: &str| info.metadata.get(k).cloned();
        let failed = md("error");
        let rows = md("rows").or_else(|| failed.as_ref().map(|_| "0".to_string()));
        let (Some(run_id), Some(table), Some(chunk), Some(chunks), Some(rows)) =
            (md("run_id"), md("table"), md("chunk"), md("chunks"), rows)
        else {
            return Ok(None);
        };
        let bad = |what: &str| Error::Run {
            run_id: run_id.clone(),
            target: table.clone(),
            message: format!("object {name}: metadata `{what}` is not a number"),
        };
        let longest_row = md(LONGEST_ROW_KEY)
            .map(|v| v.parse().map_err(|_| bad(LONGEST_ROW_KEY)))
            .transpose()?;
        Ok(Some(ChunkObject {
            key: info.key.clone(),
            chunk: chunk.parse().map_err(|_| bad("chunk"))?,
            chunks: chunks.parse().map_err(|_| bad("chunks"))?,
            rows: rows.parse().map_err(|_| bad("rows"))?,
            size: info.size,
            run_id,
            table,
            failed,
            profile: md(crate::profile::METADATA_KEY)
                .and_then(|p| crate::profile::Profile::decode(&p)),
            longest_row,
        }))
    }
}

/// The object metadata that holds the bytes of a chunk's longest record.
pub const LONGEST_ROW_KEY: &str = "longest_row";

/// The metadata an extraction stores with a chunk's object (`rows` and
/// [`LONGEST_ROW_KEY`] are added when the object is complete).
pub fn chunk_metadata(h: &RunHeader, task: &ChunkTask, attempt: &str) -> Metadata {
    let mut md = Metadata::new();
    md.insert("run_id".into(), h.run_id.clone());
    md.insert("table".into(), h.table.clone());
    md.insert("chunk".into(), task.chunk.to_string());
    md.insert("chunks".into(), h.chunks.to_string());
    md.insert("range".into(), task.range.to_string());
    md.insert("attempt".into(), attempt.to_string());
    md
}

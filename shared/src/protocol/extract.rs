//! Step 2, the extractor: a chunk task in, one finalized object out.
//!
//! It reads the run's header (one small object), connects to PostgreSQL with the
//! manifest's `connection_info` variables and streams the chunk's COPY into a new
//! object named for this attempt. Objects are never overwritten: each finalize event
//! announces exactly the bytes it names, and the loader's count check compares the rows
//! of that very object. A task whose chunk already has an object (a redelivery, or a
//! resumed run whose finalize event was lost) copies that object to a new attempt name
//! instead of reading PostgreSQL again: the copy is finalized, so the loader hears of
//! the chunk once more, and it is a no-op there if the chunk was loaded.

use super::record::{chunk_metadata, read_header, ChunkTask};
use super::Parts;
use crate::error::Result;
use crate::extract::{extract_chunk, Destination, Extracted, ProgressFn};
use crate::source::ChunkQuery;
use crate::storage::{ObjectInfo, ObjectKey, ObjectStoreExt};
use bytes::Bytes;

/// What an extraction did.
#[derive(Debug, Clone)]
pub enum ExtractOutcome {
    /// Read from PostgreSQL into a new object.
    Extracted {
        object: ObjectInfo,
        stats: Extracted,
    },
    /// The chunk had an object; it was copied to a new name to announce it again.
    Reannounced { object: ObjectInfo },
    /// The chunk cannot be extracted (a permanent error): an object saying so was left
    /// in its place, so that the loader ends the run with the reason.
    Failed { object: ObjectInfo, reason: String },
}

impl ExtractOutcome {
    pub fn object(&self) -> &ObjectInfo {
        match self {
            ExtractOutcome::Extracted { object, .. }
            | ExtractOutcome::Reannounced { object }
            | ExtractOutcome::Failed { object, .. } => object,
        }
    }
}

/// Step 2.
pub async fn extract_step(
    parts: &Parts,
    task: &ChunkTask,
    progress: ProgressFn<'_>,
) -> Result<ExtractOutcome> {
    let h = read_header(parts.store.as_ref(), &task.run_id, &task.table).await?;
    h.check_chunk(task.chunk, task.chunks)?;
    let store = parts.store.as_ref();
    let done = store.list(&h.chunk_prefix(task.chunk)).await?;
    if let Some(earlier) = done.iter().rev().find(|o| o.metadata.contains_key("rows")) {
        let attempt = parts.ids.fresh();
        let key = h.object_key(task.chunk, &attempt)?;
        let mut md = earlier.metadata.clone();
        md.insert("attempt".into(), attempt);
        let object = store.copy(&earlier.key, &key, md).await?;
        tracing::info!(from = %earlier.key, to = %key, "chunk already extracted; announced again");
        return Ok(ExtractOutcome::Reannounced { object });
    }
    match extract_new(parts, &h, task, progress).await {
        Ok(out) => Ok(out),
        Err(e) if !e.is_retriable() => {
            // Retrying cannot help; the extractor has no warehouse to record that in,
            // so it says so with an object in the chunk's place, which the loader hears
            // of like any other and turns into the run's end.
            let reason: String = e.to_string().chars().take(1000).collect();
            let key = ObjectKey::parse(&format!(
                "{}{}.failed",
                h.chunk_prefix(task.chunk),
                parts.ids.fresh()
            ))?;
            let mut md = chunk_metadata(&h, task, "failed");
            md.insert("error".into(), reason.clone());
            let object = store.put(&key, Bytes::new(), md).await?;
            tracing::error!(object = %key, %reason, "chunk cannot be extracted");
            Ok(ExtractOutcome::Failed { object, reason })
        }
        Err(e) => Err(e),
    }
}

/// Read the chunk from PostgreSQL into a new object.
async fn extract_new(
    parts: &Parts,
    h: &super::RunHeader,
    task: &ChunkTask,
    progress: ProgressFn<'_>,
) -> Result<ExtractOutcome> {
    let store = parts.store.as_ref();
    let src = parts.sources.connect(&h.connection_info).await?;
    let attempt = parts.ids.fresh();
    let key = h.object_key(task.chunk, &attempt)?;
    let chunk = ChunkQuery {
        table: &h.table,
        query: &h.query,
        columns: &h.schema.columns,
        key: h.key.as_ref(),
        range: &task.range,
        limit: h.limit,
        json_number_digits: h.json_number_digits,
        fixed_list_depth: h.fixed_list_depth,
        record_end: h.record_end,
    };
    let dest = Destination {
        store,
        key: &key,
        compression: h.compression,
        metadata: chunk_metadata(h, task, &attempt),
    };
    let (stats, object) = extract_chunk(src.as_ref(), &chunk, dest, progress).await?;
    Ok(ExtractOutcome::Extracted { object, stats })
}

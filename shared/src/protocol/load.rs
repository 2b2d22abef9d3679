//! Step 3, the loader: an object-finalize event in; the chunk loaded; the run published
//! when its ledger is complete.
//!
//! Per event, whatever the run's size: one read of the run header, and a fixed number
//! of statements (begin; is the chunk loaded; COPY; profile; ledger row; commit; for a
//! swap, the chunk's build ([`super::build`]); begin; ledger summary; rollback). The
//! COPY, the count and profile checks and the ledger row commit together or not at
//! all: a count or a column measure ([`crate::profile`]) that differs from what the
//! extractor sent rolls the rows back before anything else sees them.
//! Two loaders handling one object both commit (nothing can stop them in Snowflake);
//! each stamps its rows with its own load id, and the publish takes one of them.

use super::build::{build, BUILD_BUDGET};
use super::publish::{abandon, finish_run, read_summary, run_state, Finished};
use super::record::{read_header, ChunkObject};
use super::Parts;
use crate::error::{Error, Result};
use crate::plan::Mode;
use crate::storage::ObjectInfo;
use crate::warehouse::{LoadRecord, RunState, Staged};

/// What a loader did with an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    /// Not a chunk of a run (a run record, an upload in flight, a foreign object).
    Ignored(String),
    /// The chunk is in the run's load table (`already`: by an earlier attempt); the run
    /// still misses chunks.
    Loaded { rows: u64, already: bool },
    /// This was the last chunk: the run is finished.
    Finished(Finished),
}

/// Step 3.
pub async fn load_step(parts: &Parts, info: &ObjectInfo) -> Result<LoadOutcome> {
    let Some(c) = ChunkObject::from_info(info)? else {
        return Ok(LoadOutcome::Ignored(format!(
            "{} carries no pgp chunk metadata",
            info.key
        )));
    };
    let h = read_header(parts.store.as_ref(), &c.run_id, &c.table).await?;
    if !c.key.as_str().starts_with(&h.chunk_prefix(c.chunk)) {
        return Ok(LoadOutcome::Ignored(format!(
            "{} is not an object of chunk {} of run {}",
            c.key, c.chunk, h.run_id
        )));
    }
    h.check_chunk(c.chunk, c.chunks)?;
    let wh = parts.wh()?;
    if let Some(reason) = &c.failed {
        let reason = format!("chunk {} could not be extracted: {reason}", c.chunk);
        return Ok(LoadOutcome::Finished(abandon(parts, &h, &reason).await?));
    }

    let mut txn = wh.begin().await?;
    let loaded = match txn.chunk_loaded(&h.load_table, &h.run_id, c.chunk).await {
        Ok(l) => l,
        Err(e) => {
            let _ = txn.rollback().await;
            return Err(e);
        }
    };
    let (rows, already) = match loaded {
        Some(load) => {
            txn.rollback().await?;
            (load.rows, true)
        }
        None => {
            let load_id = parts.ids.fresh();
            let copied = if is_empty_object(&c) {
                // An empty window or range: nothing to copy. Recorded like any load, so
                // the chunk counts as done; no COPY runs (what a warehouse answers for
                // a file without records is its own business: Snowflake reports the
                // file as loaded with 0 rows or as skipped, depending on the path).
                Ok(0)
            } else {
                txn.copy_into(
                    &h.load_table,
                    &h.schema,
                    &h.meta,
                    Staged {
                        key: &c.key,
                        compression: h.compression,
                        longest_row: c.longest_row,
                    },
                    &load_id,
                )
                .await
            };
            let checked = copied.and_then(|n| {
                if n == c.rows {
                    Ok(n)
                } else {
                    Err(Error::CountMismatch {
                        table: h.table.clone(),
                        chunk: format!("{} ({})", c.chunk, c.key),
                        source_rows: c.rows,
                        loaded_rows: n,
                    })
                }
            });
            // The loaded rows' profile against the extractor's, in the same
            // transaction: a difference rolls the rows back with the count's.
            let checked = match (checked, &c.profile) {
                (Ok(n), Some(sent)) if n > 0 => {
                    match txn.profile(&h.load_table, &h.schema, &load_id).await {
                        Ok(loaded) => match sent.difference(&loaded, &h.schema.columns) {
                            None => Ok(n),
                            Some(d) => Err(Error::ProfileMismatch {
                                table: h.table.clone(),
                                chunk: format!("{} ({})", c.chunk, c.key),
                                difference: d.to_string(),
                            }),
                        },
                        Err(e) => Err(e),
                    }
                }
                (checked, _) => checked,
            };
            let n = match checked {
                Ok(n) => n,
                Err(e) => {
                    let _ = txn.rollback().await;
                    return fail_chunk(parts, &h, e).await;
                }
            };
            let record = LoadRecord {
                load_table: h.load_table.clone(),
                run_id: h.run_id.clone(),
                chunk: c.chunk,
                object: c.key.to_string(),
                load_id,
                rows: n,
            };
            if let Err(e) = txn.record_load(&record).await {
                let _ = txn.rollback().await;
                return Err(e);
            }
            txn.commit().await?;
            (n, false)
        }
    };

    // A swap builds its table as chunks arrive (a few chunks per event, one bounded
    // statement each), so that the publish does not copy the whole run at once
    // (module `build`); a serial warehouse swaps its load table in and builds nothing.
    if matches!(h.mode, Mode::Swap | Mode::Test) && !wh.serial() {
        if let Err(e) = build(parts, &h, BUILD_BUDGET).await {
            return fail_chunk(parts, &h, e).await;
        }
    }

    if read_summary(parts, &h.load_table, &h.run_id).await?.chunks < h.chunks as u64 {
        return Ok(LoadOutcome::Loaded { rows, already });
    }
    Ok(LoadOutcome::Finished(finish_run(parts, &h).await?))
}

/// A chunk failed to load. A permanent failure (bad data, a count mismatch, a load
/// table dropped because the run was published or retired) ends the run with that
/// reason, unless it has ended already, in which case the event is just late.
async fn fail_chunk(parts: &Parts, h: &super::RunHeader, e: Error) -> Result<LoadOutcome> {
    if e.is_retriable() {
        return Err(e);
    }
    match run_state(parts, h).await? {
        Some(run) if run.state == RunState::Published => {
            Ok(LoadOutcome::Finished(Finished::AlreadyPublished {
                rows: run.rows.unwrap_or(0),
            }))
        }
        Some(run) if run.state == RunState::Abandoned => {
            Ok(LoadOutcome::Finished(Finished::Abandoned {
                reason: run.reason.unwrap_or_default(),
            }))
        }
        _ => {
            abandon(parts, h, &format!("a chunk failed to load: {e}")).await?;
            Err(e)
        }
    }
}

/// The largest object that can hold no rows: a gzip stream of nothing is 20 bytes (a
/// member header and trailer), an uncompressed one 0. An object that says it has no
/// rows but is larger goes through COPY, whose count then shows what it held.
const EMPTY_OBJECT_MAX_BYTES: u64 = 32;

/// An object its extractor wrote with no rows, small enough to hold none.
fn is_empty_object(c: &super::record::ChunkObject) -> bool {
    c.rows == 0 && c.size <= EMPTY_OBJECT_MAX_BYTES
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_empty_gzip_stream_fits_the_empty_object_bound() {
        // The extractor's encoder (crate::extract), fed nothing.
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let bytes = gz.finish().unwrap();
        assert!(
            bytes.len() as u64 <= super::EMPTY_OBJECT_MAX_BYTES,
            "{}",
            bytes.len()
        );
    }
}

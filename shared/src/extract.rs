//! Extraction of one chunk: `COPY (query) TO STDOUT` streamed into one staged object,
//! gzip-compressed on its own thread, with bounded memory whatever the table size.
//!
//! Rows are batched into ~1 MiB buffers; at most a few buffers are in flight between
//! the PostgreSQL reader, the compressor and the object writer (bounded channels), so
//! memory stays flat. The row count is PostgreSQL's own: one CopyData message per row.
//! Each row also feeds the chunk's profile ([`crate::profile`]), stored with the object
//! for the loader to compare with what the warehouse loaded.
//! On any error the writer is aborted and no object appears.

use crate::error::{Error, Result};
use crate::format::Compression;
use crate::profile::{disabled_for_bench, Profiler};
use crate::source::{ChunkQuery, Source};
use crate::storage::{Metadata, ObjectInfo, ObjectKey, ObjectStore};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::io::Write;
use tokio::sync::mpsc;

const BATCH: usize = 1 << 20;
const IN_FLIGHT: usize = 4;

/// What one chunk's extraction produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extracted {
    /// Rows PostgreSQL sent.
    pub rows: u64,
    /// Uncompressed bytes PostgreSQL sent.
    pub bytes: u64,
    /// Bytes of the staged object.
    pub object_bytes: u64,
    /// Bytes of the longest row PostgreSQL sent (with its line end).
    pub longest_row: u64,
}

/// Called after each batch with the running (rows, uncompressed bytes) of the chunk.
pub type ProgressFn<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// A `Write` that hands compressed output to the writer task in ~1 MiB pieces.
struct ChannelSink {
    buf: Vec<u8>,
    tx: mpsc::Sender<Bytes>,
}

impl ChannelSink {
    fn flush_buf(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let out = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH)));
            self.tx.blocking_send(out).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "object writer stopped")
            })?;
        }
        Ok(())
    }
}

impl Write for ChannelSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BATCH {
            self.flush_buf()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A blocking task that compresses raw batches into `out` with the encoder `new` makes
/// (`finish` ends its stream); returns the sender of raw batches and the task.
fn spawn_compressor<E: Write + Send + 'static>(
    out: mpsc::Sender<Bytes>,
    new: impl FnOnce(ChannelSink) -> std::io::Result<E> + Send + 'static,
    finish: fn(E) -> std::io::Result<ChannelSink>,
) -> (
    mpsc::Sender<Bytes>,
    Option<tokio::task::JoinHandle<std::io::Result<()>>>,
) {
    let (raw_tx, mut raw_rx) = mpsc::channel::<Bytes>(IN_FLIGHT);
    let handle = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut enc = new(ChannelSink {
            buf: Vec::with_capacity(BATCH),
            tx: out,
        })?;
        while let Some(b) = raw_rx.blocking_recv() {
            enc.write_all(&b)?;
        }
        finish(enc)?.flush_buf()
    });
    (raw_tx, Some(handle))
}

/// Where one chunk's object goes.
pub struct Destination<'a> {
    pub store: &'a dyn ObjectStore,
    /// The object's deterministic name (a retry overwrites it).
    pub key: &'a ObjectKey,
    pub compression: Compression,
    /// Stored with the object, plus `rows` and the longest row's bytes
    /// ([`crate::protocol::record::LONGEST_ROW_KEY`]).
    pub metadata: Metadata,
}

/// Stream one chunk from `src` into the destination object; returns the counts and the
/// finished object. On any error nothing is finalized.
pub async fn extract_chunk(
    src: &dyn Source,
    chunk: &ChunkQuery<'_>,
    dest: Destination<'_>,
    progress: ProgressFn<'_>,
) -> Result<(Extracted, ObjectInfo)> {
    let Destination {
        store,
        key,
        compression,
        mut metadata,
    } = dest;
    let mut writer = store.writer(key).await?;
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(IN_FLIGHT);

    // The compressor (or a pass-through) between raw batches and the writer.
    let (raw_tx, compressor) = match compression {
        Compression::Gzip => spawn_compressor(
            out_tx.clone(),
            |sink| {
                Ok(flate2::write::GzEncoder::new(
                    sink,
                    flate2::Compression::fast(),
                ))
            },
            |gz| gz.finish(),
        ),
        Compression::Zstd => spawn_compressor(
            out_tx.clone(),
            |sink| zstd::stream::write::Encoder::new(sink, 1),
            |z| z.finish(),
        ),
        Compression::None => (out_tx.clone(), None),
    };
    drop(out_tx);

    // Owns the receiver: if writing fails, the receiver is dropped, the senders fail
    // and the reader and compressor stop instead of waiting forever.
    let write_loop = async move {
        let mut n = 0u64;
        let mut result = Ok(());
        while let Some(b) = out_rx.recv().await {
            n += b.len() as u64;
            if let Err(e) = writer.write(b).await {
                result = Err(e);
                break;
            }
        }
        drop(out_rx);
        (writer, result.map(|()| n))
    };

    let read_loop = async move {
        let mut stream = src.copy_chunk(chunk).await?;
        let (mut rows, mut bytes, mut longest) = (0u64, 0u64, 0u64);
        let mut profiler =
            (!disabled_for_bench()).then(|| Profiler::new(chunk.columns, chunk.record_end));
        let mut batch = BytesMut::with_capacity(BATCH + 64 * 1024);
        while let Some(item) = stream.next().await {
            let row = item?;
            rows += 1;
            bytes += row.len() as u64;
            longest = longest.max(row.len() as u64);
            if let Some(p) = profiler.as_mut() {
                p.add_record(&row);
            }
            batch.extend_from_slice(&row);
            if batch.len() >= BATCH {
                raw_tx.send(batch.split().freeze()).await.map_err(|_| {
                    Error::storage(
                        key.as_str(),
                        "the compressor or writer stopped",
                        crate::error::ErrorKind::Transient,
                    )
                })?;
                progress(rows, bytes);
            }
        }
        if !batch.is_empty() {
            raw_tx.send(batch.freeze()).await.map_err(|_| {
                Error::storage(
                    key.as_str(),
                    "the compressor or writer stopped",
                    crate::error::ErrorKind::Transient,
                )
            })?;
        }
        drop(raw_tx);
        progress(rows, bytes);
        let profile = profiler.and_then(Profiler::finish);
        Ok::<_, Error>((rows, bytes, longest, profile))
    };

    let (read, (writer, written)) = tokio::join!(read_loop, write_loop);
    let compressed = match compressor {
        Some(h) => match h.await {
            Ok(r) => r.map_err(|e| Error::storage_io(key.as_str(), e)),
            Err(e) => Err(Error::storage(
                key.as_str(),
                format!("gzip worker: {e}"),
                crate::error::ErrorKind::Transient,
            )),
        },
        None => Ok(()),
    };
    // The first real cause wins: a source error explains a broken pipe downstream.
    let result = match (read, written, compressed) {
        (Err(e), _, _) => Err(e),
        (_, Err(e), _) => Err(e),
        (_, _, Err(e)) => Err(e),
        (Ok((rows, bytes, longest_row, profile)), Ok(object_bytes), Ok(())) => Ok((
            Extracted {
                rows,
                bytes,
                object_bytes,
                longest_row,
            },
            profile,
        )),
    };
    match result {
        Ok((x, profile)) => {
            metadata.insert("rows".into(), x.rows.to_string());
            metadata.insert(
                crate::protocol::record::LONGEST_ROW_KEY.into(),
                x.longest_row.to_string(),
            );
            if let Some(p) = profile {
                metadata.insert(crate::profile::METADATA_KEY.into(), p.encode());
            }
            let info = writer.finish(metadata).await?;
            Ok((x, info))
        }
        Err(e) => {
            writer.abort().await;
            Err(e)
        }
    }
}

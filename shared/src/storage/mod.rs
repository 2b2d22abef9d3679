//! Object storage: where extracted chunks are staged before the warehouse loads them.
//!
//! One small trait with a local-files implementation (laptops, tests) and, in the
//! services, a GCS one. Writers finalize atomically: an object becomes visible, under
//! its final name, only once complete (GCS finalizes only complete uploads; the local
//! store writes a temporary file and renames it), so a crash mid-extract never leaves a
//! partial object and a retry rewrites the same name.

mod gcs;
mod local;
pub use gcs::{install_crypto, object_info, GcsStore, UPLOAD_PREFIX};
pub use local::LocalStore;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

use crate::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A checked object name: relative, `/`-separated, no empty, `.` or `..` segments.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectKey(String);

impl ObjectKey {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = s.is_empty()
            || s.starts_with('/')
            || s.split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            || s.chars().any(|c| c.is_control() || c == '\\');
        if bad {
            return Err(Error::storage(
                s,
                "invalid object name",
                crate::error::ErrorKind::Permanent,
            ));
        }
        Ok(ObjectKey(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ObjectKey {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        ObjectKey::parse(&s)
    }
}

impl From<ObjectKey> for String {
    fn from(k: ObjectKey) -> String {
        k.0
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// User metadata stored with an object (run id, table, chunk, row count).
pub type Metadata = BTreeMap<String, String>;

/// What a listing or a finished write reports of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: ObjectKey,
    pub size: u64,
    pub metadata: Metadata,
}

/// A streaming upload. Nothing is visible until `finish`; dropping or `abort`ing a
/// writer leaves no object.
#[async_trait]
pub trait ObjectWriter: Send {
    /// Append bytes.
    async fn write(&mut self, data: Bytes) -> Result<()>;
    /// Complete the object with its metadata; only now does it appear (replacing any
    /// object of that name).
    async fn finish(self: Box<Self>, metadata: Metadata) -> Result<ObjectInfo>;
    /// Complete the object only if no object of that name exists (GCS:
    /// `ifGenerationMatch=0`); `None` when one does, and then nothing is written. Two
    /// writers racing for one name: exactly one gets `Some`.
    async fn finish_if_absent(self: Box<Self>, metadata: Metadata) -> Result<Option<ObjectInfo>>;
    /// Give up; no object appears.
    async fn abort(self: Box<Self>);
}

/// The object store the pipeline stages chunks in.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// A URL naming the store (`file:///dir`, `gs://bucket`), for messages.
    fn url(&self) -> String;
    /// Start writing `key` (replacing any object of that name when finished).
    async fn writer(&self, key: &ObjectKey) -> Result<Box<dyn ObjectWriter>>;
    /// Read a whole (small) object, e.g. a plan.
    async fn get(&self, key: &ObjectKey) -> Result<Bytes>;
    /// Copy `from` to a new object `to` with `metadata`, in the store (GCS: a rewrite,
    /// which finalizes `to` and so announces it like any write).
    async fn copy(
        &self,
        from: &ObjectKey,
        to: &ObjectKey,
        metadata: Metadata,
    ) -> Result<ObjectInfo>;
    /// Stream an object into a local file (bounded memory); returns its size.
    async fn copy_to_file(&self, key: &ObjectKey, path: &Path) -> Result<u64>;
    /// Metadata of one object, `None` when absent.
    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>>;
    /// Objects whose name starts with `prefix`, sorted by name.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Remove an object; removing an absent object is not an error.
    async fn delete(&self, key: &ObjectKey) -> Result<()>;
    /// A local file path for the object, when the store is on this machine (lets an
    /// embedded warehouse read it in place).
    fn local_path(&self, key: &ObjectKey) -> Option<PathBuf>;
    /// A cheap check that the store is reachable and writable.
    async fn health(&self) -> Result<()>;
}

/// Conveniences over any store.
#[async_trait]
pub trait ObjectStoreExt: ObjectStore {
    /// Write a whole small object.
    async fn put(&self, key: &ObjectKey, data: Bytes, metadata: Metadata) -> Result<ObjectInfo> {
        let mut w = self.writer(key).await?;
        if let Err(e) = w.write(data).await {
            w.abort().await;
            return Err(e);
        }
        w.finish(metadata).await
    }

    /// Write a whole small object unless one of that name exists; `None` when it does.
    async fn put_if_absent(
        &self,
        key: &ObjectKey,
        data: Bytes,
        metadata: Metadata,
    ) -> Result<Option<ObjectInfo>> {
        let mut w = self.writer(key).await?;
        if let Err(e) = w.write(data).await {
            w.abort().await;
            return Err(e);
        }
        w.finish_if_absent(metadata).await
    }
}

impl<T: ObjectStore + ?Sized> ObjectStoreExt for T {}

/// Open a store from `PGP_STORAGE_URL` (`file:///abs/dir`, created when missing, or
/// `gs://bucket`); `gcs_endpoint` (`PGP_GCS_ENDPOINT`) points gs:// at an emulator.
pub async fn open(
    url: &str,
    gcs_endpoint: Option<&str>,
) -> Result<std::sync::Arc<dyn ObjectStore>> {
    open_with(url, gcs_endpoint, true).await
}

/// Open a store without creating anything (for `pgp plan`).
pub async fn open_existing(
    url: &str,
    gcs_endpoint: Option<&str>,
) -> Result<std::sync::Arc<dyn ObjectStore>> {
    open_with(url, gcs_endpoint, false).await
}

async fn open_with(
    url: &str,
    gcs_endpoint: Option<&str>,
    create: bool,
) -> Result<std::sync::Arc<dyn ObjectStore>> {
    let parsed =
        url::Url::parse(url).map_err(|e| Error::Config(format!("PGP_STORAGE_URL {url:?}: {e}")))?;
    match parsed.scheme() {
        "file" => {
            let path = parsed.to_file_path().map_err(|_| {
                Error::Config(format!(
                    "PGP_STORAGE_URL {url:?}: not an absolute file path"
                ))
            })?;
            Ok(std::sync::Arc::new(if create {
                LocalStore::new(path)?
            } else {
                LocalStore::at(path)?
            }))
        }
        "gs" => {
            let bucket = parsed.host_str().unwrap_or_default();
            if !matches!(parsed.path(), "" | "/") {
                return Err(Error::Config(format!(
                    "PGP_STORAGE_URL {url:?}: use gs://bucket (objects are named by pgp)"
                )));
            }
            Ok(std::sync::Arc::new(
                GcsStore::connect(bucket, gcs_endpoint).await?,
            ))
        }
        s => Err(Error::Config(format!(
            "PGP_STORAGE_URL {url:?}: unknown scheme {s:?} (file:// or gs://)"
        ))),
    }
}

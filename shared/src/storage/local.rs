//! Local-files object store: the embedded default and the reference the conformance
//! suite is written against. Objects live at `<root>/<key>`; metadata in a JSON file at
//! `<root>/.pgp-meta/<key>.json`; writes go to a hidden temporary file in the same
//! directory and are renamed into place on `finish` (atomic on POSIX).

use super::{Metadata, ObjectInfo, ObjectKey, ObjectStore, ObjectWriter};
use crate::error::{Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

const META_DIR: &str = ".pgp-meta";

/// Objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root` (created if missing; must be absolute).
    pub fn new(root: PathBuf) -> Result<Self> {
        let s = Self::at(root)?;
        std::fs::create_dir_all(&s.root)
            .map_err(|e| Error::storage_io(s.root.display().to_string(), e))?;
        Ok(s)
    }

    /// A store rooted at `root`, creating nothing (reads of a missing root find nothing).
    pub fn at(root: PathBuf) -> Result<Self> {
        if !root.is_absolute() {
            return Err(Error::Config(format!(
                "storage root {} must be an absolute path",
                root.display()
            )));
        }
        Ok(LocalStore { root })
    }

    fn path(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn meta_path(&self, key: &ObjectKey) -> PathBuf {
        self.root
            .join(META_DIR)
            .join(format!("{}.json", key.as_str()))
    }

    /// A writer to a temporary file beside `key`'s path.
    async fn local_writer(&self, key: &ObjectKey) -> Result<LocalWriter> {
        let dest = self.path(key);
        let dir = dest
            .parent()
            .expect("key has a parent under root")
            .to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| Error::storage_io(key.as_str(), e))?;
        let file_name = dest
            .file_name()
            .expect("key has a file name")
            .to_string_lossy();
        let tmp = dir.join(format!(
            ".{file_name}.{}.{}.tmp",
            std::process::id(),
            unique()
        ));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| Error::storage_io(key.as_str(), e))?;
        Ok(LocalWriter {
            key: key.clone(),
            meta: self.meta_path(key),
            tmp,
            dest,
            file: Some(file),
            size: 0,
        })
    }

    fn read_meta(&self, key: &ObjectKey) -> Metadata {
        std::fs::read(self.meta_path(key))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn info(&self, key: ObjectKey) -> Result<Option<ObjectInfo>> {
        match std::fs::metadata(self.path(&key)) {
            Ok(m) if m.is_file() => Ok(Some(ObjectInfo {
                metadata: self.read_meta(&key),
                size: m.len(),
                key,
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::storage_io(key.as_str(), e)),
        }
    }
}

struct LocalWriter {
    key: ObjectKey,
    tmp: PathBuf,
    dest: PathBuf,
    meta: PathBuf,
    file: Option<tokio::fs::File>,
    size: u64,
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let f = self.file.as_mut().expect("writer used after finish");
        f.write_all(&data)
            .await
            .map_err(|e| Error::storage_io(self.key.as_str(), e))?;
        self.size += data.len() as u64;
        Ok(())
    }

    async fn finish(self: Box<Self>, metadata: Metadata) -> Result<ObjectInfo> {
        Ok(self
            .complete(metadata, false)
            .await?
            .expect("an overwriting finish always writes"))
    }

    async fn finish_if_absent(self: Box<Self>, metadata: Metadata) -> Result<Option<ObjectInfo>> {
        self.complete(metadata, true).await
    }

    async fn abort(mut self: Box<Self>) {
        self.file.take();
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

impl LocalWriter {
    /// Flush, then move the file into place: by rename (replacing), or, create-only, by
    /// a hard link, which fails if the name exists (atomic on POSIX), then the metadata.
    async fn complete(
        mut self: Box<Self>,
        metadata: Metadata,
        create_only: bool,
    ) -> Result<Option<ObjectInfo>> {
        let key = self.key.clone();
        let e = |e: std::io::Error| Error::storage_io(key.as_str(), e);
        let mut f = self.file.take().expect("finish called twice");
        f.flush().await.map_err(e)?;
        f.sync_all().await.map_err(e)?;
        drop(f);
        if let Some(parent) = self.meta.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(e)?;
        }
        let meta_json = serde_json::to_vec(&metadata).expect("metadata serializes");
        let meta_tmp = self.meta.with_extension(format!("{}.tmp", unique()));
        tokio::fs::write(&meta_tmp, meta_json).await.map_err(e)?;
        if create_only {
            let linked = tokio::fs::hard_link(&self.tmp, &self.dest).await;
            let _ = tokio::fs::remove_file(&self.tmp).await;
            match linked {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                    let _ = tokio::fs::remove_file(&meta_tmp).await;
                    return Ok(None);
                }
                Err(err) => {
                    let _ = tokio::fs::remove_file(&meta_tmp).await;
                    return Err(e(err));
                }
            }
            tokio::fs::rename(&meta_tmp, &self.meta).await.map_err(e)?;
        } else {
            tokio::fs::rename(&meta_tmp, &self.meta).await.map_err(e)?;
            tokio::fs::rename(&self.tmp, &self.dest).await.map_err(e)?;
        }
        Ok(Some(ObjectInfo {
            key: self.key.clone(),
            size: self.size,
            metadata,
        }))
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue; // temporary files and the metadata folder
        }
        let p = entry.path();
        if entry.file_type()?.is_dir() {
            walk(&p, root, out)?;
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn writer(&self, key: &ObjectKey) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(self.local_writer(key).await?))
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        tokio::fs::read(self.path(key))
            .await
            .map(Bytes::from)
            .map_err(|e| Error::storage_io(key.as_str(), e))
    }

    async fn copy(
        &self,
        from: &ObjectKey,
        to: &ObjectKey,
        metadata: Metadata,
    ) -> Result<ObjectInfo> {
        // Copy the file into a writer's temporary file (streamed by the kernel), then
        // finish as any write does.
        let mut w = self.local_writer(to).await?;
        w.size = tokio::fs::copy(self.path(from), &w.tmp)
            .await
            .map_err(|e| Error::storage_io(from.as_str(), e))?;
        Box::new(w).finish(metadata).await
    }

    async fn copy_to_file(&self, key: &ObjectKey, path: &std::path::Path) -> Result<u64> {
        tokio::fs::copy(self.path(key), path)
            .await
            .map_err(|e| Error::storage_io(key.as_str(), e))
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>> {
        self.info(key.clone())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut names = Vec::new();
        walk(&self.root, &self.root, &mut names).map_err(|e| Error::storage_io(prefix, e))?;
        names.sort();
        let mut out = Vec::new();
        for n in names.into_iter().filter(|n| n.starts_with(prefix)) {
            if let Ok(k) = ObjectKey::parse(&n) {
                if let Some(i) = self.info(k)? {
                    out.push(i);
                }
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        for p in [self.path(key), self.meta_path(key)] {
            match tokio::fs::remove_file(&p).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::storage_io(key.as_str(), e)),
            }
        }
        Ok(())
    }

    fn local_path(&self, key: &ObjectKey) -> Option<PathBuf> {
        Some(self.path(key))
    }

    async fn health(&self) -> Result<()> {
        let probe = self.root.join(format!(".health.{}", unique()));
        tokio::fs::write(&probe, b"ok")
            .await
            .map_err(|e| Error::storage_io(self.url(), e))?;
        let _ = tokio::fs::remove_file(&probe).await;
        Ok(())
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn local_store_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::LocalStore::new(dir.path().to_path_buf()).unwrap();
        crate::storage::conformance::run(&store).await;
    }
}

//! The simulation's object store: GCS as the protocol may rely on it, and no more.
//!
//! An object appears whole when its write finishes (never partially), under a new
//! generation; each generation is finalized once and announced once as an event, which
//! the world then delivers at least once. A create-only finish fails when the name
//! exists (GCS's `ifGenerationMatch=0`). Every operation is a step boundary and may fail
//! transiently, before or after it took effect.

use super::exec::{point, Sim, Strike};
use crate::error::{Error, ErrorKind, Result};
use crate::storage::{Metadata, ObjectInfo, ObjectKey, ObjectStore, ObjectWriter};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
struct Obj {
    data: Bytes,
    metadata: Metadata,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Obj>,
    /// Finalize events not yet handed to the world.
    events: Vec<ObjectInfo>,
    /// Bytes of run records (`_pgp_runs/`) read so far, for the scale measurement.
    record_bytes_read: u64,
}

/// An in-memory bucket.
#[derive(Clone)]
pub struct SimStore {
    sim: Sim,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimStore")
    }
}

fn transient(what: &str) -> Error {
    Error::storage(what, "injected transient failure", ErrorKind::Transient)
}

impl SimStore {
    pub fn new(sim: Sim) -> Self {
        SimStore {
            sim,
            state: Arc::default(),
        }
    }

    /// Take the finalize events since the last call.
    pub fn take_events(&self) -> Vec<ObjectInfo> {
        std::mem::take(&mut self.state.lock().unwrap().events)
    }

    /// Corrupt an object in place: drop its last line (as a truncated upload would,
    /// its metadata unchanged).
    pub fn truncate_last_line(&self, key: &ObjectKey) {
        let mut st = self.state.lock().unwrap();
        let o = st.objects.get_mut(key.as_str()).expect("the object exists");
        let text = &o.data[..o.data.len().saturating_sub(1)];
        let cut = text
            .iter()
            .rposition(|b| *b == b'\n')
            .map(|i| i + 1)
            .unwrap_or(0);
        o.data = o.data.slice(..cut);
    }

    /// Bytes of run records read so far.
    pub fn record_bytes_read(&self) -> u64 {
        self.state.lock().unwrap().record_bytes_read
    }

    /// An object's bytes, read by the simulated warehouse's COPY.
    pub fn bytes(&self, key: &ObjectKey) -> Option<Bytes> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(key.as_str())
            .map(|o| o.data.clone())
    }

    /// A step boundary, then the fault dice for this operation.
    async fn op(&self, what: &str, key: &str) -> Option<Strike> {
        point(&self.sim).await;
        let mut s = self.sim.lock().unwrap();
        s.note(format!("store {what} {key}"));
        s.strike()
    }

    fn info(key: &str, o: &Obj) -> ObjectInfo {
        ObjectInfo {
            key: ObjectKey::parse(key).expect("stored keys are valid"),
            size: o.data.len() as u64,
            metadata: o.metadata.clone(),
        }
    }

    /// Create or replace an object and announce it. `None` when `create_only` and the
    /// name exists.
    fn create(
        &self,
        key: &ObjectKey,
        data: Bytes,
        metadata: Metadata,
        create_only: bool,
    ) -> Option<ObjectInfo> {
        let mut st = self.state.lock().unwrap();
        if create_only && st.objects.contains_key(key.as_str()) {
            return None;
        }
        let obj = Obj { data, metadata };
        let info = Self::info(key.as_str(), &obj);
        st.objects.insert(key.to_string(), obj);
        st.events.push(info.clone());
        Some(info)
    }
}

struct SimWriter {
    store: SimStore,
    key: ObjectKey,
    buf: Vec<u8>,
}

impl SimWriter {
    async fn complete(
        self: Box<Self>,
        metadata: Metadata,
        create_only: bool,
    ) -> Result<Option<ObjectInfo>> {
        let strike = self.store.op("finish", self.key.as_str()).await;
        if strike == Some(Strike::Before) {
            return Err(transient(self.key.as_str()));
        }
        let made = self
            .store
            .create(&self.key, Bytes::from(self.buf), metadata, create_only);
        if strike == Some(Strike::After) {
            return Err(transient(self.key.as_str()));
        }
        Ok(made)
    }
}

#[async_trait]
impl ObjectWriter for SimWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.buf.extend_from_slice(&data);
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
    async fn abort(self: Box<Self>) {}
}

#[async_trait]
impl ObjectStore for SimStore {
    fn url(&self) -> String {
        "sim://postgres_pipeline".into()
    }

    async fn writer(&self, key: &ObjectKey) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(SimWriter {
            store: self.clone(),
            key: key.clone(),
            buf: Vec::new(),
        }))
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        if self.op("get", key.as_str()).await == Some(Strike::Before) {
            return Err(transient(key.as_str()));
        }
        let data = self
            .bytes(key)
            .ok_or_else(|| Error::storage(key.as_str(), "no such object", ErrorKind::Permanent))?;
        if key.as_str().starts_with(crate::protocol::RUNS_PREFIX) {
            self.state.lock().unwrap().record_bytes_read += data.len() as u64;
        }
        Ok(data)
    }

    async fn copy(
        &self,
        from: &ObjectKey,
        to: &ObjectKey,
        metadata: Metadata,
    ) -> Result<ObjectInfo> {
        let strike = self.op("copy", to.as_str()).await;
        if strike == Some(Strike::Before) {
            return Err(transient(to.as_str()));
        }
        let data = self
            .bytes(from)
            .ok_or_else(|| Error::storage(from.as_str(), "no such object", ErrorKind::Permanent))?;
        let info = self
            .create(to, data, metadata, false)
            .expect("an overwriting copy always writes");
        if strike == Some(Strike::After) {
            return Err(transient(to.as_str()));
        }
        Ok(info)
    }

    async fn copy_to_file(&self, key: &ObjectKey, path: &Path) -> Result<u64> {
        let data = self.get(key).await?;
        std::fs::write(path, &data).map_err(|e| Error::storage_io(key.as_str(), e))?;
        Ok(data.len() as u64)
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>> {
        if self.op("head", key.as_str()).await == Some(Strike::Before) {
            return Err(transient(key.as_str()));
        }
        let st = self.state.lock().unwrap();
        Ok(st
            .objects
            .get(key.as_str())
            .map(|o| Self::info(key.as_str(), o)))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        if self.op("list", prefix).await == Some(Strike::Before) {
            return Err(transient(prefix));
        }
        let st = self.state.lock().unwrap();
        Ok(st
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| Self::info(k, o))
            .collect())
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        let strike = self.op("delete", key.as_str()).await;
        if strike == Some(Strike::Before) {
            return Err(transient(key.as_str()));
        }
        self.state.lock().unwrap().objects.remove(key.as_str());
        if strike == Some(Strike::After) {
            return Err(transient(key.as_str()));
        }
        Ok(())
    }

    fn local_path(&self, _key: &ObjectKey) -> Option<PathBuf> {
        None
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn sim_store_passes_the_storage_conformance_suite() {
        let store = super::SimStore::new(super::super::exec::SimState::new(1));
        crate::storage::conformance::run(&store).await;
    }
}

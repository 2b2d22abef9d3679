//! Google Cloud Storage: the `postgres_pipeline` bucket the extractors write and the
//! warehouse loads from.
//!
//! Data moves through the official `google-cloud-storage` crate (resumable uploads
//! streamed from a bounded channel, streamed downloads). That crate's metadata
//! operations (get, list, delete, rewrite) live in its gRPC-only control client, so
//! those few calls use the documented JSON API (`storage/v1`) directly, with the same
//! credentials.
//!
//! Finalization: a chunk's row count is known only after the last byte, but GCS takes
//! an object's metadata when an upload *starts*, and the object-finalize event that
//! triggers the loader fires when it ends. So a writer uploads to a hidden name under
//! `_pgp_uploads/`, then `rewriteTo`s the final name with the complete metadata (a
//! metadata-only copy inside one bucket and storage class) and deletes the upload. The
//! final name is finalized exactly once per attempt, complete, with its row count; a
//! crash leaves at most a hidden upload, removed by the bucket's lifecycle rule. A
//! create-only finish sends the rewrite with `ifGenerationMatch=0`, which GCS fulfils
//! only when no live object has the name and otherwise answers 412
//! (<https://cloud.google.com/storage/docs/request-preconditions>).
//!
//! Error kinds: from the HTTP status (408, 429 and 5xx transient, 404 and other 4xx
//! permanent); a request that got no answer is transient.

use super::{Metadata, ObjectInfo, ObjectKey, ObjectStore, ObjectWriter};
use crate::error::{Error, ErrorKind, Result};
use async_trait::async_trait;
use bytes::Bytes;
use google_cloud_auth::credentials::{self, CacheableResource, Credentials};
use google_cloud_storage::client::Storage;
use google_cloud_storage::streaming_source::StreamingSource;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Prefix of in-flight uploads; the loader ignores every object under it.
pub const UPLOAD_PREFIX: &str = "_pgp_uploads/";

/// Chunks queued between the extractor and the upload (each up to 1 MiB).
const QUEUE: usize = 8;

/// A bucket in Google Cloud Storage (or an emulator of its JSON API).
#[derive(Clone)]
pub struct GcsStore {
    bucket: String,
    client: Storage,
    http: reqwest::Client,
    /// `https://storage.googleapis.com` or the emulator's base URL.
    endpoint: String,
    creds: Credentials,
}

impl std::fmt::Debug for GcsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsStore")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Install ring as the process's TLS provider (the Google clients need one; pgp uses
/// ring everywhere). Idempotent.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl GcsStore {
    /// Connect to `bucket`. With `endpoint` (an emulator, `PGP_GCS_ENDPOINT`) requests
    /// are anonymous; otherwise Application Default Credentials are used (the Cloud
    /// Run service account).
    pub async fn connect(bucket: &str, endpoint: Option<&str>) -> Result<Self> {
        install_crypto();
        let bad = |m: String| Error::Config(format!("gs://{bucket}: {m}"));
        if bucket.is_empty()
            || !bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        {
            return Err(bad("not a valid bucket name".into()));
        }
        let creds = match endpoint {
            Some(_) => credentials::anonymous::Builder::new().build(),
            None => credentials::Builder::default()
                .build()
                .map_err(|e| bad(format!("no Google credentials: {e}")))?,
        };
        let endpoint = endpoint
            .unwrap_or("https://storage.googleapis.com")
            .trim_end_matches('/')
            .to_string();
        let client = Storage::builder()
            .with_endpoint(endpoint.clone())
            .with_credentials(creds.clone())
            .build()
            .await
            .map_err(|e| bad(format!("cannot build the storage client: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(GcsStore {
            bucket: bucket.to_string(),
            client,
            http,
            endpoint,
            creds,
        })
    }

    fn bucket_path(&self) -> String {
        format!("projects/_/buckets/{}", self.bucket)
    }

    fn object_url(&self, name: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.endpoint,
            self.bucket,
            urlencode(name)
        )
    }

    async fn auth(&self, req: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder> {
        let headers = self
            .creds
            .headers(http::Extensions::new())
            .await
            .map_err(|e| {
                Error::storage(
                    self.url(),
                    format!("credentials: {e}"),
                    ErrorKind::Transient,
                )
            })?;
        Ok(match headers {
            CacheableResource::New { data, .. } => req.headers(data),
            CacheableResource::NotModified => req,
        })
    }

    /// Send a JSON API request; `Ok(None)` on 404.
    async fn json(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<Option<serde_json::Value>> {
        self.json_unless(what, req, None)
            .await
            .map(|r| r.ok().flatten())
    }

    /// Send a JSON API request; `Ok(None)` on 404, `Err(status)` inside `Ok` when the
    /// answer has the status `unless` (a precondition the caller handles).
    async fn json_unless(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
        unless: Option<reqwest::StatusCode>,
    ) -> Result<std::result::Result<Option<serde_json::Value>, reqwest::StatusCode>> {
        let resp = self.auth(req).await?.send().await.map_err(|e| {
            Error::storage(what, format!("request failed: {e}"), ErrorKind::Transient)
        })?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Ok(None));
        }
        if Some(status) == unless {
            return Ok(Err(status));
        }
        let body = resp.bytes().await.unwrap_or_default();
        if !status.is_success() {
            return Err(Error::storage(
                what,
                format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(500)])
                ),
                ErrorKind::from_http_status(status.as_u16()),
            ));
        }
        if body.is_empty() {
            return Ok(Ok(Some(serde_json::Value::Null)));
        }
        serde_json::from_slice(&body)
            .map(|v| Ok(Some(v)))
            .map_err(|e| Error::storage(what, format!("bad JSON reply: {e}"), ErrorKind::Transient))
    }

    /// Rewrite `from` to `to` with `metadata` (the finalizing step of a writer, and a
    /// copy); `create_only` adds `ifGenerationMatch=0`, and then `None` means `to`
    /// existed and nothing was written.
    async fn rewrite(
        &self,
        from: &str,
        to: &ObjectKey,
        metadata: &Metadata,
        create_only: bool,
    ) -> Result<Option<ObjectInfo>> {
        let mut url = format!(
            "{}/rewriteTo/b/{}/o/{}",
            self.object_url(from),
            self.bucket,
            urlencode(to.as_str())
        );
        if create_only {
            url.push_str("?ifGenerationMatch=0");
        }
        let body = serde_json::json!({
            "metadata": metadata,
            "contentType": "application/octet-stream",
        });
        let mut token: Option<String> = None;
        loop {
            let mut req = self.http.post(&url).json(&body);
            if let Some(t) = &token {
                req = req.query(&[("rewriteToken", t)]);
            }
            let unless = create_only.then_some(reqwest::StatusCode::PRECONDITION_FAILED);
            let reply = match self.json_unless(to.as_str(), req, unless).await? {
                // 412: an object of that name exists; nothing was written.
                Err(_) => return Ok(None),
                Ok(r) => r,
            }
            .ok_or_else(|| {
                Error::storage(
                    to.as_str(),
                    format!("{from} vanished before the rewrite"),
                    ErrorKind::Permanent,
                )
            })?;
            if reply["done"].as_bool() == Some(true) {
                return object_info(&reply["resource"]).map(Some);
            }
            token = reply["rewriteToken"].as_str().map(str::to_string);
            if token.is_none() {
                return Err(Error::storage(
                    to.as_str(),
                    "rewrite neither done nor resumable",
                    ErrorKind::Transient,
                ));
            }
        }
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// An object resource of the JSON API as `ObjectInfo`.
pub fn object_info(v: &serde_json::Value) -> Result<ObjectInfo> {
    let name = v["name"].as_str().unwrap_or_default();
    let key = ObjectKey::parse(name)?;
    let size = match &v["size"] {
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    };
    let metadata = v["metadata"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Ok(ObjectInfo {
        key,
        size,
        metadata,
    })
}

/// The upload's byte source: what the extractor writes, in order; an error item makes
/// the client abandon the upload instead of finalizing it.
struct ChannelSource(mpsc::Receiver<std::result::Result<Bytes, std::io::Error>>);

impl StreamingSource for ChannelSource {
    type Error = std::io::Error;
    async fn next(&mut self) -> Option<std::result::Result<Bytes, std::io::Error>> {
        self.0.recv().await
    }
}

struct GcsWriter {
    store: GcsStore,
    key: ObjectKey,
    upload: String,
    tx: Option<mpsc::Sender<std::result::Result<Bytes, std::io::Error>>>,
    task: tokio::task::JoinHandle<std::result::Result<(), (String, ErrorKind)>>,
}

#[async_trait]
impl ObjectWriter for GcsWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let tx = self.tx.as_ref().expect("writer used after finish");
        if tx.send(Ok(data)).await.is_err() {
            // The upload task ended early: report its error.
            self.tx = None;
            let task = std::mem::replace(&mut self.task, tokio::spawn(async { Ok(()) }));
            let msg = match task.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => ("upload ended early".into(), ErrorKind::Transient),
                Err(e) => (e.to_string(), ErrorKind::Transient),
            };
            return Err(Error::storage(self.key.as_str(), msg.0, msg.1));
        }
        Ok(())
    }

    async fn finish(self: Box<Self>, metadata: Metadata) -> Result<ObjectInfo> {
        let key = self.key.clone();
        self.complete(metadata, false)
            .await?
            .ok_or_else(|| Error::storage(key.as_str(), "rewrite refused", ErrorKind::Transient))
    }

    async fn finish_if_absent(self: Box<Self>, metadata: Metadata) -> Result<Option<ObjectInfo>> {
        self.complete(metadata, true).await
    }
    async fn abort(mut self: Box<Self>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(std::io::Error::other("aborted by pgp"))).await;
        }
        let _ = (&mut self.task).await;
    }
}

impl GcsWriter {
    /// Wait for the upload, rewrite it to the final name, delete it.
    async fn complete(
        mut self: Box<Self>,
        metadata: Metadata,
        create_only: bool,
    ) -> Result<Option<ObjectInfo>> {
        drop(self.tx.take());
        match (&mut self.task).await {
            Ok(Ok(())) => {}
            Ok(Err((m, kind))) => return Err(Error::storage(self.key.as_str(), m, kind)),
            Err(e) => {
                return Err(Error::storage(
                    self.key.as_str(),
                    e.to_string(),
                    ErrorKind::Transient,
                ))
            }
        }
        let info = self
            .store
            .rewrite(&self.upload, &self.key, &metadata, create_only)
            .await;
        // The hidden upload is garbage either way; the lifecycle rule is the backstop.
        let _ = self
            .store
            .json(
                &self.upload,
                self.store.http.delete(self.store.object_url(&self.upload)),
            )
            .await;
        info
    }
}

/// The kind of a failure of the storage client: its HTTP status when the server
/// answered, else transient (I/O, timeouts, connections).
fn client_kind(e: &google_cloud_storage::Error) -> ErrorKind {
    match e.http_status_code() {
        Some(status) => ErrorKind::from_http_status(status),
        None => ErrorKind::Transient,
    }
}

impl Drop for GcsWriter {
    fn drop(&mut self) {
        // Dropped without finish/abort (a cancelled extraction): make the upload fail
        // rather than finalize a partial object.
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send(Err(std::io::Error::other("writer dropped")));
        }
    }
}

#[async_trait]
impl ObjectStore for GcsStore {
    fn url(&self) -> String {
        format!("gs://{}", self.bucket)
    }

    async fn writer(&self, key: &ObjectKey) -> Result<Box<dyn ObjectWriter>> {
        let nonce = format!(
            "{:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let upload = format!("{UPLOAD_PREFIX}{}.{nonce}", key.as_str());
        let (tx, rx) = mpsc::channel(QUEUE);
        let client = self.client.clone();
        let bucket = self.bucket_path();
        let name = upload.clone();
        let task = tokio::spawn(async move {
            client
                .write_object(bucket, name, ChannelSource(rx))
                .set_content_type("application/octet-stream")
                .send_buffered()
                .await
                .map(|_| ())
                .map_err(|e| (format!("upload failed: {e}"), client_kind(&e)))
        });
        Ok(Box::new(GcsWriter {
            store: self.clone(),
            key: key.clone(),
            upload,
            tx: Some(tx),
            task,
        }))
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        let mut resp = self
            .client
            .read_object(self.bucket_path(), key.as_str())
            .send()
            .await
            .map_err(|e| read_error(key, e))?;
        let mut out = Vec::new();
        while let Some(chunk) = resp.next().await {
            out.extend_from_slice(&chunk.map_err(|e| read_error(key, e))?);
        }
        Ok(Bytes::from(out))
    }

    async fn copy(
        &self,
        from: &ObjectKey,
        to: &ObjectKey,
        metadata: Metadata,
    ) -> Result<ObjectInfo> {
        self.rewrite(from.as_str(), to, &metadata, false)
            .await?
            .ok_or_else(|| Error::storage(to.as_str(), "rewrite refused", ErrorKind::Transient))
    }

    async fn copy_to_file(&self, key: &ObjectKey, path: &Path) -> Result<u64> {
        let mut resp = self
            .client
            .read_object(self.bucket_path(), key.as_str())
            .send()
            .await
            .map_err(|e| read_error(key, e))?;
        let io = |e: std::io::Error| {
            let kind = ErrorKind::from_io(&e);
            Error::storage(key.as_str(), format!("{}: {e}", path.display()), kind)
        };
        let mut file = tokio::fs::File::create(path).await.map_err(io)?;
        let mut n = 0u64;
        while let Some(chunk) = resp.next().await {
            let chunk = chunk.map_err(|e| read_error(key, e))?;
            n += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        Ok(n)
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>> {
        match self
            .json(key.as_str(), self.http.get(self.object_url(key.as_str())))
            .await?
        {
            None => Ok(None),
            Some(v) => object_info(&v).map(Some),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let url = format!("{}/storage/v1/b/{}/o", self.endpoint, self.bucket);
        let mut out = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut req = self.http.get(&url).query(&[("prefix", prefix)]);
            if let Some(p) = &page {
                req = req.query(&[("pageToken", p)]);
            }
            let Some(v) = self.json(prefix, req).await? else {
                return Err(Error::storage(
                    self.url(),
                    "bucket not found",
                    ErrorKind::Permanent,
                ));
            };
            for item in v["items"].as_array().into_iter().flatten() {
                let name = item["name"].as_str().unwrap_or_default();
                if name.starts_with(UPLOAD_PREFIX) && !prefix.starts_with(UPLOAD_PREFIX) {
                    continue;
                }
                out.push(object_info(item)?);
            }
            page = v["nextPageToken"].as_str().map(str::to_string);
            if page.is_none() {
                break;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.json(
            key.as_str(),
            self.http.delete(self.object_url(key.as_str())),
        )
        .await
        .map(|_| ())
    }

    fn local_path(&self, _key: &ObjectKey) -> Option<PathBuf> {
        None
    }

    async fn health(&self) -> Result<()> {
        let url = format!("{}/storage/v1/b/{}", self.endpoint, self.bucket);
        match self.json("bucket", self.http.get(url)).await? {
            Some(_) => Ok(()),
            None => Err(Error::storage(
                self.url(),
                "bucket not found",
                ErrorKind::Permanent,
            )),
        }
    }
}

fn read_error(key: &ObjectKey, e: google_cloud_storage::Error) -> Error {
    Error::storage(key.as_str(), format!("read failed: {e}"), client_kind(&e))
}

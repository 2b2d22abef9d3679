//! Publishing chunk tasks: the planner's one outgoing edge.
//!
//! One small trait with two implementations: Google Pub/Sub (the official
//! `google-cloud-pubsub` publisher, batched, over gRPC; anonymous against the emulator)
//! and an in-process queue (handler tests, and anyone wiring the services together in
//! one process). The conformance suite in the services' tests runs against both.

use async_trait::async_trait;
use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::model::Message;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub data: Vec<u8>,
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("publish to {topic}: {message}")]
pub struct PublishError {
    pub topic: String,
    pub message: String,
}

/// A topic the planner publishes to.
#[async_trait]
pub trait TaskQueue: Send + Sync {
    /// The topic's full name, for messages.
    fn topic(&self) -> String;
    /// Publish all messages; returns their ids in order. Fails if any failed (the
    /// planner then answers 5xx and the request is redelivered; re-publishing is
    /// harmless because every step downstream is idempotent).
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<Vec<String>, PublishError>;
}

/// Google Pub/Sub.
pub struct PubSubQueue {
    topic: String,
    publisher: Publisher,
}

impl PubSubQueue {
    /// `project` and `topic` ids; `endpoint` (`PGP_PUBSUB_ENDPOINT`) points at an
    /// emulator and makes the client anonymous.
    pub async fn connect(
        project: &str,
        topic: &str,
        endpoint: Option<&str>,
    ) -> Result<Self, PublishError> {
        pgp::storage::install_crypto();
        let full = format!("projects/{project}/topics/{topic}");
        let err = |m: String| PublishError {
            topic: full.clone(),
            message: m,
        };
        let mut b = Publisher::builder(full.clone())
            .set_message_count_threshold(100)
            .set_delay_threshold(std::time::Duration::from_millis(10));
        if let Some(ep) = endpoint {
            b = b.with_endpoint(ep.to_string()).with_credentials(
                google_cloud_auth::credentials::anonymous::Builder::new().build(),
            );
        }
        let publisher = b.build().await.map_err(|e| err(e.to_string()))?;
        Ok(PubSubQueue {
            topic: full,
            publisher,
        })
    }
}

#[async_trait]
impl TaskQueue for PubSubQueue {
    fn topic(&self) -> String {
        self.topic.clone()
    }

    async fn publish(&self, messages: Vec<Outgoing>) -> Result<Vec<String>, PublishError> {
        // Hand every message to the batching publisher first, then wait for all.
        let futures: Vec<_> = messages
            .into_iter()
            .map(|m| {
                self.publisher.publish(
                    Message::new()
                        .set_data(bytes::Bytes::from(m.data))
                        .set_attributes(m.attributes),
                )
            })
            .collect();
        let mut ids = Vec::with_capacity(futures.len());
        for r in futures::future::join_all(futures).await {
            ids.push(r.map_err(|e| PublishError {
                topic: self.topic.clone(),
                message: e.to_string(),
            })?);
        }
        Ok(ids)
    }
}

/// An in-process queue: messages are kept in order until taken.
#[derive(Default)]
pub struct MemoryQueue {
    messages: Mutex<Vec<Outgoing>>,
}

impl MemoryQueue {
    /// Take everything published so far.
    pub fn take(&self) -> Vec<Outgoing> {
        std::mem::take(&mut self.messages.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[async_trait]
impl TaskQueue for MemoryQueue {
    fn topic(&self) -> String {
        "memory".into()
    }

    async fn publish(&self, messages: Vec<Outgoing>) -> Result<Vec<String>, PublishError> {
        let mut q = self.messages.lock().unwrap_or_else(|p| p.into_inner());
        let first = q.len();
        q.extend(messages);
        Ok((first..q.len()).map(|i| i.to_string()).collect())
    }
}

//! Publishing tasks: the planner's one outgoing edge.
//!
//! One small trait; Google Pub/Sub implements it in the services
//! (`pgp_functions::queue::PubSubQueue`), [`MemoryQueue`] in-process (`pgp tap`, handler
//! tests) and the simulation its own at-least-once queue. Publishing the same task twice
//! is harmless: every step downstream is idempotent.

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub data: Vec<u8>,
    pub attributes: BTreeMap<String, String>,
}

/// A failed publish. Always worth retrying: the whole request is redelivered.
#[derive(Debug, thiserror::Error)]
#[error("publish to {topic}: {message}")]
pub struct PublishError {
    pub topic: String,
    pub message: String,
}

impl From<PublishError> for crate::Error {
    fn from(e: PublishError) -> Self {
        crate::Error::Storage {
            object: e.topic,
            message: e.message,
            kind: crate::error::ErrorKind::Transient,
        }
    }
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

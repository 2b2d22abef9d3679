//! Publishing chunk tasks: the planner's one outgoing edge.
//!
//! The trait and the in-process queue live in the library ([`pgp::queue`]); here is the
//! Google Pub/Sub one (the official `google-cloud-pubsub` publisher, batched, over gRPC;
//! anonymous against the emulator). A failed publish is always transient: the planner
//! answers 503 and the request comes back.

use async_trait::async_trait;
use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::model::Message;

pub use pgp::queue::{MemoryQueue, Outgoing, PublishError, TaskQueue};

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

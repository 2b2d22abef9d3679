//! Decoding what Google delivers to a service's `POST /` into one shape.
//!
//! Four wire formats reach the services:
//! - a Pub/Sub **push envelope** `{"message":{"data","attributes","messageId",
//!   "publishTime"},"subscription"}` (push subscriptions);
//! - an Eventarc **CloudEvent**, binary mode (`ce-*` headers, data in the body) or
//!   structured mode (`application/cloudevents+json`), decoded by cloudevents-sdk's
//!   HTTP binding (the one its axum extractor uses): `google.cloud.pubsub.topic.v1.
//!   messagePublished` carries the push envelope as data,
//!   `google.cloud.storage.object.v1.finalized` the object resource;
//! - a GCS **Pub/Sub notification**: a push envelope whose attributes say
//!   `eventType=OBJECT_FINALIZE`, `payloadFormat=JSON_API_V1`, data the object resource;
//! - for the planner, a **plain JSON load request** (Cloud Scheduler's HTTP target).

use base64::Engine;
use cloudevents::AttributesReader;
use http::HeaderMap;
use serde::Deserialize;
use std::collections::BTreeMap;

pub const PUBSUB_PUBLISHED: &str = "google.cloud.pubsub.topic.v1.messagePublished";
pub const STORAGE_FINALIZED: &str = "google.cloud.storage.object.v1.finalized";

/// A decoded delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// A Pub/Sub message (push envelope or messagePublished CloudEvent).
    Message {
        id: String,
        data: Vec<u8>,
        attributes: BTreeMap<String, String>,
    },
    /// A storage event with the object resource (JSON API form).
    Storage {
        id: String,
        /// `OBJECT_FINALIZE` / `google.cloud.storage.object.v1.finalized`, or another
        /// event type the loader ignores.
        finalized: bool,
        event_type: String,
        object: serde_json::Value,
    },
    /// A plain JSON body (no envelope).
    Plain(serde_json::Value),
}

impl Delivery {
    /// The delivery's id, for logs and default run ids.
    pub fn id(&self) -> Option<&str> {
        match self {
            Delivery::Message { id, .. } | Delivery::Storage { id, .. } => Some(id),
            Delivery::Plain(_) => None,
        }
    }
}

/// Why a body could not be decoded (answered 400: no real push sends these).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

#[derive(Deserialize)]
struct Envelope {
    message: PushMessage,
    #[allow(dead_code)]
    #[serde(default)]
    subscription: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushMessage {
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    message_id: String,
    /// Pub/Sub sends the id twice, camelCase and snake_case.
    #[serde(default, rename = "message_id")]
    message_id_snake: String,
}

/// Decode one request.
pub fn decode(headers: &HeaderMap, body: &[u8]) -> Result<Delivery, Malformed> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if headers.contains_key("ce-specversion")
        || content_type.starts_with("application/cloudevents+json")
    {
        return decode_cloudevent(headers, body);
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| Malformed(format!("body is not JSON: {e}")))?;
    if value.get("message").is_some() && value.get("subscription").is_some() {
        return from_envelope(value);
    }
    Ok(Delivery::Plain(value))
}

fn decode_cloudevent(headers: &HeaderMap, body: &[u8]) -> Result<Delivery, Malformed> {
    let mut event = cloudevents::binding::http::to_event(headers, body.to_vec())
        .map_err(|e| Malformed(format!("not a CloudEvent: {e}")))?;
    let id = event.id().to_string();
    let ty = event.ty().to_string();
    let (_, _, data) = event.take_data();
    let data: serde_json::Value = match data {
        Some(cloudevents::Data::Json(v)) => v,
        Some(cloudevents::Data::String(s)) => serde_json::from_str(&s)
            .map_err(|e| Malformed(format!("CloudEvent {id} data is not JSON: {e}")))?,
        Some(cloudevents::Data::Binary(b)) => serde_json::from_slice(&b)
            .map_err(|e| Malformed(format!("CloudEvent {id} data is not JSON: {e}")))?,
        None => return Err(Malformed(format!("CloudEvent {id} has no data"))),
    };
    if ty == PUBSUB_PUBLISHED {
        // Eventarc's Pub/Sub event data is the push envelope.
        let mut d = from_envelope(data)?;
        if let Delivery::Message { id: mid, .. } = &mut d {
            if mid.is_empty() {
                *mid = id;
            }
        }
        return Ok(d);
    }
    if ty.starts_with("google.cloud.storage.object.v1.") {
        return Ok(Delivery::Storage {
            id,
            finalized: ty == STORAGE_FINALIZED,
            event_type: ty,
            object: data,
        });
    }
    Ok(Delivery::Storage {
        id,
        finalized: false,
        event_type: ty,
        object: serde_json::Value::Null,
    })
}

fn from_envelope(value: serde_json::Value) -> Result<Delivery, Malformed> {
    let env: Envelope = serde_json::from_value(value)
        .map_err(|e| Malformed(format!("not a Pub/Sub push envelope: {e}")))?;
    let mut m = env.message;
    if m.message_id.is_empty() {
        m.message_id = std::mem::take(&mut m.message_id_snake);
    }
    let data = match m.data.as_deref() {
        None | Some("") => Vec::new(),
        Some(d) => base64::engine::general_purpose::STANDARD
            .decode(d)
            .map_err(|e| Malformed(format!("message {}: data is not base64: {e}", m.message_id)))?,
    };
    if let (Some(event_type), Some(format)) = (
        m.attributes.get("eventType"),
        m.attributes.get("payloadFormat"),
    ) {
        // A Cloud Storage Pub/Sub notification.
        let object = if format == "JSON_API_V1" {
            serde_json::from_slice(&data).map_err(|e| {
                Malformed(format!(
                    "notification {}: object is not JSON: {e}",
                    m.message_id
                ))
            })?
        } else {
            serde_json::Value::Null
        };
        return Ok(Delivery::Storage {
            id: m.message_id,
            finalized: event_type == "OBJECT_FINALIZE" && format == "JSON_API_V1",
            event_type: event_type.clone(),
            object,
        });
    }
    Ok(Delivery::Message {
        id: m.message_id,
        data,
        attributes: m.attributes,
    })
}

/// Build a push envelope (as Pub/Sub sends it), for tests and for replaying a
/// dead-lettered message by hand.
pub fn push_envelope(
    id: &str,
    data: &[u8],
    attributes: &BTreeMap<String, String>,
    subscription: &str,
) -> serde_json::Value {
    serde_json::json!({
        "message": {
            "data": base64::engine::general_purpose::STANDARD.encode(data),
            "attributes": attributes,
            "messageId": id,
            "message_id": id,
            "publishTime": chrono::Utc::now().to_rfc3339(),
        },
        "subscription": subscription,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn push_envelope_decodes() {
        let env = push_envelope("42", b"{\"a\":1}", &[("k".into(), "v".into())].into(), "s");
        let d = decode(&HeaderMap::new(), env.to_string().as_bytes()).unwrap();
        let Delivery::Message {
            id,
            data,
            attributes,
        } = d
        else {
            panic!("{d:?}")
        };
        assert_eq!((id.as_str(), data.as_slice()), ("42", &b"{\"a\":1}"[..]));
        assert_eq!(attributes["k"], "v");
    }

    #[test]
    fn gcs_notification_decodes() {
        let object = serde_json::json!({"bucket":"b","name":"x/y.tsv.gz","metadata":{"rows":"3"}});
        let attrs = [
            ("eventType".to_string(), "OBJECT_FINALIZE".to_string()),
            ("payloadFormat".to_string(), "JSON_API_V1".to_string()),
            ("bucketId".to_string(), "b".to_string()),
            ("objectId".to_string(), "x/y.tsv.gz".to_string()),
        ]
        .into();
        let env = push_envelope("7", object.to_string().as_bytes(), &attrs, "s");
        let d = decode(&HeaderMap::new(), env.to_string().as_bytes()).unwrap();
        assert_eq!(
            d,
            Delivery::Storage {
                id: "7".into(),
                finalized: true,
                event_type: "OBJECT_FINALIZE".into(),
                object
            }
        );
    }

    #[test]
    fn cloudevents_binary_and_structured_decode() {
        let object = serde_json::json!({"bucket":"b","name":"n","metadata":{}});
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "e1"),
            ("ce-source", "//storage.googleapis.com/projects/_/buckets/b"),
            ("ce-type", STORAGE_FINALIZED),
            ("content-type", "application/json"),
        ]);
        let d = decode(&h, object.to_string().as_bytes()).unwrap();
        assert!(matches!(d, Delivery::Storage { finalized: true, ref id, .. } if id == "e1"));

        let structured = serde_json::json!({
            "specversion": "1.0", "id": "e2", "type": PUBSUB_PUBLISHED,
            "source": "//pubsub.googleapis.com/projects/p/topics/t",
            "datacontenttype": "application/json",
            "data": push_envelope("", b"hi", &BTreeMap::new(), "s"),
        });
        let h = headers(&[("content-type", "application/cloudevents+json")]);
        let d = decode(&h, structured.to_string().as_bytes()).unwrap();
        let Delivery::Message { id, data, .. } = d else {
            panic!("{d:?}")
        };
        assert_eq!((id.as_str(), data.as_slice()), ("e2", &b"hi"[..]));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for body in [&b""[..], b"not json", b"\xff\xfe"] {
            assert!(decode(&HeaderMap::new(), body).is_err());
        }
        let h = headers(&[("ce-specversion", "1.0")]);
        assert!(
            decode(&h, b"{}").is_err(),
            "binary CloudEvent without attributes"
        );
        let bad = serde_json::json!({"message": {"data": "***"}, "subscription": "s"});
        assert!(decode(&HeaderMap::new(), bad.to_string().as_bytes()).is_err());
    }
}

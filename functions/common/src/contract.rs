//! The published message schemas: a public contract for operators, Airflow DAGs and
//! other tools (documented in the README). Unknown fields are rejected, so a typo in a
//! hand-published backfill request is an error, not a silently ignored option.

use chrono::{DateTime, Utc};
use pgp::plan::LoadType;
use serde::{Deserialize, Serialize};

/// A load request: the body of a Cloud Scheduler POST to the planner, or the data of a
/// message on the requests topic. The same inputs as `pgp tap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadRequest {
    /// Manifest path (relative paths resolve under `PGP_MANIFEST_DIR`) or `gs://` URL.
    pub manifest: String,
    pub load_type: LoadType,
    /// Only these manifest tables (all when absent or empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// End of the incremental window (default: the request's time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_date: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<u32>,
    /// The window end the previous run reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_loaded: Option<DateTime<Utc>>,
    /// Written to `_task_instance` of `advanced_metadata: true` tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_instance: Option<String>,
    /// Idempotency key: a request repeated with the same id never loads twice.
    /// Default: derived from the delivery (Pub/Sub message id, CloudEvent id, or
    /// Cloud Scheduler's schedule time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Rows per chunk range of chunked loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_rows: Option<u64>,
}

/// One chunk to extract: the data of a message on the extract topic (the protocol's
/// own type: run id, table, chunk number and count, key range; never SQL).
pub use pgp::protocol::ChunkTask;

/// Run ids become parts of object and table names: keep them to a safe alphabet.
pub fn check_run_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!("run_id {id:?} must be 1 to 64 characters"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "run_id {id:?} may only hold letters, digits, `-` and `_`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_request_round_trips_and_rejects_unknown_fields() {
        let r: LoadRequest = serde_json::from_str(
            r#"{"manifest":"m.yaml","load_type":"incremental","hours":2,
                "execution_date":"2026-11-24T10:00:00Z","task_instance":"ti"}"#,
        )
        .unwrap();
        assert_eq!(r.hours, Some(2));
        assert_eq!(r.load_type, LoadType::Incremental);
        let back: LoadRequest = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let e = serde_json::from_str::<LoadRequest>(
            r#"{"manifest":"m.yaml","load_type":"scd","hourz":2}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("hourz"), "{e}");
        assert!(
            serde_json::from_str::<LoadRequest>(r#"{"manifest":"m","load_type":"full"}"#).is_err()
        );
    }

    #[test]
    fn run_ids_are_restricted() {
        assert!(check_run_id("ps-123_abc").is_ok());
        assert!(check_run_id("../x").is_err());
        assert!(check_run_id("").is_err());
        assert!(check_run_id("a b").is_err());
    }
}

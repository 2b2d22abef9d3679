//! A small client for Snowflake's connector protocol (the one the official drivers
//! speak): `POST /session/v1/login-request` for a session token, `POST
//! /queries/v1/query-request` per statement, `POST /session/token-request` to renew an
//! expired session. Results arrive as a JSON `rowset` or as Arrow IPC in `rowsetBase64`
//! (decoded with arrow-rs); errors carry Snowflake's `code` and `message`, surfaced
//! verbatim, with a kind from the SQLSTATE or HTTP status. A result larger than one
//! answer arrives in *chunks*: the first rows inline, the rest as URLs to download (with
//! the headers or `qrmk` key the answer names), each a JSON row list or an Arrow IPC
//! stream, possibly gzip-compressed; they are read in order.
//! One session; statements run one at a time, so `BEGIN ... COMMIT` spans consecutive
//! calls (the warehouse holds a lock across a transaction).
//!
//! Session parameters set at login ([`session_parameters`]): `AUTOCOMMIT`, `TIMEZONE =
//! UTC`, the date and time input formats, and `LOCK_TIMEOUT = 60` seconds, so that a statement waiting on another session's lock (a publisher
//! holding a target's lock) fails soon and is retried as busy instead of waiting for
//! Snowflake's default 12 hours.

use super::config::{Auth, SnowflakeConfig};
use super::jwt::KeyPair;
use crate::error::{Error, ErrorKind, Result};
use base64::Engine;
use secrecy::ExposeSecret;
use std::time::Duration;

/// A statement's result, every value as text (or NULL).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Rows {
    /// The first value of the first row.
    pub fn scalar(&self) -> Option<&str> {
        self.rows
            .first()
            .and_then(|r| r.first())
            .and_then(|v| v.as_deref())
    }

    /// Index of a column by (case-insensitive) name.
    pub fn col(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
    }
}

#[derive(Debug)]
struct Session {
    token: String,
    master: Option<String>,
}

pub struct Client {
    cfg: SnowflakeConfig,
    http: reqwest::Client,
    session: Option<Session>,
    key: Option<KeyPair>,
    seq: u64,
    /// A transaction is open on this session (`BEGIN` sent, no `COMMIT`/`ROLLBACK`
    /// yet). Set and cleared by the warehouse; a user that finds it set by a dropped
    /// transaction rolls back first.
    pub in_txn: bool,
}

/// The session parameters pgp sets at login, whatever the account's or user's defaults:
/// autocommit outside `BEGIN`, UTC, a bounded lock wait, and the date and time input
/// formats pinned to `AUTO`. The COPY transformation casts each staged field
/// (`$n::DATE`, `::TIME`, `::TIMESTAMP_NTZ`, `::TIMESTAMP_TZ`); Snowflake documents that
/// an explicit cast in a COPY transformation applies neither the file format's
/// DATE/TIME/TIMESTAMP_FORMAT nor the session's *_INPUT_FORMAT
/// (<https://docs.snowflake.com/en/user-guide/data-load-transform>, "Supported
/// functions"), so those casts read PostgreSQL's ISO output (`DateStyle = ISO, YMD`)
/// by AUTO detection whatever an account sets. The session pin covers every other cast
/// of date and time text in pgp's sessions, so that an account-level format (say
/// `MM/DD/YYYY`, set for a BI tool) can never reinterpret a value anywhere in a load.
/// `TIMESTAMP_TYPE_MAPPING` is irrelevant: every cast names its TIMESTAMP_* type.
pub fn session_parameters() -> serde_json::Value {
    serde_json::json!({
        "AUTOCOMMIT": true,
        "TIMEZONE": "UTC",
        "LOCK_TIMEOUT": LOCK_TIMEOUT_SECONDS,
        "DATE_INPUT_FORMAT": "AUTO",
        "TIME_INPUT_FORMAT": "AUTO",
        "TIMESTAMP_INPUT_FORMAT": "AUTO",
    })
}

/// Seconds a statement waits for another session's lock (`LOCK_TIMEOUT`).
pub const LOCK_TIMEOUT_SECONDS: u64 = 60;

/// Snowflake's error code for "too many statements waiting on this lock".
const LOCK_WAITERS_EXCEEDED: &str = "000625";

/// Session expired; renew with the master token.
const SESSION_EXPIRED: &str = "390112";
/// Master token expired: log in again.
const MASTER_EXPIRED: &str = "390114";
/// Query still running: poll `getResultUrl`.
const IN_PROGRESS: [&str; 2] = ["333333", "333334"];

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Client {
    pub fn new(cfg: SnowflakeConfig) -> Result<Self> {
        crate::storage::install_crypto();
        let key = match &cfg.auth {
            Auth::KeyPair { pem, passphrase } => Some(KeyPair::from_pem(
                pem.expose_secret(),
                passphrase.as_ref().map(|p| p.expose_secret()),
            )?),
            Auth::Password(_) => None,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3600))
            .connect_timeout(Duration::from_secs(30))
            .user_agent(concat!("pgp/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::warehouse("snowflake client", e, ErrorKind::Permanent))?;
        Ok(Client {
            cfg,
            http,
            session: None,
            key,
            seq: 0,
            in_txn: false,
        })
    }

    pub fn config(&self) -> &SnowflakeConfig {
        &self.cfg
    }

    async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let url = format!("{}{}", self.cfg.base_url, path);
        let mut req = self
            .http
            .post(&url)
            .header("Accept", "application/snowflake")
            .json(body);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Snowflake Token=\"{t}\""));
        }
        // A request that never got an answer (refused, reset, timed out) is transient.
        let resp = req.send().await.map_err(|e| {
            Error::warehouse(
                self.cfg.display(),
                format!("request failed: {e}"),
                ErrorKind::Transient,
            )
        })?;
        read_json(&self.cfg, resp).await
    }

    async fn login(&mut self) -> Result<()> {
        let mut data = serde_json::json!({
            "CLIENT_APP_ID": "pgp",
            "CLIENT_APP_VERSION": env!("CARGO_PKG_VERSION"),
            "ACCOUNT_NAME": self.cfg.account.split('.').next().unwrap_or(&self.cfg.account).to_uppercase(),
            "LOGIN_NAME": self.cfg.user,
            "CLIENT_ENVIRONMENT": {"APPLICATION": "pgp"},
            "SESSION_PARAMETERS": session_parameters(),
        });
        match (&self.cfg.auth, &self.key) {
            (Auth::Password(p), _) => data["PASSWORD"] = p.expose_secret().into(),
            (Auth::KeyPair { .. }, Some(k)) => {
                let now = chrono::Utc::now().timestamp();
                data["AUTHENTICATOR"] = "SNOWFLAKE_JWT".into();
                data["TOKEN"] = k.token(&self.cfg.account, &self.cfg.user, now)?.into();
            }
            (Auth::KeyPair { .. }, None) => unreachable!("key loaded in new()"),
        }
        let mut query = vec![
            ("databaseName", self.cfg.database.clone()),
            ("requestId", request_id()),
        ];
        if let Some(w) = &self.cfg.warehouse {
            query.push(("warehouse", w.clone()));
        }
        if let Some(r) = &self.cfg.role {
            query.push(("roleName", r.clone()));
        }
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        let v = self
            .post(
                &format!("/session/v1/login-request?{qs}"),
                None,
                &serde_json::json!({"data": data}),
            )
            .await?;
        // A refused login (wrong key, unknown user, locked account) does not fix itself
        // by retrying, whatever SQLSTATE it carries; a 5xx never reaches here.
        check(&self.cfg, "login", &v).map_err(|e| match e {
            Error::Warehouse {
                context, message, ..
            } => Error::Warehouse {
                context,
                message,
                kind: ErrorKind::Permanent,
            },
            e => e,
        })?;
        let token = v["data"]["token"].as_str().ok_or_else(|| {
            Error::warehouse(
                self.cfg.display(),
                "login answered without a token",
                ErrorKind::Transient,
            )
        })?;
        self.session = Some(Session {
            token: token.to_string(),
            master: v["data"]["masterToken"].as_str().map(str::to_string),
        });
        tracing::debug!(account = %self.cfg.account, "logged in to Snowflake");
        Ok(())
    }

    /// Renew an expired session token; false when a new login is needed.
    async fn renew(&mut self) -> Result<bool> {
        let Some(Session {
            token,
            master: Some(master),
        }) = &self.session
        else {
            return Ok(false);
        };
        let body = serde_json::json!({"oldSessionToken": token, "requestType": "RENEW"});
        let v = self
            .post(
                &format!("/session/token-request?requestId={}", request_id()),
                Some(master),
                &body,
            )
            .await?;
        if v["success"].as_bool() != Some(true) {
            return Ok(false);
        }
        match v["data"]["sessionToken"].as_str() {
            Some(t) => {
                let master = v["data"]["masterToken"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| self.session.as_ref().and_then(|s| s.master.clone()));
                self.session = Some(Session {
                    token: t.to_string(),
                    master,
                });
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The session token (logging in first if there is none) and the body of the next
    /// query request: `sql` run at once, or, given `multi` (its statement count),
    /// submitted to run asynchronously as a multi-statement request.
    async fn next_request(
        &mut self,
        sql: &str,
        multi: Option<usize>,
    ) -> Result<(String, serde_json::Value)> {
        if self.session.is_none() {
            self.login().await?;
        }
        let token = self.session.as_ref().expect("logged in").token.clone();
        self.seq += 1;
        let mut body = serde_json::json!({
            "sqlText": sql,
            "asyncExec": multi.is_some(),
            "sequenceId": self.seq,
            "querySubmissionTime": chrono::Utc::now().timestamp_millis(),
        });
        if let Some(n) = multi {
            body["parameters"] = serde_json::json!({ "MULTI_STATEMENT_COUNT": n });
        }
        Ok((token, body))
    }

    /// Run one statement.
    pub async fn query(&mut self, sql: &str) -> Result<Rows> {
        for attempt in 0..3 {
            let (token, body) = self.next_request(sql, None).await?;
            let mut v = self
                .post(
                    &format!("/queries/v1/query-request?requestId={}", request_id()),
                    Some(&token),
                    &body,
                )
                .await?;
            // Long statements answer "in progress" with a URL to poll.
            let mut polls = 0;
            while IN_PROGRESS.contains(&v["code"].as_str().unwrap_or("")) {
                let Some(url) = v["data"]["getResultUrl"].as_str().map(str::to_string) else {
                    break;
                };
                polls += 1;
                tokio::time::sleep(Duration::from_millis((50 * polls).min(2000))).await;
                let resp = self
                    .http
                    .get(format!("{}{}", self.cfg.base_url, url))
                    .header("Accept", "application/snowflake")
                    .header("Authorization", format!("Snowflake Token=\"{token}\""))
                    .send()
                    .await
                    .map_err(|e| {
                        Error::warehouse(
                            self.cfg.display(),
                            format!("poll failed: {e}"),
                            ErrorKind::Transient,
                        )
                    })?;
                v = read_json(&self.cfg, resp).await?;
            }
            if attempt < 2 && self.expired(&v).await? {
                continue;
            }
            check(&self.cfg, sql, &v)?;
            let mut rows = decode(&self.cfg, &v["data"])?;
            self.read_chunks(&v["data"], &mut rows).await?;
            return Ok(rows);
        }
        Err(Error::warehouse(
            self.cfg.display(),
            "session could not be renewed",
            ErrorKind::Transient,
        ))
    }

    /// Whether answer `v` says the session expired, renewing it (or dropping it, for a
    /// new login) so that the request can be sent again.
    async fn expired(&mut self, v: &serde_json::Value) -> Result<bool> {
        match v["code"].as_str() {
            Some(SESSION_EXPIRED) => {
                if !self.renew().await? {
                    self.session = None;
                }
                Ok(true)
            }
            Some(MASTER_EXPIRED) => {
                self.session = None;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Submit `statements` as one asynchronous multi-statement request (the connector
    /// protocol's `asyncExec` with the `MULTI_STATEMENT_COUNT` parameter, as Snowflake's
    /// connectors send it): Snowflake runs them in order after answering, and on after
    /// this client has gone (`ABORT_DETACHED_QUERY` is false by default). Returns the
    /// query id. Nothing waits for the statements: whoever needs their effect reads it.
    pub async fn submit_async(&mut self, statements: &[String]) -> Result<String> {
        let sql = statements.join(";\n");
        for attempt in 0..3 {
            let (token, body) = self.next_request(&sql, Some(statements.len())).await?;
            let v = self
                .post(
                    &format!("/queries/v1/query-request?requestId={}", request_id()),
                    Some(&token),
                    &body,
                )
                .await?;
            if attempt < 2 && self.expired(&v).await? {
                continue;
            }
            check(&self.cfg, &sql, &v)?;
            return v["data"]["queryId"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| {
                    Error::warehouse(
                        self.cfg.display(),
                        "an asynchronous submission answered without a queryId",
                        ErrorKind::Transient,
                    )
                });
        }
        Err(Error::warehouse(
            self.cfg.display(),
            "session could not be renewed",
            ErrorKind::Transient,
        ))
    }

    /// Download the result chunks an answer lists and append their rows, in order.
    /// Each chunk is fetched from its `url` with the answer's `chunkHeaders` (or, in
    /// older answers, the `qrmk` key as the SSE-C headers), may be gzip-compressed
    /// (detected by its magic bytes), and holds rows in the answer's
    /// `queryResultFormat`: `json` (rows `[..],[..]` without the outer brackets) or
    /// `arrow` (an IPC stream).
    async fn read_chunks(&self, data: &serde_json::Value, rows: &mut Rows) -> Result<()> {
        let Some(chunks) = data["chunks"].as_array().filter(|c| !c.is_empty()) else {
            return Ok(());
        };
        let arrow = data["queryResultFormat"]
            .as_str()
            .is_some_and(|f| f.eq_ignore_ascii_case("arrow"));
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(h) = data["chunkHeaders"].as_object() {
            for (k, v) in h {
                if let (Ok(name), Some(Ok(value))) = (
                    reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                    v.as_str().map(reqwest::header::HeaderValue::from_str),
                ) {
                    headers.insert(name, value);
                }
            }
        } else if let Some(qrmk) = data["qrmk"].as_str() {
            headers.insert(
                "x-amz-server-side-encryption-customer-algorithm",
                reqwest::header::HeaderValue::from_static("AES256"),
            );
            if let Ok(v) = reqwest::header::HeaderValue::from_str(qrmk) {
                headers.insert("x-amz-server-side-encryption-customer-key", v);
            }
        }
        let ctx = || format!("{} result chunk", self.cfg.display());
        for (i, chunk) in chunks.iter().enumerate() {
            let url = chunk["url"].as_str().ok_or_else(|| {
                Error::warehouse(ctx(), format!("chunk {i} has no url"), ErrorKind::Permanent)
            })?;
            let resp = self
                .http
                .get(url)
                .headers(headers.clone())
                .send()
                .await
                .map_err(|e| {
                    Error::warehouse(ctx(), format!("chunk {i}: {e}"), ErrorKind::Transient)
                })?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(|e| {
                Error::warehouse(ctx(), format!("chunk {i}: {e}"), ErrorKind::Transient)
            })?;
            if !status.is_success() {
                return Err(Error::warehouse(
                    ctx(),
                    format!("chunk {i}: HTTP {status}"),
                    ErrorKind::from_http_status(status.as_u16()),
                ));
            }
            let body = gunzip_if_needed(&body).map_err(|e| {
                Error::warehouse(ctx(), format!("chunk {i}: {e}"), ErrorKind::Transient)
            })?;
            let before = rows.rows.len();
            if arrow {
                let b64 = base64::engine::general_purpose::STANDARD.encode(&body);
                let more = decode_arrow(&b64).map_err(|e| {
                    Error::warehouse(ctx(), format!("chunk {i}: {e}"), ErrorKind::Permanent)
                })?;
                rows.rows.extend(more);
            } else {
                let mut text = Vec::with_capacity(body.len() + 2);
                text.push(b'[');
                text.extend_from_slice(&body);
                text.push(b']');
                let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
                    Error::warehouse(ctx(), format!("chunk {i}: {e}"), ErrorKind::Transient)
                })?;
                rows.rows.extend(json_rows(&v));
            }
            if let Some(n) = chunk["rowCount"].as_u64() {
                let got = (rows.rows.len() - before) as u64;
                if got != n {
                    return Err(Error::warehouse(
                        ctx(),
                        format!("chunk {i} holds {got} rows, the answer said {n}"),
                        ErrorKind::Transient,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Decompress a gzip body (magic `1f 8b`); other bodies come back as they are.
fn gunzip_if_needed(body: &[u8]) -> std::io::Result<Vec<u8>> {
    if body.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(body), &mut out)?;
        Ok(out)
    } else {
        Ok(body.to_vec())
    }
}

/// Rows of a JSON rowset: every value as text or NULL.
fn json_rows(v: &serde_json::Value) -> Vec<Vec<Option<String>>> {
    v.as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r.as_array()
                        .map(|vals| {
                            vals.iter()
                                .map(|v| match v {
                                    serde_json::Value::Null => None,
                                    serde_json::Value::String(s) => Some(s.clone()),
                                    other => Some(other.to_string()),
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn read_json(cfg: &SnowflakeConfig, resp: reqwest::Response) -> Result<serde_json::Value> {
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| {
        Error::warehouse(
            cfg.display(),
            format!("reading the answer: {e}"),
            ErrorKind::Transient,
        )
    })?;
    let kind = if status.is_success() {
        // A success status with a body that is not JSON: cut off on the way.
        ErrorKind::Transient
    } else {
        ErrorKind::from_http_status(status.as_u16())
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| {
        Error::warehouse(
            cfg.display(),
            format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            ),
            kind,
        )
    })?;
    // A server error is transient whatever its body says (Snowflake's documented 5xx
    // answers; an emulator's unhandled exception, such as a transaction conflict).
    if !status.is_success() && (status.is_server_error() || v["success"].as_bool() != Some(false)) {
        let message = v["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        return Err(Error::warehouse(
            cfg.display(),
            format!("HTTP {status}: {message}"),
            kind,
        ));
    }
    Ok(v)
}

/// Snowflake's error, verbatim: `code: message`. The kind comes from the SQLSTATE the
/// answer carries (`data.sqlState`, the standard classes: see
/// [`ErrorKind::from_sqlstate`]); too many waiters on a lock (`000625`) is busy; an
/// error without a SQLSTATE is permanent.
fn check(cfg: &SnowflakeConfig, what: &str, v: &serde_json::Value) -> Result<()> {
    if v["success"].as_bool() == Some(true) {
        return Ok(());
    }
    let code = v["code"].as_str().unwrap_or("?");
    let message = v["message"].as_str().unwrap_or("(no message)");
    let state = v["data"]["sqlState"].as_str();
    let kind = match (code, state) {
        (LOCK_WAITERS_EXCEEDED, _) => ErrorKind::Busy,
        (_, Some(s)) => ErrorKind::from_sqlstate(s),
        (_, None) => ErrorKind::Permanent,
    };
    let what: String = what.chars().take(200).collect();
    Err(Error::Warehouse {
        context: format!("{} running {what}", cfg.display()),
        message: match state {
            Some(s) => format!("Snowflake error {code} ({s}): {message}"),
            None => format!("Snowflake error {code}: {message}"),
        },
        kind,
    })
}

fn decode(cfg: &SnowflakeConfig, data: &serde_json::Value) -> Result<Rows> {
    let columns: Vec<String> = data["rowtype"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    if let Some(b64) = data["rowsetBase64"].as_str().filter(|s| !s.is_empty()) {
        let rows = decode_arrow(b64)
            .map_err(|e| Error::warehouse(cfg.display(), e, ErrorKind::Permanent))?;
        return Ok(Rows { columns, rows });
    }
    Ok(Rows {
        columns,
        rows: json_rows(&data["rowset"]),
    })
}

/// Decode an Arrow IPC stream (Snowflake's `rowsetBase64`) into text values. Integer
/// columns that Snowflake marks with a `scale` (its FIXED type) get their decimal point.
pub fn decode_arrow(b64: &str) -> std::result::Result<Vec<Vec<Option<String>>>, String> {
    use arrow_array::Array;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("rowsetBase64 is not base64: {e}"))?;
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| format!("not an Arrow stream: {e}"))?;
    let schema = reader.schema();
    let scales: Vec<u32> = schema
        .fields()
        .iter()
        .map(|f| {
            f.metadata()
                .get("scale")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    let mut out = Vec::new();
    let options = arrow_cast::display::FormatOptions::default();
    for batch in reader {
        let batch = batch.map_err(|e| format!("Arrow batch: {e}"))?;
        let formatters = batch
            .columns()
            .iter()
            .map(|c| arrow_cast::display::ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| format!("Arrow value: {e}"))?;
        for row in 0..batch.num_rows() {
            let mut vals = Vec::with_capacity(batch.num_columns());
            for (i, col) in batch.columns().iter().enumerate() {
                if col.is_null(row) {
                    vals.push(None);
                    continue;
                }
                let text = formatters[i].value(row).to_string();
                let is_int = col.data_type().is_integer();
                vals.push(Some(if is_int && scales[i] > 0 {
                    with_scale(&text, scales[i])
                } else {
                    text
                }));
            }
            out.push(vals);
        }
    }
    Ok(out)
}

/// `12345` with scale 2 -> `123.45`.
fn with_scale(digits: &str, scale: u32) -> String {
    let (sign, d) = digits
        .strip_prefix('-')
        .map(|d| ("-", d))
        .unwrap_or(("", digits));
    let scale = scale as usize;
    let padded = format!("{d:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn the_session_pins_time_zone_input_formats_and_lock_wait() {
        assert_eq!(
            session_parameters(),
            serde_json::json!({
                "AUTOCOMMIT": true,
                "TIMEZONE": "UTC",
                "LOCK_TIMEOUT": 60,
                "DATE_INPUT_FORMAT": "AUTO",
                "TIME_INPUT_FORMAT": "AUTO",
                "TIMESTAMP_INPUT_FORMAT": "AUTO",
            })
        );
    }

    #[test]
    fn decodes_arrow_rowsets_with_nulls_and_scales() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("T", DataType::Utf8, true),
            Field::new("B", DataType::Boolean, true),
            Field::new("N", DataType::Int64, true).with_metadata(std::collections::HashMap::from(
                [("scale".to_string(), "2".to_string())],
            )),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some(""), None, Some("a\tb")])) as ArrayRef,
                Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
                Arc::new(Int64Array::from(vec![Some(12345), Some(-5), None])),
            ],
        )
        .unwrap();
        let mut buf = Vec::new();
        {
            let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut buf, &schema).unwrap();
            w.write(&batch).unwrap();
            w.finish().unwrap();
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(&buf);
        let rows = decode_arrow(&b64).unwrap();
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            rows,
            vec![
                vec![s(""), s("true"), s("123.45")],
                vec![None, s("false"), s("-0.05")],
                vec![s("a\tb"), None, None],
            ]
        );
        assert!(decode_arrow("%%%").is_err());
    }

    #[test]
    fn json_rowsets_and_errors() {
        let cfg = super::super::config::SnowflakeConfig::from_url(
            "snowflake://u@a/DB?protocol=http&host=127.0.0.1&port=1",
            &std::collections::BTreeMap::from([
                ("PGP_SNOWFLAKE_PASSWORD".to_string(), "pw".to_string()),
                ("PGP_SNOWFLAKE_STAGE".to_string(), "S".to_string()),
            ]),
            "gs://b",
        )
        .unwrap();
        let data = serde_json::json!({"rowtype": [{"name": "number of rows inserted"}], "rowset": [["3"], [null]]});
        let rows = decode(&cfg, &data).unwrap();
        assert_eq!(rows.scalar(), Some("3"));
        assert_eq!(rows.rows[1], vec![None]);
        let err = check(
            &cfg,
            "SELECT 1",
            &serde_json::json!({"success": false, "code": "002003", "message": "SQL compilation error: Object 'X' does not exist."}),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("002003") && err.contains("Object 'X' does not exist."),
            "{err}"
        );
        assert_eq!(with_scale("5", 3), "0.005");
    }
}

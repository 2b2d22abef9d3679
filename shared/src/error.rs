//! One error type for the library, so callers branch on meaning (a bad manifest, an
//! unreachable source, a warehouse refusal) instead of on strings. Every variant carries
//! the context an operator needs to act: the manifest file, the table, the object.
//! Nothing here ever holds a password: connection errors are built from redacted parts.
//!
//! Every error also has a [`ErrorKind`], decided where the error arises from what the
//! failing system says in a structured way (a PostgreSQL or Snowflake SQLSTATE, an HTTP
//! status, an I/O error kind), never by reading the message text. The services turn the
//! kind into their acknowledgement: permanent errors are acknowledged (retrying cannot
//! help), transient and busy ones are redelivered.

use std::path::PathBuf;

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether trying the same step again later can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The same input fails the same way every time (bad manifest, unknown table,
    /// syntax error, a value the warehouse refuses, a count mismatch).
    Permanent,
    /// The system failed or was unreachable for a while (connection refused or reset,
    /// HTTP 5xx, timeouts, server shutting down, too many connections).
    Transient,
    /// Someone else holds what this step needs (a lock, a claim another worker is
    /// finishing); it goes away by itself.
    Busy,
}

impl ErrorKind {
    /// Transient and busy errors are worth retrying.
    pub fn is_retriable(self) -> bool {
        !matches!(self, ErrorKind::Permanent)
    }

    /// The kind of a failure with this HTTP status (GCS, Pub/Sub REST, Snowflake):
    /// request timeout, rate limiting and server errors are transient, anything else
    /// the server refused is permanent.
    pub fn from_http_status(status: u16) -> Self {
        match status {
            408 | 429 | 500..=599 => ErrorKind::Transient,
            409 => ErrorKind::Busy,
            _ => ErrorKind::Permanent,
        }
    }

    /// The kind of an SQL error by its SQLSTATE (PostgreSQL's codes; Snowflake reports
    /// the same standard classes): connection exceptions (`08`), transaction rollbacks
    /// such as serialization failures and deadlocks (`40`), insufficient resources such
    /// as too many connections (`53`), operator intervention such as admin shutdown or a
    /// statement timeout (`57`), system errors (`58`) and internal errors (`XX000`) are
    /// transient; a lock not available (`55P03`) is busy; everything else (syntax,
    /// undefined objects, data exceptions, permissions, ...) is permanent.
    pub fn from_sqlstate(code: &str) -> Self {
        match code {
            "55P03" => ErrorKind::Busy,
            "XX000" => ErrorKind::Transient,
            c if c.starts_with("40") || c.starts_with("53") => ErrorKind::Busy,
            c if c.starts_with("08") || c.starts_with("57") || c.starts_with("58") => {
                ErrorKind::Transient
            }
            _ => ErrorKind::Permanent,
        }
    }

    /// The kind of a local I/O failure: a missing file or a permission problem will not
    /// fix itself; anything else (disk full, interrupted, ...) may.
    pub fn from_io(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::NotFound | K::PermissionDenied | K::InvalidInput | K::InvalidData => {
                ErrorKind::Permanent
            }
            K::WouldBlock => ErrorKind::Busy,
            _ => ErrorKind::Transient,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::Permanent => "permanent",
            ErrorKind::Transient => "transient",
            ErrorKind::Busy => "busy",
        })
    }
}

/// Everything that can go wrong in planning, extracting or loading.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The manifest could not be read or is not valid; nothing was loaded.
    #[error("manifest {file}: {message}")]
    Manifest { file: PathBuf, message: String },

    /// A table entry of a manifest is invalid.
    #[error("manifest {file}, table `{table}`, field `{field}`: {message}")]
    ManifestField {
        file: PathBuf,
        table: String,
        field: String,
        message: String,
    },

    /// An identifier that would be spliced into SQL is not acceptable.
    #[error("invalid identifier {value:?} ({what}): {reason}")]
    Identifier {
        what: &'static str,
        value: String,
        reason: &'static str,
    },

    /// A placeholder in a query could not be resolved, or must not be.
    #[error("table `{table}`: placeholder {{{name}}} {reason}")]
    Placeholder {
        table: String,
        name: String,
        reason: String,
    },

    /// Run parameters (window, flags) are inconsistent.
    #[error("invalid run parameters: {0}")]
    Params(String),

    /// The query could not be parsed or rewritten.
    #[error("table `{table}`: cannot rewrite the query: {message}")]
    Query { table: String, message: String },

    /// Source configuration is missing (an environment variable is not set, ...).
    #[error("source configuration: {0}")]
    SourceConfig(String),

    /// The source database failed (connection or query).
    #[error("postgres ({context}): {message}")]
    Source {
        context: String,
        message: String,
        /// From the SQLSTATE, or transient for connection-level failures.
        kind: ErrorKind,
    },

    /// A column type or name the pipeline cannot carry.
    #[error("table `{table}`, column `{column}`: {message}")]
    Column {
        table: String,
        column: String,
        message: String,
    },

    /// Object storage failed.
    #[error("storage ({object}): {message}")]
    Storage {
        object: String,
        message: String,
        /// From the HTTP status or I/O error kind.
        kind: ErrorKind,
    },

    /// The warehouse refused or failed a statement.
    #[error("warehouse ({context}): {message}")]
    Warehouse {
        context: String,
        message: String,
        /// From the SQLSTATE, Snowflake error code or HTTP status.
        kind: ErrorKind,
    },

    /// Rows extracted and rows loaded differ: nothing of the table became visible.
    #[error("table `{table}`, chunk {chunk}: postgres sent {source_rows} rows but the warehouse loaded {loaded_rows}")]
    CountMismatch {
        table: String,
        chunk: String,
        source_rows: u64,
        loaded_rows: u64,
    },

    /// The rows a load inserted differ from what PostgreSQL sent in a column's
    /// measures ([`crate::profile`]): nothing of the table became visible.
    #[error("table `{table}`, chunk {chunk}: the loaded rows differ from what postgres sent: {difference}")]
    ProfileMismatch {
        table: String,
        chunk: String,
        difference: String,
    },

    /// A table cannot be loaded with the requested load type (e.g. no usable key).
    #[error("table `{table}`: {message}")]
    Unsupported { table: String, message: String },

    /// A run can no longer be published: a later run of the same target replaced it,
    /// or its records are inconsistent. Permanent; the reason says which.
    #[error("run {run_id} of {target}: {message}")]
    Run {
        run_id: String,
        target: String,
        message: String,
    },

    /// Another worker holds what this step needs (a publish claim); retry later.
    #[error("{0}")]
    Busy(String),

    /// Configuration URL problems (`PGP_STORAGE_URL`, `PGP_WAREHOUSE_URL`).
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether the failure is permanent, transient or busy.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Source { kind, .. }
            | Error::Storage { kind, .. }
            | Error::Warehouse { kind, .. } => *kind,
            Error::Busy(_) => ErrorKind::Busy,
            _ => ErrorKind::Permanent,
        }
    }

    /// Whether retrying the same step later may succeed (used by the services to
    /// pick between redelivery and acknowledgement).
    pub fn is_retriable(&self) -> bool {
        self.kind().is_retriable()
    }

    /// A PostgreSQL error: the kind comes from the server's SQLSTATE; a failure with no
    /// server error (connection refused, reset, closed, TLS) is transient.
    pub(crate) fn source(context: impl Into<String>, e: tokio_postgres::Error) -> Self {
        let kind = match e.as_db_error() {
            Some(db) => ErrorKind::from_sqlstate(db.code().code()),
            None => ErrorKind::Transient,
        };
        // The Display of tokio_postgres errors never includes the password: the
        // config is not part of the message. DbError carries server text + detail.
        let message = match e.as_db_error() {
            Some(db) => {
                let mut m = format!(
                    "{}: {} (SQLSTATE {})",
                    db.severity(),
                    db.message(),
                    db.code().code()
                );
                if let Some(d) = db.detail() {
                    m.push_str(&format!(" (detail: {d})"));
                }
                if let Some(p) = db.position() {
                    m.push_str(&format!(" (at {p:?})"));
                }
                m
            }
            None => {
                let mut m = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    m.push_str(&format!(": {s}"));
                    src = s.source();
                }
                m
            }
        };
        Error::Source {
            context: context.into(),
            message,
            kind,
        }
    }

    /// A warehouse failure of the given kind.
    pub fn warehouse(
        context: impl Into<String>,
        e: impl std::fmt::Display,
        kind: ErrorKind,
    ) -> Self {
        Error::Warehouse {
            context: context.into(),
            message: e.to_string(),
            kind,
        }
    }

    /// A storage failure of the given kind.
    pub fn storage(object: impl Into<String>, e: impl std::fmt::Display, kind: ErrorKind) -> Self {
        Error::Storage {
            object: object.into(),
            message: e.to_string(),
            kind,
        }
    }

    /// A local I/O failure on an object, its kind from the I/O error.
    pub(crate) fn storage_io(object: impl Into<String>, e: std::io::Error) -> Self {
        let kind = ErrorKind::from_io(&e);
        Error::storage(object, e, kind)
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorKind as K;

    #[test]
    fn sqlstates_decide_the_kind() {
        for (code, kind) in [
            ("08006", K::Transient), // connection failure
            ("40001", K::Busy),      // serialization failure
            ("40P01", K::Busy),      // deadlock detected
            ("53300", K::Busy),      // too many connections
            ("57P01", K::Transient), // admin shutdown
            ("57014", K::Transient), // statement timeout / query canceled
            ("58030", K::Transient), // I/O error
            ("55P03", K::Busy),      // lock not available
            ("XX000", K::Transient), // internal error
            ("42P01", K::Permanent), // undefined table
            ("42601", K::Permanent), // syntax error
            ("22P02", K::Permanent), // invalid text representation
            ("28P01", K::Permanent), // invalid password
            ("55000", K::Permanent), // object not in prerequisite state ("lock" nowhere)
        ] {
            assert_eq!(K::from_sqlstate(code), kind, "{code}");
        }
    }

    #[test]
    fn http_statuses_decide_the_kind() {
        assert_eq!(K::from_http_status(503), K::Transient);
        assert_eq!(K::from_http_status(500), K::Transient);
        assert_eq!(K::from_http_status(429), K::Transient);
        assert_eq!(K::from_http_status(408), K::Transient);
        assert_eq!(K::from_http_status(404), K::Permanent);
        assert_eq!(K::from_http_status(403), K::Permanent);
        assert_eq!(K::from_http_status(400), K::Permanent);
    }

    #[test]
    fn a_message_mentioning_a_lock_is_not_busy() {
        let e = super::Error::warehouse("x", "table LOCKS does not exist", K::Permanent);
        assert!(!e.is_retriable());
    }
}

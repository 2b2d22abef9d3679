//! One error type for the library, so callers branch on meaning (a bad manifest, an
//! unreachable source, a warehouse refusal) instead of on strings. Every variant carries
//! the context an operator needs to act: the manifest file, the table, the object.
//! Nothing here ever holds a password: connection errors are built from redacted parts.

use std::path::PathBuf;

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

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
        /// True for failures worth retrying (connection refused, reset, timeouts).
        transient: bool,
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
    Storage { object: String, message: String },

    /// The warehouse refused or failed a statement.
    #[error("warehouse ({context}): {message}")]
    Warehouse { context: String, message: String },

    /// Rows extracted and rows loaded differ: nothing of the table became visible.
    #[error("table `{table}`, chunk {chunk}: postgres sent {source_rows} rows but the warehouse loaded {loaded_rows}")]
    CountMismatch {
        table: String,
        chunk: String,
        source_rows: u64,
        loaded_rows: u64,
    },

    /// A table cannot be loaded with the requested load type (e.g. no usable key).
    #[error("table `{table}`: {message}")]
    Unsupported { table: String, message: String },

    /// Configuration URL problems (`PGP_STORAGE_URL`, `PGP_WAREHOUSE_URL`).
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether retrying the same step later may succeed (used by the services to
    /// pick between redelivery and acknowledgement).
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            Error::Source {
                transient: true,
                ..
            } | Error::Storage { .. }
        )
    }

    pub(crate) fn source(context: impl Into<String>, e: tokio_postgres::Error) -> Self {
        let transient = e.as_db_error().is_none();
        // The Display of tokio_postgres errors never includes the password: the
        // config is not part of the message. DbError carries server text + detail.
        let message = match e.as_db_error() {
            Some(db) => {
                let mut m = format!("{}: {}", db.severity(), db.message());
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
            transient,
        }
    }

    pub(crate) fn warehouse(context: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Error::Warehouse {
            context: context.into(),
            message: e.to_string(),
        }
    }

    pub(crate) fn storage(object: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Error::Storage {
            object: object.into(),
            message: e.to_string(),
        }
    }
}

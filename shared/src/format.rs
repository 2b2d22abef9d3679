//! The staged file format, the one contract between extraction and every warehouse.
//!
//! Choice: PostgreSQL's **CSV** output with a **tab** delimiter (files are named
//! `.tsv.gz`), not PostgreSQL's text format. Why:
//! - In CSV mode PostgreSQL writes NULL as an *unquoted* empty field and an empty string
//!   as `""`, quotes any value holding a tab, quote, CR or LF, and escapes nothing but
//!   the quote (doubled). So every value is either raw bytes or a quoted run with
//!   doubled quotes: there is no backslash layer at all. Backslashes and the text `\N`
//!   travel as themselves.
//! - PostgreSQL's text format encodes NULL as `\N` and escapes `\t \n \r \\`. Snowflake
//!   can decode those (`ESCAPE_UNENCLOSED_FIELD='\\'`) but its `NULL_IF` is matched
//!   against the field, and whether the stored text `\N` (written `\\N`) stays text or
//!   turns NULL then depends on the order of escape decoding and NULL matching, which
//!   Snowflake does not document. DuckDB's CSV reader decodes no backslash escapes.
//!   CSV's rules are documented identically by all three systems.
//!
//! Snowflake (<https://docs.snowflake.com/en/sql-reference/sql/create-file-format>,
//! "Format type options (CSV)"):
//! - `FIELD_OPTIONALLY_ENCLOSED_BY='"'`: quoted fields may hold delimiters, CR and LF,
//!   and `""` inside them is one quote;
//! - `EMPTY_FIELD_AS_NULL=TRUE`: "two successive delimiters" (an unquoted empty field)
//!   load as NULL, while a quoted empty field `""` loads as the empty string;
//! - `NULL_IF=()`: no *text* value is ever turned into NULL (the default `('\\N')`
//!   would turn the text `\N` into NULL);
//! - `ESCAPE_UNENCLOSED_FIELD=NONE`, `ESCAPE=NONE`: backslashes are data;
//! - `ERROR_ON_COLUMN_COUNT_MISMATCH=TRUE`, `ENCODING='UTF8'`, `COMPRESSION=GZIP`,
//!   `SKIP_HEADER=0`, `TRIM_SPACE=FALSE`, `REPLACE_INVALID_CHARACTERS=FALSE` so that a
//!   malformed file fails the load instead of loading altered values.
//! - `SKIP_BYTE_ORDER_MARK=FALSE`: the default `TRUE` drops a U+FEFF that begins the
//!   file, i.e. the first character of the first field of the first row whenever a
//!   value starts with it; PostgreSQL writes no byte order mark, so any U+FEFF is data.
//! - Timestamps: PostgreSQL writes ISO `YYYY-MM-DD HH24:MI:SS[.FF]` and, for
//!   `timestamptz`, a `+00` offset (the session runs in UTC). The load casts every
//!   field explicitly in its COPY transformation, and Snowflake documents that such a
//!   cast applies neither `TIMESTAMP_FORMAT` nor the session's input format
//!   (<https://docs.snowflake.com/en/user-guide/data-load-transform>, "Supported
//!   functions"): the values are read by AUTO detection, whatever an account sets.
//!   `TIMESTAMP_FORMAT = AUTO` states the same for any load without a cast, and the
//!   session pins the input formats to AUTO too (`snowflake::client::session_parameters`).
//!
//! DuckDB: `read_csv(..., delim='\t', quote='"', escape='"', nullstr='',
//! allow_quoted_nulls=false)` gives the same reading (`allow_quoted_nulls=false` keeps
//! `""` as the empty string).

use std::fmt;

/// Compression of staged objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip, the default (Snowflake's recommended compressed files, ~4x smaller).
    #[default]
    Gzip,
    /// No compression (for benchmarks and debugging).
    None,
    /// Zstandard at level 1. Measured on the bench table's text (1,000,000 rows, 350
    /// MB): 24 % smaller objects than gzip at level 1 (95 against 124 MB), compressed
    /// in a third of the CPU (1.6 against 5.2 CPU-s per 400 MB, the command-line
    /// tools), read by DuckDB in half the time. Snowflake loads it (`COMPRESSION =
    /// ZSTD`); the Snowflake emulator does not, so its tests stage gzip.
    Zstd,
}

impl Compression {
    /// The default for a store: none for local files (the embedded warehouse reads them
    /// in place; `bench/tap-variants.sh` measured runs 14 % faster), gzip for object
    /// stores (Snowflake's recommended compressed files).
    pub fn default_for(store_url: &str) -> Compression {
        if store_url.starts_with("file://") {
            Compression::None
        } else {
            Compression::Gzip
        }
    }

    /// A reader of the staged text of an object stored with this compression (the one
    /// place that knows how each is read back, for whoever cannot read it natively).
    pub fn decoder<'a>(
        self,
        r: impl std::io::Read + 'a,
    ) -> std::io::Result<Box<dyn std::io::Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(r),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        })
    }

    /// File name suffix of staged objects.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::Gzip => "tsv.gz",
            Compression::None => "tsv",
            Compression::Zstd => "tsv.zst",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::None => "none",
            Compression::Zstd => "zstd",
        })
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd),
            o => Err(format!("unknown compression {o:?} (gzip|zstd|none)")),
        }
    }
}

/// The `COPY` options PostgreSQL writes staged files with.
pub const PG_COPY_OPTIONS: &str =
    "FORMAT csv, DELIMITER E'\\t', NULL '', QUOTE '\"', ESCAPE '\"', HEADER false, ENCODING 'UTF8'";

/// Session settings that make PostgreSQL's text output of values canonical and exact:
/// UTC offsets, ISO dates, round-trip float digits, hex bytea, ISO 8601 intervals.
pub const PG_SESSION_SETTINGS: &str = "SET TimeZone = 'UTC'; \
     SET DateStyle = 'ISO, YMD'; \
     SET IntervalStyle = 'iso_8601'; \
     SET extra_float_digits = 3; \
     SET bytea_output = 'hex'; \
     SET client_encoding = 'UTF8'; \
     SET default_transaction_read_only = on";

/// The `COPY ... TO STDOUT` statement for a (wrapped) query whose first output column
/// is `first_column` (already quoted; `None` for a query without columns).
///
/// That column is always quoted (`FORCE_QUOTE`; NULLs stay unquoted empty fields), so a
/// staged file never begins with the bytes of a U+FEFF: CSV readers take a leading
/// U+FEFF for a byte order mark and drop it — DuckDB's always, Snowflake's unless
/// `SKIP_BYTE_ORDER_MARK = FALSE` — which would strip it from the first value of the
/// first row. Quoting changes no value (`"..."` with doubled quotes is the same text
/// for every reader), and costs two bytes per row.
pub fn copy_statement(query: &str, first_column: Option<&str>) -> String {
    match first_column {
        Some(c) => format!("COPY ({query}) TO STDOUT WITH ({PG_COPY_OPTIONS}, FORCE_QUOTE ({c}))"),
        None => format!("COPY ({query}) TO STDOUT WITH ({PG_COPY_OPTIONS})"),
    }
}

/// The Snowflake file format for staged objects (see the module comment for why each
/// option is there).
pub const SNOWFLAKE_FILE_FORMAT: &str = "TYPE = CSV \
     FIELD_DELIMITER = '\\t' \
     RECORD_DELIMITER = '\\n' \
     FIELD_OPTIONALLY_ENCLOSED_BY = '\"' \
     ESCAPE = NONE \
     ESCAPE_UNENCLOSED_FIELD = NONE \
     EMPTY_FIELD_AS_NULL = TRUE \
     NULL_IF = () \
     SKIP_HEADER = 0 \
     TRIM_SPACE = FALSE \
     ERROR_ON_COLUMN_COUNT_MISMATCH = TRUE \
     REPLACE_INVALID_CHARACTERS = FALSE \
     SKIP_BYTE_ORDER_MARK = FALSE \
     ENCODING = 'UTF8' \
     COMPRESSION = GZIP \
     TIMESTAMP_FORMAT = AUTO";

/// DuckDB `read_csv` options equivalent to [`SNOWFLAKE_FILE_FORMAT`].
/// `max_line` bounds a row's size: DuckDB allocates a read buffer that large (it must
/// be at least the longest line), inside its memory limit; a longer row fails its load
/// naming the limit, never loads altered.
pub fn duckdb_read_options(compression: Compression, max_line: u64) -> String {
    format!(
        "delim = '\t', quote = '\"', escape = '\"', header = false, nullstr = '', \
         allow_quoted_nulls = false, auto_detect = false, \
         max_line_size = {max_line}, buffer_size = {max_line}, compression = '{}'",
        match compression {
            Compression::Gzip => "gzip",
            Compression::None => "none",
            Compression::Zstd => "zstd",
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_column_is_always_quoted_so_no_file_begins_with_a_bom() {
        assert_eq!(
            copy_statement("SELECT 1", Some("\"t\"")),
            "COPY (SELECT 1) TO STDOUT WITH (FORMAT csv, DELIMITER E'\\t', NULL '', QUOTE '\"', \
             ESCAPE '\"', HEADER false, ENCODING 'UTF8', FORCE_QUOTE (\"t\"))"
        );
        assert!(!copy_statement("SELECT", None).contains("FORCE_QUOTE"));
        assert!(SNOWFLAKE_FILE_FORMAT.contains("SKIP_BYTE_ORDER_MARK = FALSE"));
    }
}

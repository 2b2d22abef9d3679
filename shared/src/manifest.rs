//! GitLab `postgres_pipeline` manifests, read unchanged.
//!
//! The YAML is first deserialized into raw structs that mirror the file (so the YAML
//! parser can point at a line), then `Manifest::from_raw` builds the domain types and
//! names the file, the table and the field in every error. Keys GitLab used for other
//! tools (`dbt_source_model`, `dbt_snapshots`, `export_db`, `append_only`,
//! `import_schema`) are accepted and ignored; any other key is a typo and an error.

use crate::error::{Error, Result};
use crate::ident::{Ident, TableName};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `connection_info`: each field names the environment variable holding the value.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConnectionInfo {
    /// Variable with the user name.
    pub user: String,
    /// Variable with the password (never logged).
    pub pass: String,
    /// Variable with the host name or address.
    pub host: String,
    /// Variable with the database name.
    pub database: String,
    /// Variable with the port.
    pub port: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    connection_info: ConnectionInfo,
    #[serde(default)]
    tables: Option<BTreeMap<String, RawTable>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    import_db: Option<String>,
    import_query: Option<String>,
    export_schema: Option<String>,
    export_table: Option<String>,
    export_table_primary_key: Option<serde_yaml::Value>,
    additional_filtering: Option<String>,
    advanced_metadata: Option<bool>,
    // Accepted for compatibility with GitLab's manifests; pgp has no use for them.
    #[allow(dead_code)]
    dbt_source_model: Option<serde_yaml::Value>,
    #[allow(dead_code)]
    dbt_snapshots: Option<serde_yaml::Value>,
    #[allow(dead_code)]
    export_db: Option<serde_yaml::Value>,
    #[allow(dead_code)]
    append_only: Option<serde_yaml::Value>,
    #[allow(dead_code)]
    import_schema: Option<serde_yaml::Value>,
}

/// The key a table is chunked and resumed by.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum PrimaryKey {
    /// A plain column name: usable for chunked backfills.
    Column(Ident),
    /// An expression GitLab allowed (e.g. `CONCAT(a,'_',b)`): kept for reporting,
    /// never spliced into SQL, so such a table cannot be chunked.
    Expression(String),
}

/// One table of a manifest, validated.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// The key under `tables:`.
    pub name: String,
    /// `import_db`: a label for the source database (GitLab used it for logging).
    pub import_db: String,
    /// `import_query`, placeholders unresolved.
    pub import_query: String,
    /// `additional_filtering`, appended to the query as GitLab did.
    pub additional_filtering: Option<String>,
    /// `<export_schema>.<export_table>`.
    pub target: TableName,
    /// `export_table_primary_key`.
    pub primary_key: PrimaryKey,
    /// `advanced_metadata: true` adds `_task_instance`.
    pub advanced_metadata: bool,
}

/// A parsed manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where it was read from (named in errors).
    pub path: PathBuf,
    pub connection_info: ConnectionInfo,
    /// Tables in file order of their keys (sorted, as GitLab's YAML dumps are).
    pub tables: Vec<TableSpec>,
}

impl Manifest {
    /// Read and validate a manifest file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Manifest {
            file: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parse manifest text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let raw: RawManifest = serde_yaml::from_str(text).map_err(|e| {
            let message = match e.location() {
                Some(l) => format!("line {}, column {}: {e}", l.line(), l.column()),
                None => e.to_string(),
            };
            // serde_yaml already says "at line N" in some messages; keep its words.
            Error::Manifest {
                file: path.to_path_buf(),
                message,
            }
        })?;
        let mut tables = Vec::new();
        for (name, t) in raw.tables.unwrap_or_default() {
            tables.push(table_from_raw(path, text, name, t)?);
        }
        Ok(Manifest {
            path: path.to_path_buf(),
            connection_info: raw.connection_info,
            tables,
        })
    }

    /// The table with this manifest key.
    pub fn table(&self, name: &str) -> Option<&TableSpec> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// The 1-based line of `name:` under `tables:`, for messages about fields the YAML
/// parser accepted but the domain rejects.
fn line_of_table(text: &str, name: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let t = l.trim_start();
            l.len() > t.len()
                && (t.starts_with(&format!("{name}:"))
                    || t.starts_with(&format!("'{name}':"))
                    || t.starts_with(&format!("\"{name}\":")))
        })
        .map(|i| i + 1)
}

fn table_from_raw(path: &Path, text: &str, name: String, t: RawTable) -> Result<TableSpec> {
    let at = line_of_table(text, &name)
        .map(|l| format!(" (table starts at line {l})"))
        .unwrap_or_default();
    let field_err = |field: &str, message: String| Error::ManifestField {
        file: path.to_path_buf(),
        table: name.clone(),
        field: field.to_string(),
        message: format!("{message}{at}"),
    };
    let required = |field: &str, v: Option<String>| -> Result<String> {
        match v {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(field_err(field, "is empty".into())),
            None => Err(field_err(field, "is missing".into())),
        }
    };
    let import_db = required("import_db", t.import_db)?;
    let import_query = required("import_query", t.import_query)?;
    let schema = required("export_schema", t.export_schema)?;
    let table = required("export_table", t.export_table)?;
    let schema = Ident::parse("export_schema", schema.trim())
        .map_err(|e| field_err("export_schema", e.to_string()))?;
    let table = Ident::parse("export_table", table.trim())
        .map_err(|e| field_err("export_table", e.to_string()))?;
    let primary_key = match t.export_table_primary_key {
        None | Some(serde_yaml::Value::Null) => {
            return Err(field_err("export_table_primary_key", "is missing".into()))
        }
        Some(serde_yaml::Value::String(s)) => pk_from_str(&s),
        Some(v) => {
            return Err(field_err(
                "export_table_primary_key",
                format!("must be a column name, got {v:?}"),
            ))
        }
    };
    if let PrimaryKey::Expression(e) = &primary_key {
        if e.trim().is_empty() {
            return Err(field_err("export_table_primary_key", "is empty".into()));
        }
    }
    Ok(TableSpec {
        name,
        import_db,
        import_query,
        additional_filtering: t.additional_filtering.filter(|s| !s.trim().is_empty()),
        target: TableName::new(schema, table),
        primary_key,
        advanced_metadata: t.advanced_metadata.unwrap_or(false),
    })
}

fn pk_from_str(s: &str) -> PrimaryKey {
    match Ident::parse("export_table_primary_key", s.trim()) {
        Ok(i) => PrimaryKey::Column(i),
        Err(_) => PrimaryKey::Expression(s.trim().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
connection_info:
  database: DB_NAME
  host: DB_HOST
  pass: DB_PASS
  port: DB_PORT
  user: DB_USER
tables:
  users:
    dbt_source_model: true
    export_schema: 'gitlab_com'
    export_table: 'users'
    export_table_primary_key: id
    import_db: GITLAB_DB
    advanced_metadata: true
    import_query: |-
      SELECT id, name FROM users
"#;

    #[test]
    fn a_gitlab_manifest_parses_with_ignored_keys() {
        let m = Manifest::parse(Path::new("m.yaml"), OK).unwrap();
        assert_eq!(m.tables.len(), 1);
        let t = &m.tables[0];
        assert_eq!(t.target.to_string(), "gitlab_com.users");
        assert!(t.advanced_metadata);
        assert_eq!(m.connection_info.pass, "DB_PASS");
    }

    #[test]
    fn a_missing_field_names_file_table_and_field() {
        let bad = OK.replace("    export_table: 'users'\n", "");
        let e = Manifest::parse(Path::new("m.yaml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.yaml"), "{e}");
        assert!(e.contains("`users`"), "{e}");
        assert!(e.contains("`export_table`"), "{e}");
        assert!(e.contains("line 9"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_an_error_with_a_line() {
        let bad = OK.replace("import_db: GITLAB_DB", "import_dbb: GITLAB_DB");
        let e = Manifest::parse(Path::new("m.yaml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("import_dbb"), "{e}");
        assert!(e.contains("line "), "{e}");
    }

    #[test]
    fn an_injection_in_export_table_is_refused() {
        let bad = OK.replace("'users'", "'users; drop table x'");
        let e = Manifest::parse(Path::new("m.yaml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("export_table"), "{e}");
    }

    #[test]
    fn an_expression_primary_key_is_kept_as_expression() {
        let m = Manifest::parse(
            Path::new("m.yaml"),
            &OK.replace("primary_key: id", "primary_key: CONCAT(a, '_', b)"),
        )
        .unwrap();
        assert!(matches!(m.tables[0].primary_key, PrimaryKey::Expression(_)));
    }

    #[test]
    fn empty_tables_is_zero_tables() {
        let m = Manifest::parse(
            Path::new("m.yaml"),
            "connection_info:\n  database: a\n  host: b\n  pass: c\n  port: d\n  user: e\ntables:\n",
        )
        .unwrap();
        assert!(m.tables.is_empty());
    }
}

//! DuckDB, embedded: the warehouse of `pgp tap` on one machine and of the tests.
//!
//! DuckDB reads staged objects in place (`read_csv` over the local store's files), so
//! it needs a store with local paths. All work runs on a blocking thread behind one
//! connection; DuckDB's transactions give the atomic load, append and swap.

use super::{
    ActualColumn, Loaded, Published, RunMeta, TableSchema, Warehouse, TASK_INSTANCE, UPLOADED_AT,
};
use crate::error::{Error, Result};
use crate::format::{duckdb_read_options, Compression};
use crate::ident::{Ident, TableName};
use crate::storage::{ObjectKey, ObjectStore};
use crate::types::{Column, ColumnType};
use async_trait::async_trait;
use duckdb::{params, Connection, OptionalExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const LEDGER: &str = "CREATE SCHEMA IF NOT EXISTS _pgp;
CREATE TABLE IF NOT EXISTS _pgp.loads (
    target VARCHAR NOT NULL, run_id VARCHAR NOT NULL, object VARCHAR NOT NULL,
    rows BIGINT NOT NULL, loaded_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (target, run_id, object));
CREATE TABLE IF NOT EXISTS _pgp.publishes (
    target VARCHAR NOT NULL, run_id VARCHAR NOT NULL, action VARCHAR NOT NULL,
    rows BIGINT NOT NULL, published_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (target, run_id));";

/// An embedded DuckDB database file.
pub struct DuckDb {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for DuckDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DuckDb({})", self.path.display())
    }
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl DuckDb {
    /// Open (or create) the database file; `store` is where staged objects are read.
    pub fn open(path: &Path, store: Arc<dyn ObjectStore>) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::warehouse(format!("create {}", dir.display()), e))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| Error::warehouse(format!("open {}", path.display()), e))?;
        conn.execute_batch(LEDGER)
            .map_err(|e| Error::warehouse("create the load ledger", e))?;
        Ok(DuckDb {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
            store,
        })
    }

    /// Open an existing file read-only, or, when there is none, an empty in-memory
    /// database (every target then reads as missing). Creates nothing on disk.
    pub fn open_read_only(path: &Path, store: Arc<dyn ObjectStore>) -> Result<Self> {
        let conn = if path.exists() {
            let cfg = duckdb::Config::default()
                .access_mode(duckdb::AccessMode::ReadOnly)
                .map_err(|e| Error::warehouse("read-only config", e))?;
            Connection::open_with_flags(path, cfg)
        } else {
            Connection::open_in_memory()
        }
        .map_err(|e| Error::warehouse(format!("open {}", path.display()), e))?;
        Ok(DuckDb {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
            store,
        })
    }

    /// Run `f` with the connection on a blocking thread.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| Error::warehouse("duckdb worker", e))?
    }

    fn render(ty: &ColumnType) -> String {
        match ty {
            ColumnType::Boolean => "BOOLEAN".into(),
            ColumnType::SmallInt => "SMALLINT".into(),
            ColumnType::Integer => "INTEGER".into(),
            ColumnType::BigInt => "BIGINT".into(),
            ColumnType::Real => "FLOAT".into(),
            ColumnType::Double => "DOUBLE".into(),
            ColumnType::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
            ColumnType::Text => "VARCHAR".into(),
            ColumnType::Date => "DATE".into(),
            ColumnType::Time => "TIME".into(),
            ColumnType::Timestamp => "TIMESTAMP".into(),
            ColumnType::TimestampTz => "TIMESTAMP WITH TIME ZONE".into(),
            ColumnType::Json => "JSON".into(),
            ColumnType::Uuid => "UUID".into(),
            ColumnType::Bytes => "BLOB".into(),
            ColumnType::List(e) => format!("{}[]", Self::render(e)),
        }
    }

    /// The expression turning the file's text field `f` into the column's value.
    fn load_expr(c: &Column, f: &str) -> String {
        match &c.ty {
            ColumnType::Text => f.to_string(),
            ColumnType::Bytes => format!("unhex({f})"),
            ColumnType::List(_) => format!("CAST(CAST({f} AS JSON) AS {})", Self::render(&c.ty)),
            ty => format!("CAST({f} AS {})", Self::render(ty)),
        }
    }

    fn create_sql(table: &TableName, schema: &TableSchema) -> String {
        let mut cols: Vec<String> = schema
            .columns
            .iter()
            .map(|c| format!("{} {}", c.name.quoted(), Self::render(&c.ty)))
            .collect();
        cols.push(format!("\"{UPLOADED_AT}\" TIMESTAMP WITH TIME ZONE"));
        if schema.task_instance {
            cols.push(format!("\"{TASK_INSTANCE}\" VARCHAR"));
        }
        format!(
            "CREATE SCHEMA IF NOT EXISTS {}; CREATE OR REPLACE TABLE {} ({});",
            table.schema.quoted(),
            table.quoted(),
            cols.join(", ")
        )
    }

    fn load_sql(
        table: &TableName,
        schema: &TableSchema,
        run: &RunMeta,
        path: &Path,
        compression: Compression,
    ) -> String {
        let fields: Vec<String> = (0..schema.columns.len()).map(|i| format!("c{i}")).collect();
        let mut targets: Vec<String> = schema.columns.iter().map(|c| c.name.quoted()).collect();
        let mut exprs: Vec<String> = schema
            .columns
            .iter()
            .zip(&fields)
            .map(|(c, f)| Self::load_expr(c, f))
            .collect();
        targets.push(format!("\"{UPLOADED_AT}\""));
        exprs.push(format!(
            "CAST({} AS TIMESTAMP WITH TIME ZONE)",
            sql_string(&run.uploaded_at.to_rfc3339())
        ));
        if schema.task_instance {
            targets.push(format!("\"{TASK_INSTANCE}\""));
            exprs.push(match &run.task_instance {
                Some(t) => sql_string(t),
                None => "CAST(NULL AS VARCHAR)".into(),
            });
        }
        let columns = fields
            .iter()
            .map(|f| format!("'{f}': 'VARCHAR'"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "INSERT INTO {} ({}) SELECT {} FROM read_csv({}, columns = {{{}}}, {})",
            table.quoted(),
            targets.join(", "),
            exprs.join(", "),
            sql_string(&path.to_string_lossy()),
            columns,
            duckdb_read_options(compression)
        )
    }
}

/// Rows a run published into `target`, if it did (the once-per-run guard).
/// A ledger read error is an error, never "not yet done" (that would publish twice).
fn published_rows(
    conn: &Connection,
    target: &TableName,
    run_id: &str,
) -> duckdb::Result<Option<i64>> {
    conn.query_row(
        "SELECT rows FROM _pgp.publishes WHERE target = ? AND run_id = ?",
        params![target.to_string(), run_id],
        |r| r.get(0),
    )
    .optional()
}

fn has_table(conn: &Connection, t: &TableName) -> duckdb::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM information_schema.tables WHERE lower(table_schema) = lower(?) AND lower(table_name) = lower(?)",
        params![t.schema.as_str(), t.table.as_str()],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

#[async_trait]
impl Warehouse for DuckDb {
    fn url(&self) -> String {
        format!("duckdb://{}", self.path.display())
    }

    async fn health(&self) -> Result<()> {
        self.with(|c| {
            c.query_row("SELECT 1", [], |r| r.get::<_, i32>(0))
                .map(|_| ())
                .map_err(|e| Error::warehouse("health", e))
        })
        .await
    }

    fn render_type(&self, ty: &ColumnType) -> String {
        Self::render(ty)
    }

    async fn columns(&self, table: &TableName) -> Result<Option<Vec<ActualColumn>>> {
        let t = table.clone();
        self.with(move |c| {
            let ctx = format!("columns of {t}");
            let mut st = c
                .prepare(
                    "SELECT column_name, data_type FROM information_schema.columns \
                     WHERE lower(table_schema) = lower(?) AND lower(table_name) = lower(?) \
                     ORDER BY ordinal_position",
                )
                .map_err(|e| Error::warehouse(&ctx, e))?;
            let cols = st
                .query_map(params![t.schema.as_str(), t.table.as_str()], |r| {
                    Ok(ActualColumn {
                        name: r.get(0)?,
                        data_type: r.get(1)?,
                    })
                })
                .map_err(|e| Error::warehouse(&ctx, e))?
                .collect::<duckdb::Result<Vec<_>>>()
                .map_err(|e| Error::warehouse(&ctx, e))?;
            Ok(if cols.is_empty() { None } else { Some(cols) })
        })
        .await
    }

    async fn create_table(&self, table: &TableName, schema: &TableSchema) -> Result<()> {
        let sql = Self::create_sql(table, schema);
        let ctx = format!("create {table}");
        self.with(move |c| c.execute_batch(&sql).map_err(|e| Error::warehouse(ctx, e)))
            .await
    }

    async fn drop_table(&self, table: &TableName) -> Result<()> {
        let sql = format!("DROP TABLE IF EXISTS {}", table.quoted());
        let ctx = format!("drop {table}");
        self.with(move |c| c.execute_batch(&sql).map_err(|e| Error::warehouse(ctx, e)))
            .await
    }

    async fn load(
        &self,
        table: &TableName,
        schema: &TableSchema,
        run: &RunMeta,
        object: &ObjectKey,
        compression: Compression,
    ) -> Result<Loaded> {
        // DuckDB reads local files: a remote object (gs://) is streamed to a temporary
        // file first, removed when the load is done.
        let mut _download = None;
        let path = match self.store.local_path(object) {
            Some(p) => p,
            None => {
                let dir = tempfile::tempdir()
                    .map_err(|e| Error::warehouse(format!("load {object}"), e))?;
                let p = dir.path().join(format!("chunk.{}", compression.suffix()));
                self.store.copy_to_file(object, &p).await?;
                _download = Some(dir);
                p
            }
        };
        let sql = Self::load_sql(table, schema, run, &path, compression);
        let (target, run_id, obj) = (table.to_string(), run.run_id.clone(), object.to_string());
        let ctx = format!("load {object} into {table}");
        self.with(move |c| {
            let e = |e: duckdb::Error| Error::warehouse(&ctx, e);
            let tx = c.transaction().map_err(e)?;
            let before: Option<i64> = tx
                .query_row(
                    "SELECT rows FROM _pgp.loads WHERE target = ? AND run_id = ? AND object = ?",
                    params![target, run_id, obj],
                    |r| r.get(0),
                )
                .optional()
                .map_err(e)?;
            if let Some(rows) = before {
                return Ok(Loaded {
                    rows: rows as u64,
                    already: true,
                });
            }
            let rows = tx.execute(&sql, []).map_err(e)? as u64;
            tx.execute(
                "INSERT INTO _pgp.loads (target, run_id, object, rows) VALUES (?, ?, ?, ?)",
                params![target, run_id, obj, rows as i64],
            )
            .map_err(e)?;
            tx.commit().map_err(e)?;
            Ok(Loaded {
                rows,
                already: false,
            })
        })
        .await
    }

    async fn publish_append(
        &self,
        stage: &TableName,
        target: &TableName,
        run_id: &str,
    ) -> Result<Published> {
        let (stage, target, run_id) = (stage.clone(), target.clone(), run_id.to_string());
        let ctx = format!("append {stage} to {target}");
        self.with(move |c| {
            let e = |e: duckdb::Error| Error::warehouse(&ctx, e);
            let tx = c.transaction().map_err(e)?;
            let done = published_rows(&tx, &target, &run_id).map_err(e)?;
            if let Some(rows) = done {
                tx.execute_batch(&format!("DROP TABLE IF EXISTS {}", stage.quoted()))
                    .map_err(e)?;
                tx.commit().map_err(e)?;
                return Ok(Published { rows: rows as u64, already: true });
            }
            let rows = tx
                .execute(
                    &format!("INSERT INTO {} BY NAME SELECT * FROM {}", target.quoted(), stage.quoted()),
                    [],
                )
                .map_err(e)? as u64;
            tx.execute(
                "INSERT INTO _pgp.publishes (target, run_id, action, rows) VALUES (?, ?, 'append', ?)",
                params![target.to_string(), run_id, rows as i64],
            )
            .map_err(e)?;
            tx.execute_batch(&format!("DROP TABLE {}", stage.quoted()))
                .map_err(e)?;
            tx.commit().map_err(e)?;
            Ok(Published { rows, already: false })
        })
        .await
    }

    async fn publish_swap(
        &self,
        temp: &TableName,
        target: &TableName,
        run_id: &str,
    ) -> Result<Published> {
        let (temp, target, run_id) = (temp.clone(), target.clone(), run_id.to_string());
        let ctx = format!("swap {temp} into {target}");
        self.with(move |c| {
            let e = |e: duckdb::Error| Error::warehouse(&ctx, e);
            let done = published_rows(c, &target, &run_id).map_err(e)?;
            if let Some(rows) = done {
                return Ok(Published { rows: rows as u64, already: true });
            }
            let rows: i64 = c
                .query_row(&format!("SELECT count(*) FROM {}", temp.quoted()), [], |r| r.get(0))
                .map_err(e)?;
            let tx = c.transaction().map_err(e)?;
            if has_table(&tx, &target).map_err(e)? {
                tx.execute_batch(&format!("DROP TABLE {}", target.quoted()))
                    .map_err(e)?;
            }
            tx.execute_batch(&format!(
                "ALTER TABLE {} RENAME TO {}",
                temp.quoted(),
                target.table.quoted()
            ))
            .map_err(e)?;
            tx.execute(
                "INSERT INTO _pgp.publishes (target, run_id, action, rows) VALUES (?, ?, 'swap', ?)",
                params![target.to_string(), run_id, rows],
            )
            .map_err(e)?;
            tx.commit().map_err(e)?;
            Ok(Published { rows: rows as u64, already: false })
        })
        .await
    }

    async fn max_key(&self, table: &TableName, key: &Ident) -> Result<Option<i64>> {
        let sql = format!(
            "SELECT CAST(max({}) AS BIGINT) FROM {}",
            key.quoted(),
            table.quoted()
        );
        let ctx = format!("max({key}) of {table}");
        self.with(move |c| {
            c.query_row(&sql, [], |r| r.get::<_, Option<i64>>(0))
                .map_err(|e| Error::warehouse(ctx, e))
        })
        .await
    }

    async fn loaded_objects(&self, table: &TableName, run_id: &str) -> Result<Vec<(String, u64)>> {
        let (target, run_id) = (table.to_string(), run_id.to_string());
        let ctx = format!("ledger of {table}");
        self.with(move |c| {
            let e = |e: duckdb::Error| Error::warehouse(&ctx, e);
            let mut st = c
                .prepare(
                    "SELECT object, rows FROM _pgp.loads WHERE target = ? AND run_id = ? ORDER BY object",
                )
                .map_err(e)?;
            let rows = st
                .query_map(params![target, run_id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })
                .map_err(e)?;
            rows.collect::<std::result::Result<Vec<_>, _>>().map_err(e)
        })
        .await
    }

    async fn published(&self, target: &TableName, run_id: &str) -> Result<bool> {
        let (t, run_id) = (target.to_string(), run_id.to_string());
        let ctx = format!("publish ledger of {target}");
        self.with(move |c| {
            c.query_row(
                "SELECT count(*) FROM _pgp.publishes WHERE target = ? AND run_id = ?",
                params![t, run_id],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(|e| Error::warehouse(ctx, e))
        })
        .await
    }

    async fn row_count(&self, table: &TableName) -> Result<u64> {
        let sql = format!("SELECT count(*) FROM {}", table.quoted());
        let ctx = format!("count {table}");
        self.with(move |c| {
            c.query_row(&sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(|e| Error::warehouse(ctx, e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn duckdb_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store: std::sync::Arc<dyn crate::storage::ObjectStore> =
            std::sync::Arc::new(crate::storage::LocalStore::new(dir.path().join("store")).unwrap());
        let wh = super::DuckDb::open(&dir.path().join("w.duckdb"), store.clone()).unwrap();
        crate::warehouse::conformance::run(&wh, store.as_ref()).await;
    }
}

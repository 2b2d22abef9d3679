//! Snowflake: the production warehouse, over its connector protocol ([`client`]).
//!
//! Names: Snowflake folds unquoted identifiers to upper case, and GitLab's pipeline
//! created unquoted names, so dbt models read `RAW.GITLAB_COM.USERS`. pgp keeps that:
//! every schema, table and column name is upper-cased and then quoted (quoting keeps
//! `$`, reserved words and leading underscores safe; names are checked `Ident`s).
//!
//! Loading: `COPY INTO <load table> (columns) FROM (SELECT $1::type, ..., '<uploaded
//! at>'::TIMESTAMP_TZ, '<task instance>' FROM @stage) FILES = ('<object>') FILE_FORMAT =
//! (<the core's format>) FORCE = TRUE`, in one transaction with the object's row in the
//! load ledger `_PGP.LOADS`; COPY's per-file result (`status`, `rows_loaded`,
//! `errors_seen`, `first_error`) is the count and the error. FORCE because the ledger,
//! not Snowflake's 64-day load metadata, decides what was loaded: a rolled-back load
//! must be loadable again.
//!
//! Publishing: append is one transaction (`INSERT INTO target SELECT * FROM stage` plus
//! the `_PGP.PUBLISHES` row). Swap is `ALTER TABLE <t>_TEMP SWAP WITH <t>` (or a rename
//! when the target is missing), atomic for readers; DDL commits any open transaction,
//! so the swap is claimed first: an `UPDATE` of the target's row in `_PGP.LOCKS`
//! (Snowflake runs one UPDATE/DELETE/MERGE per table at a time, holding it to the end of
//! the transaction) guards the ledger check and a `swapping` row; the new table carries the
//! comment `pgp run <id>`, which tells a retry after a crash whether the swap happened.
//!
//! Emulator fallbacks (`copy=staged`, `swap=rename`, `arrays=variant` in the URL; used
//! against fakesnow, which lacks COPY transformations, several FILE_FORMAT options,
//! `SWAP WITH` and an ARRAY type of its own): COPY into an all-text scratch table with
//! the format minus its default-valued options, then `INSERT ... SELECT` with the same
//! casts; rename the target away and the temp in; expect `VARIANT` where an `ARRAY` was
//! created. Production SQL is unit-tested below as text.

pub mod client;
pub mod config;
pub mod jwt;

use self::client::{Client, Rows};
use self::config::{CopyMode, SnowflakeConfig, Stage, SwapMode};
use super::{
    ActualColumn, Loaded, Published, RunMeta, TableSchema, Warehouse, TASK_INSTANCE, UPLOADED_AT,
};
use crate::error::{Error, Result};
use crate::format::{Compression, SNOWFLAKE_FILE_FORMAT};
use crate::ident::{Ident, TableName};
use crate::storage::ObjectKey;
use crate::types::{Column, ColumnType};
use async_trait::async_trait;
use tokio::sync::Mutex;

/// A Snowflake database pgp loads into.
pub struct Snowflake {
    cfg: SnowflakeConfig,
    client: Mutex<Client>,
    ready: tokio::sync::OnceCell<()>,
}

/// `"NAME"`: upper-cased, quoted.
fn q(name: &str) -> String {
    format!("\"{}\"", name.to_uppercase())
}

/// A string literal: Snowflake reads backslash escapes inside quotes, so both `\` and
/// `'` are escaped.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// The Snowflake type a column is created with, as `information_schema` names it
/// (NUMBER with its precision and scale).
pub fn render(ty: &ColumnType) -> String {
    match ty {
        ColumnType::Boolean => "BOOLEAN".into(),
        ColumnType::SmallInt | ColumnType::Integer | ColumnType::BigInt => "NUMBER(38,0)".into(),
        ColumnType::Real | ColumnType::Double => "FLOAT".into(),
        ColumnType::Decimal { precision, scale } => format!("NUMBER({precision},{scale})"),
        ColumnType::Text | ColumnType::Uuid => "TEXT".into(),
        ColumnType::Date => "DATE".into(),
        ColumnType::Time => "TIME".into(),
        ColumnType::Timestamp => "TIMESTAMP_NTZ".into(),
        ColumnType::TimestampTz => "TIMESTAMP_TZ".into(),
        ColumnType::Json => "VARIANT".into(),
        ColumnType::Bytes => "BINARY".into(),
        ColumnType::List(_) => "ARRAY".into(),
    }
}

/// The expression turning staged text field `f` into the column's value.
fn cast(c: &Column, f: &str) -> String {
    match &c.ty {
        ColumnType::Text | ColumnType::Uuid => f.to_string(),
        ColumnType::Json => format!("PARSE_JSON({f})"),
        ColumnType::List(_) => format!("PARSE_JSON({f})::ARRAY"),
        ColumnType::Bytes => format!("TO_BINARY({f}, 'HEX')"),
        // PostgreSQL writes Infinity/-Infinity; Snowflake's spellings are inf/-inf.
        ColumnType::Real | ColumnType::Double => format!(
            "(CASE {f} WHEN 'Infinity' THEN 'inf' WHEN '-Infinity' THEN '-inf' ELSE {f} END)::FLOAT"
        ),
        ty => format!("{f}::{}", render(ty)),
    }
}

/// The inline FILE_FORMAT of a COPY.
fn file_format(c: Compression) -> String {
    let fmt = match c {
        Compression::Gzip => SNOWFLAKE_FILE_FORMAT.to_string(),
        Compression::None => {
            SNOWFLAKE_FILE_FORMAT.replace("COMPRESSION = GZIP", "COMPRESSION = NONE")
        }
    };
    format!("({fmt})")
}

/// Options of [`SNOWFLAKE_FILE_FORMAT`] that only restate Snowflake's documented CSV
/// defaults. The emulator (fakesnow) refuses options it does not implement, so the
/// emulator-only `copy=staged` path leaves these out: the format it sends means the
/// same to Snowflake. Production (`copy=transform`) always sends the full format.
const DEFAULT_VALUED_OPTIONS: [&str; 7] = [
    "RECORD_DELIMITER = '\\n'",
    "ESCAPE = NONE",
    "TRIM_SPACE = FALSE",
    "ERROR_ON_COLUMN_COUNT_MISMATCH = TRUE",
    "REPLACE_INVALID_CHARACTERS = FALSE",
    "ENCODING = 'UTF8'",
    "TIMESTAMP_FORMAT = AUTO",
];

/// [`file_format`] without [`DEFAULT_VALUED_OPTIONS`], for the emulator path.
fn emulator_file_format(c: Compression) -> String {
    let mut fmt = file_format(c);
    for option in DEFAULT_VALUED_OPTIONS {
        fmt = fmt.replace(&format!(" {option}"), "");
    }
    fmt
}

/// Target column list and value expressions (over fields named by `field(i)`) of a load.
fn load_columns(
    schema: &TableSchema,
    run: &RunMeta,
    field: impl Fn(usize) -> String,
) -> (Vec<String>, Vec<String>) {
    let mut cols: Vec<String> = schema.columns.iter().map(|c| q(c.name.as_str())).collect();
    let mut exprs: Vec<String> = schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| cast(c, &field(i)))
        .collect();
    cols.push(q(UPLOADED_AT));
    exprs.push(format!(
        "{}::TIMESTAMP_TZ",
        lit(&run.uploaded_at.to_rfc3339())
    ));
    if schema.task_instance {
        cols.push(q(TASK_INSTANCE));
        exprs.push(match &run.task_instance {
            Some(t) => lit(t),
            None => "NULL::TEXT".into(),
        });
    }
    (cols, exprs)
}

/// The production load: one COPY with a transformation.
pub fn copy_transform_sql(
    table: &str,
    schema: &TableSchema,
    run: &RunMeta,
    stage: &str,
    object: &ObjectKey,
    compression: Compression,
) -> String {
    let (cols, exprs) = load_columns(schema, run, |i| format!("${}", i + 1));
    format!(
        "COPY INTO {table} ({}) FROM (SELECT {} FROM {stage}) FILES = ({}) FILE_FORMAT = {} ON_ERROR = ABORT_STATEMENT FORCE = TRUE",
        cols.join(", "),
        exprs.join(", "),
        lit(object.as_str()),
        file_format(compression)
    )
}

/// The production swap.
pub fn swap_sql(temp: &str, target: &str) -> String {
    format!("ALTER TABLE {temp} SWAP WITH {target}")
}

impl Snowflake {
    pub fn new(cfg: SnowflakeConfig) -> Result<Self> {
        let client = Client::new(cfg.clone())?;
        Ok(Snowflake {
            cfg,
            client: Mutex::new(client),
            ready: tokio::sync::OnceCell::new(),
        })
    }

    fn db(&self) -> String {
        q(&self.cfg.database)
    }

    fn table(&self, t: &TableName) -> String {
        format!(
            "{}.{}.{}",
            self.db(),
            q(t.schema.as_str()),
            q(t.table.as_str())
        )
    }

    fn ledger(&self, name: &str) -> String {
        format!("{}.\"_PGP\".{}", self.db(), q(name))
    }

    fn stage_ref(&self) -> String {
        match &self.cfg.stage {
            Stage::Named(n) => format!("@{n}"),
            Stage::Create { .. } => format!("@{}", self.ledger("PGP_STAGE")),
        }
    }

    fn ctx(&self, what: impl std::fmt::Display) -> String {
        format!("{} {what}", self.cfg.display())
    }

    /// Run one statement (also for operators and tests: `pgp` itself only runs the
    /// statements in this module).
    pub async fn query(&self, sql: &str) -> Result<Rows> {
        self.setup().await?;
        self.client.lock().await.query(sql).await
    }

    /// The ledger schema and tables, and the stage when pgp owns it; once per process.
    async fn setup(&self) -> Result<()> {
        self.ready
            .get_or_try_init(|| async {
                let mut c = self.client.lock().await;
                let mut stmts = vec![
                    format!("CREATE SCHEMA IF NOT EXISTS {}.\"_PGP\"", self.db()),
                    format!(
                        "CREATE TABLE IF NOT EXISTS {} (TARGET TEXT NOT NULL, RUN_ID TEXT NOT NULL, OBJECT TEXT NOT NULL, ROWS NUMBER(38,0) NOT NULL, LOADED_AT TIMESTAMP_TZ DEFAULT CURRENT_TIMESTAMP())",
                        self.ledger("LOADS")
                    ),
                    format!(
                        "CREATE TABLE IF NOT EXISTS {} (TARGET TEXT NOT NULL, RUN_ID TEXT NOT NULL, ACTION TEXT NOT NULL, ROWS NUMBER(38,0) NOT NULL, PUBLISHED_AT TIMESTAMP_TZ DEFAULT CURRENT_TIMESTAMP())",
                        self.ledger("PUBLISHES")
                    ),
                    format!(
                        "CREATE TABLE IF NOT EXISTS {} (TARGET TEXT NOT NULL, N NUMBER(38,0) NOT NULL)",
                        self.ledger("LOCKS")
                    ),
                ];
                if let Stage::Create { url, integration } = &self.cfg.stage {
                    let integ = integration
                        .as_ref()
                        .map(|i| format!(" STORAGE_INTEGRATION = {i}"))
                        .unwrap_or_default();
                    stmts.push(format!(
                        "CREATE STAGE IF NOT EXISTS {} URL = {}{integ}",
                        self.ledger("PGP_STAGE"),
                        lit(url)
                    ));
                }
                for s in stmts {
                    c.query(&s).await?;
                }
                Ok::<_, Error>(())
            })
            .await
            .map(|_| ())
    }

    /// Run `body` inside BEGIN/COMMIT on the locked session; ROLLBACK on error.
    async fn in_transaction<T>(
        &self,
        c: &mut Client,
        body: impl AsyncFnOnce(&mut Client) -> Result<T>,
    ) -> Result<T> {
        c.query("BEGIN").await?;
        match body(c).await {
            Ok(v) => {
                c.query("COMMIT").await?;
                Ok(v)
            }
            Err(e) => {
                let _ = c.query("ROLLBACK").await;
                Err(e)
            }
        }
    }

    /// Serialize publishers of one target (see the module doc).
    /// Makes sure `target` has its row in `_PGP.LOCKS`; run outside the transaction. A
    /// race may insert the row twice, which is harmless: the lock is the UPDATE's.
    fn lock_row_sql(&self, target: &str) -> String {
        format!(
            "INSERT INTO {l} (TARGET, N) SELECT {t}, 0 WHERE NOT EXISTS (SELECT 1 FROM {l} WHERE TARGET = {t})",
            l = self.ledger("LOCKS"),
            t = lit(target)
        )
    }

    /// The first statement of a publishing transaction: Snowflake does not run two
    /// UPDATE/DELETE/MERGE statements on one table at once, so this UPDATE holds
    /// every other publisher of any table until this transaction ends.
    fn lock_sql(&self, target: &str) -> String {
        format!(
            "UPDATE {} SET N = N + 1 WHERE TARGET = {}",
            self.ledger("LOCKS"),
            lit(target)
        )
    }

    async fn exists(&self, c: &mut Client, t: &TableName) -> Result<bool> {
        let sql = format!(
            "SELECT COUNT(*) FROM {}.INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
            self.db(),
            lit(&t.schema.as_str().to_uppercase()),
            lit(&t.table.as_str().to_uppercase())
        );
        Ok(c.query(&sql).await?.scalar().unwrap_or("0") != "0")
    }

    async fn comment(&self, c: &mut Client, t: &TableName) -> Result<Option<String>> {
        let sql = format!(
            "SELECT COMMENT FROM {}.INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
            self.db(),
            lit(&t.schema.as_str().to_uppercase()),
            lit(&t.table.as_str().to_uppercase())
        );
        Ok(c.query(&sql).await?.scalar().map(str::to_string))
    }

    /// Sum a COPY result's `rows_loaded`, failing on any file that did not load whole.
    fn copy_rows(&self, object: &ObjectKey, r: &Rows) -> Result<u64> {
        let (Some(status), Some(loaded)) = (r.col("status"), r.col("rows_loaded")) else {
            return Err(Error::warehouse(
                self.ctx(format!("load {object}")),
                format!(
                    "COPY loaded no file (is {object} in the stage?): {:?}",
                    r.rows
                ),
            ));
        };
        let errors = r.col("errors_seen");
        let first = r.col("first_error");
        let mut rows = 0u64;
        for row in &r.rows {
            let st = row[status].as_deref().unwrap_or("");
            let seen: u64 = errors
                .and_then(|i| row[i].as_deref())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if !st.eq_ignore_ascii_case("LOADED") || seen > 0 {
                let why = first.and_then(|i| row[i].clone()).unwrap_or_default();
                return Err(Error::warehouse(
                    self.ctx(format!("load {object}")),
                    format!("COPY status {st}, {seen} errors: {why}"),
                ));
            }
            rows += row[loaded]
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(rows)
    }
}

#[async_trait]
impl Warehouse for Snowflake {
    fn url(&self) -> String {
        self.cfg.display()
    }

    async fn health(&self) -> Result<()> {
        self.query("SELECT 1").await.map(|_| ())
    }

    fn render_type(&self, ty: &ColumnType) -> String {
        match ty {
            ColumnType::List(_) if self.cfg.arrays_as_variant => "VARIANT".into(),
            ty => render(ty),
        }
    }

    async fn columns(&self, table: &TableName) -> Result<Option<Vec<ActualColumn>>> {
        let sql = format!(
            "SELECT COLUMN_NAME, DATA_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE FROM {}.INFORMATION_SCHEMA.COLUMNS \
             WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} ORDER BY ORDINAL_POSITION",
            self.db(),
            lit(&table.schema.as_str().to_uppercase()),
            lit(&table.table.as_str().to_uppercase())
        );
        let r = self.query(&sql).await?;
        let cols: Vec<ActualColumn> = r
            .rows
            .iter()
            .map(|row| {
                let ty = row[1].clone().unwrap_or_default().to_uppercase();
                let data_type = match (ty.as_str(), &row[2], &row[3]) {
                    ("NUMBER", Some(p), Some(s)) => format!("NUMBER({p},{s})"),
                    _ => ty,
                };
                ActualColumn {
                    name: row[0].clone().unwrap_or_default(),
                    data_type,
                }
            })
            .collect();
        Ok(if cols.is_empty() { None } else { Some(cols) })
    }

    async fn create_table(&self, table: &TableName, schema: &TableSchema) -> Result<()> {
        let mut cols: Vec<String> = schema
            .columns
            .iter()
            .map(|c| format!("{} {}", q(c.name.as_str()), render(&c.ty)))
            .collect();
        cols.push(format!("{} TIMESTAMP_TZ", q(UPLOADED_AT)));
        if schema.task_instance {
            cols.push(format!("{} TEXT", q(TASK_INSTANCE)));
        }
        self.query(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}.{}",
            self.db(),
            q(table.schema.as_str())
        ))
        .await?;
        self.query(&format!(
            "CREATE OR REPLACE TABLE {} ({})",
            self.table(table),
            cols.join(", ")
        ))
        .await
        .map(|_| ())
    }

    async fn drop_table(&self, table: &TableName) -> Result<()> {
        self.query(&format!("DROP TABLE IF EXISTS {}", self.table(table)))
            .await
            .map(|_| ())
    }

    async fn load(
        &self,
        table: &TableName,
        schema: &TableSchema,
        run: &RunMeta,
        object: &ObjectKey,
        compression: Compression,
    ) -> Result<Loaded> {
        self.setup().await?;
        let target = table.to_string();
        let check = format!(
            "SELECT ROWS FROM {} WHERE TARGET = {} AND RUN_ID = {} AND OBJECT = {}",
            self.ledger("LOADS"),
            lit(&target),
            lit(&run.run_id),
            lit(object.as_str())
        );
        let record = |rows: u64| {
            format!(
                "INSERT INTO {} (TARGET, RUN_ID, OBJECT, ROWS) VALUES ({}, {}, {}, {rows})",
                self.ledger("LOADS"),
                lit(&target),
                lit(&run.run_id),
                lit(object.as_str())
            )
        };
        let mut c = self.client.lock().await;
        if let Some(n) = c.query(&check).await?.scalar() {
            return Ok(Loaded {
                rows: n.parse().unwrap_or(0),
                already: true,
            });
        }
        let tbl = self.table(table);
        match self.cfg.copy {
            CopyMode::Transform => {
                let copy =
                    copy_transform_sql(&tbl, schema, run, &self.stage_ref(), object, compression);
                self.in_transaction(&mut c, async |c: &mut Client| {
                    let rows = self.copy_rows(object, &c.query(&copy).await?)?;
                    c.query(&record(rows)).await?;
                    Ok(Loaded {
                        rows,
                        already: false,
                    })
                })
                .await
            }
            CopyMode::Staged => {
                let scratch = format!(
                    "{}.\"_PGP\".{}",
                    self.db(),
                    q(&format!(
                        "RAW_{}",
                        object
                            .as_str()
                            .chars()
                            .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
                            .collect::<String>()
                    ))
                );
                let raw_cols: Vec<String> = (0..schema.columns.len())
                    .map(|i| format!("\"C{i}\" TEXT"))
                    .collect();
                c.query(&format!(
                    "CREATE OR REPLACE TABLE {scratch} ({})",
                    raw_cols.join(", ")
                ))
                .await?;
                let (cols, exprs) = load_columns(schema, run, |i| format!("\"C{i}\""));
                let copy = format!(
                    "COPY INTO {scratch} FROM {} FILES = ({}) FILE_FORMAT = {} ON_ERROR = ABORT_STATEMENT FORCE = TRUE",
                    self.stage_ref(),
                    lit(object.as_str()),
                    emulator_file_format(compression)
                );
                let insert = format!(
                    "INSERT INTO {tbl} ({}) SELECT {} FROM {scratch}",
                    cols.join(", "),
                    exprs.join(", ")
                );
                let result = self
                    .in_transaction(&mut c, async |c: &mut Client| {
                        let rows = self.copy_rows(object, &c.query(&copy).await?)?;
                        c.query(&insert).await?;
                        c.query(&record(rows)).await?;
                        Ok(Loaded {
                            rows,
                            already: false,
                        })
                    })
                    .await;
                let _ = c.query(&format!("DROP TABLE IF EXISTS {scratch}")).await;
                result
            }
        }
    }

    async fn loaded_objects(&self, table: &TableName, run_id: &str) -> Result<Vec<(String, u64)>> {
        let r = self
            .query(&format!(
                "SELECT OBJECT, ROWS FROM {} WHERE TARGET = {} AND RUN_ID = {} ORDER BY OBJECT",
                self.ledger("LOADS"),
                lit(&table.to_string()),
                lit(run_id)
            ))
            .await?;
        Ok(r.rows
            .iter()
            .map(|row| {
                (
                    row[0].clone().unwrap_or_default(),
                    row[1].as_deref().and_then(|v| v.parse().ok()).unwrap_or(0),
                )
            })
            .collect())
    }

    async fn published(&self, target: &TableName, run_id: &str) -> Result<bool> {
        let r = self
            .query(&format!(
                "SELECT COUNT(*) FROM {} WHERE TARGET = {} AND RUN_ID = {}",
                self.ledger("PUBLISHES"),
                lit(&target.to_string()),
                lit(run_id)
            ))
            .await?;
        Ok(r.scalar().unwrap_or("0") != "0")
    }

    async fn publish_append(
        &self,
        stage: &TableName,
        target: &TableName,
        run_id: &str,
    ) -> Result<Published> {
        self.setup().await?;
        let t = target.to_string();
        let lock = self.lock_sql(&t);
        let check = format!(
            "SELECT ROWS FROM {} WHERE TARGET = {} AND RUN_ID = {}",
            self.ledger("PUBLISHES"),
            lit(&t),
            lit(run_id)
        );
        let insert = format!(
            "INSERT INTO {} SELECT * FROM {}",
            self.table(target),
            self.table(stage)
        );
        let mut c = self.client.lock().await;
        c.query(&self.lock_row_sql(&t)).await?;
        let published = self
            .in_transaction(&mut c, async |c: &mut Client| {
                c.query(&lock).await?;
                if let Some(n) = c.query(&check).await?.scalar() {
                    return Ok(Published {
                        rows: n.parse().unwrap_or(0),
                        already: true,
                    });
                }
                let r = c.query(&insert).await?;
                let rows: u64 = r.scalar().and_then(|v| v.parse().ok()).unwrap_or(0);
                c.query(&format!(
                    "INSERT INTO {} (TARGET, RUN_ID, ACTION, ROWS) VALUES ({}, {}, 'append', {rows})",
                    self.ledger("PUBLISHES"),
                    lit(&t),
                    lit(run_id)
                ))
                .await?;
                Ok(Published { rows, already: false })
            })
            .await?;
        c.query(&format!("DROP TABLE IF EXISTS {}", self.table(stage)))
            .await?;
        Ok(published)
    }

    async fn publish_swap(
        &self,
        temp: &TableName,
        target: &TableName,
        run_id: &str,
    ) -> Result<Published> {
        self.setup().await?;
        let t = target.to_string();
        let marker = format!("pgp run {run_id}");
        let mut c = self.client.lock().await;
        // 1. Claim the swap (or learn it happened).
        c.query(&self.lock_row_sql(&t)).await?;
        let claim = self
            .in_transaction(&mut c, async |c: &mut Client| {
                c.query(&self.lock_sql(&t)).await?;
                let r = c
                    .query(&format!(
                        "SELECT ACTION, ROWS, DATEDIFF('second', PUBLISHED_AT, CURRENT_TIMESTAMP()) FROM {} WHERE TARGET = {} AND RUN_ID = {}",
                        self.ledger("PUBLISHES"),
                        lit(&t),
                        lit(run_id)
                    ))
                    .await?;
                if let Some(row) = r.rows.first() {
                    return Ok(Some((
                        row[0].clone().unwrap_or_default(),
                        row[1].as_deref().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0),
                        row[2].as_deref().and_then(|v| v.parse::<i64>().ok()).unwrap_or(0),
                    )));
                }
                let rows: u64 = c
                    .query(&format!("SELECT COUNT(*) FROM {}", self.table(temp)))
                    .await?
                    .scalar()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                c.query(&format!(
                    "INSERT INTO {} (TARGET, RUN_ID, ACTION, ROWS) VALUES ({}, {}, 'swapping', {rows})",
                    self.ledger("PUBLISHES"),
                    lit(&t),
                    lit(run_id)
                ))
                .await?;
                Ok(None)
            })
            .await?;
        let rows = match claim {
            Some((action, rows, _)) if action == "swap" => {
                c.query(&format!("DROP TABLE IF EXISTS {}", self.table(temp)))
                    .await?;
                return Ok(Published {
                    rows,
                    already: true,
                });
            }
            Some((_, _, age)) if age < 3600 => {
                return Err(Error::warehouse(
                    self.ctx(format!("swap {t}")),
                    format!("another loader is swapping run {run_id} (busy); retry later"),
                ));
            }
            // A claim older than an hour: its loader died; finish its swap.
            Some((_, rows, _)) => rows,
            None => {
                let r = c
                    .query(&format!("SELECT COUNT(*) FROM {}", self.table(temp)))
                    .await?;
                r.scalar().and_then(|v| v.parse().ok()).unwrap_or(0)
            }
        };
        // 2. Swap, unless the target already is this run's table.
        if self.comment(&mut c, target).await?.as_deref() != Some(marker.as_str()) {
            c.query(&format!(
                "COMMENT ON TABLE {} IS {}",
                self.table(temp),
                lit(&marker)
            ))
            .await?;
            if self.exists(&mut c, target).await? {
                match self.cfg.swap {
                    SwapMode::Swap => {
                        c.query(&swap_sql(&self.table(temp), &self.table(target)))
                            .await?;
                    }
                    SwapMode::Rename => {
                        let old = target.with_suffix("_PGP_OLD")?;
                        c.query(&format!("DROP TABLE IF EXISTS {}", self.table(&old)))
                            .await?;
                        c.query(&format!(
                            "ALTER TABLE {} RENAME TO {}",
                            self.table(target),
                            self.table(&old)
                        ))
                        .await?;
                        c.query(&format!(
                            "ALTER TABLE {} RENAME TO {}",
                            self.table(temp),
                            self.table(target)
                        ))
                        .await?;
                        c.query(&format!("DROP TABLE IF EXISTS {}", self.table(&old)))
                            .await?;
                    }
                }
            } else {
                c.query(&format!(
                    "ALTER TABLE {} RENAME TO {}",
                    self.table(temp),
                    self.table(target)
                ))
                .await?;
            }
        }
        // 3. Record it and drop the old table (now under the temp name).
        c.query(&format!(
            "UPDATE {} SET ACTION = 'swap' WHERE TARGET = {} AND RUN_ID = {}",
            self.ledger("PUBLISHES"),
            lit(&t),
            lit(run_id)
        ))
        .await?;
        c.query(&format!("DROP TABLE IF EXISTS {}", self.table(temp)))
            .await?;
        Ok(Published {
            rows,
            already: false,
        })
    }

    async fn max_key(&self, table: &TableName, key: &Ident) -> Result<Option<i64>> {
        let r = self
            .query(&format!(
                "SELECT MAX({}) FROM {}",
                q(key.as_str()),
                self.table(table)
            ))
            .await?;
        match r.scalar() {
            None => Ok(None),
            Some(v) => v
                .split('.')
                .next()
                .unwrap_or(v)
                .parse()
                .map(Some)
                .map_err(|_| {
                    Error::warehouse(
                        self.ctx(format!("max key of {table}")),
                        format!("not an integer: {v}"),
                    )
                }),
        }
    }

    async fn row_count(&self, table: &TableName) -> Result<u64> {
        let r = self
            .query(&format!("SELECT COUNT(*) FROM {}", self.table(table)))
            .await?;
        Ok(r.scalar().and_then(|v| v.parse().ok()).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warehouse::conformance::col;

    #[test]
    fn production_copy_and_swap_sql() {
        let schema = TableSchema {
            columns: vec![
                col("id", ColumnType::BigInt),
                col("name", ColumnType::Text),
                col("props", ColumnType::Json),
                col("tags", ColumnType::List(Box::new(ColumnType::Text))),
                col(
                    "amount",
                    ColumnType::Decimal {
                        precision: 20,
                        scale: 4,
                    },
                ),
                col("at", ColumnType::TimestampTz),
                col("raw", ColumnType::Bytes),
                col("f", ColumnType::Double),
            ],
            task_instance: true,
        };
        let run = RunMeta {
            run_id: "r1".into(),
            uploaded_at: "2026-11-24T10:00:00Z".parse().unwrap(),
            task_instance: Some("dag.task.o'clock\\".into()),
        };
        let key = ObjectKey::parse("gitlab_com/users/r1/00000.tsv.gz").unwrap();
        let sql = copy_transform_sql(
            "\"RAW\".\"GITLAB_COM\".\"USERS_PGP_STAGE_r1\"",
            &schema,
            &run,
            "@\"RAW\".\"_PGP\".\"PGP_STAGE\"",
            &key,
            Compression::Gzip,
        );
        assert_eq!(
            sql,
            "COPY INTO \"RAW\".\"GITLAB_COM\".\"USERS_PGP_STAGE_r1\" (\"ID\", \"NAME\", \"PROPS\", \"TAGS\", \"AMOUNT\", \"AT\", \"RAW\", \"F\", \"_UPLOADED_AT\", \"_TASK_INSTANCE\") \
             FROM (SELECT $1::NUMBER(38,0), $2, PARSE_JSON($3), PARSE_JSON($4)::ARRAY, $5::NUMBER(20,4), $6::TIMESTAMP_TZ, TO_BINARY($7, 'HEX'), \
             (CASE $8 WHEN 'Infinity' THEN 'inf' WHEN '-Infinity' THEN '-inf' ELSE $8 END)::FLOAT, \
             '2026-11-24T10:00:00+00:00'::TIMESTAMP_TZ, 'dag.task.o''clock\\\\' FROM @\"RAW\".\"_PGP\".\"PGP_STAGE\") \
             FILES = ('gitlab_com/users/r1/00000.tsv.gz') \
             FILE_FORMAT = (TYPE = CSV FIELD_DELIMITER = '\\t' RECORD_DELIMITER = '\\n' FIELD_OPTIONALLY_ENCLOSED_BY = '\"' ESCAPE = NONE ESCAPE_UNENCLOSED_FIELD = NONE EMPTY_FIELD_AS_NULL = TRUE NULL_IF = () SKIP_HEADER = 0 TRIM_SPACE = FALSE ERROR_ON_COLUMN_COUNT_MISMATCH = TRUE REPLACE_INVALID_CHARACTERS = FALSE ENCODING = 'UTF8' COMPRESSION = GZIP TIMESTAMP_FORMAT = AUTO) \
             ON_ERROR = ABORT_STATEMENT FORCE = TRUE"
        );
        assert_eq!(
            swap_sql("\"RAW\".\"GITLAB_COM\".\"USERS_TEMP\"", "\"RAW\".\"GITLAB_COM\".\"USERS\""),
            "ALTER TABLE \"RAW\".\"GITLAB_COM\".\"USERS_TEMP\" SWAP WITH \"RAW\".\"GITLAB_COM\".\"USERS\""
        );
        assert!(file_format(Compression::None).contains("COMPRESSION = NONE"));
    }

    #[test]
    fn emulator_format_drops_only_default_valued_options() {
        let full = file_format(Compression::Gzip);
        let emu = emulator_file_format(Compression::Gzip);
        for option in DEFAULT_VALUED_OPTIONS {
            assert!(
                full.contains(option),
                "{option} is not in the production format"
            );
            assert!(
                !emu.contains(option),
                "{option} left in the emulator format"
            );
        }
        assert_eq!(
            emu,
            "(TYPE = CSV FIELD_DELIMITER = '\\t' FIELD_OPTIONALLY_ENCLOSED_BY = '\"' \
             ESCAPE_UNENCLOSED_FIELD = NONE EMPTY_FIELD_AS_NULL = TRUE NULL_IF = () \
             SKIP_HEADER = 0 COMPRESSION = GZIP)"
        );
    }

    #[test]
    fn names_are_upper_cased_and_quoted_literals_escaped() {
        assert_eq!(q("gitlab_com"), "\"GITLAB_COM\"");
        assert_eq!(lit("a'b\\c"), "'a''b\\\\c'");
        assert_eq!(
            render(&ColumnType::Decimal {
                precision: 38,
                scale: 10
            }),
            "NUMBER(38,10)"
        );
        assert_eq!(render(&ColumnType::Integer), "NUMBER(38,0)");
    }
}

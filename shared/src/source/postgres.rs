//! Connecting to PostgreSQL from a manifest's `connection_info`, describing a query's
//! columns, finding key bounds, and opening the COPY stream.
//!
//! The password lives in a `SecretString` and goes straight into the driver's config;
//! every `Display` of a connection shows `postgres://user@host:port/db`, never the
//! password, and error messages are built from the driver's error text, which does not
//! contain it.

use super::tls::{SslMode, TlsConfig};
use super::{ChunkQuery, Connector, Source};
use crate::error::{Error, Result};
use crate::format::PG_SESSION_SETTINGS;
use crate::manifest::ConnectionInfo;
use crate::params::Env;
use crate::query::{ChunkKey, KeyBound, KeySplits, SplitMethod};
use crate::types::{columns_from_pg, Column};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::{CopyOutStream, NoTls};

/// Where and as whom to connect.
#[derive(Clone)]
pub struct SourceConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    password: SecretString,
    /// TLS (`PGP_PG_SSLMODE`, `PGP_PG_SSLROOTCERT`).
    pub tls: TlsConfig,
}

impl fmt::Display for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "postgres://{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }
}

impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceConfig({self}, password: [redacted])")
    }
}

impl SourceConfig {
    /// Read the values named by `connection_info` from the environment. Errors name
    /// the variable, never its value.
    pub fn from_connection_info(ci: &ConnectionInfo, env: &dyn Env) -> Result<Self> {
        let get = |field: &str, var: &str| {
            env.var(var).ok_or_else(|| {
                Error::SourceConfig(format!(
                    "connection_info.{field} names the environment variable {var}, which is not set"
                ))
            })
        };
        let port_text = get("port", &ci.port)?;
        let port = port_text.trim().parse().map_err(|_| {
            Error::SourceConfig(format!(
                "connection_info.port: the environment variable {} is not a port number",
                ci.port
            ))
        })?;
        let tls = TlsConfig {
            mode: match env.var("PGP_PG_SSLMODE") {
                Some(m) => m.trim().parse()?,
                None => SslMode::default(),
            },
            root_cert: env.var("PGP_PG_SSLROOTCERT").map(Into::into),
        };
        Ok(SourceConfig {
            host: get("host", &ci.host)?,
            port,
            user: get("user", &ci.user)?,
            database: get("database", &ci.database)?,
            password: SecretString::from(get("pass", &ci.pass)?),
            tls,
        })
    }

    /// A config from explicit values (tests, tools).
    pub fn new(host: &str, port: u16, user: &str, database: &str, password: &str) -> Self {
        SourceConfig {
            host: host.into(),
            port,
            user: user.into(),
            database: database.into(),
            password: SecretString::from(password.to_string()),
            tls: TlsConfig::default(),
        }
    }
}

async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "postgres connection closed");
    }
}

/// Connects to PostgreSQL with the variables a manifest's `connection_info` names.
pub struct PgConnector {
    pub env: Arc<dyn Env + Send + Sync>,
}

#[async_trait]
impl Connector for PgConnector {
    async fn connect(&self, info: &ConnectionInfo) -> Result<Box<dyn Source>> {
        let cfg = SourceConfig::from_connection_info(info, self.env.as_ref())?;
        Ok(Box::new(PgSource::connect(&cfg).await?))
    }
}

/// Connects chunk readers that all read one picture of each source database, as
/// `pg_dump -j` does: the first connection to a database opens a leader session that
/// exports its snapshot (`pg_export_snapshot()` in a `REPEATABLE READ` transaction,
/// kept open for as long as this connector lives), and every chunk then reads inside
/// a transaction set to that snapshot (`SET TRANSACTION SNAPSHOT`). So the chunks of
/// one run, read in parallel on separate connections and at different times, are
/// together exactly the rows of one moment: a row updated, moved to another key range,
/// inserted or deleted while the run extracts is read once or not at all, never twice
/// and never lost. The cost is pg_dump's: the leader's snapshot holds back vacuum on
/// the source for the run's length. Used by the embedded run (`pgp tap`); the cloud
/// services read each chunk in its own snapshot (see the README).
pub struct SnapshotConnector {
    env: Arc<dyn Env + Send + Sync>,
    leaders: tokio::sync::Mutex<std::collections::HashMap<String, (PgSource, String)>>,
}

impl SnapshotConnector {
    pub fn new(env: Arc<dyn Env + Send + Sync>) -> SnapshotConnector {
        SnapshotConnector {
            env,
            leaders: tokio::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The snapshot every chunk of `cfg`'s database reads (exported on first use).
    async fn snapshot(&self, cfg: &SourceConfig) -> Result<String> {
        let mut leaders = self.leaders.lock().await;
        if let Some((_, id)) = leaders.get(&cfg.to_string()) {
            return Ok(id.clone());
        }
        let leader = PgSource::connect(cfg).await?;
        leader
            .client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| Error::source(format!("export a snapshot of {cfg}"), e))?;
        let id: String = leader
            .client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(|e| Error::source(format!("export a snapshot of {cfg}"), e))?
            .get(0);
        tracing::debug!(source = %cfg, snapshot = %id, "chunks read one exported snapshot");
        leaders.insert(cfg.to_string(), (leader, id.clone()));
        Ok(id)
    }
}

#[async_trait]
impl Connector for SnapshotConnector {
    async fn connect(&self, info: &ConnectionInfo) -> Result<Box<dyn Source>> {
        let cfg = SourceConfig::from_connection_info(info, self.env.as_ref())?;
        let snapshot = self.snapshot(&cfg).await?;
        let mut src = PgSource::connect(&cfg).await?;
        src.snapshot = Some(snapshot);
        Ok(Box::new(src))
    }
}

/// Up to this many expected rows, key splits sort every key (exact ranges).
pub const EXACT_SPLIT_ROWS: u64 = 1_000_000;
/// Above it, about this many sampled keys are sorted to find the splits.
pub const SPLIT_SAMPLE_ROWS: u64 = 200_000;

/// The source's side of `pgp verify`: statements run as simple queries, whose cells
/// PostgreSQL sends as text (under the session settings above).
#[async_trait]
impl crate::verify::Reader for PgSource {
    fn dialect(&self) -> crate::warehouse::Dialect {
        crate::warehouse::Dialect::Postgres
    }
    fn relation(&self, table: &crate::ident::TableName) -> String {
        table.quoted()
    }
    async fn rows(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| Error::source("verify: a comparison statement", e))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect())
    }
}

#[async_trait]
impl Source for PgSource {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn reader(&self) -> Option<&dyn crate::verify::Reader> {
        Some(self)
    }
    fn shares_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }
    async fn describe(&self, table: &str, query: &str) -> Result<Vec<Column>> {
        PgSource::describe(self, table, query).await
    }
    async fn key_splits(
        &self,
        table: &str,
        query: &str,
        key: &ChunkKey,
        rows_per_range: u64,
    ) -> Result<KeySplits> {
        PgSource::key_splits(self, table, query, key, rows_per_range).await
    }
    async fn mean_row_bytes(&self, table: &str, query: &str) -> Result<Option<f64>> {
        PgSource::mean_row_bytes(self, table, query).await
    }
    async fn copy_chunk(
        &self,
        chunk: &ChunkQuery<'_>,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let table = chunk.table.to_string();
        if let Some(id) = &self.snapshot {
            // The connection is this chunk's alone and closes with it, which ends the
            // (read-only) transaction.
            self.client
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
                    id.replace('\'', "''")
                ))
                .await
                .map_err(|e| Error::source(format!("table `{table}`: read the run's snapshot"), e))?;
        }
        let stream = self.copy_out(chunk.table, &chunk.copy_sql()).await?;
        Ok(stream
            .map(move |r| r.map_err(|e| Error::source(format!("table `{table}`: COPY stream"), e)))
            .boxed())
    }
}

/// A key column read straight from a table.
struct BaseColumn {
    oid: i64,
    attnum: i16,
    /// The table, as `regclass` prints it (quoted).
    rel: String,
    /// The column, quoted.
    att: String,
    /// The table's rows by its statistics (`pg_class.reltuples`; not positive when
    /// never analyzed).
    rows: f64,
    partitioned: bool,
}

/// Plan nodes that combine or drop rows: a query planned with one of them (outside
/// its subplans) does not return one row per table row.
const ROW_SET_NODES: &[&str] = &[
    "Aggregate",
    "WindowAgg",
    "Unique",
    "Limit",
    "SetOp",
    "Group",
    "Recursive Union",
];

/// The node types of a JSON plan, leaving out subplans and init plans.
fn plan_nodes(plan: &serde_json::Value, out: &mut Vec<String>) {
    if let Some(t) = plan["Node Type"].as_str() {
        out.push(t.to_string());
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        let rel = child["Parent Relationship"].as_str().unwrap_or_default();
        if rel != "SubPlan" && rel != "InitPlan" {
            plan_nodes(child, out);
        }
    }
}

/// An open connection to the source.
pub struct PgSource {
    client: tokio_postgres::Client,
    name: String,
    conn: tokio::task::JoinHandle<()>,
    /// An exported snapshot that chunks read in ([`SnapshotConnector`]).
    snapshot: Option<String>,
}

impl Drop for PgSource {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl PgSource {
    /// Connect, and set the session so that values are written canonically (UTC,
    /// ISO dates, exact floats, hex bytea) and read-only.
    pub async fn connect(cfg: &SourceConfig) -> Result<Self> {
        let name = cfg.to_string();
        let mut pg = tokio_postgres::Config::new();
        pg.host(&cfg.host)
            .port(cfg.port)
            .user(&cfg.user)
            .dbname(&cfg.database)
            .password(cfg.password.expose_secret())
            .application_name("pgp")
            .connect_timeout(Duration::from_secs(15))
            .keepalives(true);
        let ctx = || format!("connect to {name} (sslmode {})", cfg.tls.mode);
        let (client, conn) = match cfg.tls.client_config()? {
            None => {
                pg.ssl_mode(PgSslMode::Disable);
                let (client, connection) = pg
                    .connect(NoTls)
                    .await
                    .map_err(|e| Error::source(ctx(), e))?;
                (client, tokio::spawn(drive(connection)))
            }
            Some(tls) => {
                pg.ssl_mode(match cfg.tls.mode {
                    SslMode::Prefer => PgSslMode::Prefer,
                    _ => PgSslMode::Require,
                });
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
                let (client, connection) =
                    pg.connect(tls).await.map_err(|e| Error::source(ctx(), e))?;
                (client, tokio::spawn(drive(connection)))
            }
        };
        client
            .batch_execute(PG_SESSION_SETTINGS)
            .await
            .map_err(|e| Error::source(format!("session settings on {name}"), e))?;
        Ok(PgSource {
            client,
            name,
            conn,
            snapshot: None,
        })
    }

    /// `postgres://user@host:port/db`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The result columns of `query` (prepared, not run).
    pub async fn describe(&self, table: &str, query: &str) -> Result<Vec<Column>> {
        let st = self
            .client
            .prepare(query)
            .await
            .map_err(|e| Error::source(format!("table `{table}`: prepare the query"), e))?;
        // The declared dimensions of array columns read straight from a table
        // (`int[][]`), which decide the depth of their lists.
        let (rels, nums): (Vec<i64>, Vec<i16>) = st
            .columns()
            .iter()
            .filter(|c| matches!(c.type_().kind(), tokio_postgres::types::Kind::Array(_)))
            .filter_map(|c| Some((i64::from(c.table_oid()?), c.column_id()?)))
            .filter(|(rel, _)| *rel != 0)
            .unzip();
        let mut declared = std::collections::HashMap::new();
        if !rels.is_empty() {
            let rows = self
                .client
                .query(
                    "SELECT a.attrelid::bigint, a.attnum, a.attndims FROM pg_attribute a \
                     JOIN unnest($1::bigint[], $2::int2[]) AS c(rel, num) \
                     ON a.attrelid = c.rel::oid AND a.attnum = c.num",
                    &[&rels, &nums],
                )
                .await
                .map_err(|e| Error::source(format!("table `{table}`: read array dimensions"), e))?;
            for r in rows {
                declared.insert((r.get::<_, i64>(0), r.get::<_, i16>(1)), r.get::<_, i32>(2));
            }
        }
        columns_from_pg(table, st.columns(), |c| {
            c.table_oid()
                .zip(c.column_id())
                .and_then(|(rel, num)| declared.get(&(i64::from(rel), num)).copied())
                .unwrap_or(1)
        })
    }

    /// The planner's estimate of the query's rows (`EXPLAIN`: no row is read).
    pub async fn estimate_rows(&self, table: &str, query: &str) -> Result<f64> {
        let sql = format!(
            "EXPLAIN (FORMAT JSON) {}",
            crate::query::wrap(query, "1", None, None)
        );
        let msgs = self
            .client
            .simple_query(&sql)
            .await
            .map_err(|e| Error::source(format!("table `{table}`: estimate rows"), e))?;
        let plan = msgs.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        let rows = plan
            .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
            .and_then(|v| v[0]["Plan"]["Plan Rows"].as_f64());
        Ok(rows.unwrap_or(0.0))
    }

    /// For a key that is one column read straight from a table (or the row location
    /// of the one table the query reads): that table and column.
    async fn base_column(
        &self,
        table: &str,
        query: &str,
        key: &ChunkKey,
    ) -> Result<Option<BaseColumn>> {
        let Some(col) = key.as_column() else {
            return Ok(None);
        };
        let st = self
            .client
            .prepare(&crate::query::wrap(
                query,
                &format!("pgp_src.{}", col.quoted()),
                None,
                None,
            ))
            .await
            .map_err(|e| Error::source(format!("table `{table}`: describe key `{key}`"), e))?;
        let Some(c) = st.columns().first() else {
            return Ok(None);
        };
        let (Some(rel), Some(num)) = (c.table_oid(), c.column_id()) else {
            return Ok(None);
        };
        if rel == 0 {
            return Ok(None);
        }
        let row = self
            .client
            .query_opt(
                "SELECT c.oid::regclass::text, quote_ident(a.attname), c.reltuples::float8, c.relkind::text \
                 FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid \
                 WHERE c.oid = $1::bigint::oid AND a.attnum = $2 AND c.relkind IN ('r', 'p', 'm')",
                &[&i64::from(rel), &num],
            )
            .await
            .map_err(|e| Error::source(format!("table `{table}`: key `{key}`'s table"), e))?;
        Ok(row.map(|r| BaseColumn {
            oid: i64::from(rel),
            attnum: num,
            rel: r.get(0),
            att: r.get(1),
            rows: r.get(2),
            partitioned: r.get::<_, String>(3) == "p",
        }))
    }

    /// Bounds from the key column's histogram in `pg_stats`, when it describes the
    /// table as it is (analyzed, fewer than a tenth of its rows changed since), spreads
    /// over every row (no most-common-values list, whose rows the histogram leaves
    /// out; true of unique keys) and is fine enough: at least 4 histogram buckets per
    /// range, so a range is off by at most a quarter. `None` otherwise. The bounds are
    /// in the column's own ordering (ANALYZE sorts with the type's default ordering and
    /// the column's collation, the ones the range conditions use).
    async fn histogram_bounds(
        &self,
        table: &str,
        base: &BaseColumn,
        ranges: u64,
    ) -> Result<Option<Vec<KeyBound>>> {
        if base.partitioned || ranges < 2 {
            return Ok(None);
        }
        let row = self
            .client
            .query_opt(
                "SELECT s.histogram_bounds::text::text[], s.most_common_vals IS NULL, \
                   coalesce(u.n_mod_since_analyze, 0)::float8, c.reltuples::float8 \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = $2 \
                 JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname \
                   AND s.attname = a.attname AND NOT s.inherited \
                 LEFT JOIN pg_stat_all_tables u ON u.relid = c.oid \
                 WHERE c.oid = $1::bigint::oid",
                &[&base.oid, &base.attnum],
            )
            .await
            .map_err(|e| Error::source(format!("table `{table}`: read key statistics"), e))?;
        let Some(row) = row else { return Ok(None) };
        let (hist, no_mcv, modified, rows): (Option<Vec<String>>, bool, f64, f64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let Some(hist) = hist else { return Ok(None) };
        let current = rows > 0.0 && modified <= 0.1 * rows;
        let buckets = hist.len().saturating_sub(1) as u64;
        if !current || !no_mcv || buckets < 4 * ranges {
            return Ok(None);
        }
        let mut bounds: Vec<KeyBound> = Vec::new();
        for i in 1..ranges {
            let b = KeyBound(vec![
                hist[((i * buckets + ranges / 2) / ranges) as usize].clone()
            ]);
            if bounds.last() != Some(&b) {
                bounds.push(b);
            }
        }
        Ok(Some(bounds))
    }

    /// Bounds that cut the query's rows into ranges of `key` of about `rows_per_range`
    /// rows each, by row rank, not key width: sparse, skewed, text, uuid, date or
    /// composite keys give ranges as even as their values allow (equal keys stay in
    /// one range). The keys are sorted with the key's own ordering (its type's default
    /// operator class and the column's collation, the ones a range condition and an
    /// index on the key use, so a chunk's range scan can use that index), from every
    /// row when the planner expects at most [`EXACT_SPLIT_ROWS`]. Above that, a plain
    /// table column's current `pg_stats` histogram gives the bounds without reading a
    /// row; else a sample of about [`SPLIT_SAMPLE_ROWS`] does: pages of the key
    /// column's own table (`TABLESAMPLE SYSTEM`, bounded work) when the key is a plain
    /// table column, else a random pass over the query's rows. The sorted keys are cut
    /// into equal buckets, as many as the rows need. Any bounds partition the rows;
    /// statistics and sampling only make the ranges less even. At most
    /// [`crate::query::MAX_KEY_RANGES`] ranges.
    ///
    /// The physical key ([`ChunkKey::physical`], over a query from
    /// [`crate::query::with_row_location`]) is cut the same way, by row rank, so its
    /// ranges are even even when the table's pages are not; it is refused (an error
    /// saying why) when PostgreSQL would not read its ranges as TID range scans, or
    /// when the query's rows are not one per table row.
    pub async fn key_splits(
        &self,
        table: &str,
        query: &str,
        key: &ChunkKey,
        rows_per_range: u64,
    ) -> Result<KeySplits> {
        let ctx = || format!("table `{table}`: split the rows by key `{key}`");
        let from = format!(
            "FROM (\n{}\n) AS pgp_src",
            crate::query::strip_terminator(query)
        );
        let is_null = key.is_null();
        let physical = key.is_physical();
        // The key must fit the query and have an ordering, whatever the table's size
        // (prepared, not run): a key naming a column the query does not select is a
        // manifest defect to hear about before the table grows.
        self.client
            .prepare(&format!(
                "SELECT 1 {from} ORDER BY {}",
                key.parts().join(", ")
            ))
            .await
            .map_err(|e| Error::source(ctx(), e))?;
        // Fewer rows than one range holds: no pass over the key (most tables of a
        // nightly SCD run). Counted, reading at most one range's rows, rather than
        // estimated: a low estimate (stale statistics, a selective filter) must not
        // make one chunk of a large table. Skipped when the key's table holds
        // several ranges' worth by its statistics (an overestimate only costs a
        // few extra ranges).
        let base = self.base_column(table, query, key).await?;
        let clearly_large = base
            .as_ref()
            .is_some_and(|b| b.rows > 2.0 * rows_per_range as f64);
        let few: bool = !clearly_large
            && self
                .client
                .query_one(
                    &format!(
                    "SELECT count(*) <= {rows_per_range} FROM (SELECT 1 {from} LIMIT {}) AS pgp_n",
                    rows_per_range.saturating_add(1)
                ),
                    &[],
                )
                .await
                .map_err(|e| Error::source(ctx(), e))?
                .get(0);
        if few {
            return Ok(KeySplits::default());
        }
        let estimate = self.estimate_rows(table, query).await?;
        // A row location is never NULL.
        let nulls: bool = !physical
            && self
                .client
                .query_one(
                    &format!("SELECT EXISTS (SELECT 1 {from} WHERE {is_null})"),
                    &[],
                )
                .await
                .map_err(|e| Error::source(ctx(), e))?
                .get(0);
        let done = |bounds: Vec<KeyBound>, method| KeySplits {
            bounds,
            nulls,
            nullable: !physical,
            method,
        };

        let large = estimate > EXACT_SPLIT_ROWS as f64;
        // Row locations of a large table: equal ranges of its pages. A page sample
        // would cut them worse: its pages come in clusters, and the physical key
        // orders rows exactly as pages do (measured: ranges of 68-113% of the asked
        // size on 1,200,000 rows, against 98-102% for equal pages of a table whose
        // pages are evenly filled; a table bloated by deletes gets uneven ranges).
        if let (true, true, Some(b)) = (physical, large, base.as_ref()) {
            let pages: i64 = self
                .client
                .query_one(
                    "SELECT pg_relation_size($1::bigint::oid) / current_setting('block_size')::bigint",
                    &[&b.oid],
                )
                .await
                .map_err(|e| Error::source(ctx(), e))?
                .get(0);
            let pages = pages.max(1) as u64;
            let ranges = ((estimate / rows_per_range as f64).ceil() as u64)
                .clamp(1, crate::query::MAX_KEY_RANGES)
                .min(pages);
            let bounds = (1..ranges)
                .map(|i| KeyBound(vec![format!("({},0)", i * pages / ranges)]))
                .collect();
            return self
                .checked(table, query, key, done(bounds, SplitMethod::Pages))
                .await;
        }
        if let Some(b) = base
            .as_ref()
            .filter(|b| large && b.rows > EXACT_SPLIT_ROWS as f64)
        {
            let ranges = ((b.rows / rows_per_range as f64).ceil() as u64)
                .clamp(1, crate::query::MAX_KEY_RANGES);
            if let Some(bounds) = self.histogram_bounds(table, b, ranges).await? {
                return self
                    .checked(table, query, key, done(bounds, SplitMethod::Histogram))
                    .await;
            }
        }

        let n = key.parts().len();
        let ks: Vec<String> = (0..n).map(|i| format!("pgp_k{i}")).collect();
        let select: Vec<String> = key
            .parts()
            .iter()
            .zip(&ks)
            .map(|(p, k)| format!("{p} AS {k}"))
            .collect();
        // The sampled keys: every row's; or a sample of the key column's table read
        // page by page (bounded work, whatever the table's size); or a random sample
        // of the query's rows (one pass over them).
        let (p, sampled, method) = match base {
            Some(BaseColumn { rel, att, rows, .. }) if rows > EXACT_SPLIT_ROWS as f64 && large => {
                let pct = (100.0 * SPLIT_SAMPLE_ROWS as f64 / rows).min(100.0);
                // Bounds from the table's own distribution partition the query's
                // rows as well as any; a filtering query only gets smaller ranges.
                (
                    SPLIT_SAMPLE_ROWS as f64 / estimate.max(1.0),
                    format!(
                        "SELECT {att} AS pgp_k0 FROM {rel} TABLESAMPLE SYSTEM ({pct:.9}) WHERE {att} IS NOT NULL"
                    ),
                    SplitMethod::PageSample,
                )
            }
            _ if large => {
                let p = SPLIT_SAMPLE_ROWS as f64 / estimate;
                (
                    p,
                    format!(
                        "SELECT {} {from} WHERE NOT ({is_null}) AND random() < {p:.12}",
                        select.join(", ")
                    ),
                    SplitMethod::RandomSample,
                )
            }
            _ => (
                1.0,
                format!("SELECT {} {from} WHERE NOT ({is_null})", select.join(", ")),
                SplitMethod::Sorted,
            ),
        };
        // Sampled rows per range. The sorted sample is cut into `pgp_n` equal buckets,
        // as many as the rows need (at most the cap): each range then holds about the
        // same number of rows, at most `rows_per_range` when every row is sorted, and
        // the last range is not a small remainder.
        let per = (rows_per_range as f64 * p).max(1.0);
        let texts: Vec<String> = ks.iter().map(|k| format!("{k}::text")).collect();
        let sql = format!(
            "SELECT {texts} FROM (\
               SELECT {ks}, row_number() OVER (ORDER BY {ks}) AS pgp_r, count(*) OVER () AS pgp_c \
               FROM ({sampled}) AS pgp_s\
             ) AS pgp_t, \
             LATERAL (SELECT LEAST({cap}, CEIL(pgp_c / {per:.6}::float8))::bigint AS pgp_n) AS pgp_b \
             WHERE pgp_r > 1 AND (pgp_r - 1) * pgp_n / pgp_c > (pgp_r - 2) * pgp_n / pgp_c \
             ORDER BY pgp_r",
            texts = texts.join(", "),
            ks = ks.join(", "),
            cap = crate::query::MAX_KEY_RANGES,
        );
        let rows = self
            .client
            .query(&sql, &[])
            .await
            .map_err(|e| Error::source(ctx(), e))?;
        let mut bounds: Vec<KeyBound> = Vec::with_capacity(rows.len());
        for r in rows {
            let b = KeyBound((0..n).map(|i| r.get::<_, String>(i)).collect());
            // Equal keys at two cut points: one bound, no empty range.
            if bounds.last() != Some(&b) {
                bounds.push(b);
            }
        }
        self.checked(table, query, key, done(bounds, method)).await
    }

    /// `splits`, once PostgreSQL's plan for a range of the physical key shows that a
    /// chunk reads only its pages (a TID range scan: PostgreSQL 14 or later) and
    /// returns one row per table row (no window function or other node that needs
    /// every row of the table); other keys pass unchecked.
    async fn checked(
        &self,
        table: &str,
        query: &str,
        key: &ChunkKey,
        splits: KeySplits,
    ) -> Result<KeySplits> {
        if !key.is_physical() || splits.bounds.is_empty() {
            return Ok(splits);
        }
        let probe = crate::query::KeyRange {
            lo: splits.bounds.first().cloned(),
            hi: splits.bounds.get(1).cloned(),
            nulls: false,
            keys: true,
        };
        let sql = format!(
            "EXPLAIN (FORMAT JSON) {}",
            // Every column: a window function whose value is not selected is
            // planned away.
            crate::query::wrap(query, "pgp_src.*", Some((key, &probe)), None)
        );
        let msgs = self
            .client
            .simple_query(&sql)
            .await
            .map_err(|e| Error::source(format!("table `{table}`: plan a page range"), e))?;
        let plan = msgs
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
            .map(|v| v[0]["Plan"].clone())
            .unwrap_or_default();
        let mut nodes = Vec::new();
        plan_nodes(&plan, &mut nodes);
        let refuse = |message: String| Error::Query {
            table: table.to_string(),
            message,
        };
        if let Some(n) = nodes.iter().find(|n| ROW_SET_NODES.contains(&n.as_str())) {
            return Err(refuse(format!(
                "its rows are not one per table row (PostgreSQL plans a {n}), so they cannot be cut by row location"
            )));
        }
        if !nodes.iter().any(|n| n == "Tid Range Scan") {
            return Err(refuse(
                "PostgreSQL would read the whole table for every range of row locations \
                 (TID range scans need PostgreSQL 14 or later)"
                    .into(),
            ));
        }
        Ok(splits)
    }

    /// The mean size in bytes of the query's rows, from a sample of its first rows
    /// (sizes chunks towards Snowflake's recommended object size).
    pub async fn mean_row_bytes(&self, table: &str, query: &str) -> Result<Option<f64>> {
        let sql = format!(
            "SELECT avg(octet_length(pgp_row::text))::float8 FROM ({}) AS pgp_row",
            crate::query::wrap(query, "*", None, Some(1000))
        );
        let row = self
            .client
            .query_one(&sql, &[])
            .await
            .map_err(|e| Error::source(format!("table `{table}`: sample row size"), e))?;
        Ok(row.get(0))
    }

    /// Start `COPY ... TO STDOUT`; each stream item is one row (PostgreSQL sends one
    /// CopyData message per row).
    pub async fn copy_out(&self, table: &str, copy_sql: &str) -> Result<CopyOutStream> {
        self.client
            .copy_out(copy_sql)
            .await
            .map_err(|e| Error::source(format!("table `{table}`: COPY"), e))
    }

    /// Whether this connection is encrypted (from the server's `pg_stat_ssl`).
    pub async fn encrypted(&self) -> Result<bool> {
        let row = self
            .client
            .query_one("SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)", &[])
            .await
            .map_err(|e| Error::source(format!("TLS status on {}", self.name), e))?;
        Ok(row.get(0))
    }

    /// `SELECT 1`.
    pub async fn health(&self) -> Result<()> {
        self.client
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(|e| Error::source(format!("health of {}", self.name), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn ci() -> ConnectionInfo {
        ConnectionInfo {
            user: "U".into(),
            pass: "P".into(),
            host: "H".into(),
            database: "D".into(),
            port: "PORT".into(),
        }
    }

    #[test]
    fn a_missing_variable_is_named_and_no_value_leaks() {
        let env: BTreeMap<String, String> = [("U", "me"), ("P", "hunter2"), ("H", "h"), ("D", "d")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let e = SourceConfig::from_connection_info(&ci(), &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("PORT"), "{e}");
        assert!(!e.contains("hunter2"));
    }

    #[test]
    fn display_and_debug_redact_the_password() {
        let c = SourceConfig::new("h", 5432, "me", "db", "hunter2");
        assert_eq!(c.to_string(), "postgres://me@h:5432/db");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

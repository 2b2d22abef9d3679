//! Shared helpers of the end-to-end tests: a temp folder with local storage and a
//! DuckDB file, a fresh PostgreSQL database, and runs of the real pipeline.

use chrono::{DateTime, Utc};
use pgp::manifest::Manifest;
use pgp::plan::LoadType;
use pgp::run::{Outcome, Pipeline, Quiet, RunOptions, RunReport};
use pgp_e2e::{write_manifest, Pg, TestDb};
use std::path::PathBuf;
use std::sync::Arc;

pub struct World {
    pub dir: tempfile::TempDir,
    pub db: TestDb,
    pub manifest: PathBuf,
    pub vars: Vec<(String, String)>,
}

impl World {
    pub async fn new(prefix: &str, setup_sql: &str, tables_yaml: &str) -> World {
        let db = Pg::get().fresh_db(prefix).await;
        db.exec(setup_sql).await;
        let dir = tempfile::tempdir().unwrap();
        let manifest = write_manifest(dir.path(), tables_yaml);
        World {
            dir,
            db,
            manifest,
            vars: Vec::new(),
        }
    }

    pub fn duckdb_path(&self) -> PathBuf {
        self.dir.path().join("warehouse.duckdb")
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("objects")
    }

    pub fn pipeline(&self) -> Pipeline {
        let store: Arc<dyn pgp::storage::ObjectStore> =
            Arc::new(pgp::storage::LocalStore::new(self.store_path()).unwrap());
        let warehouse =
            Arc::new(pgp::warehouse::DuckDb::open(&self.duckdb_path(), store.clone()).unwrap());
        let mut env = self.db.env();
        env.extend(self.vars.iter().cloned());
        Pipeline {
            store,
            warehouse,
            env: Arc::new(env),
        }
    }

    pub fn options(&self, load_type: LoadType, now: DateTime<Utc>) -> RunOptions {
        RunOptions::new(load_type, now)
    }

    /// Run the pipeline once (its DuckDB connection is closed afterwards).
    pub async fn run(&self, opts: RunOptions) -> RunReport {
        let m = Manifest::from_file(&self.manifest).unwrap();
        let p = self.pipeline();
        p.run(&m, &opts, &Quiet).await.unwrap()
    }

    pub async fn run_type(&self, load_type: LoadType) -> RunReport {
        self.run(self.options(load_type, Utc::now())).await
    }

    /// The `pgp` command with `args`, its warehouse and store this World's, the
    /// source from `source_env` (normally `self.db.env()`), nothing else in its
    /// environment: its output, stdout and stderr together (never with the password).
    pub fn pgp(
        &self,
        args: &[&str],
        source_env: std::collections::BTreeMap<String, String>,
    ) -> (std::process::Output, String) {
        let out = std::process::Command::new(pgp_e2e::cloud::service_binary("pgp"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(
                "PGP_WAREHOUSE_URL",
                format!("duckdb://{}", self.duckdb_path().display()),
            )
            .env(
                "PGP_STORAGE_URL",
                format!("file://{}", self.store_path().display()),
            )
            .env("PGP_LOG", "warn")
            .envs(source_env)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains(pgp_e2e::PASSWORD),
            "password in output: {text}"
        );
        (out, text)
    }

    /// Rows of a DuckDB query, every value cast to text by the query itself.
    pub fn duck(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let c = duckdb::Connection::open(self.duckdb_path()).unwrap();
        let mut st = c.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let rows = st
            .query_map([], |r| {
                let n = r.as_ref().column_count();
                (0..n)
                    .map(|i| r.get::<_, Option<String>>(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.collect::<Result<Vec<_>, _>>().unwrap()
    }

    pub fn duck_count(&self, sql: &str) -> i64 {
        let c = duckdb::Connection::open(self.duckdb_path()).unwrap();
        c.query_row(sql, [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub fn duck_has_table(&self, schema: &str, table: &str) -> bool {
        self.duck_count(&format!(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = '{schema}' AND lower(table_name) = lower('{table}')"
        )) > 0
    }

    /// Rows of a PostgreSQL query, every value cast to text by the query itself.
    pub async fn pg(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let rows = self
            .db
            .client
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get::<_, Option<String>>(i))
                    .collect()
            })
            .collect()
    }
}

/// `pgp verify` of some manifest tables against the World's DuckDB (`leaf_rows`: see
/// [`pgp::verify::VerifyOptions`]).
pub async fn verify_tables(
    w: &World,
    tables: &[&str],
    leaf_rows: u64,
) -> Vec<pgp::verify::TableVerification> {
    let m = Manifest::from_file(&w.manifest).unwrap();
    let p = w.pipeline();
    let opts = pgp::verify::VerifyOptions {
        tables: tables.iter().map(|t| t.to_string()).collect(),
        leaf_rows,
        ..Default::default()
    };
    let connector = pgp::source::PgConnector { env: p.env.clone() };
    pgp::verify::verify(&m, &opts, &connector, p.env.as_ref(), p.warehouse.as_ref())
        .await
        .unwrap()
}

pub fn outcome<'a>(r: &'a RunReport, table: &str) -> &'a Outcome {
    &r.tables
        .iter()
        .find(|t| t.table == table)
        .unwrap_or_else(|| panic!("no {table} in {r:?}"))
        .outcome
}

pub fn rows(r: &RunReport, table: &str) -> u64 {
    r.tables.iter().find(|t| t.table == table).unwrap().rows
}

pub use pgp_e2e::walk;

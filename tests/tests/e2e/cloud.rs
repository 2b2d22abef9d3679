//! The Cloud Run flow end to end on this machine: the official Pub/Sub emulator, the
//! GCS emulator, PostgreSQL, the three service binaries and an embedded DuckDB.
//!
//! Topics and **push subscriptions** deliver load requests to the planner and chunk
//! tasks to the extractors; the harness produces GCS finalize events (no emulator
//! emits them) as Pub/Sub notifications and Eventarc CloudEvents, each object at
//! least twice and in shuffled order. Every load request is also published twice
//! with the same run id. The warehouse must end up equal to the source, once.

use pgp_e2e::cloud::*;
use pgp_e2e::{Pg, TestDb, CONNECTION_INFO};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Stack {
    name: String,
    dir: tempfile::TempDir,
    db: TestDb,
    admin: Admin,
    planner: Proc,
    extractor: Proc,
    /// Further extractor instances (each with its own push subscription: every chunk
    /// task reaches every instance).
    more_extractors: Vec<Proc>,
    loaders: Vec<(Proc, u16)>,
    extractor_port: u16,
    env: BTreeMap<String, String>,
    feeder: FinalizeFeeder,
}

/// How many instances of the extractor and the loader a stack runs.
#[derive(Clone, Copy)]
struct Instances {
    extractors: usize,
    loaders: usize,
}

const ONE_EACH: Instances = Instances {
    extractors: 1,
    loaders: 1,
};

impl Stack {
    async fn new(name: &str, setup: &str, tables: &str) -> Stack {
        Stack::with_warehouse(name, setup, tables, None, ONE_EACH).await
    }

    /// A stack whose services load into `warehouse` (URL and its extra environment)
    /// instead of the stack's own DuckDB file.
    async fn with_warehouse(
        name: &str,
        setup: &str,
        tables: &str,
        warehouse: Option<(String, BTreeMap<String, String>)>,
        n: Instances,
    ) -> Stack {
        let emu = tokio::task::spawn_blocking(Emulators::get).await.unwrap();
        let db = Pg::get().fresh_db(name).await;
        db.exec(setup).await;
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::write(
            manifests.join("manifest.yaml"),
            format!("{CONNECTION_INFO}tables:\n{tables}"),
        )
        .unwrap();
        let admin = Admin::new(emu);
        let (requests, extract, gcs) = (
            format!("{name}-requests"),
            format!("{name}-extract"),
            format!("{name}-gcs"),
        );
        for t in [&requests, &extract, &gcs] {
            admin.create_topic(t).await;
        }
        let mut env = db.env();
        for (k, v) in [
            ("PGP_STORAGE_URL", format!("gs://{BUCKET}")),
            ("PGP_GCS_ENDPOINT", emu.gcs_url()),
            (
                "PGP_WAREHOUSE_URL",
                format!("duckdb://{}", dir.path().join("warehouse.duckdb").display()),
            ),
            ("PGP_PUBSUB_PROJECT", PROJECT.to_string()),
            ("PGP_PUBSUB_ENDPOINT", emu.pubsub_url()),
            ("PGP_EXTRACT_TOPIC", extract.clone()),
            ("PGP_MANIFEST_DIR", manifests.display().to_string()),
            ("PGP_WAREHOUSE_WAIT", "120".to_string()),
        ] {
            env.insert(k.to_string(), v);
        }
        if let Some((url, extra)) = warehouse {
            env.insert("PGP_WAREHOUSE_URL".into(), url);
            env.extend(extra);
        }
        let (pp, ep) = (free_port(), free_port());
        let planner = start_service("planner", pp, &env);
        let extractor = start_service("extractor", ep, &env);
        let mut more_extractors = Vec::new();
        for i in 1..n.extractors {
            let port = free_port();
            more_extractors.push(start_service("extractor", port, &env));
            admin
                .push_subscription(
                    &format!("{name}-extract-{i}"),
                    &extract,
                    &format!("http://127.0.0.1:{port}/"),
                )
                .await;
        }
        let loaders: Vec<(Proc, u16)> = (0..n.loaders)
            .map(|_| {
                let port = free_port();
                (start_service("loader", port, &env), port)
            })
            .collect();
        let lp = loaders[0].1;
        admin
            .push_subscription(
                &format!("{name}-plan"),
                &requests,
                &format!("http://127.0.0.1:{pp}/"),
            )
            .await;
        admin
            .push_subscription(
                &format!("{name}-extract"),
                &extract,
                &format!("http://127.0.0.1:{ep}/"),
            )
            .await;
        admin
            .push_subscription(
                &format!("{name}-load"),
                &gcs,
                &format!("http://127.0.0.1:{lp}/"),
            )
            .await;
        let feeder = FinalizeFeeder::to_loaders(
            admin.clone(),
            format!("{name}/"),
            gcs.clone(),
            loaders
                .iter()
                .map(|(_, p)| format!("http://127.0.0.1:{p}/"))
                .collect(),
        );
        Stack {
            name: name.to_string(),
            dir,
            db,
            admin,
            planner,
            extractor,
            more_extractors,
            loaders,
            extractor_port: ep,
            env,
            feeder,
        }
    }

    fn duckdb_path(&self) -> PathBuf {
        self.dir.path().join("warehouse.duckdb")
    }

    /// Publish a load request twice (same run id), as a retrying Airflow task might.
    async fn request(&self, req: serde_json::Value) {
        let topic = format!("{}-requests", self.name);
        let data = req.to_string();
        self.admin
            .publish(&topic, data.as_bytes(), &BTreeMap::new())
            .await;
        self.admin
            .publish(&topic, data.as_bytes(), &BTreeMap::new())
            .await;
    }

    /// A DuckDB query, read-only, retried while a service holds the file.
    fn duck(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.duck_once(sql) {
                Err(e) if e.contains("lock") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                r => return r,
            }
        }
    }

    fn duck_once(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        let cfg = duckdb::Config::default()
            .access_mode(duckdb::AccessMode::ReadOnly)
            .unwrap();
        let c = duckdb::Connection::open_with_flags(self.duckdb_path(), cfg)
            .map_err(|e| e.to_string())?;
        let mut st = c.prepare(sql).map_err(|e| e.to_string())?;
        let rows = st
            .query_map([], |r| {
                let n = r.as_ref().column_count();
                (0..n)
                    .map(|i| r.get::<_, Option<String>>(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    }

    /// Wait until `sql` (one value) returns `want`.
    async fn wait_value(&self, sql: &str, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.duck(sql) {
                Ok(rows) if rows.first().and_then(|r| r[0].as_deref()) == Some(want) => return,
                Ok(rows) => last = format!("{rows:?}"),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "{sql}: wanted {want}, last {last}\n--- planner\n{}\n--- extractor\n{}",
            self.planner.output(),
            self.extractor.output()
        );
    }

    async fn pg(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let rows = self.db.client.query(sql, &[]).await.unwrap();
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get::<_, Option<String>>(i))
                    .collect()
            })
            .collect()
    }
}

const SETUP: &str = r#"
CREATE TABLE items (id bigint PRIMARY KEY, txt text, num numeric(20,5), ts timestamptz);
INSERT INTO items VALUES
  (1, NULL, NULL, NULL), (2, '', 0, '2024-01-01 00:00:00+00'),
  (3, E'tab\there\nnewline \\ backslash', -1.5, '1999-12-31 23:59:59.999999+05:30'),
  (4, '\N', 12345678901234.12345, '2024-06-30 12:00:00-07'), (5, 'ünï©ødé 🐘 "quoted"', 1, now());
INSERT INTO items SELECT g, 'row ' || g, g / 7.0, timestamptz '2024-01-01' + g * interval '1 hour'
  FROM generate_series(6, 1000) g;
CREATE TABLE events (id bigint PRIMARY KEY, kind text, updated_at timestamp NOT NULL);
INSERT INTO events SELECT g, 'k' || (g % 3), timestamp '2024-01-01 00:00:00' + g * interval '1 minute'
  FROM generate_series(1, 600) g;
CREATE TABLE big (id bigint PRIMARY KEY, payload text, amount numeric(12,2));
INSERT INTO big SELECT g, repeat(md5(g::text), 3), g * 1.25 FROM generate_series(1, 5000) g;
"#;

fn tables(schema: &str) -> String {
    format!(
        "  items:
    import_db: TEST_DB
    export_schema: '{schema}'
    export_table: 'items'
    export_table_primary_key: id
    import_query: SELECT id, txt, num, ts FROM items
  events:
    import_db: TEST_DB
    export_schema: '{schema}'
    export_table: 'events'
    export_table_primary_key: id
    advanced_metadata: true
    import_query: |-
      SELECT id, kind, updated_at
      FROM events
      WHERE updated_at BETWEEN '{{BEGIN_TIMESTAMP}}'::timestamp AND '{{END_TIMESTAMP}}'::timestamp
  big:
    import_db: TEST_DB
    export_schema: '{schema}'
    export_table: 'big'
    export_table_primary_key: id
    import_query: SELECT * FROM big
"
    )
}

const ITEMS_PG: &str = "SELECT id::text, txt, num::text, (extract(epoch FROM ts) * 1000000)::bigint::text FROM items ORDER BY items.id";

/// DuckDB names `CAST(id AS VARCHAR)` "id", so ORDER BY casts back to sort by number.
fn items_duck(schema: &str, extra: &str) -> String {
    format!(
        "SELECT CAST(id AS VARCHAR), txt, CAST(num AS VARCHAR), CAST(epoch_us(ts) AS VARCHAR) \
         FROM {schema}.items {extra} ORDER BY CAST(id AS BIGINT)"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scd_incremental_and_chunked_backfill_through_the_services() {
    let s = Stack::new("cloudflow", SETUP, &tables("cloudflow")).await;
    let minute = Duration::from_secs(120);

    // SCD: the first run creates `items` (swap), a second run appends a snapshot.
    s.request(
        serde_json::json!({"manifest": "manifest.yaml", "load_type": "scd", "run_id": "scd-1",
            "tables": ["items"]}),
    )
    .await;
    s.wait_value(
        "SELECT CAST(count(*) AS VARCHAR) FROM cloudflow.items",
        "1000",
        minute,
    )
    .await;
    assert_eq!(
        s.duck(&items_duck("cloudflow", "")).unwrap(),
        s.pg(ITEMS_PG).await
    );
    s.request(
        serde_json::json!({"manifest": "manifest.yaml", "load_type": "scd", "run_id": "scd-2",
        "tables": ["items"]}),
    )
    .await;
    s.wait_value(
        "SELECT CAST(count(*) AS VARCHAR) FROM cloudflow.items",
        "2000",
        minute,
    )
    .await;
    let second = items_duck(
        "cloudflow",
        "WHERE _uploaded_at = (SELECT max(_uploaded_at) FROM cloudflow.items)",
    );
    assert_eq!(s.duck(&second).unwrap(), s.pg(ITEMS_PG).await);

    // Incremental: a backfill first, then one window, with the task instance.
    s.request(
        serde_json::json!({"manifest": "manifest.yaml", "load_type": "backfill",
        "tables": ["events"], "run_id": "events-backfill"}),
    )
    .await;
    s.wait_value(
        "SELECT CAST(count(*) AS VARCHAR) FROM cloudflow.events",
        "600",
        minute,
    )
    .await;
    s.request(
        serde_json::json!({"manifest": "manifest.yaml", "load_type": "incremental",
        "tables": ["events"], "execution_date": "2024-01-01T05:00:00Z", "hours": 2,
        "task_instance": "airflow-ti-1"}),
    )
    .await;
    // The two publishes have different message ids, so without a run id they are two
    // runs: the same window appended twice (121 rows each, BETWEEN is inclusive).
    s.wait_value(
        "SELECT CAST(count(*) AS VARCHAR) FROM cloudflow.events WHERE _task_instance = 'airflow-ti-1'",
        "242",
        minute,
    )
    .await;
    s.request(
        serde_json::json!({"manifest": "manifest.yaml", "load_type": "incremental",
        "tables": ["events"], "execution_date": "2024-01-01T08:00:00Z", "hours": 1,
        "task_instance": "airflow-ti-2", "run_id": "incr-2"}),
    )
    .await;
    s.wait_value(
        "SELECT CAST(count(*) AS VARCHAR) FROM cloudflow.events WHERE _task_instance = 'airflow-ti-2'",
        "61",
        minute,
    )
    .await;
    let window = s
        .duck("SELECT CAST(min(id) AS VARCHAR), CAST(max(id) AS VARCHAR) FROM cloudflow.events WHERE _task_instance = 'airflow-ti-2'")
        .unwrap();
    assert_eq!(window, vec![vec![Some("420".into()), Some("480".into())]]);

    // Backfill in 8 key-range chunks, swapped in; then again after the source's schema
    // changed (a backfill of an unchanged table is skipped).
    s.request(
        serde_json::json!({"manifest": "manifest.yaml", "load_type": "backfill",
        "tables": ["big"], "chunk_rows": 700, "run_id": "big-1"}),
    )
    .await;
    s.wait_value(
        "SELECT CAST(count(*) AS VARCHAR) FROM cloudflow.big",
        "5000",
        minute,
    )
    .await;
    let chunks = s
        .duck("SELECT CAST(count(DISTINCT chunk) AS VARCHAR) FROM _pgp.load_ledger WHERE run_id = 'big-1'")
        .unwrap();
    assert_eq!(chunks[0][0].as_deref(), Some("8"), "eight chunks loaded");
    s.db.exec(
        "DELETE FROM big WHERE id % 10 = 0; UPDATE big SET payload = 'changed' WHERE id < 100;
         ALTER TABLE big ADD COLUMN note text DEFAULT E'added\\tcolumn';",
    )
    .await;
    s.request(
        serde_json::json!({"manifest": "manifest.yaml", "load_type": "backfill",
        "tables": ["big"], "chunk_rows": 1000, "run_id": "big-2"}),
    )
    .await;
    s.wait_value(
        "SELECT CAST(count(*) AS VARCHAR) FROM cloudflow.big WHERE payload = 'changed'",
        "90",
        minute,
    )
    .await;
    let duck = s
        .duck("SELECT CAST(id AS VARCHAR), payload, CAST(amount AS VARCHAR), note FROM cloudflow.big ORDER BY CAST(id AS BIGINT)")
        .unwrap();
    assert_eq!(
        duck,
        s.pg("SELECT id::text, payload, amount::text, note FROM big ORDER BY big.id")
            .await
    );

    // Nothing left half-done: no load or swap tables, every run published, one row per
    // run.
    let stages = s
        .duck("SELECT CAST(count(*) AS VARCHAR) FROM information_schema.tables WHERE table_name LIKE '%_PGP_%'")
        .unwrap();
    assert_eq!(stages[0][0].as_deref(), Some("0"));
    let runs = s
        .duck("SELECT CAST(count(*) AS VARCHAR), CAST(count(DISTINCT target || run_id) AS VARCHAR), CAST(count(*) FILTER (WHERE state = 'published') AS VARCHAR) FROM _pgp.runs")
        .unwrap();
    assert_eq!(runs[0][0], runs[0][1]);
    assert_eq!(runs[0][0], runs[0][2], "every run published");

    // A poison chunk task is acknowledged with its reason, not redelivered forever;
    // a request for an unknown table likewise.
    let before = s.extractor.count("rejected permanently");
    s.admin
        .publish(
            &format!("{}-extract", s.name),
            b"{not json",
            &BTreeMap::new(),
        )
        .await;
    s.request(
        serde_json::json!({"manifest": "manifest.yaml", "load_type": "scd", "tables": ["nope"]}),
    )
    .await;
    s.extractor
        .wait_for("invalid chunk task", Duration::from_secs(30));
    s.planner
        .wait_for("no table `nope`", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        s.extractor.count("rejected permanently"),
        before + 1,
        "{}",
        s.extractor.output()
    );
    assert_eq!(
        s.planner.count("no table `nope`"),
        2,
        "two publishes, two rejections, no retries"
    );

    // Logs are JSON lines with a severity; the password never appears.
    for p in [&s.planner, &s.extractor] {
        let out = p.output();
        assert!(
            !out.contains(pgp_e2e::PASSWORD),
            "{} logged the password",
            p.name
        );
        let first = out
            .lines()
            .find(|l| l.starts_with('{'))
            .expect("a JSON log line");
        let v: serde_json::Value = serde_json::from_str(first).unwrap();
        assert!(v.get("severity").is_some(), "{first}");
    }
    let _ = (&s.env, s.extractor_port, &s.more_extractors, &s.feeder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_extractor_killed_mid_stream_is_retried_to_completion() {
    let setup = "CREATE TABLE wide (id bigint PRIMARY KEY, payload text);
        INSERT INTO wide SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 300000) g;";
    let tables = "  wide:
    import_db: TEST_DB
    export_schema: 'cloudkill'
    export_table: 'wide'
    export_table_primary_key: id
    import_query: SELECT id, payload FROM wide
";
    let mut s = Stack::new("cloudkill", setup, tables).await;
    s.request(
        serde_json::json!({"manifest": "manifest.yaml", "load_type": "backfill",
        "run_id": "kill-1", "chunk_rows": 1000000}),
    )
    .await;
    s.extractor.wait_for("extracting", Duration::from_secs(60));
    s.extractor.kill();
    let finalized = s.admin.list("cloudkill/").await;
    assert!(
        finalized.is_empty(),
        "a killed upload finalized {finalized:?}"
    );
    // The same instance comes back (Cloud Run starts a new one); Pub/Sub redelivers.
    s.extractor = start_service("extractor", s.extractor_port, &s.env);
    s.wait_value(
        "SELECT CAST(count(*) AS VARCHAR) FROM cloudkill.wide",
        "300000",
        Duration::from_secs(180),
    )
    .await;
    s.extractor.wait_for("extracted", Duration::from_secs(5));
    let sums = s
        .duck("SELECT CAST(sum(id) AS VARCHAR), CAST(count(DISTINCT payload) AS VARCHAR) FROM cloudkill.wide")
        .unwrap();
    assert_eq!(
        sums,
        vec![vec![Some("45000150000".into()), Some("300000".into())]]
    );
}

/// The GCS store passes the same storage conformance suite as local files, against the
/// GCS emulator (streamed resumable uploads, finalize by rewrite, reads, listing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_store_passes_the_storage_conformance_suite() {
    let emu = tokio::task::spawn_blocking(Emulators::get).await.unwrap();
    let store = pgp::storage::GcsStore::connect(BUCKET, Some(&emu.gcs_url()))
        .await
        .unwrap();
    pgp::storage::conformance::run(&store).await;
}

/// The Snowflake emulator set up for the services: database `db` created, the services'
/// extra environment (the stage is the GCS emulator's data folder), and a client maker.
async fn fakesnow_warehouse(
    db: &str,
) -> (
    String,
    BTreeMap<String, String>,
    impl Fn() -> pgp::warehouse::snowflake::client::Client + Clone,
) {
    use pgp::warehouse::snowflake::client::Client;
    use pgp::warehouse::snowflake::config::SnowflakeConfig;
    let fs = tokio::task::spawn_blocking(FakeSnow::get).await.unwrap();
    let emu = tokio::task::spawn_blocking(Emulators::get).await.unwrap();
    let url = fs.url(db);
    let sf_env: BTreeMap<String, String> = [
        (
            "PGP_SNOWFLAKE_PASSWORD",
            "unused-by-the-emulator".to_string(),
        ),
        (
            "PGP_SNOWFLAKE_STAGE_URL",
            format!(
                "file://{}/",
                emu.gcs_dir.join(".cloudstorage").join(BUCKET).display()
            ),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let client = {
        let (url, sf_env) = (url.clone(), sf_env.clone());
        move || {
            let cfg = SnowflakeConfig::from_url(&url, &sf_env, &format!("gs://{BUCKET}")).unwrap();
            Client::new(cfg).unwrap()
        }
    };
    client()
        .query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
        .await
        .unwrap();
    (url, sf_env, client)
}

/// The services with the Snowflake backend (fakesnow; the stage is the GCS emulator's
/// data folder, and the emulator fallbacks of `tests/tests/snowflake.rs` apply): a
/// 4-chunk backfill and an SCD run, every request and finalize event delivered at
/// least twice and out of order, land once and equal to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_services_load_into_snowflake() {
    let (url, sf_env, client) = fakesnow_warehouse("SFSVC").await;
    let s = Stack::with_warehouse(
        "sfsvc",
        SETUP,
        &tables("sfsvc"),
        Some((url.clone(), sf_env.clone())),
        ONE_EACH,
    )
    .await;
    let query = |sql: String| {
        let mut c = client();
        async move {
            c.query(&sql)
                .await
                .map(|r| r.rows)
                .map_err(|e| e.to_string())
        }
    };
    let wait = |sql: &'static str, want: &'static str| {
        let query = &query;
        let s = &s;
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut last = String::new();
            while Instant::now() < deadline {
                match query(sql.to_string()).await {
                    Ok(rows) if rows.first().and_then(|r| r[0].as_deref()) == Some(want) => return,
                    Ok(rows) => last = format!("{rows:?}"),
                    Err(e) => last = e,
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            panic!(
                "{sql}: wanted {want}, last {last}\n--- planner\n{}\n--- extractor\n{}",
                s.planner.output(),
                s.extractor.output()
            );
        }
    };

    s.request(
        serde_json::json!({"manifest": "manifest.yaml", "load_type": "backfill",
        "tables": ["big"], "chunk_rows": 1300, "run_id": "sf-big-1"}),
    )
    .await;
    wait("SELECT COUNT(*) FROM SFSVC.SFSVC.BIG", "5000").await;
    let sf = query(
        "SELECT \"ID\"::TEXT, \"PAYLOAD\", \"AMOUNT\"::TEXT FROM SFSVC.SFSVC.BIG ORDER BY \"ID\""
            .into(),
    )
    .await
    .unwrap();
    let pg = s
        .pg("SELECT id::text, payload, amount::text FROM big ORDER BY big.id")
        .await;
    assert_eq!(sf, pg);
    let loads = query(
        "SELECT COUNT(DISTINCT CHUNK) FROM SFSVC.\"_PGP\".LOAD_LEDGER WHERE RUN_ID = 'sf-big-1'"
            .into(),
    )
    .await
    .unwrap();
    assert_eq!(loads[0][0].as_deref(), Some("4"), "four chunks: {loads:?}");
    // Readers see the swap first; the loader records it right after.
    wait(
        "SELECT STATE FROM SFSVC.\"_PGP\".RUNS WHERE RUN_ID = 'sf-big-1'",
        "published",
    )
    .await;
    let runs = query(
        "SELECT MODE, STATE, ROWS::TEXT FROM SFSVC.\"_PGP\".RUNS WHERE RUN_ID = 'sf-big-1'".into(),
    )
    .await
    .unwrap();
    assert_eq!(
        runs,
        vec![vec![
            Some("swap".to_string()),
            Some("published".to_string()),
            Some("5000".to_string())
        ]]
    );

    // fakesnow loads a quoted empty field as NULL, which the loader's profile check
    // refuses (snowflake::the_emulators_empty_string_gap_is_refused_by_the_profile_check);
    // the DuckDB runs above carry the empty string.
    s.db.exec("UPDATE items SET txt = 'was empty' WHERE txt = ''")
        .await;
    s.request(
        serde_json::json!({"manifest": "manifest.yaml", "load_type": "scd",
        "tables": ["items"], "run_id": "sf-items-1"}),
    )
    .await;
    wait("SELECT COUNT(*) FROM SFSVC.SFSVC.ITEMS", "1000").await;
    let sf = query(
        "SELECT \"ID\"::TEXT, \"TXT\", \"NUM\"::TEXT, DATE_PART(EPOCH_MICROSECOND, \"TS\")::TEXT \
         FROM SFSVC.SFSVC.ITEMS ORDER BY \"ID\""
            .into(),
    )
    .await
    .unwrap();
    let pg = s.pg(ITEMS_PG).await;
    assert_eq!(sf.len(), pg.len());
    for (sf, pg) in sf.iter().zip(&pg) {
        // fakesnow reads a NULL timestamp as epoch 0 in DATE_PART: the emulator
        // cannot prove that one, the DuckDB runs above do.
        let fakesnow_gap = pg[3].is_none();
        if !fakesnow_gap {
            assert_eq!(sf, pg);
        } else {
            assert_eq!(sf[0], pg[0]);
        }
    }

    // `pgp runs` reads the same records the services keep: gs:// and Snowflake.
    let out = std::process::Command::new(service_binary("pgp"))
        .args(["runs", "--format", "json"])
        .envs(&s.env)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains(pgp_e2e::PASSWORD));
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let big = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == "sf-big-1")
        .unwrap_or_else(|| panic!("{runs}"));
    assert_eq!(big["state"], "published", "{big}");
    assert_eq!(big["rows"], 5000, "{big}");
    assert_eq!(
        (
            &big["chunks_planned"],
            &big["chunks_extracted"],
            &big["chunks_loaded"]
        ),
        (&4.into(), &4.into(), &4.into()),
        "{big}"
    );
    assert!(big["loads"].as_u64().unwrap() >= 4, "{big}");
}

/// Concurrency and faults across processes, on the Snowflake emulator (which serves
/// several sessions at once): three loaders receive every finalize event at the same
/// moment (and one of them also through Pub/Sub), two extractors receive every chunk
/// task, loaders are killed and restarted while they work, and the finalize event of
/// one chunk is lost so that the backfill stalls; requested again under a new run id,
/// the stalled run is resumed (only its missing chunk is extracted again) and
/// published. The target must equal the source, each row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_loaders_and_a_stalled_backfill_land_every_row_once() {
    let (url, sf_env, client) = fakesnow_warehouse("SFRACE").await;
    let setup = "CREATE TABLE big (id bigint PRIMARY KEY, payload text, amount numeric(12,2));
        INSERT INTO big SELECT g, repeat(md5(g::text), 3), g * 1.25 FROM generate_series(1, 5000) g;";
    let tables = "  big:
    import_db: TEST_DB
    export_schema: 'sfrace'
    export_table: 'big'
    export_table_primary_key: id
    import_query: SELECT * FROM big
";
    let mut s = Stack::with_warehouse(
        "sfrace",
        setup,
        tables,
        Some((url.clone(), sf_env.clone())),
        Instances {
            extractors: 2,
            loaders: 3,
        },
    )
    .await;
    let query = |sql: &str| {
        let mut c = client();
        let sql = sql.to_string();
        async move {
            c.query(&sql)
                .await
                .map(|r| r.rows)
                .map_err(|e| e.to_string())
        }
    };
    // Chunk 2's finalize event of the first run never arrives.
    s.feeder.lose.lock().unwrap().push("/stall_1/00002.".into());
    s.request(
        serde_json::json!({"manifest": "manifest.yaml", "load_type": "backfill",
        "tables": ["big"], "chunk_rows": 700, "run_id": "stall-1"}),
    )
    .await;

    // Kill loaders while they work; the platform restarts them on the same port.
    let mut rng = 0x5eed_u64;
    let mut next = || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        rng >> 33
    };
    let seven = "SELECT COUNT(DISTINCT CHUNK)::TEXT FROM SFRACE.\"_PGP\".LOAD_LEDGER WHERE RUN_ID = 'stall-1'";
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut kills = 0;
    loop {
        let loaded = query(seven)
            .await
            .ok()
            .and_then(|r| r.first().and_then(|r| r[0].clone()));
        if loaded.as_deref() == Some("7") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first run did not load its 7 chunks: {loaded:?}"
        );
        if kills < 4 {
            let victim = 1 + (next() as usize % 2);
            tokio::time::sleep(Duration::from_millis(200 + next() % 1500)).await;
            let port = s.loaders[victim].1;
            s.loaders[victim].0.kill();
            kills += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
            s.loaders[victim].0 = start_service("loader", port, &s.env);
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    // Stalled: chunk 2 is extracted but never loaded, nothing published.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let state = query("SELECT STATE FROM SFRACE.\"_PGP\".RUNS WHERE RUN_ID = 'stall-1'")
        .await
        .unwrap();
    assert_eq!(state, vec![vec![Some("planned".to_string())]]);
    assert!(
        query("SELECT COUNT(*) FROM SFRACE.SFRACE.BIG")
            .await
            .is_err(),
        "no target yet"
    );

    // Requested again under a new run id: the stalled run is resumed.
    s.feeder.lose.lock().unwrap().clear();
    s.request(
        serde_json::json!({"manifest": "manifest.yaml", "load_type": "backfill",
        "tables": ["big"], "chunk_rows": 700, "run_id": "stall-2"}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let n = query("SELECT COUNT(*) FROM SFRACE.SFRACE.BIG").await;
        if matches!(&n, Ok(r) if r.first().and_then(|r| r[0].as_deref()) == Some("5000")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not published: {n:?}\n--- planner\n{}",
            s.planner.output()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.planner
        .wait_for("resuming an unfinished run", Duration::from_secs(5));
    let sf = query(
        "SELECT \"ID\"::TEXT, \"PAYLOAD\", \"AMOUNT\"::TEXT FROM SFRACE.SFRACE.BIG ORDER BY \"ID\"",
    )
    .await
    .unwrap();
    let pg = s
        .pg("SELECT id::text, payload, amount::text FROM big ORDER BY big.id")
        .await;
    assert_eq!(sf, pg, "the target equals the source, each row once");
    // Readers see the swap first; the loader records it right after.
    let deadline = Instant::now() + Duration::from_secs(60);
    let runs = loop {
        let runs = query("SELECT RUN_ID, STATE FROM SFRACE.\"_PGP\".RUNS ORDER BY RUN_ID")
            .await
            .unwrap();
        if runs.iter().all(|r| r[1].as_deref() != Some("claimed")) || Instant::now() > deadline {
            break runs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        runs,
        vec![vec![Some("stall-1".into()), Some("published".into())]],
        "the second request resumed the first run instead of starting its own\n{:?}\n--- fakesnow\n{}\n--- planner\n{}\n--- loaders\n{}",
        query("SELECT * FROM SFRACE.\"_PGP\".RUNS").await,
        FakeSnow::get().output(),
        s.planner.output(),
        s.loaders
            .iter()
            .map(|(p, _)| p.output())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    let attempts = query(
        "SELECT COUNT(*)::TEXT, COUNT(DISTINCT CHUNK)::TEXT FROM SFRACE.\"_PGP\".LOAD_LEDGER WHERE RUN_ID = 'stall-1'",
    )
    .await
    .unwrap();
    println!("loads committed / chunks: {attempts:?} (more loads than chunks: concurrent loaders loaded one object twice, and one copy was published); {kills} loader kills");
    assert!(!pgp_e2e::PASSWORD.is_empty());
}

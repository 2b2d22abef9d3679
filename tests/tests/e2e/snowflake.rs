//! The Snowflake backend against fakesnow (the emulator of Snowflake's connector
//! protocol, DuckDB inside): the warehouse conformance suite, and `pgp tap` end to end
//! with `PGP_STORAGE_URL=gs://…` (the GCS emulator) and `PGP_WAREHOUSE_URL=snowflake://…`.
//!
//! fakesnow has no COPY transformations and no `ALTER TABLE … SWAP WITH`, so these runs
//! use the documented fallbacks (`copy=staged`: COPY into a text scratch table, then
//! INSERT … SELECT with the same casts; `swap=rename`); the production statements are
//! unit-tested as text in `shared/src/warehouse/snowflake/mod.rs`. It cannot read
//! `gcs://`, so the stage URL is the GCS emulator's data folder (`file://`), where the
//! objects the extractor uploaded lie raw.
//!
//! fakesnow accepts any login, so key-pair authentication, session renewal, polling of
//! long queries and error pass-through are tested against Snowflake's documented
//! connector wire format with a local HTTP server (`the_client_speaks_…` below).

use pgp::warehouse::snowflake::client::Client;
use pgp::warehouse::snowflake::config::SnowflakeConfig;
use pgp::warehouse::Snowflake;
use pgp_e2e::cloud::*;
use std::collections::BTreeMap;
use std::sync::Arc;

fn env(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.clone()))
        .collect()
}

/// `pgp tap MANIFEST ARGS…` with exactly `env`; panics with its output unless it
/// succeeds, and when the output shows the source password.
async fn tap(manifest: &std::path::Path, env: &BTreeMap<String, String>, args: &[&str]) {
    let (ok, text) = tap_output(manifest, env, args).await;
    assert!(ok, "pgp tap {args:?}: {text}");
}

/// `pgp tap MANIFEST ARGS…` with exactly `env`: whether it succeeded, and its output
/// (panics when the output shows the source password).
async fn tap_output(
    manifest: &std::path::Path,
    env: &BTreeMap<String, String>,
    args: &[&str],
) -> (bool, String) {
    let mut all = vec!["tap".to_string(), manifest.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.push("--keep-objects".into());
    let (out, text) = pgp_output(all, env).await;
    (out.status.success(), text)
}

/// `pgp verify MANIFEST --format json` with exactly `env`: its exit code, its JSON
/// and all its output (panics when the output shows the source password).
async fn verify_output(
    manifest: &std::path::Path,
    env: &BTreeMap<String, String>,
) -> (Option<i32>, serde_json::Value, String) {
    let args = [
        "verify",
        &manifest.display().to_string(),
        "--format",
        "json",
    ]
    .map(String::from);
    let (out, text) = pgp_output(args.to_vec(), env).await;
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), json, text)
}

/// `pgp ARGS…` with exactly `env`: its output, and stdout and stderr together (panics
/// when they show the source password).
async fn pgp_output(
    args: Vec<String>,
    env: &BTreeMap<String, String>,
) -> (std::process::Output, String) {
    let mut cmd = std::process::Command::new(service_binary("pgp"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(pgp_e2e::PASSWORD), "password in output");
    (out, text)
}

/// The environment of `pgp tap` staging through the GCS emulator into fakesnow at
/// `url` (which reads the staged objects from the emulator's data folder).
fn tap_env(url: &str, emu: &Emulators) -> BTreeMap<String, String> {
    let stage_dir = emu.gcs_dir.join(".cloudstorage").join(BUCKET);
    env(&[
        ("PGP_SNOWFLAKE_PASSWORD", "unused-by-the-emulator".into()),
        (
            "PGP_SNOWFLAKE_STAGE_URL",
            format!("file://{}/", stage_dir.display()),
        ),
        ("PGP_STORAGE_URL", format!("gs://{BUCKET}")),
        ("PGP_GCS_ENDPOINT", emu.gcs_url()),
        ("PGP_WAREHOUSE_URL", url.to_string()),
        ("PGP_LOG", "warn".into()),
    ])
}

async fn create_database(url: &str, env: &BTreeMap<String, String>, db: &str) {
    let cfg = SnowflakeConfig::from_url(url, env, "gs://unused").unwrap();
    let mut c = Client::new(cfg).unwrap();
    c.query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snowflake_passes_the_warehouse_conformance_suite_on_fakesnow() {
    let fs = tokio::task::spawn_blocking(FakeSnow::get).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store: Arc<dyn pgp::storage::ObjectStore> =
        Arc::new(pgp::storage::LocalStore::new(store_dir.clone()).unwrap());
    let url = fs.url("CONFORMANCE");
    let e = env(&[
        ("PGP_SNOWFLAKE_PASSWORD", "unused-by-the-emulator".into()),
        (
            "PGP_SNOWFLAKE_STAGE_URL",
            format!("file://{}/", store_dir.display()),
        ),
    ]);
    create_database(&url, &e, "CONFORMANCE").await;
    let cfg = SnowflakeConfig::from_url(&url, &e, &store.url()).unwrap();
    let wh = Snowflake::new(cfg).unwrap();
    pgp::warehouse::conformance::run(&wh, store.as_ref()).await;
}

/// An append job's statements (`append_job_sql`: what Snowflake is to run as one
/// asynchronous request once a loader has claimed a run's publish) run one by one in
/// one session on fakesnow, which takes one statement per request: a job whose claim
/// was taken over changes nothing; the job holding the claim inserts exactly its loads
/// and records the run published; run again, it changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_jobs_statements_publish_only_under_their_claim_on_fakesnow() {
    use pgp::ident::{Ident, TableName};
    use pgp::types::ColumnType;
    use pgp::warehouse::{
        AppendJob, ChosenLoad, RunRecord, RunState, RunUpdate, TableSchema, Warehouse,
    };
    let fs = tokio::task::spawn_blocking(FakeSnow::get).await.unwrap();
    let url = fs.url("APPENDJOB");
    let dir = tempfile::tempdir().unwrap();
    let stage = format!("file://{}/", dir.path().display());
    let e = env(&[
        ("PGP_SNOWFLAKE_PASSWORD", "unused-by-the-emulator".into()),
        ("PGP_SNOWFLAKE_STAGE_URL", stage.clone()),
    ]);
    create_database(&url, &e, "APPENDJOB").await;
    let cfg = SnowflakeConfig::from_url(&url, &e, &stage).unwrap();
    let wh = Snowflake::new(cfg.clone()).unwrap();
    let t = |n: &str| {
        TableName::new(
            Ident::parse("s", "jobs").unwrap(),
            Ident::parse("t", n).unwrap(),
        )
    };
    let (target, load) = (t("users"), t("users_pgp_load_r1"));
    let schema = TableSchema {
        columns: vec![
            pgp::warehouse::conformance::col("id", ColumnType::BigInt),
            pgp::warehouse::conformance::col("v", ColumnType::Text),
        ],
        task_instance: false,
    };
    wh.create_table(&target, &schema, false).await.unwrap();
    wh.create_table(&load, &schema, true).await.unwrap();
    wh.prepare_lock(&target).await.unwrap();
    // Loads a (2 rows) and b (1 row) are the run's chosen ones; c (an attempt not
    // chosen) must not be inserted.
    wh.query(
        "INSERT INTO \"APPENDJOB\".\"JOBS\".\"USERS_PGP_LOAD_R1\" (\"ID\", \"V\", \"_UPLOADED_AT\", \"_PGP_LOAD\", \"_PGP_END\") \
         SELECT column1, column2, '2024-01-01 00:00:00 +0000'::TIMESTAMP_TZ, column3, 1 FROM VALUES \
         (1, 'x', 'a'), (2, 'y', 'a'), (3, 'z', 'b'), (3, 'z', 'c')",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fs.output()));
    let mut txn = wh.begin().await.unwrap();
    txn.insert_run(&RunRecord::planned(&target, "r1", &load, "append", 2, "fp"))
        .await
        .unwrap();
    txn.update_run(&target, "r1", &RunUpdate::Claim("c1".into()))
        .await
        .unwrap();
    txn.commit().await.unwrap();
    let marker = wh.marker(&target).await.unwrap();
    let job = |claim: &str| AppendJob {
        target: target.clone(),
        load_table: load.clone(),
        schema: schema.clone(),
        run_id: "r1".into(),
        claim: claim.into(),
        loads: [("a", 2), ("b", 1)]
            .map(|(id, rows)| ChosenLoad {
                load_id: id.into(),
                rows,
            })
            .to_vec(),
        marker: marker.clone(),
    };
    let run_job = |claim: &str| {
        let (wh, sqls) = (
            &wh,
            pgp::warehouse::snowflake::append_job_sql(&cfg, &job(claim)),
        );
        async move {
            // fakesnow does not implement TRANSACTION_ABORT_ON_ERROR (it matters only
            // when a statement fails, which this test does not make happen).
            let abort = pgp::warehouse::snowflake::ABORT_ON_ERROR;
            for s in sqls.iter().filter(|s| s.as_str() != abort) {
                wh.query(s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
            }
        }
    };
    let state = || async {
        let mut txn = wh.begin().await.unwrap();
        let r = txn.run(&target, "r1").await.unwrap().unwrap();
        txn.rollback().await.unwrap();
        (r.state, r.rows)
    };

    run_job("c0").await;
    assert_eq!(wh.row_count(&target).await.unwrap(), 0);
    assert_eq!(state().await, (RunState::Claimed, None));

    // The target swapped since the claim (another marker): nothing changes.
    let stale = pgp::warehouse::snowflake::append_job_sql(
        &cfg,
        &AppendJob {
            marker: Some("pgp run before-the-swap".into()),
            ..job("c1")
        },
    );
    let abort = pgp::warehouse::snowflake::ABORT_ON_ERROR;
    for s in stale.iter().filter(|s| s.as_str() != abort) {
        wh.query(s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    assert_eq!(wh.row_count(&target).await.unwrap(), 0);
    assert_eq!(state().await, (RunState::Claimed, None));

    run_job("c1").await;
    assert_eq!(wh.row_count(&target).await.unwrap(), 3);
    assert_eq!(state().await, (RunState::Published, Some(3)));
    let ids = wh
        .query("SELECT LISTAGG(\"ID\", ',') WITHIN GROUP (ORDER BY \"ID\") FROM \"APPENDJOB\".\"JOBS\".\"USERS\"")
        .await
        .unwrap();
    assert_eq!(
        format!("{:?}", ids.rows),
        format!("{:?}", vec![vec![Some("1,2,3".to_string())]])
    );

    run_job("c1").await;
    assert_eq!(wh.row_count(&target).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgp_tap_loads_through_gcs_into_snowflake() {
    let fs = tokio::task::spawn_blocking(FakeSnow::get).await.unwrap();
    let emu = tokio::task::spawn_blocking(Emulators::get).await.unwrap();
    let db = pgp_e2e::Pg::get().fresh_db("sftap").await;
    db.exec(
        r#"CREATE TABLE notes (id bigint PRIMARY KEY, body text, amount numeric(12,3), at timestamptz, tags text[], props jsonb);
           INSERT INTO notes VALUES
             (1, NULL, NULL, NULL, NULL, NULL),
             (2, E'tab\there, newline\nand "quotes" \\N \\', 1.5, '2024-01-01 12:00:00+02', ARRAY['a', NULL], '{"k": [1, null]}'),
             (3, 'ünï©ødé 🐘', -0.001, '1999-12-31 23:59:59.5+00', '{}', '[]');
           INSERT INTO notes SELECT g, 'row ' || g, g / 8.0, timestamptz '2024-01-01' + g * interval '1 minute', ARRAY['t' || g], jsonb_build_object('g', g)
             FROM generate_series(4, 2000) g;"#,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = pgp_e2e::write_manifest(
        dir.path(),
        "  notes:
    import_db: TEST_DB
    export_schema: 'sftap'
    export_table: 'notes'
    export_table_primary_key: id
    import_query: SELECT * FROM notes
",
    );
    let url = fs.url("TAPDB");
    let mut e = tap_env(&url, emu);
    e.extend(db.env());
    create_database(&url, &e, "TAPDB").await;
    tap(
        &manifest,
        &e,
        &["--load-type", "backfill", "--chunk-rows", "700"],
    )
    .await;

    let cfg = SnowflakeConfig::from_url(&url, &e, &format!("gs://{BUCKET}")).unwrap();
    let mut c = Client::new(cfg).unwrap();
    let sf = c
        .query(
            "SELECT ID::TEXT, BODY, BODY IS NULL, AMOUNT::TEXT, DATE_PART(EPOCH_MICROSECOND, \"AT\")::TEXT, \"AT\" IS NULL, \
             TO_JSON(TAGS), TO_JSON(PROPS) FROM TAPDB.SFTAP.NOTES ORDER BY ID",
        )
        .await
        .unwrap();
    let pg = db
        .client
        .query(
            "SELECT id::text, body, (body IS NULL)::text, amount::text, (extract(epoch FROM at) * 1000000)::bigint::text, (at IS NULL)::text, \
             to_json(tags)::text, props::text FROM notes ORDER BY notes.id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(sf.rows.len(), 2000);
    assert_eq!(pg.len(), 2000);
    for (s, p) in sf.rows.iter().zip(&pg) {
        let id: String = p.get(0);
        assert_eq!(s[0].as_deref(), Some(id.as_str()));
        assert_eq!(s[1].as_deref(), p.get::<_, Option<&str>>(1), "body of {id}");
        assert_eq!(
            s[2].as_deref(),
            Some(p.get::<_, &str>(2)),
            "body null of {id}"
        );
        let amount: Option<String> = p.get(3);
        let sf_amount = s[3]
            .as_deref()
            .map(|v| v.trim_end_matches('0').trim_end_matches('.').to_string());
        let pg_amount = amount.map(|v| v.trim_end_matches('0').trim_end_matches('.').to_string());
        assert_eq!(sf_amount, pg_amount, "amount of {id}");
        if p.get::<_, &str>(5) == "false" {
            assert_eq!(
                s[4].as_deref(),
                p.get::<_, Option<&str>>(4),
                "timestamp of {id}"
            );
        }
        assert_eq!(
            s[5].as_deref(),
            Some(p.get::<_, &str>(5)),
            "timestamp null of {id}"
        );
        let json =
            |v: Option<&str>| v.map(|t| serde_json::from_str::<serde_json::Value>(t).unwrap());
        assert_eq!(json(s[6].as_deref()), json(p.get(6)), "tags of {id}");
        assert_eq!(json(s[7].as_deref()), json(p.get(7)), "props of {id}");
    }
    // every chunk in the load ledger, one publish
    let loads = c
        .query("SELECT COUNT(DISTINCT CHUNK) FROM TAPDB.\"_PGP\".LOAD_LEDGER")
        .await
        .unwrap();
    assert_eq!(loads.scalar(), Some("3"));
    let runs = c
        .query("SELECT STATE, ROWS FROM TAPDB.\"_PGP\".RUNS")
        .await
        .unwrap();
    assert_eq!(
        runs.rows,
        vec![vec![
            Some("published".to_string()),
            Some("2000".to_string())
        ]]
    );

    // A source column added: the SCD run sees the changed schema and re-syncs through
    // a swap table and the swap (rename fallback here) onto the existing target.
    db.exec("ALTER TABLE notes ADD COLUMN extra int DEFAULT 7")
        .await;
    tap(&manifest, &e, &["--load-type", "scd"]).await;
    let q = |sql: &'static str| {
        let cfg = SnowflakeConfig::from_url(&url, &e, &format!("gs://{BUCKET}")).unwrap();
        async move {
            let mut c = Client::new(cfg).unwrap();
            let r = c.query(sql).await.unwrap();
            r.rows
                .iter()
                .map(|row| {
                    row.iter()
                        .map(|v| v.clone().unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join("|")
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let counts =
        "SELECT COUNT(*), COUNT(\"EXTRA\"), MIN(\"EXTRA\"), MAX(\"EXTRA\"), COUNT(DISTINCT \"_UPLOADED_AT\") FROM TAPDB.SFTAP.NOTES";
    assert_eq!(q(counts).await, "2000|2000|7|7|1");
    let tables = "SELECT TABLE_NAME FROM TAPDB.INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = 'SFTAP' ORDER BY 1";
    assert_eq!(q(tables).await, "NOTES", "no load, swap or old table left");

    // Same schema: the next SCD run appends a second snapshot.
    tap(&manifest, &e, &["--load-type", "scd"]).await;
    assert_eq!(q(counts).await, "4000|4000|7|7|2");
    assert_eq!(q(tables).await, "NOTES");

    // `pgp verify` with Snowflake's SQL: the latest snapshot equals the source...
    let (code, json, text) = verify_output(&manifest, &e).await;
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(json[0]["target_rows"], 2000, "{json}");
    // ...until the source changes behind it: a row deleted, a text changed to another
    // of the same length (only the hash of the text sees it), a digit changed.
    db.exec(
        "DELETE FROM notes WHERE id = 1500;
         UPDATE notes SET body = 'row 7x7' WHERE id = 777;
         UPDATE notes SET amount = amount + 0.001 WHERE id = 3;",
    )
    .await;
    let (code, json, text) = verify_output(&manifest, &e).await;
    assert_eq!(code, Some(1), "{text}");
    let ranges = json[0]["ranges"]
        .as_array()
        .unwrap_or_else(|| panic!("{json}"));
    let keys = |field: &str| -> Vec<String> {
        ranges
            .iter()
            .flat_map(|r| r[field].as_array().unwrap().clone())
            .map(|k| match k {
                serde_json::Value::String(s) => s,
                o => format!("{}={}", o["key"].as_str().unwrap(), o["columns"]),
            })
            .collect()
    };
    assert_eq!(keys("extra"), vec!["1500"], "{json}");
    assert!(keys("missing").is_empty(), "{json}");
    let mut changed = keys("changed");
    changed.sort();
    assert_eq!(changed, vec!["3=[\"amount\"]", "777=[\"body\"]"], "{json}");
    let cfg = SnowflakeConfig::from_url(&url, &e, &format!("gs://{BUCKET}")).unwrap();
    let mut c = Client::new(cfg).unwrap();
    for r in ranges {
        let sql = format!(
            "SELECT COUNT(*) FROM ({})",
            r["target_sql"].as_str().unwrap()
        );
        let n = c.query(&sql).await.unwrap();
        assert_eq!(
            n.scalar().map(str::to_string),
            Some(r["target_rows"].to_string()),
            "{sql}"
        );
    }
}

/// What the local Snowflake endpoint saw, in order.
#[derive(Clone, Default)]
struct Wire {
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    public_pem: String,
    fingerprint: String,
}

/// A local HTTP server answering as Snowflake's connector endpoints do (no emulator
/// covers key-pair login or token renewal): login checks the JWT with the user's public
/// key; the first query gets "session expired" (390112), the retry after renewal gets
/// "in progress" (333334) and its result is fetched from `getResultUrl`; a query on a
/// missing table gets a compilation error.
fn wire_router(w: Wire) -> axum::Router {
    use axum::extract::{Json, Query, State};
    use axum::http::HeaderMap;
    use axum::routing::{get, post};
    use serde_json::{json, Value};
    fn auth(h: &HeaderMap) -> String {
        h.get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
    axum::Router::new()
        .route(
            "/session/v1/login-request",
            post(
                |State(w): State<Wire>,
                 Query(q): Query<BTreeMap<String, String>>,
                 Json(b): Json<Value>| async move {
                    let d = &b["data"];
                    let dec = jsonwebtoken::DecodingKey::from_rsa_pem(w.public_pem.as_bytes())
                        .unwrap();
                    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
                    v.set_required_spec_claims(&["iss", "sub", "exp", "iat"]);
                    let verdict = match jsonwebtoken::decode::<Value>(
                        d["TOKEN"].as_str().unwrap_or(""),
                        &dec,
                        &v,
                    ) {
                        Ok(t) => format!(
                            "login {} {} iss={} sub={} db={} wh={} role={} password={}",
                            d["AUTHENTICATOR"].as_str().unwrap_or("-"),
                            d["LOGIN_NAME"].as_str().unwrap_or("-"),
                            t.claims["iss"].as_str().unwrap_or("-").replace(&w.fingerprint, "FP"),
                            t.claims["sub"].as_str().unwrap_or("-"),
                            q.get("databaseName").map(String::as_str).unwrap_or("-"),
                            q.get("warehouse").map(String::as_str).unwrap_or("-"),
                            q.get("roleName").map(String::as_str).unwrap_or("-"),
                            d.get("PASSWORD").is_some(),
                        ),
                        Err(e) => format!("login with a bad JWT: {e}"),
                    };
                    let ok = verdict.starts_with("login SNOWFLAKE_JWT");
                    w.seen.lock().unwrap().push(verdict);
                    Json(if ok {
                        json!({"success": true, "data": {"token": "T1", "masterToken": "M1"}})
                    } else {
                        json!({"success": false, "code": "390144", "message": "JWT token is invalid.", "data": null})
                    })
                },
            ),
        )
        .route(
            "/session/token-request",
            post(
                |State(w): State<Wire>, h: HeaderMap, Json(b): Json<Value>| async move {
                    w.seen.lock().unwrap().push(format!(
                        "renew {} old={} {}",
                        auth(&h),
                        b["oldSessionToken"].as_str().unwrap_or("-"),
                        b["requestType"].as_str().unwrap_or("-")
                    ));
                    Json(json!({"success": true, "data": {"sessionToken": "T2", "validityInSecondsST": 3600}}))
                },
            ),
        )
        .route(
            "/queries/v1/query-request",
            post(
                |State(w): State<Wire>, h: HeaderMap, Json(b): Json<Value>| async move {
                    let sql = b["sqlText"].as_str().unwrap_or("").to_string();
                    let token = auth(&h);
                    // An asynchronous multi-statement submission says so, and how many.
                    let tag = match b["asyncExec"].as_bool() {
                        Some(true) => format!(
                            "async count={} ",
                            b["parameters"]["MULTI_STATEMENT_COUNT"]
                        ),
                        _ => String::new(),
                    };
                    w.seen.lock().unwrap().push(format!("query {tag}{token} {sql}"));
                    Json(if token.contains("T1") {
                        json!({"success": false, "code": "390112", "message": "Your session has expired. Please login again.", "data": null})
                    } else if sql.contains("MISSING") {
                        json!({"success": false, "code": "002003", "message": "SQL compilation error:\nObject 'MISSING' does not exist or not authorized.", "data": {"sqlState": "42S02"}})
                    } else {
                        json!({"success": true, "code": "333334", "message": "Asynchronous execution in progress.",
                               "data": {"queryId": "q-1", "getResultUrl": "/queries/q-1/result"}})
                    })
                },
            ),
        )
        .route(
            "/queries/q-1/result",
            get(|State(w): State<Wire>, h: HeaderMap| async move {
                w.seen.lock().unwrap().push(format!("result {}", auth(&h)));
                Json(json!({"success": true, "data": {
                    "rowtype": [{"name": "N", "type": "fixed", "scale": 2}, {"name": "T", "type": "text"}],
                    "rowset": [["12.50", "tab\there"], [null, ""]],
                    "total": 2, "queryResultFormat": "json"}}))
            }),
        )
        .with_state(w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_speaks_snowflakes_wire_protocol_with_a_key_pair() {
    use base64::Engine;
    use sha2::Digest;
    // The key pair as Snowflake's guide makes it (openssl, encrypted PKCS#8), with a
    // modest PBKDF2 count so the debug build decrypts it quickly.
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("rsa_key.p8");
    let pub_path = dir.path().join("rsa_key.pub");
    let passphrase = "key passphrase 🔑";
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .env("PASS", passphrase)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let plain = dir.path().join("plain.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        plain.to_str().unwrap(),
    ]);
    openssl(&[
        "pkcs8",
        "-topk8",
        "-v2",
        "aes-256-cbc",
        "-v2prf",
        "hmacWithSHA256",
        "-iter",
        "1000",
        "-in",
        plain.to_str().unwrap(),
        "-out",
        key_path.to_str().unwrap(),
        "-passout",
        "env:PASS",
    ]);
    openssl(&[
        "pkey",
        "-in",
        plain.to_str().unwrap(),
        "-pubout",
        "-out",
        pub_path.to_str().unwrap(),
    ]);
    let public_pem = std::fs::read_to_string(&pub_path).unwrap();
    let der: String = public_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(der)
        .unwrap();
    let fingerprint = format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&der))
    );
    let wire = Wire {
        public_pem,
        fingerprint,
        ..Wire::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = axum::serve(listener, wire_router(wire.clone()));
    tokio::spawn(async move { server.await.unwrap() });

    let e = env(&[
        (
            "PGP_SNOWFLAKE_PRIVATE_KEY_PATH",
            key_path.display().to_string(),
        ),
        (
            "PGP_SNOWFLAKE_PRIVATE_KEY_PASSPHRASE",
            passphrase.to_string(),
        ),
        ("PGP_SNOWFLAKE_STAGE", "RAW._PGP.PGP_STAGE".to_string()),
    ]);
    let url = format!(
        "snowflake://pgp_service@myorg-acct/RAW?warehouse=LOADING&role=PGP_LOADER&host=127.0.0.1&port={port}&protocol=http"
    );
    let cfg = SnowflakeConfig::from_url(&url, &e, "gs://postgres_pipeline").unwrap();
    assert!(!format!("{cfg:?}").contains("PRIVATE KEY"), "key in Debug");
    let mut c = Client::new(cfg).unwrap();

    let rows = c.query("SELECT N, T FROM X").await.unwrap();
    assert_eq!(rows.columns, vec!["N", "T"]);
    assert_eq!(
        rows.rows,
        vec![
            vec![Some("12.50".to_string()), Some("tab\there".to_string())],
            vec![None, Some(String::new())]
        ]
    );
    let err = c
        .query("SELECT * FROM MISSING")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("002003")
            && err.contains(
                "SQL compilation error:\nObject 'MISSING' does not exist or not authorized."
            ),
        "{err}"
    );
    assert!(
        !err.contains(passphrase) && !err.contains("PRIVATE"),
        "{err}"
    );
    let seen = wire.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            "login SNOWFLAKE_JWT pgp_service iss=MYORG-ACCT.PGP_SERVICE.FP sub=MYORG-ACCT.PGP_SERVICE \
             db=RAW wh=LOADING role=PGP_LOADER password=false",
            "query Snowflake Token=\"T1\" SELECT N, T FROM X",
            "renew Snowflake Token=\"M1\" old=T1 RENEW",
            "query Snowflake Token=\"T2\" SELECT N, T FROM X",
            "result Snowflake Token=\"T2\"",
            "query Snowflake Token=\"T2\" SELECT * FROM MISSING",
        ]
    );

    // An append job goes as one asynchronous request of its statements (what
    // `publish=job` submits; Snowflake answers at once with the query's id).
    let id = c
        .submit_async(&[
            "BEGIN".into(),
            "UPDATE L SET N = N + 1".into(),
            "COMMIT".into(),
        ])
        .await
        .unwrap();
    assert_eq!(id, "q-1");
    assert_eq!(
        wire.seen.lock().unwrap().last().unwrap(),
        "query async count=3 Snowflake Token=\"T2\" BEGIN;\nUPDATE L SET N = N + 1;\nCOMMIT"
    );

    // A wrong passphrase is a clear configuration error that shows no key material.
    let bad = env(&[
        (
            "PGP_SNOWFLAKE_PRIVATE_KEY_PATH",
            key_path.display().to_string(),
        ),
        ("PGP_SNOWFLAKE_PRIVATE_KEY_PASSPHRASE", "wrong".to_string()),
        ("PGP_SNOWFLAKE_STAGE", "RAW._PGP.PGP_STAGE".to_string()),
    ]);
    let cfg = SnowflakeConfig::from_url(&url, &bad, "gs://postgres_pipeline").unwrap();
    let err = Client::new(cfg)
        .err()
        .expect("wrong passphrase refused")
        .to_string();
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(!err.contains("BEGIN") && !err.contains(passphrase), "{err}");
}

/// A second local endpoint (password login) for what the connector protocol documents
/// and no emulator serves: results split into chunks downloaded from their own URLs
/// (JSON and Arrow, gzip or not, with the answer's chunk headers), errors of each kind,
/// and what a session sees around a transaction dropped half-way. Every request is
/// logged in order; a statement containing `SLOW` is answered after two seconds.
fn chunk_router(seen: Arc<std::sync::Mutex<Vec<String>>>, base: String) -> axum::Router {
    use axum::extract::{Json, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use base64::Engine;
    use serde_json::{json, Value};
    use std::io::Write;
    type Seen = Arc<std::sync::Mutex<Vec<String>>>;
    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }
    fn arrow(ids: std::ops::Range<i64>) -> Vec<u8> {
        use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
        use arrow_schema::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Int64, true),
            Field::new("T", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids.clone().collect::<Vec<_>>())) as ArrayRef,
                Arc::new(StringArray::from(
                    ids.map(|i| Some(format!("t{i}"))).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap();
        let mut buf = Vec::new();
        let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut buf, &schema).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        buf
    }
    let chunk = |name: &'static str| {
        move |State(seen): State<Seen>, h: HeaderMap| async move {
            let key = h
                .get("x-amz-server-side-encryption-customer-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string();
            seen.lock().unwrap().push(format!("chunk {name} key={key}"));
            let body: Vec<u8> = match name {
                "json-1" => gzip(br#"["3","c"],["4",null]"#),
                "json-2" => br#"["5","e\tf"]"#.to_vec(),
                "arrow-1" => gzip(&arrow(2..4)),
                _ => arrow(4..6),
            };
            (StatusCode::OK, body).into_response()
        }
    };
    axum::Router::new()
        .route(
            "/session/v1/login-request",
            post(|State(seen): State<Seen>| async move {
                seen.lock().unwrap().push("login".into());
                Json(json!({"success": true, "data": {"token": "T", "masterToken": "M"}}))
            }),
        )
        .route(
            "/queries/v1/query-request",
            post(move |State(seen): State<Seen>, Json(b): Json<Value>| {
                let base = base.clone();
                async move {
                let sql = b["sqlText"].as_str().unwrap_or("").to_string();
                seen.lock().unwrap().push(sql.clone());
                if sql.contains("SLOW") {
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
                let v = if sql == "SELECT JSON" {
                    json!({"success": true, "data": {
                        "rowtype": [{"name": "ID"}, {"name": "T"}], "queryResultFormat": "json",
                        "rowset": [["1", "a"], ["2", ""]],
                        "chunkHeaders": {"x-amz-server-side-encryption-customer-key": "K1"},
                        "chunks": [{"url": format!("{base}/chunks/json-1"), "rowCount": 2},
                                   {"url": format!("{base}/chunks/json-2"), "rowCount": 1}]}})
                } else if sql == "SELECT ARROW" {
                    json!({"success": true, "data": {
                        "rowtype": [{"name": "ID"}, {"name": "T"}], "queryResultFormat": "arrow",
                        "rowsetBase64": base64::engine::general_purpose::STANDARD.encode(arrow(0..2)),
                        "qrmk": "K2",
                        "chunks": [{"url": format!("{base}/chunks/arrow-1"), "rowCount": 2},
                                   {"url": format!("{base}/chunks/arrow-2"), "rowCount": 2}]}})
                } else if sql.contains("BUSY") {
                    json!({"success": false, "code": "000625", "message": "Statement aborted because the number of waiters for this lock exceeds the 20 statements limit.", "data": {"sqlState": "57014"}})
                } else if sql.contains("TIMEOUT") {
                    json!({"success": false, "code": "000630", "message": "Statement reached its statement or warehouse timeout of 60 second(s) and was canceled.", "data": {"sqlState": "57014"}})
                } else if sql.contains("LOCKED_NAME") {
                    json!({"success": false, "code": "002003", "message": "Object 'LOCKED_NAME' does not exist.", "data": {"sqlState": "42S02"}})
                } else if sql.contains("DOWN") {
                    return (StatusCode::SERVICE_UNAVAILABLE, "upstream connect error").into_response();
                } else {
                    json!({"success": true, "data": {"rowtype": [{"name": "number of rows updated"}], "rowset": [["1"]]}})
                };
                Json(v).into_response()
            }}),
        )
        .route("/chunks/json-1", get(chunk("json-1")))
        .route("/chunks/json-2", get(chunk("json-2")))
        .route("/chunks/arrow-1", get(chunk("arrow-1")))
        .route("/chunks/arrow-2", get(chunk("arrow-2")))
        .with_state(seen)
}

async fn chunk_server() -> (Arc<std::sync::Mutex<Vec<String>>>, String) {
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = axum::serve(
        listener,
        chunk_router(seen.clone(), format!("http://127.0.0.1:{port}")),
    );
    tokio::spawn(async move { server.await.unwrap() });
    let url =
        format!("snowflake://pgp@acct/RAW?warehouse=WH&host=127.0.0.1&port={port}&protocol=http");
    (seen, url)
}

fn chunk_env() -> BTreeMap<String, String> {
    env(&[
        ("PGP_SNOWFLAKE_PASSWORD", "pw".to_string()),
        ("PGP_SNOWFLAKE_STAGE", "RAW._PGP.PGP_STAGE".to_string()),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reads_results_in_chunks_and_gives_errors_their_kind() {
    use pgp::error::ErrorKind;
    let (seen, url) = chunk_server().await;
    let cfg = SnowflakeConfig::from_url(&url, &chunk_env(), "gs://b").unwrap();
    let mut c = Client::new(cfg).unwrap();
    let s = |v: &str| Some(v.to_string());
    let rows = c.query("SELECT JSON").await.unwrap();
    assert_eq!(
        rows.rows,
        vec![
            vec![s("1"), s("a")],
            vec![s("2"), s("")],
            vec![s("3"), s("c")],
            vec![s("4"), None],
            vec![s("5"), s("e\tf")],
        ]
    );
    let rows = c.query("SELECT ARROW").await.unwrap();
    let ids: Vec<_> = rows.rows.iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(ids, vec!["0", "1", "2", "3", "4", "5"]);
    assert_eq!(rows.rows[5][1].as_deref(), Some("t5"));
    let log = seen.lock().unwrap().clone();
    for line in [
        "chunk json-1 key=K1",
        "chunk json-2 key=K1",
        "chunk arrow-1 key=K2",
        "chunk arrow-2 key=K2",
    ] {
        assert!(log.iter().any(|l| l == line), "{line} not in {log:?}");
    }
    let kind = |r: pgp::Result<_>| r.map(|_| ()).unwrap_err().kind();
    assert_eq!(kind(c.query("UPDATE BUSY").await), ErrorKind::Busy);
    assert_eq!(kind(c.query("SELECT TIMEOUT").await), ErrorKind::Transient);
    assert_eq!(kind(c.query("SELECT DOWN").await), ErrorKind::Transient);
    assert_eq!(
        kind(c.query("SELECT * FROM LOCKED_NAME").await),
        ErrorKind::Permanent,
        "a message that says 'lock' is not busy"
    );
    // Nothing listening: a connection refused is transient.
    let dead = SnowflakeConfig::from_url(
        "snowflake://pgp@acct/RAW?host=127.0.0.1&port=9&protocol=http",
        &chunk_env(),
        "gs://b",
    )
    .unwrap();
    assert_eq!(
        kind(Client::new(dead).unwrap().query("SELECT 1").await),
        ErrorKind::Transient
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_dropped_half_way_is_rolled_back_before_the_session_is_used_again() {
    use pgp::ident::{Ident, TableName};
    use pgp::warehouse::Warehouse;
    let (seen, url) = chunk_server().await;
    let cfg = SnowflakeConfig::from_url(&url, &chunk_env(), "gs://b").unwrap();
    let wh = Snowflake::new(cfg).unwrap();
    let t = TableName::new(
        Ident::parse("s", "sch").unwrap(),
        Ident::parse("t", "slow").unwrap(),
    );
    // A request whose client went away while its lock statement was in flight: the
    // future is dropped mid-statement.
    let mut txn = wh.begin().await.unwrap();
    let cut = tokio::time::timeout(std::time::Duration::from_millis(300), txn.lock(&t)).await;
    assert!(cut.is_err(), "the statement was still running");
    drop(txn);
    // Rolled back at once, not when someone next uses the session: until then the
    // transaction would hold the target's lock against every other loader.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !seen.lock().unwrap().iter().any(|l| l == "ROLLBACK") {
        assert!(
            std::time::Instant::now() < deadline,
            "no ROLLBACK: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The next use of the session comes after the rollback.
    wh.row_count(&t).await.unwrap();
    let log = seen.lock().unwrap().clone();
    let begin = log.iter().rposition(|l| l == "BEGIN").expect("BEGIN sent");
    let tail: Vec<&str> = log[begin..].iter().map(String::as_str).collect();
    assert_eq!(
        tail[1],
        "UPDATE \"RAW\".\"_PGP\".\"LOCK$SCH$SLOW\" SET N = N + 1"
    );
    assert_eq!(tail[2], "ROLLBACK", "{tail:?}");
    assert!(tail[3].starts_with("SELECT COUNT(*) FROM"), "{tail:?}");
}

/// A column Snowflake cannot hold exactly is refused by name when the table is planned
/// (`pgp plan` says so ahead of time, and `pgp tap` fails that table before creating or
/// loading anything), while the other tables load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numeric_scale_snowflake_cannot_hold_is_refused_by_name() {
    let fs = tokio::task::spawn_blocking(FakeSnow::get).await.unwrap();
    let db = pgp_e2e::Pg::get().fresh_db("sfrefuse").await;
    db.exec(
        "CREATE TABLE fine (id int PRIMARY KEY, n numeric(38,37));
         INSERT INTO fine VALUES (1, 0.1234567890123456789012345678901234567);
         CREATE TABLE tiny (id int PRIMARY KEY, frac numeric(38,38), ok numeric(10,2));
         INSERT INTO tiny VALUES (1, 0.12345678901234567890123456789012345678, 1.5);",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = pgp_e2e::write_manifest(
        dir.path(),
        "  fine:
    import_db: TEST_DB
    export_schema: 'sfrefuse'
    export_table: 'fine'
    export_table_primary_key: id
    import_query: SELECT * FROM fine
  tiny:
    import_db: TEST_DB
    export_schema: 'sfrefuse'
    export_table: 'tiny'
    export_table_primary_key: id
    import_query: SELECT * FROM tiny
",
    );
    let url = fs.url("REFUSEDB");
    let store = dir.path().join("objects");
    let mut e = env(&[
        ("PGP_SNOWFLAKE_PASSWORD", "unused-by-the-emulator".into()),
        (
            "PGP_SNOWFLAKE_STAGE_URL",
            format!("file://{}/", store.display()),
        ),
        ("PGP_STORAGE_URL", format!("file://{}", store.display())),
        ("PGP_WAREHOUSE_URL", url.clone()),
        ("PGP_LOG", "warn".into()),
    ]);
    e.extend(db.env());
    create_database(&url, &e, "REFUSEDB").await;
    let run = |args: Vec<String>| {
        let mut cmd = std::process::Command::new(service_binary("pgp"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&e);
        async move {
            let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        }
    };
    let m = manifest.display().to_string();
    let (code, out, err) = run(vec![
        "plan".into(),
        m.clone(),
        "--load-type".into(),
        "backfill".into(),
        "--format".into(),
        "json".into(),
    ])
    .await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    let plans: serde_json::Value = serde_json::from_str(&out).unwrap();
    let tiny = plans
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["table"] == "tiny")
        .unwrap();
    assert_eq!(tiny["action"], "error", "{tiny}");
    let reason = tiny["reason"].as_str().unwrap();
    assert!(
        reason.contains("column frac (numeric(38,38))") && reason.contains("37"),
        "{reason}"
    );
    assert!(!reason.contains("column ok"), "{reason}");
    let fine = plans
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["table"] == "fine")
        .unwrap();
    assert_eq!(fine["action"], "backfill", "numeric(38,37) fits: {fine}");

    let (code, out, err) = run(vec![
        "tap".into(),
        m,
        "--load-type".into(),
        "backfill".into(),
    ])
    .await;
    assert_eq!(code, Some(1), "one table failed: {out}\n{err}");
    assert!(out.contains("FAILED") && out.contains("frac"), "{out}");
    let cfg = SnowflakeConfig::from_url(&url, &e, "gs://unused").unwrap();
    let mut c = Client::new(cfg).unwrap();
    let n = c
        .query("SELECT N::TEXT FROM REFUSEDB.SFREFUSE.FINE")
        .await
        .unwrap();
    assert_eq!(
        n.rows,
        vec![vec![Some(
            "0.1234567890123456789012345678901234567".to_string()
        )]]
    );
    assert!(
        c.query("SELECT COUNT(*) FROM REFUSEDB.SFREFUSE.TINY")
            .await
            .is_err(),
        "nothing created for the refused table"
    );
}

/// Whether Snowflake's documented ranges hold an edge value of the type matrix
/// (`snowflake::exactness`: DATE and TIMESTAMP years 1582–9999, TIME below 24:00,
/// JSON numbers of at most 38 digits). Values outside them fail the COPY in Snowflake
/// (fakesnow's DuckDB accepts some of them, so it can prove neither way), or are
/// refused when extracted (`1e400`, tested in `fidelity`); they are left out here.
fn in_snowflake_range(pg_type: &str, value: &str) -> bool {
    if value == "'1e400'" {
        return false;
    }
    let dated = ["date", "timestamp", "timestamptz", "time"].contains(&pg_type);
    !(dated
        && (value.contains("infinity")
            || value.contains(" BC")
            || value.starts_with("'12345")
            || value.starts_with("'0044")
            || value == "'24:00:00'"))
}

/// (Snowflake SQL, PostgreSQL SQL) rendering column `c` of Snowflake type `sf_type` in
/// one canonical text each (compared by [`same_value`]).
fn sf_canon(sf_type: &str, pg_type: &str, c: &str) -> (String, String) {
    let q = c.to_uppercase();
    match sf_type {
        "TIMESTAMP_NTZ" | "TIMESTAMP_TZ" => (
            format!("DATE_PART(EPOCH_MICROSECOND, \"{q}\")::TEXT"),
            format!("(extract(epoch FROM {c}) * 1000000)::bigint::text"),
        ),
        "BINARY" => (
            format!("HEX_ENCODE(\"{q}\")"),
            format!("upper(encode({c}, 'hex'))"),
        ),
        "TEXT" => (
            format!("\"{q}\""),
            format!("CASE WHEN {c} IS NOT NULL THEN format('%s', {c}) END"),
        ),
        "VARIANT" | "ARRAY" => (
            format!("TO_JSON(\"{q}\")"),
            if c == "v" && pg_type.starts_with("json") {
                format!("{c}::text")
            } else if pg_type == "numeric" {
                format!("to_json({c}::text[])::text")
            } else {
                format!("to_json({c})::text")
            },
        ),
        _ => (format!("\"{q}\"::TEXT"), format!("{c}::text")),
    }
}

/// Whether two canonical texts of Snowflake type `sf_type` are the same value.
fn same_value(sf_type: &str, sf: Option<&str>, pg: Option<&str>) -> bool {
    let (Some(s), Some(p)) = (sf, pg) else {
        return sf.is_none() && pg.is_none();
    };
    let float = |t: &str| match t {
        "NaN" | "nan" => f64::NAN.to_bits(),
        "Infinity" | "inf" => f64::INFINITY.to_bits(),
        "-Infinity" | "-inf" => f64::NEG_INFINITY.to_bits(),
        t => t.parse::<f64>().map(f64::to_bits).unwrap_or(0),
    };
    let number = |t: &str| {
        if t.contains('.') {
            t.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            t.to_string()
        }
    };
    match sf_type {
        "FLOAT" => float(s) == float(p),
        t if t.starts_with("NUMBER") => number(s) == number(p),
        "BOOLEAN" => s.eq_ignore_ascii_case(p),
        "VARIANT" | "ARRAY" => {
            // Numbers compared as their text: serde_json would compare them as doubles.
            let v = |t: &str| serde_json::from_str::<serde_json::Value>(t).ok();
            v(s).is_some() && v(s) == v(p)
        }
        _ => s == p,
    }
}

/// The type matrix through the Snowflake backend on fakesnow, for what an emulator can
/// prove: every table with its in-range edge values (see [`in_snowflake_range`]) is
/// loaded by `pgp tap` through GCS with the Snowflake COPY casts (`copy=staged`), and
/// every value, array and 2-D array read back through the connector protocol equals
/// PostgreSQL's. `numeric(38,38)` is refused when planned (its own test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_in_snowflakes_range_arrives_exactly_through_fakesnow() {
    use crate::type_matrix::{table, MATRIX, SETUP};
    let fs = tokio::task::spawn_blocking(FakeSnow::get).await.unwrap();
    let emu = tokio::task::spawn_blocking(Emulators::get).await.unwrap();
    let db = pgp_e2e::Pg::get().fresh_db("sfmatrix").await;
    let mut setup = SETUP.to_string();
    let mut tables = String::new();
    let mut loaded = Vec::new();
    for (i, (ty, values)) in MATRIX.iter().enumerate() {
        if *ty == "numeric(38,38)" {
            continue;
        }
        let t = table(i);
        setup.push_str(&format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, v {ty}, a {ty}[], m {ty}[][]);\n\
             INSERT INTO {t} VALUES (0, NULL, NULL, NULL), (1, NULL, '{{}}', '{{}}');\n"
        ));
        for (k, v) in values.iter().enumerate() {
            // fakesnow's COPY reads the file with DuckDB's read_csv and `nullstr ''`,
            // which (allow_quoted_nulls) loads a quoted `""` as NULL; Snowflake loads
            // it as the empty string (format.rs argues it from the documentation). The
            // load's profile check refuses such a load, as it should (see
            // `the_emulators_empty_string_gap_is_refused_by_the_profile_check`), so
            // values whose text is empty are not sent through the emulator here.
            if in_snowflake_range(ty, v) && !["''", "B''"].contains(v) {
                setup.push_str(&format!(
                    "INSERT INTO {t} VALUES ({}, {v}, ARRAY[{v}, NULL]::{ty}[], \
                     ARRAY[ARRAY[{v}, NULL], ARRAY[NULL, {v}]]::{ty}[][]);\n",
                    k + 2
                ));
            }
        }
        tables.push_str(&format!(
            "  {t}:\n    import_db: TEST_DB\n    export_schema: 'matrix'\n    export_table: '{t}'\n    export_table_primary_key: id\n    import_query: SELECT * FROM {t}\n"
        ));
        loaded.push((t, *ty));
    }
    db.exec(&setup).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = pgp_e2e::write_manifest(dir.path(), &tables);
    let url = fs.url("SFMATRIX");
    let mut e = tap_env(&url, emu);
    e.extend(db.env());
    create_database(&url, &e, "SFMATRIX").await;
    tap(&manifest, &e, &["--load-type", "scd"]).await;

    let cfg = SnowflakeConfig::from_url(&url, &e, &format!("gs://{BUCKET}")).unwrap();
    let mut c = Client::new(cfg).unwrap();
    db.exec(
        "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'iso_8601'; \
         SET extra_float_digits = 3; SET bytea_output = 'hex'",
    )
    .await;
    let mut failures = Vec::new();
    let mut compared = 0;
    for (t, ty) in &loaded {
        let st = db
            .client
            .prepare(&format!("SELECT v, a, m FROM {t}"))
            .await
            .unwrap();
        let mut sf_cols = Vec::new();
        let mut pg_cols = Vec::new();
        let mut sf_types = Vec::new();
        for (col, depth) in [("v", 0), ("a", 1), ("m", 2)] {
            let pgc = &st.columns()[depth];
            let sf_type = pgp::warehouse::snowflake::render(&pgp::types::from_pg_dims(
                pgc.type_(),
                pgc.type_modifier(),
                depth.max(1) as i32,
            ));
            let (s, p) = sf_canon(&sf_type, ty.trim_matches('"'), col);
            sf_cols.push(s);
            pg_cols.push(p);
            sf_types.push(sf_type);
        }
        let sf = c
            .query(&format!(
                "SELECT ID::TEXT, {} FROM SFMATRIX.MATRIX.{} ORDER BY ID",
                sf_cols.join(", "),
                t.to_uppercase()
            ))
            .await
            .unwrap();
        let pg = db
            .client
            .query(
                &format!(
                    "SELECT id::text, {} FROM {t} ORDER BY id",
                    pg_cols.join(", ")
                ),
                &[],
            )
            .await
            .unwrap();
        if sf.rows.len() != pg.len() {
            failures.push(format!("{ty}: {} rows vs {}", sf.rows.len(), pg.len()));
        }
        for (s, p) in sf.rows.iter().zip(&pg) {
            for (k, sf_type) in sf_types.iter().enumerate() {
                let pv: Option<String> = p.get(k + 1);
                compared += 1;
                if !same_value(sf_type, s[k + 1].as_deref(), pv.as_deref()) {
                    failures.push(format!(
                        "{ty}.{} ({sf_type}) id {}: fakesnow {:?} vs postgres {pv:?}",
                        ["v", "a", "m"][k],
                        p.get::<_, String>(0),
                        s[k + 1]
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {compared} values differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(compared > 600, "{compared} values compared");
}

#[tokio::test]
async fn the_emulators_empty_string_gap_is_refused_by_the_profile_check() {
    // fakesnow loads a quoted `""` as NULL (see the type matrix above): an engine
    // turning an empty string into NULL, which is what the chunk profile exists to
    // catch. The load is refused before anything is visible, naming the column.
    let fs = tokio::task::spawn_blocking(FakeSnow::get).await.unwrap();
    let emu = tokio::task::spawn_blocking(Emulators::get).await.unwrap();
    let db = pgp_e2e::Pg::get().fresh_db("sfgap").await;
    db.exec(
        "CREATE TABLE gap (id bigint PRIMARY KEY, v text);
         INSERT INTO gap VALUES (1, ''), (2, 'x'), (3, NULL);",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = pgp_e2e::write_manifest(
        dir.path(),
        "  gap:
    import_db: TEST_DB
    export_schema: 'sfgap'
    export_table: 'gap'
    export_table_primary_key: id
    import_query: SELECT * FROM gap
",
    );
    let url = fs.url("GAPDB");
    let mut e = tap_env(&url, emu);
    e.extend(db.env());
    create_database(&url, &e, "GAPDB").await;
    let (ok, text) = tap_output(&manifest, &e, &["--load-type", "scd"]).await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("column `v`: nulls 1 in postgres, 2 loaded"),
        "{text}"
    );
    let cfg = SnowflakeConfig::from_url(&url, &e, &format!("gs://{BUCKET}")).unwrap();
    let mut c = Client::new(cfg).unwrap();
    let visible = c
        .query(
            "SELECT count(*)::TEXT FROM information_schema.tables \
             WHERE table_schema = 'SFGAP' AND table_name = 'GAP'",
        )
        .await
        .unwrap();
    assert_eq!(visible.scalar(), Some("0"), "the target appeared");
}

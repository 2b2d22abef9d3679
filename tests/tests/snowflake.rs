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
    let mut cmd = std::process::Command::new(service_binary("pgp"));
    cmd.arg("tap")
        .arg(manifest)
        .args(args)
        .arg("--keep-objects")
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
    assert!(out.status.success(), "pgp tap {args:?}: {text}");
    assert!(!text.contains(pgp_e2e::PASSWORD), "password in output");
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
    let stage_dir = emu.gcs_dir.join(".cloudstorage").join(BUCKET);
    let mut e = env(&[
        ("PGP_SNOWFLAKE_PASSWORD", "unused-by-the-emulator".into()),
        (
            "PGP_SNOWFLAKE_STAGE_URL",
            format!("file://{}/", stage_dir.display()),
        ),
        ("PGP_STORAGE_URL", format!("gs://{BUCKET}")),
        ("PGP_GCS_ENDPOINT", emu.gcs_url()),
        ("PGP_WAREHOUSE_URL", url.clone()),
        ("PGP_LOG", "warn".into()),
    ]);
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
        .query("SELECT COUNT(*) FROM TAPDB.\"_PGP\".LOADS")
        .await
        .unwrap();
    assert_eq!(loads.scalar(), Some("3"));

    // A source column added: the SCD run sees the changed schema and re-syncs through
    // `_TEMP` and the swap (rename fallback here) onto the existing target.
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
    assert_eq!(
        q(tables).await,
        "NOTES",
        "no _TEMP, stage or old table left"
    );

    // Same schema: the next SCD run appends a second snapshot.
    tap(&manifest, &e, &["--load-type", "scd"]).await;
    assert_eq!(q(counts).await, "4000|4000|7|7|2");
    assert_eq!(q(tables).await, "NOTES");
}

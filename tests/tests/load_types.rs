//! The four load types end to end: scd, incremental, backfill (chunked, resumable,
//! swapped), test; schema-change triggers; idempotent retries.

mod common;
use chrono::{TimeZone, Utc};
use common::*;
use pgp::plan::LoadType;
use pgp::run::Outcome;

const SETUP: &str = "
CREATE TABLE users (id bigint PRIMARY KEY, name text, updated_at timestamp NOT NULL, project_id int);
INSERT INTO users SELECT g, 'user ' || g, timestamp '2024-01-01 00:00:00' + g * interval '1 minute', g % 5
  FROM generate_series(1, 1000) g;
CREATE TABLE settings (id int PRIMARY KEY, value text);
INSERT INTO settings VALUES (1, 'a'), (2, NULL), (3, '');
";

const TABLES: &str = "  users:
    import_db: TEST_DB
    export_schema: 'gitlab_com'
    export_table: 'users'
    export_table_primary_key: id
    dbt_source_model: true
    additional_filtering: AND project_id in {PROJECT_IDS}
    import_query: |-
      SELECT id
      , name
      , updated_at
      , project_id
      FROM users
      WHERE updated_at BETWEEN '{BEGIN_TIMESTAMP}'::timestamp
        AND '{END_TIMESTAMP}'::timestamp
  settings:
    import_db: TEST_DB
    export_schema: 'gitlab_com'
    export_table: 'application_settings'
    export_table_primary_key: id
    advanced_metadata: true
    import_query: SELECT id, value FROM settings
";

async fn world(prefix: &str) -> World {
    let mut w = World::new(prefix, SETUP, TABLES).await;
    w.vars.push(("PROJECT_IDS".into(), "(0, 1, 2, 3)".into()));
    w
}

fn at(h: u32, m: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, h, m, 0).unwrap()
}

#[tokio::test]
async fn scd_creates_on_first_run_then_appends_a_snapshot_each_run() {
    let w = world("scd").await;
    let r1 = w.run_type(LoadType::Scd).await;
    assert_eq!(outcome(&r1, "settings"), &Outcome::Swapped, "{r1:#?}");
    assert!(
        matches!(outcome(&r1, "users"), Outcome::Skipped(_)),
        "incremental tables are skipped"
    );
    assert_eq!(rows(&r1, "settings"), 3);
    let r2 = w.run_type(LoadType::Scd).await;
    assert_eq!(outcome(&r2, "settings"), &Outcome::Appended);
    assert_eq!(
        w.duck_count("SELECT count(*) FROM gitlab_com.application_settings"),
        6
    );
    assert_eq!(
        w.duck_count("SELECT count(DISTINCT _uploaded_at) FROM gitlab_com.application_settings"),
        2
    );
    assert_eq!(
        w.duck_count("SELECT count(*) FROM gitlab_com.application_settings WHERE value IS NULL"),
        2
    );
    assert_eq!(
        w.duck_count("SELECT count(*) FROM gitlab_com.application_settings WHERE value = ''"),
        2
    );
    // no stage or _TEMP left behind
    let leftovers = w.duck_count(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'gitlab_com' AND (table_name LIKE '%_TEMP' OR table_name LIKE '%_PGP_STAGE_%')",
    );
    assert_eq!(leftovers, 0);
    // staged objects are cleaned up after a successful load
    let objects: Vec<_> = walk(&w.store_path());
    assert!(objects.is_empty(), "{objects:?}");
}

fn walk(p: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

#[tokio::test]
async fn a_retry_with_the_same_run_id_does_not_duplicate_rows() {
    let w = world("retry").await;
    w.run_type(LoadType::Scd).await;
    let mut o = w.options(LoadType::Scd, Utc::now());
    o.run_id = "retry-1".into();
    o.tables = vec!["settings".into()];
    let a = w.run(o.clone()).await;
    assert_eq!(outcome(&a, "settings"), &Outcome::Appended);
    let b = w.run(o).await;
    assert_eq!(outcome(&b, "settings"), &Outcome::Appended);
    assert_eq!(
        w.duck_count("SELECT count(*) FROM gitlab_com.application_settings"),
        6
    );
}

#[tokio::test]
async fn incremental_needs_a_backfill_first_then_loads_its_window() {
    let w = world("incr").await;
    let mut o = w.options(LoadType::Incremental, Utc::now());
    o.params.execution_date = Some(at(2, 0));
    o.params.hours = Some(1);
    let r = w.run(o.clone()).await;
    assert!(
        matches!(outcome(&r, "users"), Outcome::NeedsBackfill(_)),
        "{r:#?}"
    );
    assert!(matches!(outcome(&r, "settings"), Outcome::Skipped(_)));
    assert!(!w.duck_has_table("gitlab_com", "users"));

    // backfill: the whole table, window dropped, additional_filtering kept
    let mut b = w.options(LoadType::Backfill, Utc::now());
    b.chunk_rows = Some(300);
    let r = w.run(b).await;
    assert_eq!(outcome(&r, "users"), &Outcome::Swapped, "{r:#?}");
    let expected: i64 = w
        .pg("SELECT count(*)::text FROM users WHERE project_id IN (0,1,2,3)")
        .await[0][0]
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        w.duck_count("SELECT count(*) FROM gitlab_com.users"),
        expected
    );
    assert_eq!(
        w.duck_count("SELECT count(DISTINCT id) FROM gitlab_com.users"),
        expected
    );
    assert_eq!(
        w.duck_count("SELECT count(*) FROM gitlab_com.users WHERE project_id = 4"),
        0
    );
    assert_eq!(
        r.tables.iter().find(|t| t.table == "users").unwrap().chunks,
        4
    );

    // incremental: [01:00, 02:00] holds minutes 60..120 => ids 60..=120, minus project 4
    let r = w.run(o).await;
    assert_eq!(outcome(&r, "users"), &Outcome::Appended, "{r:#?}");
    let window: i64 = (60..=120).filter(|i| i % 5 != 4).count() as i64;
    assert_eq!(rows(&r, "users") as i64, window);
    assert_eq!(
        w.duck_count("SELECT count(*) FROM gitlab_com.users"),
        expected + window
    );
    let w_end = r.window.unwrap().end;
    assert_eq!(w_end, at(2, 0));
}

#[tokio::test]
async fn a_schema_change_rebuilds_through_temp_and_swap() {
    let w = world("schema").await;
    w.run_type(LoadType::Scd).await;
    w.run_type(LoadType::Backfill).await;
    assert_eq!(
        w.duck_count("SELECT count(*) FROM gitlab_com.application_settings"),
        3
    );

    // added column on an SCD table: the scd run re-syncs it in the same run
    w.db.exec("ALTER TABLE settings ADD COLUMN extra int DEFAULT 7")
        .await;
    std::fs::write(
        &w.manifest,
        std::fs::read_to_string(&w.manifest).unwrap().replace(
            "SELECT id, value FROM settings",
            "SELECT id, value, extra FROM settings",
        ),
    )
    .unwrap();
    let r = w.run_type(LoadType::Scd).await;
    assert_eq!(outcome(&r, "settings"), &Outcome::Swapped, "{r:#?}");
    assert_eq!(
        w.duck_count("SELECT count(*) FROM gitlab_com.application_settings WHERE extra = 7"),
        3
    );

    // retyped column on the incremental table: incremental refuses, backfill re-syncs
    w.db.exec("ALTER TABLE users ALTER COLUMN project_id TYPE bigint")
        .await;
    let mut o = w.options(LoadType::Incremental, Utc::now());
    o.params.execution_date = Some(at(2, 0));
    o.params.hours = Some(1);
    let r = w.run(o).await;
    match outcome(&r, "users") {
        Outcome::NeedsBackfill(why) => {
            assert!(why.contains("project_id") && why.contains("type"), "{why}")
        }
        o => panic!("{o:?}"),
    }
    let r = w.run_type(LoadType::Backfill).await;
    assert_eq!(outcome(&r, "users"), &Outcome::Swapped);
    let t = w.duck("SELECT data_type FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'project_id'");
    assert_eq!(t[0][0].as_deref(), Some("BIGINT"));

    // renamed column: seen as a change too
    w.db.exec("ALTER TABLE users RENAME COLUMN name TO full_name")
        .await;
    std::fs::write(
        &w.manifest,
        std::fs::read_to_string(&w.manifest)
            .unwrap()
            .replace(", name\n", ", full_name\n"),
    )
    .unwrap();
    let r = w.run_type(LoadType::Backfill).await;
    assert_eq!(outcome(&r, "users"), &Outcome::Swapped, "{r:#?}");
    assert!(
        matches!(outcome(&r, "settings"), Outcome::Skipped(_)),
        "unchanged table is skipped"
    );
}

#[tokio::test]
async fn an_interrupted_backfill_resumes_from_temp_and_keeps_the_old_target_until_the_swap() {
    let setup = "
CREATE TABLE ctl (fail boolean);
INSERT INTO ctl VALUES (true);
CREATE TABLE events (id bigint, payload text);
INSERT INTO events SELECT g, 'p' || g FROM generate_series(1, 1000) g;
INSERT INTO events VALUES (NULL, 'null key row');
";
    let tables = "  events:
    import_db: TEST_DB
    export_schema: 'ev'
    export_table: 'events'
    export_table_primary_key: id
    import_query: |-
      SELECT id
      , payload || CASE WHEN id >= 600 THEN (1 / (SELECT CASE WHEN fail THEN 0 ELSE 1 END FROM ctl))::text ELSE '' END AS payload
      FROM events
";
    let w = World::new("resume", setup, tables).await;
    // An existing target with an older shape, readable throughout.
    {
        let c = duckdb::Connection::open(w.duckdb_path()).unwrap();
        c.execute_batch("CREATE SCHEMA ev; CREATE TABLE ev.events (id BIGINT, _uploaded_at TIMESTAMPTZ); INSERT INTO ev.events VALUES (42, now());").unwrap();
    }
    let mut o = w.options(LoadType::Backfill, Utc::now());
    o.chunk_rows = Some(100);
    let r = w.run(o.clone()).await;
    match outcome(&r, "events") {
        Outcome::Failed(m) => assert!(m.contains("division by zero"), "{m}"),
        o => panic!("{o:?}"),
    }
    // the old target is untouched; _TEMP holds the chunks that completed
    assert_eq!(w.duck_count("SELECT count(*) FROM ev.events"), 1);
    // ranges are [-inf,101)+NULL, [101,201), ... [501,601): the sixth fails at id 600
    assert_eq!(w.duck_count("SELECT max(id) FROM ev.events_TEMP"), 500);
    assert_eq!(
        w.duck_count("SELECT count(*) FROM ev.events_TEMP"),
        501,
        "ids 1..500 and the NULL-key row"
    );

    w.db.exec("UPDATE ctl SET fail = false").await;
    let mut o2 = w.options(LoadType::Backfill, Utc::now());
    o2.chunk_rows = Some(100);
    let m = pgp::manifest::Manifest::from_file(&w.manifest).unwrap();
    let (plans, _) = w.pipeline().plan(&m, &o2).await.unwrap();
    assert_eq!(plans[0].resume_after, Some(500));
    assert_eq!(plans[0].chunks[0].lo, Some(501));
    assert!(
        !plans[0].chunks[0].nulls,
        "NULL keys were loaded by the first run"
    );
    let r = w.run(o2).await;
    assert_eq!(outcome(&r, "events"), &Outcome::Swapped, "{r:#?}");
    assert_eq!(w.duck_count("SELECT count(*) FROM ev.events"), 1001);
    assert_eq!(
        w.duck_count("SELECT count(DISTINCT id) FROM ev.events"),
        1000
    );
    assert_eq!(
        w.duck_count("SELECT count(*) FROM ev.events WHERE id IS NULL"),
        1
    );
    assert!(!w.duck_has_table("ev", "events_TEMP"));
}

#[tokio::test]
async fn test_load_samples_new_tables_into_a_scratch_table_only() {
    let w = world("testload").await;
    let mut o = w.options(LoadType::Test, Utc::now());
    o.test_rows = 10;
    let r = w.run(o.clone()).await;
    assert_eq!(outcome(&r, "users"), &Outcome::Tested, "{r:#?}");
    assert_eq!(rows(&r, "users"), 10);
    assert_eq!(rows(&r, "settings"), 3);
    assert!(!w.duck_has_table("gitlab_com", "users"));
    assert_eq!(
        w.duck_count("SELECT count(*) FROM gitlab_com.users_PGP_TEST"),
        10
    );
    // once the target is current, test skips it
    w.run_type(LoadType::Backfill).await;
    let r = w.run(o).await;
    assert!(matches!(outcome(&r, "users"), Outcome::Skipped(_)));
}

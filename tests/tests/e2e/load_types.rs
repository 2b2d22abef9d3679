//! The four load types end to end: scd, incremental, backfill (chunked, resumable,
//! swapped), test; schema-change triggers; idempotent retries.

use crate::common::*;
use chrono::{TimeZone, Utc};
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
    // no load or swap table left behind
    let leftovers = w.duck_count(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'gitlab_com' AND table_name LIKE '%_PGP_%'",
    );
    assert_eq!(leftovers, 0);
    // staged objects are cleaned up after a successful load
    let objects: Vec<_> = walk(&w.store_path());
    assert!(objects.is_empty(), "{objects:?}");
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
    // 800 rows after additional_filtering, cut every 300 by rank: 3 ranges.
    assert_eq!(
        r.tables.iter().find(|t| t.table == "users").unwrap().chunks,
        3
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

const RESUME_SETUP: &str = "
CREATE TABLE ctl (fail boolean, slow boolean);
INSERT INTO ctl VALUES (false, false);
CREATE TABLE events (id bigint, payload text);
INSERT INTO events SELECT g, 'p' || g FROM generate_series(1, 1000) g;
INSERT INTO events VALUES (NULL, 'null key row');
-- STABLE and opaque (plpgsql), so that planning queries that do not read the column
-- never call it (a volatile pg_sleep in the select list would stop the planner from
-- dropping the unused column).
CREATE FUNCTION maybe_sleep() RETURNS text STABLE LANGUAGE plpgsql AS $$
BEGIN
  IF (SELECT slow FROM ctl) THEN PERFORM pg_sleep(3); END IF;
  RETURN '';
END $$;
";

// Rows from id 600 on fail (division by zero: permanent) or time out (statement
// timeout: transient) while `ctl` says so.
const RESUME_TABLES: &str = "  events:
    import_db: TEST_DB
    export_schema: 'ev'
    export_table: 'events'
    export_table_primary_key: id
    import_query: |-
      SELECT id
      , payload || CASE WHEN id >= 600 THEN (1 / (SELECT CASE WHEN fail THEN 0 ELSE 1 END FROM ctl))::text
          || maybe_sleep() ELSE '' END AS payload
      FROM events
";

async fn resume_world(prefix: &str) -> World {
    let w = World::new(prefix, RESUME_SETUP, RESUME_TABLES).await;
    w.db.exec(&format!(
        "ALTER DATABASE {} SET statement_timeout = '1s'",
        w.db.name
    ))
    .await;
    // An existing target with an older shape, readable throughout.
    let c = duckdb::Connection::open(w.duckdb_path()).unwrap();
    c.execute_batch("CREATE SCHEMA ev; CREATE TABLE ev.events (id BIGINT, _uploaded_at TIMESTAMPTZ); INSERT INTO ev.events VALUES (42, now());").unwrap();
    w
}

fn backfill(w: &World, run_id: &str) -> pgp::run::RunOptions {
    let mut o = w.options(LoadType::Backfill, Utc::now());
    o.chunk_rows = Some(100);
    o.run_id = run_id.into();
    o.attempts = 2;
    o
}

#[tokio::test]
async fn a_stalled_backfill_requested_again_finishes_the_chunks_it_misses() {
    let w = resume_world("resume").await;
    w.db.exec("UPDATE ctl SET slow = true").await;
    let r = w.run(backfill(&w, "first")).await;
    match outcome(&r, "events") {
        Outcome::Failed(m) => assert!(m.contains("statement timeout"), "{m}"),
        o => panic!("{o:?}"),
    }
    // the old target is untouched; the run's own load table holds the chunks that
    // completed: [-inf,101)+NULL .. [501,601) fails at id 600, and so do the later ones
    assert_eq!(w.duck_count("SELECT count(*) FROM ev.events"), 1);
    let loaded = w.duck_count("SELECT count(*) FROM ev.events_PGP_LOAD_first");
    assert_eq!(loaded, 501, "ids 1..500 and the NULL-key row");
    assert_eq!(
        w.duck_count("SELECT count(*) FROM _pgp.runs WHERE run_id = 'first' AND state = 'planned'"),
        1,
        "a run that stalled on transient errors stays open"
    );

    // requested again under a new id: the first run is resumed, its chunks 5.. only
    w.db.exec("UPDATE ctl SET slow = false").await;
    let r = w.run(backfill(&w, "second")).await;
    assert_eq!(outcome(&r, "events"), &Outcome::Swapped, "{r:#?}");
    let t = r.tables.iter().find(|t| t.table == "events").unwrap();
    assert_eq!(t.resumed.as_deref(), Some("first"));
    assert_eq!(t.chunks, 5, "chunks [501,601) .. [901,+inf): {t:?}");
    assert_eq!(w.duck_count("SELECT count(*) FROM ev.events"), 1001);
    assert_eq!(
        w.duck_count("SELECT count(DISTINCT id) FROM ev.events"),
        1000
    );
    assert_eq!(
        w.duck_count("SELECT count(*) FROM ev.events WHERE id IS NULL"),
        1
    );
    assert_eq!(
        w.duck_count("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'ev' AND table_name LIKE '%_PGP_%'"),
        0,
        "no load or swap table left"
    );
}

/// A run cut by row location (no usable key) is never resumed: its chunks must all
/// read the one snapshot of the run that reads them, and a later run reads another
/// (rows updated in between would have moved). The next request starts over.
#[tokio::test]
async fn a_stalled_backfill_cut_by_row_location_starts_over() {
    let tables = RESUME_TABLES
        .replace("  events:", "  events_nokey:")
        .replace("export_table: 'events'", "export_table: 'events_nokey'")
        .replace(
            "export_table_primary_key: id",
            "export_table_primary_key: no_such_column",
        );
    let w = World::new("nokeyresume", RESUME_SETUP, &tables).await;
    w.db.exec(&format!(
        "ALTER DATABASE {} SET statement_timeout = '1s'",
        w.db.name
    ))
    .await;
    w.db.exec("UPDATE ctl SET slow = true").await;
    let r = w.run(backfill(&w, "first")).await;
    match outcome(&r, "events_nokey") {
        Outcome::Failed(m) => assert!(m.contains("statement timeout"), "{m}"),
        o => panic!("{o:?}"),
    }
    assert!(w.duck_count("SELECT count(*) FROM ev.events_nokey_PGP_LOAD_first") > 0);
    assert_eq!(
        w.duck_count("SELECT count(*) FROM _pgp.runs WHERE run_id = 'first' AND state = 'planned'"),
        1,
        "a run that stalled on transient errors stays open"
    );

    w.db.exec("UPDATE ctl SET slow = false").await;
    let r = w.run(backfill(&w, "second")).await;
    assert_eq!(outcome(&r, "events_nokey"), &Outcome::Swapped, "{r:#?}");
    let t = r.tables.iter().find(|t| t.table == "events_nokey").unwrap();
    assert_eq!(t.resumed, None, "a run cut by row location resumed: {t:?}");
    assert_eq!(t.chunks, 11, "1,001 row locations cut every 100");
    assert_eq!(w.duck_count("SELECT count(*) FROM ev.events_nokey"), 1001);
    assert_eq!(
        w.duck_count("SELECT count(DISTINCT id) FROM ev.events_nokey"),
        1000
    );
}

#[tokio::test]
async fn a_backfill_that_fails_for_good_leaves_the_target_and_the_next_one_starts_clean() {
    let w = resume_world("restart").await;
    w.db.exec("UPDATE ctl SET fail = true").await;
    let r = w.run(backfill(&w, "first")).await;
    match outcome(&r, "events") {
        Outcome::Failed(m) => assert!(m.contains("division by zero"), "{m}"),
        o => panic!("{o:?}"),
    }
    assert_eq!(w.duck_count("SELECT count(*) FROM ev.events"), 1);
    let reason = w.duck("SELECT state, reason FROM _pgp.runs WHERE run_id = 'first'");
    assert_eq!(reason[0][0].as_deref(), Some("abandoned"));
    assert!(
        reason[0][1]
            .as_deref()
            .unwrap()
            .contains("division by zero"),
        "{reason:?}"
    );
    assert!(!w.duck_has_table("ev", "events_PGP_LOAD_first"));

    w.db.exec("UPDATE ctl SET fail = false").await;
    let r = w.run(backfill(&w, "second")).await;
    assert_eq!(outcome(&r, "events"), &Outcome::Swapped, "{r:#?}");
    let t = r.tables.iter().find(|t| t.table == "events").unwrap();
    assert_eq!(t.resumed, None);
    // 1,001 rows cut every 100 by rank: 11 ranges.
    assert_eq!(t.chunks, 11);
    assert_eq!(w.duck_count("SELECT count(*) FROM ev.events"), 1001);
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

/// `pgp tap` stages local files uncompressed unless asked (the embedded warehouse
/// reads them in place), and gzip when asked; both load the same rows.
#[tokio::test]
async fn local_staging_defaults_to_uncompressed_objects() {
    let w = world("localstage").await;
    let tap = |extra: &[&str]| {
        let manifest = w.manifest.to_str().unwrap();
        let mut args = vec!["tap", manifest, "--load-type", "scd", "--keep-objects"];
        args.extend(["--table", "settings"]);
        args.extend(extra);
        let (out, text) = w.pgp(&args, w.db.env());
        assert!(out.status.success(), "{text}");
    };
    let objects = || {
        let mut names: Vec<String> = walk(&w.store_path())
            .into_iter()
            .map(|p| p.display().to_string())
            .filter(|n| n.contains(".tsv"))
            .collect();
        names.sort();
        names
    };
    tap(&["--run-id", "plain"]);
    let plain = objects();
    assert!(
        !plain.is_empty() && plain.iter().all(|n| n.ends_with(".tsv")),
        "{plain:?}"
    );
    tap(&["--run-id", "zipped", "--compression", "gzip"]);
    let zipped: Vec<String> = objects()
        .into_iter()
        .filter(|n| n.contains("zipped"))
        .collect();
    assert!(
        !zipped.is_empty() && zipped.iter().all(|n| n.ends_with(".tsv.gz")),
        "{zipped:?}"
    );
    assert_eq!(
        w.duck_count("SELECT count(*) FROM gitlab_com.application_settings"),
        6
    );
    assert_eq!(
        w.duck_count("SELECT count(*) FROM gitlab_com.application_settings WHERE value = ''"),
        2
    );
}

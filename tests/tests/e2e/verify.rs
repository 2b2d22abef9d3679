//! `pgp verify` end to end: targets loaded by the real pipeline into DuckDB, then the
//! source changed behind them; verify must find exactly the changed keys, by
//! bisection over ranges, with SQL that shows each range on both sides. (Snowflake's
//! side runs against fakesnow in `snowflake.rs`.)

use crate::common::*;
use chrono::{TimeZone, Utc};
use pgp::plan::LoadType;
use pgp::run::Outcome;
use pgp::verify::{RangeDiff, TableVerification, Verdict};

async fn verify(w: &World, table: &str) -> TableVerification {
    verify_tables(w, &[table], 256).await.remove(0)
}

/// The one differing range holding `key` (an integer key).
fn range_of(v: &TableVerification, key: i64) -> &RangeDiff {
    let found: Vec<&RangeDiff> = v
        .ranges
        .iter()
        .filter(|r| {
            r.lo.as_deref()
                .is_none_or(|lo| lo.parse::<i64>().unwrap() <= key)
                && r.hi
                    .as_deref()
                    .is_none_or(|hi| key < hi.parse::<i64>().unwrap())
        })
        .collect();
    assert_eq!(found.len(), 1, "key {key} in {:#?}", v.ranges);
    found[0]
}

const EVENTS: &str = "
CREATE TABLE events (id bigint PRIMARY KEY, name text, amount numeric(12,2), flag boolean, at timestamptz);
INSERT INTO events SELECT 2 * g, 'event ' || g, g / 4.0, g % 3 = 0, timestamptz '2024-01-01' + g * interval '1 second'
  FROM generate_series(1, 1000000) g;
";

const EVENTS_TABLES: &str = "  events:
    import_db: TEST_DB
    export_schema: 'verify'
    export_table: 'events'
    export_table_primary_key: id
    import_query: SELECT id, name, amount, flag, at FROM events
";

/// The issue's case: a 1,000,000-row table, then a deleted, an inserted and four
/// updated rows at the source (a decimal digit, a text to NULL, a boolean, a
/// timestamp by one microsecond). Each is found by key, in a range of at most
/// `leaf_rows` source rows, with a bounded number of statements (no table is pulled
/// through pgp), and the inspection SQL of each range shows its rows on each side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_deleted_an_inserted_and_an_updated_row_in_a_million() {
    let w = World::new("verify_million", EVENTS, EVENTS_TABLES).await;
    let r = w.run_type(LoadType::Scd).await;
    assert_eq!(outcome(&r, "events"), &Outcome::Swapped, "{r:#?}");

    let v = verify(&w, "events").await;
    assert_eq!(v.verdict, Verdict::Equal, "{v:#?}");
    assert_eq!((v.source_rows, v.target_rows), (1_000_000, 1_000_000));
    assert_eq!(v.key.as_deref(), Some("id"));
    assert!(v.unmeasured.is_empty(), "{v:#?}");
    // An equal table: one snapshot (and its two settings), one split, one aggregate
    // per side.
    assert_eq!((v.source_statements, v.target_statements), (5, 1), "{v:#?}");
    assert_eq!(pgp::verify::exit_code(&[v]), 0);

    w.db.exec(
        "DELETE FROM events WHERE id = 250000;
         INSERT INTO events VALUES (600001, 'new', 1.00, false, now());
         UPDATE events SET amount = amount + 0.01 WHERE id = 800000;
         UPDATE events SET name = NULL WHERE id = 900000;
         UPDATE events SET flag = NOT flag WHERE id = 1500000;
         UPDATE events SET at = at + interval '1 microsecond' WHERE id = 1700000;",
    )
    .await;
    let v = verify(&w, "events").await;
    assert_eq!(v.verdict, Verdict::Differs, "{v:#?}");
    assert_eq!((v.source_rows, v.target_rows), (1_000_000, 1_000_000));
    assert_eq!(v.ranges.len(), 6, "{v:#?}");
    assert!(!v.truncated);
    let extra = range_of(&v, 250000);
    assert_eq!(extra.extra, vec!["250000"]);
    assert!(extra.missing.is_empty() && extra.changed.is_empty() && extra.columns.is_empty());
    let missing = range_of(&v, 600001);
    assert_eq!(missing.missing, vec!["600001"]);
    assert!(missing.extra.is_empty() && missing.changed.is_empty());
    for (key, column) in [
        (800000, "amount"),
        (900000, "name"),
        (1500000, "flag"),
        (1700000, "at"),
    ] {
        let r = range_of(&v, key);
        assert_eq!(r.changed.len(), 1, "{r:#?}");
        assert_eq!(r.changed[0].key, key.to_string());
        assert_eq!(r.changed[0].columns, vec![column.to_string()]);
        assert!(r.missing.is_empty() && r.extra.is_empty());
        assert_eq!(r.columns, vec![column.to_string()]);
    }
    for r in &v.ranges {
        assert!(r.by_key, "{r:#?}");
        assert!(r.source_rows <= 256 && r.source_rows > 0, "{r:#?}");
        // The SQL shown for the range reads exactly its rows on each side.
        let on_source = w.db.client.query(&r.source_sql, &[]).await.unwrap();
        assert_eq!(on_source.len() as u64, r.source_rows, "{}", r.source_sql);
        let on_target = w.duck_count(&format!("SELECT count(*) FROM ({})", r.target_sql));
        assert_eq!(on_target as u64, r.target_rows, "{}", r.target_sql);
    }
    // Bisection, not a scan per row: 5 statements, then per differing range at most
    // two cuts (split + aggregate) and one per-key statement on the source.
    assert!(v.source_statements <= 5 + 6 * 5, "{v:#?}");
    assert!(v.target_statements <= 1 + 6 * 3, "{v:#?}");
    assert_eq!(pgp::verify::exit_code(&[v]), 1);
}

const ITEMS: &str = r#"
CREATE TABLE items (id int PRIMARY KEY, title text, updated_at timestamp NOT NULL);
INSERT INTO items SELECT g, 'item ' || g, timestamp '2024-01-01' + g * interval '1 second'
  FROM generate_series(1, 5000) g;
-- A linguistic collation ('a' < 'B'), unlike the byte order the warehouse keeps.
CREATE TABLE labels (name text COLLATE "und-x-icu" PRIMARY KEY, color text);
INSERT INTO labels SELECT chr(33 + g % 90) || chr(192 + g % 300) || g, 'c' || g FROM generate_series(1, 3000) g;
INSERT INTO labels VALUES ('a', '1'), ('B', '2'), ('é', '3'), ('Z', '4'), ('_', '5'), ('a b', '6'), ('🐘', '7');
CREATE TABLE tokens (id uuid PRIMARY KEY, n int);
INSERT INTO tokens SELECT gen_random_uuid(), g FROM generate_series(1, 3000) g;
CREATE TABLE keyless (a int, b text);
INSERT INTO keyless SELECT g, 'b' || g FROM generate_series(1, 100) g;
"#;

const ITEMS_TABLES: &str = "  items:
    import_db: TEST_DB
    export_schema: 'verify'
    export_table: 'items'
    export_table_primary_key: id
    import_query: |-
      SELECT id, title, updated_at
      FROM items
      WHERE updated_at BETWEEN '{BEGIN_TIMESTAMP}'::timestamp AND '{END_TIMESTAMP}'::timestamp
  labels:
    import_db: TEST_DB
    export_schema: 'verify'
    export_table: 'labels'
    export_table_primary_key: name
    import_query: SELECT name, color FROM labels
  tokens:
    import_db: TEST_DB
    export_schema: 'verify'
    export_table: 'tokens'
    export_table_primary_key: id
    import_query: SELECT id, n FROM tokens
  keyless:
    import_db: TEST_DB
    export_schema: 'verify'
    export_table: 'keyless'
    export_table_primary_key: CONCAT(a, '_', b)
    import_query: SELECT a, b FROM keyless
";

/// An incremental target holds every loaded version of a row; verify compares the
/// latest of each key with the source, so a row updated through its window is equal,
/// and a row changed without touching `updated_at` (a background migration) or
/// deleted is found.
#[tokio::test]
async fn an_incremental_target_is_compared_by_the_latest_version_of_each_key() {
    let w = World::new("verify_incr", ITEMS, ITEMS_TABLES).await;
    let r = w.run_type(LoadType::Backfill).await;
    assert_eq!(outcome(&r, "items"), &Outcome::Swapped, "{r:#?}");
    w.db.exec("UPDATE items SET title = 'renamed', updated_at = '2024-02-01 00:30' WHERE id = 10")
        .await;
    let mut o = w.options(LoadType::Incremental, Utc::now());
    o.params.execution_date = Some(Utc.with_ymd_and_hms(2024, 2, 1, 1, 0, 0).unwrap());
    o.params.hours = Some(1);
    let r = w.run(o).await;
    assert_eq!(outcome(&r, "items"), &Outcome::Appended, "{r:#?}");
    assert_eq!(
        w.duck_count("SELECT count(*) FROM verify.items WHERE id = 10"),
        2
    );
    let v = verify(&w, "items").await;
    assert_eq!(v.verdict, Verdict::Equal, "{v:#?}");
    assert_eq!((v.source_rows, v.target_rows), (5000, 5000));

    w.db.exec("UPDATE items SET title = '' WHERE id = 20; DELETE FROM items WHERE id = 4321")
        .await;
    let v = verify_tables(&w, &["items"], 16).await.remove(0);
    assert_eq!(v.verdict, Verdict::Differs, "{v:#?}");
    assert_eq!(v.ranges.len(), 2, "{v:#?}");
    assert_eq!(range_of(&v, 20).changed[0].key, "20");
    assert_eq!(range_of(&v, 20).changed[0].columns, vec!["title"]);
    assert_eq!(range_of(&v, 4321).extra, vec!["4321"]);
    assert!(v.ranges.iter().all(|r| r.source_rows <= 16), "{v:#?}");
}

/// Ranges hold the same keys on both sides only if both order the key alike: text
/// keys (mixed case, punctuation, accents, emoji; a linguistic collation at the
/// source) byte by byte, uuid keys as their text. A wrong order shows up as spurious differences; here exactly the deleted
/// and changed keys are found, with small ranges. A key that is an expression is
/// compared as one range.
#[tokio::test]
async fn text_and_uuid_keys_are_ranged_alike_on_both_sides() {
    let w = World::new("verify_keys", ITEMS, ITEMS_TABLES).await;
    let r = w.run_type(LoadType::Scd).await;
    for t in ["labels", "tokens", "keyless"] {
        assert_eq!(outcome(&r, t), &Outcome::Swapped, "{t}: {r:#?}");
    }
    // A second snapshot: verify compares the latest one only.
    w.run_type(LoadType::Scd).await;
    for t in ["labels", "tokens", "keyless"] {
        let v = verify(&w, t).await;
        assert_eq!(v.verdict, Verdict::Equal, "{v:#?}");
    }
    let v = verify(&w, "labels").await;
    assert_eq!((v.source_rows, v.target_rows), (3007, 3007));

    let token = w.pg("SELECT id::text FROM tokens WHERE n = 1234").await[0][0]
        .clone()
        .unwrap();
    w.db.exec(&format!(
        "DELETE FROM labels WHERE name IN ('é', 'B');
         UPDATE labels SET color = 'x' WHERE name = '🐘';
         UPDATE tokens SET n = -n WHERE id = '{token}';
         DELETE FROM keyless WHERE a = 7;"
    ))
    .await;
    let v = verify_tables(&w, &["labels"], 32).await.remove(0);
    assert_eq!(v.verdict, Verdict::Differs, "{v:#?}");
    let extra: Vec<&String> = v.ranges.iter().flat_map(|r| &r.extra).collect();
    let changed: Vec<&str> = v
        .ranges
        .iter()
        .flat_map(|r| r.changed.iter().map(|c| c.key.as_str()))
        .collect();
    let mut extra: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
    extra.sort();
    assert_eq!(extra, vec!["B", "é"], "{v:#?}");
    assert_eq!(changed, vec!["🐘"], "{v:#?}");
    assert!(v.ranges.iter().all(|r| r.by_key && r.missing.is_empty()));

    let v = verify_tables(&w, &["tokens"], 32).await.remove(0);
    assert_eq!(v.verdict, Verdict::Differs, "{v:#?}");
    assert_eq!(v.ranges.len(), 1, "{v:#?}");
    assert_eq!(v.ranges[0].changed[0].key, token);
    assert_eq!(v.ranges[0].changed[0].columns, vec!["n"]);
    assert!(v.ranges[0].source_rows <= 32);

    let v = verify(&w, "keyless").await;
    assert_eq!(v.verdict, Verdict::Differs, "{v:#?}");
    assert!(v.key.is_none());
    assert!(
        v.key_note.as_deref().unwrap().contains("expression"),
        "{v:#?}"
    );
    assert_eq!(v.ranges.len(), 1);
    assert_eq!(v.ranges[0].range, "whole table");
    assert_eq!(
        (v.ranges[0].source_rows, v.ranges[0].target_rows),
        (99, 100)
    );
}

/// The command: exit 0 when equal, 1 when a target differs (JSON names the key), 2
/// when it cannot compare (the source database does not exist), and never a password.
#[tokio::test]
async fn pgp_verify_exits_0_1_2_and_prints_json() {
    let w = World::new("verify_cli", ITEMS, ITEMS_TABLES).await;
    let r = w.run_type(LoadType::Scd).await;
    assert_eq!(outcome(&r, "labels"), &Outcome::Swapped, "{r:#?}");
    let manifest = w.manifest.to_str().unwrap();
    let args = ["verify", manifest, "--table", "labels", "--format", "json"];
    let run = |env: std::collections::BTreeMap<String, String>| {
        let (out, text) = w.pgp(&args, env);
        (out.status.code(), out.stdout, text)
    };
    let env = w.db.env();
    let (code, _, text) = run(env.clone());
    assert_eq!(code, Some(0), "{text}");

    w.db.exec("DELETE FROM labels WHERE name = 'Z'").await;
    let (code, stdout, text) = run(env.clone());
    assert_eq!(code, Some(1), "{text}");
    let json: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(json[0]["verdict"], "differs", "{json}");
    assert_eq!(json[0]["ranges"][0]["extra"][0], "Z", "{json}");

    let wrong = env
        .into_iter()
        .map(|(k, v)| {
            if k.ends_with("_NAME") {
                (k, "no_such_database".into())
            } else {
                (k, v)
            }
        })
        .collect();
    let (code, _, text) = run(wrong);
    assert_eq!(code, Some(2), "{text}");
}

/// A source whose first range statement is preceded by a change committed on
/// another connection: the change lands after verify's snapshot was taken.
struct Meddling {
    inner: Box<dyn pgp::source::Source>,
    change: std::sync::Mutex<Option<String>>,
    other: std::sync::Arc<tokio_postgres::Client>,
}

#[async_trait::async_trait]
impl pgp::verify::Reader for Meddling {
    fn dialect(&self) -> pgp::warehouse::Dialect {
        self.inner.reader().unwrap().dialect()
    }
    fn relation(&self, t: &pgp::ident::TableName) -> String {
        self.inner.reader().unwrap().relation(t)
    }
    async fn rows(&self, sql: &str) -> pgp::Result<Vec<Vec<Option<String>>>> {
        if sql.contains("CASE") {
            let change = self.change.lock().unwrap().take();
            if let Some(c) = change {
                self.other.batch_execute(&c).await.unwrap();
            }
        }
        self.inner.reader().unwrap().rows(sql).await
    }
}

#[async_trait::async_trait]
impl pgp::source::Source for Meddling {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn reader(&self) -> Option<&dyn pgp::verify::Reader> {
        Some(self)
    }
    async fn describe(&self, t: &str, q: &str) -> pgp::Result<Vec<pgp::types::Column>> {
        self.inner.describe(t, q).await
    }
    async fn key_splits(
        &self,
        t: &str,
        q: &str,
        k: &pgp::query::ChunkKey,
        n: u64,
    ) -> pgp::Result<pgp::query::KeySplits> {
        self.inner.key_splits(t, q, k, n).await
    }
    async fn mean_row_bytes(&self, t: &str, q: &str) -> pgp::Result<Option<f64>> {
        self.inner.mean_row_bytes(t, q).await
    }
    async fn copy_chunk(
        &self,
        c: &pgp::source::ChunkQuery<'_>,
    ) -> pgp::Result<futures::stream::BoxStream<'static, pgp::Result<bytes::Bytes>>> {
        self.inner.copy_chunk(c).await
    }
}

struct MeddlingConnector {
    pg: pgp::source::PgConnector,
    change: String,
    other: std::sync::Arc<tokio_postgres::Client>,
}

#[async_trait::async_trait]
impl pgp::source::Connector for MeddlingConnector {
    async fn connect(
        &self,
        info: &pgp::manifest::ConnectionInfo,
    ) -> pgp::Result<Box<dyn pgp::source::Source>> {
        Ok(Box::new(Meddling {
            inner: self.pg.connect(info).await?,
            change: std::sync::Mutex::new(Some(self.change.clone())),
            other: self.other.clone(),
        }))
    }
}

/// Every statement on the source reads one snapshot: a row deleted (on another
/// connection) after the ranges were cut and before they are measured is not seen
/// half way, where the cut would count it and the measure would not. Without verify's
/// `REPEATABLE READ` transaction this run reports the row as extra.
#[tokio::test]
async fn the_source_is_compared_in_one_snapshot() {
    let w = World::new("verify_snapshot", ITEMS, ITEMS_TABLES).await;
    let r = w.run_type(LoadType::Scd).await;
    assert_eq!(outcome(&r, "labels"), &Outcome::Swapped, "{r:#?}");
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname={}",
            w.db.env()["TEST_DB_PORT"],
            w.db.env()["TEST_DB_NAME"]
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let m = pgp::manifest::Manifest::from_file(&w.manifest).unwrap();
    let p = w.pipeline();
    let connector = MeddlingConnector {
        pg: pgp::source::PgConnector { env: p.env.clone() },
        change: "DELETE FROM labels WHERE name = 'Z'".into(),
        other: std::sync::Arc::new(client),
    };
    let opts = pgp::verify::VerifyOptions {
        tables: vec!["labels".into()],
        ..Default::default()
    };
    let v = pgp::verify::verify(&m, &opts, &connector, p.env.as_ref(), p.warehouse.as_ref())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(v.verdict, Verdict::Equal, "{v:#?}");
    // The change was made: the next verify sees it.
    let v = verify(&w, "labels").await;
    assert_eq!(
        v.ranges.iter().flat_map(|r| &r.extra).collect::<Vec<_>>(),
        vec!["Z"]
    );
}

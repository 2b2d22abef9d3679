//! Chunking any table: keys of every orderable type (text with quotes and backslashes,
//! uuid, date with heavy duplicates), a key spread thinly over the `bigint` range,
//! expression and composite keys, and NULL keys. The planned ranges are checked in
//! PostgreSQL (every row in exactly one range, ranges balanced by row count), then the
//! backfill loads every row once.

use crate::common::*;
use pgp::manifest::Manifest;
use pgp::plan::{Action, LoadType};
use pgp::run::Outcome;

const SETUP: &str = r#"
CREATE TABLE t_text (code text PRIMARY KEY, v int NOT NULL);
INSERT INTO t_text SELECT CASE g % 4 WHEN 0 THEN 'it''s ' || g WHEN 1 THEN E'back\\slash ' || g
  WHEN 2 THEN 'ünï ' || g ELSE 'z' || lpad(g::text, 5, '0') END, g FROM generate_series(1, 1000) g;
CREATE TABLE t_uuid (id uuid PRIMARY KEY, v int NOT NULL);
INSERT INTO t_uuid SELECT md5(g::text)::uuid, g FROM generate_series(1, 1000) g;
CREATE TABLE t_sparse (id bigint PRIMARY KEY, v int NOT NULL);
INSERT INTO t_sparse SELECT CASE WHEN g <= 900 THEN g ELSE 4000000000000000000 + g * 1000000000000 END, g
  FROM generate_series(1, 1000) g;
CREATE TABLE t_expr (sha text NOT NULL, issue_id int NOT NULL, v int NOT NULL);
INSERT INTO t_expr SELECT md5((g % 97)::text), g, g FROM generate_series(1, 1000) g;
CREATE TABLE t_comp (a int NOT NULL, b text NOT NULL, v int NOT NULL);
INSERT INTO t_comp SELECT g % 7, 'b' || g, g FROM generate_series(1, 1000) g;
CREATE TABLE t_nulls (k int, v int NOT NULL);
INSERT INTO t_nulls SELECT CASE WHEN g % 10 = 0 THEN NULL ELSE g END, g FROM generate_series(1, 1000) g;
CREATE TABLE t_date (d date NOT NULL, v int NOT NULL);
INSERT INTO t_date SELECT date '2024-01-01' + (g / 50), g FROM generate_series(1, 1000) g;
CREATE TABLE t_iso (id int PRIMARY KEY);
INSERT INTO t_iso SELECT g FROM generate_series(1, 1000) g;
CREATE TABLE t_json (j json, v int NOT NULL);
INSERT INTO t_json SELECT json_build_object('g', g), g FROM generate_series(1, 1000) g;
"#;

/// (table, key as the manifest writes it, most rows a range may hold: 100 asked, more
/// only where equal keys cannot be split).
const TABLES: &[(&str, &str, i64)] = &[
    ("t_text", "code", 100),
    ("t_uuid", "id", 100),
    ("t_sparse", "id", 100),
    ("t_expr", "CONCAT(sha, '_', issue_id)", 100),
    ("t_comp", "a, b", 100),
    ("t_nulls", "k", 100),
    // 50 rows per day (49 the first, 1 the last): a range ends where a day does, so
    // one may hold up to a day more than asked.
    ("t_date", "d", 150),
    // json has no ordering: cut by row location instead (`pgp tap` reads one snapshot).
    ("t_json", "j", 100),
];

fn manifest_tables() -> String {
    TABLES
        .iter()
        .map(|(t, k, _)| (*t, *k))
        .map(|(t, k)| {
            format!(
                "  {t}:\n    import_db: TEST_DB\n    export_schema: 'chunked'\n    export_table: '{t}'\n    export_table_primary_key: \"{k}\"\n    import_query: SELECT * FROM {t}\n"
            )
        })
        // Each row says in what transaction its chunk was read.
        .chain(std::iter::once(
            "  t_iso:\n    import_db: TEST_DB\n    export_schema: 'chunked'\n    export_table: 't_iso'\n    export_table_primary_key: id\n    import_query: SELECT id, current_setting('transaction_isolation') AS iso FROM t_iso\n".to_string(),
        ))
        .collect()
}

#[tokio::test]
async fn any_key_chunks_by_row_count_and_loads_every_row_once() {
    let w = World::new("chunking", SETUP, &manifest_tables()).await;
    let m = Manifest::from_file(&w.manifest).unwrap();
    let mut opts = w.options(LoadType::Backfill, chrono::Utc::now());
    opts.chunk_rows = Some(100);
    let (plans, _) = w.pipeline().plan(&m, &opts).await.unwrap();
    for (t, _, most) in TABLES {
        let p = plans.iter().find(|p| p.table == *t).unwrap();
        assert_eq!(p.action, Action::Backfill, "{t}: {p:?}");
        let key = p.key.as_ref().expect("a key");
        let query = p.query.as_deref().unwrap();
        let mut total = 0;
        let mut sizes = Vec::new();
        for r in &p.chunks {
            let sql = pgp::query::wrap(query, "count(*)", Some((key, r)), None);
            let n: i64 = w.db.client.query_one(&sql, &[]).await.unwrap().get(0);
            sizes.push(n);
            total += n;
        }
        assert_eq!(total, 1000, "{t}: every row in exactly one range {sizes:?}");
        assert!(
            sizes.iter().all(|n| n <= most),
            "{t}: ranges larger than asked: {sizes:?}"
        );
        // Balanced: as many ranges as 1,000 rows need (the date key's days of 50 rows
        // cut at 100; the 100 NULL keys in a range of their own, 9 for the others).
        let expected = 10;
        assert!(
            (expected..=expected + 1).contains(&p.chunks.len()),
            "{t}: {} ranges {sizes:?}",
            p.chunks.len()
        );
        if *t == "t_nulls" {
            assert_eq!(p.chunks[0].to_string(), "null");
            assert_eq!(sizes[0], 100, "the NULL keys, apart");
        }
    }
    // A key without an ordering cannot be cut: the rows are cut by location, and the
    // plan says why.
    let json = plans.iter().find(|p| p.table == "t_json").unwrap();
    assert!(json.key.as_ref().unwrap().is_physical(), "{json:?}");
    let how = json.chunking.as_deref().unwrap();
    assert!(
        how.contains("row locations") && how.contains("ordering operator"),
        "{how}"
    );

    let r = w.run(opts).await;
    // `pgp tap` reads its chunks in the run's exported snapshot (a repeatable-read
    // transaction each; the snapshot itself is tested below).
    assert_eq!(outcome(&r, "t_iso"), &Outcome::Swapped, "{r:#?}");
    assert_eq!(
        w.duck("SELECT DISTINCT iso FROM chunked.t_iso"),
        vec![vec![Some("repeatable read".to_string())]]
    );
    assert!(r.tables.iter().find(|x| x.table == "t_iso").unwrap().chunks >= 10);
    for (t, _, _) in TABLES {
        assert_eq!(outcome(&r, t), &Outcome::Swapped, "{t}: {r:#?}");
        let got = w.duck(&format!(
            "SELECT count(*)::VARCHAR, count(DISTINCT v)::VARCHAR, sum(v)::VARCHAR FROM chunked.{t}"
        ));
        assert_eq!(
            got,
            vec![vec![
                Some("1000".to_string()),
                Some("1000".to_string()),
                Some("500500".to_string())
            ]],
            "{t}"
        );
    }

    // The next SCD run appends its snapshot in chunks too: no extract request grows
    // with the table.
    let mut scd = w.options(LoadType::Scd, chrono::Utc::now());
    scd.chunk_rows = Some(100);
    let r = w.run(scd).await;
    for (t, _, _) in TABLES {
        assert_eq!(outcome(&r, t), &Outcome::Appended, "{t}: {r:#?}");
        let report = r.tables.iter().find(|x| x.table == *t).unwrap();
        assert!(report.chunks >= 10, "{t}: {} chunks", report.chunks);
        let got = w.duck(&format!(
            "SELECT count(*)::VARCHAR, count(DISTINCT v)::VARCHAR, count(DISTINCT _uploaded_at)::VARCHAR FROM chunked.{t}"
        ));
        assert_eq!(
            got,
            vec![vec![
                Some("2000".to_string()),
                Some("1000".to_string()),
                Some("2".to_string())
            ]],
            "{t}"
        );
    }
}

/// The chunks of one embedded run read one exported snapshot, so a run is one picture
/// of the source even while it changes: here a row moves from a range not yet read
/// into one already read, another is deleted and a third inserted between the reads
/// of two chunks. Read through [`pgp::source::SnapshotConnector`], the two chunks
/// hold exactly the rows of the moment the run started; read as the services do, each
/// chunk in its own snapshot, the moved and the deleted row are lost and the inserted
/// one appears (the guarantee the README states for them is per unchanged key).
#[tokio::test]
async fn the_chunks_of_a_run_read_one_snapshot_while_the_source_changes() {
    use futures::StreamExt;
    use pgp::query::{ChunkKey, KeyBound, KeyRange};
    use pgp::source::{ChunkQuery, Connector, PgConnector, SnapshotConnector, Source};
    use std::sync::Arc;
    let db = pgp_e2e::Pg::get().fresh_db("snapshot").await;
    let env: Arc<std::collections::BTreeMap<String, String>> = Arc::new(db.env());
    let info = pgp::manifest::ConnectionInfo {
        user: "TEST_DB_USER".into(),
        pass: "TEST_DB_PASS".into(),
        host: "TEST_DB_HOST".into(),
        database: "TEST_DB_NAME".into(),
        port: "TEST_DB_PORT".into(),
    };
    let key = ChunkKey::parse("id").unwrap();
    let half = |lo: Option<&str>, hi: Option<&str>| KeyRange {
        lo: lo.map(|v| KeyBound(vec![v.into()])),
        hi: hi.map(|v| KeyBound(vec![v.into()])),
        nulls: lo.is_none(),
        keys: true,
    };
    let (first, second) = (half(None, Some("500")), half(Some("500"), None));
    let read = |src: Box<dyn Source>, range: KeyRange| {
        let key = key.clone();
        async move {
            let query = "SELECT id, v FROM moving";
            let columns = src.describe("moving", query).await.unwrap();
            let chunk = ChunkQuery {
                table: "moving",
                query,
                columns: &columns,
                key: Some(&key),
                range: &range,
                limit: None,
                json_number_digits: None,
                fixed_list_depth: true,
                record_end: false,
            };
            let mut out = Vec::new();
            let mut s = src.copy_chunk(&chunk).await.unwrap();
            while let Some(b) = s.next().await {
                out.extend_from_slice(&b.unwrap());
            }
            String::from_utf8(out)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        }
    };
    let mut results = Vec::new();
    for shared in [true, false] {
        db.exec(
            "DROP TABLE IF EXISTS moving; CREATE TABLE moving (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO moving SELECT g, g FROM generate_series(1, 1000) g;",
        )
        .await;
        let connector: Box<dyn Connector> = if shared {
            Box::new(SnapshotConnector::new(env.clone()))
        } else {
            Box::new(PgConnector { env: env.clone() })
        };
        let mut rows = read(connector.connect(&info).await.unwrap(), first.clone()).await;
        db.exec(
            "UPDATE moving SET id = -700 WHERE id = 700; DELETE FROM moving WHERE id = 800;
             INSERT INTO moving VALUES (900000, 0);",
        )
        .await;
        rows.extend(read(connector.connect(&info).await.unwrap(), second.clone()).await);
        rows.sort();
        results.push(rows);
    }
    let mut original: Vec<String> = (1..=1000).map(|g| format!("\"{g}\"\t{g}")).collect();
    original.sort();
    assert_eq!(results[0], original, "one snapshot: the rows of one moment");
    assert_eq!(
        results[1].len(),
        999,
        "own snapshots: -700 and -800, +900000"
    );
    assert!(!results[1].iter().any(|r| r.starts_with("\"700\"")));
    assert!(results[1].iter().any(|r| r.starts_with("\"900000\"")));
}

/// A table past the exact-split limit (1,000,000 rows): its ranges come from a sample,
/// read page by page from the key column's table (TABLESAMPLE SYSTEM) for a column key
/// and from a random pass over the query's rows for an expression key. Any bounds
/// partition the rows; the sample keeps the ranges near the asked size.
#[tokio::test]
async fn a_large_table_is_split_from_a_sample() {
    // `v`'s histogram is kept too coarse for 12 ranges (10 buckets), so it is sampled.
    let setup = "CREATE TABLE big (id uuid PRIMARY KEY, v int NOT NULL);
        INSERT INTO big SELECT md5(g::text)::uuid, g FROM generate_series(1, 1200000) g;
        ALTER TABLE big ALTER COLUMN v SET STATISTICS 10;";
    let entry = |name: &str, key: &str| {
        format!("  {name}:\n    import_db: TEST_DB\n    export_schema: 'chunked'\n    export_table: '{name}'\n    export_table_primary_key: {key}\n    import_query: SELECT * FROM big\n")
    };
    let tables = [
        entry("big", "id"),
        entry("big_v", "v"),
        entry("big_expr", "md5(v::text)"),
        entry("big_nokey", "no_such_column"),
    ]
    .concat();
    let w = World::new("bigsplit", setup, &tables).await;
    // Analyzed once the inserts are counted (a backend reports its row counts when it
    // goes idle, so counted after an ANALYZE in the same batch they would make the
    // statistics look stale).
    for _ in 0..100 {
        let counted: i64 = w
            .db
            .client
            .query_one(
                "SELECT coalesce((SELECT n_mod_since_analyze FROM pg_stat_all_tables WHERE relid = 'big'::regclass), 0)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if counted >= 1_200_000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    w.db.exec("ANALYZE big").await;
    let m = Manifest::from_file(&w.manifest).unwrap();
    let mut opts = w.options(LoadType::Backfill, chrono::Utc::now());
    opts.chunk_rows = Some(100_000);
    let started = std::time::Instant::now();
    let (plans, _) = w.pipeline().plan(&m, &opts).await.unwrap();
    println!("planned 4 x 1,200,000 rows in {:?}", started.elapsed());
    // How each key's bounds were found: the uuid key's current histogram (no row
    // read), a page sample for the column whose histogram is too coarse, a random
    // pass for the expression, and row locations for the table without a usable key.
    for (t, how) in [
        ("big", "key `id`, pg_stats histogram"),
        ("big_v", "key `v`, TABLESAMPLE SYSTEM"),
        ("big_expr", "random sample"),
        ("big_nokey", "row locations (ctid)"),
    ] {
        let p = plans.iter().find(|p| p.table == t).unwrap();
        let chunking = p.chunking.as_deref().unwrap();
        assert!(chunking.contains(how), "{t}: {chunking}");
    }
    for p in &plans {
        assert_eq!(p.action, Action::Backfill, "{p:?}");
        let key = p.key.as_ref().unwrap();
        let mut sizes = Vec::new();
        for r in &p.chunks {
            let sql = pgp::query::wrap(
                p.query.as_deref().unwrap(),
                "count(*)",
                Some((key, r)),
                None,
            );
            sizes.push(
                w.db.client
                    .query_one(&sql, &[])
                    .await
                    .unwrap()
                    .get::<_, i64>(0),
            );
        }
        println!(
            "{} ({}): {} ranges {sizes:?}",
            p.table,
            p.chunking.as_deref().unwrap_or_default(),
            sizes.len()
        );
        assert_eq!(sizes.iter().sum::<i64>(), 1_200_000, "{}", p.table);
        assert!((10..=14).contains(&sizes.len()), "{}: {sizes:?}", p.table);
        // A page sample (TABLESAMPLE SYSTEM) draws whole pages: on `big_v`, whose key
        // follows the physical order, a 100,000-row range spans ~540 pages of which
        // ~90 are drawn (a 200,000-row sample of 1,200,000), so its size varies by
        // ~1/sqrt(90), about 10 % per range; 40 % is four of those. Row samples draw
        // rows and are held to 25 %.
        let tolerance = if p.table == "big_v" { 40_000 } else { 25_000 };
        assert!(
            sizes
                .iter()
                .all(|n| (100_000 - tolerance..=100_000 + tolerance).contains(n)),
            "{}: ranges far from 100,000 rows: {sizes:?}",
            p.table
        );
    }

    // Statistics gone stale (a fifth more rows since ANALYZE): the histogram no longer
    // describes the table, so the key is sampled instead.
    w.db.exec(
        "INSERT INTO big SELECT md5(g::text)::uuid, g FROM generate_series(1200001, 1450000) g",
    )
    .await;
    let mut chunking = String::new();
    for _ in 0..20 {
        let (plans, _) = w.pipeline().plan(&m, &opts).await.unwrap();
        let big = plans.iter().find(|p| p.table == "big").unwrap();
        chunking = big.chunking.clone().unwrap_or_default();
        if !chunking.contains("histogram") {
            break;
        }
        // The inserting backend reports its row counts when it goes idle.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(chunking.contains("TABLESAMPLE SYSTEM"), "{chunking}");
}

/// Without a usable key, `pgp tap` cuts a query that reads one table's rows one for
/// one into ranges of row locations (`ctid`, read as TID range scans), balanced by
/// row count; any other query is one chunk, and the plan says why. The services,
/// whose chunks read separate snapshots, never cut by location.
#[tokio::test]
async fn tables_without_a_usable_key_are_cut_by_row_location() {
    let setup = "CREATE TABLE heap (v int NOT NULL, note text);
        INSERT INTO heap SELECT g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' || g END FROM generate_series(1, 1000) g;
        CREATE VIEW heap_view AS SELECT * FROM heap;";
    let entry = |name: &str, query: &str| {
        format!("  {name}:\n    import_db: TEST_DB\n    export_schema: 'chunked'\n    export_table: '{name}'\n    export_table_primary_key: no_such_column\n    import_query: {query}\n")
    };
    let tables = [
        entry("heap", "SELECT v, note FROM heap h WHERE v > 0"),
        entry(
            "heap_join",
            "SELECT h.v, o.note FROM heap h JOIN heap o ON o.v = h.v",
        ),
        entry(
            "heap_window",
            "SELECT v, note, row_number() OVER (ORDER BY v) AS rn FROM heap",
        ),
        entry("heap_view", "SELECT * FROM heap_view"),
    ]
    .concat();
    let w = World::new("nokey", setup, &tables).await;
    let m = Manifest::from_file(&w.manifest).unwrap();
    let mut opts = w.options(LoadType::Backfill, chrono::Utc::now());
    opts.chunk_rows = Some(100);
    let (plans, _) = w.pipeline().plan(&m, &opts).await.unwrap();
    let plan = |t: &str| plans.iter().find(|p| p.table == t).unwrap();
    let heap = plan("heap");
    assert!(heap.key.as_ref().unwrap().is_physical(), "{heap:?}");
    let chunking = heap.chunking.as_deref().unwrap();
    assert!(
        chunking.contains("row locations") && chunking.contains("no_such_column"),
        "{chunking}"
    );
    let query = heap.query.as_deref().unwrap();
    let mut sizes = Vec::new();
    for r in &heap.chunks {
        let sql = pgp::query::wrap(
            query,
            "count(*)",
            Some((heap.key.as_ref().unwrap(), r)),
            None,
        );
        sizes.push(
            w.db.client
                .query_one(&sql, &[])
                .await
                .unwrap()
                .get::<_, i64>(0),
        );
        // Each range reads only its pages.
        let explain = format!(
            "EXPLAIN {}",
            pgp::query::wrap(query, "1", Some((heap.key.as_ref().unwrap(), r)), None)
        );
        let lines: Vec<String> =
            w.db.client
                .query(&explain, &[])
                .await
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect();
        assert!(
            lines.iter().any(|l| l.contains("Tid Range Scan")),
            "{r}: {lines:#?}"
        );
    }
    assert_eq!(sizes, vec![100; 10], "balanced by rows");
    for (t, why) in [
        ("heap_join", "a join"),
        ("heap_window", "WindowAgg"),
        ("heap_view", "ctid"),
    ] {
        let p = plan(t);
        assert_eq!(p.chunks, vec![pgp::query::KeyRange::ALL], "{t}");
        assert!(p.key.is_none(), "{t}");
        let chunking = p.chunking.as_deref().unwrap();
        assert!(
            chunking.starts_with("one chunk") && chunking.contains(why),
            "{t}: {chunking}"
        );
    }
    // As the services plan (each chunk its own snapshot): one chunk, saying why.
    let parts = w.pipeline().parts();
    let (services, _) =
        pgp::protocol::plan::plan_tables(&parts, parts.warehouse.as_deref().unwrap(), &m, &opts)
            .await
            .unwrap();
    let heap = services.iter().find(|p| p.table == "heap").unwrap();
    assert_eq!(heap.chunks.len(), 1);
    let chunking = heap.chunking.as_deref().unwrap();
    assert!(
        chunking.contains("would not read one snapshot"),
        "{chunking}"
    );

    let r = w.run(opts).await;
    for t in ["heap", "heap_join", "heap_window", "heap_view"] {
        assert_eq!(outcome(&r, t), &Outcome::Swapped, "{t}: {r:#?}");
        let got = w.duck(&format!(
            "SELECT count(*)::VARCHAR, count(DISTINCT v)::VARCHAR, count(note)::VARCHAR FROM chunked.{t}"
        ));
        assert_eq!(
            got,
            vec![vec![
                Some("1000".into()),
                Some("1000".into()),
                Some("667".into())
            ]],
            "{t}"
        );
    }
    assert_eq!(
        r.tables.iter().find(|x| x.table == "heap").unwrap().chunks,
        10
    );
}

/// Why only chunks that read one snapshot may be ranges of row locations: an update
/// writes the row's new version elsewhere (here: at the table's end, its pages being
/// full). Read in one snapshot, the two ranges hold each row once; read each in its
/// own, the updated rows appear in both.
#[tokio::test]
async fn ranges_of_row_locations_need_one_snapshot() {
    use futures::StreamExt;
    use pgp::query::{ChunkKey, KeyBound, KeyRange};
    use pgp::source::{ChunkQuery, Connector, PgConnector, SnapshotConnector, Source};
    use std::sync::Arc;
    let db = pgp_e2e::Pg::get().fresh_db("pages").await;
    let env: Arc<std::collections::BTreeMap<String, String>> = Arc::new(db.env());
    let info = pgp::manifest::ConnectionInfo {
        user: "TEST_DB_USER".into(),
        pass: "TEST_DB_PASS".into(),
        host: "TEST_DB_HOST".into(),
        database: "TEST_DB_NAME".into(),
        port: "TEST_DB_PORT".into(),
    };
    let key = ChunkKey::physical();
    let query = pgp::query::with_row_location("SELECT v FROM heap").unwrap();
    let half = |lo: Option<&str>, hi: Option<&str>| KeyRange {
        lo: lo.map(|v| KeyBound(vec![v.into()])),
        hi: hi.map(|v| KeyBound(vec![v.into()])),
        nulls: false,
        keys: true,
    };
    let (first, second) = (half(None, Some("(2,0)")), half(Some("(2,0)"), None));
    let read = |src: Box<dyn Source>, range: KeyRange| {
        let (key, query) = (key.clone(), query.clone());
        async move {
            let columns = src.describe("heap", "SELECT v FROM heap").await.unwrap();
            let chunk = ChunkQuery {
                table: "heap",
                query: &query,
                columns: &columns,
                key: Some(&key),
                range: &range,
                limit: None,
                json_number_digits: None,
                fixed_list_depth: true,
                record_end: false,
            };
            let mut out = Vec::new();
            let mut s = src.copy_chunk(&chunk).await.unwrap();
            while let Some(b) = s.next().await {
                out.extend_from_slice(&b.unwrap());
            }
            String::from_utf8(out)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        }
    };
    let mut results = Vec::new();
    for shared in [true, false] {
        db.exec(
            "DROP TABLE IF EXISTS heap; CREATE TABLE heap (v int NOT NULL);
             INSERT INTO heap SELECT g FROM generate_series(1, 2000) g;",
        )
        .await;
        let connector: Box<dyn Connector> = if shared {
            Box::new(SnapshotConnector::new(env.clone()))
        } else {
            Box::new(PgConnector { env: env.clone() })
        };
        let mut rows = read(connector.connect(&info).await.unwrap(), first.clone()).await;
        db.exec("UPDATE heap SET v = v WHERE v <= 10").await;
        rows.extend(read(connector.connect(&info).await.unwrap(), second.clone()).await);
        rows.sort();
        results.push(rows);
    }
    let mut original: Vec<String> = (1..=2000).map(|g| format!("\"{g}\"")).collect();
    original.sort();
    assert!(results[0] == original, "one snapshot: every row once");
    assert_eq!(
        results[1].len(),
        2010,
        "own snapshots: the 10 moved rows twice"
    );
}

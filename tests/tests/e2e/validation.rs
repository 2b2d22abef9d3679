//! Validation before visibility: a chunk altered between extraction and load, in a way
//! that keeps its row count, is refused by its profile (`pgp::profile`) before any of
//! its rows become visible. The real pipeline (PostgreSQL, local objects, DuckDB) runs
//! with a store that alters the object as the warehouse fetches it, the way a faulty
//! transfer, a buggy transformation or a wrong reading would.

use crate::common::*;
use async_trait::async_trait;
use bytes::Bytes;
use pgp::plan::LoadType;
use pgp::run::Outcome;
use pgp::storage::{Metadata, ObjectInfo, ObjectKey, ObjectStore, ObjectWriter};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SETUP: &str = r#"
CREATE TABLE v (id bigint PRIMARY KEY, a text, b text, amount numeric(12,2), flag boolean);
INSERT INTO v
SELECT g, 'alpha' || g, CASE g % 3 WHEN 0 THEN '' WHEN 1 THEN NULL ELSE 'b' END,
       g * 1.25, g % 2 = 0
FROM generate_series(1, 60) AS g;
"#;

const TABLES: &str = "  v:
    import_db: TEST_DB
    import_query: SELECT id, a, b, amount, flag FROM v
    export_schema: val
    export_table: v
    export_table_primary_key: id
";

/// An alteration of a chunk's records (one per line: the test data has no newlines).
type Alter = fn(Vec<Vec<String>>) -> Vec<Vec<String>>;

/// A local store whose objects reach the warehouse altered: the warehouse cannot read
/// them in place (`local_path` is `None`), so it fetches each with `copy_to_file`,
/// which hands it the altered records.
#[derive(Debug)]
struct Altering {
    inner: pgp::storage::LocalStore,
    alter: Alter,
}

fn gunzip(b: &[u8]) -> String {
    let mut s = String::new();
    flate2::read::MultiGzDecoder::new(b)
        .read_to_string(&mut s)
        .unwrap();
    s
}

fn gzip(s: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(s.as_bytes()).unwrap();
    e.finish().unwrap()
}

#[async_trait]
impl ObjectStore for Altering {
    fn url(&self) -> String {
        self.inner.url()
    }
    async fn writer(&self, key: &ObjectKey) -> pgp::Result<Box<dyn ObjectWriter>> {
        self.inner.writer(key).await
    }
    async fn get(&self, key: &ObjectKey) -> pgp::Result<Bytes> {
        self.inner.get(key).await
    }
    async fn copy(
        &self,
        from: &ObjectKey,
        to: &ObjectKey,
        metadata: Metadata,
    ) -> pgp::Result<ObjectInfo> {
        self.inner.copy(from, to, metadata).await
    }
    async fn copy_to_file(&self, key: &ObjectKey, path: &Path) -> pgp::Result<u64> {
        let bytes = self.inner.get(key).await?;
        let records: Vec<Vec<String>> = gunzip(&bytes)
            .lines()
            .map(|l| l.split('\t').map(String::from).collect())
            .collect();
        let text: String = (self.alter)(records)
            .into_iter()
            .map(|r| r.join("\t") + "\n")
            .collect();
        let out = gzip(&text);
        std::fs::write(path, &out).unwrap();
        Ok(out.len() as u64)
    }
    async fn head(&self, key: &ObjectKey) -> pgp::Result<Option<ObjectInfo>> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> pgp::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &ObjectKey) -> pgp::Result<()> {
        self.inner.delete(key).await
    }
    fn local_path(&self, _key: &ObjectKey) -> Option<PathBuf> {
        None
    }
    async fn health(&self) -> pgp::Result<()> {
        self.inner.health().await
    }
}

/// The first record whose field `i` satisfies `p`.
fn first(records: &mut [Vec<String>], i: usize, p: impl Fn(&str) -> bool) -> &mut Vec<String> {
    records
        .iter_mut()
        .find(|r| p(&r[i]))
        .expect("a record to alter")
}

/// Run the table once with objects altered by `alter`; the outcome and whether the
/// target exists afterwards.
async fn run_altered(prefix: &str, extra_sql: &str, alter: Alter) -> (Outcome, bool, World) {
    let w = World::new(prefix, &format!("{SETUP}{extra_sql}"), TABLES).await;
    let mut p = w.pipeline();
    let store: Arc<dyn ObjectStore> = Arc::new(Altering {
        inner: pgp::storage::LocalStore::new(w.store_path()).unwrap(),
        alter,
    });
    p.store = store.clone();
    p.warehouse = Arc::new(pgp::warehouse::DuckDb::open(&w.duckdb_path(), store).unwrap());
    let m = pgp::manifest::Manifest::from_file(&w.manifest).unwrap();
    let mut opts = w.options(LoadType::Scd, chrono::Utc::now());
    opts.keep_objects = true;
    let r = p.run(&m, &opts, &pgp::run::Quiet).await.unwrap();
    drop(p);
    let o = outcome(&r, "v").clone();
    let exists = w.duck_has_table("val", "v");
    (o, exists, w)
}

/// Assert the load was refused for `column`'s `measure`, with nothing visible.
async fn refused(prefix: &str, alter: Alter, column: &str, measure: &str) {
    let (o, exists, _w) = run_altered(prefix, "", alter).await;
    match o {
        Outcome::Failed(why) => {
            assert!(
                why.contains("differ from what postgres sent")
                    && why.contains(&format!("column `{column}`: {measure} ")),
                "{prefix}: {why}"
            );
        }
        o => panic!("{prefix}: an altered chunk was not refused: {o:?}"),
    }
    assert!(!exists, "{prefix}: the target appeared");
}

#[tokio::test]
async fn an_unaltered_chunk_loads_through_the_same_path() {
    // The altering store itself changes nothing when told to change nothing: the
    // refusals below come from the alterations. Values that CSV quotes (newlines,
    // tabs, quotes), multi-byte text and `\N` are profiled, compared and loaded.
    let tricky = "INSERT INTO v VALUES \
        (61, E'multi\\nline \"quoted\"\\ttab\\r', '', 1.00, true), \
        (62, '日本語 🎉 café', E'\\\\N', NULL, NULL), \
        (63, '\"', NULL, -0.01, false);";
    let (o, exists, w) = run_altered("val_same", tricky, |r| r).await;
    assert_eq!(o, Outcome::Swapped);
    assert!(exists);
    assert_eq!(
        w.duck(
            "SELECT count(*)::VARCHAR, count(b)::VARCHAR, sum(amount)::VARCHAR, \
             sum(length(a))::VARCHAR FROM val.v"
        ),
        vec![vec![
            Some("63".into()),
            Some("42".into()),
            Some("2288.49".into()),
            // 'alpha1'..'alpha9', 'alpha10'..'alpha60', then 24, 10 and 1 characters
            Some((9 * 6 + 51 * 7 + 24 + 10 + 1).to_string()),
        ]]
    );
    // The object carried the extractor's profile (so the check above ran).
    let metas: Vec<String> = walk(&w.store_path().join(".pgp-meta"))
        .into_iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .filter(|m| m.contains("\"rows\""))
        .collect();
    assert!(!metas.is_empty());
    assert!(
        metas
            .iter()
            .all(|m| m.contains("\"profile\"") && m.contains("v1:0/")),
        "{metas:?}"
    );
}

#[tokio::test]
async fn a_null_turned_into_an_empty_string_is_refused() {
    refused(
        "val_null_empty",
        |mut r| {
            first(&mut r, 2, |f| f.is_empty())[2] = "\"\"".into();
            r
        },
        "b",
        "nulls",
    )
    .await;
}

#[tokio::test]
async fn an_empty_string_turned_into_null_is_refused() {
    refused(
        "val_empty_null",
        |mut r| {
            first(&mut r, 2, |f| f == "\"\"")[2] = String::new();
            r
        },
        "b",
        "nulls",
    )
    .await;
}

#[tokio::test]
async fn a_truncated_text_is_refused() {
    refused(
        "val_truncated",
        |mut r| {
            first(&mut r, 1, |f| f.len() > 6)[1].pop();
            r
        },
        "a",
        "characters",
    )
    .await;
}

#[tokio::test]
async fn a_changed_digit_is_refused() {
    refused(
        "val_digit",
        |mut r| {
            let f = &mut first(&mut r, 3, |f| f.ends_with("25"))[3];
            f.replace_range(f.len() - 1.., "6");
            r
        },
        "amount",
        "sum",
    )
    .await;
}

#[tokio::test]
async fn swapped_columns_are_refused() {
    refused(
        "val_swapped",
        |mut r| {
            for rec in &mut r {
                rec.swap(1, 2);
            }
            r
        },
        "a",
        "nulls",
    )
    .await;
}

#[tokio::test]
async fn a_dropped_row_replaced_by_a_duplicate_is_refused() {
    refused(
        "val_dup",
        |mut r| {
            r[1] = r[0].clone();
            r
        },
        "id",
        "sum",
    )
    .await;
}

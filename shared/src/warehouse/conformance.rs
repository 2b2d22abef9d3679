//! The behaviour every warehouse must show, run against each implementation (DuckDB
//! here; Snowflake against its emulator): create, schema check, load with the staged
//! file format, idempotent reload, count reporting, atomic append and swap.

use super::{schema_state, RunMeta, SchemaState, TableSchema, Warehouse};
use crate::format::Compression;
use crate::ident::{Ident, TableName};
use crate::storage::{ObjectKey, ObjectStore, ObjectStoreExt};
use crate::types::{Column, ColumnType};
use bytes::Bytes;
use std::io::Write;

/// A column with no PostgreSQL type name, for tests.
pub fn col(name: &str, ty: ColumnType) -> Column {
    Column {
        name: Ident::parse("column", name).unwrap(),
        ty,
        pg_type: String::new(),
    }
}

fn gz(text: &str) -> Bytes {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(text.as_bytes()).unwrap();
    Bytes::from(e.finish().unwrap())
}

/// Every column type the pipeline produces.
pub fn all_types() -> Vec<Column> {
    use ColumnType as C;
    vec![
        col("id", C::BigInt),
        col("b", C::Boolean),
        col("i2", C::SmallInt),
        col("i4", C::Integer),
        col("f4", C::Real),
        col("f8", C::Double),
        col(
            "n",
            C::Decimal {
                precision: 38,
                scale: 10,
            },
        ),
        col("t", C::Text),
        col("d", C::Date),
        col("tm", C::Time),
        col("ts", C::Timestamp),
        col("tstz", C::TimestampTz),
        col("j", C::Json),
        col("u", C::Uuid),
        col("by", C::Bytes),
        col("arr", C::List(Box::new(C::Integer))),
        col("tarr", C::List(Box::new(C::Text))),
    ]
}

/// One row of [`all_types`] in the staged format, with id `id`.
fn row(id: i64, text: &str) -> String {
    [
        id.to_string(),
        "t".into(),
        "-32768".into(),
        "2147483647".into(),
        "NaN".into(),
        "-Infinity".into(),
        "-9999999999999999999999999999.9999999999".into(),
        text.to_string(),
        "1969-07-20".into(),
        "23:59:59.999999".into(),
        "1900-01-01 00:00:00".into(),
        "2262-04-11 23:47:16.854775+00".into(),
        "\"{\"\"a\"\": [1, null]}\"".into(),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into(),
        "00ff".into(),
        "[1,null,3]".into(),
        "\"[\"\"a\\\"\"b\"\",null]\"".into(),
    ]
    .join("\t")
}

/// Run the suite. `store` must be the store `wh` loads from.
pub async fn run(wh: &dyn Warehouse, store: &dyn ObjectStore) {
    wh.health().await.expect("health");
    let schema = Ident::parse("s", "conformance").unwrap();
    let target = TableName::new(schema.clone(), Ident::parse("t", "target").unwrap());
    let stage = target.with_suffix("_STAGE").unwrap();
    let temp = target.with_suffix("_TEMP").unwrap();
    let cols = all_types();
    let ts = TableSchema {
        columns: cols.clone(),
        task_instance: true,
    };
    let run1 = RunMeta {
        run_id: "run1".into(),
        uploaded_at: "2024-05-01T00:00:00Z".parse().unwrap(),
        task_instance: Some("dag.task.2024".into()),
    };

    // a missing table, then created: the reported types are the rendered ones
    assert_eq!(wh.columns(&target).await.unwrap(), None);
    assert_eq!(schema_state(wh, &cols, None), SchemaState::Missing);
    wh.create_table(&target, &ts).await.unwrap();
    let actual = wh.columns(&target).await.unwrap().expect("created");
    assert_eq!(
        schema_state(wh, &cols, Some(&actual)),
        SchemaState::Same,
        "{actual:?}"
    );

    // schema changes are seen: added, dropped, renamed, retyped
    let mut added = cols.clone();
    added.push(col("extra", ColumnType::Text));
    assert!(matches!(
        schema_state(wh, &added, Some(&actual)),
        SchemaState::Changed(_)
    ));
    let dropped = cols[..cols.len() - 1].to_vec();
    assert!(matches!(
        schema_state(wh, &dropped, Some(&actual)),
        SchemaState::Changed(_)
    ));
    let mut renamed = cols.clone();
    renamed[1] = col("b2", ColumnType::Boolean);
    assert!(matches!(
        schema_state(wh, &renamed, Some(&actual)),
        SchemaState::Changed(_)
    ));
    let mut retyped = cols.clone();
    retyped[6] = col(
        "n",
        ColumnType::Decimal {
            precision: 20,
            scale: 2,
        },
    );
    assert!(matches!(
        schema_state(wh, &retyped, Some(&actual)),
        SchemaState::Changed(_)
    ));

    // load two objects into a stage; the counts are the warehouse's own
    wh.create_table(&stage, &ts).await.unwrap();
    let k1 = ObjectKey::parse("conformance/target/run1/00000.tsv.gz").unwrap();
    let k2 = ObjectKey::parse("conformance/target/run1/00001.tsv.gz").unwrap();
    let tricky = "\"tab\there, newline\nhere, CR\rhere, quote\"\" and \\N \\\\ \"";
    store
        .put(
            &k1,
            gz(&format!("{}\n{}\n", row(1, tricky), row(2, "\"\""))),
            Default::default(),
        )
        .await
        .unwrap();
    store
        .put(&k2, gz(&format!("{}\n", row(3, ""))), Default::default())
        .await
        .unwrap();
    let l1 = wh
        .load(&stage, &ts, &run1, &k1, Compression::Gzip)
        .await
        .unwrap();
    assert_eq!((l1.rows, l1.already), (2, false));
    let l2 = wh
        .load(&stage, &ts, &run1, &k2, Compression::Gzip)
        .await
        .unwrap();
    assert_eq!((l2.rows, l2.already), (1, false));

    // a redelivered object is a no-op that reports the earlier count
    let again = wh
        .load(&stage, &ts, &run1, &k1, Compression::Gzip)
        .await
        .unwrap();
    assert_eq!((again.rows, again.already), (2, true));
    assert_eq!(wh.row_count(&stage).await.unwrap(), 3);

    // the ledger tells which objects of the run landed, and their rows
    assert_eq!(
        wh.loaded_objects(&stage, "run1").await.unwrap(),
        vec![(k1.to_string(), 2), (k2.to_string(), 1)]
    );
    assert!(wh.loaded_objects(&stage, "other").await.unwrap().is_empty());

    // nothing is visible in the target until the publish, which happens once
    assert_eq!(wh.row_count(&target).await.unwrap(), 0);
    assert!(!wh.published(&target, "run1").await.unwrap());
    let p = wh.publish_append(&stage, &target, "run1").await.unwrap();
    assert!(wh.published(&target, "run1").await.unwrap());
    assert_eq!((p.rows, p.already), (3, false));
    assert_eq!(wh.row_count(&target).await.unwrap(), 3);
    assert_eq!(wh.columns(&stage).await.unwrap(), None, "stage dropped");
    wh.create_table(&stage, &ts).await.unwrap();
    let p = wh.publish_append(&stage, &target, "run1").await.unwrap();
    assert!(p.already);
    assert_eq!(wh.row_count(&target).await.unwrap(), 3);
    assert_eq!(wh.max_key(&target, &cols[0].name).await.unwrap(), Some(3));

    // a malformed object fails its load and leaves the table as it was
    let bad = ObjectKey::parse("conformance/target/run2/00000.tsv.gz").unwrap();
    store
        .put(
            &bad,
            gz(&format!("{}\nnot-a-number\tt\n", row(9, "x"))),
            Default::default(),
        )
        .await
        .unwrap();
    let run2 = RunMeta {
        run_id: "run2".into(),
        ..run1.clone()
    };
    assert!(wh
        .load(&target, &ts, &run2, &bad, Compression::Gzip)
        .await
        .is_err());
    assert_eq!(wh.row_count(&target).await.unwrap(), 3);

    // swap: the new table replaces the old one whole
    wh.create_table(&temp, &ts).await.unwrap();
    let k3 = ObjectKey::parse("conformance/target/run3/00000.tsv.gz").unwrap();
    store
        .put(&k3, gz(&format!("{}\n", row(7, "new"))), Default::default())
        .await
        .unwrap();
    let run3 = RunMeta {
        run_id: "run3".into(),
        ..run1.clone()
    };
    assert_eq!(
        wh.load(&temp, &ts, &run3, &k3, Compression::Gzip)
            .await
            .unwrap()
            .rows,
        1
    );
    assert_eq!(wh.max_key(&temp, &cols[0].name).await.unwrap(), Some(7));
    let s = wh.publish_swap(&temp, &target, "run3").await.unwrap();
    assert_eq!((s.rows, s.already), (1, false));
    assert_eq!(wh.row_count(&target).await.unwrap(), 1);
    assert_eq!(wh.columns(&temp).await.unwrap(), None);
    assert!(
        wh.publish_swap(&temp, &target, "run3")
            .await
            .unwrap()
            .already
    );
    assert_eq!(wh.row_count(&target).await.unwrap(), 1);

    // swap into a missing target is a rename
    let fresh = TableName::new(schema.clone(), Ident::parse("t", "fresh").unwrap());
    let fresh_temp = fresh.with_suffix("_TEMP").unwrap();
    wh.create_table(&fresh_temp, &ts).await.unwrap();
    wh.publish_swap(&fresh_temp, &fresh, "run4").await.unwrap();
    assert!(wh.columns(&fresh).await.unwrap().is_some());

    for t in [&target, &fresh] {
        wh.drop_table(t).await.unwrap();
        assert_eq!(wh.columns(t).await.unwrap(), None);
    }
    for k in [k1, k2, k3, bad] {
        store.delete(&k).await.unwrap();
    }
}

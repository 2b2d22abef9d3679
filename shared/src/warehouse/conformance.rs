//! The behaviour every warehouse must show, run against each implementation (DuckDB
//! and the simulation's here; Snowflake against its emulator): tables and schema
//! checks, loads with the staged file format inside transactions, rollback, stamps and
//! the ledger's choice of one attempt per chunk, the run table, the swap and markers.
//! What it does not ask for is as deliberate: no uniqueness anywhere (a second load of
//! one object must simply be a second attempt).

use super::{
    schema_state, ActualColumn, LoadRecord, RunMeta, RunRecord, RunState, RunUpdate, SchemaState,
    Staged, TableSchema, Warehouse, LOAD_ID,
};
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
fn row(id: i64, text: &str, end: bool) -> String {
    let mut fields = vec![
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
    ];
    if end {
        fields.push("1".into());
    }
    fields.join("\t")
}

/// Load `object` as chunk `chunk` of `run` in one transaction, stamped `load_id`.
async fn load(
    wh: &dyn Warehouse,
    table: &TableName,
    ts: &TableSchema,
    run: &RunMeta,
    object: &ObjectKey,
    chunk: u32,
    load_id: &str,
) -> u64 {
    let mut txn = wh.begin().await.unwrap();
    let n = txn
        .copy_into(
            table,
            ts,
            run,
            Staged::new(object, Compression::Gzip),
            load_id,
        )
        .await
        .unwrap();
    txn.record_load(&LoadRecord {
        load_table: table.clone(),
        run_id: run.run_id.clone(),
        chunk,
        object: object.to_string(),
        load_id: load_id.into(),
        rows: n,
    })
    .await
    .unwrap();
    txn.commit().await.unwrap();
    n
}

/// Run the suite. `store` must be the store `wh` loads from.
pub async fn run(wh: &dyn Warehouse, store: &dyn ObjectStore) {
    wh.health().await.expect("health");
    // Staged records end with the record-end field where the warehouse checks it.
    let end = wh.record_end_marker();
    let schema = Ident::parse("s", "conformance").unwrap();
    let target = TableName::new(schema.clone(), Ident::parse("t", "target").unwrap());
    let load_table = target.with_suffix("_PGP_LOAD_run1").unwrap();
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
    assert_eq!(wh.marker(&target).await.unwrap(), None);
    assert_eq!(schema_state(wh, &cols, None), SchemaState::Missing);
    wh.create_table(&target, &ts, false).await.unwrap();
    wh.create_table(&target, &ts, false)
        .await
        .expect("creating an existing table is a no-op");
    let actual = wh.columns(&target).await.unwrap().expect("created");
    assert_eq!(
        schema_state(wh, &cols, Some(&actual)),
        SchemaState::Same,
        "{actual:?}"
    );
    wh.prepare_lock(&target).await.unwrap();
    wh.prepare_lock(&target).await.unwrap();

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

    // a load table carries the stamp, which the schema check ignores
    wh.create_table(&load_table, &ts, true).await.unwrap();
    let lcols = wh.columns(&load_table).await.unwrap().unwrap();
    assert!(lcols.iter().any(|c| c.name.eq_ignore_ascii_case(LOAD_ID)));
    assert_eq!(schema_state(wh, &cols, Some(&lcols)), SchemaState::Same);

    let k1 = ObjectKey::parse("conformance/target/run1/00000.a.tsv.gz").unwrap();
    let k2 = ObjectKey::parse("conformance/target/run1/00001.a.tsv.gz").unwrap();
    let tricky = "\"tab\there, newline\nhere, CR\rhere, quote\"\" and \\N \\\\ \"";
    store
        .put(
            &k1,
            gz(&format!(
                "{}\n{}\n",
                row(1, tricky, end),
                row(2, "\"\"", end)
            )),
            Default::default(),
        )
        .await
        .unwrap();
    store
        .put(
            &k2,
            gz(&format!("{}\n", row(3, "", end))),
            Default::default(),
        )
        .await
        .unwrap();

    // the warehouse measures the rows a load inserted, inside the loading transaction,
    // as the extractor measured the records (a quoted `""` is left out here: the
    // Snowflake emulator loads it as NULL, a gap the tests name where it shows)
    let kp = ObjectKey::parse("conformance/profile/00000.p.tsv.gz").unwrap();
    let records = [row(4, tricky, end), row(5, "", end), row(6, "plain ü", end)];
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    store.put(&kp, gz(&text), Default::default()).await.unwrap();
    let mut sent = crate::profile::Profiler::new(&cols, end);
    for r in &records {
        sent.add_record(format!("{r}\n").as_bytes());
    }
    let sent = sent.finish().expect("the staged records are CSV");
    let mut txn = wh.begin().await.unwrap();
    let n = txn
        .copy_into(
            &load_table,
            &ts,
            &run1,
            Staged::new(&kp, Compression::Gzip),
            "p1",
        )
        .await
        .unwrap();
    assert_eq!(n, 3);
    let loaded = txn.profile(&load_table, &ts, "p1").await.unwrap();
    txn.rollback().await.unwrap();
    store.delete(&kp).await.unwrap();
    assert_eq!(
        sent.difference(&loaded, &cols),
        None,
        "{sent:?} vs {loaded:?}"
    );
    assert_eq!(loaded, sent);
    assert!(
        loaded.columns.iter().filter(|c| c.value.is_some()).count() >= 6,
        "sums, characters, true values and bytes are measured: {loaded:?}"
    );

    // a load, its count and its ledger row commit together
    assert_eq!(load(wh, &load_table, &ts, &run1, &k1, 0, "a1").await, 2);
    let mut txn = wh.begin().await.unwrap();

    assert_eq!(
        txn.chunk_loaded(&load_table, "run1", 0).await.unwrap(),
        Some(crate::warehouse::ChosenLoad {
            load_id: "a1".into(),
            rows: 2
        })
    );
    assert_eq!(
        txn.chunk_loaded(&load_table, "run1", 1).await.unwrap(),
        None
    );
    txn.rollback().await.unwrap();

    // a rolled-back load leaves neither rows nor a ledger row
    let mut txn = wh.begin().await.unwrap();
    let n = txn
        .copy_into(
            &load_table,
            &ts,
            &run1,
            Staged::new(&k2, Compression::Gzip),
            "b1",
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    txn.record_load(&LoadRecord {
        load_table: load_table.clone(),
        run_id: "run1".into(),
        chunk: 1,
        object: k2.to_string(),
        load_id: "b1".into(),
        rows: 1,
    })
    .await
    .unwrap();
    txn.rollback().await.unwrap();
    assert_eq!(wh.row_count(&load_table).await.unwrap(), 2);
    assert_eq!(
        wh.loaded_chunks(&load_table, "run1").await.unwrap(),
        vec![0]
    );

    // a transaction dropped half-way is rolled back before the next one starts
    {
        let mut txn = wh.begin().await.unwrap();
        txn.copy_into(
            &load_table,
            &ts,
            &run1,
            Staged::new(&k2, Compression::Gzip),
            "b2",
        )
        .await
        .unwrap();
    }
    assert_eq!(wh.row_count(&load_table).await.unwrap(), 2);

    // chunk 1 loads; then a second loader loads chunk 0's object again: nothing
    // refuses it (no unique keys), the ledger has two attempts for chunk 0, and the
    // summary counts the attempt with the smallest load id once
    assert_eq!(load(wh, &load_table, &ts, &run1, &k2, 1, "c1").await, 1);
    assert_eq!(load(wh, &load_table, &ts, &run1, &k1, 0, "0dup").await, 2);
    assert_eq!(wh.row_count(&load_table).await.unwrap(), 5);
    assert_eq!(
        wh.loaded_chunks(&load_table, "run1").await.unwrap(),
        vec![0, 1]
    );
    let mut txn = wh.begin().await.unwrap();
    let s = txn.ledger_summary(&load_table, "run1").await.unwrap();
    assert_eq!((s.chunks, s.rows), (2, 3));
    assert_eq!(
        txn.ledger_summary(&load_table, "other")
            .await
            .unwrap()
            .chunks,
        0
    );
    txn.rollback().await.unwrap();

    // the run table: insert, read, claim, publish; only open runs are listed
    let mut txn = wh.begin().await.unwrap();
    txn.lock(&target).await.unwrap();
    assert_eq!(txn.run(&target, "run1").await.unwrap(), None);
    let rec = RunRecord::planned(&target, "run1", &load_table, "append", 2, "fp");
    txn.insert_run(&rec).await.unwrap();
    let seen = txn.run(&target, "run1").await.unwrap().expect("own insert");
    assert_eq!((seen.state, seen.chunks), (RunState::Planned, 2));
    assert_eq!(seen.load_table, load_table);
    txn.commit().await.unwrap();
    let mut txn = wh.begin().await.unwrap();
    txn.lock(&target).await.unwrap();
    txn.update_run(&target, "run1", &RunUpdate::Claim("c9".into()))
        .await
        .unwrap();
    let claimed = txn.run(&target, "run1").await.unwrap().unwrap();
    assert_eq!(claimed.state, RunState::Claimed);
    assert_eq!(claimed.claim.as_deref(), Some("c9"));
    let age = claimed.claim_age_seconds.expect("a claim has an age");
    assert!((0..600).contains(&age), "claim age {age}");
    assert_eq!(txn.open_runs(&target).await.unwrap().len(), 1);

    // publish: the chosen attempt of each chunk, without the stamp, once
    let moved = txn
        .insert_chosen(&load_table, &target, &ts, "run1")
        .await
        .unwrap();
    assert_eq!(moved, 3);
    txn.update_run(&target, "run1", &RunUpdate::Published { rows: 3 })
        .await
        .unwrap();
    assert!(txn.open_runs(&target).await.unwrap().is_empty());
    txn.commit().await.unwrap();
    assert_eq!(wh.row_count(&target).await.unwrap(), 3);
    let mut txn = wh.begin().await.unwrap();
    let published = txn.run(&target, "run1").await.unwrap().unwrap();
    assert_eq!(
        (published.state, published.rows),
        (RunState::Published, Some(3))
    );
    let cols_in_txn = txn.columns(&target).await.unwrap().unwrap();
    assert_eq!(
        schema_state(wh, &cols, Some(&cols_in_txn)),
        SchemaState::Same
    );
    txn.update_run(
        &target,
        "run1",
        &RunUpdate::Abandoned {
            reason: "just testing".into(),
        },
    )
    .await
    .unwrap();
    txn.rollback().await.unwrap();
    let mut txn = wh.begin().await.unwrap();
    assert_eq!(
        txn.run(&target, "run1").await.unwrap().unwrap().state,
        RunState::Published,
        "a rolled-back update is not seen"
    );
    txn.rollback().await.unwrap();

    // the operators' view: every run with its ledger totals (one load per chunk for
    // the rows, duplicates counted as loads) and its ages
    let all = wh.run_overview().await.unwrap();
    let me = all
        .iter()
        .find(|s| s.record.run_id == "run1" && s.record.target == target)
        .expect("run1 is listed");
    assert_eq!(me.record.state, RunState::Published);
    assert_eq!(me.record.load_table, load_table);
    assert_eq!((me.loaded_chunks, me.loaded_rows, me.loads), (2, 3, 3));
    assert!(
        (0..600).contains(&me.age_seconds) && (0..600).contains(&me.idle_seconds),
        "{me:?}"
    );

    // a malformed object fails its load and leaves the table as it was
    let bad = ObjectKey::parse("conformance/target/run2/00000.a.tsv.gz").unwrap();
    store
        .put(
            &bad,
            gz(&format!("{}\nnot-a-number\tt\n", row(9, "x", end))),
            Default::default(),
        )
        .await
        .unwrap();
    let run2 = RunMeta {
        run_id: "run2".into(),
        ..run1.clone()
    };
    let mut txn = wh.begin().await.unwrap();
    let failed = txn
        .copy_into(
            &load_table,
            &ts,
            &run2,
            Staged::new(&bad, Compression::Gzip),
            "x1",
        )
        .await;
    assert!(failed.is_err());
    let _ = txn.rollback().await;
    assert_eq!(wh.row_count(&load_table).await.unwrap(), 5);

    // a record short of its last field (cut on its way) fails its load too: the
    // warehouse's own column count check, or the record-end field where a COPY with a
    // transformation ignores the count
    let short = ObjectKey::parse("conformance/target/run2/00001.a.tsv.gz").unwrap();
    let full = row(10, "x", end);
    let cut = &full[..full.rfind('\t').unwrap()];
    store
        .put(
            &short,
            gz(&format!("{}\n{cut}\n", row(11, "y", end))),
            Default::default(),
        )
        .await
        .unwrap();
    let mut txn = wh.begin().await.unwrap();
    let failed = txn
        .copy_into(
            &load_table,
            &ts,
            &run2,
            Staged::new(&short, Compression::Gzip),
            "x2",
        )
        .await;
    assert!(failed.is_err(), "a short record loaded: {failed:?}");
    let _ = txn.rollback().await;
    assert_eq!(wh.row_count(&load_table).await.unwrap(), 5);

    // swap: a new table replaces the target whole and carries the run's marker
    // (built one chosen load at a time: each insert moves exactly that load's rows)
    let fresh = target.with_suffix("_PGP_SWAP_run1").unwrap();
    wh.create_table(&fresh, &ts, false).await.unwrap();
    let mut txn = wh.begin().await.unwrap();
    let mut built = Vec::new();
    for chunk in [0, 1] {
        let load = txn
            .chunk_loaded(&load_table, "run1", chunk)
            .await
            .unwrap()
            .unwrap();
        let n = txn
            .insert_load(&load_table, &fresh, &ts, &load.load_id)
            .await
            .unwrap();
        built.push((chunk, load.rows, n));
    }
    assert_eq!(built, vec![(0, 2, 2), (1, 1, 1)]);
    // all chunks' chosen loads in one read are the ones chunk_loaded gives one by one
    let mut one_by_one = std::collections::BTreeMap::new();
    for chunk in [0, 1] {
        let load = txn.chunk_loaded(&load_table, "run1", chunk).await.unwrap();
        one_by_one.insert(chunk, load.unwrap());
    }
    assert_eq!(
        txn.chosen_loads(&load_table, "run1").await.unwrap(),
        one_by_one
    );
    assert_eq!(
        one_by_one[&0].load_id, "0dup",
        "the smallest load id is chosen"
    );
    // the build ledger is the load ledger keyed by the built table
    assert_eq!(
        txn.unbuilt_chunks(&load_table, &fresh, "run1", 5)
            .await
            .unwrap(),
        vec![0, 1]
    );
    txn.record_load(&LoadRecord {
        load_table: fresh.clone(),
        run_id: "run1".into(),
        chunk: 0,
        object: "load a1".into(),
        load_id: "a1".into(),
        rows: 2,
    })
    .await
    .unwrap();
    assert_eq!(
        txn.unbuilt_chunks(&load_table, &fresh, "run1", 5)
            .await
            .unwrap(),
        vec![1],
        "its own ledger rows are seen"
    );
    assert_eq!(
        txn.unbuilt_chunks(&load_table, &fresh, "run1", 0)
            .await
            .unwrap(),
        Vec::<u32>::new()
    );
    assert_eq!(
        txn.insert_load(&load_table, &fresh, &ts, "no-such-load")
            .await
            .unwrap(),
        0
    );
    txn.commit().await.unwrap();
    let mut txn = wh.begin().await.unwrap();
    let load = txn
        .chunk_loaded(&load_table, "run1", 1)
        .await
        .unwrap()
        .unwrap();
    txn.insert_load(&load_table, &fresh, &ts, &load.load_id)
        .await
        .unwrap();
    txn.rollback().await.unwrap();
    assert_eq!(wh.row_count(&fresh).await.unwrap(), 3, "rolled back");
    let mut txn = wh.begin().await.unwrap();
    txn.insert_chosen(&load_table, &fresh, &ts, "run1")
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(wh.row_count(&fresh).await.unwrap(), 6);
    wh.swap_in(&fresh, &target, "pgp run run1").await.unwrap();
    assert_eq!(wh.row_count(&target).await.unwrap(), 6);
    assert_eq!(
        wh.marker(&target).await.unwrap().as_deref(),
        Some("pgp run run1")
    );
    let mut txn = wh.begin().await.unwrap();
    assert_eq!(
        txn.marker(&target).await.unwrap().as_deref(),
        Some("pgp run run1")
    );
    txn.rollback().await.unwrap();
    // `fresh` is gone or holds the old table
    if wh.columns(&fresh).await.unwrap().is_some() {
        assert_eq!(wh.row_count(&fresh).await.unwrap(), 3);
    }
    wh.drop_table(&fresh).await.unwrap();

    // swap into a missing target is a rename
    let other = TableName::new(schema.clone(), Ident::parse("t", "fresh").unwrap());
    let other_new = other.with_suffix("_PGP_SWAP_run4_x").unwrap();
    wh.create_table(&other_new, &ts, false).await.unwrap();
    wh.swap_in(&other_new, &other, "pgp run run4")
        .await
        .unwrap();
    assert!(wh.columns(&other).await.unwrap().is_some());
    assert_eq!(wh.columns(&other_new).await.unwrap(), None);
    assert_eq!(
        wh.marker(&other).await.unwrap().as_deref(),
        Some("pgp run run4")
    );

    // a serial warehouse swaps a load table in itself: its stamp column goes, its
    // rows stay
    if wh.serial() {
        let stamped = TableName::new(schema.clone(), Ident::parse("t", "stamped").unwrap());
        let stamped_load = stamped.with_suffix("_PGP_LOAD_run5").unwrap();
        wh.create_table(&stamped_load, &ts, true).await.unwrap();
        assert_eq!(
            self::load(wh, &stamped_load, &ts, &run1, &k2, 0, "s1").await,
            1
        );
        let names = |cols: Option<Vec<ActualColumn>>| {
            cols.unwrap()
                .into_iter()
                .map(|c| c.name.to_lowercase())
                .collect::<Vec<_>>()
        };
        assert!(names(wh.columns(&stamped_load).await.unwrap()).contains(&LOAD_ID.to_string()));
        wh.swap_in(&stamped_load, &stamped, "pgp run run5")
            .await
            .unwrap();
        assert_eq!(
            names(wh.columns(&stamped).await.unwrap()),
            names(wh.columns(&target).await.unwrap())
        );
        assert_eq!(wh.row_count(&stamped).await.unwrap(), 1);
        assert_eq!(
            wh.marker(&stamped).await.unwrap().as_deref(),
            Some("pgp run run5")
        );
        wh.drop_table(&stamped).await.unwrap();
    }

    // a finished run's ledger can be trimmed; the run's row stays
    assert_eq!(wh.trim_ledger(&load_table, "run1").await.unwrap(), 3);
    assert_eq!(wh.trim_ledger(&load_table, "run1").await.unwrap(), 0);
    assert!(wh
        .loaded_chunks(&load_table, "run1")
        .await
        .unwrap()
        .is_empty());
    let all = wh.run_overview().await.unwrap();
    let me = all.iter().find(|s| s.record.run_id == "run1").unwrap();
    assert_eq!((me.loads, me.record.state), (0, RunState::Published));

    for t in [&target, &other, &load_table] {
        wh.drop_table(t).await.unwrap();
        assert_eq!(wh.columns(t).await.unwrap(), None);
    }
    for k in [k1, k2, bad] {
        store.delete(&k).await.unwrap();
    }
}

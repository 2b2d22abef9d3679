//! The behaviour every object store must show, run against each implementation
//! (local files here; GCS against its emulator in the services' tests).

use super::{ObjectKey, ObjectStore, ObjectStoreExt};
use bytes::Bytes;

/// Run the whole suite against `store`. Panics on the first deviation.
pub async fn run(store: &dyn ObjectStore) {
    store.health().await.expect("health");
    let key = ObjectKey::parse("conf/t/run1/00000.tsv.gz").unwrap();
    let other = ObjectKey::parse("conf/t/run1/00001.tsv.gz").unwrap();
    let elsewhere = ObjectKey::parse("conf/u/run1/00000.tsv.gz").unwrap();

    // absent objects
    assert!(store.head(&key).await.unwrap().is_none());
    assert!(store.get(&key).await.is_err());
    store
        .delete(&key)
        .await
        .expect("deleting an absent object is fine");

    // a streamed write is invisible until finished
    let mut w = store.writer(&key).await.unwrap();
    w.write(Bytes::from_static(b"hello ")).await.unwrap();
    w.write(Bytes::from_static(b"world")).await.unwrap();
    assert!(
        store.head(&key).await.unwrap().is_none(),
        "visible before finish"
    );
    assert!(
        store.list("conf/").await.unwrap().is_empty(),
        "listed before finish"
    );
    let meta = [("rows".to_string(), "2".to_string())].into();
    let info = w.finish(meta).await.unwrap();
    assert_eq!(info.size, 11);
    assert_eq!(
        store.get(&key).await.unwrap(),
        Bytes::from_static(b"hello world")
    );
    let head = store.head(&key).await.unwrap().unwrap();
    assert_eq!(head.metadata.get("rows").map(String::as_str), Some("2"));

    // an aborted write leaves nothing, and a dropped one neither
    let mut w = store.writer(&other).await.unwrap();
    w.write(Bytes::from_static(b"partial")).await.unwrap();
    w.abort().await;
    assert!(store.head(&other).await.unwrap().is_none());
    {
        let mut w = store.writer(&other).await.unwrap();
        w.write(Bytes::from_static(b"partial")).await.unwrap();
    }
    assert!(store.head(&other).await.unwrap().is_none());

    // rewriting the same name replaces it (a retried chunk never duplicates)
    store
        .put(&key, Bytes::from_static(b"again"), Default::default())
        .await
        .unwrap();
    assert_eq!(store.get(&key).await.unwrap(), Bytes::from_static(b"again"));

    // create-only: the first writer of a name wins, the second writes nothing
    let claim = ObjectKey::parse("conf/t/run1/record.json").unwrap();
    let made = store
        .put_if_absent(&claim, Bytes::from_static(b"first"), Default::default())
        .await
        .unwrap();
    assert!(made.is_some());
    let again = store
        .put_if_absent(&claim, Bytes::from_static(b"second"), Default::default())
        .await
        .unwrap();
    assert!(again.is_none(), "a create-only write replaced an object");
    assert_eq!(
        store.get(&claim).await.unwrap(),
        Bytes::from_static(b"first")
    );

    // a copy is a new object with its own metadata
    let copy = ObjectKey::parse("conf/t/run1/record.copy.json").unwrap();
    let md: super::Metadata = [("attempt".to_string(), "2".to_string())].into();
    let info = store.copy(&claim, &copy, md).await.unwrap();
    assert_eq!(info.size, 5);
    assert_eq!(
        store.get(&copy).await.unwrap(),
        Bytes::from_static(b"first")
    );
    let head = store.head(&copy).await.unwrap().unwrap();
    assert_eq!(head.metadata.get("attempt").map(String::as_str), Some("2"));
    store.delete(&claim).await.unwrap();
    store.delete(&copy).await.unwrap();

    // listing by prefix, sorted
    store
        .put(&other, Bytes::from_static(b"2"), Default::default())
        .await
        .unwrap();
    store
        .put(&elsewhere, Bytes::from_static(b"3"), Default::default())
        .await
        .unwrap();
    let names: Vec<String> = store
        .list("conf/t/")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key.to_string())
        .collect();
    assert_eq!(names, vec![key.to_string(), other.to_string()]);

    // a large streamed object (several upload chunks) reads back byte for byte,
    // also through a local file
    let big = ObjectKey::parse("conf/big/run1/00000.tsv").unwrap();
    let piece: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut w = store.writer(&big).await.unwrap();
    for i in 0..20u8 {
        let mut p = piece.clone();
        p[0] = i;
        w.write(Bytes::from(p)).await.unwrap();
    }
    let info = w.finish(Default::default()).await.unwrap();
    assert_eq!(info.size, 20 * 1024 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.tsv");
    assert_eq!(store.copy_to_file(&big, &file).await.unwrap(), info.size);
    let back = std::fs::read(&file).unwrap();
    for (i, c) in back.chunks(1024 * 1024).enumerate() {
        assert_eq!(c[0] as usize, i);
        assert_eq!(&c[1..], &piece[1..], "piece {i}");
    }
    store.delete(&big).await.unwrap();

    for k in [&key, &other, &elsewhere] {
        store.delete(k).await.unwrap();
        assert!(store.head(k).await.unwrap().is_none());
    }
    assert!(store.list("conf/").await.unwrap().is_empty());
}

//! Handler-level tests: each service's `router(state)` driven with `oneshot`, for every
//! event shape and for malformed bodies, and the whole flow in-process (planner ->
//! extractor -> loader) with every delivery duplicated and reordered, against a real
//! PostgreSQL, local storage and an embedded DuckDB.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use pgp::storage::{LocalStore, ObjectStore};
use pgp_e2e::{write_manifest, Pg};
use pgp_functions::config::WarehouseAccess;
use pgp_functions::events::push_envelope;
use pgp_functions::queue::MemoryQueue;
use pgp_functions::{extractor, loader, planner};
use std::collections::BTreeMap;
use std::sync::Arc;
use tower::ServiceExt;

struct Services {
    dir: tempfile::TempDir,
    store: Arc<dyn ObjectStore>,
    queue: Arc<MemoryQueue>,
    planner: axum::Router,
    extractor: axum::Router,
    loader: axum::Router,
}

fn services(env: BTreeMap<String, String>) -> Services {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalStore::new(dir.path().join("objects")).unwrap());
    let wh_url = format!("duckdb://{}", dir.path().join("w.duckdb").display());
    let warehouse = Arc::new(WarehouseAccess::new(&wh_url, store.clone()));
    let queue = Arc::new(MemoryQueue::default());
    let env: Arc<dyn pgp::params::Env + Send + Sync> = Arc::new(env);
    let planner = planner::router(Arc::new(planner::PlannerState {
        store: store.clone(),
        warehouse: warehouse.clone(),
        queue: queue.clone(),
        env: env.clone(),
        manifest_dir: dir.path().to_path_buf(),
        manifest_prefixes: vec![planner::ManifestPrefix::parse("gs://manifests/pgp/").unwrap()],
        gcs_endpoint: None,
        test_rows: 1000,
    }));
    let extractor = extractor::router(Arc::new(extractor::ExtractorState {
        store: store.clone(),
        env,
    }));
    let loader = loader::router(Arc::new(loader::LoaderState {
        store: store.clone(),
        warehouse,
    }));
    Services {
        dir,
        store,
        queue,
        planner,
        extractor,
        loader,
    }
}

async fn post(
    router: &axum::Router,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::post("/");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = router
        .clone()
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, v)
}

fn envelope(id: &str, data: &[u8]) -> String {
    push_envelope(id, data, &BTreeMap::new(), "projects/p/subscriptions/s").to_string()
}

#[tokio::test]
async fn malformed_bodies_are_400_and_poison_events_are_acknowledged() {
    let s = services(BTreeMap::new());
    for router in [&s.planner, &s.extractor, &s.loader] {
        for body in [
            "",
            "garbage",
            "{\"message\": {\"data\": \"***\"}, \"subscription\": \"s\"}",
        ] {
            let (status, v) = post(router, &[], body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}: {v}");
        }
        // a binary CloudEvent missing its required attributes
        let (status, _) = post(router, &[("ce-specversion", "1.0")], "{}").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    // a plain load request with an unknown field: 400 (Cloud Scheduler shows it)
    let (status, v) = post(
        &s.planner,
        &[],
        r#"{"manifest":"m.yaml","load_type":"scd","hourz":1}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["reason"].as_str().unwrap().contains("hourz"), "{v}");
    // the same as a Pub/Sub message: acknowledged (200) and rejected, never retried
    let (status, v) = post(
        &s.planner,
        &[],
        envelope("1", br#"{"manifest":"m.yaml","load_type":"scd","hourz":1}"#),
    )
    .await;
    assert_eq!(
        (status, v["status"].as_str()),
        (StatusCode::OK, Some("rejected"))
    );
    // a manifest that does not exist, escapes the manifest folder, or is in a bucket
    // place that is not allow-listed (refused before anything is read)
    for m in [
        "missing.yaml",
        "../etc/passwd",
        "/etc/passwd",
        "gs://attacker/m.yaml",
        "gs://manifests/elsewhere/m.yaml",
    ] {
        let body = serde_json::json!({"manifest": m, "load_type": "scd"}).to_string();
        let (status, v) = post(&s.planner, &[], envelope("2", body.as_bytes())).await;
        assert_eq!(
            (status, v["status"].as_str()),
            (StatusCode::OK, Some("rejected")),
            "{m}: {v}"
        );
        let (status, v) = post(&s.planner, &[], body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{m}: {v}");
        if m.starts_with("gs://") {
            let reason = v["reason"].as_str().unwrap();
            assert!(reason.contains("allows gs://manifests/pgp/"), "{reason}");
        }
    }
    // extractor: a task that is not JSON, or names no run
    for data in [
        &b"{not json"[..],
        br#"{"run_id":"r1","table":"t","chunk":0,"chunks":1}"#,
    ] {
        let (status, v) = post(&s.extractor, &[], envelope("3", data)).await;
        assert_eq!(
            (status, v["status"].as_str()),
            (StatusCode::OK, Some("rejected")),
            "{v}"
        );
    }
    let (status, _) = post(&s.extractor, &[], r#"{"run_id":"r1"}"#).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a plain body is no delivery"
    );
    // loader: other event types and foreign objects are ignored; unknown runs rejected
    let ce = |ty: &'static str| {
        vec![
            ("ce-specversion", "1.0"),
            ("ce-id", "e1"),
            ("ce-source", "//storage.googleapis.com/projects/_/buckets/b"),
            ("ce-type", ty),
            ("content-type", "application/json"),
        ]
    };
    let obj = serde_json::json!({"bucket": "b", "name": "x/y.tsv.gz"}).to_string();
    let (status, v) = post(
        &s.loader,
        &ce("google.cloud.storage.object.v1.deleted"),
        obj.clone(),
    )
    .await;
    assert_eq!(
        (status, v["status"].as_str()),
        (StatusCode::OK, Some("ignored"))
    );
    let (status, v) = post(
        &s.loader,
        &ce(pgp_functions::events::STORAGE_FINALIZED),
        obj,
    )
    .await;
    assert_eq!(
        (status, v["status"].as_str()),
        (StatusCode::OK, Some("ignored")),
        "{v}"
    );
    let foreign = serde_json::json!({"bucket": "b", "name": "a/b/r/00000.tsv.gz",
        "metadata": {"run_id": "nope", "table": "t", "chunk": "0", "chunks": "1", "rows": "1"}})
    .to_string();
    let (status, v) = post(
        &s.loader,
        &ce(pgp_functions::events::STORAGE_FINALIZED),
        foreign,
    )
    .await;
    assert_eq!(
        (status, v["status"].as_str()),
        (StatusCode::OK, Some("rejected")),
        "{v}"
    );
    let (status, _) = post(&s.loader, &[], envelope("4", b"{}")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a plain message to the loader is acknowledged"
    );
}

#[tokio::test]
async fn healthz_reports_each_dependency() {
    let s = services(BTreeMap::new());
    for router in [&s.planner, &s.extractor, &s.loader] {
        let resp = router
            .clone()
            .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let v: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["ok"], true, "{v}");
    }
    // a warehouse that cannot be opened (its folder is a file) makes the loader unhealthy
    let file = s.dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let url = format!("duckdb://{}/w.duckdb", file.display());
    let bad = loader::router(Arc::new(loader::LoaderState {
        store: s.store.clone(),
        warehouse: Arc::new(WarehouseAccess::new(&url, s.store.clone())),
    }));
    let resp = bad
        .clone()
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    // ... while the probes' endpoint still says the process is up.
    let resp = bad
        .oneshot(Request::get("/livez").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    for router in [&s.planner, &s.extractor] {
        let resp = router
            .clone()
            .oneshot(Request::get("/livez").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let _ = s.dir.path();
}

/// The object resource of a stored chunk, as GCS would put it in a finalize event.
async fn object_resource(store: &dyn ObjectStore, name: &str) -> serde_json::Value {
    let info = store
        .head(&pgp::storage::ObjectKey::parse(name).unwrap())
        .await
        .unwrap()
        .unwrap();
    serde_json::json!({"bucket": "local", "name": name, "size": info.size.to_string(),
        "generation": "1", "metadata": info.metadata})
}

#[tokio::test]
async fn in_process_flow_survives_duplicated_and_reordered_deliveries() {
    let db = Pg::get().fresh_db("handlers").await;
    db.exec(
        "CREATE TABLE t (id bigint PRIMARY KEY, v text);
         INSERT INTO t SELECT g, CASE WHEN g % 5 = 0 THEN NULL ELSE E'v\\t' || g END FROM generate_series(1, 2500) g;",
    )
    .await;
    let s = services(db.env());
    write_manifest(
        s.dir.path(),
        "  t:
    import_db: TEST_DB
    export_schema: 'flow'
    export_table: 't'
    export_table_primary_key: id
    import_query: SELECT id, v FROM t
",
    );
    let req =
        r#"{"manifest":"manifest.yaml","load_type":"backfill","chunk_rows":400,"run_id":"flow-1"}"#;
    let (status, v) = post(&s.planner, &[], req).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["messages"], 7, "{v}");
    // a redelivered request re-publishes the same tasks and plans nothing new
    let (status, v2) = post(&s.planner, &[], envelope("9", req.as_bytes())).await;
    assert_eq!((status, &v2["planned"]), (StatusCode::OK, &v["planned"]));
    let mut tasks = s.queue.take();
    assert_eq!(tasks.len(), 14);
    tasks.reverse();
    for (i, t) in tasks.iter().enumerate() {
        let (status, v) = post(&s.extractor, &[], envelope(&i.to_string(), &t.data)).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert!(
            matches!(
                v["status"].as_str(),
                Some("extracted" | "already_extracted")
            ),
            "{v}"
        );
    }
    // Each of the 14 task deliveries left an object: 7 extractions, and 7 copies that
    // announce an already extracted chunk again (each object has a name of its own).
    let objects: Vec<String> = s
        .store
        .list("flow/")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key.to_string())
        .collect();
    assert_eq!(objects.len(), 14);
    // every finalize twice, in three shapes, last object first
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for (n, name) in objects.iter().rev().chain(objects.iter()).enumerate() {
        let obj = object_resource(s.store.as_ref(), name).await;
        let (status, v) = match n % 3 {
            0 => {
                let attrs: BTreeMap<String, String> = [
                    ("eventType", "OBJECT_FINALIZE"),
                    ("payloadFormat", "JSON_API_V1"),
                ]
                .into_iter()
                .map(|(a, b)| (a.into(), b.into()))
                .collect();
                let env = push_envelope(&n.to_string(), obj.to_string().as_bytes(), &attrs, "s");
                post(&s.loader, &[], env.to_string()).await
            }
            1 => {
                let ce = serde_json::json!({"specversion": "1.0", "id": n.to_string(),
                    "source": "//storage.googleapis.com/projects/_/buckets/local",
                    "type": pgp_functions::events::STORAGE_FINALIZED,
                    "datacontenttype": "application/json", "data": obj});
                post(
                    &s.loader,
                    &[("content-type", "application/cloudevents+json")],
                    ce.to_string(),
                )
                .await
            }
            _ => {
                let id = n.to_string();
                let headers = [
                    ("ce-specversion", "1.0"),
                    ("ce-id", id.as_str()),
                    (
                        "ce-source",
                        "//storage.googleapis.com/projects/_/buckets/local",
                    ),
                    ("ce-type", pgp_functions::events::STORAGE_FINALIZED),
                    ("content-type", "application/json"),
                ];
                post(&s.loader, &headers, obj.to_string()).await
            }
        };
        assert_eq!(status, StatusCode::OK, "{v}");
        *statuses
            .entry(v["status"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    assert_eq!(
        statuses.get("published"),
        Some(&1),
        "one publish: {statuses:?}"
    );
    assert_eq!(
        statuses
            .keys()
            .filter(|k| !["published", "already_published", "loaded"].contains(&k.as_str()))
            .count(),
        0,
        "{statuses:?}"
    );
    let c = duckdb::Connection::open(s.dir.path().join("w.duckdb")).unwrap();
    let (n, nulls, tabs): (i64, i64, i64) = c
        .query_row(
            "SELECT count(*), count(*) FILTER (WHERE v IS NULL), count(*) FILTER (WHERE v LIKE 'v' || chr(9) || '%') FROM flow.t",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((n, nulls, tabs), (2500, 500, 2000));
    drop(c);
    // a chunk task replayed after the load is a no-op
    let (_, v) = post(&s.extractor, &[], envelope("x", &tasks[0].data)).await;
    assert_eq!(v["status"], "already_extracted");

    // the scheduled garbage collection: a dry run by default, then applied past the
    // retention; the published run's objects and record go, its rows stay
    let gc = |body: &'static str| {
        let router = s.planner.clone();
        async move {
            let resp = router
                .oneshot(Request::post("/gc").body(Body::from(body)).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default(),
            )
        }
    };
    let (status, v) = gc(r#"{"retension_days": 0}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = gc("").await;
    assert_eq!(
        (status, &v["applied"]),
        (StatusCode::OK, &false.into()),
        "{v}"
    );
    assert_eq!(
        v["items"].as_array().unwrap().len(),
        0,
        "recent runs stay: {v}"
    );
    let (status, v) = gc(r#"{"retention_days": 0}"#).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(s.store.list("flow/").await.unwrap().len(), 15, "dry run");
    let (status, v) =
        gc(r#"{"retention_days": 0, "ledger_retention_days": 0, "apply": true}"#).await;
    assert_eq!(
        (status, &v["status"]),
        (StatusCode::OK, &"collected".into()),
        "{v}"
    );
    let actions = v["items"][0]["actions"].to_string();
    assert!(actions.contains("ledger rows"), "{actions}");
    assert!(s.store.list("flow/").await.unwrap().is_empty(), "{v}");
    assert!(
        s.store.list("_pgp_runs/flow-1/").await.unwrap().is_empty(),
        "{v}"
    );
    let c = duckdb::Connection::open(s.dir.path().join("w.duckdb")).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM flow.t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2500);
}

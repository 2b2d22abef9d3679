//! The protocol benchmark (`bench/protocol.sh`; ignored by the test run): a run of
//! 10,000 chunks planned and its tasks published for real — PostgreSQL for the key
//! bounds, the GCS emulator for the run record, DuckDB for the run table, the Pub/Sub
//! emulator for the tasks — against the floor of publishing 10,000 messages of the same
//! size with the same publisher in the same run; then, from the simulation, the run
//! state read and statements issued per loader event at 10 and 10,000 chunks.

use pgp::clock::{RandomIds, SystemClock};
use pgp::protocol::plan::plan_step;
use pgp::protocol::Parts;
use pgp::queue::{Outgoing, TaskQueue};
use pgp::source::PgConnector;
use pgp_e2e::cloud::{Admin, Emulators, BUCKET, PROJECT};
use pgp_e2e::{write_manifest, Pg};
use std::sync::Arc;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/protocol.sh runs it"]
async fn bench_plan_and_publish_10000_chunks() {
    let chunks: u64 = std::env::var("PGP_BENCH_CHUNKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let emu = tokio::task::spawn_blocking(Emulators::get).await.unwrap();
    let admin = Admin::new(emu);
    let db = Pg::get().fresh_db("benchplan").await;
    db.exec(&format!(
        "CREATE TABLE big (id bigint PRIMARY KEY, v text);
         INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, {chunks}) g;"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(
        dir.path(),
        "  big:
    import_db: TEST_DB
    export_schema: 'benchplan'
    export_table: 'big'
    export_table_primary_key: id
    import_query: SELECT id, v FROM big
",
    );
    let manifest = pgp::manifest::Manifest::from_file(&manifest).unwrap();
    let topic_plan = format!("benchplan-{}", std::process::id());
    let topic_floor = format!("{topic_plan}-floor");
    admin.create_topic(&topic_plan).await;
    admin.create_topic(&topic_floor).await;
    let queue = |t: String| async move {
        Arc::new(
            pgp_functions::queue::PubSubQueue::connect(PROJECT, &t, Some(&emu.pubsub_url()))
                .await
                .unwrap(),
        ) as Arc<dyn TaskQueue>
    };
    let store: Arc<dyn pgp::storage::ObjectStore> = Arc::new(
        pgp::storage::GcsStore::connect(BUCKET, Some(&emu.gcs_url()))
            .await
            .unwrap(),
    );
    let wh = pgp::warehouse::open(
        &format!("duckdb://{}", dir.path().join("w.duckdb").display()),
        store.clone(),
    )
    .unwrap();
    let env: Arc<dyn pgp::params::Env + Send + Sync> = Arc::new(db.env());
    let parts = Parts {
        store,
        warehouse: Some(wh),
        sources: Arc::new(PgConnector { env: env.clone() }),
        queue: Some(queue(topic_plan.clone()).await),
        clock: Arc::new(SystemClock::default()),
        ids: Arc::new(RandomIds),
        env,
    };
    let mut opts = pgp::run::RunOptions::new(pgp::plan::LoadType::Backfill, chrono::Utc::now());
    opts.run_id = format!("bench-{}", std::process::id());
    opts.chunk_rows = Some(1);

    let started = Instant::now();
    let report = plan_step(&parts, &manifest, &opts, false).await.unwrap();
    let plan_seconds = started.elapsed().as_secs_f64();
    let tasks = &report.tables[0].tasks;
    assert_eq!(tasks.len() as u64, chunks);

    // The floor: the same number of messages, the same size, the same publisher.
    let floor_queue = queue(topic_floor).await;
    let messages: Vec<Outgoing> = tasks.iter().map(|t| t.to_message()).collect();
    let started = Instant::now();
    floor_queue.publish(messages).await.unwrap();
    let floor_seconds = started.elapsed().as_secs_f64();

    let small = pgp::sim::scale::measure(10).await;
    let big = pgp::sim::scale::measure(chunks as u32).await;
    println!(
        "{}",
        serde_json::json!({
            "chunks": chunks,
            "plan_and_publish_seconds": plan_seconds,
            "publish_only_seconds": floor_seconds,
            "ratio_to_publish_only": plan_seconds / floor_seconds,
            "per_chunk_ms": plan_seconds * 1000.0 / chunks as f64,
            "loader_event_at_10_chunks": small.events[0],
            "loader_event_first_of_n": big.events[0],
            "loader_event_last_but_one_of_n": big.events[big.events.len() - 2],
            "publishing_event_at_10_chunks": small.events.last(),
            "publishing_event_at_n_chunks": big.events.last(),
            "run_header_bytes": big.header_bytes,
        })
    );
}

//! What one run costs per event, at any size: the protocol's steps over the
//! simulation's components (no faults), for a run of `n` chunks, counting per loader
//! event the warehouse statements issued and the bytes of run records read. A loader
//! event must cost the same at the first chunk as at the last-but-one, and the final
//! event (the publish) the same whatever `n`.

use super::exec::SimState;
use super::source::SimSource;
use super::store::SimStore;
use super::warehouse::SimWarehouse;
use super::world::{target, SCHEMA};
use super::{SimClock, SimIds};
use crate::format::Compression;
use crate::manifest::Manifest;
use crate::plan::LoadType;
use crate::protocol::extract::extract_step;
use crate::protocol::load::{load_step, LoadOutcome};
use crate::protocol::plan::plan_step;
use crate::protocol::publish::Finished;
use crate::protocol::Parts;
use crate::queue::MemoryQueue;
use crate::run::RunOptions;
use crate::warehouse::Warehouse;
use std::sync::Arc;
use std::time::Instant;

/// The cost of one loader event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EventCost {
    pub statements: u64,
    pub record_bytes: u64,
}

/// A run of `chunks` chunks, measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScaleReport {
    pub chunks: u32,
    /// Seconds to plan the run and publish its chunk tasks (in-memory queue).
    pub plan_seconds: f64,
    /// Seconds for all the extraction and loading steps.
    pub load_seconds: f64,
    pub tasks: usize,
    /// Bytes of the run header (what every extractor and loader reads).
    pub header_bytes: u64,
    /// Per loader event, in chunk order; the last one publishes.
    pub events: Vec<EventCost>,
    pub published_rows: u64,
}

/// Run one table of `chunks` one-row chunks through the steps, one event at a time.
pub async fn measure(chunks: u32) -> ScaleReport {
    let sim = SimState::new(1);
    let store = SimStore::new(sim.clone());
    let wh = SimWarehouse::new(sim.clone(), store.clone());
    let source = SimSource::new(sim.clone());
    source.add(
        "SELECT id, v FROM big",
        (1..=chunks as i64)
            .map(|i| (i, format!("value {i}")))
            .collect(),
    );
    let yaml = format!(
        "connection_info:\n  database: D\n  host: H\n  pass: P\n  port: PORT\n  user: U\ntables:\n  big:\n    import_db: SIM\n    import_query: SELECT id, v FROM big\n    export_schema: {SCHEMA}\n    export_table: big\n    export_table_primary_key: id\n"
    );
    let manifest = Manifest::parse(std::path::Path::new("scale.yaml"), &yaml).unwrap();
    let queue = Arc::new(MemoryQueue::default());
    let parts = Parts {
        store: Arc::new(store.clone()),
        warehouse: Some(Arc::new(wh.clone())),
        sources: Arc::new(source),
        queue: Some(queue.clone()),
        clock: Arc::new(SimClock(sim.clone())),
        ids: Arc::new(SimIds(sim.clone())),
        env: Arc::new(std::collections::BTreeMap::<String, String>::new()),
    };
    let mut opts = RunOptions::new(LoadType::Backfill, parts.clock.now());
    opts.run_id = "scale".into();
    opts.chunk_rows = Some(1);
    opts.compression = Compression::None;

    let started = Instant::now();
    let report = plan_step(&parts, &manifest, &opts, false).await.unwrap();
    let plan_seconds = started.elapsed().as_secs_f64();
    let header = report.tables[0].header.clone().expect("the table loads");
    assert_eq!(header.chunks, chunks, "one chunk per row");
    let header_bytes =
        serde_json::to_vec_pretty(&crate::protocol::RunFile::Run(Box::new(header.clone())))
            .unwrap()
            .len() as u64;
    let tasks = queue.take();

    let started = Instant::now();
    let mut events = Vec::with_capacity(tasks.len());
    let mut published_rows = 0;
    for t in &tasks {
        let task: crate::protocol::ChunkTask = serde_json::from_slice(&t.data).unwrap();
        let out = extract_step(&parts, &task, &|_, _| {}).await.unwrap();
        let (s0, b0) = (wh.statements(), store.record_bytes_read());
        let loaded = load_step(&parts, out.object()).await.unwrap();
        events.push(EventCost {
            statements: wh.statements() - s0,
            record_bytes: store.record_bytes_read() - b0,
        });
        if let LoadOutcome::Finished(Finished::Published { rows }) = loaded {
            published_rows = rows;
        }
    }
    let load_seconds = started.elapsed().as_secs_f64();
    assert_eq!(wh.row_count(&target("big")).await.unwrap(), chunks as u64);
    ScaleReport {
        chunks,
        plan_seconds,
        load_seconds,
        tasks: tasks.len(),
        header_bytes,
        events,
        published_rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_loader_event_costs_the_same_at_the_first_and_the_last_of_10000_chunks() {
        let small = measure(10).await;
        let big = measure(10_000).await;
        assert_eq!(big.tasks, 10_000);
        assert_eq!(big.published_rows, 10_000);
        let loading = &big.events[..big.events.len() - 1];
        assert!(
            loading.iter().all(|e| *e == loading[0]),
            "loader events differ: first {:?}, others {:?}",
            loading[0],
            loading.iter().find(|e| **e != loading[0])
        );
        // The same statements at 10 and 10,000 chunks; the header differs by the digits
        // of the chunk count alone.
        let (a, b) = (small.events[0], loading[0]);
        assert_eq!(
            a.statements, b.statements,
            "the same at 10 and 10,000 chunks"
        );
        assert!(b.record_bytes - a.record_bytes <= 4, "{a:?} vs {b:?}");
        let (a, b) = (*small.events.last().unwrap(), *big.events.last().unwrap());
        assert_eq!(
            a.statements, b.statements,
            "the publishing event issues as many statements at 10 as at 10,000 chunks"
        );
        assert!(b.record_bytes - a.record_bytes <= 4, "{a:?} vs {b:?}");
        println!(
            "10,000 chunks: plan+publish {:.3} s, header {} B, loader event {:?}, publishing event {:?}",
            big.plan_seconds,
            big.header_bytes,
            loading[0],
            big.events.last().unwrap()
        );
    }
}

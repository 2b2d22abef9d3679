//! What a run costs per event as it grows: planning and publishing the tasks of a
//! 10,000-chunk run, and the run state read and warehouse statements issued per loader
//! event, counted by running the protocol's real steps over the simulation's
//! components (`pgp::sim::scale`). `cargo bench -p pgp-e2e --bench protocol`.
//!
//! The figures are counts and in-process times: the network hops of a deployment
//! (Pub/Sub, GCS, Snowflake round trips) are not in them; `bench/services.sh` measures
//! the services end to end on the emulators.

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for chunks in [10u32, 1_000, 10_000] {
        let r = rt.block_on(pgp::sim::scale::measure(chunks));
        let loading = &r.events[..r.events.len() - 1];
        let first = loading.first().copied();
        let last = loading.last().copied();
        println!(
            "{{\"chunks\": {chunks}, \"plan_and_publish_seconds\": {:.3}, \"per_task_plan_us\": {:.1}, \
             \"steps_seconds\": {:.3}, \"header_bytes\": {}, \"first_loader_event\": {}, \
             \"last_loading_event\": {}, \"publishing_event\": {}}}",
            r.plan_seconds,
            r.plan_seconds * 1e6 / chunks as f64,
            r.load_seconds,
            r.header_bytes,
            serde_json::to_string(&first).unwrap(),
            serde_json::to_string(&last).unwrap(),
            serde_json::to_string(&r.events.last()).unwrap(),
        );
    }
}

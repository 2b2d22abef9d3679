//! The cloud side of the end-to-end tests: the official Pub/Sub emulator, the GCS
//! emulator (`scripts/gcs-emulator.py`, see its header for the three fidelity fixes),
//! and the three service binaries, all on loopback ports, each stopped by its PID.
//!
//! No emulator emits GCS object-finalize events, so [`FinalizeFeeder`] produces them in
//! the two documented formats: it polls the bucket listing and, for each new object
//! generation, publishes a GCS Pub/Sub notification (`OBJECT_FINALIZE`, `JSON_API_V1`)
//! to a topic pushed to the loader, and posts an Eventarc CloudEvent (binary mode)
//! straight to the loader: every finalize is delivered at least twice, in shuffled
//! order, as at-least-once delivery allows.

use base64::Engine;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const PROJECT: &str = "pgp-test";
pub const BUCKET: &str = "postgres_pipeline";
pub const PUBSUB_EMULATOR: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process whose output lines are kept; killed when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Start `cmd`; stdout and stderr lines are collected (and echoed when
    /// `PGP_TEST_ECHO` is set). The child dies with the test process.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let echo = std::env::var_os("PGP_TEST_ECHO").is_some();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (lines, name) = (lines.clone(), name.to_string());
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("[{name}] {l}");
                    }
                    lines.lock().unwrap().push(l);
                }
            });
        }
        Proc {
            name: name.to_string(),
            child,
            lines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait until a line contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{}: no line with {needle:?} after {timeout:?}; output:\n{}",
            self.name,
            self.lines.lock().unwrap().join("\n")
        );
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// SIGKILL, no goodbye (a crashed instance).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The emulators, started once per test process and shared by its tests (each test
/// uses its own topics, subscriptions and object prefixes).
pub struct Emulators {
    pub pubsub_port: u16,
    pub gcs_port: u16,
    pub gcs_dir: PathBuf,
    _procs: Vec<Proc>,
}

static EMULATORS: OnceLock<Emulators> = OnceLock::new();

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

impl Emulators {
    pub fn get() -> &'static Emulators {
        EMULATORS.get_or_init(|| {
            // Started from a thread that outlives every test, so the parent-death
            // signal only fires when the test process ends.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                tx.send(Emulators::start()).unwrap();
                loop {
                    std::thread::park();
                }
            });
            rx.recv().unwrap()
        })
    }

    fn start() -> Emulators {
        assert!(
            Path::new(PUBSUB_EMULATOR).exists(),
            "the Pub/Sub emulator is not installed at {PUBSUB_EMULATOR} \
             (Debian package google-cloud-cli-pubsub-emulator; .ci/run installs it)"
        );
        let pubsub_port = free_port();
        let mut cmd = Command::new(PUBSUB_EMULATOR);
        cmd.args(["--host=127.0.0.1", &format!("--port={pubsub_port}")]);
        let pubsub = Proc::spawn("pubsub-emulator", cmd);

        let gcs_port = free_port();
        let gcs_dir =
            std::env::temp_dir().join(format!("pgp-gcs-{}-{gcs_port}", std::process::id()));
        std::fs::create_dir_all(&gcs_dir).unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg(repo_root().join("scripts/gcs-emulator.py"))
            .arg("-d")
            .arg(&gcs_dir)
            .args([
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                &gcs_port.to_string(),
            ])
            .args(["--default-bucket", BUCKET]);
        let gcs = Proc::spawn("gcs-emulator", cmd);

        pubsub.wait_for("Server started", Duration::from_secs(60));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", gcs_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "GCS emulator did not start (is gcp-storage-emulator installed?):\n{}",
                gcs.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Emulators {
            pubsub_port,
            gcs_port,
            gcs_dir,
            _procs: vec![pubsub, gcs],
        }
    }

    pub fn pubsub_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.pubsub_port)
    }

    pub fn gcs_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gcs_port)
    }
}

/// REST calls to the emulators (what `gcloud` and Airflow's operators do).
#[derive(Clone)]
pub struct Admin {
    pub http: reqwest::Client,
    pub pubsub: String,
    pub gcs: String,
}

impl Admin {
    pub fn new(e: &Emulators) -> Admin {
        pgp::storage::install_crypto();
        Admin {
            http: reqwest::Client::new(),
            pubsub: e.pubsub_url(),
            gcs: e.gcs_url(),
        }
    }

    async fn put(&self, path: &str, body: serde_json::Value) {
        let r = self
            .http
            .put(format!("{}/v1/projects/{PROJECT}/{path}", self.pubsub))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert!(
            status.is_success(),
            "PUT {path}: {status} {}",
            r.text().await.unwrap()
        );
    }

    pub async fn create_topic(&self, topic: &str) {
        self.put(&format!("topics/{topic}"), serde_json::json!({}))
            .await;
    }

    /// A push subscription delivering `topic` to `endpoint`.
    pub async fn push_subscription(&self, name: &str, topic: &str, endpoint: &str) {
        self.put(
            &format!("subscriptions/{name}"),
            serde_json::json!({
                "topic": format!("projects/{PROJECT}/topics/{topic}"),
                "pushConfig": {"pushEndpoint": endpoint},
                "ackDeadlineSeconds": 600,
                "retryPolicy": {"minimumBackoff": "1s", "maximumBackoff": "5s"},
            }),
        )
        .await;
    }

    /// Publish one message (REST, as `gcloud pubsub topics publish` does).
    pub async fn publish(
        &self,
        topic: &str,
        data: &[u8],
        attributes: &BTreeMap<String, String>,
    ) -> String {
        let body = serde_json::json!({"messages": [{
            "data": base64::engine::general_purpose::STANDARD.encode(data),
            "attributes": attributes,
        }]});
        let r = self
            .http
            .post(format!(
                "{}/v1/projects/{PROJECT}/topics/{topic}:publish",
                self.pubsub
            ))
            .json(&body)
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        v["messageIds"][0].as_str().unwrap_or_default().to_string()
    }

    /// Object resources under `prefix` (the emulator does not paginate).
    pub async fn list(&self, prefix: &str) -> Vec<serde_json::Value> {
        let r = self
            .http
            .get(format!("{}/storage/v1/b/{BUCKET}/o", self.gcs))
            .query(&[("prefix", prefix)])
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    }
}

/// One of the service binaries, built next to the test executable.
pub fn service_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built; run the whole workspace's tests (`cargo test --workspace` builds it)",
        p.display()
    );
    p
}

/// Start a service binary on `port` with `env`; waits until it listens.
pub fn start_service(name: &str, port: u16, env: &BTreeMap<String, String>) -> Proc {
    let mut cmd = Command::new(service_binary(name));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PORT", port.to_string())
        .env("PGP_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let p = Proc::spawn(name, cmd);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{name} did not listen on {port}:\n{}",
            p.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

/// Produces GCS finalize events for new objects under `prefix` (see the module doc).
pub struct FinalizeFeeder {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub delivered: Arc<std::sync::atomic::AtomicUsize>,
    /// Objects whose name contains one of these are never announced (a lost event).
    pub lose: Arc<Mutex<Vec<String>>>,
}

impl FinalizeFeeder {
    pub fn start(admin: Admin, prefix: String, topic: String, loader: String) -> FinalizeFeeder {
        FinalizeFeeder::to_loaders(admin, prefix, topic, vec![loader])
    }

    /// Announce every new object to `topic` (pushed to one loader) and, at the same
    /// moment, as a CloudEvent to every loader in `loaders`.
    pub fn to_loaders(
        admin: Admin,
        prefix: String,
        topic: String,
        loaders: Vec<String>,
    ) -> FinalizeFeeder {
        let lose: Arc<Mutex<Vec<String>>> = Arc::default();
        let lose2 = lose.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let delivered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stop2, delivered2) = (stop.clone(), delivered.clone());
        let task = tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            let mut n = 0u64;
            while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
                let mut fresh = Vec::new();
                for o in admin.list(&prefix).await {
                    let name = o["name"].as_str().unwrap_or("").to_string();
                    let id = format!("{name}#{}", o["generation"]);
                    if seen.insert(id) {
                        let lost = lose2
                            .lock()
                            .unwrap()
                            .iter()
                            .any(|l| name.contains(l.as_str()));
                        if !lost {
                            fresh.push(o);
                        }
                    }
                }
                // Shuffle (a cheap deterministic permutation is enough for reordering).
                fresh.reverse();
                let mut sends = Vec::new();
                for o in fresh {
                    n += 1;
                    let attrs: BTreeMap<String, String> = [
                        ("eventType", "OBJECT_FINALIZE"),
                        ("payloadFormat", "JSON_API_V1"),
                        ("bucketId", BUCKET),
                        ("objectId", o["name"].as_str().unwrap_or("")),
                    ]
                    .into_iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect();
                    let (admin, topic, loaders) = (admin.clone(), topic.clone(), loaders.clone());
                    let delivered = delivered2.clone();
                    sends.push(async move {
                        let posts = loaders
                            .iter()
                            .map(|l| post_cloudevent(&admin.http, l, &o, n));
                        let body = o.to_string();
                        futures::join!(
                            admin.publish(&topic, body.as_bytes(), &attrs),
                            futures::future::join_all(posts)
                        );
                        delivered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    });
                }
                futures::future::join_all(sends).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        FinalizeFeeder {
            stop,
            task: Some(task),
            delivered,
            lose,
        }
    }
}

impl Drop for FinalizeFeeder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// POST a `google.cloud.storage.object.v1.finalized` CloudEvent in binary mode, as
/// Eventarc does; retried like Eventarc while the loader answers non-2xx.
pub async fn post_cloudevent(
    http: &reqwest::Client,
    loader: &str,
    object: &serde_json::Value,
    n: u64,
) {
    for attempt in 0..60 {
        let r = http
            .post(loader)
            .header("ce-specversion", "1.0")
            .header("ce-id", format!("finalize-{n}-{}", object["generation"]))
            .header(
                "ce-source",
                format!("//storage.googleapis.com/projects/_/buckets/{BUCKET}"),
            )
            .header("ce-type", "google.cloud.storage.object.v1.finalized")
            .header(
                "ce-subject",
                format!("objects/{}", object["name"].as_str().unwrap_or("")),
            )
            .header("ce-time", chrono::Utc::now().to_rfc3339())
            .header("content-type", "application/json")
            .body(object.to_string())
            .send()
            .await;
        if matches!(&r, Ok(r) if r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1).min(5))).await;
    }
}

/// fakesnow (PyPI), the Snowflake emulator: one per test process.
pub struct FakeSnow {
    pub port: u16,
    proc_: Proc,
}

static FAKESNOW: OnceLock<FakeSnow> = OnceLock::new();

impl FakeSnow {
    pub fn get() -> &'static FakeSnow {
        FAKESNOW.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let port = free_port();
                let mut cmd = Command::new("python3");
                cmd.args([
                    "-m",
                    "fakesnow",
                    "-s",
                    "-p",
                    &port.to_string(),
                    "--host",
                    "127.0.0.1",
                ]);
                let p = Proc::spawn("fakesnow", cmd);
                let deadline = Instant::now() + Duration::from_secs(60);
                while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                    assert!(
                        Instant::now() < deadline,
                        "fakesnow did not start (pip install 'fakesnow[server]==0.12.1' \
                         'snowflake-connector-python==4.8.1'):\n{}",
                        p.output()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                tx.send(FakeSnow { port, proc_: p }).unwrap();
                loop {
                    std::thread::park();
                }
            });
            rx.recv().unwrap()
        })
    }

    /// The emulator's log so far.
    pub fn output(&self) -> String {
        self.proc_.output()
    }

    /// A `PGP_WAREHOUSE_URL` for database `db` on the emulator, with the emulator
    /// fallbacks (`copy=staged`, `swap=rename`, `arrays=variant`).
    pub fn url(&self, db: &str) -> String {
        format!(
            "snowflake://pgp@emulator/{db}?host=127.0.0.1&port={}&protocol=http&copy=staged&swap=rename&arrays=variant",
            self.port
        )
    }
}

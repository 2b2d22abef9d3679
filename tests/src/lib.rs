//! Test harness: a real PostgreSQL server started by the tests themselves.
//!
//! One server per test process, started on first use from the system's `initdb` and
//! `postgres` (PostgreSQL 15 on Debian: `/usr/lib/postgresql/<v>/bin`, or `PG_BIN`), in
//! a temporary directory, on a free loopback port. When the tests run as root the
//! server runs as the `postgres` user. The server is the child of a thread that lives
//! as long as the process, with a parent-death signal, so it stops when the test
//! process ends however it ends. Each test gets its own database.

pub mod cloud;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The password tests configure; trust auth accepts it, and tests assert it never
/// appears in any output.
pub const PASSWORD: &str = "s3cr3t-pass-do-not-print";

/// A running PostgreSQL server.
pub struct Pg {
    pub port: u16,
    pub dir: PathBuf,
    pub bin: PathBuf,
    /// The CA that signed the server's certificate (for `localhost` and
    /// `127.0.0.1`), when `openssl` was there to make one; the server then has TLS on.
    pub ca_cert: Option<PathBuf>,
}

fn openssl(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Make a CA and a server certificate signed by it in `dir`; `None` without openssl.
fn make_certs(dir: &Path, ids: Option<(u32, u32)>) -> Option<PathBuf> {
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .ok()?;
    let ok = openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "3650",
            "-subj",
            "/CN=pgp-test-ca",
        ],
    ) && openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ) && openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "3650",
            "-extfile",
            "san.ext",
        ],
    );
    if !ok {
        println!("note: openssl is not available; the test server runs without TLS");
        return None;
    }
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).ok()?;
    if let Some((u, g)) = ids {
        for f in ["server.key", "server.crt"] {
            std::os::unix::fs::chown(dir.join(f), Some(u), Some(g)).ok()?;
        }
    }
    Some(dir.join("ca.crt"))
}

static PG: OnceLock<Pg> = OnceLock::new();
static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

fn pg_bin() -> PathBuf {
    if let Ok(b) = std::env::var("PG_BIN") {
        return PathBuf::from(b);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").exists());
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL server binaries: apt-get install postgresql, or set PG_BIN")
}

fn postgres_ids() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a postgres user (apt-get install postgresql)")
    };
    Some((id("-u"), id("-g")))
}

fn as_pg_user(cmd: &mut Command, ids: Option<(u32, u32)>) -> &mut Command {
    if let Some((u, g)) = ids {
        cmd.uid(u).gid(g);
    }
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Remove data directories left by earlier test processes that are gone.
fn clean_stale() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(pid) = name
            .strip_prefix("pgp-test-pg-")
            .and_then(|r| r.split('-').next())
        {
            if let Ok(pid) = pid.parse::<i32>() {
                if unsafe { libc::kill(pid, 0) } != 0 {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

impl Pg {
    /// The process's server, started on first use.
    pub fn get() -> &'static Pg {
        PG.get_or_init(Pg::start)
    }

    fn start() -> Pg {
        clean_stale();
        let bin = pg_bin();
        let ids = postgres_ids();
        let dir = std::env::temp_dir().join(format!(
            "pgp-test-pg-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some((u, g)) = ids {
            std::os::unix::fs::chown(&dir, Some(u), Some(g)).unwrap();
        }
        let data = dir.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        let out = as_pg_user(&mut initdb, ids)
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let ca_cert = make_certs(&dir, ids);
        let tls_args: Vec<String> = match ca_cert {
            Some(_) => vec![
                "-c".into(),
                "ssl=on".into(),
                "-c".into(),
                format!("ssl_cert_file={}", dir.join("server.crt").display()),
                "-c".into(),
                format!("ssl_key_file={}", dir.join("server.key").display()),
            ],
            None => Vec::new(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let (bin2, dir2) = (bin.clone(), dir.clone());
        // The server's parent thread never ends before the process does.
        std::thread::spawn(move || {
            let mut cmd = Command::new(bin2.join("postgres"));
            as_pg_user(&mut cmd, ids)
                .args([
                    "-D",
                    data.to_str().unwrap(),
                    "-p",
                    &port.to_string(),
                    "-k",
                    dir2.to_str().unwrap(),
                ])
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                ])
                .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
                .args(&tls_args)
                .stdout(Stdio::null())
                .stderr(
                    std::fs::File::create(dir2.join("server.log"))
                        .map(Stdio::from)
                        .unwrap_or(Stdio::null()),
                );
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                    Ok(())
                });
            }
            let mut child = cmd.spawn().expect("start postgres");
            tx.send(child.id()).unwrap();
            // Reap the server if it ever stops; it normally lives until the process ends.
            let _ = child.wait();
        });
        let _pid = rx.recv().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start; see {}/server.log",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Pg {
            port,
            dir,
            bin,
            ca_cert,
        }
    }

    /// A connection string for psql (no password needed: trust).
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Create a fresh database for one test.
    pub async fn fresh_db(&self, prefix: &str) -> TestDb {
        let n = DB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}_{n}");
        let admin = self.client("postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let client = self.client(&name).await;
        TestDb {
            name,
            port: self.port,
            client,
        }
    }

    /// A client on a database.
    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname={db}",
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("connect to the test server");
        tokio::spawn(conn);
        c
    }
}

/// A database of the test server.
pub struct TestDb {
    pub name: String,
    pub port: u16,
    pub client: tokio_postgres::Client,
}

impl TestDb {
    /// The environment a manifest's `connection_info` (see [`CONNECTION_INFO`]) reads.
    pub fn env(&self) -> BTreeMap<String, String> {
        [
            ("TEST_DB_HOST", "127.0.0.1".to_string()),
            ("TEST_DB_PORT", self.port.to_string()),
            ("TEST_DB_USER", "postgres".to_string()),
            ("TEST_DB_NAME", self.name.clone()),
            ("TEST_DB_PASS", PASSWORD.to_string()),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b))
        .collect()
    }

    pub async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
}

/// The `connection_info` block tests' manifests use.
pub const CONNECTION_INFO: &str = "connection_info:
  database: TEST_DB_NAME
  host: TEST_DB_HOST
  pass: TEST_DB_PASS
  port: TEST_DB_PORT
  user: TEST_DB_USER
";

/// Write a manifest made of [`CONNECTION_INFO`] and `tables` (YAML under `tables:`).
pub fn write_manifest(dir: &Path, tables: &str) -> PathBuf {
    let p = dir.join("manifest.yaml");
    std::fs::write(&p, format!("{CONNECTION_INFO}tables:\n{tables}")).unwrap();
    p
}

/// Where the team kit's fixtures are (`../shared/fixtures` beside the repo), if present.
pub fn fixtures_dir() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let p = repo
        .parent()?
        .join("shared")
        .join("fixtures")
        .join("gitlab");
    p.is_dir().then_some(p)
}

/// The files below `dir`, recursively, leaving out hidden ones (the local store's
/// metadata folder and its temporary files); none when `dir` does not exist.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

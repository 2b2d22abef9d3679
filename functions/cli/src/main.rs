//! `pgp`: run GitLab `postgres_pipeline` manifests on one machine — PostgreSQL to local
//! files to DuckDB — with the same library the Cloud Run services use.
//!
//! This file is the edge: flags and environment in, a summary out, `anyhow` for errors
//! that end the process. Exit codes: 0 all tables fine, 1 some table failed, 2 the run
//! could not start (bad manifest, bad flags, unreachable warehouse).

mod progress;

use anyhow::Context;
use chrono::Utc;
use clap::{Args, Parser, Subcommand, ValueEnum};
use pgp::format::Compression;
use pgp::manifest::Manifest;
use pgp::params::{parse_instant, ProcessEnv, RunParams};
use pgp::plan::LoadType;
use pgp::run::{Outcome, Pipeline, RunOptions, RunReport};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "pgp",
    version,
    about = "Load PostgreSQL tables into a warehouse from GitLab postgres_pipeline manifests."
)]
#[command(
    after_help = "Environment:\n  PGP_STORAGE_URL    where chunks are staged (file:///abs/dir; default ./pgp-data/objects)\n  PGP_WAREHOUSE_URL  the warehouse (duckdb:///abs/file.duckdb; default ./pgp-data/warehouse.duckdb)\n  PGP_LOG            log filter (default info)\n  The manifest's connection_info names the variables holding the source connection.\n  EXECUTION_DATE, HOURS, DAYS, LAST_LOADED, TASK_INSTANCE fill flags left unset."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Extract and load the manifest's tables.
    Tap {
        #[command(flatten)]
        run: RunArgs,
        /// Keep staged objects after a successful load.
        #[arg(long)]
        keep_objects: bool,
        /// Staged object compression: gzip, zstd or none. Default: none when staging to local
        /// files (the embedded warehouse reads them in place; measured 14 % faster),
        /// gzip for gs:// (Snowflake's recommended compressed files).
        #[arg(long)]
        compression: Option<Compression>,
        /// Run id (names objects, stages, ledger entries); default: the start time.
        #[arg(long)]
        run_id: Option<String>,
    },
    /// Extract the tables a run would load into the object store, and stop there
    /// (objects are kept; nothing is loaded). For inspection and benchmarks.
    Extract {
        #[command(flatten)]
        run: RunArgs,
        /// Staged object compression: gzip, zstd or none.
        #[arg(long, default_value = "gzip")]
        compression: Compression,
        /// Run id (names the objects); default: the start time.
        #[arg(long)]
        run_id: Option<String>,
    },
    /// Show what a run would do per table, touching nothing.
    Plan {
        #[command(flatten)]
        run: RunArgs,
    },
    /// What every recent run is doing: chunks planned / extracted / loaded, rows,
    /// state, last error, age. Read from the same records the services use.
    Runs {
        /// Only runs active within this long (e.g. 90m, 24h, 7d); default: all.
        #[arg(long, value_parser = parse_age)]
        since: Option<std::time::Duration>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Compare published targets with their source now, range by range over the key:
    /// counts and per-column measures computed on both sides, narrowed down to the
    /// differing keys. An SCD target is compared by its latest snapshot, an incremental
    /// one by the latest version of each key. Exit 0: every target equals its source;
    /// 1: some target differs; 2: some table could not be compared.
    Verify {
        /// The manifest (GitLab's postgres_pipeline format).
        manifest: PathBuf,
        /// Only this manifest table (repeatable).
        #[arg(long = "table")]
        tables: Vec<String>,
        /// A placeholder value, NAME=VALUE (repeatable).
        #[arg(long = "var", value_parser = parse_var)]
        vars: Vec<(String, String)>,
        /// A differing range with at most this many source rows is compared key by key.
        #[arg(long, default_value_t = 256)]
        leaf_rows: u64,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Query what was loaded: one read-only SQL statement against the embedded DuckDB
    /// warehouse, printed as tab-separated text with a header (NULL prints as NULL).
    /// (A Snowflake warehouse is queried with Snowflake's own tools.)
    Sql {
        /// The statement, e.g. "SELECT count(*) FROM demo.projects".
        query: String,
    },
    /// Remove what settled runs left behind (load and swap tables, staged objects, run
    /// records) and trim old ledger rows. Says what it would do unless --apply.
    Gc {
        /// Runs idle this long are no longer in flight (e.g. 7d).
        #[arg(long, value_parser = parse_age, default_value = "7d")]
        retention: std::time::Duration,
        /// Ledger rows of runs settled this long are deleted.
        #[arg(long, value_parser = parse_age, default_value = "30d")]
        ledger_retention: std::time::Duration,
        /// Act (default: a dry run).
        #[arg(long)]
        apply: bool,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

/// A DuckDB value as text for `pgp sql` (values of a wrapped query are text already;
/// this renders those of statements that could not be wrapped).
fn cell(v: duckdb::types::ValueRef<'_>) -> String {
    use duckdb::types::ValueRef as V;
    match v {
        V::Boolean(b) => b.to_string(),
        V::TinyInt(n) => n.to_string(),
        V::SmallInt(n) => n.to_string(),
        V::Int(n) => n.to_string(),
        V::BigInt(n) => n.to_string(),
        V::HugeInt(n) => n.to_string(),
        V::UTinyInt(n) => n.to_string(),
        V::USmallInt(n) => n.to_string(),
        V::UInt(n) => n.to_string(),
        V::UBigInt(n) => n.to_string(),
        V::Float(n) => n.to_string(),
        V::Double(n) => n.to_string(),
        V::Text(t) => String::from_utf8_lossy(t).into_owned(),
        other => format!("{:?}", other.to_owned()),
    }
}

/// `90s`, `90m`, `24h`, `7d`.
fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (s, m, h, d), e.g. 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(n * secs))
}

/// `3d 4h`-style age for people.
fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[derive(Args)]
struct RunArgs {
    /// The manifest (GitLab's postgres_pipeline format).
    manifest: PathBuf,
    /// scd | incremental | backfill (alias sync) | test.
    #[arg(long)]
    load_type: LoadType,
    /// Only this manifest table (repeatable).
    #[arg(long = "table")]
    tables: Vec<String>,
    /// End of the window (RFC 3339 or YYYY-MM-DD); default: now, or EXECUTION_DATE.
    #[arg(long)]
    execution_date: Option<String>,
    /// Window length in hours.
    #[arg(long, conflicts_with = "days")]
    hours: Option<u32>,
    /// Window length in days.
    #[arg(long)]
    days: Option<u32>,
    /// The window end the previous run reached; the window restarts 30 minutes before.
    #[arg(long)]
    last_loaded: Option<String>,
    /// Value of `_task_instance` (tables with advanced_metadata: true).
    #[arg(long)]
    task_instance: Option<String>,
    /// A placeholder value, NAME=VALUE (repeatable).
    #[arg(long = "var", value_parser = parse_var)]
    vars: Vec<(String, String)>,
    /// Rows per chunk of a re-sync (default: sized for ~100-250 MB gzip objects).
    #[arg(long)]
    chunk_rows: Option<u64>,
    /// Row cap of test loads.
    #[arg(long, default_value_t = 1_000_000)]
    test_rows: u64,
    /// Chunks extracted at once (one PostgreSQL connection each); loads stay in order.
    #[arg(long, default_value_t = 2)]
    parallel: usize,
    /// Output format of the summary or plan.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected NAME=VALUE")?;
    if k.is_empty() {
        return Err("empty NAME".into());
    }
    Ok((k.to_string(), v.to_string()))
}

fn params(a: &RunArgs) -> anyhow::Result<RunParams> {
    let p = RunParams {
        execution_date: a.execution_date.as_deref().map(parse_instant).transpose()?,
        hours: a.hours,
        days: a.days,
        last_loaded: a.last_loaded.as_deref().map(parse_instant).transpose()?,
        task_instance: a.task_instance.clone(),
        vars: a.vars.iter().cloned().collect(),
    };
    Ok(p.with_env_fallback(&ProcessEnv)?)
}

fn default_url(env: &str, scheme: &str, rel: &str) -> anyhow::Result<String> {
    if let Ok(v) = std::env::var(env) {
        if !v.is_empty() {
            return Ok(v);
        }
    }
    let cwd = std::env::current_dir().context("current directory")?;
    Ok(format!("{scheme}{}", cwd.join(rel).display()))
}

/// `PGP_WAREHOUSE_URL`, or the embedded default `./pgp-data/warehouse.duckdb`.
fn warehouse_url() -> anyhow::Result<String> {
    default_url(
        "PGP_WAREHOUSE_URL",
        "duckdb://",
        "pgp-data/warehouse.duckdb",
    )
}

async fn pipeline(read_only: bool) -> anyhow::Result<Pipeline> {
    let storage_url = default_url("PGP_STORAGE_URL", "file://", "pgp-data/objects")?;
    let warehouse_url = warehouse_url()?;
    let gcs_endpoint = std::env::var("PGP_GCS_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty());
    let store = if read_only {
        pgp::storage::open_existing(&storage_url, gcs_endpoint.as_deref()).await?
    } else {
        pgp::storage::open(&storage_url, gcs_endpoint.as_deref()).await?
    };
    let warehouse = if read_only {
        pgp::warehouse::open_read_only(&warehouse_url, store.clone())?
    } else {
        pgp::warehouse::open(&warehouse_url, store.clone())?
    };
    Ok(Pipeline {
        store,
        warehouse,
        env: Arc::new(ProcessEnv),
    })
}

fn options(a: &RunArgs) -> anyhow::Result<RunOptions> {
    let mut o = RunOptions::new(a.load_type, Utc::now());
    o.tables = a.tables.clone();
    o.params = params(a)?;
    o.chunk_rows = a.chunk_rows;
    o.test_rows = a.test_rows;
    o.parallel = a.parallel;
    Ok(o)
}

fn load_manifest(p: &Path) -> anyhow::Result<Manifest> {
    Ok(Manifest::from_file(p)?)
}

async fn main_inner(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Plan { run } => {
            let manifest = load_manifest(&run.manifest)?;
            let opts = options(&run)?;
            let p = pipeline(true).await?;
            let (plans, window) = p.plan(&manifest, &opts).await?;
            if run.format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&plans)?);
            } else {
                if let Some(w) = window {
                    println!("window: {} .. {}", w.begin, w.end);
                }
                for pl in &plans {
                    println!(
                        "{:<40} {:<12} {:<9} {:<5} {:<40} chunks={} ({}) {}",
                        pl.table,
                        pl.kind.to_string(),
                        format!("{:?}", pl.action).to_lowercase(),
                        format!("{:?}", pl.mode).to_lowercase(),
                        pl.target,
                        pl.chunks.len(),
                        pl.chunking.as_deref().unwrap_or("-"),
                        pl.reason.clone().unwrap_or_default()
                    );
                }
            }
            Ok(0)
        }
        Command::Extract {
            run,
            compression,
            run_id,
        } => tap(run, true, true, Some(compression), run_id).await,
        Command::Sql { query } => {
            let url = warehouse_url()?;
            let Some(rest) = url.strip_prefix("duckdb://") else {
                anyhow::bail!(
                    "pgp sql queries the embedded DuckDB warehouse; PGP_WAREHOUSE_URL is {}",
                    pgp::warehouse::redact(&url)
                );
            };
            let (path, query_string) = rest.split_once('?').unwrap_or((rest, ""));
            let settings = pgp::warehouse::DuckDbSettings::from_query(query_string)?;
            let c = duckdb::Connection::open_with_flags(
                path,
                duckdb::Config::default()
                    .access_mode(duckdb::AccessMode::ReadOnly)?
                    .max_memory(&settings.memory_limit)?,
            )
            .with_context(|| format!("open {path} read-only"))?;
            // Every value in DuckDB's own text (timestamps, decimals, lists); a statement
            // that is not a query (SHOW TABLES, DESCRIBE ...) runs as it is.
            let wrapped = format!("SELECT COLUMNS(*)::VARCHAR FROM ({query})");
            let mut st = match c.prepare(&wrapped) {
                Ok(st) => st,
                Err(_) => c.prepare(&query)?,
            };
            let mut rows = st.query([])?;
            let names: Vec<String> = rows.as_ref().map(|s| s.column_names()).unwrap_or_default();
            println!("{}", names.join("\t"));
            while let Some(r) = rows.next()? {
                let cells: Vec<String> = (0..names.len())
                    .map(|i| match r.get_ref(i) {
                        Ok(duckdb::types::ValueRef::Null) => Ok("NULL".to_string()),
                        Ok(v) => Ok(cell(v)),
                        Err(e) => Err(e),
                    })
                    .collect::<Result<_, _>>()?;
                println!("{}", cells.join("\t"));
            }
            Ok(0)
        }
        Command::Verify {
            manifest,
            tables,
            vars,
            leaf_rows,
            format,
        } => {
            let manifest = load_manifest(&manifest)?;
            let params = RunParams {
                vars: vars.into_iter().collect(),
                ..RunParams::default()
            }
            .with_env_fallback(&ProcessEnv)?;
            let opts = pgp::verify::VerifyOptions {
                tables,
                params,
                leaf_rows: leaf_rows.max(1),
                ..Default::default()
            };
            let p = pipeline(true).await?;
            let connector = pgp::source::PgConnector { env: p.env.clone() };
            let results = pgp::verify::verify(
                &manifest,
                &opts,
                &connector,
                p.env.as_ref(),
                p.warehouse.as_ref(),
            )
            .await?;
            if format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&results)?);
            } else {
                print_verification(&results);
            }
            Ok(pgp::verify::exit_code(&results))
        }
        Command::Runs { since, format } => {
            let p = pipeline(true).await?;
            let runs = pgp::ops::runs(p.store.as_ref(), p.warehouse.as_ref(), since).await?;
            if format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                println!(
                    "{:<28} {:<40} {:<6} {:<10} {:>17} {:>12} {:>6} {:>6}  last error",
                    "run", "target", "mode", "state", "chunks p/x/l/f", "rows", "age", "idle"
                );
                for r in &runs {
                    println!(
                        "{:<28} {:<40} {:<6} {:<10} {:>17} {:>12} {:>6} {:>6}  {}",
                        r.run_id,
                        r.target,
                        r.mode,
                        r.state,
                        format!(
                            "{}/{}/{}/{}",
                            r.chunks_planned, r.chunks_extracted, r.chunks_loaded, r.chunks_failed
                        ),
                        r.rows,
                        age(r.age_seconds),
                        age(r.idle_seconds),
                        r.last_error.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(0)
        }
        Command::Gc {
            retention,
            ledger_retention,
            apply,
            format,
        } => {
            let p = pipeline(false).await?;
            let opts = pgp::ops::GcOptions {
                retention,
                ledger_retention,
                apply,
            };
            let report = pgp::ops::gc(p.store.as_ref(), p.warehouse.as_ref(), opts).await?;
            if format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let verb = if apply {
                    "done"
                } else {
                    "would do (dry run; --apply to act)"
                };
                for item in &report.items {
                    println!(
                        "{} {} ({}, idle {}):",
                        item.run_id,
                        item.target,
                        item.state,
                        age(item.idle_seconds)
                    );
                    for a in &item.actions {
                        println!("  {a}");
                    }
                }
                println!(
                    "{} runs {verb}; {} in flight left alone",
                    report.items.len(),
                    report.in_flight
                );
            }
            Ok(0)
        }
        Command::Tap {
            run,
            keep_objects,
            compression,
            run_id,
        } => tap(run, keep_objects, false, compression, run_id).await,
    }
}

async fn tap(
    run: RunArgs,
    keep_objects: bool,
    extract_only: bool,
    compression: Option<Compression>,
    run_id: Option<String>,
) -> anyhow::Result<i32> {
    let manifest = load_manifest(&run.manifest)?;
    let mut opts = options(&run)?;
    opts.keep_objects = keep_objects;
    opts.extract_only = extract_only;

    if let Some(id) = run_id {
        opts.run_id = id;
    }
    // `extract` plans against the warehouse read-only and only writes objects.
    let p = pipeline(extract_only).await?;
    opts.compression = compression.unwrap_or_else(|| Compression::default_for(&p.store.url()));
    if extract_only {
        // Make sure the store exists (created if local) even though planning was read-only.
        let endpoint = std::env::var("PGP_GCS_ENDPOINT")
            .ok()
            .filter(|v| !v.is_empty());
        pgp::storage::open(&p.store.url(), endpoint.as_deref()).await?;
    }
    p.warehouse.health().await?;
    p.store.health().await?;
    let progress = progress::for_terminal();
    let report = p.run(&manifest, &opts, progress.as_ref()).await?;
    drop(progress);
    if run.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(if report.failures() > 0 { 1 } else { 0 })
}

fn print_verification(results: &[pgp::verify::TableVerification]) {
    use pgp::verify::Verdict;
    for t in results {
        let verdict = match t.verdict {
            Verdict::Equal => "equal",
            Verdict::Differs => "DIFFERS",
            Verdict::Failed => "NOT COMPARED",
        };
        println!(
            "{} ({}, {}): {verdict}; source {} rows, target {} rows; {} + {} statements, {:.1} s",
            t.table,
            t.target,
            t.kind,
            t.source_rows,
            t.target_rows,
            t.source_statements,
            t.target_statements,
            t.seconds
        );
        for note in [&t.reason, &t.key_note].into_iter().flatten() {
            println!("  {note}");
        }
        if !t.unmeasured.is_empty() && t.verdict != Verdict::Failed {
            println!("  compared by NULL count only: {}", t.unmeasured.join(", "));
        }
        for r in &t.ranges {
            println!(
                "  range {}: source {} rows, target {} rows{}",
                r.range,
                r.source_rows,
                r.target_rows,
                if r.columns.is_empty() {
                    String::new()
                } else {
                    format!("; columns differ: {}", r.columns.join(", "))
                }
            );
            if r.by_key {
                for (what, keys) in [("missing", &r.missing), ("extra", &r.extra)] {
                    if !keys.is_empty() {
                        println!("    {what} keys: {}", keys.join(", "));
                    }
                }
                for c in &r.changed {
                    println!("    changed key {}: {}", c.key, c.columns.join(", "));
                }
            }
            println!("    source: {}", r.source_sql.replace('\n', " "));
            println!("    target: {}", r.target_sql.replace('\n', " "));
        }
        if t.truncated {
            println!("  (more differs than shown: the comparison stopped at its budget)");
        }
    }
}

fn print_summary(r: &RunReport) {
    println!("run {} ({})", r.run_id, r.load_type);
    println!(
        "{:<40} {:<15} {:>12} {:>10} {:>8}  detail",
        "table", "outcome", "rows", "MB", "seconds"
    );
    for t in &r.tables {
        let (outcome, detail) = match &t.outcome {
            Outcome::Appended => ("appended", String::new()),
            Outcome::Swapped => ("swapped", String::new()),
            Outcome::Tested => ("tested", String::new()),
            Outcome::Extracted => ("extracted", String::new()),
            Outcome::Skipped(d) => ("skipped", d.clone()),
            Outcome::NeedsBackfill(d) => ("needs-backfill", d.clone()),
            Outcome::Failed(d) => ("FAILED", d.clone()),
        };
        println!(
            "{:<40} {:<15} {:>12} {:>10.1} {:>8.1}  {}",
            t.table,
            outcome,
            t.rows,
            t.bytes as f64 / 1e6,
            t.seconds,
            detail
        );
    }
    if let Some(w) = &r.window {
        println!(
            "window {} .. {}; next run: --last-loaded {}",
            w.begin.to_rfc3339(),
            w.end.to_rfc3339(),
            w.end.to_rfc3339()
        );
    }
    let failed = r.failures();
    if failed > 0 {
        println!("{failed} of {} tables failed", r.tables.len());
    }
}

/// At most two glibc malloc arenas, unless `MALLOC_ARENA_MAX` says otherwise. glibc
/// gives each thread that allocates (tokio's workers and blocking threads, DuckDB's
/// threads) an arena of its own, up to eight per core, and memory freed in one is not
/// reused by another: an embedded `pgp tap` of the 2M-row bench table peaked at 316 MB
/// with the default and at 231 MB with two arenas, no slower (bench/peers.sh). Called
/// before any thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn main() {
    limit_malloc_arenas();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: piped or captured logs stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match rt.block_on(main_inner(cli)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

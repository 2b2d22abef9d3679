//! Compatibility corpus: every real GitLab manifest in the team kit
//! (`../shared/fixtures/gitlab/manifests*/`) parses, classifies, derives its full-table
//! queries, and plans against GitLab's own schema (`structure.sql`) loaded into the
//! test server. Skips with a printed reason when the kit is not beside the repo.

use pgp::manifest::Manifest;
use pgp::plan::{Action, LoadType};
use pgp::query::{classify, full_table_query, with_filtering, Kind};
use pgp::run::{Pipeline, RunOptions};
use pgp_e2e::{fixtures_dir, Pg};
use std::collections::BTreeMap;
use std::sync::Arc;

fn manifests() -> Option<Vec<std::path::PathBuf>> {
    let Some(dir) = fixtures_dir() else {
        println!("SKIP: ../shared/fixtures/gitlab is absent (team kit not beside the repo)");
        return None;
    };
    let mut out = Vec::new();
    for sub in ["manifests", "manifests-2021"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap().flatten() {
            if e.path()
                .extension()
                .is_some_and(|x| x == "yaml" || x == "yml")
            {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Some(out)
}

fn vars() -> BTreeMap<String, String> {
    [
        ("INTERNAL_PROJECT_IDS", "(1, 2, 3)"),
        ("INTERNAL_NAMESPACE_IDS", "(1, 2, 3)"),
        ("INTERNAL_PATHS", "('gitlab-org', 'gitlab-com')"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect()
}

#[test]
fn every_gitlab_manifest_parses_classifies_and_derives_full_queries() {
    let Some(files) = manifests() else { return };
    let (mut tables, mut incremental) = (0, 0);
    for f in &files {
        let m = Manifest::from_file(f).unwrap_or_else(|e| panic!("{e}"));
        for t in &m.tables {
            tables += 1;
            if classify(&t.import_query) == Kind::Incremental {
                incremental += 1;
                let text = with_filtering(&t.import_query, t.additional_filtering.as_deref());
                let resolved = pgp::params::substitute(&text, |n| vars().get(n).cloned());
                let full = full_table_query(&t.name, &resolved)
                    .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                assert!(!full.contains('{'), "{}: {full}", t.name);
            }
        }
    }
    println!(
        "{} manifests, {tables} tables, {incremental} incremental",
        files.len()
    );
    assert_eq!(tables, 415, "the corpus holds 415 tables (SOURCE.md)");
}

#[tokio::test]
async fn every_gitlab_manifest_plans_against_gitlabs_schema() {
    let Some(files) = manifests() else { return };
    let schema = fixtures_dir().unwrap().join("structure.sql");
    let db = Pg::get().fresh_db("gitlab").await;
    // structure.sql is a pg_dump schema; psql runs it as GitLab's CI does.
    let pg = Pg::get();
    let psql: std::path::PathBuf = if pg.bin.join("psql").exists() {
        pg.bin.join("psql")
    } else {
        "psql".into()
    };
    let out = std::process::Command::new(psql)
        .args([
            &pg.url(&db.name),
            "-q",
            "-v",
            "ON_ERROR_STOP=0",
            "-f",
            schema.to_str().unwrap(),
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let mut env = db.env();
    env.extend(vars());
    let store: Arc<dyn pgp::storage::ObjectStore> =
        Arc::new(pgp::storage::LocalStore::new(dir.path().join("o")).unwrap());
    let wh = Arc::new(
        pgp::warehouse::DuckDb::open(&dir.path().join("w.duckdb"), store.clone()).unwrap(),
    );
    let mut planned = 0;
    let mut errors = Vec::new();
    let mut unusable = Vec::new();
    for f in &files {
        // Point the manifest's connection_info at the test server.
        let m = Manifest::from_file(f).unwrap();
        let mut e = env.clone();
        for (field, var) in [
            ("TEST_DB_HOST", &m.connection_info.host),
            ("TEST_DB_PORT", &m.connection_info.port),
            ("TEST_DB_USER", &m.connection_info.user),
            ("TEST_DB_NAME", &m.connection_info.database),
            ("TEST_DB_PASS", &m.connection_info.pass),
        ] {
            e.insert(var.clone(), env[field].clone());
        }
        let p = Pipeline {
            store: store.clone(),
            warehouse: wh.clone(),
            env: Arc::new(e),
        };
        for lt in [LoadType::Backfill, LoadType::Incremental] {
            let mut o = RunOptions::new(lt, chrono::Utc::now());
            o.params.hours = Some(24);
            let (plans, _) = p.plan(&m, &o).await.unwrap();
            for pl in plans {
                planned += 1;
                if let Some(c) = pl
                    .chunking
                    .as_deref()
                    .filter(|c| c.contains("no usable key"))
                {
                    unusable.push(format!(
                        "{} {} ({lt}): {c}",
                        f.file_name().unwrap().to_string_lossy(),
                        pl.table
                    ));
                }
                if pl.action == Action::Error {
                    errors.push(format!(
                        "{} {} ({lt}): {}",
                        f.file_name().unwrap().to_string_lossy(),
                        pl.table,
                        pl.reason.unwrap_or_default()
                    ));
                }
            }
        }
    }
    // Errors by cause. They may only be the schema snapshot's own gaps (a column or
    // table GitLab added or dropped at another time) or real defects of a manifest (a
    // column selected twice): never a parse or placeholder failure, and never a key
    // (a key that cannot cut the rows leaves the table to row locations or one chunk).
    let cause = |e: &str| {
        if e.contains("does not exist") {
            "schema snapshot gap (relation or column does not exist)"
        } else if e.contains("appears twice") {
            "manifest defect (a column selected twice)"
        } else {
            "unexpected"
        }
    };
    let mut by_cause: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for e in &errors {
        by_cause.entry(cause(e)).or_default().push(e);
    }
    println!(
        "planned {planned} table/load-type pairs; {} errors",
        errors.len()
    );
    for (c, es) in &by_cause {
        println!("{c}: {}", es.len());
        for e in es {
            println!("  {e}");
        }
    }
    assert!(
        !by_cause.contains_key("unexpected"),
        "unexpected plan errors: {:#?}",
        by_cause["unexpected"]
    );
    // The one key that does not fit: design_management_designs' CONCAT(issue_id, '_',
    // filename) over a query that does not select filename. Planned, not an error.
    println!("keys that cannot cut their rows: {}", unusable.len());
    for u in &unusable {
        println!("  {u}");
    }
    assert!(
        unusable
            .iter()
            .all(|u| u.contains("design_management_designs")),
        "{unusable:#?}"
    );
    assert!(planned >= 2 * 415);
}

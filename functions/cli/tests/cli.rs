//! The `pgp` binary end to end: exit codes, summaries, `plan --format json`, and the
//! messages of a malformed manifest. Runs the real binary against the test server.

use pgp_e2e::{walk, write_manifest, Pg, PASSWORD};
use std::process::Command;

const TABLES: &str = "  settings:
    import_db: TEST_DB
    export_schema: 'gitlab_com'
    export_table: 'application_settings'
    export_table_primary_key: id
    import_query: SELECT id, value FROM settings
  issues:
    import_db: TEST_DB
    export_schema: 'gitlab_com'
    export_table: 'issues'
    export_table_primary_key: id
    import_query: |-
      SELECT id, title, updated_at FROM issues
      WHERE updated_at BETWEEN '{BEGIN_TIMESTAMP}'::timestamp AND '{END_TIMESTAMP}'::timestamp
";

fn pgp(
    dir: &std::path::Path,
    env: &std::collections::BTreeMap<String, String>,
    args: &[&str],
) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgp"))
        .args(args)
        .current_dir(dir)
        .envs(env)
        .env(
            "PGP_STORAGE_URL",
            format!("file://{}/objects", dir.display()),
        )
        .env(
            "PGP_WAREHOUSE_URL",
            format!("duckdb://{}/wh.duckdb", dir.display()),
        )
        .env_remove("EXECUTION_DATE")
        .env_remove("HOURS")
        .env_remove("DAYS")
        .output()
        .expect("run pgp");
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(
        !o.contains(PASSWORD) && !e.contains(PASSWORD),
        "password printed:\n{o}\n{e}"
    );
    assert!(!e.contains('\u{1b}'), "colour codes in captured logs:\n{e}");
    (out.status.code().unwrap_or(-1), o, e)
}

#[tokio::test]
async fn tap_plan_and_exit_codes() {
    let db = Pg::get().fresh_db("cli").await;
    db.exec(
        "CREATE TABLE settings (id int PRIMARY KEY, value text); INSERT INTO settings VALUES (1, 'a'), (2, NULL);
         CREATE TABLE issues (id int PRIMARY KEY, title text, updated_at timestamp);
         INSERT INTO issues VALUES (1, 'old', '2020-01-01'), (2, 'new', '2024-01-01 12:00');",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path(), TABLES);
    let m = m.to_str().unwrap();
    let env = db.env();

    // plan touches nothing and says what would happen, as JSON
    let (code, out, err) = pgp(
        dir.path(),
        &env,
        &["plan", m, "--load-type", "backfill", "--format", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = plan.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let issues = rows.iter().find(|r| r["table"] == "issues").unwrap();
    assert_eq!(issues["kind"], "incremental");
    assert_eq!(issues["action"], "backfill");
    assert_eq!(issues["target"], "gitlab_com.issues");
    assert!(issues["chunks"].as_array().is_some_and(|c| !c.is_empty()));
    assert!(
        !dir.path().join("wh.duckdb").exists(),
        "plan created the warehouse"
    );

    // scd: creates the SCD table, skips the incremental one
    let (code, out, err) = pgp(dir.path(), &env, &["tap", m, "--load-type", "scd"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("settings") && out.contains("swapped"), "{out}");
    assert!(out.contains("issues") && out.contains("skipped"), "{out}");

    // incremental before backfill: reported, not failed
    let (code, out, _) = pgp(
        dir.path(),
        &env,
        &[
            "tap",
            m,
            "--load-type",
            "incremental",
            "--execution-date",
            "2024-01-02T00:00:00Z",
            "--hours",
            "24",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("needs-backfill"), "{out}");

    let (code, out, err) = pgp(
        dir.path(),
        &env,
        &["tap", m, "--load-type", "sync", "--format", "json"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let t = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "issues")
        .unwrap()
        .clone();
    assert_eq!(t["outcome"]["outcome"], "swapped");
    assert_eq!(t["rows"], 2);

    // incremental with the window: one row, and the window end to pass back
    let (code, out, _) = pgp(
        dir.path(),
        &env,
        &[
            "tap",
            m,
            "--load-type",
            "incremental",
            "--execution-date",
            "2024-01-02T00:00:00Z",
            "--hours",
            "24",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("appended"), "{out}");
    assert!(
        out.contains("--last-loaded 2024-01-02T00:00:00+00:00"),
        "{out}"
    );

    // what was loaded can be queried with pgp itself, NULL and all
    let (code, out, err) = pgp(
        dir.path(),
        &env,
        &[
            "sql",
            "SELECT id, value, _uploaded_at IS NOT NULL AS stamped FROM gitlab_com.application_settings ORDER BY id",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "id\tvalue\tstamped\n1\ta\ttrue\n2\tNULL\ttrue\n");
    let (code, out, _) = pgp(
        dir.path(),
        &env,
        &["sql", "DESCRIBE gitlab_com.application_settings"],
    );
    assert_eq!(code, 0);
    assert!(
        out.starts_with("column_name\t") && out.contains("\nvalue\t"),
        "{out}"
    );
    let (code, _, err) = pgp(dir.path(), &env, &["sql", "DROP TABLE gitlab_com.issues"]);
    assert_eq!(code, 2, "a read-only warehouse: {err}");

    // a failing table makes the exit code 1, the others still load
    db.exec("DROP TABLE settings").await;
    let (code, out, _) = pgp(dir.path(), &env, &["tap", m, "--load-type", "scd"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED") && out.contains("settings"), "{out}");
}

#[test]
fn a_malformed_manifest_fails_before_any_load_naming_file_table_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(
        dir.path(),
        "  issues:\n    import_db: X\n    export_schema: s\n    export_table: t\n    import_query: SELECT 1 AS id\n",
    );
    let (code, _, err) = pgp(
        dir.path(),
        &Default::default(),
        &["tap", m.to_str().unwrap(), "--load-type", "scd"],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("manifest.yaml")
            && err.contains("`issues`")
            && err.contains("export_table_primary_key"),
        "{err}"
    );
    assert!(err.contains("line 8"), "{err}");
    assert!(!dir.path().join("wh.duckdb").exists());

    std::fs::write(&m, "connection_info:\n  user: [unclosed\n").unwrap();
    let (code, _, err) = pgp(
        dir.path(),
        &Default::default(),
        &["plan", m.to_str().unwrap(), "--load-type", "scd"],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("manifest.yaml") && err.contains("line"),
        "{err}"
    );
}

/// `pgp runs` shows what the runs did from the records the services use; `pgp gc`
/// says what it would remove, removes nothing until `--apply`, then removes the
/// objects, run records and ledger rows of settled runs past the retention.
#[tokio::test]
async fn runs_and_gc_report_and_tidy_settled_runs() {
    let db = Pg::get().fresh_db("cliops").await;
    db.exec(
        "CREATE TABLE settings (id int PRIMARY KEY, value text);
         INSERT INTO settings SELECT g, 'v' || g FROM generate_series(1, 50) g;
         CREATE TABLE issues (id int PRIMARY KEY, title text, updated_at timestamp);
         INSERT INTO issues SELECT g, 't', '2024-01-01' FROM generate_series(1, 30) g;",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path(), TABLES);
    let m = m.to_str().unwrap();
    let env = db.env();
    let (code, out, err) = pgp(
        dir.path(),
        &env,
        &[
            "tap",
            m,
            "--load-type",
            "backfill",
            "--chunk-rows",
            "20",
            "--keep-objects",
            "--run-id",
            "first",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");

    let (code, out, err) = pgp(dir.path(), &env, &["runs", "--format", "json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let runs: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{out}");
    for (target, rows, chunks) in [
        ("gitlab_com.application_settings", 50, 3),
        ("gitlab_com.issues", 30, 2),
    ] {
        let r = runs.iter().find(|r| r["target"] == target).expect(target);
        assert_eq!(r["run_id"], "first");
        assert_eq!(r["state"], "published", "{r}");
        assert_eq!(r["rows"], rows, "{r}");
        assert_eq!(r["chunks_planned"], chunks, "{r}");
        assert_eq!(r["chunks_extracted"], chunks, "kept objects: {r}");
        assert_eq!(r["chunks_loaded"], chunks, "{r}");
        assert_eq!(r["chunks_failed"], 0, "{r}");
        assert!(r["last_error"].is_null(), "{r}");
    }
    let (code, text, _) = pgp(dir.path(), &env, &["runs", "--since", "1h"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("first") && text.contains("published") && text.contains("3/3/3/0"),
        "{text}"
    );
    let (code, _, err) = pgp(dir.path(), &env, &["runs", "--since", "7x"]);
    assert_eq!(code, 2, "a bad age is refused: {err}");
    assert!(err.contains("unit"), "{err}");

    let objects = |sub: &str| {
        walk(&dir.path().join("objects").join(sub))
            .into_iter()
            .filter(|p| !p.ends_with(".lock"))
            .count()
    };
    let chunk_objects = objects("gitlab_com");
    assert!(chunk_objects >= 5, "{chunk_objects} objects kept");
    let records = objects("_pgp_runs");
    assert!(records >= 2, "{records} run records");

    // recent runs are left alone
    let (code, out, _) = pgp(dir.path(), &env, &["gc", "--apply"]);
    assert_eq!(code, 0);
    assert!(out.contains("0 runs done"), "{out}");
    assert_eq!(objects("gitlab_com"), chunk_objects);

    // past the retention: a dry run says what it would do and does nothing
    const PAST: [&str; 5] = ["gc", "--retention", "0s", "--ledger-retention", "0s"];
    let (code, out, err) = pgp(
        dir.path(),
        &env,
        &[&PAST[..], &["--format", "json"]].concat(),
    );
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["applied"], false);
    let items = report["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{out}");
    let actions: Vec<String> = items
        .iter()
        .flat_map(|i| i["actions"].as_array().unwrap().clone())
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(
        actions.iter().any(|a| a.starts_with("delete 3 objects under gitlab_com/application_settings/first/")),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| a == "delete 3 ledger rows"),
        "{actions:?}"
    );
    assert_eq!(
        actions
            .iter()
            .filter(|a| a.starts_with("delete run record"))
            .count(),
        2,
        "{actions:?}"
    );
    assert_eq!(
        objects("gitlab_com"),
        chunk_objects,
        "a dry run removes nothing"
    );

    // applied: objects, records and ledger rows go; the runs stay, published
    let (code, out, err) = pgp(dir.path(), &env, &[&PAST[..], &["--apply"]].concat());
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("2 runs done"), "{out}");
    assert_eq!(objects("gitlab_com"), 0);
    assert_eq!(objects("_pgp_runs"), 0);
    let (_, out, _) = pgp(dir.path(), &env, &["runs", "--format", "json"]);
    let runs: serde_json::Value = serde_json::from_str(&out).unwrap();
    for r in runs.as_array().unwrap() {
        assert_eq!(r["state"], "published");
        assert_eq!(r["loads"], 0, "ledger trimmed: {r}");
        assert_eq!(r["chunks_extracted"], 0, "{r}");
    }
    // and a second pass finds nothing left
    let (_, out, _) = pgp(dir.path(), &env, &[&PAST[..], &["--apply"]].concat());
    assert!(out.contains("0 runs done"), "{out}");
}

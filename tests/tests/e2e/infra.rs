//! Security properties of the deployment, checked by parsing `infra/terraform/*.tf` with
//! an HCL parser (no cloud access needed). The build fails when a change loses one:
//! - no service or resource is opened to `allUsers` / `allAuthenticatedUsers`;
//! - every push subscription authenticates with an OIDC token;
//! - every topic that carries work has a subscription with a dead-letter policy, and
//!   every subscription that delivers work has one;
//! - the staging bucket keeps its delete lifecycle rule and uniform access;
//! - every push finishes before its deadline: the Cloud Run service a subscription
//!   pushes to times out below the subscription's ack deadline (the push timeout), and
//!   no Eventarc trigger asks for retries Eventarc does not accept (`max_attempts` 1);
//! - the platform's probes call `/livez`, never `/healthz` (which needs dependencies);
//! - only the planner may write run records (`_pgp_runs/`): any other account with an
//!   object-writing role on the bucket carries an IAM condition excluding them.
//!
//! Each check also runs against small broken snippets, so a check that could never fail
//! would fail its own test.

use hcl::{Block, Body};
use std::path::Path;

fn terraform_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("infra/terraform")
}

/// All `.tf` files of the deployment, parsed and merged.
fn deployment() -> Body {
    let mut blocks = Vec::new();
    let mut n = 0;
    for e in std::fs::read_dir(terraform_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "tf") {
            let text = std::fs::read_to_string(&p).unwrap();
            let body = hcl::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            blocks.extend(body.blocks().cloned());
            n += 1;
        }
    }
    assert!(n >= 5, "expected the deployment's .tf files, found {n}");
    Body::builder().add_blocks(blocks).build()
}

/// `resource "<kind>" "<name>"` blocks.
fn resources<'a>(body: &'a Body, kind: &str) -> Vec<(String, &'a Body)> {
    body.blocks()
        .filter(|b| b.identifier() == "resource")
        .filter(|b| b.labels().first().map(|l| l.as_str()) == Some(kind))
        .map(|b| (b.labels()[1].as_str().to_string(), b.body()))
        .collect()
}

fn child<'a>(body: &'a Body, name: &str) -> Option<&'a Block> {
    body.blocks().find(|b| b.identifier() == name)
}

fn attr(body: &Body, key: &str) -> Option<String> {
    body.attributes()
        .find(|a| a.key() == key)
        .map(|a| hcl::format::to_string(a.expr()).unwrap())
}

/// Every attribute value anywhere in a body, as HCL text.
fn all_values(body: &Body, out: &mut Vec<String>) {
    for a in body.attributes() {
        out.push(hcl::format::to_string(a.expr()).unwrap());
    }
    for b in body.blocks() {
        all_values(b.body(), out);
    }
}

fn check_no_public_access(body: &Body) -> Result<(), String> {
    let mut values = Vec::new();
    all_values(body, &mut values);
    for v in values {
        if v.contains("allUsers") || v.contains("allAuthenticatedUsers") {
            return Err(format!("public principal in {v}"));
        }
    }
    for (name, svc) in resources(body, "google_cloud_run_v2_service") {
        if attr(svc, "invoker_iam_disabled").as_deref() == Some("true") {
            return Err(format!("cloud run service {name} skips the invoker check"));
        }
    }
    Ok(())
}

fn check_push_oidc(body: &Body) -> Result<(), String> {
    let mut pushes = 0;
    for (name, sub) in resources(body, "google_pubsub_subscription") {
        if let Some(push) = child(sub, "push_config") {
            pushes += 1;
            let oidc = child(push.body(), "oidc_token")
                .ok_or_else(|| format!("push subscription {name} has no oidc_token"))?;
            if attr(oidc.body(), "service_account_email").is_none() {
                return Err(format!(
                    "push subscription {name}: oidc_token without an account"
                ));
            }
        }
    }
    if pushes == 0 {
        return Err("no push subscriptions found".into());
    }
    Ok(())
}

fn check_dead_letters(body: &Body) -> Result<(), String> {
    let subs = resources(body, "google_pubsub_subscription");
    let dead_targets: Vec<String> = subs
        .iter()
        .filter_map(|(_, s)| child(s, "dead_letter_policy"))
        .filter_map(|p| attr(p.body(), "dead_letter_topic"))
        .collect();
    for (name, sub) in &subs {
        let delivers_work = child(sub, "push_config").is_some();
        if delivers_work && child(sub, "dead_letter_policy").is_none() {
            return Err(format!("subscription {name} has no dead-letter policy"));
        }
    }
    for (topic, _) in resources(body, "google_pubsub_topic") {
        let reference = format!("google_pubsub_topic.{topic}.");
        if dead_targets.iter().any(|t| t.contains(&reference)) {
            continue; // a dead-letter topic itself
        }
        let covered = subs.iter().any(|(_, s)| {
            attr(s, "topic").is_some_and(|t| t.contains(&reference))
                && child(s, "dead_letter_policy").is_some()
        });
        if !covered {
            return Err(format!(
                "topic {topic} has no subscription with a dead-letter policy"
            ));
        }
    }
    Ok(())
}

fn check_bucket(body: &Body) -> Result<(), String> {
    let buckets = resources(body, "google_storage_bucket");
    if buckets.is_empty() {
        return Err("no bucket".into());
    }
    for (name, b) in buckets {
        if attr(b, "uniform_bucket_level_access").as_deref() != Some("true") {
            return Err(format!("bucket {name} without uniform access"));
        }
        let deletes = b
            .blocks()
            .filter(|r| r.identifier() == "lifecycle_rule")
            .any(|r| {
                let action = child(r.body(), "action").and_then(|a| attr(a.body(), "type"));
                let age = child(r.body(), "condition").and_then(|c| attr(c.body(), "age"));
                action.as_deref() == Some("\"Delete\"") && age.is_some()
            });
        if !deletes {
            return Err(format!(
                "bucket {name} has no age-based delete lifecycle rule"
            ));
        }
    }
    Ok(())
}

/// `"540s"` -> 540.
fn seconds(v: &str) -> Option<u64> {
    v.trim_matches('"').strip_suffix('s')?.parse().ok()
}

fn check_deadlines(body: &Body) -> Result<(), String> {
    let services = resources(body, "google_cloud_run_v2_service");
    let mut pushes = 0;
    for (name, sub) in resources(body, "google_pubsub_subscription") {
        let Some(push) = child(sub, "push_config") else {
            continue;
        };
        let endpoint = attr(push.body(), "push_endpoint").unwrap_or_default();
        let Some((svc_name, svc)) = services
            .iter()
            .find(|(s, _)| endpoint.contains(&format!("google_cloud_run_v2_service.{s}.")))
        else {
            return Err(format!(
                "push subscription {name} pushes to no service of ours"
            ));
        };
        let ack = attr(sub, "ack_deadline_seconds")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(10);
        let timeout = child(svc, "template")
            .and_then(|t| attr(t.body(), "timeout"))
            .and_then(|v| seconds(&v))
            .unwrap_or(300);
        if ack > 600 {
            return Err(format!("subscription {name}: ack deadline {ack} s > 600 s"));
        }
        if timeout >= ack {
            return Err(format!(
                "service {svc_name} may run {timeout} s, but subscription {name} redelivers after {ack} s"
            ));
        }
        pushes += 1;
    }
    if pushes == 0 {
        return Err("no push subscriptions found".into());
    }
    for (name, trigger) in resources(body, "google_eventarc_trigger") {
        let attempts = child(trigger, "retry_policy").and_then(|r| attr(r.body(), "max_attempts"));
        if attempts.as_deref().is_some_and(|a| a != "1") {
            return Err(format!(
                "eventarc trigger {name}: max_attempts {attempts:?}; Eventarc accepts only 1"
            ));
        }
    }
    Ok(())
}

fn check_probes(body: &Body) -> Result<(), String> {
    let mut probes = 0;
    for (name, svc) in resources(body, "google_cloud_run_v2_service") {
        let containers = child(svc, "template")
            .into_iter()
            .flat_map(|t| t.body().blocks().filter(|b| b.identifier() == "containers"));
        for c in containers {
            for probe in c
                .body()
                .blocks()
                .filter(|b| b.identifier().ends_with("_probe"))
            {
                let path = child(probe.body(), "http_get").and_then(|h| attr(h.body(), "path"));
                if path.as_deref() != Some("\"/livez\"") {
                    return Err(format!(
                        "service {name}: {} calls {path:?}, not /livez",
                        probe.identifier()
                    ));
                }
                probes += 1;
            }
        }
    }
    if probes == 0 {
        return Err("no probes found".into());
    }
    Ok(())
}

fn check_run_records_planner_only(body: &Body) -> Result<(), String> {
    const WRITES: [&str; 4] = [
        "roles/storage.objectUser",
        "roles/storage.objectCreator",
        "roles/storage.objectAdmin",
        "roles/storage.admin",
    ];
    let locals: Vec<String> = body
        .blocks()
        .filter(|b| b.identifier() == "locals")
        .flat_map(|b| b.body().attributes())
        .filter(|a| a.key() == "run_records")
        .map(|a| hcl::format::to_string(a.expr()).unwrap())
        .collect();
    let mut conditioned = 0;
    for (name, b) in resources(body, "google_storage_bucket_iam_member") {
        let role = attr(b, "role").unwrap_or_default();
        if !WRITES.iter().any(|w| role == format!("\"{w}\"")) {
            continue;
        }
        let member = attr(b, "member").unwrap_or_default();
        if member.contains("google_service_account.planner.") {
            continue;
        }
        let expr = child(b, "condition")
            .and_then(|c| attr(c.body(), "expression"))
            .ok_or_else(|| format!("{name}: {role} for {member} without a condition"))?;
        let names_run_records = expr.contains("_pgp_runs/")
            || (expr.contains("local.run_records")
                && locals.iter().any(|l| l.ends_with("/objects/_pgp_runs/\"")));
        if !(expr.starts_with("\"!resource.name.startsWith(") && names_run_records) {
            return Err(format!(
                "{name}: the condition {expr} does not keep {member} out of _pgp_runs/"
            ));
        }
        conditioned += 1;
    }
    if conditioned == 0 {
        return Err("no conditioned writer found (the extractor writes chunks)".into());
    }
    Ok(())
}

#[test]
fn the_deployment_keeps_its_security_properties() {
    let body = deployment();
    check_no_public_access(&body).unwrap();
    check_push_oidc(&body).unwrap();
    check_dead_letters(&body).unwrap();
    check_bucket(&body).unwrap();
    check_deadlines(&body).unwrap();
    check_probes(&body).unwrap();
    check_run_records_planner_only(&body).unwrap();
}

#[test]
fn each_check_catches_its_violation() {
    let parse = |s: &str| hcl::parse(s).unwrap();
    let public = parse(
        r#"resource "google_cloud_run_v2_service_iam_member" "x" {
             role = "roles/run.invoker"
             member = "allUsers"
           }"#,
    );
    assert!(check_no_public_access(&public).is_err());
    let open =
        parse(r#"resource "google_cloud_run_v2_service" "x" { invoker_iam_disabled = true }"#);
    assert!(check_no_public_access(&open).is_err());

    let no_oidc = parse(
        r#"resource "google_pubsub_subscription" "s" {
             topic = google_pubsub_topic.t.id
             push_config { push_endpoint = "https://x/" }
             dead_letter_policy { dead_letter_topic = google_pubsub_topic.d.id }
           }"#,
    );
    assert!(check_push_oidc(&no_oidc).is_err());

    let no_dlq = parse(
        r#"resource "google_pubsub_topic" "t" { name = "t" }
           resource "google_pubsub_subscription" "s" {
             topic = google_pubsub_topic.t.id
             push_config {
               push_endpoint = "https://x/"
               oidc_token { service_account_email = "a@b" }
             }
           }"#,
    );
    assert!(check_dead_letters(&no_dlq).is_err());
    let orphan_topic = parse(r#"resource "google_pubsub_topic" "t" { name = "t" }"#);
    assert!(check_dead_letters(&orphan_topic).is_err());

    let no_lifecycle = parse(
        r#"resource "google_storage_bucket" "b" {
             name = "b"
             uniform_bucket_level_access = true
           }"#,
    );
    assert!(check_bucket(&no_lifecycle).is_err());
    let keep_rule = parse(
        r#"resource "google_storage_bucket" "b" {
             uniform_bucket_level_access = true
             lifecycle_rule {
               condition { age = 30 }
               action { type = "SetStorageClass" }
             }
           }"#,
    );
    assert!(check_bucket(&keep_rule).is_err());

    let slow = parse(
        r#"resource "google_cloud_run_v2_service" "loader" {
             template {
               timeout = "1800s"
             }
           }
           resource "google_pubsub_subscription" "s" {
             ack_deadline_seconds = 600
             push_config { push_endpoint = "${google_cloud_run_v2_service.loader.uri}/" }
           }"#,
    );
    assert!(check_deadlines(&slow).is_err());
    let eventarc_retries = parse(
        r#"resource "google_cloud_run_v2_service" "loader" {
             template {
               timeout = "540s"
             }
           }
           resource "google_pubsub_subscription" "s" {
             ack_deadline_seconds = 600
             push_config { push_endpoint = "${google_cloud_run_v2_service.loader.uri}/" }
           }
           resource "google_eventarc_trigger" "t" {
             retry_policy {
               max_attempts = 10
             }
           }"#,
    );
    assert!(check_deadlines(&eventarc_retries).is_err());

    let health_probe = parse(
        r#"resource "google_cloud_run_v2_service" "x" {
             template {
               containers {
                 startup_probe {
                   http_get { path = "/healthz" }
                 }
               }
             }
           }"#,
    );
    assert!(check_probes(&health_probe).is_err());

    let extractor_writes_records = parse(
        r#"resource "google_storage_bucket_iam_member" "x" {
             role   = "roles/storage.objectUser"
             member = google_service_account.extractor.member
           }"#,
    );
    assert!(check_run_records_planner_only(&extractor_writes_records).is_err());
    let wrong_condition = parse(
        r#"resource "google_storage_bucket_iam_member" "x" {
             role   = "roles/storage.objectUser"
             member = google_service_account.extractor.member
             condition {
               title      = "c"
               expression = "resource.name.startsWith(\"projects/_/buckets/b/objects/_pgp_runs/\")"
             }
           }"#,
    );
    assert!(check_run_records_planner_only(&wrong_condition).is_err());
}

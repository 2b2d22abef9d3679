//! Security properties of the deployment, checked by parsing `infra/terraform/*.tf` with
//! an HCL parser (no cloud access needed). The build fails when a change loses one:
//! - no service or resource is opened to `allUsers` / `allAuthenticatedUsers`;
//! - every push subscription authenticates with an OIDC token;
//! - every topic that carries work has a subscription with a dead-letter policy, and
//!   every subscription that delivers work has one;
//! - the staging bucket keeps its delete lifecycle rule and uniform access.
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

#[test]
fn the_deployment_keeps_its_security_properties() {
    let body = deployment();
    check_no_public_access(&body).unwrap();
    check_push_oidc(&body).unwrap();
    check_dead_letters(&body).unwrap();
    check_bucket(&body).unwrap();
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
}

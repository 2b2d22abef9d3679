# What starts work: the object-finalize notifications of the bucket (loader) and the nightly
# SCD schedule (planner). Incremental loads are published by Airflow (infra/airflow).

# Finalize events reach the loader as a Cloud Storage Pub/Sub notification on the
# bucket, pushed by a subscription like every other hop: exponential backoff, a push
# deadline, and a dead-letter topic after max_delivery_attempts. (Eventarc's Cloud
# Storage trigger would deliver the same events, but its retry policy accepts only
# max_attempts = 1 — no retries, no dead letter of its own. The loader reads both
# shapes; infra/README.md "Why a notification, not Eventarc".)

data "google_storage_project_service_account" "gcs" {}

resource "google_pubsub_topic" "finalized" {
  # checkov:skip=CKV_GCP_83:Messages carry run ids, table names and key ranges, never row data; Google-managed encryption at rest is enough and CMEK would add a KMS key to operate for no data.
  name = "pgp-object-finalized"
}

resource "google_pubsub_topic" "finalized_dead" {
  # checkov:skip=CKV_GCP_83:Messages carry run ids, table names and key ranges, never row data; Google-managed encryption at rest is enough and CMEK would add a KMS key to operate for no data.
  name = "pgp-object-finalized-dead-letter"
}

# Cloud Storage's service agent publishes the notifications: on this topic only.
resource "google_pubsub_topic_iam_member" "gcs_agent_publishes" {
  topic  = google_pubsub_topic.finalized.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_storage_notification" "finalized" {
  bucket         = google_storage_bucket.staging.name
  payload_format = "JSON_API_V1" # the object resource, with the metadata the loader reads
  topic          = google_pubsub_topic.finalized.id
  event_types    = ["OBJECT_FINALIZE"]

  depends_on = [google_pubsub_topic_iam_member.gcs_agent_publishes]
}

resource "google_pubsub_subscription" "load" {
  name  = "pgp-load-push"
  topic = google_pubsub_topic.finalized.id
  # The push request's timeout; the loader's Cloud Run timeout is below it
  # (infra/README.md "Deadlines").
  ack_deadline_seconds = 600

  push_config {
    push_endpoint = "${google_cloud_run_v2_service.loader.uri}/"
    oidc_token {
      service_account_email = google_service_account.invoker.email
      audience              = google_cloud_run_v2_service.loader.uri
    }
  }

  # A 5xx from the loader (warehouse busy, run not complete yet, transient error) is
  # redelivered with backoff; a 200 acknowledges (loaded, or rejected with a reason).
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.finalized_dead.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "finalized_dead" {
  name                       = "pgp-object-finalized-dead-letter-hold"
  topic                      = google_pubsub_topic.finalized_dead.id
  message_retention_duration = "604800s"
  ack_deadline_seconds       = 60
  expiration_policy {
    ttl = ""
  }
}

resource "google_cloud_scheduler_job" "scd" {
  for_each  = toset(var.scd_manifests)
  name      = "pgp-scd-${replace(trimsuffix(each.value, ".yaml"), "_", "-")}"
  schedule  = var.scd_schedule
  time_zone = var.scd_time_zone
  region    = var.region

  retry_config {
    retry_count          = 3
    min_backoff_duration = "60s"
    max_backoff_duration = "600s"
  }

  http_target {
    http_method = "POST"
    uri         = "${google_cloud_run_v2_service.planner.uri}/"
    headers     = { "Content-Type" = "application/json" }
    # The planner derives the run id from X-CloudScheduler-ScheduleTime, so a retried
    # attempt of one night's job is the same run.
    body = base64encode(jsonencode({ manifest = each.value, load_type = "scd" }))
    oidc_token {
      service_account_email = google_service_account.invoker.email
      audience              = google_cloud_run_v2_service.planner.uri
    }
  }
}

# Weekly garbage collection (`POST /gc` on the planner, the same pass as `pgp gc`):
# settles runs idle past the retention and removes what settled runs left behind —
# load and swap tables (permanent Snowflake tables, billed with Fail-safe), staged
# objects, run records — and trims old ledger rows. Idempotent; its report is logged.
resource "google_cloud_scheduler_job" "gc" {
  name      = "pgp-gc"
  schedule  = var.gc_schedule
  time_zone = var.scd_time_zone
  region    = var.region

  retry_config {
    retry_count          = 3
    min_backoff_duration = "60s"
    max_backoff_duration = "600s"
  }

  http_target {
    http_method = "POST"
    uri         = "${google_cloud_run_v2_service.planner.uri}/gc"
    headers     = { "Content-Type" = "application/json" }
    body = base64encode(jsonencode({
      retention_days        = var.gc_retention_days
      ledger_retention_days = var.gc_ledger_retention_days
      apply                 = true
    }))
    oidc_token {
      service_account_email = google_service_account.invoker.email
      audience              = google_cloud_run_v2_service.planner.uri
    }
  }
}

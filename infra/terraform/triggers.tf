# What starts work: the object-finalize events of the bucket (loader) and the nightly
# SCD schedule (planner). Incremental loads are published by Airflow (infra/airflow).

# Cloud Storage publishes its events through Pub/Sub: its service agent needs to publish.
data "google_storage_project_service_account" "gcs" {}

resource "google_project_iam_member" "gcs_agent_publishes" {
  project = var.project
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_project_iam_member" "invoker_receives_events" {
  project = var.project
  role    = "roles/eventarc.eventReceiver"
  member  = google_service_account.invoker.member
}

resource "google_eventarc_trigger" "finalized" {
  name            = "pgp-object-finalized"
  location        = var.region
  service_account = google_service_account.invoker.email

  matching_criteria {
    attribute = "type"
    value     = "google.cloud.storage.object.v1.finalized"
  }
  matching_criteria {
    attribute = "bucket"
    value     = google_storage_bucket.staging.name
  }

  destination {
    cloud_run_service {
      service = google_cloud_run_v2_service.loader.name
      region  = var.region
      path    = "/"
    }
  }

  # Retries on: a 5xx from the loader (warehouse busy) is redelivered with backoff.
  retry_policy {
    max_attempts = var.max_delivery_attempts
  }

  depends_on = [google_project_iam_member.gcs_agent_publishes]
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

output "bucket" {
  description = "The staging bucket (PGP_STORAGE_URL gs://…)."
  value       = google_storage_bucket.staging.name
}

output "requests_topic" {
  description = "Publish load requests here (Airflow, manual backfills)."
  value       = google_pubsub_topic.requests.id
}

output "extract_topic" {
  description = "Chunk tasks (published by the planner)."
  value       = google_pubsub_topic.extract.id
}

output "dead_letter_subscriptions" {
  description = "Pull subscriptions holding dead letters, for inspection and replay."
  value       = [google_pubsub_subscription.requests_dead.id, google_pubsub_subscription.extract_dead.id, google_pubsub_subscription.finalized_dead.id]
}

output "service_urls" {
  description = "The Cloud Run services (internal ingress, authenticated)."
  value = {
    planner   = google_cloud_run_v2_service.planner.uri
    extractor = google_cloud_run_v2_service.extractor.uri
    loader    = google_cloud_run_v2_service.loader.uri
  }
}

output "service_accounts" {
  description = "Service accounts of each step (grant the planner and extractor access to PostgreSQL; the Snowflake storage integration reads the bucket with its own account)."
  value = {
    planner   = google_service_account.planner.email
    extractor = google_service_account.extractor.email
    loader    = google_service_account.loader.email
    invoker   = google_service_account.invoker.email
  }
}

output "secrets" {
  description = "Add the secret values with `gcloud secrets versions add`."
  value = {
    postgres_password     = google_secret_manager_secret.pg_password.secret_id
    snowflake_private_key = google_secret_manager_secret.snowflake_key.secret_id
  }
}

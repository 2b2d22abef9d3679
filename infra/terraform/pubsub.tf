# Topics, dead-letter topics and push subscriptions.
#
# Load requests (Cloud Scheduler posts directly; Airflow and people publish here) are
# pushed to the planner; chunk tasks to the extractors (finalize notifications to the
# loader: triggers.tf). Every push carries an OIDC token
# of the invoker service account, is retried with exponential backoff, and after
# max_delivery_attempts goes to a dead-letter topic, where a pull subscription keeps it
# for inspection and replay (infra/README.md).

locals {
  pubsub_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

resource "google_pubsub_topic" "requests" {
  # checkov:skip=CKV_GCP_83:Messages carry run ids, table names and key ranges, never row data; Google-managed encryption at rest is enough and CMEK would add a KMS key to operate for no data.
  name = "pgp-requests"
}

resource "google_pubsub_topic" "requests_dead" {
  # checkov:skip=CKV_GCP_83:Messages carry run ids, table names and key ranges, never row data; Google-managed encryption at rest is enough and CMEK would add a KMS key to operate for no data.
  name = "pgp-requests-dead-letter"
}

resource "google_pubsub_topic" "extract" {
  # checkov:skip=CKV_GCP_83:Messages carry run ids, table names and key ranges, never row data; Google-managed encryption at rest is enough and CMEK would add a KMS key to operate for no data.
  name = "pgp-extract"
}

resource "google_pubsub_topic" "extract_dead" {
  # checkov:skip=CKV_GCP_83:Messages carry run ids, table names and key ranges, never row data; Google-managed encryption at rest is enough and CMEK would add a KMS key to operate for no data.
  name = "pgp-extract-dead-letter"
}

resource "google_pubsub_subscription" "plan" {
  name                 = "pgp-plan-push"
  topic                = google_pubsub_topic.requests.id
  ack_deadline_seconds = 600 # the push request's timeout; the planner's is below it

  push_config {
    push_endpoint = "${google_cloud_run_v2_service.planner.uri}/"
    oidc_token {
      service_account_email = google_service_account.invoker.email
      audience              = google_cloud_run_v2_service.planner.uri
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.requests_dead.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = "" # never expires
  }
}

resource "google_pubsub_subscription" "extract" {
  name                 = "pgp-extract-push"
  topic                = google_pubsub_topic.extract.id
  ack_deadline_seconds = 600 # the push request's timeout; the extractor's is below it

  push_config {
    push_endpoint = "${google_cloud_run_v2_service.extractor.uri}/"
    oidc_token {
      service_account_email = google_service_account.invoker.email
      audience              = google_cloud_run_v2_service.extractor.uri
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.extract_dead.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }
}

# Dead letters are kept (7 days) in pull subscriptions for inspection and replay.
resource "google_pubsub_subscription" "requests_dead" {
  name                       = "pgp-requests-dead-letter-hold"
  topic                      = google_pubsub_topic.requests_dead.id
  message_retention_duration = "604800s"
  ack_deadline_seconds       = 60
  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "extract_dead" {
  name                       = "pgp-extract-dead-letter-hold"
  topic                      = google_pubsub_topic.extract_dead.id
  message_retention_duration = "604800s"
  ack_deadline_seconds       = 60
  expiration_policy {
    ttl = ""
  }
}

# The Pub/Sub service agent must publish dead letters and ack the originals.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = {
    requests  = google_pubsub_topic.requests_dead.id
    extract   = google_pubsub_topic.extract_dead.id
    finalized = google_pubsub_topic.finalized_dead.id
  }
  topic  = each.value
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each = {
    plan    = google_pubsub_subscription.plan.id
    extract = google_pubsub_subscription.extract.id
    load    = google_pubsub_subscription.load.id
  }
  subscription = each.value
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# Push subscriptions mint OIDC tokens for the invoker account.
resource "google_service_account_iam_member" "pubsub_token_creator" {
  service_account_id = google_service_account.invoker.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

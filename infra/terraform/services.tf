# The three Cloud Run services, each with its own service account holding only what
# its step needs:
#   planner   — reads manifests and the warehouse schema, writes run records to the
#               bucket, publishes chunk tasks to the extract topic;
#   extractor — reads PostgreSQL, reads run records and writes chunk objects;
#   loader    — reads run records and chunk metadata; loads through the warehouse
#               (Snowflake reads the bucket through its own storage integration).
# No service admits unauthenticated calls: only the invoker account (used by Pub/Sub
# push and Cloud Scheduler) may call them, and ingress is internal.
#
# Deadlines: every push waits at most its subscription's ack deadline (600 s, the
# maximum) for an answer, then redelivers. Each service's request timeout is below it
# (540 s), so a request ends — answered, or cut off and retried — before its message is
# handed to another instance; the work inside is sized to fit (infra/README.md
# "Deadlines").
#
# Probes: startup and liveness call /livez, which needs no permission and no
# dependency, so a PostgreSQL or Snowflake outage never stops instances from starting.
# /healthz still reports each dependency, for people and uptime checks.

resource "google_service_account" "planner" {
  account_id   = "pgp-planner"
  display_name = "pgp planner"
}

resource "google_service_account" "extractor" {
  account_id   = "pgp-extractor"
  display_name = "pgp extractor"
}

resource "google_service_account" "loader" {
  account_id   = "pgp-loader"
  display_name = "pgp loader"
}

resource "google_service_account" "invoker" {
  account_id   = "pgp-invoker"
  display_name = "pgp invoker (Pub/Sub push, Cloud Scheduler)"
}

# --- bucket access ---------------------------------------------------------------
# Run records (_pgp_runs/) hold the SQL the extractors run: only the planner writes
# them. Everyone else may read them; the extractor writes chunk objects and its
# uploads, and an IAM condition keeps it out of _pgp_runs/.
locals {
  run_records = "projects/_/buckets/${google_storage_bucket.staging.name}/objects/_pgp_runs/"
}

resource "google_storage_bucket_iam_member" "planner_objects" {
  bucket = google_storage_bucket.staging.name
  role   = "roles/storage.objectUser" # run records: create-only writes, reads
  member = google_service_account.planner.member
}

resource "google_storage_bucket_iam_member" "extractor_reads" {
  bucket = google_storage_bucket.staging.name
  role   = "roles/storage.objectViewer" # run records, earlier attempts of a chunk
  member = google_service_account.extractor.member
}

resource "google_storage_bucket_iam_member" "extractor_writes" {
  bucket = google_storage_bucket.staging.name
  role   = "roles/storage.objectUser" # upload, rewrite to the final name, delete the upload
  member = google_service_account.extractor.member
  condition {
    title       = "not-run-records"
    description = "Only the planner writes run records."
    expression  = "!resource.name.startsWith(\"${local.run_records}\")"
  }
}

resource "google_storage_bucket_iam_member" "loader_objects" {
  bucket = google_storage_bucket.staging.name
  role   = "roles/storage.objectViewer" # run records; Snowflake reads chunks itself
  member = google_service_account.loader.member
}

# Manifests from gs:// come only from the allow-listed places (PGP_MANIFEST_GCS_PREFIXES);
# granting the planner read access there is the operator's, per bucket.

# --- Pub/Sub ------------------------------------------------------------------------
resource "google_pubsub_topic_iam_member" "planner_publishes_tasks" {
  topic  = google_pubsub_topic.extract.id
  role   = "roles/pubsub.publisher"
  member = google_service_account.planner.member
}

# --- secrets --------------------------------------------------------------------------
# Values are added out of band (`gcloud secrets versions add`), so they never enter
# Terraform state.
resource "google_secret_manager_secret" "pg_password" {
  secret_id = "pgp-postgres-password"
  replication {
    auto {}
  }
}

resource "google_secret_manager_secret" "snowflake_key" {
  secret_id = "pgp-snowflake-private-key"
  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_iam_member" "pg_password" {
  for_each = {
    planner   = google_service_account.planner.member
    extractor = google_service_account.extractor.member
  }
  secret_id = google_secret_manager_secret.pg_password.id
  role      = "roles/secretmanager.secretAccessor"
  member    = each.value
}

resource "google_secret_manager_secret_iam_member" "snowflake_key" {
  for_each = {
    planner = google_service_account.planner.member
    loader  = google_service_account.loader.member
  }
  secret_id = google_secret_manager_secret.snowflake_key.id
  role      = "roles/secretmanager.secretAccessor"
  member    = each.value
}

# --- optional private access to PostgreSQL ------------------------------------------
resource "google_vpc_access_connector" "pgp" {
  count         = var.vpc_connector_cidr == "" ? 0 : 1
  name          = "pgp-connector"
  region        = var.region
  network       = var.vpc_network
  ip_cidr_range = var.vpc_connector_cidr
}

locals {
  common_env = {
    PGP_STORAGE_URL = "gs://${google_storage_bucket.staging.name}"
    PGP_LOG         = "info"
  }
  warehouse_env = {
    PGP_WAREHOUSE_URL              = var.warehouse_url
    PGP_SNOWFLAKE_PRIVATE_KEY_PATH = "/secrets/snowflake/key.pem"
  }
}

# --- planner ----------------------------------------------------------------------------
resource "google_cloud_run_v2_service" "planner" {
  name                = "pgp-planner"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = false

  template {
    service_account                  = google_service_account.planner.email
    timeout                          = "540s" # below the push deadline (600 s)
    max_instance_request_concurrency = 1
    scaling {
      min_instance_count = 0
      max_instance_count = 1 # planning is short; concurrent planners of one request agree (create-only run records)
    }
    dynamic "vpc_access" {
      for_each = google_vpc_access_connector.pgp
      content {
        connector = vpc_access.value.id
        egress    = "PRIVATE_RANGES_ONLY"
      }
    }
    containers {
      image   = var.image
      command = ["/usr/local/bin/planner"]
      resources {
        limits = { cpu = "1", memory = "512Mi" }
      }
      dynamic "env" {
        for_each = merge(local.common_env, local.warehouse_env, var.source_env, {
          PGP_PUBSUB_PROJECT = var.project
          PGP_EXTRACT_TOPIC  = google_pubsub_topic.extract.name
          PGP_MANIFEST_DIR   = "/manifests"
          # Empty: manifests only from the image's /manifests.
          PGP_MANIFEST_GCS_PREFIXES = join(",", var.manifest_gcs_prefixes)
        })
        content {
          name  = env.key
          value = env.value
        }
      }
      env {
        name = var.source_password_env
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.pg_password.secret_id
            version = "latest"
          }
        }
      }
      volume_mounts {
        name       = "snowflake-key"
        mount_path = "/secrets/snowflake"
      }
      startup_probe {
        http_get {
          path = "/livez"
        }
      }
      liveness_probe {
        http_get {
          path = "/livez"
        }
      }
    }
    volumes {
      name = "snowflake-key"
      secret {
        secret = google_secret_manager_secret.snowflake_key.secret_id
        items {
          path    = "key.pem"
          version = "latest"
        }
      }
    }
  }
}

# --- extractor --------------------------------------------------------------------------
resource "google_cloud_run_v2_service" "extractor" {
  name                = "pgp-extractor"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = false

  template {
    service_account                  = google_service_account.extractor.email
    timeout                          = "540s" # below the push deadline; one chunk is ~400 MB of text
    max_instance_request_concurrency = 1      # one COPY per instance: memory and CPU stay bounded
    scaling {
      min_instance_count = 0
      max_instance_count = var.extractor_max_instances
    }
    dynamic "vpc_access" {
      for_each = google_vpc_access_connector.pgp
      content {
        connector = vpc_access.value.id
        egress    = "PRIVATE_RANGES_ONLY"
      }
    }
    containers {
      image   = var.image
      command = ["/usr/local/bin/extractor"]
      resources {
        limits = { cpu = "2", memory = "512Mi" } # gzip on one core, COPY decoding on the other
      }
      dynamic "env" {
        for_each = merge(local.common_env, var.source_env)
        content {
          name  = env.key
          value = env.value
        }
      }
      env {
        name = var.source_password_env
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.pg_password.secret_id
            version = "latest"
          }
        }
      }
      startup_probe {
        http_get {
          path = "/livez"
        }
      }
      liveness_probe {
        http_get {
          path = "/livez"
        }
      }
    }
  }
}

# --- loader -----------------------------------------------------------------------------
resource "google_cloud_run_v2_service" "loader" {
  name                = "pgp-loader"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = false

  template {
    service_account                  = google_service_account.loader.email
    timeout                          = "540s" # below the push deadline; COPY of one ~160 MB object
    max_instance_request_concurrency = 4      # the work happens in the warehouse
    scaling {
      min_instance_count = 0
      max_instance_count = var.loader_max_instances
    }
    containers {
      image   = var.image
      command = ["/usr/local/bin/loader"]
      resources {
        limits = { cpu = "1", memory = "512Mi" }
      }
      dynamic "env" {
        for_each = merge(local.common_env, local.warehouse_env)
        content {
          name  = env.key
          value = env.value
        }
      }
      volume_mounts {
        name       = "snowflake-key"
        mount_path = "/secrets/snowflake"
      }
      startup_probe {
        http_get {
          path = "/livez"
        }
      }
      liveness_probe {
        http_get {
          path = "/livez"
        }
      }
    }
    volumes {
      name = "snowflake-key"
      secret {
        secret = google_secret_manager_secret.snowflake_key.secret_id
        items {
          path    = "key.pem"
          version = "latest"
        }
      }
    }
  }
}

# Only the invoker account may call the services.
resource "google_cloud_run_v2_service_iam_member" "invoker" {
  for_each = {
    planner   = google_cloud_run_v2_service.planner.name
    extractor = google_cloud_run_v2_service.extractor.name
    loader    = google_cloud_run_v2_service.loader.name
  }
  name     = each.value
  location = var.region
  role     = "roles/run.invoker"
  member   = google_service_account.invoker.member
}

variable "project" {
  description = "Google Cloud project id that hosts the pipeline."
  type        = string
}

variable "region" {
  description = "Region of the bucket, the Cloud Run services and Cloud Scheduler."
  type        = string
  default     = "us-east1"
}

variable "bucket_name" {
  description = "Name of the staging bucket chunks are written to (GitLab's is postgres_pipeline; bucket names are global, so prefix yours)."
  type        = string
}

variable "object_retention_days" {
  description = "Staged chunks (and run records) are deleted after this many days."
  type        = number
  default     = 30
}

variable "image" {
  description = "Container image with the planner, extractor and loader binaries (infra/Dockerfile), e.g. us-east1-docker.pkg.dev/PROJECT/pgp/pgp:TAG."
  type        = string
}

variable "warehouse_url" {
  description = "PGP_WAREHOUSE_URL of the planner and loader, e.g. snowflake://PGP_SERVICE@ORG-ACCOUNT/RAW?warehouse=LOADING&role=PGP_LOADER&publish=job."
  type        = string
  validation {
    # An append's publish must run as a Snowflake job, not inside a request that
    # Pub/Sub's 600 s ack deadline bounds (infra/README.md, Deadlines).
    condition     = can(regex("[?&]publish=job(&|$)", var.warehouse_url))
    error_message = "warehouse_url must carry publish=job: the loader submits an append's publish as an asynchronous Snowflake job instead of waiting for it inside a push request."
  }
}

variable "source_env" {
  description = "Non-secret environment of the source connection: the variables the manifests' connection_info names (host, port, user, database), as NAME = value."
  type        = map(string)
  default     = {}
}

variable "source_password_env" {
  description = "Name of the environment variable the manifests' connection_info.pass names; filled from Secret Manager."
  type        = string
  default     = "PG_PASSWORD"
}

variable "scd_schedule" {
  description = "Cron schedule (Cloud Scheduler syntax) of the nightly SCD load."
  type        = string
  default     = "0 3 * * *"
}

variable "scd_time_zone" {
  description = "Time zone of the SCD schedule."
  type        = string
  default     = "Etc/UTC"
}

variable "scd_manifests" {
  description = "Manifests loaded by the nightly SCD job (one Cloud Scheduler job each), paths relative to PGP_MANIFEST_DIR."
  type        = list(string)
  default     = ["gitlab_com_scd_db_manifest.yaml"]
}

variable "max_delivery_attempts" {
  description = "Deliveries of a message before it goes to its dead-letter topic (Pub/Sub allows 5 to 100)."
  type        = number
  default     = 10
}

variable "extractor_max_instances" {
  description = "Upper bound on parallel extractor instances, i.e. on concurrent COPY connections to PostgreSQL."
  type        = number
  default     = 16
}

variable "loader_max_instances" {
  description = "Upper bound on loader instances (each runs COPY INTO in the warehouse)."
  type        = number
  default     = 8
}

variable "vpc_connector_cidr" {
  description = "A free /28 range for a Serverless VPC Access connector, when PostgreSQL is only reachable privately; empty for none."
  type        = string
  default     = ""
}

variable "vpc_network" {
  description = "VPC network of the connector (used only when vpc_connector_cidr is set)."
  type        = string
  default     = "default"
}

variable "alert_notification_channels" {
  description = "Monitoring notification channel ids that receive pgp's alerts."
  type        = list(string)
  default     = []
}

variable "manifest_gcs_prefixes" {
  description = "gs://bucket/folder/ places a load request may name a manifest in (the planner refuses any other gs:// manifest); empty: only manifests baked into the image under /manifests. Grant the planner's account read access there yourself."
  type        = list(string)
  default     = []
}

variable "gc_schedule" {
  description = "Cron schedule (Cloud Scheduler syntax) of the garbage collection."
  type        = string
  default     = "0 5 * * 0"
}

variable "gc_retention_days" {
  description = "Runs idle this many days are no longer in flight: unfinished ones are settled, and the tables, objects and run records of settled ones removed."
  type        = number
  default     = 7
}

variable "gc_ledger_retention_days" {
  description = "Ledger rows of runs settled this many days ago are deleted (the run table keeps one row per run)."
  type        = number
  default     = 30
}

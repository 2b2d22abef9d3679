# The staging bucket: chunks, run records and in-flight uploads. Uniform access (no
# object ACLs), never public, and everything deleted after the retention period — the
# lifecycle rule also removes uploads a crashed extractor left under _pgp_uploads/.
resource "google_storage_bucket" "staging" {
  name                        = var.bucket_name
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  lifecycle_rule {
    condition {
      age = var.object_retention_days
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age            = 1
      matches_prefix = ["_pgp_uploads/"]
    }
    action {
      type = "Delete"
    }
  }
}

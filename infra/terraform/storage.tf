# The staging bucket: chunks, run records and in-flight uploads. Uniform access (no
# object ACLs), never public, and everything deleted after the retention period — the
# lifecycle rule also removes uploads a crashed extractor left under _pgp_uploads/.
resource "google_storage_bucket" "staging" {
  # checkov:skip=CKV_GCP_62:Who read or wrote what is recorded by Cloud Audit Logs (Data Access logs for Cloud Storage, enabled per project), which Google recommends over usage logs; a second bucket of usage logs would be one more store to secure.
  # checkov:skip=CKV_GCP_78:Objects are never overwritten (every attempt has a name of its own, run records are create-only) and are deleted on purpose (lifecycle rule, pgp gc); versioning would only keep deleted copies of table data longer, billed.
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

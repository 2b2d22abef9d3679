# Alerts an operator acts on (what each means: docs/operations.md).

resource "google_monitoring_alert_policy" "dead_letters" {
  display_name          = "pgp: messages in a dead-letter topic"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  conditions {
    display_name = "undelivered dead letters"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND (resource.label.subscription_id = \"${google_pubsub_subscription.requests_dead.name}\" OR resource.label.subscription_id = \"${google_pubsub_subscription.extract_dead.name}\" OR resource.label.subscription_id = \"${google_pubsub_subscription.finalized_dead.name}\")"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "60s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "extract_backlog" {
  display_name          = "pgp: chunk tasks waiting over an hour"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  conditions {
    display_name = "oldest unacked chunk task"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" AND resource.label.subscription_id = \"${google_pubsub_subscription.extract.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 3600
      duration        = "300s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "rejected" {
  display_name          = "pgp: a service rejected an event permanently"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  conditions {
    display_name = "ERROR log lines of the pgp services"
    condition_matched_log {
      filter = "resource.type = \"cloud_run_revision\" AND resource.labels.service_name =~ \"^pgp-\" AND severity >= ERROR"
    }
  }
  alert_strategy {
    notification_rate_limit {
      period = "300s"
    }
  }
}

resource "google_monitoring_alert_policy" "server_errors" {
  display_name          = "pgp: services answering 5xx"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  conditions {
    display_name = "5xx responses (retried deliveries)"
    condition_threshold {
      filter          = "resource.type = \"cloud_run_revision\" AND resource.label.service_name = starts_with(\"pgp-\") AND metric.type = \"run.googleapis.com/request_count\" AND metric.label.response_code_class = \"5xx\""
      comparison      = "COMPARISON_GT"
      threshold_value = 10
      duration        = "900s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_SUM"
      }
    }
  }
}

"""Unit tests of the DAG's hand-back logic (python3 -m unittest, no Airflow needed)."""

import unittest

from pgp_handback import (
    FAILED,
    PENDING,
    PUBLISHED,
    Outcome,
    build_request,
    next_last_loaded,
    record_tables,
    run_id_for,
    targets_to_check,
    window_outcome,
)


def run(schema, table):
    return {"run": {"target": {"schema": schema, "table": table}, "run_id": "r"}}


class HandBack(unittest.TestCase):
    def test_request_and_run_id(self):
        rid = run_id_for("gitlab_com_db_manifest.yaml", "20260101T010000")
        self.assertEqual(rid, "incr-gitlab-com-db-manifest-20260101T010000")
        self.assertLessEqual(len(run_id_for("m" * 100 + ".yaml", "20260101T010000")), 64)
        r = build_request("m.yaml", "2026-01-01T01:00:00+00:00", 1, "d.t.x", rid, None)
        self.assertNotIn("last_loaded", r)
        r = build_request("m.yaml", "e", 1, "t", rid, "2026-01-01T00:00:00+00:00")
        self.assertEqual(r["last_loaded"], "2026-01-01T00:00:00+00:00")
        self.assertEqual(r["load_type"], "incremental")

    def test_record_listing_skips_ranges_and_other_runs(self):
        names = [
            "_pgp_runs/r1/issues.json",
            "_pgp_runs/r1/issues.abc.ranges.json",
            "_pgp_runs/r1/users.json",
            "_pgp_runs/r10/other.json",
            "_pgp_runs/r1/nested/x.json",
        ]
        self.assertEqual(
            record_tables(names, "r1"),
            {"issues": "_pgp_runs/r1/issues.json", "users": "_pgp_runs/r1/users.json"},
        )

    def test_published_only_when_every_table_is(self):
        records = {"issues": run("gitlab_com", "issues"), "users": run("gitlab_com", "users")}
        states = {("gitlab_com.issues", "r1"): ("published", None)}
        out = window_outcome("r1", records, lambda r, t: None, states)
        self.assertEqual(out.state, PENDING, out)
        self.assertIn("users", out.detail)
        states[("gitlab_com.users", "r1")] = ("claimed", None)
        self.assertEqual(window_outcome("r1", records, lambda r, t: None, states).state, PENDING)
        states[("gitlab_com.users", "r1")] = ("published", None)
        self.assertEqual(window_outcome("r1", records, lambda r, t: None, states).state, PUBLISHED)

    def test_an_abandoned_table_fails_the_window(self):
        records = {"issues": run("gitlab_com", "issues"), "users": run("gitlab_com", "users")}
        states = {
            ("gitlab_com.issues", "r1"): ("published", None),
            ("gitlab_com.users", "r1"): ("abandoned", "count mismatch"),
        }
        out = window_outcome("r1", records, lambda r, t: None, states)
        self.assertEqual(out.state, FAILED)
        self.assertIn("count mismatch", out.detail)

    def test_nothing_planned_yet_is_pending(self):
        self.assertEqual(window_outcome("r1", {}, lambda r, t: None, {}).state, PENDING)

    def test_skipped_tables_count_as_done_and_resumed_runs_are_followed(self):
        records = {
            "issues": {"resumes": {"run_id": "r0"}},
            "new_table": {"skipped": {"reason": "target missing: needs a backfill"}},
        }
        read = lambda rid, table: run("gitlab_com", table) if rid == "r0" else None
        self.assertEqual(
            targets_to_check("r1", records, read), {("gitlab_com.issues", "r0"): "issues"}
        )
        states = {("gitlab_com.issues", "r0"): ("published", None)}
        out = window_outcome("r1", records, read, states)
        self.assertEqual(out.state, PUBLISHED, out)
        self.assertEqual(window_outcome("r1", records, read, {}).state, PENDING)

    def test_the_window_end_is_handed_back_only_when_published(self):
        end, prev = "2026-01-01T02:00:00+00:00", "2026-01-01T01:00:00+00:00"
        self.assertEqual(next_last_loaded(prev, Outcome(PUBLISHED, ""), end), end)
        self.assertEqual(next_last_loaded(prev, Outcome(FAILED, ""), end), prev)
        self.assertEqual(next_last_loaded(prev, Outcome(PENDING, ""), end), prev)
        self.assertIsNone(next_last_loaded(None, Outcome(FAILED, ""), end))


if __name__ == "__main__":
    unittest.main()

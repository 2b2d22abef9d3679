"""Hourly incremental loads through pgp, handing back only the windows pgp published.

Per manifest, each DAG run:
1. **publish** one load request ({"load_type": "incremental", "execution_date",
   "hours", "task_instance", "last_loaded", "run_id"}) to the pgp-requests topic (the
   planner's contract, README "Message contract"). The run id is derived from the DAG
   run, so a retried task never loads its window twice.
2. **wait** until pgp has published the window for every table of the request: the
   planner's run records in the bucket (`_pgp_runs/<run_id>/`) say which tables the
   request loads (or skipped, or resumed from an earlier run), and the warehouse's run
   table (`_PGP.RUNS`) says where each stands. A table abandoned by pgp fails the task
   (with pgp's reason); a window still unpublished after `timeout` fails it too.
3. **hand back** the window end pgp reached (the request's execution_date) as the
   manifest's LAST_LOADED — only after step 2 succeeded. A failed window leaves
   LAST_LOADED where it was, so the next run's window starts there (pgp re-reads from
   30 minutes before it) and loads the failed window again: retried, never skipped.

The decision logic lives in pgp_handback.py (unit tested without Airflow); keep both
files in the DAGs folder.

Configure (Airflow Variables): `pgp_project` (Google Cloud project of the pgp-requests
topic), `pgp_bucket` (the staging bucket), `pgp_snowflake_database` (the database
holding `_PGP.RUNS`), optionally `pgp_snowflake_conn_id` (default
`snowflake_default`) and `pgp_gcp_conn_id` (default `google_cloud_default`). The
manifests come from the environment variable PGP_AIRFLOW_MANIFESTS (a JSON list),
read when the DAG file is parsed.
"""

import json
import os
import re
from datetime import timedelta

import pendulum
from airflow.providers.google.cloud.hooks.gcs import GCSHook
from airflow.providers.google.cloud.hooks.pubsub import PubSubHook
from airflow.providers.snowflake.hooks.snowflake import SnowflakeHook
from airflow.providers.standard.operators.python import PythonOperator
from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import DAG, Variable
from airflow.sdk.exceptions import AirflowFailException

from pgp_handback import (
    FAILED,
    PUBLISHED,
    RUNS_PREFIX,
    build_request,
    next_last_loaded,
    parse_record,
    record_tables,
    run_id_for,
    targets_to_check,
    window_outcome,
)

MANIFESTS = json.loads(os.environ.get("PGP_AIRFLOW_MANIFESTS", '["gitlab_com_db_manifest.yaml"]'))
HOURS = 1


def _last_loaded_key(manifest: str) -> str:
    return "pgp_last_loaded__" + manifest.replace("/", "_")


def _run_id(manifest: str, context) -> str:
    return run_id_for(manifest, context["ts_nodash"])


def publish_request(manifest: str, **context) -> str:
    """Publish this DAG run's load request; returns its run id."""
    ti = context["ti"]
    request = build_request(
        manifest,
        context["data_interval_end"].isoformat(),
        HOURS,
        f"{ti.dag_id}.{ti.task_id}.{context['ts_nodash']}",
        _run_id(manifest, context),
        Variable.get(_last_loaded_key(manifest), default=None),
    )
    PubSubHook(gcp_conn_id=Variable.get("pgp_gcp_conn_id", default="google_cloud_default")).publish(
        project_id=Variable.get("pgp_project"),
        topic="pgp-requests",
        messages=[{"data": json.dumps(request).encode()}],
    )
    return request["run_id"]


def window_published(manifest: str, **context) -> bool:
    """True once pgp published the window for every table; fails on an abandoned one."""
    run_id = _run_id(manifest, context)
    bucket = Variable.get("pgp_bucket")
    gcs = GCSHook(gcp_conn_id=Variable.get("pgp_gcp_conn_id", default="google_cloud_default"))
    names = gcs.list(bucket, prefix=f"{RUNS_PREFIX}{run_id}/")
    records = {
        table: parse_record(gcs.download(bucket, name))
        for table, name in record_tables(names, run_id).items()
    }

    def read_record(rid, table):
        name = f"{RUNS_PREFIX}{rid}/{table}.json"
        return parse_record(gcs.download(bucket, name)) if gcs.exists(bucket, name) else None

    pairs = targets_to_check(run_id, records, read_record)
    states = {}
    if pairs:
        database = Variable.get("pgp_snowflake_database")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", database):
            raise AirflowFailException(f"pgp_snowflake_database {database!r} is not a plain name")
        hook = SnowflakeHook(
            snowflake_conn_id=Variable.get("pgp_snowflake_conn_id", default="snowflake_default")
        )
        run_ids = sorted({rid for _, rid in pairs})
        placeholders = ", ".join(["%s"] * len(run_ids))
        rows = hook.get_records(
            f'SELECT TARGET, RUN_ID, STATE, REASON FROM "{database.upper()}"."_PGP"."RUNS" '
            f"WHERE RUN_ID IN ({placeholders})",
            parameters=run_ids,
        )
        states = {(t, r): (s, reason) for t, r, s, reason in rows}
    outcome = window_outcome(run_id, records, read_record, states)
    print(f"pgp run {run_id}: {outcome.state}: {outcome.detail}")
    if outcome.state == FAILED:
        # pgp gave up on a table for a stated reason: waiting cannot help. LAST_LOADED
        # stays, so the next run loads this window again.
        raise AirflowFailException(outcome.detail)
    return outcome.state == PUBLISHED


def hand_back(manifest: str, **context) -> str:
    """The window was published: its end is the next run's LAST_LOADED."""
    key = _last_loaded_key(manifest)
    end = context["data_interval_end"].isoformat()
    previous = Variable.get(key, default=None)
    from pgp_handback import Outcome

    value = next_last_loaded(previous, Outcome(PUBLISHED, ""), end)
    Variable.set(key, value)
    return value


with DAG(
    dag_id="pgp_incremental",
    schedule=timedelta(hours=HOURS),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # windows are handed back in order
    default_args={"retries": 3, "retry_delay": timedelta(minutes=2)},
    tags=["pgp"],
) as dag:
    for manifest in MANIFESTS:
        name = re.sub(r"[^A-Za-z0-9_]", "_", manifest.split("/")[-1].split(".")[0])
        publish = PythonOperator(
            task_id=f"publish_{name}",
            python_callable=publish_request,
            op_kwargs={"manifest": manifest},
        )
        wait = PythonSensor(
            task_id=f"wait_{name}",
            python_callable=window_published,
            op_kwargs={"manifest": manifest},
            mode="reschedule",  # frees the worker slot between checks
            poke_interval=120,
            timeout=6 * 3600,
        )
        record = PythonOperator(
            task_id=f"hand_back_{name}",
            python_callable=hand_back,
            op_kwargs={"manifest": manifest},
        )
        publish >> wait >> record

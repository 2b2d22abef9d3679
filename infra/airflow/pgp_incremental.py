"""Hourly incremental loads through pgp: publish one load request per manifest.

Each run publishes {"load_type": "incremental", "execution_date", "hours",
"task_instance", "last_loaded", "run_id"} to the pgp-requests topic (the planner's
contract, README "Message contract"), then records the window end it asked for as the
manifest's LAST_LOADED, so the next run starts from there (pgp restarts the window 30
minutes earlier, as GitLab's pipeline did). The run id is derived from the DAG run, so
a retried publish task never loads its window twice.

The load itself is asynchronous (planner -> extractors -> loader); watch its progress in
Cloud Logging by run_id. Set the Airflow Variables `pgp_project` and, optionally,
`pgp_manifests` (JSON list) before enabling the DAG.
"""

import json
from datetime import timedelta

import pendulum
from airflow import DAG
from airflow.models import Variable
from airflow.operators.python import PythonOperator
from airflow.providers.google.cloud.hooks.pubsub import PubSubHook

MANIFESTS = json.loads(Variable.get("pgp_manifests", default_var='["gitlab_com_db_manifest.yaml"]'))
HOURS = 1


def _last_loaded_key(manifest: str) -> str:
    return "pgp_last_loaded__" + manifest.replace("/", "_")


def publish_request(manifest: str, **context) -> str:
    """Publish this DAG run's load request; returns its run id (for the logs)."""
    end = context["data_interval_end"]
    ti = context["ti"]
    request = {
        "manifest": manifest,
        "load_type": "incremental",
        "execution_date": end.isoformat(),
        "hours": HOURS,
        "task_instance": f"{ti.dag_id}.{ti.task_id}.{context['ts_nodash']}",
        "run_id": f"incr-{manifest.split('.')[0][:30]}-{context['ts_nodash']}".replace("_", "-")[:64],
    }
    last = Variable.get(_last_loaded_key(manifest), default_var=None)
    if last:
        request["last_loaded"] = last
    PubSubHook().publish(
        project_id=Variable.get("pgp_project"),
        topic="pgp-requests",
        messages=[{"data": json.dumps(request).encode()}],
    )
    return request["run_id"]


def record_window_end(manifest: str, **context) -> str:
    """Pass the reached window end back: the next run's LAST_LOADED."""
    end = context["data_interval_end"].isoformat()
    Variable.set(_last_loaded_key(manifest), end)
    return end


with DAG(
    dag_id="pgp_incremental",
    schedule=timedelta(hours=HOURS),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 3, "retry_delay": timedelta(minutes=2)},
    tags=["pgp"],
) as dag:
    for manifest in MANIFESTS:
        name = manifest.split("/")[-1].split(".")[0]
        publish = PythonOperator(
            task_id=f"publish_{name}",
            python_callable=publish_request,
            op_kwargs={"manifest": manifest},
        )
        record = PythonOperator(
            task_id=f"record_{name}",
            python_callable=record_window_end,
            op_kwargs={"manifest": manifest},
        )
        publish >> record

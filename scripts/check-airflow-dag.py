"""Load infra/airflow in Airflow's DagBag and fail on any import error (CI runs it in
a virtualenv with apache-airflow and its Google and Snowflake providers from PyPI)."""

import os
import sys
import tempfile

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "infra", "airflow")
here = os.path.normpath(here)
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("PGP_AIRFLOW_MANIFESTS", '["gitlab_com_db_manifest.yaml", "gitlab_ops_db_manifest.yaml"]')
sys.path.insert(0, here)

from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=here)
if bag.import_errors:
    for path, err in bag.import_errors.items():
        print(f"{path}:\n{err}", file=sys.stderr)
    sys.exit(1)
dag = bag.dags.get("pgp_incremental")
if dag is None:
    print(f"pgp_incremental not found; DAGs: {sorted(bag.dags)}", file=sys.stderr)
    sys.exit(1)
tasks = sorted(t.task_id for t in dag.tasks)
want = sorted(
    f"{step}_{m}"
    for step in ("publish", "wait", "hand_back")
    for m in ("gitlab_com_db_manifest", "gitlab_ops_db_manifest")
)
if tasks != want:
    print(f"tasks {tasks}, expected {want}", file=sys.stderr)
    sys.exit(1)
for m in ("gitlab_com_db_manifest", "gitlab_ops_db_manifest"):
    wait = dag.get_task(f"wait_{m}")
    if [t.task_id for t in wait.upstream_list] != [f"publish_{m}"] or [
        t.task_id for t in wait.downstream_list
    ] != [f"hand_back_{m}"]:
        print(f"{m}: publish >> wait >> hand_back is broken", file=sys.stderr)
        sys.exit(1)
print(f"DagBag: pgp_incremental loads with no import errors ({len(tasks)} tasks)")

"""The hand-back logic of the pgp_incremental DAG, free of Airflow so it is unit tested.

An incremental window is handed back (becomes the next run's LAST_LOADED) only once
pgp has published it for every table of the request: the planner leaves one run record
per table at ``_pgp_runs/<run_id>/<table>.json`` in the bucket (``{"run": header}``,
``{"resumes": {"run_id": other}}`` when the request resumed an earlier run, or
``{"skipped": {"reason": ...}}``), and the warehouse's run table ``_PGP.RUNS`` says
where each (target, run id) stands: ``planned``, ``claimed``, ``published`` or
``abandoned`` with a reason. A window that is abandoned, or not published in time, is
not handed back: LAST_LOADED stays where it was, so the next run's window starts there
(pgp re-reads from 30 minutes before it) and loads the failed window again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Tuple

RUNS_PREFIX = "_pgp_runs/"

PUBLISHED = "published"
PENDING = "pending"
FAILED = "failed"


def run_id_for(manifest: str, ts_nodash: str) -> str:
    """The request's run id, derived from the DAG run: a retried task reuses it, so a
    window is never loaded twice."""
    stem = manifest.split("/")[-1].split(".")[0][:30]
    return f"incr-{stem}-{ts_nodash}".replace("_", "-")[:64]


def build_request(
    manifest: str,
    window_end: str,
    hours: int,
    task_instance: str,
    run_id: str,
    last_loaded: Optional[str],
) -> dict:
    """The load request (README "Message contract")."""
    request = {
        "manifest": manifest,
        "load_type": "incremental",
        "execution_date": window_end,
        "hours": hours,
        "task_instance": task_instance,
        "run_id": run_id,
    }
    if last_loaded:
        request["last_loaded"] = last_loaded
    return request


def record_tables(object_names: Iterable[str], run_id: str) -> Dict[str, str]:
    """Manifest table -> record object, from a listing of ``_pgp_runs/<run_id>/``
    (the chunk-range objects beside the records are not records)."""
    prefix = f"{RUNS_PREFIX}{run_id}/"
    out = {}
    for name in object_names:
        if not name.startswith(prefix) or name.endswith(".ranges.json"):
            continue
        rest = name[len(prefix):]
        if "/" in rest or not rest.endswith(".json"):
            continue
        out[rest[: -len(".json")]] = name
    return out


@dataclass(frozen=True)
class Outcome:
    state: str  # PUBLISHED, PENDING or FAILED
    detail: str


def window_outcome(
    run_id: str,
    records: Dict[str, dict],
    read_record: Callable[[str, str], Optional[dict]],
    run_states: Dict[Tuple[str, str], Tuple[str, Optional[str]]],
) -> Outcome:
    """Where the request's window stands.

    ``records``: manifest table -> parsed run record of this request.
    ``read_record(run_id, table)``: another run's record (for a resumed run).
    ``run_states``: (target ``schema.table``, run id) -> (state, reason), from
    ``_PGP.RUNS``.
    """
    if not records:
        return Outcome(PENDING, f"run {run_id}: no run record yet (not planned yet)")
    waiting, failed, done = [], [], []
    for table in sorted(records):
        record = records[table]
        rid = run_id
        if "resumes" in record:
            rid = record["resumes"]["run_id"]
            record = read_record(rid, table) or {}
        if "skipped" in record:
            done.append(f"{table}: skipped ({record['skipped'].get('reason', '')})")
            continue
        header = record.get("run")
        if not header:
            waiting.append(f"{table}: run {rid} has no record yet")
            continue
        target = f"{header['target']['schema']}.{header['target']['table']}"
        state, reason = run_states.get((target, rid), (None, None))
        if state == "published":
            done.append(f"{table}: published by run {rid}")
        elif state == "abandoned":
            failed.append(f"{table}: run {rid} abandoned: {reason}")
        else:
            waiting.append(f"{table}: run {rid} is {state or 'not recorded yet'}")
    if failed:
        return Outcome(FAILED, "; ".join(failed))
    if waiting:
        return Outcome(PENDING, "; ".join(waiting))
    return Outcome(PUBLISHED, "; ".join(done))


def targets_to_check(
    run_id: str, records: Dict[str, dict], read_record: Callable[[str, str], Optional[dict]]
) -> Dict[Tuple[str, str], str]:
    """(target, run id) pairs whose state the outcome needs -> manifest table."""
    out = {}
    for table, record in records.items():
        rid = run_id
        if "resumes" in record:
            rid = record["resumes"]["run_id"]
            record = read_record(rid, table) or {}
        header = record.get("run")
        if header:
            out[(f"{header['target']['schema']}.{header['target']['table']}", rid)] = table
    return out


def next_last_loaded(previous: Optional[str], outcome: Outcome, window_end: str) -> Optional[str]:
    """What the next run starts from: the reached window end once published, else the
    previous value (the failed window is loaded again by the next run)."""
    return window_end if outcome.state == PUBLISHED else previous


def parse_record(data: bytes) -> dict:
    return json.loads(data.decode("utf-8"))

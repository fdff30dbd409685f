"""Deadline Alerts that hold restore tests and drills to the RTO the policy promises."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from airflow.sdk import DeadlineAlert, DeadlineReference, SyncCallback

from continuity.policy.model import format_duration

from continuity.policy.loading import load_policy

log = logging.getLogger(__name__)


def running_under_dags_test(argv: list[str] | None = None) -> bool:
    """Whether this process is `airflow dags test` (whose DAG runs cannot carry Deadline Alerts)."""
    argv = sys.argv if argv is None else argv
    words = [word for word in argv[1:] if not word.startswith("-")]
    return "airflow" in Path(argv[0]).parts[-2:] + (Path(argv[0]).name,) and words[:2] == ["dags", "test"]


def rto_deadline(dag_id: str, *, service: str = "database") -> DeadlineAlert | None:
    """Alert once a run of `dag_id` has been going longer than the tightest RTO target of the business
    functions that depend on `service` (read from the policy when the DAG is parsed).

    None under `airflow dags test`: Airflow 3.3.2's dag.test() looks the alerts up by id on a DAG
    that was never written to the metadata DB and fails the run at its end. The scheduler, which
    is where the alert matters, always gets it."""
    functions = load_policy().functions_on_the_database() if service == "database" else \
        load_policy().functions_depending_on(service)
    target = min(f.rto.target for f in functions.values())
    if running_under_dags_test():
        log.warning("%s: no RTO deadline alert in this `airflow dags test` run (it holds under the scheduler: %s)",
                    dag_id, format_duration(target))
        return None
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=target,
        callback=SyncCallback("continuity.alerts.callbacks.rto_deadline_missed",
                              kwargs={"dag_id": dag_id, "rto_target": format_duration(target)}),
        name=f"{dag_id} past its RTO target",
    )

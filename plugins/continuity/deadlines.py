"""Deadline Alerts that hold restore tests and drills to the RTO the policy promises."""

from __future__ import annotations

from airflow.sdk.definitions.callback import SyncCallback
from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

from continuity.policy import format_duration, load_policy


def rto_deadline(dag_id: str, *, service: str = "database") -> DeadlineAlert:
    """Alert once a run of `dag_id` has been going longer than the tightest RTO target of the business
    functions that depend on `service` (read from the policy when the DAG is parsed)."""
    functions = load_policy().functions_depending_on(service)
    target = min(f.rto.target for f in functions.values())
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=target,
        callback=SyncCallback("continuity.callbacks.rto_deadline_missed",
                              kwargs={"dag_id": dag_id, "rto_target": format_duration(target)}),
        name=f"{dag_id} past its RTO target",
    )

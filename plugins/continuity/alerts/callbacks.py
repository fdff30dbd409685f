"""Deadline callbacks: what happens when a restore test or drill runs past its RTO target.

Airflow's scheduler calls these (DeadlineAlert + SyncCallback) while the run is still going, so an
operator hears that recovery would have been too slow before the run even ends. The alert goes to
the callback's log at ERROR level and, as a JSON record, to `alerts/` in every required location,
where audits find it next to the reports.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from continuity.reports import store_report
from continuity.storage.locations import key_safe

log = logging.getLogger(__name__)

ALERT_PREFIX = "alerts/"


class RtoMissedRecord(BaseModel):
    """The alert a deadline callback writes to `alerts/` in every required location."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["rto-deadline-missed"] = "rto-deadline-missed"
    dag_id: str
    run_id: str
    rto_target: str
    raised_at: str
    message: str


def rto_deadline_missed(*, dag_id: str, rto_target: str, context: dict[str, Any] | None = None, **_: Any) -> None:
    """Raise the alert for a run still going after its RTO target; never fails the run itself."""
    from continuity.hooks.backup import ContinuityBackupHook

    dag_run = (context or {}).get("dag_run") or {}
    # The scheduler passes the REST API's view of the run ("dag_run_id"); tests may pass "run_id".
    run_id = (dag_run.get("dag_run_id") or dag_run.get("run_id")) if isinstance(dag_run, dict) \
        else getattr(dag_run, "run_id", None)
    run_id = run_id or "unknown-run"
    alert = RtoMissedRecord(dag_id=dag_id, run_id=run_id, rto_target=rto_target,
                            raised_at=datetime.now(timezone.utc).isoformat(),
                            message=f"{dag_id} run {run_id} is still running after its RTO target of {rto_target}: "
                                    f"a real recovery would have missed the objective")
    log.error("ALERT: %s", alert.message)
    hook = ContinuityBackupHook(follow_topology=False)  # callbacks may not read Variables; storage is enough
    locations = hook.get_locations()
    # One unreachable location must not swallow the alert elsewhere.
    store_report(alert, [locations[name] for name in sorted(hook.required_locations())],
                 name=key_safe(f"{dag_id}-{run_id}"), prefix=ALERT_PREFIX, warn=log.error)
    from continuity.incidents.records import IncidentRequest

    report_cause(IncidentRequest(severity="high", title=f"{dag_id} ran past its RTO target of {rto_target}",
                                 description=alert.message, cause_key=f"rto-missed:{dag_id}",
                                 source=f"{dag_id} run {run_id}"))


# -- causes for dr_incident (through the incident inbox; see dags/dr_incident_inbox.py) ----------------
# How grave a DAG's failed step is: losing backups or replication is high, a failed test medium.
FAILURE_SEVERITY = {"dr_full_backup": "high", "dr_wal_archive": "high", "dr_object_replication": "high",
                    "dr_backup_validation": "medium", "dr_config_backup": "medium", "dr_restore_test": "medium",
                    "dr_drill": "medium"}


def report_cause(request: Any, *, hook: Any = None) -> bool:
    """Leave an incident cause in the inbox; never fails the caller (a red run still shows the problem).
    A caller reporting several causes passes its one ContinuityIncidentHook (its storage clients are reused)."""
    from continuity.hooks.incident import ContinuityIncidentHook
    from continuity.incidents.records import report_cause as leave_in_inbox

    try:
        hook = hook or ContinuityIncidentHook(follow_topology=False)
        if hook.policy.communication is None:
            return False
        name = leave_in_inbox(hook.incident_locations(), request, journal=hook.get_journal())
        log.info("incident cause %s reported (%s): %s", request.key(), name, request.title)
        return True
    except Exception as exc:
        log.error("could not report the incident cause %s: %s", request.key(), exc)
        return False


def report_failed_task(context: dict[str, Any]) -> None:
    """on_failure_callback (a task failed for good, retries spent): one incident per failing step."""
    from continuity.incidents.records import IncidentRequest

    ti = context["ti"]
    exception = str(context.get("exception") or "")
    error = exception.splitlines()[0][:1000] if exception else "see the task log"
    report_cause(IncidentRequest(
        severity=FAILURE_SEVERITY.get(ti.dag_id, "medium"), title=f"{ti.dag_id}: {ti.task_id} failed",
        description=f"run {context['run_id']}: {error}", cause_key=f"failed:{ti.dag_id}:{ti.task_id}",
        source=f"{ti.dag_id} run {context['run_id']}"))

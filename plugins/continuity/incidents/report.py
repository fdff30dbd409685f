"""The post-incident report: timeline, measured unavailability per business function, data loss, cost,
root cause, lessons and action items — as JSON and Markdown in every required location.

Numbers come from records, each naming its source. A function's unavailability: the probe rounds' history
(continuity.health.availability: first failed round to first successful one, an outage that began before the
incident was opened counted from its start), else dr_failover's audits recorded while the incident was open
(the entry point's pause), else the incident record's own open → resolved interval (what people were told,
not a probe). Data loss from the audits. A number with no record is `not measured`. Nothing here imports
Airflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from pydantic import BaseModel

from continuity.incidents.communication import downtime_cost, render
from continuity.failover.records import AUDIT_PREFIX
from continuity.health.availability import read_states, unavailability
from continuity.incidents.records import Incident, IncidentStore, Receipt
from continuity.policy.model import Policy, format_duration
from continuity.storage.locations import StorageLocation, stored_documents


# How far before an incident was opened the probe history is read: an outage it was opened for began earlier.
HISTORY_LOOKBACK = timedelta(hours=6)


class Unavailability(BaseModel):
    function: str
    seconds: float | None
    duration: str
    source: str


class PostIncidentReport(BaseModel):
    kind: str = "post-incident-report"
    incident_id: str
    title: str
    severity: str
    commander: str
    opened_at: datetime
    resolved_at: datetime | None
    total_duration: str
    due_by: datetime
    unavailability: list[Unavailability]
    data_loss: str
    cost: str
    timeline: list[dict[str, str]]
    deliveries: dict[str, int]  # delivered / failed receipts
    root_cause: str
    lessons_learned: str
    action_items: list[str]


def failover_audits(locations: Sequence[StorageLocation], start: datetime, end: datetime) -> list[dict]:
    """dr_failover's audits recorded between `start` and `end`."""
    return sorted((a for a in stored_documents(locations, AUDIT_PREFIX)
                   if start <= datetime.fromisoformat(a["recorded_at"]) <= end), key=lambda a: a["recorded_at"])


def build(policy: Policy, incident: Incident, receipts: Sequence[Receipt], *, root_cause: str, lessons_learned: str,
          action_items: list[str], locations: Sequence[StorageLocation]) -> PostIncidentReport:
    assert policy.communication is not None
    end = incident.resolved_at or datetime.now(incident.opened_at.tzinfo)
    audits = [a for a in failover_audits(locations, incident.opened_at, end) if a.get("unavailability_seconds") is not None]
    on_database = policy.functions_on_the_database()
    history = read_states(locations, incident.opened_at - HISTORY_LOOKBACK, end)
    rows = []
    for function in incident.functions or sorted(policy.business_functions):
        probed = unavailability(history, function, start=incident.opened_at, end=end)
        if probed is not None:
            region = next((s.region for s in reversed(history) if s.function == function), None)
            seconds, source = probed.seconds, probed.describe(region)
        elif audits and function in on_database:
            seconds = sum(a["unavailability_seconds"] for a in audits)
            source = "dr_failover audit " + ", ".join(a["run_id"] for a in audits) + " (writes refused → accepted)"
        else:
            seconds = (end - incident.opened_at).total_seconds()
            source = f"incident record {incident.incident_id}: opened → resolved (not a probe of the function)"
        rows.append(Unavailability(function=function, seconds=seconds, source=source,
                                   duration=format_duration(timedelta(seconds=round(seconds)))))
    losses = [a["data_loss_bytes"] for a in audits if a.get("data_loss_bytes") is not None]
    data_loss = (f"{sum(losses)} bytes of WAL (dr_failover audit {', '.join(a['run_id'] for a in audits)})"
                 if losses else "not measured (no dr_failover run recorded data loss during the incident)")
    worst = max((r.seconds or 0 for r in rows), default=0)
    return PostIncidentReport(
        incident_id=incident.incident_id, title=incident.title, severity=incident.severity, commander=incident.commander,
        opened_at=incident.opened_at, resolved_at=incident.resolved_at,
        total_duration=format_duration(end - incident.opened_at), due_by=end + policy.communication.report_due,
        unavailability=rows, data_loss=data_loss, cost=downtime_cost(policy, timedelta(seconds=worst)),
        timeline=[{"at": f"{e.at:%Y-%m-%d %H:%M:%S} UTC", "what": e.what} for e in incident.timeline],
        deliveries={"delivered": sum(r.status == "delivered" for r in receipts),
                    "failed": sum(r.status == "failed" for r in receipts)},
        root_cause=root_cause, lessons_learned=lessons_learned, action_items=action_items)


def render_markdown(policy: Policy, report: PostIncidentReport) -> str:
    return render(policy, "post_incident_report", {
        "incident_id": report.incident_id, "title": report.title, "severity": report.severity,
        "start_time": f"{report.opened_at:%Y-%m-%d %H:%M} UTC",
        "resolution_time": f"{report.resolved_at:%Y-%m-%d %H:%M} UTC" if report.resolved_at else "not resolved",
        "total_duration": report.total_duration, "incident_commander": report.commander, "data_loss": report.data_loss,
        "cost": report.cost, "unavailability": [r.model_dump() for r in report.unavailability],
        "timeline": report.timeline, "root_cause": report.root_cause, "lessons_learned": report.lessons_learned,
        "action_items": report.action_items or ["none entered"]})


def store(policy: Policy, incidents: IncidentStore, report: PostIncidentReport) -> list[str]:
    written = incidents.put_document(report.incident_id, "report.json", report.model_dump_json(indent=2).encode())
    written += incidents.put_document(report.incident_id, "report.md", render_markdown(policy, report).encode())
    return written

"""Which of a health assessment's checks open incidents, and which open incidents the checks have closed.

Every failing check is a cause of its own (`health:<subject>`) at its component's severity in the policy
(`health_monitor.alerts`), or the severity the check itself carries (a replication slot filling the primary's
disk is `slot_wal_alert_severity` whatever its component): a lost DR standby, an application instance down,
storage unreachable, the spool filling each reach a person, not only a red run. A check that stays red, or
flaps, joins its one open incident. A disaster has its own critical incident, which lists every failing check:
no per-check incidents beside it.

An incident of a check is resolved once that check has been measured green and nothing has joined the incident
for `resolve_after`: the green spell must outlast a flap.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from continuity.health.checks import Assessment, Check
from continuity.incidents.records import Incident, IncidentRequest
from continuity.policy.model import Policy, Severity, format_duration

CAUSE_PREFIX = "health:"


def cause_of(check: Check) -> str:
    return f"{CAUSE_PREFIX}{check.subject}"


def severity_of(policy: Policy, check: Check) -> Severity | None:
    return check.alert or policy.health_monitor.alerts.get(check.component)  # type: ignore[call-overload]


def alert_requests(policy: Policy, assessment: Assessment, *, source: str) -> list[IncidentRequest]:
    """One request per failing check that has a severity; none beside a disaster (its incident covers them)."""
    if assessment.disaster:
        return []
    return [IncidentRequest(severity=severity, title=f"{check.subject}: {check.component} check failing",
                            description=check.reason, cause_key=cause_of(check), source=source)
            for check in assessment.failing if (severity := severity_of(policy, check)) is not None]


def last_red(incident: Incident) -> datetime:
    """When the incident was last opened or joined (each red assessment joins it)."""
    return max([incident.opened_at, *(e.at for e in incident.timeline
                                      if e.what.startswith(("opened", "triggered again")))])


def resolve_requests(policy: Policy, assessment: Assessment, open_incidents: list[Incident], *, now: datetime,
                     source: str) -> list[IncidentRequest]:
    """A resolve request for each open incident of a check measured green in `assessment` whose last red report
    is at least `resolve_after` old. A check not measured this time (its task crashed) resolves nothing."""
    green = {cause_of(check): check for check in assessment.checks if check.healthy}
    failing = {cause_of(check) for check in assessment.failing}
    hold: timedelta = policy.health_monitor.resolve_after
    requests = []
    for incident in open_incidents:
        check = green.get(incident.cause_key)
        if check is None or incident.cause_key in failing or now - last_red(incident) < hold:
            continue
        requests.append(IncidentRequest(
            action="resolve", incident_id=incident.incident_id, severity=incident.severity,
            title=f"{check.subject}: green again", cause_key=incident.cause_key, source=source,
            description=f"{check.reason} (green, nothing red reported for {format_duration(hold)} or more)"))
    return requests

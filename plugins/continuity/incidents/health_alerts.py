"""Which of a health assessment's failing checks become incidents by themselves.

A check carries an alert (a severity) when what it found needs a person before it turns into an outage, for
instance a replication slot filling the primary's disk, whether or not the weighted score says "disaster".
One cause per check (its subject), so a check that stays red, or flaps, joins one open incident.
"""

from __future__ import annotations

from continuity.health.checks import Assessment
from continuity.incidents.records import IncidentRequest

CAUSE_PREFIX = "health:"


def alert_requests(assessment: Assessment, *, source: str) -> list[IncidentRequest]:
    return [IncidentRequest(severity=check.alert, title=f"{check.subject}: {check.component} check failing",
                            description=check.reason, cause_key=f"{CAUSE_PREFIX}{check.subject}", source=source)
            for check in assessment.failing if check.alert is not None]

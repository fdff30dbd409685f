"""Incident communication: the policy's matrix applied, and the templates rendered strictly.

A template is a Jinja file under `include/templates/` named by the policy (`communication.templates`).
Rendering is strict: a field the template uses and the caller did not give is an error naming the
field and the template, raised before anything is sent. Nothing here imports Airflow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta

from continuity.incidents.statuspage import incident_page_path
from continuity.policy.model import Policy, format_duration, parse_duration
from continuity.policy.project import include_dir
from continuity.storage.locations import StorageLocation, stored_documents

log = logging.getLogger(__name__)


class TemplateError(ValueError):
    """A template cannot be rendered: the message names the template and the missing or broken field."""


def _environment(directory: Path) -> jinja2.Environment:
    # StrictUndefined: a missing field fails instead of printing nothing; no autoescape, these are
    # plain-text messages (the status page escapes what it shows).
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(directory)), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, autoescape=False)


def template_file(policy: Policy, name: str) -> str:
    if policy.communication is None:
        raise TemplateError("the policy has no communication section: no templates to render")
    try:
        return policy.communication.templates[name]
    except KeyError:
        raise TemplateError(f"no template {name!r} in communication.templates (known: "
                            f"{sorted(policy.communication.templates)})") from None


def required_fields(policy: Policy, name: str, *, directory: Path | None = None) -> set[str]:
    """The fields template `name` uses (the caller must give every one)."""
    directory = directory or include_dir() / "templates"
    file = template_file(policy, name)
    try:
        source = (directory / file).read_text()
    except OSError as exc:
        raise TemplateError(f"template {name} ({directory / file}): cannot read it: {exc.strerror}") from None
    return set(meta.find_undeclared_variables(_environment(directory).parse(source)))


def render(policy: Policy, name: str, fields: Mapping[str, Any], *, directory: Path | None = None) -> str:
    """Template `name` with `fields`; TemplateError naming every missing field before anything is sent."""
    directory = directory or include_dir() / "templates"
    missing = sorted(required_fields(policy, name, directory=directory) - set(fields) - {"test"})
    if missing:
        raise TemplateError(f"template {name} ({template_file(policy, name)}): missing field"
                            f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}; nothing was sent")
    try:
        return _environment(directory).get_template(template_file(policy, name)).render(**{"test": False, **fields})
    except jinja2.UndefinedError as exc:  # e.g. an attribute of a given field
        raise TemplateError(f"template {name} ({template_file(policy, name)}): {exc.message}; nothing was sent") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template {name} ({template_file(policy, name)}): {exc}") from None


# -- what drafts say: measured estimates, never constants ---------------------------------------------
DRILL_REPORT_PREFIX = "reports/drill/"


def latest_drill_rto(locations: Sequence[StorageLocation]) -> tuple[float, str] | None:
    """The newest successful drill's measured RTO in seconds and its source ("drill <id> of <date>")."""
    measured = [(r["started_at"], float(r["rto_seconds"]), r["drill_id"])
                for r in stored_documents(locations, DRILL_REPORT_PREFIX)
                if r.get("kind") == "drill" and r.get("success") and r.get("rto_seconds") is not None]
    if not measured:
        return None
    started, seconds, drill_id = max(measured)
    return seconds, f"drill {drill_id} of {started[:10]}"


def estimated_recovery(opened_at: datetime, measured: tuple[float, str] | None) -> str:
    """When service should be back: the incident's start plus the last measured drill RTO, naming it."""
    if measured is None:
        return "not measured (no successful drill yet); next update will say more"
    seconds, source = measured
    return f"{opened_at + timedelta(seconds=seconds):%Y-%m-%d %H:%M} UTC (start + RTO {seconds:.0f} s measured by {source})"


def downtime_cost(policy: Policy, duration: timedelta) -> str:
    """The policy's downtime table (section 1.2) applied to `duration`, interpolated between its points."""
    table = sorted((parse_duration(k), v) for k, v in policy.downtime_cost_usd.items())
    if not table:
        return "not measured (the policy has no downtime_cost_usd table)"
    points = [(timedelta(0), 0)] + table
    for (d0, c0), (d1, c1) in zip(points, points[1:]):
        if duration <= d1:
            cost = c0 + (c1 - c0) * ((duration - d0) / (d1 - d0))
            break
    else:  # past the table's end: its last rate continues
        (d0, c0), (d1, c1) = points[-2], points[-1]
        cost = c1 + (c1 - c0) * ((duration - d1) / (d1 - d0))
    return f"${cost:,.0f} ({format_duration(duration)} on the policy's downtime table)"


def incident_fields(policy: Policy, incident: Any, *, current_status: str, estimate: tuple[float, str] | None,
                    actions_taken: str = "", now: datetime | None = None) -> dict[str, Any]:
    """The fields every template draws from, for one incident (`continuity.incidents.records.Incident`)."""
    assert policy.communication is not None
    now = now or datetime.now(timezone.utc)
    titles = [policy.business_functions[f].title for f in incident.functions if f in policy.business_functions]
    communication = policy.communication
    channel = (communication.audiences.get("immediate_team").recipients.get("slack") or ["(no channel)"])[0] \
        if "immediate_team" in communication.audiences else "(no channel)"
    return {
        "incident_id": incident.incident_id, "severity": incident.severity, "title": incident.title,
        "start_time": f"{incident.opened_at:%Y-%m-%d %H:%M} UTC", "affected_services": titles or ["none named"],
        "affected_features": titles or ["none named"], "issue_description": incident.description or incident.title,
        "current_status": current_status, "estimated_recovery": estimated_recovery(incident.opened_at, estimate),
        "actions_taken": actions_taken or "the incident commander is assessing", "incident_commander": incident.commander,
        "communication_channel": channel, "next_update_time": f"{now + communication.update_interval:%Y-%m-%d %H:%M} UTC",
        "update_interval": format_duration(communication.update_interval), "status_page_url": communication.status_page_url,
        "report_due": format_duration(communication.report_due),
        # Served live by the status page plugin and written beside the static page (continuity.incidents.statuspage).
        "report_url": f"{communication.status_page_url.rstrip('/')}/{incident_page_path(incident.incident_id)}",
    }

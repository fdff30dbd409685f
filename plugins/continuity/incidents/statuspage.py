"""The status page: components (the policy's business functions), open incidents with their approved
updates, and history — built from the incident records, so it never says what no one approved.

`publish` writes `status/status.json` and a static `status/index.html` to every location given; the
Airflow plugin (`continuity.plugins.status_page`) serves the same document live. Nothing here imports
Airflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Literal

import jinja2
from pydantic import BaseModel

from continuity.incidents.records import Incident, IncidentStore
from continuity.policy.model import Policy
from continuity.storage.locations import StorageLocation

STATUS_PREFIX = "status/"
HISTORY = timedelta(days=90)

ComponentState = Literal["operational", "degraded", "major outage"]


class Component(BaseModel):
    name: str
    title: str
    status: ComponentState


class PageUpdate(BaseModel):
    at: datetime
    text: str


class PageIncident(BaseModel):
    incident_id: str
    title: str
    severity: str
    status: Literal["open", "resolved"]
    opened_at: datetime
    resolved_at: datetime | None
    functions: list[str]
    updates: list[PageUpdate]


class StatusDocument(BaseModel):
    generated_at: datetime
    components: list[Component]
    open_incidents: list[PageIncident]
    history: list[PageIncident]


def build(policy: Policy, incidents: Sequence[Incident], *, now: datetime | None = None) -> StatusDocument:
    """Only incidents with at least one approved update appear: an incident no one has announced yet is
    internal. A drill never appears."""
    now = now or datetime.now(timezone.utc)
    public = [i for i in incidents if i.updates and i.kind != "drill"]
    state: dict[str, ComponentState] = {name: "operational" for name in policy.business_functions}
    for incident in public:
        if incident.status == "open":
            for function in incident.functions:
                worse: ComponentState = "major outage" if incident.severity in ("high", "critical") else "degraded"
                if state.get(function) != "major outage":
                    state[function] = worse

    def page(incident: Incident) -> PageIncident:
        return PageIncident(incident_id=incident.incident_id, title=incident.title, severity=incident.severity,
                            status=incident.status, opened_at=incident.opened_at, resolved_at=incident.resolved_at,
                            functions=incident.functions,
                            updates=[PageUpdate(at=u.at, text=u.what) for u in reversed(incident.updates)])

    return StatusDocument(
        generated_at=now,
        components=[Component(name=name, title=f.title, status=state[name])
                    for name, f in sorted(policy.business_functions.items())],
        open_incidents=[page(i) for i in public if i.status == "open"],
        history=[page(i) for i in reversed(public) if i.status == "resolved"
                 and i.resolved_at is not None and now - i.resolved_at <= HISTORY])


_PAGE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Service status</title>
<style>body{font-family:sans-serif;max-width:48rem;margin:2rem auto}.operational{color:#1a7f37}
.degraded{color:#9a6700}.major{color:#cf222e}li{margin:.3rem 0}pre{white-space:pre-wrap}</style></head><body>
<h1>Service status</h1><p>Updated {{ doc.generated_at.strftime('%Y-%m-%d %H:%M:%S') }} UTC</p>
<h2>Components</h2><ul>{% for c in doc.components %}<li>{{ c.title }}: <span class="{{ c.status.split()[0] }}">{{ c.status }}</span></li>{% endfor %}</ul>
<h2>Open incidents</h2>{% for i in doc.open_incidents %}<h3>{{ i.title }} ({{ i.incident_id }}, {{ i.severity }})</h3>
{% for u in i.updates %}<p><b>{{ u.at.strftime('%Y-%m-%d %H:%M') }} UTC</b></p><pre>{{ u.text }}</pre>{% endfor %}
{% else %}<p>None.</p>{% endfor %}
<h2>History (90 days)</h2><ul>{% for i in doc.history %}<li>{{ i.opened_at.strftime('%Y-%m-%d %H:%M') }} UTC {{ i.title }} ({{ i.incident_id }}): resolved {{ i.resolved_at.strftime('%Y-%m-%d %H:%M') }} UTC</li>{% else %}<li>No incidents.</li>{% endfor %}</ul>
</body></html>
""")


_INCIDENT_PAGE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ i.title }}</title>
<style>body{font-family:sans-serif;max-width:48rem;margin:2rem auto}pre{white-space:pre-wrap}</style></head><body>
<p><a href="../status">Service status</a></p><h1>{{ i.title }}</h1>
<p>{{ i.incident_id }}, {{ i.severity }}, {{ i.status }}: opened {{ i.opened_at.strftime('%Y-%m-%d %H:%M') }} UTC
{%- if i.resolved_at %}, resolved {{ i.resolved_at.strftime('%Y-%m-%d %H:%M') }} UTC{% endif %}</p>
<h2>Updates</h2>{% for u in i.updates %}<p><b>{{ u.at.strftime('%Y-%m-%d %H:%M') }} UTC</b></p><pre>{{ u.text }}</pre>{% endfor %}
</body></html>
""")


def render_html(doc: StatusDocument) -> str:
    return _PAGE.render(doc=doc)


def incident_page_path(incident_id: str) -> str:
    """Where an incident's own page is, under the status page (the recovery announcement links it)."""
    return f"incidents/{incident_id}"


def render_incident_html(doc: StatusDocument, incident_id: str) -> str | None:
    """One published incident with every approved update, newest first; None when the page does not show it
    (unknown, never announced, a drill, or older than the history)."""
    for incident in [*doc.open_incidents, *doc.history]:
        if incident.incident_id == incident_id:
            return _INCIDENT_PAGE.render(i=incident)
    return None


def publish(policy: Policy, store: IncidentStore, locations: Sequence[StorageLocation]) -> StatusDocument:
    """Rebuild the page from every incident and write it (JSON, then HTML) to every location."""
    doc = build(policy, store.all_incidents())
    for location in locations:
        location.put_bytes(f"{STATUS_PREFIX}status.json", doc.model_dump_json(indent=2).encode())
        for incident in [*doc.open_incidents, *doc.history]:
            page = render_incident_html(doc, incident.incident_id)
            if page is not None:
                location.put_bytes(f"{STATUS_PREFIX}{incident_page_path(incident.incident_id)}.html", page.encode())
        location.put_bytes(f"{STATUS_PREFIX}index.html", render_html(doc).encode())
    return doc


def read(locations: Sequence[StorageLocation]) -> StatusDocument | None:
    for location in locations:
        if location.head(f"{STATUS_PREFIX}status.json") is not None:
            return StatusDocument.model_validate_json(location.get_bytes(f"{STATUS_PREFIX}status.json"))
    return None

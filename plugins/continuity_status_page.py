"""Airflow plugin: the status page at /continuity/status (HTML) and /continuity/status.json, built live
from the incident records in storage; a "Status page" link in the UI's navigation.

Public by design (customers read it): it shows only what an approver published. The same page is
written to `status/` in storage by dr_incident, for a static host when Airflow itself is down.
"""

from __future__ import annotations

import html

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse

status_app = FastAPI(title="Continuity status page", description=__doc__)


def _document():
    from continuity.incidents import statuspage
    from continuity.hooks.incident import ContinuityIncidentHook

    hook = ContinuityIncidentHook(follow_topology=False)
    return statuspage.build(hook.policy, hook.get_store().all_incidents())


@status_app.get("/status", response_class=HTMLResponse)
def status_html() -> str:  # plain def: FastAPI runs it in a thread, the storage reads block
    from continuity.incidents.statuspage import render_html

    return render_html(_document())


@status_app.get("/status/incidents/{incident_id}", response_class=HTMLResponse)
def incident_html(incident_id: str) -> HTMLResponse:
    """One incident's public page: the link in the recovery announcement (`report_url`)."""
    from continuity.incidents.statuspage import render_incident_html

    page = render_incident_html(_document(), incident_id)
    if page is None:
        return HTMLResponse(f"<p>No published incident {html.escape(incident_id)}.</p>", status_code=404)
    return HTMLResponse(page)


@status_app.get("/status.json")
def status_json() -> JSONResponse:
    return JSONResponse(_document().model_dump(mode="json"))


class ContinuityStatusPagePlugin(AirflowPlugin):
    name = "continuity_status_page"
    fastapi_apps = [{"app": status_app, "url_prefix": "/continuity", "name": "Continuity status page"}]
    external_views = [{"name": "Status page", "href": "continuity/status", "destination": "nav",
                       "url_route": "continuity_status"}]

"""dr_incident under the real scheduler (`continuity run`), answered through the REST API as a person
would in the UI: alerts with the rendered template on every channel, a customer notice published only
once approved (then on the status page, in the customers' mail and the banner), a rejected and a
timed-out notice publishing nothing, an unacknowledged incident escalated to management, a second
trigger of the same cause joining the open incident, and resolving: the announcement, PagerDuty
resolved with the same dedup key, the banner cleared, the post-incident report with what was entered.

The policy is the sandbox's with short deadlines so the timeouts pass while the test watches:
acknowledgement (executive group) 20 s, partner notice approval 15 s (the `scheduler` fixture)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest

from continuity.incidents.records import IncidentStore, pending_causes
from continuity.waiting import poll
from continuity_lab.receivers import mails, message_text, received
from tests.support import airflow_run

DAG = "dr_incident"


def _store(airflow: airflow_run.AirflowRun) -> IncidentStore:
    sandbox = airflow.sandbox()
    locations = sandbox.storage_locations()
    return IncidentStore([locations[n] for n in sorted(l.name for l in sandbox.policy.storage.locations if l.required)])


def _mails_about(airflow: airflow_run.AirflowRun, incident_id: str) -> list[str]:
    return [message_text(m) for m in mails(airflow.root / "receivers") if incident_id in message_text(m)]


def test_a_critical_incident_from_alert_to_report(scheduler) -> None:
    airflow = scheduler
    receivers = airflow.root / "receivers"
    run_id = airflow.trigger(DAG, {"severity": "critical", "title": "Primary database down",
                                   "functions": ["user_authentication", "video_upload"], "commander": "Ada",
                                   "description": "the primary stopped answering", "cause_key": "test:primary-down"})
    airflow.wait_for_task(DAG, run_id, "alert_internal", ("success",))
    ref = airflow.api(f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/open_incident/xcomEntries/return_value")["value"]
    incident_id = ref["incident_id"] if isinstance(ref, dict) else json.loads(ref)["incident_id"]

    # The internal alert, rendered, on every channel of the immediate team.
    slack = [r["body"]["text"] for r in received(receivers, "slack") if incident_id in r["body"]["text"]]
    assert len(slack) == 2, "one post per channel: #incidents-critical (immediate team), #engineering (extended)"
    assert all("Severity: critical" in t and "User Authentication, Video Upload" in t for t in slack)
    pages = [r["body"] for r in received(receivers, "pagerduty") if r["body"].get("dedup_key") == incident_id]
    assert [p["event_action"] for p in pages] == ["trigger"]
    alert_mails = _mails_about(airflow, incident_id)
    assert any("oncall@example.com" in m and "Incident Commander: Ada" in m for m in alert_mails)

    # The customer notice waits for approval: nothing published yet.
    airflow.wait_for_task(DAG, run_id, "approve_customers_notice", ("awaiting_input", "deferred"))
    store = _store(airflow)
    assert not store.get(incident_id).updates
    assert not [m for m in _mails_about(airflow, incident_id) if "customers@example.com" in m]
    edited = ("Subject: Login and uploads disrupted\n\nEDITED BY APPROVER: logins and uploads are failing; "
              "we are switching to our standby region.")
    airflow.answer(DAG, run_id, "approve_customers_notice", ["Publish"], {"text": edited})
    assert airflow.wait_for_task(DAG, run_id, "publish_customers_notice", ("success", "failed")) == "success"
    status = json.loads(store.locations[0].get_bytes("status/status.json"))
    [shown] = [i for i in status["open_incidents"] if i["incident_id"] == incident_id]
    assert "EDITED BY APPROVER" in shown["updates"][0]["text"]
    assert [m for m in _mails_about(airflow, incident_id) if "customers@example.com" in m and "EDITED BY APPROVER" in m]
    sandbox = airflow.sandbox()
    s3 = sandbox.s3_client("us-east-1")
    banner = json.loads(s3.get_object(Bucket="app-uploads-us-east-1", Key="app/banner.json")["Body"].read())
    assert banner["active"] and "EDITED BY APPROVER" in banner["text"]

    # Only the CEO may answer the public statement; the CEO rejects it. The partner notice is never
    # answered. Neither is published.
    with pytest.raises(AssertionError, match="HTTP 403"):
        airflow.answer(DAG, run_id, "approve_public_statement", ["Publish"], {"text": "premature statement"})
    airflow.answer(DAG, run_id, "approve_public_statement", ["Reject"], as_user="ceo")
    assert airflow.wait_for_task(DAG, run_id, "publish_public_statement", ("skipped", "success", "failed")) == "skipped"
    assert airflow.wait_for_task(DAG, run_id, "publish_partners_notice", ("skipped", "success", "failed"),
                                 timeout=120) == "skipped"
    public = store.decision(incident_id, "public-statement")
    assert public.outcome == "rejected" and public.decided_by == "ceo"
    assert store.decision(incident_id, "partners-notice").outcome == "timed_out"
    assert not [m for m in _mails_about(airflow, incident_id) if "partner1@example.com" in m]

    # Nobody acknowledged within 20 s: management hears of it.
    assert airflow.wait_for_task(DAG, run_id, "escalate_unacknowledged", ("success", "failed", "skipped"),
                                 timeout=120) == "success"
    assert [m for m in _mails_about(airflow, incident_id) if "cto@example.com" in m and "ESCALATION" in m]
    assert airflow.wait_for_run(DAG, run_id) == "success", airflow.diagnose(DAG, run_id)

    # The same cause again: added to the open incident, nobody told twice.
    def about_it() -> int:  # other incidents may post meanwhile (the probe rounds watch this sandbox too)
        return len([r for r in received(receivers, "slack") if incident_id in r["body"].get("text", "")])

    before = about_it()
    again = airflow.trigger(DAG, {"severity": "critical", "title": "Primary database down",
                                  "cause_key": "test:primary-down", "functions": ["user_authentication"]})
    assert airflow.wait_for_run(DAG, again) == "success", airflow.diagnose(DAG, again)
    assert airflow.task_states(DAG, again)["alert_internal"] == "skipped"
    assert store.get(incident_id).triggers == 2 and about_it() == before
    assert [i.incident_id for i in store.open_incidents()].count(incident_id) == 1

    # A status update: drafted with what was measured, approved, on the status page.
    update = airflow.trigger(DAG, {"action": "update", "incident_id": incident_id})
    airflow.answer(DAG, update, "approve_update", ["Publish"],
                   {"text": "[identified] Primary database down\n\nUPDATE 2: the standby is being promoted."})
    assert airflow.wait_for_run(DAG, update) == "success", airflow.diagnose(DAG, update)
    status = json.loads(store.locations[0].get_bytes("status/status.json"))
    [shown] = [i for i in status["open_incidents"] if i["incident_id"] == incident_id]
    assert "UPDATE 2" in shown["updates"][0]["text"] and len(shown["updates"]) == 2

    # Resolve: announcement approved, PagerDuty resolved with the same key, banner gone, report written.
    resolve = airflow.trigger(DAG, {"action": "resolve", "incident_id": incident_id})
    airflow.answer(DAG, resolve, "approve_recovery_announcement", ["Publish"],
                   {"text": "Subject: Service restored\n\nAll services are back."})
    airflow.answer(DAG, resolve, "post_incident_report", ["Write the report"],
                   {"root_cause": "disk full on the primary", "lessons_learned": "alert on disk usage",
                    "action_items": "add a disk alert\nrehearse failover monthly"})
    assert airflow.wait_for_run(DAG, resolve) == "success", airflow.diagnose(DAG, resolve)
    pages = [r["body"] for r in received(receivers, "pagerduty") if r["body"].get("dedup_key") == incident_id]
    assert [p["event_action"] for p in pages] == ["trigger", "resolve"]
    with pytest.raises(Exception):
        s3.get_object(Bucket="app-uploads-us-east-1", Key="app/banner.json")
    assert [m for m in _mails_about(airflow, incident_id) if "customers@example.com" in m and "All services are back" in m]
    assert [m for m in _mails_about(airflow, incident_id) if "cto@example.com" in m and "RESOLVED" in m]
    report = json.loads(store.locations[0].get_bytes(f"incidents/{incident_id}/report.json"))
    assert report["root_cause"] == "disk full on the primary"
    assert report["action_items"] == ["add a disk alert", "rehearse failover monthly"]
    assert {row["function"] for row in report["unavailability"]} == {"user_authentication", "video_upload"}
    # From the probe rounds' history when they ran (0 s: they saw the functions up), else the incident record.
    assert all(row["seconds"] is not None and row["source"] for row in report["unavailability"])
    assert report["deliveries"]["delivered"] >= 8
    assert "not acknowledged in time" in json.dumps(report["timeline"])
    markdown = store.locations[0].get_bytes(f"incidents/{incident_id}/report.md").decode()
    assert "disk full on the primary" in markdown and "- [ ] add a disk alert" in markdown
    assert store.get(incident_id).status == "resolved" and not store.open_for("test:primary-down")


def test_a_stopped_primary_opens_a_critical_incident_by_itself(scheduler) -> None:
    """No one triggers dr_incident: the health monitor's disaster assessment leaves the cause in the inbox,
    the triggerer's watcher starts dr_incident_inbox, which starts dr_incident; the team is alerted."""
    airflow = scheduler
    receivers = airflow.root / "receivers"
    sandbox = airflow.sandbox()
    stopped_at = datetime.now(timezone.utc)
    sandbox.cluster("primary").stop(mode="immediate", timeout=60)
    airflow.unpause("dr_health_monitor")
    try:
        monitor = airflow.trigger("dr_health_monitor")
        assert airflow.wait_for_run("dr_health_monitor", monitor, timeout=240) == "failed"
        deadline, runs = time.monotonic() + 180, []
        while time.monotonic() < deadline and not runs:
            runs = [r for r in airflow.api(f"/api/v2/dags/{DAG}/dagRuns?limit=50")["dag_runs"]
                    if (r.get("conf") or {}).get("cause_key") == "disaster:primary"]
            time.sleep(3)
        assert runs, "no dr_incident run for the disaster assessment"
        run_id = runs[0]["dag_run_id"]
        assert runs[0]["conf"]["severity"] == "critical"
        airflow.wait_for_task(DAG, run_id, "alert_internal", ("success",), timeout=180)
        store = _store(airflow)
        incident = store.open_for("disaster:primary")
        assert incident is not None and incident.severity == "critical"
        assert "dr_health_monitor" in incident.timeline[0].what
        slack = [r for r in received(receivers, "slack") if incident.incident_id in r["body"]["text"]]
        assert slack
        # Reported, not asserted (timings belong in benchmarks): the monitor run here is triggered at once,
        # where the scheduler starts one every 5 minutes.
        print(f"MEASURED: primary stopped -> first Slack alert {(datetime.fromisoformat(slack[0]['received_at']) - stopped_at).total_seconds():.1f} s "
              f"(incident opened {(incident.opened_at - stopped_at).total_seconds():.1f} s after the stop)")
        assert [r for r in received(receivers, "pagerduty") if r["body"].get("dedup_key") == incident.incident_id]
        # The report of this monitor run leaves the inbox once handed over (the triggerer's probe rounds may
        # report the same cause again meanwhile: that one joins the open incident later). The inbox hands causes
        # over one after another, so under load the last of this run's may still be on its way: wait for it.
        def still_pending() -> list:
            return [r for _, r in pending_causes(store.locations)
                    if r.key() == "disaster:primary" and r.source == f"dr_health_monitor run {monitor}"]

        assert poll(lambda: not still_pending(), timeout=180, interval=5), \
            f"the cause left the inbox once handed over: still pending {still_pending()}"
    finally:
        airflow.api("/api/v2/dags/dr_health_monitor", {"is_paused": True}, method="PATCH")
        sandbox.cluster("primary").start(timeout=60)

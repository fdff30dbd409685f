"""Incident delivery through the providers' own notifiers (Slack webhook, PagerDuty Events v2 over TLS,
SMTP) to the sandbox's receivers: what arrives is the rendered template, every delivery has a receipt,
a rerun sends nothing twice, a failed channel falls back to e-mail and is reported, one cause is one
incident, and the status page and banner show only what was published."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest

from continuity.incidents import statuspage
from continuity.incidents.communication import TemplateError, incident_fields, render
from continuity.hooks.incident import ContinuityIncidentHook
from continuity.incidents.records import IncidentRequest, IncidentStore, Message, deliver, split_subject
from continuity.notifiers.incident import BANNER_NAME, channel_senders, clear_banners
from continuity_lab.receivers import mails, message_text, received


@pytest.fixture(scope="module")
def hook(sandbox) -> ContinuityIncidentHook:
    return ContinuityIncidentHook(follow_topology=False)


def _open(store: IncidentStore, cause: str, severity: str = "critical") -> tuple:
    # Each call is another trigger (source): the same source again would be a retry of one trigger.
    return store.open_or_join(IncidentRequest(severity=severity, title=f"Primary database down ({cause})",
                                              functions=["user_authentication", "video_upload"],
                                              description="the primary stopped answering", commander="Ada",
                                              cause_key=cause, source=f"test trigger {uuid.uuid4().hex[:8]}"))


def _alert(hook: ContinuityIncidentHook, store: IncidentStore, incident, *, purpose: str = "alert",
           event: str = "trigger") -> list:
    policy = hook.policy
    text = render(policy, "internal_alert", incident_fields(policy, incident, current_status="failing over",
                                                            estimate=(312.0, "drill d1 of 2026-11-01")))
    subject, body = split_subject(text, default=f"DR alert {incident.incident_id}")
    return deliver(store, incident, purpose=purpose, audience_name="immediate_team",
                   audience=policy.communication.audiences["immediate_team"],
                   message=Message(subject=subject, body=body, severity=incident.severity, event=event),
                   senders=channel_senders(policy, {}, store=store), wait_seconds=0.05)


def test_a_critical_alert_reaches_slack_pagerduty_and_email_with_the_rendered_template(sandbox, hook) -> None:
    store = hook.get_store()
    incident, joined = _open(store, "test:critical-alert")
    assert not joined
    receipts = _alert(hook, store, incident)
    assert {(r.method, r.status) for r in receipts} == {("slack", "delivered"), ("pagerduty", "delivered"),
                                                        ("email", "delivered")}
    [slack] = [r for r in received(sandbox.receivers_dir, "slack") if incident.incident_id in r["body"]["text"]]
    assert "Severity: critical" in slack["body"]["text"]
    assert "Affected Services: User Authentication, Video Upload" in slack["body"]["text"]
    [page] = [r for r in received(sandbox.receivers_dir, "pagerduty") if r["body"].get("dedup_key") == incident.incident_id]
    assert page["path"] == "/pagerduty/v2/enqueue" and page["body"]["event_action"] == "trigger"
    assert page["body"]["payload"]["severity"] == "critical"
    [mail] = [message_text(m) for m in mails(sandbox.receivers_dir) if f"X-Continuity-Incident: {incident.incident_id}" in m]
    assert "oncall@example.com" in mail and "Incident Commander: Ada" in mail
    assert "measured by drill d1" in mail, "the estimate names the drill that measured it"
    assert next(r for r in receipts if r.method == "pagerduty").reference == incident.incident_id


def test_a_rerun_sends_nothing_twice(sandbox, hook) -> None:
    store = hook.get_store()
    incident, _ = _open(store, "test:rerun")
    _alert(hook, store, incident)
    counts = (len(received(sandbox.receivers_dir, "slack")), len(received(sandbox.receivers_dir, "pagerduty")),
              len(mails(sandbox.receivers_dir)))
    again = _alert(hook, store, incident)
    assert all(r.status == "delivered" for r in again)
    assert (len(received(sandbox.receivers_dir, "slack")), len(received(sandbox.receivers_dir, "pagerduty")),
            len(mails(sandbox.receivers_dir))) == counts


def test_a_failed_slack_delivery_falls_back_to_email_and_is_reported(sandbox, hook) -> None:
    store = hook.get_store()
    incident, _ = _open(store, "test:slack-down")
    fail = sandbox.receivers_dir / "webhooks" / "slack" / ".fail"
    fail.parent.mkdir(parents=True, exist_ok=True)
    fail.touch()
    try:
        receipts = _alert(hook, store, incident)
    finally:
        fail.unlink()
    slack = next(r for r in receipts if r.method == "slack")
    assert slack.status == "failed" and slack.attempts == 3 and "500" in (slack.error or "")
    fallback = next(r for r in receipts if r.fallback_for == "slack")
    assert fallback.method == "email" and fallback.status == "delivered"
    assert not [r for r in received(sandbox.receivers_dir, "slack") if incident.incident_id in r["body"]["text"]]
    assert len([m for m in mails(sandbox.receivers_dir) if f"X-Continuity-Incident: {incident.incident_id}" in m]) == 2
    assert any("slack failed" in e.what and "sent by email instead" in e.what
               for e in store.get(incident.incident_id).timeline)
    stored = {(r.method, r.status) for r in store.receipts(incident.incident_id)}
    assert ("slack", "failed") in stored


def test_one_cause_is_one_incident(hook) -> None:
    store = hook.get_store()
    first, joined_first = _open(store, "test:same-cause", severity="high")
    second, joined_second = _open(store, "test:same-cause", severity="critical")
    assert not joined_first and joined_second and second.incident_id == first.incident_id
    assert second.triggers == 2 and second.severity == "critical"
    assert [i.incident_id for i in store.open_incidents()].count(first.incident_id) == 1


def test_resolve_uses_the_same_dedup_key_and_a_drill_pages_nobody(sandbox, hook) -> None:
    store = hook.get_store()
    incident, _ = _open(store, "test:resolve")
    _alert(hook, store, incident)
    store.resolve(incident.incident_id, by="test")
    _alert(hook, store, incident, purpose="resolved", event="resolve")
    events = [r["body"] for r in received(sandbox.receivers_dir, "pagerduty") if r["body"].get("dedup_key") == incident.incident_id]
    assert [e["event_action"] for e in events] == ["trigger", "resolve"]
    drill, _ = store.open_or_join(IncidentRequest(severity="low", title="monthly drill", kind="drill",
                                                  cause_key="test:drill", source="test"))
    _alert(hook, store, drill, event="change")
    changes = [r for r in received(sandbox.receivers_dir, "pagerduty") if r["path"] == "/pagerduty/v2/change/enqueue"
               and drill.incident_id in json.dumps(r["body"])]
    assert changes and "event_action" not in changes[0]["body"]


def test_a_template_with_a_missing_field_names_it_and_sends_nothing(sandbox, hook) -> None:
    store = hook.get_store()
    incident, _ = _open(store, "test:missing-field")
    fields = incident_fields(hook.policy, incident, current_status="x", estimate=None)
    del fields["incident_commander"]
    before = len(mails(sandbox.receivers_dir))
    with pytest.raises(TemplateError, match="internal_alert .*missing field incident_commander; nothing was sent"):
        render(hook.policy, "internal_alert", fields)
    assert len(mails(sandbox.receivers_dir)) == before
    assert "not measured" in incident_fields(hook.policy, incident, current_status="x", estimate=None)["estimated_recovery"]


def test_the_status_page_and_banner_show_only_what_was_published(sandbox, hook) -> None:
    store = hook.get_store()
    policy = hook.policy
    incident, _ = _open(store, "test:status-page", severity="high")
    page = statuspage.publish(policy, store, store.locations)
    assert incident.incident_id not in json.dumps(page.model_dump(mode="json")), "nothing approved yet: not shown"
    senders = channel_senders(policy, {}, store=store, status_locations=store.locations, banners=hook.get_banners())
    deliver(store, incident, purpose="customers-notice", audience_name="customers",
            audience=policy.communication.audiences["customers"],
            message=Message(subject="Service disruption", body="Uploads are failing; we are on it.", severity="high"),
            senders=senders, wait_seconds=0.05)
    page = statuspage.read(store.locations)
    assert page is not None and [i.incident_id for i in page.open_incidents] == [incident.incident_id]
    assert page.open_incidents[0].updates[0].text == "Uploads are failing; we are on it."
    assert {c.name: c.status for c in page.components}["video_upload"] == "major outage"
    html = store.locations[0].get_bytes("status/index.html").decode()
    assert "Uploads are failing; we are on it." in html
    assert [m for m in map(message_text, mails(sandbox.receivers_dir))
            if "customers@example.com" in m and "Uploads are failing" in m]
    for banner in hook.get_banners():
        document = json.loads(banner.client.get_object(Bucket=banner.bucket, Key=f"{banner.prefix}{BANNER_NAME}")["Body"].read())
        assert document["active"] and document["incident_id"] == incident.incident_id
    clear_banners(hook.get_banners())
    for banner in hook.get_banners():
        with pytest.raises(Exception):
            banner.client.get_object(Bucket=banner.bucket, Key=f"{banner.prefix}{BANNER_NAME}")
    store.resolve(incident.incident_id, by="test", now=datetime.now(timezone.utc))
    page = statuspage.publish(policy, store, store.locations)
    assert not page.open_incidents and incident.incident_id in [i.incident_id for i in page.history]
    assert {c.name: c.status for c in page.components}["video_upload"] == "operational"


def test_the_status_page_plugin_serves_the_page_from_storage(sandbox, hook) -> None:
    import importlib.util
    from pathlib import Path

    from fastapi.testclient import TestClient

    path = Path(__file__).resolve().parents[2] / "plugins" / "continuity_status_page.py"
    spec = importlib.util.spec_from_file_location("continuity_status_page", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    client = TestClient(module.status_app)
    page = client.get("/status")
    assert page.status_code == 200 and "Service status" in page.text and "Video Upload" in page.text
    document = client.get("/status.json").json()
    assert {c["name"] for c in document["components"]} == set(hook.policy.business_functions)
    # The recovery announcement's link (report_url): the incident's own page, once something was published.
    store = hook.get_store()
    incident, _ = _open(store, f"test:status-link-{uuid.uuid4().hex[:8]}", severity="high")
    assert client.get(f"/status/incidents/{incident.incident_id}").status_code == 404, "nothing published yet"
    incident.updates.append(incident.timeline[0].model_copy(update={"what": "Uploads work again."}))
    store.save(incident)
    own = client.get(f"/status/incidents/{incident.incident_id}")
    assert own.status_code == 200 and "Uploads work again." in own.text
    store.resolve(incident.incident_id, by="test", now=datetime.now(timezone.utc))


def test_with_every_bucket_cut_off_a_cause_still_alerts_and_its_record_catches_up(
        sandbox, hook, airflow_db, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """#30 item 2: both regions' storage gone. The cause waits in the local journal, the inbox trigger hands it
    over, dr_incident opens the incident and the immediate team is paged and told on Slack; once the buckets
    answer, the record is written to each of them."""
    import asyncio

    from continuity.alerts.callbacks import report_cause
    from continuity.incidents.journal import JOURNAL_ENV_VAR, LocalJournal
    from continuity.triggers.incident_inbox import IncidentInboxTrigger
    from tests.support.airflow_helpers import load_dag, task_states, xcom

    monkeypatch.setenv(JOURNAL_ENV_VAR, str(tmp_path / "journal"))
    regions = sorted({location.region for location in sandbox.policy.storage.locations})
    cause = f"test:storage-gone-{uuid.uuid4().hex[:8]}"
    try:
        for region in regions:
            assert sandbox.cut_storage(region), f"the gateway of {region} was running"
        assert report_cause(IncidentRequest(severity="critical", title="Object storage unreachable in every region",
                                            functions=["video_upload"], cause_key=cause, source="test"))
        event = asyncio.run(asyncio.wait_for(IncidentInboxTrigger(poll_interval=0.2).run().__anext__(), timeout=120))
        request = event.payload["request"]
        assert request["cause_key"] == cause
        # The people-facing steps (acknowledge, approvals) wait for a person: marked done, not run.
        run = load_dag("dr_incident").test(run_conf={"action": "open", **request},
                                           mark_success_pattern=r"acknowledge|escalate_.*|approve_.*|publish_.*")
        assert task_states(run)["alert_internal"] == "success", task_states(run)
        ref = xcom(run, "open_incident")
        incident_id = ref["incident_id"] if isinstance(ref, dict) else json.loads(ref)["incident_id"]
        slack = [r for r in received(sandbox.receivers_dir, "slack") if incident_id in r["body"]["text"]]
        pages = [r["body"] for r in received(sandbox.receivers_dir, "pagerduty")
                 if r["body"].get("dedup_key") == incident_id]
        assert slack and [p["event_action"] for p in pages] == ["trigger"]
        journal = LocalJournal(tmp_path / "journal")
        assert f"incidents/{incident_id}/incident.json" in {e.key for e in journal.entries()}
    finally:
        sandbox.restore_storage()
    store = ContinuityIncidentHook(follow_topology=False).get_store()
    assert store.catch_up()
    for location in store.locations:
        kept = IncidentStore([location]).get(incident_id)
        assert kept.cause_key == cause and kept.severity == "critical"
        assert IncidentStore([location]).receipts(incident_id), f"the receipts reached {location.name}"
    assert not [e for e in journal.entries() if incident_id in e.key]


def test_a_cause_leaves_the_inbox_only_once_its_incident_holds_it(
        sandbox, hook, airflow_db, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """#30 item 12: handing a cause over is not handling it. A dr_incident run that fails before the incident
    records the cause leaves it in the inbox, and the trigger hands it over again; the run that records it
    removes it."""
    import asyncio

    from continuity.alerts.callbacks import report_cause
    from continuity.incidents.journal import JOURNAL_ENV_VAR
    from continuity.incidents.records import pending_causes
    from continuity.triggers.incident_inbox import IncidentInboxTrigger
    from tests.support.airflow_helpers import load_dag, task_states

    monkeypatch.setenv(JOURNAL_ENV_VAR, str(tmp_path / "journal"))
    cause = f"test:handed-over-{uuid.uuid4().hex[:8]}"
    assert report_cause(IncidentRequest(severity="high", title="Nightly backup failed", functions=["video_upload"],
                                        cause_key=cause, source="test"))
    locations = hook.incident_locations()

    def pending() -> list[str]:
        return [name for name, request in pending_causes(locations) if request.cause_key == cause]

    async def handed_over(trigger: IncidentInboxTrigger) -> dict:
        events = trigger.run()
        while True:  # other tests' causes may wait in the shared inbox too
            event = await events.__anext__()
            if event.payload["request"]["cause_key"] == cause:
                break
        try:  # the triggerer goes on after handing an event over (where the cause used to be removed)
            await asyncio.wait_for(events.__anext__(), timeout=2)
        except asyncio.TimeoutError:
            pass
        return event.payload

    def event() -> dict:
        return asyncio.run(asyncio.wait_for(handed_over(IncidentInboxTrigger(poll_interval=0.2)), timeout=120))

    payload = event()
    assert pending() == [payload["cause"]], "handed over, still in the inbox"
    resolved, _ = hook.get_store().open_or_join(IncidentRequest(severity="low", title="old", cause_key=f"{cause}-old",
                                                                source="test"))
    hook.get_store().resolve(resolved.incident_id, by="test")
    # The run fails before the incident holds the cause (it names an incident that is already resolved).
    conf = {"action": "open", **payload["request"], "cause": payload["cause"]}
    failed = load_dag("dr_incident").test(run_conf={**conf, "incident_id": resolved.incident_id},
                                          mark_success_pattern=r"acknowledge|escalate_.*|approve_.*|publish_.*")
    assert task_states(failed)["open_incident"] == "failed"
    assert pending() == [payload["cause"]], "a run that did not record the cause leaves it in the inbox"
    again = event()  # a restarted triggerer (or the redelivery delay) hands it over again
    assert again["cause"] == payload["cause"]
    handled = load_dag("dr_incident").test(run_conf={"action": "open", **again["request"], "cause": again["cause"]},
                                           mark_success_pattern=r"acknowledge|escalate_.*|approve_.*|publish_.*")
    assert task_states(handled)["open_incident"] == "success", task_states(handled)
    assert pending() == []
    assert hook.get_store().open_for(cause) is not None

"""Incidents in storage (file locations): one per cause, receipts that stop a second send, fallback
when a channel fails, the inbox, the status page and the post-incident report."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from continuity.incidents import report as incident_report, statuspage
from continuity.incidents.communication import downtime_cost, estimated_recovery
from continuity.incidents.records import (DeliveryFailed, IncidentError, IncidentRequest, IncidentStore, Message,
                                  check_request, claim_cause, deliver, pending_causes, report_cause)
from continuity.policy.loading import load_policy
from continuity.storage.locations import FileLocation

POLICY = load_policy()
IMMEDIATE = POLICY.communication.audiences["immediate_team"]


@pytest.fixture()
def store(tmp_path: Path) -> IncidentStore:
    return IncidentStore([FileLocation(name="primary", region="us-east-1", path=tmp_path / "a"),
                          FileLocation(name="dr", region="us-west-2", path=tmp_path / "b")])


def _request(**overrides) -> IncidentRequest:
    return IncidentRequest(**{"severity": "high", "title": "Uploads failing", "functions": ["video_upload"],
                              "cause_key": "failed:dr_full_backup:dump", "source": "run 1", **overrides})


class Channel:
    """A sender that records what it was given and fails its first `failures` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.sent: list[tuple[list[str], str]] = []
        self.failures = failures

    def __call__(self, recipients: list[str], message: Message, incident_id: str) -> str | None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("HTTP 500 from the service")
        self.sent.append((recipients, message.subject))
        return f"ref-{incident_id}"


def test_one_open_incident_per_cause_and_a_retry_is_not_a_second_trigger(store) -> None:
    first, joined = store.open_or_join(_request())
    assert not joined and first.opened_by == "run 1"
    retried, joined = store.open_or_join(_request())
    assert not joined and retried.triggers == 1, "the same run's retry finds its own incident"
    second, joined = store.open_or_join(_request(source="run 2", severity="critical"))
    assert joined and second.incident_id == first.incident_id and second.triggers == 2
    assert second.severity == "critical" and "severity raised from high to critical" in second.timeline[-2].what
    for location in store.locations:  # every location holds the record
        assert location.head(f"incidents/{first.incident_id}/incident.json") is not None
    store.resolve(first.incident_id, by="test")
    third, joined = store.open_or_join(_request(source="run 3"))
    assert not joined and third.incident_id != first.incident_id, "a resolved cause opens a new incident"
    with pytest.raises(IncidentError, match="was resolved"):
        store.open_or_join(_request(incident_id=first.incident_id, source="run 4"))


def test_bad_requests_name_the_field(store) -> None:
    with pytest.raises(IncidentError, match=r"\['checkout'\] are not business functions"):
        check_request(POLICY, _request(functions=["checkout"]))
    with pytest.raises(IncidentError, match="incident id 'INC 1/2'"):
        check_request(POLICY, _request(incident_id="INC 1/2"))
    with pytest.raises(ValueError):
        IncidentRequest(severity="urgent", title="x")


def test_receipts_stop_a_second_send_and_a_failing_channel_falls_back(store) -> None:
    incident, _ = store.open_or_join(_request())
    slack, pagerduty, email = Channel(failures=5), Channel(), Channel()
    senders = {"slack": slack, "pagerduty": pagerduty, "email": email}
    message = Message(subject="DR alert", body="text", severity="high")
    receipts = deliver(store, incident, purpose="alert", audience_name="immediate_team", audience=IMMEDIATE,
                       message=message, senders=senders, wait_seconds=0)
    assert [(r.method, r.status, r.fallback_for) for r in receipts] == [
        ("slack", "failed", None), ("pagerduty", "delivered", None), ("email", "delivered", None),
        ("email", "delivered", "slack")]
    assert receipts[0].attempts == 3 and "HTTP 500" in receipts[0].error
    assert len(email.sent) == 2 and not pagerduty.failures
    assert any("slack failed" in e.what and "sent by email instead" in e.what for e in store.get(incident.incident_id).timeline)
    deliver(store, incident, purpose="alert", audience_name="immediate_team", audience=IMMEDIATE, message=message,
            senders=senders, wait_seconds=0)
    assert len(email.sent) == 2 and len(pagerduty.sent) == 1, "delivered messages are not sent again"


def test_nothing_delivered_is_an_error_with_the_receipts(store) -> None:
    incident, _ = store.open_or_join(_request())
    management = POLICY.communication.audiences["management"]
    with pytest.raises(DeliveryFailed, match="reached nobody in management: email: ConnectionError"):
        deliver(store, incident, purpose="alert", audience_name="management", audience=management,
                message=Message(subject="s", body="b", severity="high"), senders={"email": Channel(failures=9)},
                wait_seconds=0)
    assert [r.status for r in store.receipts(incident.incident_id)] == ["failed"]


def test_the_inbox_hands_each_cause_over_once(store) -> None:
    report_cause(store.locations, _request(title="first"))
    report_cause(store.locations, _request(title="second", cause_key="disaster:primary"))
    pending = pending_causes(store.locations)
    assert [r.title for _, r in pending] == ["first", "second"]
    claim_cause(store.locations, pending[0][0])
    assert [r.title for _, r in pending_causes(store.locations)] == ["second"]


def test_estimates_and_costs_name_their_source() -> None:
    opened = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)
    assert estimated_recovery(opened, (600.0, "drill d7 of 2026-11-01")) == \
        "2026-11-27 08:10 UTC (start + RTO 600 s measured by drill d7 of 2026-11-01)"
    assert estimated_recovery(opened, None).startswith("not measured")
    assert downtime_cost(POLICY, timedelta(minutes=30)).startswith("$4,000 ")
    assert downtime_cost(POLICY, timedelta(hours=4)).startswith("$31,000 ")


def test_status_page_shows_only_published_updates_and_the_report_holds_the_record(store) -> None:
    incident, _ = store.open_or_join(_request(severity="critical"))
    assert not statuspage.build(POLICY, store.all_incidents()).open_incidents
    incident.updates.append(incident.timeline[0].model_copy(update={"what": "We are restoring uploads."}))
    store.save(incident)
    page = statuspage.build(POLICY, store.all_incidents())
    assert page.open_incidents[0].updates[0].text == "We are restoring uploads."
    assert {c.name: c.status for c in page.components}["video_upload"] == "major outage"
    assert "We are restoring uploads." in statuspage.render_html(page)
    resolved = store.resolve(incident.incident_id, by="test",
                             now=incident.opened_at + timedelta(minutes=30))
    report = incident_report.build(POLICY, resolved, store.receipts(incident.incident_id), root_cause="disk full",
                                   lessons_learned="watch disks", action_items=["alert on disk"],
                                   locations=store.locations)
    assert report.unavailability[0].seconds == 1800 and "incident record" in report.unavailability[0].source
    assert report.data_loss.startswith("not measured") and report.cost.startswith("$4,000")
    written = incident_report.store(POLICY, store, report)
    assert len(written) == 4
    markdown = store.locations[1].get_bytes(f"incidents/{incident.incident_id}/report.md").decode()
    assert "disk full" in markdown and "- [ ] alert on disk" in markdown and "| video_upload | 30m |" in markdown


def test_updates_are_due_every_interval_and_asked_for_once(store) -> None:
    incident, _ = store.open_or_join(_request())
    drill, _ = store.open_or_join(_request(kind="drill", cause_key="drill:x"))
    opened = incident.opened_at
    assert store.updates_due(timedelta(minutes=30), now=opened + timedelta(minutes=29)) == []
    due = store.updates_due(timedelta(minutes=30), now=opened + timedelta(minutes=31))
    assert [i.incident_id for i in due] == [incident.incident_id], "drills are never updated"
    assert store.updates_due(timedelta(minutes=30), now=opened + timedelta(minutes=40)) == [], "asked once"
    again = store.updates_due(timedelta(minutes=30), now=opened + timedelta(minutes=62))
    assert [i.incident_id for i in again] == [incident.incident_id]
    assert drill.incident_id not in [i.incident_id for i in again]


def test_the_recovery_announcements_link_is_a_page_of_the_incident_with_its_published_updates(store) -> None:
    """#31 item 9: report_url pointed at /continuity/status/incidents/<id>, which nothing served."""
    from continuity.incidents.communication import incident_fields

    incident, _ = store.open_or_join(_request(severity="high", title="Uploads <failing>"))
    announced = statuspage.build(POLICY, store.all_incidents())
    assert statuspage.render_incident_html(announced, incident.incident_id) is None, "not announced: not public"
    incident.updates.append(incident.timeline[0].model_copy(update={"what": "Uploads work again."}))
    store.save(incident)
    statuspage.publish(POLICY, store, store.locations[:1])
    page = store.locations[0].get_bytes(
        f"status/{statuspage.incident_page_path(incident.incident_id)}.html").decode()
    assert "Uploads work again." in page and "Uploads &lt;failing&gt;" in page
    link = incident_fields(POLICY, incident, current_status="resolved", estimate=None)["report_url"]
    assert link.endswith(f"/continuity/status/{statuspage.incident_page_path(incident.incident_id)}")
    assert statuspage.render_incident_html(announced, "INC-nonexistent") is None

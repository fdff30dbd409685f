"""Incidents when storage is gone (#30 item 2): a record goes to the locations that answer, the rest waits in the
local journal and is read from there; an incident opens and its alert leaves with every bucket unreachable; the
record reaches each location once it answers again; a cause reported with no bucket waits in the journal's inbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from continuity.incidents.journal import LocalJournal
from continuity.incidents.records import (IncidentError, IncidentRequest, IncidentStore, Message, claim_cause,
                                          deliver, pending_causes, report_cause)
from continuity.policy.loading import load_policy
from tests.support.locations import RegionStorage

IMMEDIATE = load_policy().communication.audiences["immediate_team"]


@pytest.fixture()
def regions(tmp_path: Path) -> list[RegionStorage]:
    return [RegionStorage(name="primary", region="us-east-1", path=tmp_path / "primary"),
            RegionStorage(name="dr", region="us-west-2", path=tmp_path / "dr")]


@pytest.fixture()
def journal(tmp_path: Path) -> LocalJournal:
    return LocalJournal(tmp_path / "journal")


def _request(**overrides) -> IncidentRequest:
    return IncidentRequest(**{"severity": "critical", "title": "Primary database down", "functions": ["video_upload"],
                              "cause_key": "disaster:primary", "source": "dr_health_monitor run 1", **overrides})


class Pager:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def __call__(self, recipients: list[str], message: Message, incident_id: str) -> str:
        self.sent.append(incident_id)
        return f"page-{incident_id}"


def test_with_every_bucket_gone_the_incident_opens_and_its_alert_leaves(regions, journal) -> None:
    for location in regions:
        location.gone = True
    store = IncidentStore(regions, journal=journal)
    incident, joined = store.open_or_join(_request())
    assert not joined and store.get(incident.incident_id).title == "Primary database down"
    pager = Pager()
    receipts = deliver(store, incident, purpose="alert", audience_name="immediate_team", audience=IMMEDIATE,
                       message=Message(subject="DR alert", body="primary down", severity="critical"),
                       senders={"pagerduty": pager, "slack": pager}, wait_seconds=0.01)
    assert pager.sent and {r.status for r in receipts} == {"delivered"}
    # A second trigger of the cause joins it (the open index is read from the journal too).
    again, joined = store.open_or_join(_request(source="dr_health_monitor run 2"))
    assert joined and again.incident_id == incident.incident_id and again.triggers == 2
    assert [i.incident_id for i in store.open_incidents()] == [incident.incident_id]
    assert {e.key for e in journal.entries()} >= {f"incidents/{incident.incident_id}/incident.json"}

    regions[1].gone = False  # the DR region's bucket answers again; the primary region's does not
    written = store.catch_up()
    assert any(w.startswith("dr:incidents/") for w in written)
    assert IncidentStore([regions[1]]).get(incident.incident_id).triggers == 2
    assert {e.missing for e in journal.entries()} == {("primary",)}, "still missing in the primary region only"

    regions[0].gone = False
    store.catch_up()
    assert journal.entries() == []
    assert IncidentStore([regions[0]]).get(incident.incident_id).triggers == 2
    assert len(IncidentStore([regions[0]]).receipts(incident.incident_id)) == len(receipts)


def test_one_bucket_gone_keeps_the_record_in_the_other_and_in_the_journal_for_it(regions, journal) -> None:
    regions[0].gone = True
    store = IncidentStore(regions, journal=journal)
    incident, _ = store.open_or_join(_request())
    assert IncidentStore([regions[1]]).get(incident.incident_id).incident_id == incident.incident_id
    [entry] = [e for e in journal.entries() if e.key.endswith("incident.json")]
    assert entry.missing == ("primary",)
    # A later write that reaches every location leaves nothing to catch up for that key.
    regions[0].gone = False
    store.add_event(incident.incident_id, "failover started")
    assert not [e for e in journal.entries() if e.key.endswith("incident.json")]
    assert IncidentStore([regions[0]]).get(incident.incident_id).timeline[-1].what == "failover started"


def test_without_a_journal_a_record_no_location_takes_is_an_error_naming_each(regions) -> None:
    store = IncidentStore(regions)
    incident, _ = store.open_or_join(_request())
    for location in regions:
        location.gone = True
    with pytest.raises(IncidentError, match=r"cannot write incidents/.+ to any location: .*primary.*Could not "
                                            r"connect.*dr"):
        store.save(incident)
    with pytest.raises(RuntimeError, match="cannot read incidents/open/disaster_primary.json from any location"):
        store.open_or_join(_request(source="run 2"))


def test_a_cause_reported_with_no_bucket_waits_in_the_journal_and_is_handed_over_once(regions, journal) -> None:
    for location in regions:
        location.gone = True
    with pytest.raises(RuntimeError, match="could not report the cause disaster:primary anywhere"):
        report_cause(regions, _request())
    name = report_cause(regions, _request(), journal=journal)
    assert [n for n, _ in pending_causes(regions, journal=journal)] == [name]
    claim_cause(regions, name, journal=journal)
    assert pending_causes(regions, journal=journal) == []


def test_a_resolved_incident_left_in_an_unreachable_index_is_not_joined(regions, journal) -> None:
    store = IncidentStore(regions, journal=journal)
    first, _ = store.open_or_join(_request())
    regions[1].gone = True  # the index entry stays in dr: its removal cannot reach it
    store.resolve(first.incident_id, by="ada")
    regions[1].gone = False
    regions[0].gone = True  # now only dr answers, with its stale index entry (the journal has the resolved record)
    second, joined = store.open_or_join(_request(source="run 3"))
    assert not joined and second.incident_id != first.incident_id


def test_a_damaged_journal_entry_is_skipped_not_fatal(journal, regions) -> None:
    journal.keep("incidents/x/incident.json", b"{}", ["primary"])
    (journal.directory / ("0" * 32 + ".json")).write_text("{not json")
    assert [e.key for e in journal.entries()] == ["incidents/x/incident.json"]

"""Each function's availability as the probe rounds saw it (#31 item 7): only changes are stored, read back
from any location that answers, and an incident's unavailability runs from the first failed round to the first
successful one, including the part before the incident was opened."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from continuity.health.availability import (AvailabilityLog, FunctionState, read_states, store_states,
                                            unavailability)
from continuity.health.monitoring import FunctionProbe, ProbeRound
from continuity.storage.locations import FileLocation

from tests.support.locations import RegionStorage

T0 = datetime(2026, 12, 7, 11, 59, 0, tzinfo=timezone.utc)


def _round(at: datetime, **functions: bool) -> ProbeRound:
    return ProbeRound(at=at, seconds=0.3, score=0, threshold=3, disaster=False, primary_failing=False, failing=[],
                      checks=len(functions), region="us-east-1",
                      functions={name: FunctionProbe(ok=ok, reason="ok" if ok else f"{name} FAILED: HTTP 502")
                                 for name, ok in functions.items()})


def test_only_changes_are_kept_and_a_healthy_platform_writes_nothing() -> None:
    log = AvailabilityLog()
    first = log.observe(_round(T0, user_authentication=True, video_upload=True))
    assert [(s.function, s.ok) for s in first] == [("user_authentication", True), ("video_upload", True)]
    log.saved(first)
    assert log.observe(_round(T0 + timedelta(seconds=30), user_authentication=True, video_upload=True)) == []
    down = log.observe(_round(T0 + timedelta(seconds=60), user_authentication=True, video_upload=False))
    assert [(s.function, s.ok, s.reason) for s in down] == [("video_upload", False, "video_upload FAILED: HTTP 502")]
    # Not saved (no location answered): kept, and sent again with the next change.
    again = log.observe(_round(T0 + timedelta(seconds=90), user_authentication=True, video_upload=True))
    assert [(s.function, s.ok) for s in again] == [("video_upload", False), ("video_upload", True)]


def test_stored_in_every_location_that_answers_and_read_back_from_any(tmp_path: Path) -> None:
    primary = RegionStorage(name="primary", region="us-east-1", path=tmp_path / "primary")
    dr = FileLocation(name="dr", region="us-west-2", path=tmp_path / "dr")
    states = [FunctionState(function="video_upload", region="us-east-1", ok=ok, at=T0 + timedelta(seconds=n * 30),
                            reason="r") for n, ok in enumerate((True, False, True))]
    said: list[str] = []
    primary.gone = True
    assert store_states([primary, dr], states, report=said.append) == 1
    assert said[0].startswith("availability history not stored in primary: StorageUnreachable")
    assert read_states([primary, dr], T0, T0 + timedelta(minutes=5)) == states
    assert read_states([dr], T0 + timedelta(seconds=45), T0 + timedelta(minutes=5)) == states[2:]


def test_an_outage_runs_from_the_first_failed_round_to_the_first_successful_one() -> None:
    opened = T0 + timedelta(minutes=2)  # the incident, opened after the outage began
    states = [FunctionState(function="video_upload", region="us-east-1", ok=ok, at=T0 + timedelta(seconds=s),
                            reason=f"at {s}") for s, ok in ((0, True), (60, False), (300, True), (400, False))]
    measured = unavailability(states, "video_upload", start=opened, end=T0 + timedelta(seconds=460))
    assert measured.seconds == 240.0 + 60.0 and measured.still_down
    assert [(down - T0).total_seconds() for down, _, _ in measured.outages] == [60.0, 400.0]
    assert measured.describe("us-east-1") == ("probe rounds in us-east-1: video_upload failed 12:00:00 → 12:04:00 "
                                              "(at 60); 12:05:40 → 12:06:40 (at 400) (still failing at the end)")
    # An outage over before the incident was opened is not this incident's.
    assert unavailability(states, "video_upload", start=T0 + timedelta(seconds=350), end=T0 + timedelta(seconds=360)
                          ).seconds == 0.0
    assert unavailability(states, "reporting_analytics", start=opened, end=T0 + timedelta(seconds=460)) is None


def test_the_post_incident_report_prices_the_probes_outage_not_the_incident_record(tmp_path: Path) -> None:
    from continuity.incidents import report as incident_report
    from continuity.incidents.records import IncidentRequest, IncidentStore
    from continuity.policy.loading import load_policy

    policy = load_policy()
    locations = [FileLocation(name=n, region=r, path=tmp_path / n) for n, r in (("primary", "us-east-1"),
                                                                                 ("dr", "us-west-2"))]
    store = IncidentStore(locations)
    incident, _ = store.open_or_join(IncidentRequest(severity="critical", title="uploads failing", cause_key="k",
                                                     functions=["video_upload", "user_authentication"],
                                                     source="test"))
    opened = incident.opened_at
    store_states(locations, [
        FunctionState(function="video_upload", region="us-east-1", ok=True, at=opened - timedelta(hours=1), reason="ok"),
        FunctionState(function="video_upload", region="us-east-1", ok=False, at=opened - timedelta(seconds=90),
                      reason="upload FAILED: POST /videos: HTTP 503"),
        FunctionState(function="video_upload", region="us-east-1", ok=True, at=opened + timedelta(seconds=330),
                      reason="ok")], report=lambda _m: None)
    resolved = store.resolve(incident.incident_id, by="test", now=opened + timedelta(minutes=30))
    report = incident_report.build(policy, resolved, [], root_cause="", lessons_learned="", action_items=[],
                                   locations=locations)
    rows = {r.function: r for r in report.unavailability}
    assert rows["video_upload"].seconds == 420.0, "from its first failed round, 90 s before the incident opened"
    assert rows["video_upload"].source.startswith("probe rounds in us-east-1: video_upload failed ")
    assert "upload FAILED: POST /videos: HTTP 503" in rows["video_upload"].source
    assert rows["user_authentication"].seconds == 1800.0 and "incident record" in rows["user_authentication"].source
    assert report.cost.startswith("$4,000"), "priced on the worst measured row"

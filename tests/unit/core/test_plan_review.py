"""The plan review's line on the region-loss exercise comes from the exercises' stored reports (#31 item 9:
it was a fixed `not measured`)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from continuity.exercises.plan_review import region_recovery_line
from continuity.storage.locations import FileLocation

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


def _report(location: FileLocation, exercise_id: str, started: datetime, **fields) -> None:
    document = {"kind": "region-recovery", "exercise_id": exercise_id, "region": "us-east-1",
                "started_at": started.isoformat(), "objectives": [], **fields}
    location.put_bytes(f"reports/region-recovery/{exercise_id}.json", json.dumps(document).encode())


def test_the_newest_exercise_of_the_period_is_summarised_with_what_it_missed(tmp_path) -> None:
    location = FileLocation(name="dr", region="us-west-2", path=tmp_path)
    start = NOW - timedelta(days=365)
    assert region_recovery_line([location], start, NOW) == "not measured (no region-loss exercise in the period)"
    _report(location, "old", NOW - timedelta(days=400), downtime_seconds=5.0, left_as_found=True)
    assert region_recovery_line([location], start, NOW).startswith("not measured"), "outside the period"
    _report(location, "q3", NOW - timedelta(days=80), downtime_seconds=9.4, left_as_found=True,
            objectives=[{"objective": "RTO user_authentication", "verdict": "pass"}])
    _report(location, "q4", NOW - timedelta(days=5), downtime_seconds=2400.0, left_as_found=False,
            objectives=[{"objective": "RTO user_authentication", "verdict": "FAIL"},
                        {"objective": "RPO configuration_data", "verdict": "not measured"}])
    line = region_recovery_line([location], start, NOW)
    assert line == ("exercise q4 on 2026-12-02 (2 in the period): us-east-1 lost, every function back in 2400.0 s; "
                    "1 objective(s) missed (RTO user_authentication); NOT left as found")


def test_the_draft_takes_each_functions_worst_drill_measurement_and_the_years_incidents(tmp_path) -> None:
    from continuity.exercises.drill import DrillResult, render_markdown as render_drill
    from continuity.exercises.plan_review import ReviewDecision, draft, overdue_alarm, render_markdown, store
    from continuity.incidents.records import Incident
    from continuity.policy.loading import load_policy
    from continuity.reports import function_rto_objectives, store_report

    policy = load_policy()
    location = FileLocation(name="dr", region="us-west-2", path=tmp_path)
    for drill_id, seconds, days_ago in (("quick", 60.0, 30), ("slow", 2400.0, 90), ("last-year", 9000.0, 400)):
        result = DrillResult(drill_id=drill_id, started_at=(NOW - timedelta(days=days_ago)).isoformat(), success=True,
                             failed_checks=[], objectives=function_rto_objectives(policy, measured_seconds=seconds,
                                                                                  source="drill rebuild"))
        store_report(result, [location], name=drill_id, prefix="reports/drill/", render=render_drill)
    incidents = [Incident(incident_id="i1", cause_key="k", severity="critical", title="t", description="", functions=[],
                          commander="Ada", opened_at=NOW - timedelta(days=10), status="resolved",
                          resolved_at=NOW - timedelta(days=10) + timedelta(minutes=30)),
                 Incident(incident_id="drill", cause_key="d", kind="drill", severity="low", title="t", description="",
                          functions=[], commander="Ada", opened_at=NOW - timedelta(days=3))]

    review = draft(policy, [location], incidents, review_id="review-1", now=NOW)
    rows = {f.function: f for f in review.functions}
    measured = {name for name, f in rows.items() if f.rto_measured}
    assert measured, "the drills' per-function RTO lines are read"
    for name in measured:
        assert max(m.seconds for m in rows[name].rto_measured) == 2400.0, "the worst of the period, not last year's 9000 s"
        assert {m.source.split(":")[0] for m in rows[name].rto_measured} == {"drill quick", "drill slow"}
        limit = policy.business_functions[name].rto.target.total_seconds()
        assert rows[name].rto_verdict == ("met" if limit >= 2400 else "missed")
    assert all(f.rto_verdict == "not measured" for name, f in rows.items() if name not in measured)
    assert review.targets_missed == [f"{n} RTO" for n in sorted(measured)
                                     if policy.business_functions[n].rto.target.total_seconds() < 2400]
    assert review.drills == 2 and review.incidents == 1 and review.incident_downtime_seconds == 1800.0
    assert (review.last_reviewed, review.reviewed_by, review.overdue) == ("2026-01-15", "sre-lead@example.com", False)
    text = render_markdown(review)
    assert "- incidents: 1, downtime 30m" in text and "- drills in the period: 2;" in text
    assert f"Targets missed: {', '.join(review.targets_missed) or 'none'}." in text

    # A year without an answered review is overdue; the owners' answer, stored with the review, counts from then.
    later = NOW + timedelta(days=300)
    assert "has not been reviewed within 1y (last: 2026-01-15 by sre-lead@example.com)" in overdue_alarm(policy, [], now=later)
    answer = ReviewDecision(review_id="review-1", outcome="confirmed", decided_by="admin", decided_at=NOW, changes={})
    store([location], review, answer)
    assert overdue_alarm(policy, [answer], now=later) is None
    assert draft(policy, [location], [], review_id="review-2", now=later).reviewed_by == "admin"

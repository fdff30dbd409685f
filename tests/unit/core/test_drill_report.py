"""The drill's report as a person reads it: what was rebuilt and measured, what failed, and what was not
measured said so (the rebuild itself is shown on real PostgreSQL in tests/integration/test_drill.py)."""

from __future__ import annotations

from datetime import datetime, timezone

from continuity.exercises.drill import DrillResult, MarkerStream, PitrCheck, failure_result, render_markdown, stream_rpo
from continuity.policy.loading import load_policy
from continuity.reports import function_rto_objectives

POLICY = load_policy()
STARTED = datetime(2026, 12, 7, 6, 0, tzinfo=timezone.utc)


def _measured(**changes: object) -> DrillResult:
    result = DrillResult(
        drill_id="drill-1", started_at=STARTED.isoformat(), success=True, failed_checks=[], location="dr",
        base_backup="physical-20261207T050000Z", marker_committed_at="2026-12-07T06:00:01+00:00",
        marker_recovered=True, rto_seconds=41.5, rpo_seconds=0.0, phases={"restore": 30.25, "validation": 11.25},
        disaster_at="2026-12-07T06:00:16+00:00", rpo_source="marker stream of 60 commits ...: newest marker recovered",
        objectives=function_rto_objectives(POLICY, measured_seconds=41.5, source="drill rebuild"),
        validated_against="logical-20261207T040000Z", checks_passed=12, amcheck="amcheck: 9 indexes verified",
        downtime_seconds=55.0, downtime_cost="$1,234 at the policy's hourly cost")
    return result.model_copy(update=changes)


def test_a_passing_drill_reports_where_it_rebuilt_from_and_each_measurement_with_its_source() -> None:
    text = render_markdown(_measured())
    assert text.startswith("# DR drill drill-1 (2026-12-07T06:00:00+00:00): PASS\n")
    assert "- rebuilt from location dr: base backup `physical-20261207T050000Z` + WAL" in text
    assert "- RTO 41.5 s: restore 30.25 s, validation 11.25 s" in text
    assert ("- RPO 0.0 s, what a disaster at 2026-12-07T06:00:16+00:00 would have lost: marker stream of 60 commits "
            "...: newest marker recovered") in text
    assert "- validated against `logical-20261207T040000Z`: 12 checks passed; amcheck: 9 indexes verified" in text
    assert "- downtime until every function was back: 55.0 s, $1,234 at the policy's hourly cost" in text
    assert "| objective | measured | target | maximum | verdict | measured from |" in text
    assert "**failed**" not in text


def test_what_a_drill_did_not_measure_says_not_measured() -> None:
    text = render_markdown(_measured(downtime_seconds=None, downtime_cost="not measured"))
    assert "- point-in-time recovery: not measured" in text
    assert "- application: not measured" in text
    assert "- downtime: not measured" in text


def test_a_lost_marker_and_a_pitr_past_its_target_are_failures_in_the_report() -> None:
    pitr = PitrCheck(target=datetime(2026, 12, 7, 6, 0, 5, tzinfo=timezone.utc), recovered_to="2026-12-07T06:00:05+00:00",
                     before_recovered=True, after_recovered=True, passed=False, seconds=20.5)
    text = render_markdown(_measured(success=False, marker_recovered=False, rpo_seconds=3.2, pitr=pitr,
                                     rpo_source="no marker of this stream recovered",
                                     failed_checks=["point-in-time recovery to 2026-12-07T06:00:05+00:00: marker "
                                                    "before the target recovered, marker after it present"]))
    assert text.startswith("# DR drill drill-1 (2026-12-07T06:00:00+00:00): FAIL\n")
    assert "- RPO 3.2 s, what a disaster at 2026-12-07T06:00:16+00:00 would have lost: no marker of this stream" in text
    assert ("- point-in-time recovery to 2026-12-07T06:00:05+00:00 (a second rebuild, 20.5 s): marker before the "
            "target recovered, marker after it PRESENT: FAIL") in text
    assert "- **failed**: point-in-time recovery to 2026-12-07T06:00:05+00:00" in text


def test_a_rebuild_that_failed_reports_the_error_and_no_measurement() -> None:
    result = failure_result(drill_id="drill-2", started_at=STARTED, error="no physical backup in location dr")
    assert not result.success and result.rto_seconds is None and result.failed_checks == ["no physical backup in location dr"]
    text = render_markdown(result)
    assert text == ("# DR drill drill-2 (2026-12-07T06:00:00+00:00): FAIL\n\nThe rebuild failed, so the database could "
                    "not be recovered from the DR region:\n\n> no physical backup in location dr\n")
    assert DrillResult.model_validate_json(result.model_dump_json()) == result  # stored as JSON, read back by the review


STREAM = MarkerStream(prefix="drill-1:stream-", count=60, first_at=datetime(2026, 12, 7, 6, 0, 1, tzinfo=timezone.utc),
                      last_at=datetime(2026, 12, 7, 6, 0, 16, tzinfo=timezone.utc),
                      disaster_at=datetime(2026, 12, 7, 6, 0, 16, 200000, tzinfo=timezone.utc))


def test_rpo_is_the_newest_marker_committed_before_the_disaster_minus_the_newest_recovered() -> None:
    """#31 item 4: not 0 by construction: what storage held at the disaster instant decides."""
    base_end = datetime(2026, 12, 7, 5, 0, tzinfo=timezone.utc)
    seconds, newest_recovered, source = stream_rpo(
        STREAM, newest_stream_marker=datetime(2026, 12, 7, 6, 0, 9, 500000, tzinfo=timezone.utc),
        newest_marker=None, base_finished_at=base_end, location="dr")
    assert (seconds, newest_recovered) == (6.5, False)
    assert source.startswith("marker stream of 60 commits 2026-12-07T06:00:01+00:00 .. 2026-12-07T06:00:16+00:00, "
                             "disaster instant 2026-12-07T06:00:16.200000+00:00; rebuilt from what location dr held then")
    assert source.endswith("newest marker recovered committed 2026-12-07T06:00:09.500000+00:00")

    assert stream_rpo(STREAM, newest_stream_marker=STREAM.last_at, newest_marker=STREAM.last_at,
                      base_finished_at=base_end, location="dr")[:2] == (0.0, True)
    earlier = datetime(2026, 12, 7, 5, 59, 58, tzinfo=timezone.utc)  # the point-in-time markers, before the stream
    seconds, newest_recovered, source = stream_rpo(STREAM, newest_stream_marker=None, newest_marker=earlier,
                                                   base_finished_at=base_end, location="dr")
    assert (seconds, newest_recovered) == (18.0, False) and "no marker of this stream recovered" in source
    seconds, _, source = stream_rpo(STREAM, newest_stream_marker=None, newest_marker=None, base_finished_at=base_end,
                                    location="dr")
    assert seconds == 3616.0 and "no marker recovered; counted from the base backup's end" in source

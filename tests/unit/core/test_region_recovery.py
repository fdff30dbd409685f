"""The region-loss exercise's decisions: when it may start, how RPO is read, when it fails."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from continuity.policy.loading import load_policy
from continuity.exercises.region_recovery import (FoundState, RecoveryResult, WriterRecord, database_rpo, differences,
                                                  late_start, objectives_for, plan_exercise, region_return,
                                                  render_markdown)
from continuity.reports import Measurement, price_downtime, rpo_objectives

FOUND = FoundState(primary="primary", streaming=["dr", "sync1", "sync2"], synchronous=["sync1", "sync2"],
                   serving_regions=["us-east-1"])
LOST_AT = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def test_the_exercise_plans_to_lose_the_primary_region_and_promote_the_dr_standby() -> None:
    start = plan_exercise(load_policy(), exercise_id="x", found=FOUND, database="app")
    assert (start.region, start.recovery_region, start.target) == ("us-east-1", "us-west-2", "dr")
    assert start.lost_nodes == ["primary", "sync1", "sync2"] and start.original_primary == "primary"


@pytest.mark.parametrize(("found", "said"), [
    (FOUND.model_copy(update={"primary": None}), "no single writable primary"),
    (FOUND.model_copy(update={"primary": "dr"}), "the primary dr is in us-west-2, not in us-east-1"),
    (FOUND.model_copy(update={"streaming": ["sync1"]}), "no standby in us-west-2 streams from primary"),
    (FOUND.model_copy(update={"serving_regions": []}), "the application does not serve in us-east-1"),
])
def test_the_exercise_refuses_to_start_from_an_unhealthy_cluster(found: FoundState, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        plan_exercise(load_policy(), exercise_id="x", found=found, database="app")


def test_left_as_found_names_every_difference() -> None:
    assert differences(FOUND, FOUND) == []
    now = FOUND.model_copy(update={"primary": "dr", "streaming": ["sync1"]})
    assert differences(FOUND, now) == ["primary: found primary, now dr", "streaming: found ['dr', 'sync1', 'sync2'], now ['sync1']"]


def _writer(ids: list[int], lost: list[int]) -> WriterRecord:
    return WriterRecord(acknowledged=len(ids), ids=ids, lost=lost, failed_requests=0, outage_seconds=1.0, last_errors=[])


def test_database_rpo_is_zero_only_when_the_marker_and_every_acknowledged_write_are_back() -> None:
    times = {1: 10.0, 2: 10.5, 3: 11.0, 4: 12.5}
    kept = database_rpo(marker_at=LOST_AT, marker_found=True, newest_marker=LOST_AT, writer=_writer([1, 2, 3, 4], []),
                        acknowledged_at=times)
    assert kept.seconds == 0.0 and "recovered" in kept.source and "0 lost" in kept.source
    lost = database_rpo(marker_at=LOST_AT, marker_found=True, newest_marker=LOST_AT,
                        writer=_writer([1, 2, 3, 4], [3, 4]), acknowledged_at=times)
    assert lost.seconds == 2.0  # write 4 (12.5) lost, the newest kept before the first loss is write 2 (10.5)
    marker = database_rpo(marker_at=LOST_AT, marker_found=False, newest_marker=LOST_AT - timedelta(seconds=30),
                          writer=_writer([1], []), acknowledged_at={1: 1.0})
    assert marker.seconds == 30.0 and "LOST" in marker.source


def test_a_function_rpo_is_the_worst_of_its_categories_and_never_passes_unmeasured() -> None:
    policy = load_policy()
    lines = {o.objective: o for o in rpo_objectives(policy, {
        "critical_user_data": Measurement(seconds=0.0, source="marker"),
        "video_content": Measurement(seconds=100.0, source="heartbeat", broken="2 referenced objects missing")})}
    assert lines["RPO user_authentication"].verdict == "pass"
    assert lines["RPO video_upload"].verdict == "FAIL" and "2 referenced objects missing" in lines["RPO video_upload"].source
    assert lines["RPO reporting_analytics"].verdict == "not measured"
    assert lines["RPO reporting_analytics"].not_measured == ["data category configuration_data"]


def _probe(seconds_after_loss: float, *, ok: bool = True) -> dict:
    finished = (LOST_AT + timedelta(seconds=seconds_after_loss)).isoformat()
    return {"region": "us-west-2", "read_only": False, "transactions": [
        {"function": name, "transaction": f.transaction, "ok": ok, "reason": "done" if ok else "HTTP 500",
         "finished_at": finished} for name, f in load_policy().application.functions.items()]}


def _result(probe: dict | None, **kw) -> RecoveryResult:
    policy = load_policy()
    measurements = {name: Measurement(seconds=0.0, source="measured") for name in policy.data_categories}
    return RecoveryResult(exercise_id="x", region="us-east-1", recovery_region="us-west-2", target="dr",
                          started_at=LOST_AT, lost_at=LOST_AT, marker_recovered=True,
                          objectives=objectives_for(policy, lost_at=LOST_AT, probe=probe, measurements=measurements),
                          **kw)


def test_the_exercise_passes_only_when_every_function_is_back_within_its_maximum_and_no_write_is_lost() -> None:
    passed = _result(_probe(12.0), writer=_writer([1, 2], []))
    assert passed.failures == []
    seconds, cost = price_downtime(load_policy(), passed.objectives)
    assert seconds == 12.0 and cost.startswith("$27 (")  # 12 s on the table's first hour ($8,000)
    assert price_downtime(load_policy(), _result(None).objectives)[0] is None
    # Video processing's maximum is 2 h, user authentication's 30 min: 40 minutes fails the latter, names it.
    slow = _result(_probe(40 * 60.0)).failures
    assert "RTO user_authentication past its maximum" in slow and "RTO video_processing past its maximum" not in slow
    failed = _result(_probe(12.0, ok=False)).failures
    assert "RTO video_upload past its maximum" in failed
    unmeasured = _result(None).failures
    assert any(f.startswith("RTO annotation_system not measured") for f in unmeasured)
    lost = _result(_probe(12.0), writer=_writer([1, 2, 3], [3]))
    assert lost.failures == ["1 acknowledged writes lost by the recovery (first: [3])"]
    markdown = render_markdown(lost)
    assert markdown.splitlines()[0].endswith(": FAIL") and "- **failed**: 1 acknowledged writes lost" in markdown
    assert "| RTO user_authentication | 12.0 s | 15m | 30m | pass |" in markdown


def test_the_returning_region_is_rebuilt_only_under_the_recovered_primary_alone() -> None:
    start = plan_exercise(load_policy(), exercise_id="x", found=FOUND, database="app")
    assert region_return(start, ["dr"]).action == "rebuild"
    assert region_return(start, ["primary"]).action == "nothing"
    assert region_return(start, []).action == "restart_as_found"
    two = region_return(start, ["dr", "primary"])
    assert two.action == "resolve_by_hand" and two.reason.startswith("writable nodes dr, primary: expected only dr")


def test_a_scheduled_exercise_never_starts_late_and_one_by_hand_always_does() -> None:
    from datetime import timedelta

    due = LOST_AT
    assert late_start(scheduled=True, due=due, now=due + timedelta(minutes=59)) is None
    late = late_start(scheduled=True, due=due, now=due + timedelta(hours=3))
    assert late is not None and "3:00:00 late" in late and "trigger it now by hand" in late
    assert late_start(scheduled=False, due=due, now=due + timedelta(days=30)) is None
    assert late_start(scheduled=True, due=None, now=due) is None

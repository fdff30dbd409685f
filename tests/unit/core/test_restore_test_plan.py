"""The restore test's plan: which locations a run proves, whether a full restore is due, each report's name,
and how a run's results turn into problems; from the shipped policy and reports in memory."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from continuity.exercises.sample_restore import (RestoreTestResult, failure_result, plan_restore_test, proves,
                                                 restore_test_problems)
from continuity.policy.loading import load_policy

NOW = datetime(2026, 12, 6, 5, 0, tzinfo=timezone.utc)
WEEK = timedelta(days=7)


def _result(location: str, *, days_ago: float, full: bool = False, success: bool = True,
            corrupt: list[str] | None = None) -> RestoreTestResult:
    return RestoreTestResult(tested_at=(NOW - timedelta(days=days_ago)).isoformat(), success=success,
                             failed_checks=[] if success else ["orders: row count"], chosen_location=location,
                             restored_from=location, corrupt_copies=corrupt or [], full_restore=full,
                             restore_seconds=12.0 if full else 1.0, total_rows=1000)


def test_a_first_run_proves_every_location_after_a_full_restore_from_the_dr_region() -> None:
    policy = load_policy()
    plan = plan_restore_test(policy, [], now=NOW, run_interval=WEEK, run_id="scheduled__2026-12-06")
    dr = [loc.name for loc in policy.storage.locations if loc.region == policy.topology.dr_region]
    assert plan.steps[0].full and plan.steps[0].location == dr[0] and plan.steps[0].report_name.endswith("-full")
    samples = plan.steps[1:]
    assert {s.location for s in samples} == {loc.name for loc in policy.storage.locations}
    assert samples[0].location == dr[0], "the DR region first"
    assert not samples[0].alone and samples[0].check_application
    assert all(s.alone and not s.check_application for s in samples[1:]), "other locations from their own copy"
    assert len({s.report_name for s in plan.steps}) == len(plan.steps), "no report overwrites another"
    assert "a full restore is due (last: never" in plan.reasons[1]


def test_locations_proven_within_their_period_wait_their_turn() -> None:
    policy = load_policy()
    periods = policy.restore_test_periods()
    history = [_result(name, days_ago=1) for name in periods] + [_result("dr", days_ago=2, full=True)]
    plan = plan_restore_test(policy, history, now=NOW, run_interval=timedelta(days=1), run_id="r")
    assert plan.steps == [] and plan.last_full is not None
    assert "locations to prove restorable this run: none" in plan.reasons[0]
    # A week later the weekly ones are due again, the monthly ones not yet.
    plan = plan_restore_test(policy, history, now=NOW + WEEK, run_interval=WEEK, run_id="r")
    due = {s.location for s in plan.steps if not s.full}
    assert due == {n for n, period in periods.items() if period <= timedelta(days=14)}


def test_a_failed_or_corrupt_restore_proves_nothing() -> None:
    policy = load_policy()
    name = next(iter(policy.restore_test_periods()))
    history = [_result(name, days_ago=1, success=False), _result(name, days_ago=1, corrupt=[name])]
    plan = plan_restore_test(policy, history, now=NOW, run_interval=WEEK, run_id="r")
    assert name not in plan.proven and name in {s.location for s in plan.steps}
    assert not proves(history[1], name) and proves(_result(name, days_ago=0), name)
    assert not proves(_result(name, days_ago=0), "another")


def test_problems_name_the_location_and_what_broke() -> None:
    results = [_result("dr", days_ago=0), _result("primary", days_ago=0, success=False),
               failure_result(error="location archive: no logical backup", seed="r", now=NOW)]
    problems = restore_test_problems(results)
    assert problems[0] == "primary: orders: row count"
    assert problems[1] == "restore: location archive: no logical backup", "a restore that never started says why"
    assert len(problems) == 2

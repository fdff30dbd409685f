"""Which probe rounds are news: the first unhealthy one, a disaster held for consecutive_failures rounds
(once), and the first healthy one after either; a healthy platform yields nothing."""

from __future__ import annotations

from datetime import datetime, timezone

from continuity.health.checks import Check
from continuity.health.monitoring import ProbeRound, RoundWatch, run_round
from continuity.policy.loading import load_policy


def _round(score: int, *, primary: bool = False) -> ProbeRound:
    failing = (["primary primary: node primary is unreachable"] if primary else []) + (
        ["function user_authentication: login FAILED"] if score else [])
    return ProbeRound(at=datetime.now(timezone.utc), seconds=0.1, score=score, threshold=3, disaster=score >= 3,
                      primary_failing=primary, failing=failing, checks=20)


def test_events_only_on_change_and_one_disaster_per_streak() -> None:
    watch = RoundWatch(consecutive_failures=3)
    kinds = [(e.kind, e.consecutive) if (e := watch.observe(r)) else None
             for r in [_round(0), _round(0), _round(5, primary=True), _round(5, primary=True),
                       _round(5, primary=True), _round(5, primary=True), _round(0), _round(2), _round(2)]]
    assert kinds == [None, None, ("degraded", 1), None, ("disaster", 3), None, ("recovered", 0), ("degraded", 1), None]


def test_a_degraded_round_breaks_the_disaster_count() -> None:
    watch = RoundWatch(consecutive_failures=2)
    assert watch.observe(_round(5)).kind == "degraded"
    assert watch.observe(_round(2)) is None
    assert watch.observe(_round(5)) is None  # one disaster round after a degraded one
    assert watch.observe(_round(5)).kind == "disaster"


def test_rounds_come_sooner_only_while_a_disaster_is_being_confirmed() -> None:
    watch = RoundWatch(consecutive_failures=3)
    delays = []
    for r in [_round(0), _round(2), _round(5, primary=True), _round(5, primary=True), _round(5, primary=True),
              _round(5, primary=True), _round(0)]:
        watch.observe(r)
        delays.append(watch.next_round_in(interval=30.0, confirm_interval=10.0))
    # healthy, degraded: 30 s; disaster seen twice: 10 s; reported (and after): 30 s again
    assert delays == [30.0, 30.0, 10.0, 10.0, 30.0, 30.0, 30.0]


def test_a_confirm_interval_longer_than_the_probe_interval_is_refused() -> None:
    import pytest

    from continuity.policy.model import HealthMonitor

    settings = load_policy().health_monitor.model_dump()
    with pytest.raises(ValueError, match=r"confirm_interval \(1m\) must not be longer than probe_interval \(30s\)"):
        HealthMonitor.model_validate({**settings, "confirm_interval": "1m"})


def test_a_round_weighs_the_checks_and_names_a_group_that_could_not_run() -> None:
    policy = load_policy()

    def application_checks() -> list[Check]:
        return [Check("application", "function video_upload", False, "video_upload in us-east-1: upload FAILED")]

    def database_checks() -> list[Check]:
        raise ConnectionError("no route to host")

    probe = run_round(policy, [application_checks, database_checks])
    assert probe.score == 2 and not probe.disaster and probe.checks == 2
    assert probe.failing == ["function video_upload: video_upload in us-east-1: upload FAILED",
                             "database_checks: database_checks could not run: ConnectionError: no route to host"]

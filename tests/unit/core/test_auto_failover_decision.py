"""The automatic failover's decision on typed snapshots: each branch's reason, the streak it keeps, and which
evidence it asked for (a check that stops early must not touch the nodes)."""

from __future__ import annotations

from typing import Any

import pytest

from continuity.health.autofailover import (DisasterStreak, StandbyCandidate, ViewpointVerdict, choose_target,
                                            decide_auto_failover)

DISASTER = {"disaster": True, "summary": "score 5 >= 4",
            "failing": [{"component": "database", "subject": "primary primary"}]}
STANDBY_DOWN = {"disaster": True, "summary": "score 4 >= 4",
                "failing": [{"component": "network", "subject": "standby sync1"}]}
HEALTHY = {"disaster": False, "summary": "score 0", "failing": []}
DR_READY = {"dr": StandbyCandidate(reachable=True, in_recovery=True, receive_lsn="0/5000000")}


class Evidence:
    """The three costly questions, answered from fields and recorded when asked."""

    def __init__(self, *, candidates: dict[str, StandbyCandidate] | None = None, partition: str | None = None,
                 alive: str | None = None) -> None:
        self.candidates = DR_READY if candidates is None else candidates
        self.partition = partition
        self.alive = alive
        self.asked: list[str] = []

    def decide(self, assessment: dict[str, Any] | None, streak: DisasterStreak, *, rounds: int = 0,
               enabled: bool = True, run_id: str = "scheduled__9"):
        def probe() -> dict[str, StandbyCandidate]:
            self.asked.append("candidates")
            return self.candidates

        def views() -> ViewpointVerdict:
            self.asked.append("viewpoints")
            return ViewpointVerdict(primary_view="us-east-1: silent for 400 s", partition=self.partition)

        def alive() -> str | None:
            self.asked.append("standbys")
            return self.alive

        return decide_auto_failover(enabled=enabled, consecutive_failures=3, dr_region="us-west-2",
                                    assessment=assessment, streak=streak, rounds=rounds, run_id=run_id,
                                    probe_candidates=probe, read_viewpoints=views, primary_seen_alive=alive)


def test_below_the_threshold_counts_and_asks_no_node() -> None:
    evidence = Evidence()
    decision = evidence.decide(DISASTER, DisasterStreak(count=1, since="scheduled__8", last_run="scheduled__8"))
    assert not decision.trigger and "reached 2 time(s) in a row; automatic failover waits for 3" in decision.reason
    assert decision.streak == DisasterStreak(count=2, since="scheduled__8", last_run="scheduled__9")
    assert evidence.asked == []


def test_at_the_threshold_with_every_check_passed_it_triggers_and_resets() -> None:
    evidence = Evidence()
    decision = evidence.decide(DISASTER, DisasterStreak(count=2, since="scheduled__7"))
    assert decision.trigger and decision.target == "dr"
    assert decision.reason == ("automatic: disaster threshold held for 3 consecutive checks; viewpoint "
                               "us-east-1: silent for 400 s (score 5 >= 4)")
    assert decision.streak == DisasterStreak(triggered_by="scheduled__9")
    assert evidence.asked == ["candidates", "viewpoints", "standbys"]


def test_probe_rounds_count_at_once() -> None:
    decision = Evidence().decide(DISASTER, DisasterStreak(), rounds=3)
    assert decision.trigger and any("held for 3 consecutive 30-second rounds" in note for note in decision.notes)


@pytest.mark.parametrize(("assessment", "enabled", "reason", "streak"), [
    (DISASTER, False, "automatic failover is off", None),
    (None, True, "the assessment did not report", None),
    (HEALTHY, True, "no disaster: nothing to do", DisasterStreak()),
    (STANDBY_DOWN, True, "disaster alert without promotion", DisasterStreak()),
])
def test_nothing_to_decide(assessment, enabled, reason, streak) -> None:
    evidence = Evidence()
    decision = evidence.decide(assessment, DisasterStreak(count=2), enabled=enabled)
    assert not decision.trigger and decision.reason.startswith(reason) and decision.streak == streak
    assert evidence.asked == []
    assert (decision.alert is not None) == (assessment is STANDBY_DOWN)


def test_a_partition_alerts_keeps_the_streak_and_never_asks_the_standbys() -> None:
    evidence = Evidence(partition="the primary's own region us-east-1 saw primary primary writable 20 s ago")
    decision = evidence.decide(DISASTER, DisasterStreak(count=2))
    assert not decision.trigger and decision.reason.startswith("no automatic failover: the primary's own region")
    assert decision.streak is not None and decision.streak.count == 3, "kept: the next check decides at once"
    assert decision.alert and evidence.asked == ["candidates", "viewpoints"]


def test_a_standby_still_hearing_the_primary_resets_the_streak() -> None:
    decision = Evidence(alive="standby sync1 still streams from the primary").decide(DISASTER, DisasterStreak(count=5))
    assert not decision.trigger and decision.streak == DisasterStreak() and "sync1 still streams" in decision.alert


def test_no_healthy_dr_standby_keeps_the_streak_and_names_each_candidate() -> None:
    evidence = Evidence(candidates={"dr": StandbyCandidate(reachable=False, error="connection refused")})
    decision = evidence.decide(DISASTER, DisasterStreak(count=2))
    assert not decision.trigger and decision.streak.count == 3
    assert "no healthy standby in the DR region us-west-2" in decision.reason and "connection refused" in decision.reason
    assert evidence.asked == ["candidates"]


def test_the_automatic_target_is_the_healthy_standby_with_the_most_wal() -> None:
    candidates = {
        "dr": StandbyCandidate(reachable=True, in_recovery=True, receive_lsn="0/5000000"),
        "dr2": StandbyCandidate(reachable=True, in_recovery=True, receive_lsn="0/6000000"),
        "dr3": StandbyCandidate(reachable=False),
        "dr4": StandbyCandidate(reachable=True, in_recovery=False, receive_lsn="0/9000000"),
    }
    assert choose_target(candidates) == "dr2"
    assert choose_target({"dr3": StandbyCandidate(reachable=False)}) is None


def test_a_stored_streak_that_does_not_parse_counts_from_zero_and_says_so() -> None:
    warnings: list[str] = []
    assert DisasterStreak.parse("not json", warn=warnings.append) == DisasterStreak()
    assert DisasterStreak.parse('{"count": "many"}', warn=warnings.append) == DisasterStreak()
    assert len(warnings) == 2 and "counting from zero" in warnings[0]
    assert DisasterStreak.parse(None) == DisasterStreak()
    assert DisasterStreak(count=2, since="a").dumps() == '{"count":2,"since":"a"}'

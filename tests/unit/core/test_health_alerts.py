"""Every red check reaches a person, once per check, and its incident closes when the check stays green
(#30 item 3): the decisions of `continuity.incidents.health_alerts`, on checks and incidents built here."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from continuity.health.checks import Check, assess
from continuity.incidents.health_alerts import alert_requests, last_red, resolve_requests
from continuity.incidents.records import Incident
from continuity.policy.loading import load_policy

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


def _policy(resolve_after: timedelta = timedelta(minutes=10)):
    policy = load_policy()
    return policy.model_copy(update={"health_monitor": policy.health_monitor.model_copy(
        update={"resolve_after": resolve_after})})


@pytest.mark.parametrize(("component", "subject", "severity"), [
    ("application", "application instance http://127.0.0.1:8001", "high"),
    ("network", "standby dr", "low"),
    ("storage", "storage primary", "low"),
    ("archiving", "WAL spool /spool", "low"),
    ("configuration", "configuration of primary: slot dr", "low"),
])
def test_each_red_check_is_a_cause_of_its_own_at_its_components_severity(component: str, subject: str,
                                                                         severity: str) -> None:
    policy = _policy()
    checks = [Check(component, subject, False, f"{subject} is broken"), Check("database", "primary p", True, "ok")]
    [request] = alert_requests(policy, assess(policy, checks), source="dr_health_monitor run r1")
    assert (request.cause_key, request.severity, request.action) == (f"health:{subject}", severity, "open")
    assert request.description == f"{subject} is broken" and request.source == "dr_health_monitor run r1"


def test_a_checks_own_alert_wins_over_its_component() -> None:
    policy = _policy()
    slot = Check("configuration", "WAL retained on primary by slot dr", False, "slot dr retains 5 GiB", alert="high")
    [request] = alert_requests(policy, assess(policy, [slot]), source="s")
    assert request.severity == "high"


def test_a_disaster_is_one_incident_not_one_per_check() -> None:
    policy = _policy()
    checks = [Check("database", "primary p", False, "unreachable"), Check("network", "standby dr", False, "gone")]
    assessment = assess(policy, checks)
    assert assessment.disaster
    assert alert_requests(policy, assessment, source="s") == []


def test_a_healthy_assessment_asks_for_nothing() -> None:
    policy = _policy()
    assert alert_requests(policy, assess(policy, [Check("network", "standby dr", True, "streaming")]), source="s") == []


def _incident(cause: str, *, opened: datetime, joined: list[datetime] = ()) -> Incident:
    incident = Incident(incident_id="INC-1", cause_key=cause, severity="low", title="t", description="d",
                        functions=[], commander="on-call", opened_at=opened)
    incident.note("opened (low) by dr_health_monitor run r1: t", at=opened)
    for at in joined:
        incident.note("triggered again (2 triggers) by dr_health_monitor run r2: t", at=at)
    incident.note("immediate team told", at=NOW)  # not a red report: does not count
    return incident


def test_green_for_resolve_after_resolves_the_checks_incident() -> None:
    policy = _policy()
    incident = _incident("health:standby dr", opened=NOW - timedelta(minutes=30), joined=[NOW - timedelta(minutes=11)])
    assert last_red(incident) == NOW - timedelta(minutes=11)
    green = assess(policy, [Check("network", "standby dr", True, "standby dr is streaming (async)")])
    [request] = resolve_requests(policy, green, [incident], now=NOW, source="dr_health_monitor run r9")
    assert (request.action, request.incident_id, request.cause_key) == ("resolve", "INC-1", "health:standby dr")
    assert request.description.startswith("standby dr is streaming (async) (green, nothing red reported for 10m")


def test_a_flapping_check_stays_one_open_incident() -> None:
    policy = _policy()
    incident = _incident("health:standby dr", opened=NOW - timedelta(minutes=30), joined=[NOW - timedelta(minutes=4)])
    green = assess(policy, [Check("network", "standby dr", True, "streaming")])
    assert resolve_requests(policy, green, [incident], now=NOW, source="s") == [], "red 4 minutes ago: not yet"


def test_an_incident_is_not_resolved_while_its_check_is_red_or_unmeasured() -> None:
    policy = _policy()
    incident = _incident("health:standby dr", opened=NOW - timedelta(hours=1))
    red = assess(policy, [Check("network", "standby dr", False, "gone")])
    assert resolve_requests(policy, red, [incident], now=NOW, source="s") == []
    unmeasured = assess(policy, [Check("network", "standby sync1", True, "streaming")])
    assert resolve_requests(policy, unmeasured, [incident], now=NOW, source="s") == []


def test_what_a_switchover_in_progress_disturbs_is_expected_and_asks_for_no_incident() -> None:
    """#30 item 4: the health monitor overlapping a drill's or dr_failover's switchover (the lease is held) does not
    fail, page anyone or count toward a disaster for what the switchover disturbs; a storage failure still does."""
    from datetime import datetime, timedelta, timezone

    from continuity.health.checks import Check, assess, during_topology_change

    policy = load_policy()
    now = datetime(2026, 12, 7, 15, 0, tzinfo=timezone.utc)
    findings = [Check("database", "primary primary", False, "primary is unreachable: connection refused"),
                Check("application", "application entry point pgbouncer", False, "pgbouncer is paused"),
                Check("storage", "storage dr", False, "location dr is unreachable")]
    marked = during_topology_change(findings, change="dr_drill run d1 (live switchover to dr and back)",
                                    active_since=now - timedelta(seconds=20), now=now, grace=timedelta(minutes=10))
    assert [c.healthy for c in marked] == [True, True, False]
    assert marked[0].reason == ("expected while dr_drill run d1 (live switchover to dr and back) changes the cluster: "
                                "primary is unreachable: connection refused")
    assessment = assess(policy, marked)
    assert not assessment.disaster and [r.cause_key for r in alert_requests(policy, assessment, source="t")] == [
        "health:storage dr"]
    stale = during_topology_change(findings, change="dr_failover run r1", active_since=now - timedelta(minutes=11),
                                   now=now, grace=timedelta(minutes=10))
    assert stale == findings, "a lease not renewed within the grace (a dead run) covers nothing"
    assert assess(policy, stale).disaster


def test_a_switchover_that_ended_after_the_checks_began_still_excuses_what_they_saw() -> None:
    """A drill switched over and back between the checks and the assessment: no lease is held when the findings
    are weighed, yet the change that ended after the checks began explains them (seen in a fresh `continuity run`:
    the 5-minute health run's checks read dr as the primary, with its slots inactive). One that ended before the
    checks began explains nothing; one still holding the lease explains them as before."""
    from datetime import datetime, timedelta, timezone

    from continuity.health.checks import Check, change_seen_by_checks, during_topology_change

    started = datetime(2026, 12, 8, 4, 15, 0, tzinfo=timezone.utc)
    now = started + timedelta(seconds=11)
    drill = "dr_drill run d1 (live switchover to dr and back), from 2026-12-08 04:14:48 to 04:15:09 UTC"
    seen = change_seen_by_checks(held=None, ended=(drill, started + timedelta(seconds=9)), checks_started=started,
                                 now=now)
    assert seen is not None and seen.change == f"{drill} (ended after this run's checks began)"
    findings = [Check("configuration", "configuration of dr", False, "slot primary: replication slot primary is inactive"),
                Check("application", "function user_authentication", False, "login FAILED"),
                Check("storage", "storage dr", False, "location dr is unreachable")]
    marked = during_topology_change(findings, change=seen.change, active_since=seen.active_since, now=seen.judged_at,
                                    grace=timedelta(minutes=10))
    assert [c.healthy for c in marked] == [True, True, False], "storage is never a switchover's doing"

    assert change_seen_by_checks(held=None, ended=(drill, started - timedelta(seconds=1)), checks_started=started,
                                 now=now) is None, "a change over before the checks began explains nothing"
    assert change_seen_by_checks(held=None, ended=None, checks_started=started, now=now) is None
    holding = change_seen_by_checks(held=("dr_failover run f1 (switchover to dr)", now - timedelta(seconds=30)),
                                    ended=(drill, started + timedelta(seconds=9)), checks_started=started, now=now)
    assert holding is not None and holding.change == "dr_failover run f1 (switchover to dr)" and holding.judged_at == now

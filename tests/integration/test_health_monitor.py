"""dr_health_monitor against the real sandbox: healthy passes, a stopped DR standby fails the run by name."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.support.airflow_helpers import load_dag, task_states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")


def waiting_checks(*, action: str = "open") -> dict[str, str]:
    """The check incidents' causes waiting in the inbox: cause key → severity."""
    from continuity.hooks.incident import ContinuityIncidentHook
    from continuity.incidents.records import pending_causes

    locations = ContinuityIncidentHook(follow_topology=False).incident_locations()
    return {request.cause_key: request.severity for _, request in pending_causes(locations)
            if request.cause_key.startswith("health:") and request.action == action}


def clear_health_causes(locations=None) -> None:
    """Remove the check incidents' causes waiting in this sandbox's inbox (every red check leaves one)."""
    from continuity.hooks.incident import ContinuityIncidentHook
    from continuity.incidents.records import claim_cause, pending_causes

    locations = locations or ContinuityIncidentHook(follow_topology=False).incident_locations()
    for name, request in pending_causes(locations):
        if request.cause_key.startswith("health:"):
            claim_cause(locations, name)


def test_healthy_sandbox_passes(sandbox) -> None:
    run = load_dag("dr_health_monitor").test()
    assert str(run.state) == "success", task_states(run)
    assessment = xcom(run, "assess_health", "assessment")
    assert assessment["healthy"] is True and assessment["score"] == 0
    findings = xcom(run, "check_database")
    reasons = [f["reason"] for f in findings]
    assert any(r.startswith("standby dr is streaming (async)") for r in reasons), reasons
    assert any(r.startswith("standby sync1 is streaming (quorum)") for r in reasons), reasons
    assert any(r.startswith("standby sync2 is streaming (quorum)") for r in reasons), reasons
    [commit] = [f for f in xcom(run, "check_entry_point") if f["subject"].startswith("commit latency through ")]
    assert commit["healthy"] and commit["details"]["seconds"] < commit["details"]["limit_seconds"], commit


def test_stopped_dr_standby_fails_the_run_naming_it(sandbox, capfd: pytest.CaptureFixture[str]) -> None:
    dr = sandbox.cluster("dr")
    dr.stop()
    try:
        run = load_dag("dr_health_monitor").test()
        states = task_states(run)
        assert str(run.state) == "failed"
        assert states["assess_health"] == "failed"
        assert states["check_database"] == "success", "checks report findings; only the assessment fails"
        assessment = xcom(run, "assess_health", "assessment")
        assert assessment["disaster"] is False, "one lost standby is degraded, not a disaster"
        assert assessment["score"] == 2
        assert "standby dr: node dr" in assessment["summary"] and "is unreachable" in assessment["summary"]
        assert "replication slot dr is inactive" in assessment["summary"]
        assert "sync1" not in assessment["summary"]

        # A switchover that gave the cluster lease back after the run's checks began (dated ahead here, as one
        # ending between the checks and the assessment is) explains what they saw: the same findings, expected.
        _record_released_lease(datetime.now(timezone.utc) + timedelta(minutes=5))
        during = load_dag("dr_health_monitor").test()
        assert str(during.state) == "success", task_states(during)
        assert not all(f["healthy"] for f in xcom(during, "check_database")), "the checks saw dr down"
        assessed = xcom(during, "assess_health", "assessment")
        assert assessed["healthy"] is True and assessed["failing"] == [], assessed
        out = capfd.readouterr().out
        assert "dr_drill run health-overlap (live switchover to dr and back)" in out
        assert "(ended after this run's checks began)" in out and "failing checks are expected" in out
        # One that ended before the run began explains nothing.
        _record_released_lease(datetime.now(timezone.utc) - timedelta(seconds=1))
        after = load_dag("dr_health_monitor").test()
        assert str(after.state) == "failed" and xcom(after, "assess_health", "assessment")["score"] == 2
    finally:
        _forget_released_lease()
        dr.start()
        sandbox.wait_streaming()


def _record_released_lease(released_at: datetime) -> None:
    """What a drill's switchover leaves when it gives the cluster lease back (failover.lease.ClusterLease.release)."""
    from continuity.failover.lease import RELEASED_KEY, LeaseRecord, ReleasedLease
    from continuity.hooks.failover import FailoverHook

    lease = LeaseRecord(holder="dr_drill run health-overlap", run_id="health-overlap",
                        purpose="live switchover to dr and back", acquired_at=released_at - timedelta(seconds=20),
                        expires_at=released_at + timedelta(minutes=30))
    data = ReleasedLease(lease=lease, released_at=released_at).model_dump_json().encode()
    for location in FailoverHook().get_lease().locations:
        location.put_bytes(RELEASED_KEY, data)


def _forget_released_lease() -> None:
    from continuity.failover.lease import RELEASED_KEY
    from continuity.hooks.failover import FailoverHook

    for location in FailoverHook().get_lease().locations:
        location.delete(RELEASED_KEY)


def test_unreachable_storage_counts_toward_the_score(sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A required bucket that is gone is a storage failure (weight 1), named with its location."""
    from tests.support.policies import use_overlay

    use_overlay(monkeypatch, tmp_path, {"storage": {"locations": [{"name": "dr", "bucket": "continuity-backups-gone"}]}})
    clear_health_causes()
    run = load_dag("dr_health_monitor").test()
    assessment = xcom(run, "assess_health", "assessment")
    assert str(run.state) == "failed"
    assert assessment["score"] == 1
    assert "location dr (s3 continuity-backups-gone, us-west-2) is unreachable" in assessment["summary"]
    assert waiting_checks().get("health:storage dr") == "low", "storage unreachable reaches the immediate team"
    clear_health_causes()


def test_a_stopped_application_set_lowers_the_score_by_2_and_is_named(sandbox) -> None:
    healthy = load_dag("dr_health_monitor").test()
    findings = {f["subject"]: f for f in xcom(healthy, "check_application")}
    assert findings["function video_upload"]["healthy"] and "read back, SHA-256 equal" in findings[
        "function video_upload"]["reason"]
    assert sorted(s for s in findings if s.startswith("function ")) == sorted(
        f"function {name}" for name in sandbox.policy.business_functions)
    clear_health_causes()
    sandbox.stop_application("us-east-1", state="serving")
    try:
        run = load_dag("dr_health_monitor").test()
        assessment = xcom(run, "assess_health", "assessment")
        assert str(run.state) == "failed"
        assert assessment["score"] == 2 and assessment["disaster"] is False
        assert "application instance http://127.0.0.1:" in assessment["summary"]
        assert "user_authentication in us-east-1: login FAILED" in assessment["summary"]
        # #30 item 3: no disaster, yet each failing check is an incident at the application's severity.
        causes = waiting_checks()
        assert causes["health:function user_authentication"] == "high", causes
        assert {s for k, s in causes.items() if k.startswith("health:application instance ")} == {"high"}, causes
    finally:
        sandbox.start_application("us-east-1")
        clear_health_causes()


def test_stopped_primary_reaches_the_disaster_threshold(sandbox) -> None:
    primary = sandbox.cluster("primary")
    clear_health_causes()
    primary.stop()
    try:
        run = load_dag("dr_health_monitor").test()
        assessment = xcom(run, "assess_health", "assessment")
        assert str(run.state) == "failed"
        assert assessment["disaster"] is True
        assert assessment["score"] >= 3
        assert assessment["summary"].startswith("DISASTER THRESHOLD REACHED")
        assert "primary primary: node primary" in assessment["summary"]
        assert "application entry point" in assessment["summary"]
        assert waiting_checks() == {}, "the disaster's one critical incident stands for every failing check"
    finally:
        primary.start()
        sandbox.wait_streaming()
        sandbox.wait_entry_point()


def test_a_stopped_standbys_slot_filling_the_primary_opens_an_incident_before_the_bound(
        sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """#30 item 8: the DR standby stopped while the primary writes; its slot's WAL passes the alert level (half
    the bound) → the run names the slot and how much it holds, and an incident cause is left for dr_incident."""
    from continuity.hooks.incident import ContinuityIncidentHook
    from continuity.incidents.records import pending_causes
    from tests.support.policies import use_overlay

    use_overlay(monkeypatch, tmp_path, {"health_monitor": {"max_slot_wal_keep": "128MiB", "slot_wal_alert_ratio": 0.25}})
    primary, dr = sandbox.cluster("primary"), sandbox.cluster("dr")
    applied = primary.psql("SELECT setting FROM pg_settings WHERE name = 'max_slot_wal_keep_size'").strip()
    assert applied == sandbox.policy.health_monitor.max_slot_wal_keep_setting, "the sandbox applies the policy's bound"
    primary.psql("ALTER SYSTEM SET max_slot_wal_keep_size = '128MB'; SELECT pg_reload_conf();")
    locations = ContinuityIncidentHook(follow_topology=False).incident_locations()
    cause = "health:WAL retained on primary by slot dr"
    clear_health_causes(locations)
    dr.stop()
    try:
        primary.psql("CREATE TABLE continuity_slot_filler AS SELECT g, repeat(md5(g::text), 30) AS pad "
                     "FROM generate_series(1, 40000) g; SELECT pg_switch_wal();", dbname="app")
        run = load_dag("dr_health_monitor").test()
        assert str(run.state) == "failed"
        assessment = xcom(run, "assess_health", "assessment")
        assert assessment["disaster"] is False
        slot = next(c for c in assessment["failing"] if c["subject"] == "WAL retained on primary by slot dr")
        assert slot["alert"] == "high"
        assert "over the 32.0 MiB alert level (25% of the 128.0 MiB bound" in slot["reason"], slot["reason"]
        assert slot["details"]["retained_bytes"] >= 32 * 2**20 and slot["details"]["wal_status"] != "lost"
        waiting = [(name, request) for name, request in pending_causes(locations) if request.cause_key == cause]
        assert waiting, "the alert waits in the incident inbox for dr_incident"
        assert waiting[0][1].severity == "high" and waiting[0][1].description == slot["reason"]
    finally:
        primary.psql("DROP TABLE IF EXISTS continuity_slot_filler", dbname="app")
        primary.psql("ALTER SYSTEM RESET max_slot_wal_keep_size; SELECT pg_reload_conf();")
        clear_health_causes(locations)
        dr.start()
        sandbox.wait_streaming()


def test_a_lost_standby_opens_a_low_incident_and_once_green_the_monitor_resolves_it(
        sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """#30 item 3: a red check that is no disaster (the DR standby stopped: score 2) reaches the immediate team as
    an incident of its own, and the monitor resolves it once the check has stayed green for resolve_after."""
    import time

    from continuity.hooks.incident import ContinuityIncidentHook
    from continuity.incidents.records import pending_causes
    from tests.support.airflow_helpers import task_states
    from tests.support.policies import use_overlay

    use_overlay(monkeypatch, tmp_path, {"health_monitor": {"resolve_after": "2s"}})
    store = ContinuityIncidentHook(follow_topology=False).get_store()
    cause = "health:standby dr"
    people = r"acknowledge|escalate_.*|approve_.*|publish_.*|post_incident_report"

    def waiting(action: str) -> list[tuple[str, object]]:
        return [(name, request) for name, request in pending_causes(store.locations)
                if request.cause_key == cause and request.action == action]

    clear_health_causes(store.locations)  # other tests' red checks of this sandbox
    dr = sandbox.cluster("dr")
    dr.stop()
    try:
        red = load_dag("dr_health_monitor").test()
        assert str(red.state) == "failed" and xcom(red, "assess_health", "assessment")["disaster"] is False
        [(name, request)] = waiting("open")
        assert request.severity == "low" and request.title == "standby dr: network check failing"
        assert request.description.startswith("node dr (") and "is unreachable" in request.description
        opened = load_dag("dr_incident").test(run_conf={**request.model_dump(mode="json"), "cause": name},
                                              mark_success_pattern=people)
        assert task_states(opened)["alert_internal"] == "success", task_states(opened)
        incident = store.open_for(cause)
        assert incident is not None and incident.severity == "low" and not waiting("open")
    finally:
        dr.start()
        sandbox.wait_streaming()
    try:
        time.sleep(2.5)  # resolve_after: green, and nothing red reported since
        green = load_dag("dr_health_monitor").test()
        assert str(green.state) == "success", xcom(green, "assess_health", "assessment")
        [(name, request)] = waiting("resolve")
        assert request.incident_id == incident.incident_id
        resolved = load_dag("dr_incident").test(run_conf={**request.model_dump(mode="json"), "cause": name},
                                                mark_success_pattern=people)
        states = task_states(resolved)
        assert states["resolve_incident"] == "success", states
        assert states["approve_recovery_announcement"] == "skipped", "customers never heard of a low incident"
        assert store.get(incident.incident_id).status == "resolved" and store.open_for(cause) is None
        assert not waiting("resolve")
    finally:
        clear_health_causes(store.locations)
        if (left := store.open_for(cause)) is not None:
            store.resolve(left.incident_id, by="test cleanup")


def test_replication_lag_over_its_limit_and_a_filling_spool_each_open_a_low_incident(
        sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """#30 item 3, the two checks not shown above: a standby behind the lag limit (its replay paused while the
    primary writes) and the WAL spool over its limit each become an incident of their own, below a disaster."""
    import os
    from pathlib import Path

    from tests.support.policies import use_overlay

    use_overlay(monkeypatch, tmp_path, {"health_monitor": {"max_lag_bytes": "1MiB", "max_spool_files": 2}})
    spool = Path(os.environ["CONTINUITY_WAL_SPOOL"])
    fillers = [spool / f"test-filler-{n}" for n in range(3)]  # not WAL names: no shipper takes them
    dr = sandbox.cluster("dr")
    clear_health_causes()
    dr.psql("SELECT pg_wal_replay_pause();")
    try:
        for filler in fillers:
            filler.write_bytes(b"x")
        sandbox.cluster("primary").psql("CREATE TABLE continuity_lag_filler AS SELECT g, repeat(md5(g::text), 30) "
                                        "FROM generate_series(1, 4000) g;", dbname="app")
        run = load_dag("dr_health_monitor").test()
        assessment = xcom(run, "assess_health", "assessment")
        assert str(run.state) == "failed" and assessment["disaster"] is False
        assert "standby dr is " in assessment["summary"] and "MiB behind, over the 1.0 MiB limit" in assessment["summary"]
        assert "files wait in the WAL spool, over the limit of 2" in assessment["summary"]
        causes = waiting_checks()
        assert causes.get("health:standby dr") == "low", causes
        assert causes.get(f"health:WAL spool {spool}") == "low", causes
    finally:
        for filler in fillers:
            filler.unlink(missing_ok=True)
        dr.psql("SELECT pg_wal_replay_resume();")
        sandbox.cluster("primary").psql("DROP TABLE IF EXISTS continuity_lag_filler;", dbname="app")
        clear_health_causes()
        sandbox.wait_streaming()


def test_one_synchronous_standby_stopped_under_write_load_commits_go_on_and_its_incident_opens(sandbox) -> None:
    """#30 item 9: two synchronous standbys, any one acknowledging. sync1 stopped while a writer commits through
    the entry point: commits go on, the commit-latency check says so, and sync1's own check leaves an incident.
    With sync2 stopped too, no standby acknowledges: the commit check fails, naming the wait, where the database
    checks alone stayed green before."""
    from continuity.exercises.loadgen import CommitRecorder
    from continuity.health.checks import check_commit_latency
    from continuity.postgres.node import PostgresNode

    entry = PostgresNode(name="pgbouncer", conninfo=sandbox.app_conninfo())
    clear_health_causes()
    sync1, sync2 = sandbox.cluster("sync1"), sandbox.cluster("sync2")
    try:
        with CommitRecorder(sandbox.app_conninfo()) as load:
            assert load.wait_for(20), load.errors[-3:]
            sync1.stop(mode="fast")
            before = len(load.acknowledged)
            assert load.wait_for(before + 50), f"commits stopped with sync1 down: {load.errors[-3:]}"
            run = load_dag("dr_health_monitor").test()
        [commit] = [f for f in xcom(run, "check_entry_point") if f["subject"].startswith("commit latency through ")]
        assert commit["healthy"], commit
        assessment = xcom(run, "assess_health", "assessment")
        assert str(run.state) == "failed" and assessment["disaster"] is False, assessment
        assert "standby sync1: node sync1" in assessment["summary"]
        assert waiting_checks().get("health:standby sync1") == "low", waiting_checks()

        sync2.stop(mode="fast")
        [frozen] = check_commit_latency(sandbox.policy, entry)
        assert not frozen.healthy and frozen.component == "database", frozen
        assert "canceling wait for synchronous replication" in frozen.reason, frozen.reason
    finally:
        sync1.start()
        sync2.start()
        sandbox.wait_streaming(timeout=60)
        clear_health_causes()
    [recovered] = check_commit_latency(sandbox.policy, entry)
    assert recovered.healthy, recovered.reason

"""dr_drill end to end with dag.test(): rebuilt from the DR region alone, RTO and RPO measured."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest

from continuity.exercises.drill import DrillStart, check_point_in_time, run_drill
from continuity.backup.full import logical_backup, physical_backup

from continuity.waiting import poll
from tests.support.airflow_helpers import load_dag, task_states, xcom
from tests.support.wal import close_segments

pytestmark = pytest.mark.usefixtures("airflow_db")


def test_drill_rebuilds_from_the_dr_region_and_measures_rto_and_rpo(sandbox) -> None:
    catalog = sandbox.catalog()
    for name, make in (("sync1", physical_backup), ("primary", logical_backup)):
        node = sandbox.backup_node(name)
        extra = {"database": "app"} if make is logical_backup else {}
        make(node=node, keyring=sandbox.keyring(), locations=list(catalog.locations.values()), required={"primary", "dr"},
             backup_id=f"{'logical-app' if extra else 'physical-sync1'}-drill-{time.time_ns()}", report=lambda _m: None,
             **extra)

    for _ in range(2):  # the second run copies the first's heartbeat: the lag is measured
        assert str(load_dag("dr_object_replication").test().state) == "success"

    # The live switchover (on in the sandbox's policy) is tested with its own cluster in test_failover.
    run = load_dag("dr_drill").test(run_conf={"include_switchover": False})
    assert str(run.state) == "success", task_states(run)
    result = xcom(run, "rebuild_and_measure")
    assert result["location"] == "dr"
    # RPO (#31 item 4): the rebuild used what location dr held at the marker stream's end; no WAL was pushed in
    # between here (no pusher in this sandbox), so what the markers wrote after the base backup is lost, and said.
    start = DrillStart.model_validate(xcom(run, "start_drill"))
    assert start.stream.count >= 10 and result["disaster_at"] == start.stream.disaster_at.isoformat()
    assert result["marker_recovered"] is False and result["rpo_seconds"] > 0
    assert result["rpo_source"].startswith(f"marker stream of {start.stream.count} commits")
    assert "rebuilt from what location dr held then" in result["rpo_source"]
    assert result["rto_seconds"] > 0
    assert set(result["phases"]) >= {"fetch_and_unpack", "wal_staging", "wal_replay", "validation"}
    assert result["checks_passed"] > 0 and result["failed_checks"] == []
    assert result["amcheck"] == "pg_amcheck found no corruption in any database"
    assert result["downtime_seconds"] > 0 and "on the policy's downtime table" in result["downtime_cost"]
    objectives = {o["objective"]: o for o in result["objectives"]}
    assert objectives["RTO tier_1_critical"]["target"] == "15m"
    critical = objectives["RPO critical_user_data"]
    assert critical["measured_seconds"] == result["rpo_seconds"] and critical["source"] == result["rpo_source"]
    # Every business function and data category of the policy, each measured or `not measured`.
    policy = sandbox.policy
    assert {f"RTO {name}" for name in policy.business_functions} <= set(objectives)
    assert {f"RPO {name}" for name in policy.data_categories} <= set(objectives)
    # Each function's RTO: from the drill's start until its read-only transaction succeeded on the DR
    # application serving the rebuilt database; uploading, processing and annotating cannot be proven read-only
    # (#31 item 6), so those functions keep the database's recovery, naming the transaction not measured.
    unprovable = {"video_upload": "upload", "video_processing": "process", "annotation_system": "annotate"}
    assert {t["function"]: t["ok"] for t in result["application"]["transactions"]} == {
        **{name: True for name in policy.business_functions}, **{name: None for name in unprovable}}
    for name in ("user_authentication", "project_management", "reporting_analytics"):
        line = objectives[f"RTO {name}"]
        assert line["verdict"] == "pass" and line["measured_seconds"] >= result["rto_seconds"], line
        assert f"{name}'s read-only synthetic transaction in us-west-2" in line["source"] and not line["not_measured"]
    for name, transaction in unprovable.items():
        line = objectives[f"RTO {name}"]
        assert line["measured_seconds"] == round(result["rto_seconds"], 3) and line["verdict"] == "pass", line
        assert "database rebuilt in location dr" in line["source"], line
        assert f"its {transaction} transaction (read-only round)" in line["not_measured"], line
    assert "application" in result["phases"]
    assert "- application (read-only, us-west-2): user_authentication ok" in catalog.locations["dr"].get_bytes(
        f"reports/drill/{result['drill_id']}.md").decode()
    # Objects: from the DR replica's heartbeat and the rebuilt database's references, never the marker.
    video = objectives["RPO video_content"]
    assert video["verdict"] == "pass" and video["measured_seconds"] is not None, video
    rows = sandbox.node("primary", user="app", dbname="app").query_one("SELECT count(*) AS n FROM videos")["n"]
    assert f"{rows} of {rows} objects the recovered database references are in the replica" in video["source"]
    assert "replication lag: heartbeat written" in video["source"] and "marker" not in video["source"]
    assert objectives["RPO video_upload"]["source"] == video["source"]
    [objects_check] = result["objects"]
    assert objects_check["category"] == "video_content" and objects_check["missing"] == []
    assert objectives["RPO configuration_data"]["source"].startswith("age of the newest config backup") \
        if catalog.latest("config", location="dr") else objectives["RPO configuration_data"]["verdict"] == "not measured"
    assert not [o for o in result["objectives"] if o["verdict"] == "pass" and not o["source"]], "no pass without a source"
    stored = json.loads(catalog.locations["primary"].get_bytes(f"reports/drill/{result['drill_id']}.json"))
    assert stored["rto_seconds"] == result["rto_seconds"]
    md = catalog.locations["dr"].get_bytes(f"reports/drill/{result['drill_id']}.md").decode()
    assert md.startswith(f"# DR drill {result['drill_id']}") and "PASS" in md
    assert "| RTO tier_1_critical |" in md and f"would have lost: {result['rpo_source']}" in md
    assert "| RPO video_content |" in md and f"- objects video_content: {rows} of {rows} referenced" in md
    assert task_states(run)["remove_scratch_clusters"] == "success"
    assert task_states(run)["live_switchover"] == "skipped", "no switchover when the run turns it off"
    # Point-in-time recovery: to a target between two markers, the first recovered and the second not.
    pitr = result["pitr"]
    assert pitr["passed"] and pitr["before_recovered"] and not pitr["after_recovered"], pitr
    assert start.pitr.before_at < start.pitr.target < start.pitr.after_at
    assert "- point-in-time recovery to " in md and ": pass" in md
    # A recovery that goes past the target (here: to the latest point) is caught.
    past = check_point_in_time(catalog=catalog, location="dr", markers=start.pitr, database=start.database,
                               report=lambda _m: None, target_time=None)
    assert not past.passed and past.after_recovered and past.recovered_to == "latest"

    # The same markers with a disaster after ship_wal stored their WAL: nothing lost, the newest marker recovered.
    later = start.stream.model_copy(update={"disaster_at": datetime.now(timezone.utc)})
    again = run_drill(catalog=catalog, policy=sandbox.policy, drill_id=f"{start.drill_id}-later", started_at=start.started_at,
                      stream=later, database=start.database, report=lambda _m: None)
    assert again.marker_recovered is True and again.rpo_seconds == 0.0, again.rpo_source
    assert again.rpo_source.endswith(f"newest marker recovered committed {start.stream.last_at.isoformat()}")


def test_a_video_whose_object_never_reached_the_replica_fails_the_drills_video_verdict(sandbox) -> None:
    app = sandbox.node("primary", user="app", dbname="app")
    key = f"videos/never-replicated-{time.time_ns()}.mp4"
    # Written two hours ago (before everything the replica holds was copied): missing, not pending.
    app.execute("INSERT INTO videos (project_id, uploaded_by, s3_key, duration_seconds, size_bytes, sha256, "
                "status, uploaded_at) VALUES (1, 1, %s, 10, 1234, repeat('0', 64), 'uploaded', "
                "now() - interval '2 hours')", (key,))
    # The row's WAL in storage before the drill: the drill rebuilds from what storage holds at its disaster
    # instant, and a row lost there references nothing.
    [segment] = close_segments(sandbox, 1)
    assert poll(lambda: (sandbox.node("primary").archiver().last_archived_wal or "") >= segment, timeout=60)
    assert str(load_dag("dr_wal_archive").test().state) == "success"
    try:
        run = load_dag("dr_drill").test()
        assert str(run.state) == "failed"
        result = xcom(run, "rebuild_and_measure")
        assert result is None or not result["success"]
        catalog = sandbox.catalog()
        drill_id = xcom(run, "start_drill")["drill_id"]
        report = json.loads(catalog.locations["dr"].get_bytes(f"reports/drill/{drill_id}.json"))
        objectives = {o["objective"]: o for o in report["objectives"]}
        video = objectives["RPO video_content"]
        assert video["verdict"] == "FAIL" and f"1 referenced objects missing from the replica (first: {key})" in video["source"]
        assert objectives["RPO video_upload"]["verdict"] == "FAIL"
        assert any(c.startswith("video_content: 1 objects referenced by the rebuilt database are missing") for c in
                   report["failed_checks"])
        assert report["objects"][0]["missing"] == [key]
    finally:
        app.execute("DELETE FROM videos WHERE s3_key = %s", (key,))
    # The communication system was tested: a message marked as a test on every internal channel, receipted.
    receipts = xcom(run, "test_communication")
    assert {(r["audience"], r["method"]) for r in receipts} >= {
        ("immediate_team", "slack"), ("immediate_team", "pagerduty"), ("immediate_team", "email"),
        ("extended_team", "email"), ("management", "email")}
    assert all(r["status"] == "delivered" and r["test"] for r in receipts)
    from continuity_lab.receivers import received

    incident_id = receipts[0]["incident_id"]
    changes = [r for r in received(sandbox.receivers_dir, "pagerduty") if r["path"].endswith("/v2/change/enqueue")
               and incident_id in json.dumps(r["body"])]
    assert changes, "PagerDuty got a change event (nobody paged)"
    assert [r for r in received(sandbox.receivers_dir, "slack")
            if r["body"]["text"].startswith(f"*[TEST] TEST of the incident channels (drill {run.run_id})")]


def test_an_application_view_over_the_drill_markers_runs_nothing_with_a_superusers_rights(sandbox) -> None:
    """#30 item 11: the application role swaps the drill's marker table for a view that calls its own function,
    which runs `COPY ... TO PROGRAM` (allowed to a superuser only). A drill reading the markers in the rebuilt
    copy must not run the program: the copy is read as a role of its own, no superuser."""
    import psycopg

    from continuity.exercises.drill import MARKER_TABLE, commit_pitr_markers

    import shutil
    import tempfile
    from pathlib import Path

    reachable = Path(tempfile.mkdtemp(prefix="continuity-hostile-"))
    reachable.chmod(0o777)  # the program would run as the server's OS user
    evidence = reachable / "program-ran"
    hostile = f"""
        CREATE OR REPLACE FUNCTION continuity_hostile() RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN
            EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {evidence}''';
            RETURN true;
        END $$;
        ALTER TABLE {MARKER_TABLE} RENAME TO {MARKER_TABLE}_real;
        CREATE VIEW {MARKER_TABLE} AS SELECT * FROM {MARKER_TABLE}_real WHERE continuity_hostile();
    """
    app = sandbox.app_conninfo(through_pgbouncer=False)
    drill_id = f"hostile-{time.time_ns()}"
    with psycopg.connect(app, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (drill_id text PRIMARY KEY, "
                     f"committed_at timestamptz NOT NULL DEFAULT clock_timestamp())")
        conn.execute(hostile)
    try:
        markers = commit_pitr_markers(app, drill_id)  # through the view: the application's own table behind it
        catalog = sandbox.catalog()
        physical_backup(node=sandbox.backup_node("primary"), keyring=sandbox.keyring(),
                        locations=list(catalog.locations.values()), required={"primary", "dr"},
                        backup_id=f"physical-primary-hostile-{time.time_ns()}", report=lambda _m: None)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pg_execute_server_program"):
            check_point_in_time(catalog=sandbox.catalog(), location="dr", markers=markers, database="app",
                                report=lambda _m: None, target_time=None)
        assert not evidence.exists(), "the application's function ran a program with a superuser's rights"
    finally:
        with psycopg.connect(app, autocommit=True) as conn:
            conn.execute(f"DROP VIEW IF EXISTS {MARKER_TABLE}; DROP FUNCTION IF EXISTS continuity_hostile();"
                         f"ALTER TABLE IF EXISTS {MARKER_TABLE}_real RENAME TO {MARKER_TABLE}")
        shutil.rmtree(reachable, ignore_errors=True)

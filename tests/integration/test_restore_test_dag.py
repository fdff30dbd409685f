"""dr_restore_test end to end with dag.test(): a report with measured numbers, and a fallback from a corrupt DR copy."""

from __future__ import annotations

import json
import time

import pytest

from continuity.storage.catalog import Catalog
from continuity.backup.full import logical_backup
from continuity.restore.engine import scratch_prefix
from continuity.storage.locations import locations_from_policy
from continuity.storage.locations import key_safe

from tests.support.policies import every_location, use_overlay
from tests.support.airflow_helpers import load_dag, task_states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")


def _catalog(sandbox) -> Catalog:
    return sandbox.catalog()


@pytest.fixture(scope="module")
def recent_logical_backup(sandbox):
    catalog = _catalog(sandbox)
    node = sandbox.backup_node("primary")
    return logical_backup(node=node, database="app", keyring=sandbox.keyring(), locations=list(catalog.locations.values()),
                          required={"primary", "dr"}, backup_id=f"logical-app-weekly-{time.time_ns()}",
                          report=lambda _m: None)


def _report(sandbox, run) -> dict:
    name = key_safe(run.run_id)
    dr = _catalog(sandbox).locations["dr"]
    return json.loads(dr.get_bytes(f"reports/restore-test/{name}.json"))


def test_restore_test_reports_measured_numbers_and_verdicts(sandbox, recent_logical_backup, monkeypatch,
                                                          tmp_path) -> None:
    # Every location's turn and a full restore due in this run, whatever earlier tests proved already.
    use_overlay(monkeypatch, tmp_path, {"validation": {"restore_test": {
        "locations": {"dr": "7d", "primary": "1s", "archive": "1s"}, "full_restore_every": "1s"}}})
    assert str(load_dag("dr_object_replication").test().state) == "success"
    run = load_dag("dr_restore_test").test()
    assert str(run.state) == "success", task_states(run)
    report = _report(sandbox, run)
    assert report["chosen_location"] == "dr" and report["restored_from"] == "dr"
    assert "users" in report["tables"]
    # The table that references objects is always restored, and every reference checked in the DR replica.
    assert "videos" in report["tables"]
    [objects_check] = report["objects"]
    assert objects_check["category"] == "video_content" and objects_check["missing"] == []
    restored, _ = _catalog(sandbox).get(report["backup_id"], location="dr")  # the seed picks among recent ones
    assert objects_check["present"] == objects_check["referenced"] == restored.details["row_counts"]["public.videos"]
    assert report["restore_seconds"] > 0 and report["extrapolated_full_restore_seconds"] >= report["restore_seconds"]
    assert {o["function"] for o in report["objectives"]} == set(sandbox.policy.business_functions)
    by_function = {o["function"]: o for o in report["objectives"]}
    assert by_function["video_processing"]["verdict"] == "pass" and "extrapolated" in by_function["video_processing"]["source"]
    assert by_function["user_authentication"]["not_measured"] == ["authentication_service"]
    assert all(c["success"] for c in report["checks"]) and report["success"]
    # The DR region's application served the restored database (read-only): login, projects, the newest
    # video and its object from the DR replica; what a read-only round cannot prove says so.
    application = report["application"]
    assert application["read_only"] and application["region"] == "us-west-2"
    outcome = {t["function"]: t["ok"] for t in application["transactions"]}
    assert outcome == {**{name: True for name in sandbox.policy.business_functions},
                       **{name: None for name in ("video_upload", "video_processing", "annotation_system")}}
    upload = next(t for t in application["transactions"] if t["function"] == "video_upload")
    assert upload["reason"].startswith("not measured (read-only round): newest video ") and "SHA-256 equal" in upload["reason"]
    assert set(sandbox.policy.application.read_only_tables) <= set(report["tables"])
    assert {c["table"] for c in report["checks"] if c["expectation"] == "table_schema_matches"} == set(report["tables"])
    md = _catalog(sandbox).locations["primary"].get_bytes(
        f"reports/restore-test/{key_safe(run.run_id)}.md").decode()
    assert md.startswith("# Restore test") and "PASS" in md and "| user_authentication | 15m | 30m | pass | authentication_service |" in md
    assert xcom(run, "sample_restore_test")["backup_id"] == report["backup_id"]
    assert report["amcheck"] == "pg_amcheck found no corruption in any database" and report["amcheck"] in md
    assert task_states(run)["remove_scratch_clusters"] == "success"
    # Every location whose turn has come is proven (here all of them), the others than the DR region's
    # each from its own copy alone; the report says when each was last proven.
    summary = xcom(run, "sample_restore_test")
    assert summary["locations"] == ["dr", "archive", "primary"] or summary["locations"] == ["dr", "primary", "archive"]
    for location in ("primary", "archive"):
        other = json.loads(_catalog(sandbox).locations["dr"].get_bytes(
            f"reports/restore-test/{key_safe(run.run_id + '-' + location)}.json"))
        assert other["success"] and other["alone"] and other["restored_from"] == other["chosen_location"] == location
    assert set(summary["last_proven"]) == {"dr", "primary", "archive"} and all(summary["last_proven"].values())
    assert "- location archive last proven restorable: " in md
    # A full restore was due: one was made (every table, timed), and the sample's estimate is held to it.
    full = json.loads(_catalog(sandbox).locations["dr"].get_bytes(
        f"reports/restore-test/{key_safe(run.run_id + '-full')}.json"))
    assert full["full_restore"] and full["success"] and full["sample_rows"] == full["total_rows"]
    assert summary["full_restore_seconds"] == full["restore_seconds"] > 0
    scaled = full["restore_seconds"] * report["total_rows"] / full["total_rows"]
    assert report["calibrated_by"].startswith(f"full restore of {full['backup_id']}")
    assert report["extrapolated_full_restore_seconds"] >= round(scaled, 3) - 0.001, "never below what was measured"
    # (the report rounds both to milliseconds, so the ratio is checked to 2%)
    assert report["estimate_to_measured_ratio"] == pytest.approx(report["sample_estimate_seconds"] / scaled, rel=0.02)
    assert "last measured: full restore of" in md


def test_a_corrupt_dr_copy_makes_the_test_fall_back_and_report_it(sandbox, recent_logical_backup) -> None:
    catalog = _catalog(sandbox)
    dr = catalog.locations["dr"]
    saved = {}
    for manifest in catalog.list(kind="logical", location="dr"):  # whichever the run picks is corrupt
        key = manifest.data_key_name
        saved[key] = dr.get_bytes(key)
        blob = bytearray(saved[key])
        blob[len(blob) // 3] ^= 0x10
        dr.put_bytes(key, bytes(blob))
    try:
        run = load_dag("dr_restore_test").test()
        assert str(run.state) == "success", task_states(run)
        report = _report(sandbox, run)
        assert report["restored_from"] != "dr"
        assert report["corrupt_copies"] and report["corrupt_copies"][0].startswith("dr: ")
        assert "failed authentication" in report["corrupt_copies"][0]
    finally:
        for key, data in saved.items():
            dr.put_bytes(key, data)


def test_a_restore_failing_validation_fails_the_run_naming_the_expectation(sandbox, monkeypatch, tmp_path) -> None:
    """A backup whose manifest promises one more user than the dump holds: the check must say so."""
    import glob
    import uuid

    from continuity.backup.engine import backup_from_command
    from continuity.backup.full import _FOREIGN_KEY_COLUMNS
    from continuity.postgres.cluster import find_tool

    prefix = f"rt-fail-{uuid.uuid4().hex[:8]}/"
    policy = use_overlay(monkeypatch, tmp_path, every_location(prefix=prefix))
    locations = locations_from_policy(policy, lambda loc: sandbox.s3_client(loc.region))
    app = sandbox.node("primary", user="app", dbname="app")
    counts = {r["t"]: r["n"] for r in app.query(
        "SELECT 'public.' || relname AS t, n_live_tup AS n FROM pg_stat_user_tables")}
    real = {t: app.query_one(f"SELECT count(*) AS n FROM {t}")["n"] for t in counts}
    promised = dict(real, **{"public.users": real["public.users"] + 1})
    import psycopg

    with psycopg.connect(app.conninfo) as conn:
        foreign_keys = [list(row) for row in conn.execute(_FOREIGN_KEY_COLUMNS).fetchall()]
    port = sandbox.state["nodes"]["primary"]["port"]
    backup_from_command(
        [find_tool("pg_dump"), "-Fc", "-h", "127.0.0.1", "-p", str(port), "-U", "app", "-d", "app"],
        env={"PGPASSWORD": sandbox.password("app")}, kind="logical", keyring=sandbox.keyring(),
        locations=list(locations.values()), required={"primary", "dr"}, backup_id=f"logical-app-lying-{uuid.uuid4().hex[:6]}",
        source_info={"database": "app", "node": "primary"},
        details={"row_counts": promised, "foreign_keys": foreign_keys},
        report=lambda _m: None)

    run = load_dag("dr_restore_test").test()
    assert str(run.state) == "failed"
    name = key_safe(run.run_id)
    report = json.loads(locations["dr"].get_bytes(f"reports/restore-test/{name}.json"))
    assert report["success"] is False
    assert any(f"users: users has exactly the {promised['public.users']:,} rows of the manifest" in f
               for f in report["failed_checks"]), report["failed_checks"]
    assert not glob.glob(f"/tmp/{scratch_prefix(run.run_id)}*"), "the scratch cluster is gone"
    assert task_states(run)["remove_scratch_clusters"] == "success", "the teardown ran and did not mask the failure"


def test_a_restore_test_fails_when_the_restored_database_cannot_serve_a_login(sandbox, monkeypatch, tmp_path) -> None:
    """A backup taken while the probe user had no credentials: the database restores and passes its
    expectations, but the application on it cannot log anyone in — the report says so."""
    import uuid

    import psycopg


    prefix = f"rt-login-{uuid.uuid4().hex[:8]}/"
    policy = use_overlay(monkeypatch, tmp_path, every_location(prefix=prefix))
    locations = locations_from_policy(policy, lambda loc: sandbox.s3_client(loc.region))
    with psycopg.connect(sandbox.app_conninfo(through_pgbouncer=False)) as conn:
        saved = conn.execute("DELETE FROM user_credentials WHERE user_id = (SELECT id FROM users WHERE email = %s) "
                             "RETURNING user_id, password_hash, updated_at", (sandbox.PROBE_EMAIL,)).fetchone()
    try:
        logical_backup(node=sandbox.backup_node("primary"), database="app", keyring=sandbox.keyring(),
                       locations=list(locations.values()), required={"primary", "dr"},
                       backup_id=f"logical-app-nologin-{uuid.uuid4().hex[:6]}", report=lambda _m: None)
    finally:
        with psycopg.connect(sandbox.app_conninfo(through_pgbouncer=False)) as conn:
            conn.execute("INSERT INTO user_credentials VALUES (%s, %s, %s)", saved)
    run = load_dag("dr_restore_test").test()
    assert str(run.state) == "failed"
    report = json.loads(locations["dr"].get_bytes(f"reports/restore-test/{key_safe(run.run_id)}.json"))
    assert report["success"] is False
    assert all(c["success"] for c in report["checks"]), "the data itself passes its expectations"
    assert ("application on the restored database: user_authentication (login): POST /login: HTTP 401 "
            "(expected 200)") in " ".join(report["failed_checks"]), report["failed_checks"]


def test_a_restore_that_cannot_run_still_writes_a_failure_report(sandbox, monkeypatch, tmp_path) -> None:
    import uuid


    prefix = f"rt-empty-{uuid.uuid4().hex[:8]}/"  # a catalog with no backup at all
    policy = use_overlay(monkeypatch, tmp_path, every_location(prefix=prefix))
    locations = locations_from_policy(policy, lambda loc: sandbox.s3_client(loc.region))
    run = load_dag("dr_restore_test").test()
    assert str(run.state) == "failed"
    name = key_safe(run.run_id)
    report = json.loads(locations["primary"].get_bytes(f"reports/restore-test/{name}.json"))
    assert report["success"] is False and "location dr holds no logical backup from the last 7 days" in report["error"]
    md = locations["dr"].get_bytes(f"reports/restore-test/{name}.md").decode()
    assert "FAIL" in md and "nothing was validated" in md


def test_the_teardown_removes_a_scratch_cluster_a_killed_worker_left_running(tmp_path) -> None:
    from continuity.postgres.cluster import pid_alive
    from continuity.restore.engine import remove_scratch_clusters, scratch_cluster

    prefix = scratch_prefix(f"manual__{time.time_ns()}")
    abandoned = scratch_cluster(prefix=prefix)
    scratch = abandoned.__enter__()  # never exited: as if the worker died mid-restore
    pid = scratch.cluster.postmaster_pid()
    assert pid_alive(pid)
    assert remove_scratch_clusters(prefix) == [scratch.root]
    assert not pid_alive(pid) and not scratch.root.exists()
    assert remove_scratch_clusters(prefix) == []

"""dr_failover against its own sandbox: switchover under load and back, failover after a crash, preflight
refusals that leave the cluster untouched, dry run, rerun, and rollback of a failed promotion."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
import urllib.request
import psycopg
import pytest

from continuity.reports import run_audits
from continuity.failover import steps as failover_steps
from continuity.failover import records as failover_records
from continuity.exercises.loadgen import CommitRecorder
from continuity.failover.router import PgBouncerRouter
from continuity.hooks.topology import TOPOLOGY_VARIABLE
from continuity.waiting import poll
from continuity_lab.controls import failover_cluster
from continuity_lab.processes import APP_HOST_USER

from tests.support.policies import use_overlay
from tests.support.airflow_helpers import forget_topology, load_dag, sandbox_environment, task_states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture(scope="module")
def cluster(sandbox_factory, airflow_db):
    """A sandbox of its own (failovers reshape it), its connections in the environment."""
    with sandbox_factory.own(scale=0.05, prefix="continuity-sandbox-failover-") as own, sandbox_environment(own) as box:
        yield box


def _run(*, mark_success_pattern: str | None = None, **conf):
    conf.setdefault("reason", "integration test")
    return load_dag("dr_failover").test(run_conf=conf, mark_success_pattern=mark_success_pattern)


def _app(box, node: str) -> str:
    return box.node(node, user="app", dbname="app").conninfo


def _writable(box) -> list[str]:
    writable = []
    for name in box.node_names:
        try:
            if not box.node(name).is_in_recovery():
                writable.append(name)
        except Exception:
            pass
    return writable


def _router(box) -> PgBouncerRouter:
    conn = box.connections()[box.policy.topology.entry_point.admin_conn_id]
    info = (f"host=127.0.0.1 port={conn['port']} user={conn['login']} password={conn['password']} dbname=pgbouncer")
    return PgBouncerRouter(admin_conninfo=info, ini_path=box.pgbouncer_ini, database="app")


def _entry_port(box) -> int:
    with psycopg.connect(box.app_conninfo(), prepare_threshold=None, connect_timeout=5) as conn:
        return conn.execute("SELECT inet_server_port()").fetchone()[0]


def _snapshot(box) -> dict:
    router = _router(box)
    return {"writable": _writable(box), "routes_to": router.current(), "paused": router.is_paused(),
            "fenced": sorted(n for n in box.node_names if (box.cluster(n).data_dir / "standby.signal").exists())}


def _audit(box, run) -> dict:
    return run_audits(box.storage_locations()["dr"], run.run_id)[-1]


def _wait_commits(load: CommitRecorder, count: int) -> None:
    assert load.wait_for(count), f"the writer acknowledged {len(load.acknowledged)} commits; errors {load.errors[-3:]}"


def _preflight_failure(run) -> str:
    return xcom(run, "preflight", key="failure") or ""


# -- preflight ---------------------------------------------------------------------------------
# The other refusals (the primary as target, a blank reason, no node control) are decided before anything is
# touched and tested on fakes: tests/unit/core/test_failover_params.py, test_failover_decisions.py,
# tests/unit/airflow_layer/test_failover_operators.py. This one shows the DAG stops at preflight on the real cluster.
@pytest.mark.parametrize(("conf", "check"), [
    ({"target": "nosuch"}, "'target is a known node' failed: target 'nosuch' is not a node of the policy"),
])
def test_preflight_refuses_bad_requests_naming_the_check_and_changes_nothing(cluster, conf, check) -> None:
    before = _snapshot(cluster)
    run = _run(**conf)
    assert str(run.state) == "failed"
    states = task_states(run)
    assert states["preflight"] == "failed" and states["cut_over"] == "upstream_failed"
    assert check in _preflight_failure(run)
    assert "Nothing was changed" in _preflight_failure(run)
    assert _snapshot(cluster) == before == {**before, "writable": ["primary"], "paused": False}


def test_a_lagging_target_is_refused_without_force(cluster) -> None:
    dr = cluster.cluster("dr")
    dr.psql("SELECT pg_wal_replay_pause();")
    try:
        with psycopg.connect(cluster.app_conninfo(), autocommit=True, prepare_threshold=None) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS lag_filler AS SELECT g, repeat('x', 200) AS pad "
                         "FROM generate_series(1, 20000) g")
        before = _snapshot(cluster)
        run = _run(target="dr", mode="failover", max_lag_bytes=65536)
        assert str(run.state) == "failed"
        failure = _preflight_failure(run)
        assert "'target lag' failed: dr has replayed to" in failure and "in failover mode force=true accepts it" in failure
        assert _snapshot(cluster) == before
    finally:
        dr.psql("SELECT pg_wal_replay_resume();")


def test_dry_run_checks_everything_and_changes_nothing(cluster) -> None:
    before = _snapshot(cluster)
    run = _run(target="dr", dry_run=True)
    assert str(run.state) == "success"
    states = task_states(run)
    assert states["preflight"] == "success" and states["cut_over"] == "skipped"
    plan = xcom(run, "preflight")
    assert plan["dry_run"] and plan["plan"][0].startswith("pause PgBouncer")
    assert {c["check"] for c in plan["checks"]} >= {"target reachable", "target in recovery", "primary healthy",
                                                    "target streaming", "target lag"}
    assert _snapshot(cluster) == before
    assert _audit(cluster, run)["outcome"] == "dry run: all checks passed, nothing changed"


# -- switchover --------------------------------------------------------------------------------
def test_switchover_under_load_loses_no_acknowledged_commit_and_switches_back(cluster) -> None:
    from airflow.models.variable import Variable

    with CommitRecorder(cluster.app_conninfo()) as load:
        _wait_commits(load, 50)
        run = _run(target="dr", mode="switchover", reason="planned maintenance", incident_id="CHG-42")
        _wait_commits(load, len(load.acknowledged) + 50)
    assert str(run.state) == "success", task_states(run)
    assert load.missing_on(_app(cluster, "dr")) == [], "every acknowledged commit is on the new primary"
    assert _writable(cluster) == ["dr"]
    assert _entry_port(cluster) == cluster.state["nodes"]["dr"]["port"]

    audit = _audit(cluster, run)
    assert audit["outcome"] == "switchover to dr complete" and audit["data_loss_bytes"] == 0
    assert audit["params"]["incident_id"] == "CHG-42" and audit["params"]["reason"] == "planned maintenance"
    assert 0 < audit["unavailability_seconds"] < 30
    for step in ("preflight", "fence", "catch_up", "promote", "repoint", "start_application", "rejoin", "validate"):
        record = audit["steps"][step]
        assert record["seconds"] >= 0 and record["step_started_at"] <= record["step_finished_at"], step
    assert audit["triggered_by"] == "dag_test"
    # The application tier moved with the primary: the DR region's Redis is the primary, its instances
    # serve, the old region's are stopped, and every business function's transaction passed there.
    moved = audit["steps"]["start_application"]
    assert moved["moved"] and (moved["from_region"], moved["to_region"]) == ("us-east-1", "us-west-2")
    assert moved["started"] == ["application web-us-west-2-1", "application worker-us-west-2-1"]
    assert moved["stopped"] == ["web-us-east-1-1", "web-us-east-1-2", "worker-us-east-1-1"]
    assert moved["cache"] == "Redis in us-west-2 promoted (REPLICAOF NO ONE)"
    probe = audit["steps"]["validate"]["application"]
    assert probe["region"] == "us-west-2" and {t["function"]: t["ok"] for t in probe["transactions"]} == {
        name: True for name in cluster.policy.business_functions}
    rto = {o["function"]: o for o in audit["function_rto"]}
    assert set(rto) == set(cluster.policy.business_functions)
    assert all(o["verdict"] == "pass" and 0 < o["measured_seconds"] < 300 for o in rto.values()), rto
    assert "synthetic transaction in us-west-2 (login)" in rto["user_authentication"]["source"]
    # And every RPO: the database's from the catch-up (0: replayed past the final checkpoint); the objects'
    # from the DR replica's heartbeat when one was copied; nothing measures the configuration's in a failover.
    rpo = {o["objective"]: o for o in audit["function_rpo"]}
    assert {o["function"] for o in audit["function_rpo"] if o["function"]} == set(cluster.policy.business_functions)
    assert rpo["RPO critical_user_data"]["measured_seconds"] == 0.0
    assert "no committed transaction lost" in rpo["RPO critical_user_data"]["source"]
    assert rpo["RPO user_authentication"]["verdict"] == "pass" and rpo["RPO annotation_system"]["verdict"] == "pass"
    assert rpo["RPO configuration_data"]["verdict"] == rpo["RPO reporting_analytics"]["verdict"] == "not measured"
    assert "on the policy's downtime table" in audit["downtime_cost"]
    application = cluster.status()["application"]
    assert application["us-west-2"]["state"] == "serving" and application["us-east-1"]["state"] == "standby"
    assert cluster.redis_client("us-east-1").info("replication")["role"] == "slave"
    audit_text = json.dumps(audit)
    assert not [name for name, secret in cluster.state["secrets"].items() if secret in audit_text], \
        "no password reaches the audit"
    assert audit["topology"]["primary"] == "dr" and audit["topology"]["timeline"] >= 2
    assert json.loads(Variable.get(TOPOLOGY_VARIABLE))["primary"] == "dr"
    streaming = {r.application_name: r.state for r in cluster.node("dr").replication()}
    assert streaming.get("primary") == streaming.get("sync1") == streaming.get("sync2") == "streaming"
    # Every DAG follows the recorded primary without a policy edit: WAL is switched on dr's new
    # timeline, and the health monitor finds dr writable and both standbys streaming from it.
    wal_run = load_dag("dr_wal_archive").test()
    assert str(wal_run.state) == "success", task_states(wal_run)
    assert xcom(wal_run, "switch_wal").startswith(f"{audit['topology']['timeline']:08X}")
    health_run = load_dag("dr_health_monitor").test()
    assert str(health_run.state) == "success", task_states(health_run)
    print(f"switchover to dr: longest gap between acknowledged commits {load.longest_gap:.3f}s, "
          f"{len(load.errors)} failed statements, run unavailability {audit['unavailability_seconds']}s")

    with CommitRecorder(cluster.app_conninfo()) as back_load:
        _wait_commits(back_load, 50)
        back = _run(target="primary", mode="switchover", reason="maintenance done")
    assert str(back.state) == "success", task_states(back)
    assert _lease().holder() is None, "record gave the cluster lease back (the run back could take it, too)"
    assert back_load.missing_on(_app(cluster, "primary")) == []
    assert load.missing_on(_app(cluster, "primary")) == [], "the first run's commits survived both switchovers"
    assert _writable(cluster) == ["primary"]
    assert {r.application_name for r in cluster.node("primary").replication() if r.state == "streaming"} == {"dr", "sync1", "sync2"}
    application = cluster.status()["application"]
    assert application["us-east-1"]["state"] == "serving" and application["us-west-2"]["state"] == "standby"
    assert all(i["running"] for i in application["us-east-1"]["instances"])
    assert cluster.redis_client("us-east-1").info("replication")["role"] == "master"
    # The video the DR site's validation uploaded in us-west-2 came home with the application, verified:
    # us-east-1's application serves every row written while dr was the primary.
    [videos] = [c for c in _audit(cluster, back)["steps"]["start_application"]["objects_home"]
                if c["category"] == "video_content"]
    assert len(videos["copied"]) >= 1 and videos["failed"] == [] and videos["since"] is not None
    bucket = cluster.policy.application.regions["us-east-1"].video_bucket
    for key in videos["copied"]:
        cluster.s3_client("us-east-1").head_object(Bucket=bucket, Key=key)


def _lease():
    from continuity.hooks.failover import FailoverHook

    return FailoverHook().get_lease()


def test_an_automatic_failover_queued_behind_a_drill_waits_for_its_lease_then_decides_again(cluster) -> None:
    """#30 item 4: the health monitor's automatic failover triggered while a drill's switchover holds the cluster
    lease waits (in the triggerer) until the drill gives it back, then decides again on the cluster as the drill
    left it: the primary answers and accepts writes, so nothing changes, and its audit says whose lease it
    waited for."""
    import threading

    lease = _lease()
    lease.acquire(holder="dr_drill run lease-wait", run_id="lease-wait", purpose="live switchover to dr and back")
    before = _snapshot(cluster)
    since = datetime.now(timezone.utc)

    def release_once_seen_waiting() -> None:
        """Give the lease back once the run's sensor has seen it held (it says so in an XCom), as the drill would."""
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        def seen() -> bool:
            with create_session() as session:
                return session.query(XComModel).filter(
                    XComModel.dag_id == "dr_failover", XComModel.task_id == "wait_for_lease",
                    XComModel.key == "waited_for", XComModel.timestamp >= since).count() > 0

        poll(seen, timeout=180, interval=0.5)
        time.sleep(3)  # the wait goes on in the trigger meanwhile
        lease.release("lease-wait")

    released = threading.Thread(target=release_once_seen_waiting, daemon=True)
    released.start()
    try:
        started = time.monotonic()
        # (Not the monitor's own "automatic: ..." reason: the monitor's tests count the runs it triggered by it.)
        run = _run(target="dr", mode="failover", automatic=True,
                   reason="queued behind a drill: disaster threshold held for 3 consecutive checks")
        waited = time.monotonic() - started
    finally:
        released.join(timeout=200)
        lease.release("lease-wait")
    assert str(run.state) == "success", task_states(run)
    states = task_states(run)
    assert states["wait_for_lease"] == "success" and states["cut_over"] == "skipped", states
    assert waited >= 3, "the run did not wait for the drill's lease"
    audit = _audit(cluster, run)
    assert audit["waited_for_lease_of"].startswith("dr_drill run lease-wait (live switchover to dr and back)")
    assert audit["outcome"] == "no change: automatic failover decided again: primary answers and accepts writes again"
    assert _snapshot(cluster) == before and _writable(cluster) == ["primary"]


def test_a_switchover_while_a_drill_holds_the_cluster_lease_is_refused_naming_it_and_changes_nothing(cluster) -> None:
    """#30 item 4: one writer. A drill's live switchover takes the cluster lease after an operator's switchover
    stopped waiting for it (wait_for_lease marked done, as when the drill started in between): the switchover is
    refused at cut_over, before anything changes, and its audit names the drill."""
    lease = _lease()
    lease.acquire(holder="dr_drill run lease-test", run_id="lease-test", purpose="live switchover to dr and back")
    before = _snapshot(cluster)
    try:
        run = _run(target="dr", mode="switchover", reason="maintenance while a drill runs",
                   mark_success_pattern=r"^wait_for_lease$")
        assert _lease().holder().run_id == "lease-test", "the refused run took nothing of the drill's lease"
    finally:
        lease.release("lease-test")
    assert str(run.state) == "failed"
    states = task_states(run)
    assert states["cut_over"] == "failed" and states["rollback"] == "skipped" and states["record"] == "failed"
    failure = xcom(run, "cut_over", key="failure")
    assert failure.startswith("cut_over refused: the cluster lease is held by dr_drill run lease-test (live switchover "
                              "to dr and back) until "), failure
    assert _snapshot(cluster) == before, "one writable primary, the entry point where it was and not paused"
    assert _writable(cluster) == ["primary"]
    assert "held by dr_drill run lease-test" in json.dumps(_audit(cluster, run))


def test_a_rerun_of_a_completed_run_changes_nothing(cluster, monkeypatch) -> None:
    from airflow.models.dagrun import DagRun

    # dag.test() names runs after the clock; a rerun is the same run id run again.
    monkeypatch.setattr(DagRun, "generate_run_id", staticmethod(lambda **_: "manual__rerun-test"))
    first = _run(target="dr", reason="rerun test")
    assert str(first.state) == "success" and first.run_id == "manual__rerun-test"
    before = _snapshot(cluster)
    from airflow.utils.session import create_session

    with create_session() as session:  # as a cleared run: same run id, fresh task instances
        session.query(DagRun).filter(DagRun.dag_id == "dr_failover", DagRun.run_id == first.run_id).delete()
    again = _run(target="dr", reason="rerun test")
    assert again.run_id == first.run_id and str(again.state) == "success", task_states(again)
    assert task_states(again)["cut_over"] == "skipped"
    assert _snapshot(cluster) == before
    monkeypatch.undo()
    assert str(_run(target="primary", reason="back after the rerun test").state) == "success"


def test_a_failed_promotion_in_switchover_rolls_back_to_the_old_primary(cluster, monkeypatch) -> None:
    real_promote = failover_steps.promote

    def target_lost_before_promotion(cl, target, **kwargs):
        cluster.cluster(target).stop(mode="immediate")
        return real_promote(cl, target, **kwargs)

    monkeypatch.setattr(failover_steps, "promote", target_lost_before_promotion)
    run = _run(target="dr", mode="switchover", reason="rollback test")
    monkeypatch.undo()
    assert str(run.state) == "failed"
    states = task_states(run)
    assert states["cut_over"] == "failed" and states["rollback"] == "success"
    assert xcom(run, "cut_over", key="failed_step") == "promote" and xcom(run, "cut_over", key="fence") is not None
    audit = _audit(cluster, run)
    assert "failed at promote" in audit["outcome"]
    assert "the original primary primary is serving writes again" in audit["outcome"]
    assert _writable(cluster) == ["primary"]
    assert _entry_port(cluster) == cluster.state["nodes"]["primary"]["port"]
    with psycopg.connect(cluster.app_conninfo(), autocommit=True, prepare_threshold=None) as conn:
        conn.execute("INSERT INTO continuity_failover_probes (run_id) VALUES ('after rollback')")
    cluster.cluster("dr").start()  # still fenced: it comes back as a standby
    cluster.wait_streaming(timeout=60)


def test_a_step_over_its_timeout_fails_and_rollback_and_record_still_run(cluster, monkeypatch, tmp_path) -> None:
    """#30 item 7: a run that used to time out as a whole skipped rollback and record (PgBouncer left paused, no
    audit); now the stuck step times out, and the run rolls back and records like after any failure."""
    import time as clock

    from tests.support.policies import use_overlay

    use_overlay(monkeypatch, tmp_path, {"failover": {"step_timeout": "30s"}})
    real_promote = failover_steps.promote

    def promotion_that_hangs(cl, target, **kwargs):
        clock.sleep(120)  # a node that never answers: the step's timeout interrupts it
        return real_promote(cl, target, **kwargs)

    monkeypatch.setattr(failover_steps, "promote", promotion_that_hangs)
    started = clock.monotonic()
    run = _run(target="dr", mode="switchover", reason="step timeout test")
    monkeypatch.setattr(failover_steps, "promote", real_promote)
    assert clock.monotonic() - started < 110, "the step was interrupted by its timeout, not by the hang ending"
    states = task_states(run)
    assert str(run.state) == "failed" and states["cut_over"] == "failed" and states["rollback"] == "success", states
    assert xcom(run, "cut_over", key="failed_step") == "promote"
    audit = _audit(cluster, run)
    assert "failed at promote" in audit["outcome"] and "promote timed out after" in audit["failures"]["promote"]
    assert _snapshot(cluster)["paused"] is False, "PgBouncer resumed"
    assert _writable(cluster) == ["primary"]
    cluster.cluster("dr").start()  # fenced by the cut-over: it comes back as a standby
    cluster.wait_streaming(timeout=60)


# -- never two writable primaries, never a rollback after clients wrote -----------------------------
def test_preflight_refuses_when_the_recorded_topology_disagrees_with_the_cluster(cluster) -> None:
    from airflow.models.variable import Variable

    Variable.set(TOPOLOGY_VARIABLE, json.dumps({"primary": "dr", "timeline": 9, "changed_by_run": "someone"}))
    try:
        before = _snapshot(cluster)
        run = _run(target="sync1", mode="failover")
        assert str(run.state) == "failed"
        assert ("'topology matches the cluster' failed: the recorded topology names dr as primary but primary is "
                "the writable node") in _preflight_failure(run)
        assert _snapshot(cluster) == before
    finally:
        forget_topology()


def test_preflight_refuses_two_writable_nodes(cluster) -> None:
    control = failover_cluster(cluster).control
    cluster.node("sync1").query_one("SELECT pg_promote(true, 60) AS ok")
    try:
        assert sorted(_writable(cluster)) == ["primary", "sync1"]
        before = _snapshot(cluster)
        run = _run(target="dr", mode="failover")
        assert str(run.state) == "failed"
        assert ("'at most one writable node' failed: primary and sync1 all accept writes (a split brain)"
                in _preflight_failure(run))
        assert _snapshot(cluster) == before, "nothing was changed"
    finally:
        control.stop("sync1", mode="fast")
        cluster.node("primary").execute("CHECKPOINT")
        control.rewind("sync1", "primary")
        control.follow("sync1", "primary")
        control.start("sync1")
        cluster.wait_streaming(timeout=60)
    assert _writable(cluster) == ["primary"]


def test_failover_refuses_to_promote_while_the_old_primary_is_writable_and_cannot_be_fenced(cluster, monkeypatch) -> None:
    from continuity.failover.nodecontrol import NodeControlError
    from continuity_lab.controls import SandboxNodeControl

    def host_unreachable(self, name, *args, **kwargs):
        raise NodeControlError(f"host of node {name}: connection timed out")

    # The database port answers but the host cannot be controlled (a partition between the control
    # plane's SSH and the host): the old primary can neither be stopped nor fenced.
    for method in ("is_running", "stop", "fence"):
        monkeypatch.setattr(SandboxNodeControl, method, host_unreachable)
    run = _run(target="dr", mode="failover", reason="split brain test")
    monkeypatch.undo()
    assert str(run.state) == "failed"
    states = task_states(run)
    assert states["cut_over"] == "failed" and states["start_application"] == "upstream_failed"
    assert xcom(run, "cut_over", key="failed_step") == "fence" and xcom(run, "cut_over", key="promote") is None
    audit = _audit(cluster, run)
    assert "refusing to promote dr: primary still accepts writes and could not be stopped or fenced" in audit["outcome"]
    assert "force=true" in audit["outcome"]
    assert _writable(cluster) == ["primary"], "never two writable primaries"
    assert _snapshot(cluster)["paused"] is False
    assert _entry_port(cluster) == cluster.state["nodes"]["primary"]["port"]


def test_a_failure_after_the_repoint_fails_forward_and_keeps_every_commit(cluster, monkeypatch) -> None:
    from airflow.models.variable import Variable

    with psycopg.connect(cluster.app_conninfo(), autocommit=True, prepare_threshold=None) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {failover_steps.PROBE_TABLE} (run_id text, written_at timestamptz "
                     f"DEFAULT clock_timestamp(), server_port int DEFAULT inet_server_port())")
        conn.execute("CREATE OR REPLACE FUNCTION refuse_probe() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$BEGIN RAISE EXCEPTION 'probe writes refused by the test'; END$$")
        conn.execute(f"CREATE TRIGGER refuse_probe BEFORE INSERT ON {failover_steps.PROBE_TABLE} "
                     f"FOR EACH ROW EXECUTE FUNCTION refuse_probe()")
    recorded_before_repoint: list = []
    real_repoint = failover_steps.repoint

    def watching_repoint(cl, target):
        recorded_before_repoint.append(json.loads(Variable.get(TOPOLOGY_VARIABLE))["primary"])
        return real_repoint(cl, target)

    monkeypatch.setattr(failover_steps, "repoint", watching_repoint)
    try:
        with CommitRecorder(cluster.app_conninfo()) as load:
            _wait_commits(load, 50)
            run = _run(target="dr", mode="switchover", reason="fail forward test")
            _wait_commits(load, len(load.acknowledged) + 50)
    finally:
        monkeypatch.undo()
        with psycopg.connect(cluster.app_conninfo(), autocommit=True, prepare_threshold=None) as conn:
            conn.execute(f"DROP TRIGGER IF EXISTS refuse_probe ON {failover_steps.PROBE_TABLE}")
    assert str(run.state) == "failed"
    states = task_states(run)
    assert states["validate"] == "failed" and states["rollback"] == "success"
    assert recorded_before_repoint == ["dr"], "the topology was recorded as soon as the promotion succeeded"
    audit = _audit(cluster, run)
    assert "failed at validate" in audit["outcome"] and "failing forward" in audit["outcome"]
    assert "dr, which may already hold new commits, so it stays the primary" in audit["outcome"]
    assert _writable(cluster) == ["dr"], "no rollback once clients may have written to dr"
    assert _entry_port(cluster) == cluster.state["nodes"]["dr"]["port"]
    assert load.missing_on(cluster.app_conninfo()) == [], "every acknowledged commit is readable through the entry point"
    assert json.loads(Variable.get(TOPOLOGY_VARIABLE))["primary"] == "dr"

    # A cleared and re-run fence or promote re-reads the cluster: dr is already promoted, nothing is done.
    before = _snapshot(cluster)
    stale_plan = failover_records.FailoverPlan.model_validate(audit["steps"]["preflight"])
    assert failover_steps.fence(failover_cluster(cluster), stale_plan).already_done is True
    again = failover_steps.promote(failover_cluster(cluster), "dr", previous_timeline=stale_plan.old_timeline)
    assert again.already_promoted is True and again.timeline == audit["steps"]["promote"]["timeline"]
    assert _snapshot(cluster) == before
    back = _run(target="primary", mode="switchover", reason="back after the fail-forward test")
    assert str(back.state) == "success", task_states(back)
    assert _writable(cluster) == ["primary"]


# -- the drill's live switchover ---------------------------------------------------------------------
def test_drill_with_include_switchover_measures_the_outage_and_loses_nothing(cluster) -> None:
    from continuity.backup.full import logical_backup, physical_backup

    catalog = cluster.catalog()
    for name, make in (("sync1", physical_backup), ("primary", logical_backup)):
        extra = {"database": "app"} if make is logical_backup else {}
        make(node=cluster.backup_node(name), keyring=cluster.keyring(), locations=list(catalog.locations.values()),
             required={"primary", "dr"}, backup_id=f"{'logical-app' if extra else 'physical-sync1'}-fo-drill-{time.time_ns()}",
             report=lambda _m: None, **extra)
    cluster.replicate_objects()
    run = load_dag("dr_drill").test(run_conf={"include_switchover": True})
    assert str(run.state) == "success", task_states(run)
    result = xcom(run, "live_switchover")
    assert result["target"] == "dr" and result["lost_commits"] == 0 and result["acknowledged_commits"] >= 40
    assert set(result["legs"]) == {"there", "back"}
    assert 0 < result["application_outage_seconds"] < 30
    assert all(leg["unavailability_seconds"] > 0 for leg in result["legs"].values())
    report = json.loads(catalog.locations["dr"].get_bytes(f"reports/drill/{result['drill_id']}-switchover.json"))
    assert report["application_outage_seconds"] == result["application_outage_seconds"]
    assert _writable(cluster) == ["primary"], "the drill ends with the original primary serving"


# -- automatic trigger ----------------------------------------------------------------------------
def _automatic_failover_runs() -> list:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.query(DagRun).filter(DagRun.dag_id == "dr_failover").all()
        return [dict(r.conf or {}) for r in runs if str((r.conf or {}).get("reason", "")).startswith("automatic:")]


def test_health_monitor_triggers_one_failover_after_n_disasters_and_none_for_a_blip(cluster, monkeypatch, tmp_path) -> None:
    from airflow.models.variable import Variable

    from continuity.health.autofailover import STREAK_VARIABLE

    use_overlay(monkeypatch, tmp_path, {"health_monitor": {"auto_failover": True}})
    Variable.delete(STREAK_VARIABLE)
    _forget_viewpoints(cluster.policy)  # no region has looked yet: the monitor's view alone decides
    monitor = load_dag("dr_health_monitor")
    primary = cluster.cluster("primary")

    def check() -> dict:
        run = monitor.test()
        return {"auto_failover": task_states(run)["auto_failover"]}

    try:
        primary.stop(mode="immediate")  # a blip: one disaster, then healthy again
        assert check() == {"auto_failover": "skipped"}
        assert json.loads(Variable.get(STREAK_VARIABLE))["count"] == 1
        primary.start()
        cluster.wait_streaming(timeout=60)
        assert check() == {"auto_failover": "skipped"}
        assert json.loads(Variable.get(STREAK_VARIABLE))["count"] == 0
        assert _automatic_failover_runs() == []

        primary.stop(mode="immediate")  # a lasting disaster: three checks in a row (the policy's N)
        assert check() == {"auto_failover": "skipped"}
        assert check() == {"auto_failover": "skipped"}
        assert _automatic_failover_runs() == []
        assert check() == {"auto_failover": "success"}
        assert check() == {"auto_failover": "skipped"}, "the streak starts again after a trigger"
        triggered = _automatic_failover_runs()
        assert len(triggered) == 1
        assert triggered[0]["target"] == "dr" and triggered[0]["mode"] == "failover"
        assert "disaster threshold held for 3 consecutive checks" in triggered[0]["reason"]
    finally:
        Variable.delete(STREAK_VARIABLE)
        if not primary.running:
            primary.start()
        cluster.wait_streaming(timeout=60)
        cluster.wait_entry_point()


def _auto_policy(monkeypatch, tmp_path, **more) -> None:
    """Automatic failover on, decided at the first disaster; `more` laid over the policy as well."""
    use_overlay(monkeypatch, tmp_path, {"health_monitor": {"auto_failover": True, "consecutive_failures": 1}, **more})


def test_no_automatic_failover_when_a_standby_still_hears_from_the_primary(cluster, monkeypatch, tmp_path, capfd) -> None:
    from airflow.models.variable import Variable

    from continuity.postgres.cluster import free_port
    from continuity.health.autofailover import STREAK_VARIABLE

    _auto_policy(monkeypatch, tmp_path)
    # The monitor's own path to the primary is broken (its connection leads nowhere); the primary is fine.
    conn = json.loads(os.environ["AIRFLOW_CONN_CONTINUITY_PG_PRIMARY"])
    monkeypatch.setenv("AIRFLOW_CONN_CONTINUITY_PG_PRIMARY", json.dumps({**conn, "port": free_port()}))
    Variable.delete(STREAK_VARIABLE)
    _forget_viewpoints(cluster.policy)  # the standbys' view alone vetoes here
    triggered_before = len(_automatic_failover_runs())
    run = load_dag("dr_health_monitor").test()
    assessment = xcom(run, "assess_health", "assessment")
    assert assessment["disaster"] is True and "primary primary" in assessment["summary"]
    assert task_states(run)["auto_failover"] == "skipped"
    out = capfd.readouterr().out
    assert "no automatic failover: standby" in out and "still streams from the primary" in out
    assert len(_automatic_failover_runs()) == triggered_before
    assert _writable(cluster) == ["primary"]


def _forget_viewpoints(policy) -> None:
    from airflow.models.variable import Variable

    from continuity.health.viewpoints import viewpoint_regions, viewpoint_variable

    for region in viewpoint_regions(policy):
        Variable.delete(viewpoint_variable(region))


def test_no_automatic_failover_when_the_primary_region_still_sees_it_writable(cluster, monkeypatch, tmp_path,
                                                                              capfd) -> None:
    from airflow.models.variable import Variable

    from continuity.postgres.cluster import free_port
    from continuity.health.autofailover import STREAK_VARIABLE
    from continuity.health.viewpoints import viewpoint_variable

    _auto_policy(monkeypatch, tmp_path)
    Variable.delete(STREAK_VARIABLE)
    try:
        # Each region looks at the primary from where it is (here both from this machine): writable.
        viewpoints = load_dag("dr_viewpoint_probe").test()
        assert task_states(viewpoints) == {"observe_from_us_east_1": "success", "observe_from_us_west_2": "success"}
        seen = json.loads(Variable.get(viewpoint_variable("us-east-1")))
        assert (seen["region"], seen["primary"], seen["writable"]) == ("us-east-1", "primary", True), seen
        # Then the monitor's path to the primary is cut (a partition: its connection leads nowhere).
        conn = json.loads(os.environ["AIRFLOW_CONN_CONTINUITY_PG_PRIMARY"])
        monkeypatch.setenv("AIRFLOW_CONN_CONTINUITY_PG_PRIMARY", json.dumps({**conn, "port": free_port()}))
        triggered_before = len(_automatic_failover_runs())
        run = load_dag("dr_health_monitor").test()
        assert xcom(run, "assess_health", "assessment")["disaster"] is True
        assert task_states(run)["auto_failover"] == "skipped"
        out = capfd.readouterr().out
        assert "no automatic failover: the primary's own region us-east-1 saw primary primary writable" in out
        assert len(_automatic_failover_runs()) == triggered_before
        assert _writable(cluster) == ["primary"]
    finally:
        Variable.delete(STREAK_VARIABLE)
        _forget_viewpoints(cluster.policy)


def test_a_disaster_without_the_primary_failing_alerts_and_never_promotes(cluster, monkeypatch, tmp_path, capfd) -> None:
    from airflow.models.variable import Variable

    from continuity.health.autofailover import STREAK_VARIABLE

    # dr down (network, weight 2) and a bucket gone (storage, weight 1): score 3, the primary healthy.
    _auto_policy(monkeypatch, tmp_path, storage={"locations": [{"name": "dr", "bucket": "continuity-backups-gone"}]})
    Variable.delete(STREAK_VARIABLE)
    triggered_before = len(_automatic_failover_runs())
    dr = cluster.cluster("dr")
    dr.stop()
    try:
        run = load_dag("dr_health_monitor").test()
        assessment = xcom(run, "assess_health", "assessment")
        assert assessment["disaster"] is True and assessment["score"] == 3, assessment["summary"]
        assert task_states(run)["auto_failover"] == "skipped"
        out = capfd.readouterr().out
        assert "disaster alert without promotion: the primary itself answers and accepts writes" in out
        assert "ALERT: disaster threshold reached" in out
        assert len(_automatic_failover_runs()) == triggered_before
        assert _writable(cluster) == ["primary"]
    finally:
        dr.start()
        cluster.wait_streaming(timeout=60)


# -- failover ----------------------------------------------------------------------------------
@pytest.fixture
def over_ssh(cluster, monkeypatch):
    """The same cluster, its node control over SSH: an OpenSSH server on loopback logs in as the nodes'
    OS user, and the policy's `topology.node_control: ssh` names each node's host."""
    cluster.start_ssh()
    for key, value in cluster.environment().items():
        if key.startswith("AIRFLOW_CONN_CONTINUITY_SSH_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("CONTINUITY_POLICY", str(cluster.write_ssh_policy()))
    yield cluster


def _ssh_logins(box, *, user: str | None = None) -> int:
    return (box.logs_dir / "sshd.log").read_text().count(f"Accepted publickey for {user or box.user.name} ")


def test_switchover_and_failover_with_node_and_service_control_over_ssh(over_ssh) -> None:
    box = over_ssh
    logins, app_logins = _ssh_logins(box), _ssh_logins(box, user=APP_HOST_USER)
    with CommitRecorder(box.app_conninfo()) as load:
        _wait_commits(load, 30)
        run = _run(target="dr", mode="switchover", reason="maintenance of the primary region")
        _wait_commits(load, len(load.acknowledged) + 30)
    assert str(run.state) == "success", task_states(run)
    assert load.missing_on(_app(box, "dr")) == [], "every acknowledged commit is on the new primary"
    assert _writable(box) == ["dr"]
    assert {r.application_name for r in box.node("dr").replication() if r.state == "streaming"} == {
        "primary", "sync1", "sync2"}
    assert _ssh_logins(box) > logins, "node control logged in over SSH"
    # The application moved with it over SSH: the DR region's instances started and its Redis promoted by
    # the region's commands on its "application host", the old region's stopped.
    assert _ssh_logins(box, user=APP_HOST_USER) > app_logins, "service control logged in over SSH"
    moved = _audit(box, run)["steps"]["start_application"]
    assert moved["started"] == ["application web-us-west-2-1", "application worker-us-west-2-1"], moved
    assert moved["cache"] == "Redis in us-west-2 promoted (REPLICAOF NO ONE)", moved
    assert box.application_running("us-west-2") and all(box.application_running("us-west-2").values())
    assert not any(box.application_running("us-east-1").values())
    assert box.redis_client("us-east-1").info("replication")["role"] == "slave"
    # The old primary was rewound and pointed at dr over SSH: its upstream authenticates from the
    # node's own password file, so no password is written into its settings.
    settings = (box.cluster("primary").data_dir / "node.conf").read_text()
    assert "primary_slot_name = 'primary'" in settings and f"passfile={box.ssh_dir / 'pgpass'}" in settings
    assert not [role for role, secret in box.state["secrets"].items() if secret in settings]
    assert (box.cluster("primary").data_dir / "standby.signal").exists()

    # dr crashes: fail over back to primary, over SSH; dr is rewound from its crash and follows, and the
    # application comes home to us-east-1 over SSH.
    with psycopg.connect(box.app_conninfo(), autocommit=True, prepare_threshold=None) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS before_ssh_crash (n int)")
        conn.execute("INSERT INTO before_ssh_crash VALUES (1)")
    box.wait_streaming(timeout=30)
    box.cluster("dr").kill()
    crash = _run(target="primary", mode="failover", reason="dr's host lost")
    assert str(crash.state) == "success", task_states(crash)
    assert _writable(box) == ["primary"]
    assert sorted(_audit(box, crash)["steps"]["rejoin"]["following"]) == ["dr", "sync1", "sync2"]
    assert all(box.application_running("us-east-1").values()) and not any(box.application_running("us-west-2").values())
    assert box.redis_client("us-east-1").info("replication")["role"] == "master"
    with psycopg.connect(box.app_conninfo(), autocommit=True, prepare_threshold=None) as conn:
        assert conn.execute("SELECT count(*) FROM before_ssh_crash").fetchone()[0] == 1
    box.wait_streaming(timeout=60)
    assert {r.application_name for r in box.node("primary").replication() if r.state == "streaming"} == {"dr", "sync1", "sync2"}


def test_node_control_over_ssh_names_the_node_and_the_command_that_failed(over_ssh, monkeypatch) -> None:
    from continuity.hooks.failover import FailoverHook
    from continuity.failover.nodecontrol import NodeControlError

    control = FailoverHook().get_node_control()
    assert control.is_running("dr") and control.is_fenced("dr")
    with pytest.raises(NodeControlError, match=r"^pg_rewind from primary of node dr failed over SSH \(exit 1\): "):
        control.rewind("dr", "primary")  # a running server is never rewound
    assert control.is_fenced("dr") and control.is_running("dr")
    monkeypatch.setenv("AIRFLOW_CONN_CONTINUITY_SSH_DR", json.dumps(
        {**json.loads(os.environ["AIRFLOW_CONN_CONTINUITY_SSH_DR"]), "port": 1}))
    with pytest.raises(NodeControlError, match=r"^node dr \(SSH connection continuity_ssh_dr\): cannot connect"):
        FailoverHook().get_node_control().is_running("dr")


def test_service_control_over_ssh_reads_each_instance_and_names_the_region_and_command_that_failed(
        over_ssh, monkeypatch) -> None:
    from continuity.hooks.services import get_service_control
    from continuity.policy.loading import load_policy
    from continuity.failover.servicecontrol import ServiceControlError

    policy = load_policy()
    control = get_service_control(policy)
    assert control.running("us-east-1") == {"web-us-east-1-1": True, "web-us-east-1-2": True, "worker-us-east-1-1": True}
    assert not any(control.running("us-west-2").values()), "the standby region's application is stopped"
    # A read-only verification instance for restore tests: the DSN (with its password) goes over stdin.
    url = control.start_verification_instance("us-west-2", dsn=over_ssh.app_conninfo())
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
            assert response.status == 200
    finally:
        control.stop_verification_instance(url)
    assert poll(lambda: not _answers(f"{url}/health"), timeout=15), "the verification instance was stopped"
    assert over_ssh.password("app") not in (over_ssh.logs_dir / "sshd.log").read_text()
    ssh = {**policy.application.ssh, "us-west-2": policy.application.ssh["us-west-2"].model_copy(update={"status": "exit 7"})}
    broken = policy.model_copy(update={"application": policy.application.model_copy(update={"ssh": ssh})})
    with pytest.raises(ServiceControlError, match=r"^status of region us-west-2 failed over SSH "
                                                  r"\(continuity_ssh_app_us_west_2, exit 7\)"):
        get_service_control(broken).running("us-west-2")
    monkeypatch.setenv("AIRFLOW_CONN_CONTINUITY_SSH_APP_US_WEST_2", json.dumps(
        {**json.loads(os.environ["AIRFLOW_CONN_CONTINUITY_SSH_APP_US_WEST_2"]), "port": 1}))
    with pytest.raises(ServiceControlError, match=r"^start of region us-west-2 over SSH \(continuity_ssh_app_us_west_2\)"
                                                  r": the application host of us-west-2 .*cannot connect"):
        get_service_control(policy).start_region("us-west-2")
    assert not any(over_ssh.application_running("us-west-2").values()), "nothing started"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def test_failover_after_the_primary_crashes(cluster) -> None:
    cluster.wait_entry_point()
    with psycopg.connect(cluster.app_conninfo(), autocommit=True, prepare_threshold=None) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS before_crash (n int)")
        conn.execute("INSERT INTO before_crash VALUES (1)")
    cluster.wait_streaming(timeout=30)
    cluster.cluster("primary").kill()
    run = _run(target="dr", mode="failover", reason="primary host lost", incident_id="INC-7")
    assert str(run.state) == "success", task_states(run)
    audit = _audit(cluster, run)
    assert audit["outcome"] == "failover to dr complete"
    assert isinstance(audit["data_loss_bytes"], int) and audit["data_loss_bytes"] >= 0
    # The crashed primary could not be asked; both synchronous standbys answered after the fence, so a loss of
    # 0 bytes is measured, not assumed (#31 item 8).
    if audit["data_loss_bytes"] == 0:
        rpo = {o["objective"]: o for o in audit["function_rpo"]}["RPO critical_user_data"]
        assert rpo["measured_seconds"] == 0.0 and "sync1, sync2 answered after the fence" in rpo["source"], rpo
    assert _writable(cluster) == ["dr"]
    with psycopg.connect(cluster.app_conninfo(), autocommit=True, prepare_threshold=None) as conn:
        conn.execute("INSERT INTO before_crash VALUES (2)")
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == cluster.state["nodes"]["dr"]["port"]
    # The old primary, restarted, is a standby: never writable, and the entry point leads elsewhere.
    old = cluster.cluster("primary")
    old.stop()
    old.start()
    assert cluster.node("primary").is_in_recovery()
    assert _writable(cluster) == ["dr"]

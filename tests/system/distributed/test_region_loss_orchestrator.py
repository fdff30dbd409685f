"""The distributed orchestrator (`continuity run --distributed`) through crashes and the loss of the
primary region: a worker killed in the middle of a backup and in the middle of a switchover, then the
primary region's worker and database lost while `dr_failover` runs on the DR region's worker. Run as in
production: users with roles (FAB auth manager) and every failover approved by a second operator.

The module has its own run, every DAG paused at creation so that only what a test unpauses runs (two
workers, a scheduler and an API server already fill this machine's two cores).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from continuity.reports import run_audits
from continuity.backup.engine import verify_copy
from continuity.storage.catalog import Catalog
from continuity_lab.controlplane import ControlPlane
from continuity.dag_defaults import region_queue
from continuity.storage.manifest import data_key_name
from continuity_lab.sandbox import Sandbox
from continuity_lab.controls import failover_cluster
from continuity.storage.locations import S3Location, locations_from_policy
from continuity.waiting import poll

from tests.support import airflow_run



@pytest.fixture(scope="module")
def distributed() -> Iterator[airflow_run.AirflowRun]:
    """`continuity run --distributed` in a root of its own (DAGs paused), full backups retried quickly, failovers
    approved by a second person."""
    root = Path(tempfile.mkdtemp(prefix="continuity-distributed-run-"))
    root.chmod(0o755)
    # A crashed backup retried after 10 s, not 5 minutes; failovers approved by a second person, as in production.
    run = airflow_run.start(root, overlay={"backups": {"full": {"retry_delay": "10s"}},
                                           "failover": {"approval": {"required": True}}},
                            distributed=True, paused=True)
    try:
        yield run
    finally:
        airflow_run.stop(run)


LOGICAL_DATA = data_key_name("logical", "id").rsplit("/", 1)[0] + "/"


def _pending_logical_uploads(locations: list[S3Location]) -> list[tuple[S3Location, str]]:
    return [(location, upload["Key"]) for location in locations
            for upload in location.client.list_multipart_uploads(Bucket=location.bucket).get("Uploads", [])
            if LOGICAL_DATA in upload["Key"]]


def _object_exists(location: S3Location, key: str) -> bool:
    return location.client.list_objects_v2(Bucket=location.bucket, Prefix=key).get("KeyCount", 0) > 0


def _only_run(run: Any, dag_id: str) -> str | None:
    runs = run.api(f"/api/v2/dags/{dag_id}/dagRuns")["dag_runs"]
    assert len(runs) <= 1, runs
    return runs[0]["dag_run_id"] if runs else None


def _try_numbers(run: Any, dag_id: str, run_id: str) -> dict[str, tuple[str, int]]:
    tasks = run.api(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    return {t["task_id"]: (t["state"], t["try_number"]) for t in tasks}


def test_a_worker_killed_in_the_middle_of_a_backup_leaves_no_half_object_and_the_retry_succeeds(distributed) -> None:
    box = Sandbox(root=distributed.root)
    # Enough data that the logical dump is uploaded in parts (over 8 MiB once compressed: 12.8 MB of random bytes),
    # through storage slowed to 1 MiB/s per connection, so the upload is caught and killed in its first part.
    with psycopg.connect(box.app_conninfo(), autocommit=True, prepare_threshold=None) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ballast AS SELECT g AS id, decode(md5(random()::text) || "
                     "md5(g::text || random()::text), 'hex') AS noise FROM generate_series(1, 400000) g")
    locations = locations_from_policy(box.policy, lambda loc: box.s3_client(loc.region))
    buckets = [loc for loc in locations.values() if isinstance(loc, S3Location)]
    catalog = Catalog(locations, box.keyring())
    before = {m.backup_id for m in catalog.list(kind="logical")}
    slowed = sorted({location.region for location in buckets})
    for region in slowed:
        box.slow_storage(region, 2**20)

    distributed.unpause("dr_full_backup")  # its latest scheduled run starts: the one a worker dies in
    run_id = poll(lambda: _only_run(distributed, "dr_full_backup"), timeout=120)
    uploading = poll(lambda: _pending_logical_uploads(buckets), timeout=300, interval=0.1)
    assert uploading, f"no logical backup was seen uploading: {distributed.diagnose('dr_full_backup', run_id)}"
    control_region = box.policy.control_region
    ControlPlane(root=distributed.root).crash_worker(control_region)  # `continuity run` starts it again
    for region in slowed:  # the retry goes at full speed
        box.slow_storage(region, None)

    time.sleep(5)  # the worker's task processes died with it: nothing completes the upload after the crash
    for location, key in uploading:
        assert not _object_exists(location, key), f"{location.bucket}/{key}: a half backup under its final name"
    print(f"worker killed at {time.strftime('%X')} while uploading {[key for _, key in uploading]}")
    assert distributed.wait_for_run("dr_full_backup", run_id, timeout=900) == "success", \
        distributed.diagnose("dr_full_backup", run_id)
    print(f"run succeeded at {time.strftime('%X')}")
    tries = _try_numbers(distributed, "dr_full_backup", run_id)
    assert tries["logical_backup"] == ("success", 2), tries  # the first try died with the worker

    # The retry wrote the same backup (its id comes from the run's interval) whole, in every location.
    (retried,) = [m for m in catalog.list(kind="logical") if m.backup_id not in before]
    assert {retried.data_key_name} == {key.removeprefix(location.prefix) for location, key in uploading}
    for name in retried.locations:
        assert verify_copy(retried, locations[name], box.keyring(), deep=True).ok, name


def _writable(box: Sandbox) -> list[str]:
    return sorted(name for name in box.node_names if failover_cluster(box).probe(name).get("reachable")
                  and not failover_cluster(box).probe(name).get("in_recovery"))


def _refused(call: Any) -> int:
    with pytest.raises(airflow_run.Refused) as refused:
        call()
    return refused.value.code


def _audit(box: Sandbox, run_id: str) -> dict[str, Any]:
    return run_audits(box.storage_locations()["dr"], run_id)[-1]


def test_who_may_do_what_and_no_one_approves_their_own_failover(distributed) -> None:
    box = Sandbox(root=distributed.root)
    distributed.unpause("dr_failover")
    switchover = {"target": "dr", "mode": "switchover", "reason": "approval test"}
    # A viewer sees runs but triggers nothing; an operator triggers dr_failover but no backup, and reads no
    # connection; the admin does.
    assert distributed.api("/api/v2/dags/dr_failover/dagRuns", as_user="viewer")["total_entries"] >= 0
    assert _refused(lambda: distributed.trigger("dr_failover", switchover, as_user="viewer")) == 403
    assert _refused(lambda: distributed.trigger("dr_full_backup", as_user="operator-1")) == 403
    assert _refused(lambda: distributed.api("/api/v2/connections", as_user="operator-1")) == 403
    connection = {"connection_id": "continuity_role_test", "conn_type": "http", "host": "example.invalid"}
    assert _refused(lambda: distributed.api("/api/v2/connections", connection, as_user="operator-1")) == 403
    assert distributed.api("/api/v2/connections", connection, as_user="admin")["connection_id"] == connection["connection_id"]
    assert "continuity_role_test" in [c["connection_id"] for c in
                                      distributed.api("/api/v2/connections", as_user="admin")["connections"]]

    run_id = distributed.trigger("dr_failover", switchover, as_user="operator-1")
    distributed.wait_for_task("dr_failover", run_id, "approve", ("awaiting_input", "deferred"), timeout=180)
    assert distributed.task_states("dr_failover", run_id)["cut_over"] in (None, "none", "scheduled"), \
        "nothing changes before the approval"
    assert _refused(lambda: distributed.api(
        f"/api/v2/dags/dr_failover/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails",
        {"chosen_options": ["Approve"], "params_input": {}}, method="PATCH", as_user="viewer")) == 403
    distributed.answer("dr_failover", run_id, "approve", ["Approve"], as_user="operator-1")  # their own

    assert distributed.wait_for_run("dr_failover", run_id, timeout=300) == "failed"
    states = distributed.task_states("dr_failover", run_id)
    assert states["approve"] == "failed" and states["cut_over"] == "upstream_failed", states
    assert states["rollback"] == "skipped" and states["record"] == "failed", states  # record fails the run, naming why
    assert _writable(box) == ["primary"]
    audit = _audit(box, run_id)
    assert audit["triggered_by"] == "operator-1" and audit["approved_by"] is None, audit
    assert audit["outcome"].startswith("failed at approve: approved by operator-1, who triggered the run: a second "
                                       "person must approve"), audit

    # #30 item 5: a dr_admin marks the approval success by hand. The cut-over checks the recorded decision itself
    # and refuses; nothing changed, so nothing is rolled back.
    bypass = distributed.trigger("dr_failover", {**switchover, "reason": "bypass test"}, as_user="operator-1")
    distributed.wait_for_task("dr_failover", bypass, "approve", ("awaiting_input", "deferred"), timeout=180)
    distributed.api(f"/api/v2/dags/dr_failover/dagRuns/{bypass}/taskInstances/approve", {"new_state": "success"},
                    method="PATCH", as_user="admin")
    assert distributed.wait_for_run("dr_failover", bypass, timeout=300) == "failed"
    states = distributed.task_states("dr_failover", bypass)
    assert states["approve"] == "success" and states["cut_over"] == "failed" and states["rollback"] == "skipped", states
    assert _writable(box) == ["primary"] and not failover_cluster(box).router.is_paused()
    audit = _audit(box, bypass)
    assert "cut_over refused: no approval is recorded for this run" in audit["outcome"], audit


def test_a_worker_killed_in_the_middle_of_a_switchover_leaves_exactly_one_writable_primary_named(distributed) -> None:
    box = Sandbox(root=distributed.root)
    box.wait_streaming(timeout=60)
    router = failover_cluster(box).router
    distributed.unpause("dr_failover")
    # A transaction in flight holds the switchover in its first step (PAUSE waits for it, up to the policy's
    # pause_timeout of 10 s): the worker dies there, with the entry point paused.
    with psycopg.connect(box.app_conninfo(), prepare_threshold=None) as in_flight:
        in_flight.execute("SELECT 1")
        run_id = distributed.trigger("dr_failover", {"target": "dr", "mode": "switchover", "reason": "crash test"},
                                     as_user="operator-1")
        distributed.answer("dr_failover", run_id, "approve", ["Approve"], as_user="operator-2")
        assert poll(router.is_paused, timeout=300, interval=0.1), distributed.diagnose("dr_failover", run_id)
        # A crash with its task processes: restarted; the scheduler fails cut_over, and rollback runs.
        ControlPlane(root=distributed.root).crash_worker(box.policy.control_region)
        in_flight.rollback()

    # The run fails, and says so, although the dead step could not report: record asks Airflow.
    assert distributed.wait_for_run("dr_failover", run_id, timeout=600) == "failed"
    tries = _try_numbers(distributed, "dr_failover", run_id)
    assert tries["cut_over"] == ("failed", 1) and tries["rollback"][0] == "success", tries
    assert _writable(box) == ["primary"]
    assert not router.is_paused(), "rollback resumes the entry point the dead step paused"
    rollback = distributed.api(f"/api/v2/dags/dr_failover/dagRuns/{run_id}/taskInstances/rollback/xcomEntries/"
                               f"return_value")["value"]
    assert rollback["writable"] == ["primary"], rollback
    assert rollback["message"] == "nothing had changed; writable primary: primary", rollback
    audit = _audit(box, run_id)
    assert audit["outcome"].startswith("failed at fence: task cut_over failed without reporting why"), audit
    assert audit["outcome"].endswith("nothing had changed; writable primary: primary"), audit
    with psycopg.connect(box.app_conninfo(), autocommit=True, prepare_threshold=None) as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == box.state["nodes"]["primary"]["port"]


def test_the_primary_region_lost_with_its_worker_and_database_fails_over_on_the_dr_worker(distributed) -> None:
    box = Sandbox(root=distributed.root)
    with psycopg.connect(box.app_conninfo(), autocommit=True, prepare_threshold=None) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS before_region_loss (n int)")
        conn.execute("INSERT INTO before_region_loss VALUES (1)")
    box.wait_streaming(timeout=60)
    primary_region = box.policy.topology.primary_region
    plane = ControlPlane(root=distributed.root)

    distributed.unpause("dr_failover")  # (earlier tests did; this one also runs alone)
    plane.lose_worker(primary_region)
    box.cluster("primary").kill()
    # Each region's view of the primary: the DR region's worker records it gone; the primary region's task
    # is never taken (no worker on its queue), so that region falls silent: a loss, not a partition.
    # (Unpaused, it starts its newest interval's run at once; a trigger would queue behind that run.)
    distributed.unpause("dr_viewpoint_probe")
    run_id = distributed.trigger("dr_failover", {"target": "dr", "mode": "failover", "reason": "us-east-1 lost"},
                                 as_user="operator-1")
    viewpoint_run = poll(lambda: next(iter(distributed.api("/api/v2/dags/dr_viewpoint_probe/dagRuns")["dag_runs"]),
                                      {}).get("dag_run_id"), timeout=120, interval=2)
    assert viewpoint_run, "dr_viewpoint_probe started no run within 120 s of being unpaused"
    distributed.wait_for_task("dr_viewpoint_probe", viewpoint_run, "observe_from_us_west_2", ("success",), timeout=300)
    seen = json.loads(distributed.api("/api/v2/variables/continuity_viewpoint_us_west_2")["value"])
    assert (seen["region"], seen["primary"], seen["reachable"]) == ("us-west-2", "primary", False), seen
    distributed.answer("dr_failover", run_id, "approve", ["Approve"], as_user="operator-2")
    assert distributed.wait_for_run("dr_failover", run_id, timeout=600) == "success", \
        distributed.diagnose("dr_failover", run_id)

    tasks = distributed.api(f"/api/v2/dags/dr_failover/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    assert {t["queue"] for t in tasks} == {region_queue(box.policy.control_region)}
    processes = plane.processes()
    assert not processes[f"worker {primary_region}"]["running"]  # so the DR region's worker ran every step
    assert processes[f"worker {box.policy.control_region}"]["running"]
    never_ran = distributed.task_states("dr_viewpoint_probe", viewpoint_run)["observe_from_us_east_1"]
    assert never_ran in (None, "scheduled", "queued", "skipped"), never_ran
    distributed.api("/api/v2/dags/dr_viewpoint_probe", {"is_paused": True}, method="PATCH")
    audit = _audit(box, run_id)
    assert (audit["triggered_by"], audit["approved_by"]) == ("operator-1", "operator-2"), audit
    with psycopg.connect(box.app_conninfo(), autocommit=True, prepare_threshold=None) as conn:
        assert conn.execute("SELECT count(*) FROM before_region_loss").fetchone()[0] == 1
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == box.state["nodes"]["dr"]["port"]

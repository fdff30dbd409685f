"""The distributed orchestrator (`continuity run --distributed`) through crashes and the loss of the
primary region: a worker killed in the middle of a backup, then the primary region's worker and database
lost while `dr_failover` runs on the DR region's worker.

These tests change the shared `scheduler` run for good (the last one fails it over to the DR region):
this module sorts after every other user of the fixture and must stay so (see tests/integration/conftest.py).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import psycopg
import pytest

from continuity.catalog import Catalog
from continuity.controlplane import ControlPlane
from continuity.dag_defaults import region_queue
from continuity.backup import verify_copy
from continuity.manifest import data_key_name
from continuity.sandbox import Sandbox
from continuity.storage import S3Location, locations_from_policy
from continuity.waiting import poll

pytestmark = pytest.mark.integration


LOGICAL_DATA = data_key_name("logical", "id").rsplit("/", 1)[0] + "/"


def _pending_logical_uploads(locations: list[S3Location]) -> list[tuple[S3Location, str]]:
    return [(location, upload["Key"]) for location in locations
            for upload in location.client.list_multipart_uploads(Bucket=location.bucket).get("Uploads", [])
            if LOGICAL_DATA in upload["Key"]]


def _object_exists(location: S3Location, key: str) -> bool:
    return location.client.list_objects_v2(Bucket=location.bucket, Prefix=key).get("KeyCount", 0) > 0


def _try_numbers(scheduler: Any, dag_id: str, run_id: str) -> dict[str, tuple[str, int]]:
    tasks = scheduler.api(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    return {t["task_id"]: (t["state"], t["try_number"]) for t in tasks}


def test_a_worker_killed_in_the_middle_of_a_backup_leaves_no_half_object_and_the_retry_succeeds(scheduler) -> None:
    box = Sandbox(root=scheduler.root)
    # Enough data that the logical dump is uploaded in parts (over 8 MiB once compressed): random bytes.
    with psycopg.connect(box.app_conninfo(), autocommit=True, prepare_threshold=None) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ballast AS SELECT g AS id, decode(md5(random()::text) || "
                     "md5(g::text || random()::text), 'hex') AS noise FROM generate_series(1, 1500000) g")
    locations = locations_from_policy(box.policy, lambda loc: box.s3_client(loc.region))
    buckets = [loc for loc in locations.values() if isinstance(loc, S3Location)]
    catalog = Catalog(locations, box.keyring())
    before = {m.backup_id for m in catalog.list(kind="logical")}

    run_id = scheduler.trigger("dr_full_backup")
    uploading = poll(lambda: _pending_logical_uploads(buckets), timeout=300, interval=0.1)
    assert uploading, f"no logical backup was seen uploading: {scheduler.diagnose('dr_full_backup', run_id)}"
    control_region = box.policy.control_region
    worker = ControlPlane(root=scheduler.root).processes()[f"worker {control_region}"]
    os.killpg(worker["pid"], signal.SIGKILL)  # a crash: `continuity run` restarts it, as a service manager would

    crashed_ids = {key.rsplit("/", 1)[-1].removesuffix(".cta") for _, key in uploading}
    assert poll(lambda: not any(_object_exists(loc, key) for loc, key in uploading), timeout=10) is True
    assert scheduler.wait_for_run("dr_full_backup", run_id, timeout=900) == "success", \
        scheduler.diagnose("dr_full_backup", run_id)
    tries = _try_numbers(scheduler, "dr_full_backup", run_id)
    assert tries["logical_backup"] == ("success", 2), tries  # the first try died with the worker

    # Nothing of the crashed attempt is stored under a final name; the retry's backup is whole everywhere.
    for location, key in uploading:
        assert not _object_exists(location, key), f"{location.describe(key)}: a half backup under its final name"
    assert not crashed_ids & {m.backup_id for m in catalog.list(kind="logical")}
    (retried,) = [m for m in catalog.list(kind="logical") if m.backup_id not in before]
    for name in retried.locations:
        assert verify_copy(retried, locations[name], box.keyring(), deep=True).ok, name


def test_the_primary_region_lost_with_its_worker_and_database_fails_over_on_the_dr_worker(scheduler) -> None:
    box = Sandbox(root=scheduler.root)
    with psycopg.connect(box.app_conninfo(), autocommit=True, prepare_threshold=None) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS before_region_loss (n int)")
        conn.execute("INSERT INTO before_region_loss VALUES (1)")
    box.wait_streaming(timeout=60)
    primary_region = box.policy.topology.primary_region
    plane = ControlPlane(root=scheduler.root)

    plane.lose_worker(primary_region)
    box.cluster("primary").kill()
    run_id = scheduler.trigger("dr_failover", {"target": "dr", "mode": "failover", "reason": "us-east-1 lost"})
    assert scheduler.wait_for_run("dr_failover", run_id, timeout=600) == "success", \
        scheduler.diagnose("dr_failover", run_id)

    tasks = scheduler.api(f"/api/v2/dags/dr_failover/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    assert {t["queue"] for t in tasks} == {region_queue(box.policy.control_region)}
    processes = plane.processes()
    assert not processes[f"worker {primary_region}"]["running"]  # so the DR region's worker ran every step
    assert processes[f"worker {box.policy.control_region}"]["running"]
    with psycopg.connect(box.app_conninfo(), autocommit=True, prepare_threshold=None) as conn:
        assert conn.execute("SELECT count(*) FROM before_region_loss").fetchone()[0] == 1
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == box.state["nodes"]["dr"]["port"]

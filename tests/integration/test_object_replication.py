"""Object replication through its DAG on the sandbox: every video the application's database names reaches the DR
region. The replication itself (copies, deletes, protection, restores, faults) is tested in the unit tier
(tests/unit/core/test_object_replication.py) and the component tier (a connection cut)."""

from __future__ import annotations

import hashlib


def test_the_dag_puts_every_video_the_database_names_into_the_dr_region(sandbox, airflow_db) -> None:
    from tests.support.airflow_helpers import load_dag, task_states, xcom

    run = load_dag("dr_object_replication").test()
    assert str(run.state) == "success", task_states(run)
    video = xcom(run, "replicate_video_content")
    assert video["category"] == "video_content" and video["failed"] == [] and video["alarms"] == []
    spec = sandbox.policy.objects.categories["video_content"]
    replica = sandbox.s3_client(spec.replicas[0].region)
    rows = sandbox.node("primary", user="app", dbname="app").query("SELECT s3_key, size_bytes, sha256 FROM videos")
    assert rows
    for row in rows:
        body = replica.get_object(Bucket=spec.replicas[0].bucket, Key=row["s3_key"])["Body"].read()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (row["size_bytes"], row["sha256"]), row["s3_key"]
    uploads = xcom(run, "replicate_user_uploads")
    assert uploads["failed"] == [] and uploads["alarms"] == []
    again = load_dag("dr_object_replication").test()
    record = xcom(again, "replicate_video_content")
    assert record["copied"] == 1, "only the previous run's heartbeat is new"
    assert record["lag_seconds"] is not None

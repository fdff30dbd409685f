"""dr_region_recovery end to end: the whole primary region lost for real, recovered in the DR region with
every business function measured, a writer through the application losing nothing, then the region
rebuilt and switched back, the sandbox left as found."""

from __future__ import annotations


import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from continuity.waiting import poll

from tests.support.airflow_helpers import load_dag, sandbox_environment, task_states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture(scope="module")
def region(sandbox_factory, airflow_db):
    """A sandbox of its own: the exercise loses a region of it."""
    with sandbox_factory.own(scale=0.05, prefix="continuity-sandbox-region-") as own, sandbox_environment(own) as box:
        yield box


def _client(box, region: str):
    conn = box.connections()["continuity_s3_us_east_1"]
    return boto3.client("s3", endpoint_url=box.region_s3_endpoint(region), region_name=region,
                        aws_access_key_id=conn["login"], aws_secret_access_key=conn["password"],
                        config=Config(retries={"max_attempts": 1}, connect_timeout=2))


def test_a_lost_region_refuses_storage_and_gets_everything_back(region) -> None:
    bucket = region.policy.application.regions["us-east-1"].video_bucket
    assert region.connections()["continuity_s3_us_east_1"]["extra"]["endpoint_url"] == region.region_s3_endpoint("us-east-1")
    _client(region, "us-east-1").put_object(Bucket=bucket, Key="isolation-check", Body=b"kept")

    lost = region.isolate_region("us-east-1")
    assert {"postgres primary", "postgres sync1", "postgres sync2", "redis us-east-1", "s3 gateway us-east-1"} <= set(lost), lost
    assert any(item.startswith("application web-us-east-1") for item in lost), lost
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        _client(region, "us-east-1").get_object(Bucket=bucket, Key="isolation-check")
    assert region.status()["nodes"]["primary"]["role"] == "down"

    region.reconnect_region("us-east-1")
    for name in ("primary", "sync1", "sync2"):
        region.cluster(name).start()
    region.start_application("us-east-1")
    body = _client(region, "us-east-1").get_object(Bucket=bucket, Key="isolation-check")["Body"].read()
    assert body == b"kept"
    # Back as it was: the standbys stream again (the exercise starts from there).
    assert poll(lambda: all(region.status()["nodes"][n].get("replication") == "streaming" for n in ("sync1", "sync2", "dr")),
                timeout=60), region.status()["nodes"]
    assert region.status()["redis"]["us-east-1"]["role"] == "primary"


def test_region_loss_exercise_recovers_measures_every_function_and_comes_back(region) -> None:
    for dag_id in ("dr_object_replication", "dr_object_replication", "dr_config_backup"):
        run = load_dag(dag_id).test()  # the replicas' heartbeat and a config backup: what the RPOs are read from
        assert str(run.state) == "success", (dag_id, task_states(run))

    run = load_dag("dr_region_recovery").test()
    assert str(run.state) == "success", task_states(run)

    result = xcom(run, "check_left_as_found")
    assert {"postgres primary", "postgres sync1", "postgres sync2", "redis us-east-1", "s3 gateway us-east-1"} <= set(result["lost"])
    assert result["marker_recovered"] is True
    # A user kept writing through the application; nothing acknowledged was lost, then or after the switch back.
    writer = result["writer"]
    assert writer["acknowledged"] >= 40 and writer["lost"] == [] and result["writes_lost_by_the_end"] == []
    assert result["left_as_found"] is True and result["differences"] == []
    assert result["rebuilt"] == ["primary", "sync1", "sync2"]
    # What the DR application uploaded while it served went home before the switch back: every row written
    # since the loss names an object the us-east-1 bucket holds.
    [videos] = [f for f in result["fail_back"] if f["category"] == "video_content"]
    assert len(videos["copied"]) >= 1 and videos["failed"] == [] and result["missing_home"] == []

    objectives = {o["objective"]: o for o in result["objectives"]}
    functions = sorted(region.policy.business_functions)
    assert len(functions) == 6
    for name in functions:
        rto, rpo = objectives[f"RTO {name}"], objectives[f"RPO {name}"]
        assert rto["measured_seconds"] is not None and rto["verdict"] == "pass", rto
        assert "synthetic transaction in us-west-2" in rto["source"], rto
        assert rpo["measured_seconds"] is not None and rpo["verdict"] == "pass", rpo
    assert objectives["RPO critical_user_data"]["measured_seconds"] == 0.0
    assert result["downtime_seconds"] == max(objectives[f"RTO {name}"]["measured_seconds"] for name in functions)
    assert result["downtime_cost"].startswith("$") and "downtime table" in result["downtime_cost"]
    assert "replication lag: heartbeat" in objectives["RPO video_content"]["source"]
    assert objectives["RPO configuration_data"]["source"].startswith("age of the newest config backup")

    # The report is in every required location, the lost region's included once it was back.
    for name in ("primary", "dr"):
        markdown = region.catalog().locations[name].get_bytes(
            f"reports/region-recovery/{result['exercise_id']}.md").decode()
        assert ": PASS" in markdown.splitlines()[0] and "| RTO video_processing |" in markdown
    status = region.status()
    assert status["nodes"]["primary"]["role"] == "primary"
    assert status["application"]["us-east-1"]["state"] == "serving"
    assert status["application"]["us-west-2"]["state"] == "standby"
    assert status["redis"]["us-east-1"]["role"] == "primary" and status["redis"]["us-west-2"]["role"] == "replica"

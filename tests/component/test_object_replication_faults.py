"""Object replication when the network fails mid-copy: needs a real S3 endpoint over HTTP (moto's server) and a
proxy that cuts the connection."""

from __future__ import annotations

import hashlib
from pathlib import Path

import boto3
import pytest

from tests.support.netfault import CuttingProxy
from tests.support.objects_world import PART, World, blob as _blob


@pytest.fixture
def world(s3_server, tmp_path: Path) -> World:
    world = World(s3_server.client, tmp_path)
    for location in world.policy.storage.locations:
        if location.name in world.state:
            client = s3_server.client(location.region)
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if location.bucket not in existing:
                config = {} if location.region == "us-east-1" else {
                    "CreateBucketConfiguration": {"LocationConstraint": location.region}}
                client.create_bucket(Bucket=location.bucket, **config)
    world.endpoint_port = s3_server.port
    return world


def test_a_connection_cut_mid_copy_leaves_no_partial_object_and_the_next_run_resumes(world: World) -> None:
    world.put("videos/before.mp4", b"copied by an earlier run")
    world.run("before")
    big = _blob(3 * PART, "cut")
    world.put("videos/big.mp4", big)
    world.put("videos/small.mp4", b"small")
    port = world.endpoint_port
    # moto answers HTTP/1.0, a connection per request: the cut falls inside the first part of big.mp4
    proxy = CuttingProxy(upstream_port=port, request_limit=PART // 2)
    try:
        cut = boto3.client("s3", endpoint_url=proxy.url, region_name="us-west-2", aws_access_key_id="component",
                           aws_secret_access_key="component",
                           config=boto3.session.Config(retries={"total_max_attempts": 1}))
        failed = world.run("cut", continuity_s3_us_west_2=cut)
    finally:
        proxy.close()
    assert [f.key for f in failed.failed] == ["videos/big.mp4"]
    assert world.replica_versions("videos/big.mp4") == [], "no partial object under the final name"
    uploads = world.rep.list_multipart_uploads(Bucket=world.replica_bucket).get("Uploads", [])
    assert [u for u in uploads if u["Key"] == "videos/big.mp4"] == [], "the multipart upload was aborted"
    resumed = world.run("resume")
    assert resumed.listing.startswith("every version since") and "a copy failed" in resumed.listing, \
        "a run that left a copy to retry stores no listing to compare with: the next lists every version"
    assert not resumed.failed and world.replica_sha("videos/big.mp4") == hashlib.sha256(big).hexdigest()
    assert [line["key"] for line in world.ledger() if line["key"] == "videos/big.mp4"] == ["videos/big.mp4"]

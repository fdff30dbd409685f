"""Object replication's test world: a policy whose video_content category uses fresh buckets (a copy of the shipped
policy naming them), on whatever S3 the test gives (moto in-process in the unit tier, a server above it), and
helpers to look at them."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from continuity.objects.ledger import ReplicationRun
from continuity.objects.replication import Replicator, replicator_for
from continuity.objects.store import INTERNAL_PREFIX
from continuity.policy.loading import load_policy
from continuity.policy.project import default_policy_path
from continuity.storage.locations import locations_from_policy

PART = 5 * 2**20  # S3's smallest part: large objects here go multipart


class World:
    """A policy whose video_content category uses fresh buckets, and helpers to look at them."""

    def __init__(self, s3_client: Callable[[str], Any], tmp_path: Path, *, locked: bool = True,
                 max_deletes: int = 25) -> None:
        tag = uuid.uuid4().hex[:8]
        data = yaml.safe_load(default_policy_path().read_text())
        video = data["objects"]["categories"]["video_content"]
        video["source"]["bucket"] = f"src-{tag}"
        video["replicas"][0]["bucket"] = f"rep-{tag}"
        video["deletes"]["max_per_run"] = max_deletes
        if not locked:
            video.pop("object_lock")
        data["objects"]["part_size"] = PART
        for location in data["storage"]["locations"]:
            location["prefix"] = f"objects-test-{tag}/"
        path = tmp_path / "policy.yaml"
        path.write_text(yaml.safe_dump(data))
        self.policy_path = path
        self.policy = load_policy(path)
        self.spec = self.policy.objects.categories["video_content"]
        self.src = s3_client("us-east-1")
        self.rep = s3_client("us-west-2")
        self.src.create_bucket(Bucket=self.spec.source.bucket)
        self.src.put_bucket_versioning(Bucket=self.spec.source.bucket, VersioningConfiguration={"Status": "Enabled"})
        self.rep.create_bucket(Bucket=self.spec.replicas[0].bucket, ObjectLockEnabledForBucket=locked,
                               CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
        self.rep.put_bucket_versioning(Bucket=self.spec.replicas[0].bucket,
                                       VersioningConfiguration={"Status": "Enabled"})
        locations = locations_from_policy(self.policy, lambda loc: s3_client(loc.region))
        self.state = {n: loc for n, loc in locations.items() if n in ("primary", "dr")}
        self.log: list[str] = []
        self.clients = {"continuity_s3_us_east_1": self.src, "continuity_s3_us_west_2": self.rep}

    @property
    def source_bucket(self) -> str:
        return self.spec.source.bucket

    @property
    def replica_bucket(self) -> str:
        return self.spec.replicas[0].bucket

    def replicator(self, every_version_listing: timedelta | None = None, **overrides) -> Replicator:
        clients = {**self.clients, **overrides}
        replicator = replicator_for(self.policy, "video_content", client_for=lambda conn_id, region: clients[conn_id],
                                    state=self.state, report=self.log.append)
        if every_version_listing is not None:
            replicator.every_version_listing = every_version_listing
        return replicator

    def run(self, run_id: str = "run", every_version_listing: timedelta | None = None,
            **overrides) -> ReplicationRun:
        category = self.policy.data_categories["video_content"]
        return self.replicator(every_version_listing, **overrides).run(
            run_id=run_id, rpo_target=category.rpo.target, rpo_maximum=category.rpo.maximum)

    def put(self, key: str, data: bytes) -> str:
        return self.src.put_object(Bucket=self.source_bucket, Key=key, Body=data)["VersionId"]

    def replica_versions(self, key: str) -> list[dict]:
        listing = self.rep.list_object_versions(Bucket=self.replica_bucket, Prefix=key)
        return [v for v in listing.get("Versions", []) if v["Key"] == key]

    def replica_sha(self, key: str, version_id: str | None = None) -> str:
        args = {"VersionId": version_id} if version_id else {}
        body = self.rep.get_object(Bucket=self.replica_bucket, Key=key, **args)["Body"].read()
        return hashlib.sha256(body).hexdigest()

    def ledger(self) -> list[dict]:
        listing = self.rep.list_objects_v2(Bucket=self.replica_bucket, Prefix=INTERNAL_PREFIX)
        lines = []
        for item in sorted(listing.get("Contents", []), key=lambda i: i["Key"]):
            body = self.rep.get_object(Bucket=self.replica_bucket, Key=item["Key"])["Body"].read().decode()
            lines += [json.loads(line) for line in body.splitlines()]
        return lines



def blob(n: int, seed: str) -> bytes:
    return (hashlib.sha256(seed.encode()).digest() * (n // 32 + 1))[:n]

"""Where objects are: a bucket and prefix (`ObjectStore`) and the versions listed in it.

Why not `storage.StorageLocation`: a location holds Continuity's own files (archives, manifests, reports),
written once under final names, on S3 or a directory, and never needs S3's versions. An object store
holds the application's objects, which the application overwrites and deletes: replication, point-in-time
restore and fail-back work on version ids, version listings, object lock and storage classes, which only
S3 has. One interface for both would carry versions into every backup location, or leave them out of the
object copy that depends on them. Both take their boto3 client from the same factory
(`ContinuityPolicyHook.s3_client` in Airflow, `emergency.region_s3_client` outside it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict


log = logging.getLogger(__name__)

INTERNAL_PREFIX = ".continuity/"
HEARTBEAT_NAME = ".continuity-heartbeat"
METADATA_SOURCE_VERSION = "continuity-source-version"
METADATA_SOURCE_MODIFIED = "continuity-source-modified"
METADATA_SHA256 = "continuity-sha256"
# A multipart upload's Last-Modified is when it started, so a version can appear "in the past":
# each run looks back this far before its checkpoint (versions already copied are remembered).
LOOKBACK = timedelta(hours=2)
MAX_PASSES = 3
CHECKPOINT_EVERY = 50  # copies between checkpoint saves (a killed run resumes from the last save)
# After a pass, the keys copied are looked at again for versions written meanwhile: one HEAD per key up
# to this many, one listing of the prefix above.
RECHECK_BY_HEAD = 200
# Keys new, changed or gone since the last run found by one HEAD each up to this many; a listing of every
# version above (its requests: one per thousand versions).
CHANGES_BY_HEAD = 1000


class ReplicationError(RuntimeError):
    """The run could not do its work (a bucket unreachable, the checkpoint unreadable)."""


class ReplicationAlarm(RuntimeError):
    """Something a person must look at: a mass delete, a replica's protection drifting from the policy,
    the lag past the category's RPO maximum. The message names what and where."""


# -- where objects are ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectStore:
    """A bucket and prefix of the application, with the S3 client that reaches it."""

    client: Any
    bucket: str
    prefix: str
    region: str

    def describe(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    @property
    def endpoint(self) -> str:
        return self.client.meta.endpoint_url

    @classmethod
    def for_bucket(cls, bucket: Any, client_for: Callable[[str, str], Any]) -> ObjectStore:
        """A policy `Bucket`, with the client `client_for(conn_id, region)` gives."""
        return cls(client=client_for(bucket.conn_id, bucket.region), bucket=bucket.bucket, prefix=bucket.prefix,
                   region=bucket.region)


def is_internal(key: str, prefix: str) -> bool:
    """Continuity's own objects among the application's: the heartbeat and the ledger."""
    rest = key[len(prefix):] if key.startswith(prefix) else key
    return rest.startswith(HEARTBEAT_NAME) or key.startswith(INTERNAL_PREFIX)


class SourceVersion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    version_id: str
    last_modified: datetime
    size: int = 0
    etag: str | None = None
    delete_marker: bool = False
    latest: bool = False


def all_versions(store: ObjectStore) -> Iterator[SourceVersion]:
    """Every version and delete marker under the store's prefix, in the endpoint's (key) order."""
    paginator = store.client.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=store.bucket, Prefix=store.prefix):
        for entry in page.get("Versions", []):
            yield SourceVersion(key=entry["Key"], version_id=entry["VersionId"], last_modified=entry["LastModified"],
                                size=entry["Size"], etag=entry.get("ETag", "").strip('"') or None,
                                latest=entry.get("IsLatest", False))
        for entry in page.get("DeleteMarkers", []):
            yield SourceVersion(key=entry["Key"], version_id=entry["VersionId"], last_modified=entry["LastModified"],
                                delete_marker=True, latest=entry.get("IsLatest", False))


def list_versions(store: ObjectStore, *, since: datetime | None) -> Iterator[SourceVersion]:
    """Every version and delete marker under the store's prefix modified at or after `since`."""
    return (v for v in all_versions(store) if since is None or v.last_modified >= since)


def read_heartbeat(source_prefix: str, replica: ObjectStore) -> tuple[datetime, datetime] | None:
    """The replica's copy of the heartbeat: (when it was written at the source, when the copy was stored),
    or None when no heartbeat has reached it."""
    try:
        response = replica.client.get_object(Bucket=replica.bucket, Key=f"{source_prefix}{HEARTBEAT_NAME}")
        return datetime.fromisoformat(json.loads(response["Body"].read())["written_at"]), response["LastModified"]
    except Exception:
        return None


def heartbeat_lag(source_prefix: str, replica: ObjectStore) -> tuple[float | None, str]:
    """The heartbeat's lag (its write at the source to its copy at the replica), from the replica alone."""
    found = read_heartbeat(source_prefix, replica)
    if found is None:
        return None, "not measured: no heartbeat in the replica yet"
    written, arrived = found
    return round(max(0.0, (arrived - written).total_seconds()), 3), \
        f"heartbeat written {written.isoformat()}, copied {arrived.isoformat()}"

"""The application's objects: incremental, verified replication of every version to the DR region.

One `ObjectCategory` of the policy (video content, user uploads) has a versioned source bucket and
one or more replica buckets. A run lists the source's versions and delete markers modified since
the stored checkpoint (minus a lookback, for multipart uploads whose Last-Modified is their start),
copies each new version to every replica and appends one ledger line per version or delete:

- streamed (GET by version id, PUT or multipart upload in `part_size` parts, SHA-256 computed on
  the way and sent as the S3 additional checksum, so the endpoint refuses a corrupted part), or
  server-side (CopyObject) when source and replica share an endpoint and the replica accepts it;
- verified: the SHA-256 of the whole content is recorded in the ledger at copy time, compared with
  the source's own checksum or MD5 ETag when it has one, and with the replica's stored checksum;
  never by a multipart ETag, which is not a digest of the content;
- deletes are recorded, never copied as deletions: the replica keeps every version, object-locked;
- the ledger (`.continuity/ledger/<category>/` in each replica bucket, JSON lines, one object per
  run) says which replica version held which source version from when: it is what a point-in-time
  restore reads, so restores need the replica alone.

A multipart upload that fails is aborted, so no partial object ever appears under its name; a
version that failed stops the checkpoint from moving past it, so the next run copies it again.
Nothing here imports Airflow.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal, NamedTuple

import botocore.exceptions
from pydantic import BaseModel, ConfigDict

from continuity.policy.model import ObjectCategory, Policy, format_duration
from continuity.storage.locations import StorageError, StorageLocation, b64, composite_sha256, key_safe

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


# -- the current objects, listing against listing ------------------------------------------------
# Listing every version costs as much as the history kept (uploads keep every version forever, videos
# seven years), so between two listings of every version (`objects.every_version_listing`, at least
# hourly) a run lists only the current objects (ListObjectsV2) and compares them, key by key, with the
# listing the previous run stored: a key new or changed is one HEAD for its current version, a key gone
# one HEAD for its delete marker. What only a listing of every version sees (a version overwritten
# again, or deleted, before the next run) waits for the next one, inside the category's RPO maximum.
class CurrentObject(NamedTuple):
    key: str
    last_modified: str  # ISO 8601, as the listing gave it: equal listings give equal strings
    etag: str
    size: int


class ListingUnusable(RuntimeError):
    """The stored listing cannot be compared with (missing, from another run, out of key order, damaged)."""


def current_listing_key(category: str) -> str:
    return f"objects/{category}/current.jsonl.gz"


def list_current(store: ObjectStore) -> Iterator[CurrentObject]:
    """The current objects under the store's prefix, in key order (refused otherwise: the comparison needs it)."""
    previous = ""
    for page in store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=store.prefix):
        for entry in page.get("Contents", []):
            if entry["Key"] <= previous:
                raise ListingUnusable(f"{store.describe(store.prefix)} listed {entry['Key']!r} after {previous!r}: "
                                      f"not in key order")
            previous = entry["Key"]
            yield CurrentObject(entry["Key"], entry["LastModified"].isoformat(), entry.get("ETag", "").strip('"'),
                                entry["Size"])


def compare_current(previous: Iterable[CurrentObject],
                    listed: Iterable[CurrentObject]) -> Iterator[tuple[Literal["new", "changed", "gone"], CurrentObject]]:
    """The differences between two key-ordered listings, merged in one pass (memory: one entry of each)."""
    before, now = iter(previous), iter(listed)
    old, new = next(before, None), next(now, None)
    while old is not None or new is not None:
        if new is None or (old is not None and old.key < new.key):
            yield "gone", old  # type: ignore[misc]
            old = next(before, None)
        elif old is None or new.key < old.key:
            yield "new", new
            new = next(now, None)
        else:
            if new != old:
                yield "changed", new
            old, new = next(before, None), next(now, None)


class CurrentListing:
    """A key-ordered listing of the current objects, kept in a local temporary file (gzip JSON lines
    behind a header naming when it was listed) to compare the next listing with and to store."""

    def __init__(self, category: str, *, listed_at: datetime) -> None:
        self.category, self.listed_at = category, listed_at
        self.objects = 0
        self.unusable: str | None = None
        self._file = tempfile.TemporaryFile(prefix="continuity-current-")
        self._writer: gzip.GzipFile | None = gzip.GzipFile(fileobj=self._file, mode="wb", compresslevel=3)
        self._write({"category": category, "listed_at": listed_at.isoformat()})
        self._last = ""

    def _write(self, value: Any) -> None:
        assert self._writer is not None
        self._writer.write(json.dumps(value, separators=(",", ":")).encode() + b"\n")

    def add(self, entry: CurrentObject) -> None:
        if entry.key <= self._last and self.objects:
            self.unusable = f"{entry.key!r} came after {self._last!r}: the listing is not in key order"
        self._last = entry.key
        self.objects += 1
        self._write(list(entry))

    def recording(self, entries: Iterable[CurrentObject]) -> Iterator[CurrentObject]:
        """`entries`, each added on the way."""
        for entry in entries:
            self.add(entry)
            yield entry

    def finish(self) -> CurrentListing:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self

    def __iter__(self) -> Iterator[CurrentObject]:
        self.finish()
        self._file.seek(0)
        with gzip.GzipFile(fileobj=self._file, mode="rb") as lines:
            lines.readline()
            for line in lines:
                yield CurrentObject(*json.loads(line))

    def store(self, state: Mapping[str, StorageLocation]) -> None:
        """Into every state location: the checkpoint names it afterwards, by its `listed_at`."""
        self.finish()
        for location in state.values():
            self._file.seek(0)
            writer = location.open_writer(current_listing_key(self.category))
            try:
                while chunk := self._file.read(2**20):
                    writer.write(chunk)
                writer.commit()
            except BaseException:
                writer.abort()
                raise

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._file.close()


@contextmanager
def stored_listing(state: Mapping[str, StorageLocation], category: str, *,
                   listed_at: datetime) -> Iterator[Iterator[CurrentObject]]:
    """The listing the previous run stored, from the first state location holding the one the checkpoint
    names (by when it was listed): a location holding another run's is passed over, never used."""
    problems = []
    for location in state.values():
        try:
            reader = location.open_reader(current_listing_key(category))
        except StorageError as exc:
            problems.append(f"{location.name}: {str(exc).splitlines()[0]}")
            continue
        with reader, gzip.GzipFile(fileobj=reader, mode="rb") as lines:
            try:
                header = json.loads(lines.readline())
            except (OSError, EOFError, ValueError) as exc:
                problems.append(f"{location.name}: unreadable ({exc})")
                continue
            if header.get("listed_at") != listed_at.isoformat():
                problems.append(f"{location.name}: holds the listing of {header.get('listed_at')}, "
                                f"not {listed_at.isoformat()}")
                continue
            yield (CurrentObject(*json.loads(line)) for line in lines)
            return
    raise ListingUnusable(f"no stored listing of the current objects of {category} from {listed_at.isoformat()} "
                          f"({'; '.join(problems) or 'no state location'})")


# -- records -------------------------------------------------------------------------------------
class LedgerEntry(BaseModel):
    """One line of a replica's ledger: a source version (or delete marker) and where the replica holds it."""

    model_config = ConfigDict(extra="forbid")

    event: Literal["version", "delete"]
    key: str
    source_version_id: str
    source_last_modified: datetime
    replica_version_id: str | None = None
    size: int | None = None
    sha256: str | None = None
    method: Literal["streamed", "server-side"] | None = None
    copied_at: datetime


def version_entry(version: SourceVersion, copy: tuple[str, str, int, str], *, copied_at: datetime) -> LedgerEntry:
    """The ledger line of a copied version; `copy` as the copy functions return it."""
    replica_version, sha256, size, method = copy
    return LedgerEntry(event="version", key=version.key, source_version_id=version.version_id,
                       source_last_modified=version.last_modified, replica_version_id=replica_version, size=size,
                       sha256=sha256, method="streamed" if method == "found" else method, copied_at=copied_at)


def write_ledger(replica: ObjectStore, category: str, entries: list[LedgerEntry], *, name: str,
                 now: datetime) -> str:
    """One new ledger object per write (never rewritten: the replica is object-locked); returns its key."""
    key = f"{INTERNAL_PREFIX}ledger/{category}/{now:%Y%m%dT%H%M%S.%fZ}-{key_safe(name)}.jsonl"
    replica.client.put_object(Bucket=replica.bucket, Key=key, ChecksumAlgorithm="SHA256",
                              Body="".join(entry.model_dump_json() + "\n" for entry in entries).encode())
    return key


class Checkpoint(BaseModel):
    """How far a category's replication got: versions older than `high_water` minus the lookback are
    done; `recent` names the versions copied inside the lookback, so none is copied twice."""

    model_config = ConfigDict(extra="forbid")

    category: str
    high_water: datetime | None = None
    recent: dict[str, datetime] = {}
    protected: list[str] = []  # replica buckets whose protection was applied from the policy
    updated_at: datetime | None = None
    updated_by: str | None = None
    complete_at: datetime | None = None  # start of the last run after which nothing listed was left to copy
    running_since: datetime | None = None  # set while a run copies: still set, that run did not finish
    # Start of the last run that listed every version and left nothing to retry: the next such listing
    # goes back to it (minus the lookback), so versions only it can see are never passed over.
    versions_listed_at: datetime | None = None
    # When the current objects the previous run stored (`current_listing_key`) were listed: None when it
    # stored none usable (copies failed), so the next run lists every version.
    current_listed_at: datetime | None = None


class CopyFailure(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    version_id: str
    replica: str
    error: str


class ReplicationRun(BaseModel):
    """What one run of one category did: the record in XCom and in storage."""

    model_config = ConfigDict(extra="forbid")

    category: str
    run_id: str
    started_at: datetime
    finished_at: datetime | None = None
    since: datetime | None = None
    listing: str = ""  # how the run found what to copy, and why that way
    copied: int = 0
    copied_bytes: int = 0
    skipped: int = 0
    changed_during_run: list[str] = []
    deletes: list[str] = []
    failed: list[CopyFailure] = []
    methods: dict[str, int] = {}
    ledger_keys: list[str] = []
    heartbeat_written_at: datetime | None = None
    lag_seconds: float | None = None
    lag_source: str | None = None
    protection: list[str] = []  # one sentence per replica bucket
    alarms: list[str] = []
    # Seconds spent listing, copying (a listing of every version runs while copying: listing_while_copying)
    timings: dict[str, float] = {}


# -- checkpoint ----------------------------------------------------------------------------------
def checkpoint_key(category: str) -> str:
    return f"objects/{category}/checkpoint.json"


def load_checkpoint(category: str, locations: Mapping[str, StorageLocation]) -> Checkpoint:
    """The most cautious checkpoint among the locations (the lowest high water): copying again is harmless."""
    found: list[Checkpoint] = []
    for location in locations.values():
        try:
            if location.head(checkpoint_key(category)) is None:
                continue
            found.append(Checkpoint.model_validate_json(location.get_bytes(checkpoint_key(category))))
        except StorageError as exc:
            raise ReplicationError(f"cannot read the replication checkpoint of {category}: {exc}") from exc
    if not found:
        return Checkpoint(category=category)
    return min(found, key=lambda c: c.high_water or datetime.min.replace(tzinfo=timezone.utc))


def save_checkpoint(checkpoint: Checkpoint, locations: Mapping[str, StorageLocation]) -> None:
    data = checkpoint.model_dump_json(indent=2).encode()
    for location in locations.values():
        location.put_bytes(checkpoint_key(checkpoint.category), data)


# -- copying -------------------------------------------------------------------------------------
class ContentMismatch(RuntimeError):
    """What was read is not what the source says it holds (it changed, or was corrupted in transit)."""


def _metadata(version: SourceVersion, sha256: str | None = None) -> dict[str, str]:
    meta = {METADATA_SOURCE_VERSION: version.version_id, METADATA_SOURCE_MODIFIED: version.last_modified.isoformat()}
    if sha256:
        meta[METADATA_SHA256] = sha256
    return meta


def _check_source(version: SourceVersion, response: Mapping[str, Any], whole: Any, md5: Any,
                  size: int, expected_sha256: str | None = None) -> None:
    if expected_sha256 and whole.hexdigest() != expected_sha256:
        raise ContentMismatch(f"{version.key} version {version.version_id}: its SHA-256 is not the "
                              f"{expected_sha256[:12]}… recorded when it was copied")
    if size != response.get("ContentLength", size) or (version.size and size != version.size):
        raise ContentMismatch(f"read {size} bytes of {version.key} version {version.version_id}, "
                              f"the source lists {version.size}")
    source_sum = response.get("ChecksumSHA256")
    if source_sum and "-" not in source_sum and source_sum != b64(whole.digest()):
        raise ContentMismatch(f"{version.key} version {version.version_id}: the SHA-256 of what was read differs "
                              f"from the source's own checksum")
    etag = (response.get("ETag") or "").strip('"')
    if md5 is not None and etag and "-" not in etag and len(etag) == 32 and etag != md5.hexdigest():
        raise ContentMismatch(f"{version.key} version {version.version_id}: the MD5 of what was read differs "
                              f"from the source's ETag")


def copy_streamed(source: ObjectStore, replica: ObjectStore, version: SourceVersion, *,
                  part_size: int, expected_sha256: str | None = None, key: str | None = None) -> tuple[str, str, int]:
    """GET the version, PUT it (multipart above `part_size`) with SHA-256 checksums; returns
    (replica version id, sha256 hex, bytes). With `expected_sha256`, content that differs is refused
    before the object is complete; `key` names the copy (default: the source's key). Memory: one part."""
    target = key or version.key
    response = source.client.get_object(Bucket=source.bucket, Key=version.key, VersionId=version.version_id,
                                        ChecksumMode="ENABLED")
    body = response["Body"]
    whole = hashlib.sha256()
    # The source's ETag is the MD5 of a single-part upload (a multipart one's is not a digest of the content):
    # worth checking only then, and only when the source has no SHA-256 of its own to compare with (hashing
    # costs CPU the endpoint may need).
    etag = (response.get("ETag") or "").strip('"')
    plain_md5 = len(etag) == 32 and "-" not in etag
    md5 = hashlib.md5(usedforsecurity=False) if plain_md5 and not response.get("ChecksumSHA256") else None
    first = body.read(part_size)
    try:
        if len(first) < part_size:
            whole.update(first)
            if md5 is not None:
                md5.update(first)
            _check_source(version, response, whole, md5, len(first), expected_sha256)
            put = replica.client.put_object(
                Bucket=replica.bucket, Key=target, Body=first, ChecksumAlgorithm="SHA256",
                ChecksumSHA256=b64(whole.digest()), Metadata=_metadata(version, whole.hexdigest()))
            return put["VersionId"], whole.hexdigest(), len(first)
        upload = replica.client.create_multipart_upload(Bucket=replica.bucket, Key=target,
                                                        ChecksumAlgorithm="SHA256", Metadata=_metadata(version))
        upload_id, parts, digests, size, chunk = upload["UploadId"], [], [], 0, first
        try:
            while chunk:
                whole.update(chunk)
                if md5 is not None:
                    md5.update(chunk)
                digest = hashlib.sha256(chunk).digest()
                part = replica.client.upload_part(Bucket=replica.bucket, Key=target, UploadId=upload_id,
                                                  PartNumber=len(parts) + 1, Body=chunk,
                                                  ChecksumAlgorithm="SHA256", ChecksumSHA256=b64(digest))
                parts.append({"PartNumber": len(parts) + 1, "ETag": part["ETag"], "ChecksumSHA256": b64(digest)})
                digests.append(digest)
                size += len(chunk)
                chunk = body.read(part_size)
            _check_source(version, response, whole, md5, size, expected_sha256)
            done = replica.client.complete_multipart_upload(Bucket=replica.bucket, Key=target,
                                                            UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            # Aborted, the parts are gone and no object ever appears under the key.
            try:
                replica.client.abort_multipart_upload(Bucket=replica.bucket, Key=target, UploadId=upload_id)
            except Exception as exc:  # the endpoint may be what failed; its lifecycle rule aborts it later
                log.warning("could not abort the multipart upload of %s: %s", replica.describe(target), exc)
            raise
        stored = done.get("ChecksumSHA256")
        if stored and stored.split("-")[0] != composite_sha256(digests).split("-")[0]:
            raise ContentMismatch(f"{replica.describe(target)}: the replica's checksum is not that of the "
                                  f"parts sent")
        return done["VersionId"], whole.hexdigest(), size
    finally:
        body.close()


class ServerSideRefused(RuntimeError):
    """The replica would not take a CopyObject (e.g. an object-locked bucket wanting a Content-MD5)."""


def copy_server_side(source: ObjectStore, replica: ObjectStore, version: SourceVersion) -> tuple[str, str, int]:
    """CopyObject with a SHA-256 computed by the endpoint; returns (replica version id, sha256 hex, bytes)."""
    try:
        result = replica.client.copy_object(
            Bucket=replica.bucket, Key=version.key, ChecksumAlgorithm="SHA256",
            CopySource={"Bucket": source.bucket, "Key": version.key, "VersionId": version.version_id},
            MetadataDirective="REPLACE", Metadata=_metadata(version))
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code in ("MissingUploadObjectWithObjectLockHeaders", "InvalidRequest", "NotImplemented"):
            raise ServerSideRefused(f"{replica.bucket} refused CopyObject ({code})") from exc
        raise
    checksum = result.get("CopyObjectResult", {}).get("ChecksumSHA256")
    if not checksum or "-" in checksum:
        raise ServerSideRefused(f"{replica.bucket} returned no whole-object SHA-256 for CopyObject")
    return result["VersionId"], base64.b64decode(checksum).hex(), version.size


def _already_copied(replica: ObjectStore, version: SourceVersion) -> tuple[str, str, int, str] | None:
    """When the replica's newest version of the key is this source version with its SHA-256 recorded (a
    run that died after copying it): (replica version, sha256, size, method) for its ledger line."""
    try:
        head = replica.client.head_object(Bucket=replica.bucket, Key=version.key)
    except Exception:
        return None
    metadata = head.get("Metadata", {})
    if metadata.get(METADATA_SOURCE_VERSION) != version.version_id or not metadata.get(METADATA_SHA256):
        return None
    return head["VersionId"], metadata[METADATA_SHA256], head["ContentLength"], "found"


# -- the run -------------------------------------------------------------------------------------
@dataclass
class Replicator:
    """Replicates one category from its source to its replicas (see the module docstring)."""

    category: str
    policy: ObjectCategory
    source: ObjectStore
    replicas: Mapping[str, ObjectStore]
    state: Mapping[str, StorageLocation]  # where the checkpoint and run records live (required locations)
    part_size: int
    report: Callable[[str], None] = log.info
    server_side: bool = True
    workers: int = 4  # copies in flight at once (boto3 clients are thread-safe)
    every_version_listing: timedelta = timedelta(hours=1)

    def run(self, *, run_id: str, rpo_target: timedelta | None = None, rpo_maximum: timedelta | None = None,
            now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> ReplicationRun:
        started = now()
        record = ReplicationRun(category=self.category, run_id=run_id, started_at=started)
        checkpoint = load_checkpoint(self.category, self.state)
        # A run that stopped without finishing may have copied versions after its last checkpoint save:
        # this run looks in the replica before copying (otherwise it does not, one request less per object).
        look_first = checkpoint.running_since is not None
        record.protection = self.protect(checkpoint, alarms=record.alarms)
        why_every_version = self._why_every_version(checkpoint, started, look_first=look_first)
        since = self._since(checkpoint)
        record.since = since
        self.report(f"{self.category}: {self.source.describe(self.source.prefix)} -> "
                    f"{', '.join(r.describe(r.prefix) for r in self.replicas.values())}"
                    + ("; the previous run did not finish: checking the replica before each copy" if look_first else ""))
        checkpoint.running_since = started
        save_checkpoint(checkpoint, self.state)
        ledgers: dict[str, list[LedgerEntry]] = {name: [] for name in self.replicas}
        seen_this_run: set[str] = set()
        unfinished: dict[str, datetime] = {}  # in flight or failed: the checkpoint must not pass them
        copied_keys: dict[str, SourceVersion] = {}
        current: CurrentListing | None = None
        listed_every_version = False
        try:
            for number in range(1, MAX_PASSES + 1):
                clock = time.monotonic()
                if number == 1:
                    listed, current, listed_every_version = self._first_listing(
                        checkpoint, since, why_every_version, record, listed_at=now())
                elif len(copied_keys) <= RECHECK_BY_HEAD:
                    listed = list(self._newer_than_copied(copied_keys.values()))
                else:  # many copied: one listing of the current objects against the pass's own listing
                    assert current is not None
                    listed, newer = self._changes(current, listed_at=now())
                    current.close()
                    current = newer
                    if listed is None:
                        listed = list(list_versions(self.source, since=since))
                fresh = (v for v in listed if v.version_id not in checkpoint.recent and v.version_id not in seen_this_run)
                # A listing of every version is copied from as it goes (the endpoint lists while it copies);
                # the others are short and copied oldest first.
                streamed = number == 1 and listed_every_version
                candidates = fresh if streamed else sorted(fresh, key=lambda v: (v.last_modified, v.key, v.version_id))
                record.timings["listing"] = record.timings.get("listing", 0.0) + round(time.monotonic() - clock, 3)
                if number > 1:
                    assert isinstance(candidates, list)
                    if not candidates:
                        break
                    record.changed_during_run += [f"{v.key} ({v.version_id})" for v in candidates]
                    self.report(f"{len(candidates)} versions appeared while the run copied (pass {number}): "
                                f"copying them too")
                clock = time.monotonic()
                copied_keys, deletes = self._copy_pass(
                    candidates, hold_high_water=streamed, checkpoint=checkpoint, record=record, ledgers=ledgers,
                    run_id=run_id, now=now, unfinished=unfinished, seen_this_run=seen_this_run, look_first=look_first)
                record.timings["copying"] = record.timings.get("copying", 0.0) + round(time.monotonic() - clock, 3)
                if deletes > self.policy.deletes.max_per_run:
                    record.alarms.append(
                        f"ALARM mass delete: {deletes} objects deleted under "
                        f"{self.source.describe(self.source.prefix)} since the last run (threshold "
                        f"{self.policy.deletes.max_per_run}); the replicas keep every version and nothing was "
                        f"deleted there")
                if not copied_keys:
                    break  # nothing was copied, so nothing can have changed during a copy
            if not record.failed:
                checkpoint.complete_at = started
                if listed_every_version:
                    checkpoint.versions_listed_at = started
            # The next run compares with this listing only when nothing is left to retry: a failed copy's key
            # would look unchanged to it. The listing is stored before the checkpoint names it.
            checkpoint.current_listed_at = None
            if current is not None and current.unusable is None and not record.failed and not unfinished:
                current.store(self.state)
                checkpoint.current_listed_at = current.listed_at
        finally:
            if current is not None:
                current.close()
        heartbeat_due = self._measure_lag(record, rpo_target=rpo_target, rpo_maximum=rpo_maximum)
        checkpoint.running_since = None
        self._save(checkpoint, record, ledgers, run_id, now, unfinished=unfinished)
        record.heartbeat_written_at = self._write_heartbeat(run_id, now) if heartbeat_due else None
        record.finished_at = now()
        self.report(f"{self.category}: copied {record.copied} versions ({record.copied_bytes / 2**20:.1f} MiB; "
                    f"{', '.join(f'{k} {v}' for k, v in sorted(record.methods.items())) or 'none'}), skipped "
                    f"{record.skipped}, {len(record.deletes)} deletes recorded, {len(record.failed)} failed")
        return record

    # -- finding what to copy --
    def _why_every_version(self, checkpoint: Checkpoint, started: datetime, *, look_first: bool) -> str | None:
        """Why this run must list every version; None when comparing the current objects with the stored
        listing finds everything."""
        if look_first:
            return "the previous run did not finish"
        if checkpoint.versions_listed_at is None:
            return "no listing of every version recorded yet"
        if checkpoint.current_listed_at is None:
            return "the previous run stored no listing of the current objects (a copy failed)"
        if started - checkpoint.versions_listed_at >= self.every_version_listing:
            return (f"every version is listed every {format_duration(self.every_version_listing)} "
                    f"(last {checkpoint.versions_listed_at.isoformat()}): versions overwritten or deleted between "
                    f"two runs are found that way")
        return None

    @staticmethod
    def _since(checkpoint: Checkpoint) -> datetime | None:
        """Where a listing of every version starts: versions older are done (copied, or seen by the last such
        listing), less the lookback."""
        marks = [t for t in (checkpoint.high_water, checkpoint.versions_listed_at) if t is not None]
        return min(marks) - LOOKBACK if checkpoint.high_water is not None and marks else None

    def _first_listing(self, checkpoint: Checkpoint, since: datetime | None, why_every_version: str | None,
                       record: ReplicationRun, *, listed_at: datetime
                       ) -> tuple[Iterable[SourceVersion], CurrentListing | None, bool]:
        """(versions to consider, this run's listing of the current objects, whether every version was listed:
        then the versions come lazily, as the endpoint lists them)."""
        if why_every_version is None:
            assert checkpoint.current_listed_at is not None
            try:
                with stored_listing(self.state, self.category, listed_at=checkpoint.current_listed_at) as previous:
                    changed, current = self._changes(previous, listed_at=listed_at)
            except (ListingUnusable, StorageError, OSError, EOFError, ValueError, TypeError) as exc:
                why_every_version = f"the stored listing cannot be compared with: {str(exc).splitlines()[0]}"
            else:
                if changed is not None:
                    record.listing = (f"current objects compared with the listing of "
                                      f"{checkpoint.current_listed_at.isoformat()}: {len(changed)} keys new, changed "
                                      f"or gone")
                    self.report(f"{self.category}: {record.listing}")
                    return changed, current, False
                current.close()
                why_every_version = f"more than {CHANGES_BY_HEAD} keys new, changed or gone since the last run"
        record.listing = f"every version{' since ' + since.isoformat() if since else ''} ({why_every_version})"
        self.report(f"{self.category}: listing {record.listing}")
        current = CurrentListing(self.category, listed_at=listed_at)
        return self._every_version(since, current, record), current, True

    def _every_version(self, since: datetime | None, current: CurrentListing,
                       record: ReplicationRun) -> Iterator[SourceVersion]:
        """The versions modified since `since`, as the endpoint lists them; the current objects go into `current`
        on the way (complete once this is exhausted)."""
        clock = time.monotonic()
        for version in all_versions(self.source):
            if version.latest and not version.delete_marker:
                current.add(CurrentObject(version.key, version.last_modified.isoformat(), version.etag or "",
                                          version.size))
            if since is None or version.last_modified >= since:
                yield version
        current.finish()
        record.timings["listing_while_copying"] = round(time.monotonic() - clock, 3)
        self.report(f"{self.category}: {current.objects} current objects listed with their versions in "
                    f"{time.monotonic() - clock:.1f}s (copying meanwhile)")

    def _changes(self, previous: Iterable[CurrentObject], *, listed_at: datetime
                 ) -> tuple[list[SourceVersion] | None, CurrentListing]:
        """Lists the current objects against `previous`: the versions behind the keys that differ (a HEAD each,
        in parallel), or None when more than CHANGES_BY_HEAD differ; and the new listing."""
        current = CurrentListing(self.category, listed_at=listed_at)
        differing: list[str] = []
        count = 0
        try:
            for _kind, entry in compare_current(previous, current.recording(list_current(self.source))):
                count += 1
                if count <= CHANGES_BY_HEAD:
                    differing.append(entry.key)
            current.finish()
        except BaseException:
            current.close()
            raise
        if count > CHANGES_BY_HEAD:
            return None, current
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="continuity-head") as pool:
            found = list(pool.map(lambda key: self._current_version(key, listed_at=listed_at), differing))
        return [version for version in found if version is not None], current

    def _current_version(self, key: str, *, listed_at: datetime) -> SourceVersion | None:
        """The key's current version, or its delete marker (S3 answers a HEAD of a deleted key 404 with the
        marker's version id). A marker's Last-Modified comes with the 404 on AWS, not from every endpoint:
        without it, the listing that found the key gone dates it (later than the delete, never earlier, so
        a restore as of a time in between brings the object back rather than losing it)."""
        try:
            head = self.source.client.head_object(Bucket=self.source.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            if headers.get("x-amz-delete-marker") == "true" and headers.get("x-amz-version-id"):
                modified = listed_at
                if headers.get("last-modified"):
                    modified = parsedate_to_datetime(headers["last-modified"])
                return SourceVersion(key=key, version_id=headers["x-amz-version-id"], last_modified=modified,
                                     delete_marker=True, latest=True)
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                self.report(f"{self.source.describe(key)} is gone without a delete marker: nothing to record")
                return None
            raise
        return SourceVersion(key=key, version_id=head.get("VersionId") or "null", last_modified=head["LastModified"],
                             size=head["ContentLength"], etag=head.get("ETag", "").strip('"') or None, latest=True)

    def _newer_than_copied(self, copied: Iterable[SourceVersion]) -> Iterator[SourceVersion]:
        """For a few copied keys, one HEAD each instead of a listing: the key's newest version when it is not
        the one copied (written while the run copied)."""
        for version in copied:
            try:
                head = self.source.client.head_object(Bucket=self.source.bucket, Key=version.key)
            except Exception:
                continue  # deleted meanwhile: the next run lists the delete marker
            if head.get("VersionId") and head["VersionId"] != version.version_id:
                yield SourceVersion(key=version.key, version_id=head["VersionId"], last_modified=head["LastModified"],
                                    size=head["ContentLength"], etag=head.get("ETag", "").strip('"') or None,
                                    latest=True)

    def _copy_everywhere(self, version: SourceVersion, look_first: bool) -> dict[str, Any]:
        """In a worker thread: copy one version to every replica; {replica: (version, sha, size, method) | None
        (already there) | the exception}. Recording happens in the calling thread."""
        outcome: dict[str, Any] = {}
        for name, replica in self.replicas.items():
            if look_first and (found := _already_copied(replica, version)) is not None:
                outcome[name] = found
                continue
            try:
                outcome[name] = self.copy_version(replica, version)
            except Exception as exc:
                outcome[name] = exc
        return outcome

    def _record(self, version: SourceVersion, outcome: dict[str, Any], record: ReplicationRun,
                ledgers: dict[str, list[LedgerEntry]], now: Callable[[], datetime]) -> bool:
        ok = True
        for name, result in outcome.items():
            if isinstance(result, Exception):
                ok = False
                error = str(result).strip().splitlines()[0] if str(result).strip() else type(result).__name__
                record.failed.append(CopyFailure(key=version.key, version_id=version.version_id, replica=name,
                                                 error=error))
                self.report(f"FAILED {version.key} ({version.version_id}) -> {self.replicas[name].bucket}: {error}")
            else:
                _, _, size, method = result
                ledgers[name].append(version_entry(version, result, copied_at=now()))
                if method == "found":  # copied by a run that died before recording it
                    record.skipped += 1
                    continue
                record.copied += 1
                record.copied_bytes += size
                record.methods[method] = record.methods.get(method, 0) + 1
        return ok

    def copy_version(self, replica: ObjectStore, version: SourceVersion) -> tuple[str, str, int, str]:
        """One version to one replica: server-side when the endpoint takes it, else streamed (a content
        mismatch is retried once); (replica version id, sha256, bytes, method)."""
        if self.server_side and self.source.endpoint == replica.endpoint and version.size <= 5 * 2**30:
            try:
                return (*copy_server_side(self.source, replica, version), "server-side")
            except ServerSideRefused as exc:
                self.server_side = False
                self.report(f"server-side copy refused ({exc}): streaming every copy of this run")
        for attempt in (1, 2):
            try:
                return (*copy_streamed(self.source, replica, version, part_size=self.part_size), "streamed")
            except ContentMismatch as exc:
                if attempt == 2:
                    raise
                self.report(f"{exc}: copying it again")
        raise AssertionError("unreachable")

    def _copy_pass(self, candidates: Iterable[SourceVersion], *, hold_high_water: bool, checkpoint: Checkpoint,
                   record: ReplicationRun, ledgers: dict[str, list[LedgerEntry]], run_id: str,
                   now: Callable[[], datetime], unfinished: dict[str, datetime], seen_this_run: set[str],
                   look_first: bool) -> tuple[dict[str, SourceVersion], int]:
        """Copies the candidates as they come, at most two per worker in flight (memory stays bounded while a
        listing still runs); returns (the keys copied, the deletes seen). With `hold_high_water` (candidates
        in listing order, not by age) the high water moves only once every candidate was seen: a checkpoint
        saved meanwhile must not pass versions the listing has not reached yet."""
        copied_keys: dict[str, SourceVersion] = {}
        deletes = 0
        highest: datetime | None = None
        copied_since_save = 0
        in_flight: dict[Future[dict[str, Any]], SourceVersion] = {}

        def settle(done: Iterable[Future[dict[str, Any]]]) -> None:
            nonlocal highest, copied_since_save
            for future in done:
                version = in_flight.pop(future)
                if self._record(version, future.result(), record, ledgers, now):
                    unfinished.pop(version.version_id)
                    highest = self._done(checkpoint, version, advance=not hold_high_water, highest=highest)
                    copied_keys[version.key] = version
                    copied_since_save += 1
                if copied_since_save >= CHECKPOINT_EVERY:
                    self._save(checkpoint, record, ledgers, run_id, now, unfinished=unfinished)
                    copied_since_save = 0

        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="continuity-copy") as pool:
            for version in candidates:
                seen_this_run.add(version.version_id)
                if version.delete_marker:
                    deletes += 1
                    record.deletes.append(version.key)
                    for name in self.replicas:
                        ledgers[name].append(LedgerEntry(event="delete", key=version.key,
                                                         source_version_id=version.version_id,
                                                         source_last_modified=version.last_modified,
                                                         copied_at=now()))
                    highest = self._done(checkpoint, version, advance=not hold_high_water, highest=highest)
                    continue
                unfinished[version.version_id] = version.last_modified
                in_flight[pool.submit(self._copy_everywhere, version, look_first)] = version
                if len(in_flight) >= 2 * self.workers:
                    settle(wait(in_flight, return_when=FIRST_COMPLETED).done)
            while in_flight:
                settle(wait(in_flight, return_when=FIRST_COMPLETED).done)
        if highest is not None and (checkpoint.high_water is None or highest > checkpoint.high_water):
            checkpoint.high_water = highest
        return copied_keys, deletes

    @staticmethod
    def _done(checkpoint: Checkpoint, version: SourceVersion, *, advance: bool,
              highest: datetime | None) -> datetime | None:
        """Marks the version done; returns the highest Last-Modified done (moved into the checkpoint's high
        water at once when `advance`)."""
        checkpoint.recent[version.version_id] = version.last_modified
        if highest is None or version.last_modified > highest:
            highest = version.last_modified
        if advance and (checkpoint.high_water is None or version.last_modified > checkpoint.high_water):
            checkpoint.high_water = version.last_modified
        return highest

    def _save(self, checkpoint: Checkpoint, record: ReplicationRun, ledgers: dict[str, list[LedgerEntry]],
              run_id: str, now: Callable[[], datetime], *, unfinished: Mapping[str, datetime]) -> None:
        """Ledger lines first, then the checkpoint: a version is never marked done without its ledger line,
        and the high water never passes a version still in flight or failed (the next run lists it again)."""
        if unfinished and checkpoint.high_water is not None:
            checkpoint.high_water = min(checkpoint.high_water, min(unfinished.values()))
        written_at = now()
        for name, entries in ledgers.items():
            if not entries:
                continue
            replica = self.replicas[name]
            key = write_ledger(replica, self.category, entries, name=run_id, now=written_at)
            record.ledger_keys.append(replica.describe(key))
            entries.clear()
        if (horizon := self._since(checkpoint)) is not None:  # the next listing of every version skips these
            checkpoint.recent = {k: v for k, v in checkpoint.recent.items() if v >= horizon}
        checkpoint.updated_at, checkpoint.updated_by = now(), run_id
        save_checkpoint(checkpoint, self.state)

    def _write_heartbeat(self, run_id: str, now: Callable[[], datetime]) -> datetime:
        """A write at the source after this run's listing: the next run's copy of it measures the lag."""
        written = now()
        body = json.dumps({"written_at": written.isoformat(), "run_id": run_id}).encode()
        self.source.client.put_object(Bucket=self.source.bucket, Key=f"{self.source.prefix}{HEARTBEAT_NAME}",
                                      Body=body, ChecksumAlgorithm="SHA256")
        return written

    def _measure_lag(self, record: ReplicationRun, *, rpo_target: timedelta | None,
                     rpo_maximum: timedelta | None) -> bool:
        """The lag of the heartbeat the previous run wrote: from its write at the source to its copy being
        readable in every replica. Returns whether a new heartbeat should be written (always)."""
        key = f"{self.source.prefix}{HEARTBEAT_NAME}"
        arrivals = [read_heartbeat(self.source.prefix, replica) for replica in self.replicas.values()]
        if not arrivals or None in arrivals:
            record.lag_source = "not measured: no heartbeat has reached every replica yet (the first run writes one)"
            self.report(f"{self.category}: replication lag not measured yet (no heartbeat copied so far)")
            return True
        written = min(w for w, _ in arrivals)  # type: ignore[misc]
        readable = max(r for _, r in arrivals)  # type: ignore[misc]
        lag = max(0.0, (readable - written).total_seconds())
        record.lag_seconds = round(lag, 3)
        record.lag_source = (f"heartbeat {key} written at the source {written.isoformat()}, readable in every replica "
                             f"at {readable.isoformat()}")
        verdict = ""
        if rpo_target is not None and rpo_maximum is not None:
            verdict = (" within the RPO target" if lag <= rpo_target.total_seconds() else
                       " over the RPO target, within the maximum" if lag <= rpo_maximum.total_seconds() else
                       " PAST THE RPO MAXIMUM")
            verdict += f" ({format_duration(rpo_target)} / {format_duration(rpo_maximum)})"
            if lag > rpo_maximum.total_seconds():
                record.alarms.append(f"ALARM replication lag of {self.category} is {lag:.0f}s, past the RPO maximum "
                                     f"{format_duration(rpo_maximum)} ({record.lag_source})")
        self.report(f"{self.category}: replication lag {lag:.1f}s{verdict}; {record.lag_source}")
        return True

    # -- protection --
    def protect(self, checkpoint: Checkpoint, *, alarms: list[str]) -> list[str]:
        """Versioning, object lock and lifecycle of every replica as the policy says: applied the first
        time, checked afterwards (a difference is an alarm, never silently overwritten)."""
        sentences = []
        for name, replica in self.replicas.items():
            problems = replica_drift(replica, self.policy, self.category)
            if replica.bucket not in checkpoint.protected:
                if problems:
                    refused = apply_protection(replica, self.policy, self.category)
                    problems = replica_drift(replica, self.policy, self.category) + refused
                if not problems:
                    checkpoint.protected.append(replica.bucket)
                    sentences.append(f"{replica.bucket}: protection applied from the policy and verified")
                    continue
            if problems:
                alarms += [f"ALARM {replica.bucket}: {problem}" for problem in problems]
                sentences.append(f"{replica.bucket}: DRIFT: {'; '.join(problems)}")
            else:
                sentences.append(f"{replica.bucket}: versioning, object lock and lifecycle match the policy")
        for sentence in sentences:
            self.report(sentence)
        return sentences


def lifecycle_rule(policy: ObjectCategory, category: str, prefix: str) -> dict[str, Any]:
    """The replica's lifecycle rule from the category's retention (days, as S3 counts them)."""
    retention = policy.retention
    rule: dict[str, Any] = {"ID": f"continuity-{category}", "Status": "Enabled", "Filter": {"Prefix": prefix},
                            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}
    if not retention.indefinite:
        if retention.archive_class and retention.standard is not None:
            rule["Transitions"] = [{"Days": retention.standard.days, "StorageClass": retention.archive_class}]
            rule["NoncurrentVersionTransitions"] = [{"NoncurrentDays": retention.standard.days,
                                                     "StorageClass": retention.archive_class}]
        end = retention.archive_until or retention.standard
        if end is not None:
            rule["Expiration"] = {"Days": end.days}
            rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": end.days}
    return rule


def _lock_rule(policy: ObjectCategory) -> dict[str, Any] | None:
    if policy.object_lock is None:
        return None
    return {"Mode": policy.object_lock.mode, "Days": policy.object_lock.period.days}


def replica_drift(replica: ObjectStore, policy: ObjectCategory, category: str) -> list[str]:
    """How the replica bucket differs from what the policy asks (empty: it matches)."""
    return [problem for _, problem in _drift(replica, policy, category)]


def _drift(replica: ObjectStore, policy: ObjectCategory, category: str) -> list[tuple[str, str]]:
    """(part, sentence) for each part (versioning, lock, lifecycle) that differs from the policy."""
    problems = []
    client = replica.client
    status = client.get_bucket_versioning(Bucket=replica.bucket).get("Status")
    if status != "Enabled":
        problems.append(("versioning", f"versioning is {status or 'off'}, the policy needs it Enabled"))
    wanted = _lock_rule(policy)
    if wanted is not None:
        try:
            config = client.get_object_lock_configuration(Bucket=replica.bucket)["ObjectLockConfiguration"]
        except Exception:
            config = {}
        retention = config.get("Rule", {}).get("DefaultRetention", {})
        actual = {"Mode": retention.get("Mode"), "Days": retention.get("Days")} if retention else None
        if config.get("ObjectLockEnabled") != "Enabled":
            problems.append(("lock", "object lock is not enabled on the bucket (it is enabled when a bucket is "
                                     "created)"))
        elif actual != wanted:
            problems.append(("lock", f"object lock default retention is {actual or 'none'}, the policy says "
                                     f"{wanted['Mode']} {wanted['Days']} days"))
    rule = lifecycle_rule(policy, category, replica.prefix)
    try:
        rules = client.get_bucket_lifecycle_configuration(Bucket=replica.bucket).get("Rules", [])
    except Exception:
        rules = []
    ours = next((r for r in rules if r.get("ID") == rule["ID"]), None)
    if ours is None:
        problems.append(("lifecycle", f"lifecycle rule {rule['ID']} is missing"))
    else:
        keys = ("Status", "Filter", "Transitions", "NoncurrentVersionTransitions", "Expiration",
                "NoncurrentVersionExpiration", "AbortIncompleteMultipartUpload")
        differing = [k for k in keys if _normal(ours.get(k)) != _normal(rule.get(k))]
        if differing:
            problems.append(("lifecycle", f"lifecycle rule {rule['ID']} differs from the policy in "
                                          f"{', '.join(differing)} (bucket: "
                                          f"{', '.join(f'{k}={ours.get(k)}' for k in differing)})"))
    return problems


def _normal(value: Any) -> Any:
    """Lifecycle values as comparable data (an endpoint may add zero-valued fields)."""
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items() if v not in (0, None, "", [], {}) or k == "Days"}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def apply_protection(replica: ObjectStore, policy: ObjectCategory, category: str) -> list[str]:
    """Set what differs of versioning, the object lock default retention and the lifecycle rule; returns
    what the bucket refused, one sentence each."""
    client, refused = replica.client, []
    parts = {part for part, _ in _drift(replica, policy, category)}

    def attempt(what: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as exc:
            refused.append(f"could not set {what}: {str(exc).strip().splitlines()[0]}")

    if "versioning" in parts:
        attempt("versioning", lambda: client.put_bucket_versioning(Bucket=replica.bucket,
                                                                   VersioningConfiguration={"Status": "Enabled"}))
    wanted = _lock_rule(policy)
    if wanted is not None and "lock" in parts:
        attempt("the object lock default retention", lambda: client.put_object_lock_configuration(
            Bucket=replica.bucket, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled",
                                                            "Rule": {"DefaultRetention": wanted}}))
    if "lifecycle" in parts:
        try:
            rules = client.get_bucket_lifecycle_configuration(Bucket=replica.bucket).get("Rules", [])
        except Exception:
            rules = []
        rule = lifecycle_rule(policy, category, replica.prefix)
        rules = [r for r in rules if r.get("ID") != rule["ID"]] + [rule]
        attempt("the lifecycle rule", lambda: client.put_bucket_lifecycle_configuration(
            Bucket=replica.bucket, LifecycleConfiguration={"Rules": rules}))
    return refused


# -- the ledger: what a replica holds, and when it was current at the source ------------------------
def read_ledger(replica: ObjectStore, category: str) -> Iterator[LedgerEntry]:
    """Every line of the replica's ledger for `category`, in the order the runs wrote them."""
    prefix = f"{INTERNAL_PREFIX}ledger/{category}/"
    paginator = replica.client.get_paginator("list_objects_v2")
    keys = sorted(item["Key"] for page in paginator.paginate(Bucket=replica.bucket, Prefix=prefix)
                  for item in page.get("Contents", []))
    for key in keys:
        body = replica.client.get_object(Bucket=replica.bucket, Key=key)["Body"]
        try:
            for line in body.iter_lines():
                if line.strip():
                    yield LedgerEntry.model_validate_json(line)
        finally:
            body.close()


def current_as_of(entries: Iterator[LedgerEntry], *, as_of: datetime, prefix: str = "") -> dict[str, LedgerEntry]:
    """The version of every key that was current at the source at `as_of` (keys deleted by then, or
    created after, are absent). Continuity's own objects are left out."""
    newest: dict[str, LedgerEntry] = {}
    for entry in entries:
        if not entry.key.startswith(prefix) or is_internal(entry.key, prefix) or entry.source_last_modified > as_of:
            continue
        held = newest.get(entry.key)
        if held is None or (entry.source_last_modified, entry.event == "version") >= \
                (held.source_last_modified, held.event == "version"):
            newest[entry.key] = entry
    return {key: entry for key, entry in newest.items() if entry.event == "version"}


class ObjectRestore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: str
    as_of: datetime
    replica: str
    target: str
    restored: int = 0
    restored_bytes: int = 0
    failed: list[str] = []


def restore_as_of(replica: ObjectStore, category: str, *, as_of: datetime, prefix: str, target: ObjectStore | Path,
                  part_size: int = 8 * 2**20, report: Callable[[str], None] = log.info) -> ObjectRestore:
    """Put back every object as it was at `as_of`, from the replica alone (its ledger and versions), each
    verified against the SHA-256 recorded when it was copied. To a bucket (multipart, aborted on a
    mismatch) or a directory (a temporary file renamed once verified): nothing half-written stays."""
    wanted = current_as_of(read_ledger(replica, category), as_of=as_of, prefix=prefix)
    where = target.describe(target.prefix) if isinstance(target, ObjectStore) else str(target)
    result = ObjectRestore(category=category, as_of=as_of, replica=replica.describe(replica.prefix), target=where)
    report(f"{category}: {len(wanted)} objects were current at {as_of.isoformat()} under {prefix or '(all)'}; "
           f"restoring them from {replica.describe(replica.prefix)} to {where}")
    for key, entry in sorted(wanted.items()):
        version = SourceVersion(key=key, version_id=entry.replica_version_id or "", last_modified=entry.source_last_modified,
                                size=entry.size or 0)
        try:
            if isinstance(target, ObjectStore):
                _, sha, size = copy_streamed(replica, target, version, part_size=part_size, expected_sha256=entry.sha256,
                                             key=f"{target.prefix}{key}")
            else:
                sha, size = _download_verified(replica, version, target / key, expected_sha256=entry.sha256)
        except Exception as exc:
            result.failed.append(f"{key}: {str(exc).strip().splitlines()[0]}")
            report(f"FAILED {key}: {exc}")
            continue
        result.restored += 1
        result.restored_bytes += size
    report(f"{category}: restored {result.restored} objects ({result.restored_bytes / 2**20:.1f} MiB), "
           f"{len(result.failed)} failed")
    return result


def _download_verified(replica: ObjectStore, version: SourceVersion, path: Path, *,
                       expected_sha256: str | None) -> tuple[str, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    digest, size = hashlib.sha256(), 0
    body = replica.client.get_object(Bucket=replica.bucket, Key=version.key, VersionId=version.version_id)["Body"]
    try:
        with open(partial, "wb") as handle:
            for chunk in body.iter_chunks(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                handle.write(chunk)
        if expected_sha256 and digest.hexdigest() != expected_sha256:
            raise ContentMismatch(f"{version.key}: the replica's copy has another SHA-256 than the one recorded "
                                  f"when it was copied")
        # Renamed only once complete and verified: a file under its final name is always whole.
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        body.close()
    return digest.hexdigest(), size


# -- inventory: does every replica hold every current source version? -----------------------------------
class Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: str
    replica: str
    source_objects: int | None = None
    source_versions: int | None = None
    replica_versions: int = 0
    missing: list[str] = []
    different: list[str] = []
    deep_verified: int = 0
    repaired: list[str] = []
    unrepaired: list[str] = []  # with repair: what could not be copied again
    source_error: str | None = None
    lag_seconds: float | None = None
    lag_source: str = "not measured"


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


def inventory(replicator: Replicator, *, deep_sample: int = 0, seed: str = "", repair: bool = False) -> list[Inventory]:
    """Compare every current source version with each replica: present (its ledger line, the replica
    version) and the same size; download `deep_sample` of them to check the SHA-256; with `repair`,
    copy again what is missing or different."""
    import random

    results = []
    try:
        versions = [v for v in list_versions(replicator.source, since=None)
                    if not v.delete_marker and not is_internal(v.key, replicator.source.prefix)]
        current, every, source_error = [v for v in versions if v.latest], len(versions), None
    except Exception as exc:
        current, every, source_error = [], None, f"source unreachable: {str(exc).strip().splitlines()[0]}"
    for name, replica in replicator.replicas.items():
        ledger = {e.source_version_id: e for e in read_ledger(replica, replicator.category) if e.event == "version"}
        found = Inventory(category=replicator.category, replica=replica.describe(replica.prefix),
                          source_objects=None if source_error else len(current),
                          source_versions=every, replica_versions=len(ledger), source_error=source_error)
        found.lag_seconds, found.lag_source = heartbeat_lag(replicator.source.prefix, replica)
        present: list[tuple[SourceVersion, LedgerEntry]] = []
        needs_copy: list[SourceVersion] = []
        for version in current:
            entry = ledger.get(version.version_id)
            label = f"{version.key} ({version.version_id})"
            if entry is None:
                found.missing.append(label)
                needs_copy.append(version)
                continue
            try:
                head = replica.client.head_object(Bucket=replica.bucket, Key=version.key, VersionId=entry.replica_version_id)
            except Exception:
                found.missing.append(label)
                needs_copy.append(version)
                continue
            if head["ContentLength"] != version.size or entry.size != version.size:
                found.different.append(f"{label}: {head['ContentLength']} bytes in the replica, {version.size} at the source")
                needs_copy.append(version)
                continue
            present.append((version, entry))
        for version, entry in random.Random(f"{seed}:{name}").sample(present, min(deep_sample, len(present))):
            body = replica.client.get_object(Bucket=replica.bucket, Key=version.key,
                                             VersionId=entry.replica_version_id)["Body"]
            digest = hashlib.sha256()
            for chunk in body.iter_chunks(1 << 20):
                digest.update(chunk)
            found.deep_verified += 1
            if digest.hexdigest() != entry.sha256:
                found.different.append(f"{version.key} ({version.version_id}): the replica's content is not the "
                                       f"SHA-256 recorded at copy time")
                needs_copy.append(version)
        if repair and needs_copy:
            entries: list[LedgerEntry] = []
            for version in needs_copy:
                try:
                    copy = replicator.copy_version(replica, version)
                except Exception as exc:
                    replicator.report(f"FAILED to repair {version.key}: {exc}")
                    found.unrepaired.append(f"{version.key} ({version.version_id}): {exc}")
                    continue
                entries.append(version_entry(version, copy, copied_at=datetime.now(timezone.utc)))
                found.repaired.append(f"{version.key} ({version.version_id})")
            if entries:
                write_ledger(replica, replicator.category, entries, name="repair", now=datetime.now(timezone.utc))
        replicator.report(f"{replicator.category} -> {replica.bucket}: {found.source_objects} current objects, "
                          f"{len(found.missing)} missing, {len(found.different)} different, {found.deep_verified} "
                          f"deep-verified, {len(found.repaired)} repaired; lag {found.lag_seconds}s ({found.lag_source})")
        results.append(found)
    return results


# -- database <-> objects ------------------------------------------------------------------------------
class Consistency(BaseModel):
    """Whether every object a database state references is in a replica (as of a time), the same size
    and SHA-256 as the row says; and the replica's objects no row references (orphans)."""

    model_config = ConfigDict(extra="forbid")

    category: str
    replica: str
    database: str
    as_of: datetime
    referenced: int = 0
    present: int = 0
    missing: list[str] = []
    mismatched: list[str] = []
    # Rows written after the newest source version the replica holds: not yet due for a copy (RPO exposure).
    pending: list[str] = []
    replicated_through: datetime | None = None
    # Objects the replica's own region wrote (its application, after a failover): present, not in the ledger.
    written_in_region: int = 0
    orphans: int = 0
    orphan_sample: list[str] = []

    @property
    def consistent(self) -> bool:
        return self.referenced > 0 and not self.missing and not self.mismatched


MAX_DIRECT_LOOKUPS = 1000  # HEAD requests for keys the ledger does not know, per check (bounded time)


def _written_in_replica_region(replica: ObjectStore, key: str, size: int | None, lookups: list[int]) -> bool:
    """Whether the replica bucket holds `key` although no replication copied it (written there directly,
    e.g. by the DR region's application after a failover), with the row's size when it has one."""
    if lookups[0] >= MAX_DIRECT_LOOKUPS:
        return False
    lookups[0] += 1
    try:
        head = replica.client.head_object(Bucket=replica.bucket, Key=key)
    except Exception:  # absent (404) or unreadable: not proven present
        return False
    return size is None or head.get("ContentLength") == size


def check_consistency(rows: Iterable[tuple[Any, ...]], *, replica: ObjectStore, category: str,
                      prefix: str, database: str, as_of: datetime, report: Callable[[str], None] = log.info,
                      sample: int = 20) -> Consistency:
    """`rows`: (key, size or None, sha256 or None[, written_at or None]) for every object the database
    references. A row written after the newest source version the replica holds is `pending` (its copy is
    not due yet: the category's RPO exposure); an older row whose object is absent is `missing`."""
    held = current_as_of(read_ledger(replica, category), as_of=as_of, prefix=prefix)
    through = max((e.source_last_modified for e in held.values()), default=None)
    result = Consistency(category=category, replica=replica.describe(replica.prefix), database=database, as_of=as_of,
                         replicated_through=through)
    referenced: set[str] = set()
    lookups = [0]
    for key, size, sha, *rest in rows:
        written = rest[0] if rest else None
        referenced.add(key)
        result.referenced += 1
        entry = held.get(key)
        if entry is None and _written_in_replica_region(replica, key, size, lookups):
            result.present += 1
            result.written_in_region += 1
        elif entry is None and written is not None and through is not None and written > through:
            result.pending.append(key)
        elif entry is None:
            result.missing.append(key)
        elif (size is not None and entry.size != size) or (sha and entry.sha256 and entry.sha256 != sha):
            result.mismatched.append(f"{key}: the row says {size} bytes / {str(sha)[:12]}…, the replica holds "
                                     f"{entry.size} bytes / {str(entry.sha256)[:12]}…")
        else:
            result.present += 1
    orphans = sorted(set(held) - referenced)
    result.orphans, result.orphan_sample = len(orphans), orphans[:sample]
    report(f"{category}: {result.present} of {result.referenced} objects referenced by {database} are in "
           f"{result.replica} as of {as_of.isoformat()}; {len(result.missing)} missing"
           + (f" (first: {', '.join(result.missing[:5])})" if result.missing else "")
           + f", {len(result.mismatched)} different"
           + (f", {len(result.pending)} written after {through.isoformat()} (the newest version copied) and not yet "
              f"due" if result.pending and through else "")
           + (f", {result.written_in_region} written in {replica.region} directly" if result.written_in_region else "")
           + f", {result.orphans} not referenced by any row")
    return result


# -- fail back ---------------------------------------------------------------------------------------
class FailBack(BaseModel):
    """Objects the recovery region's application wrote while it served, copied home before it serves from
    home again (a switch back): without them, rows written meanwhile would name objects home does not have."""

    model_config = ConfigDict(extra="forbid")

    category: str
    written_in: str
    home: str
    since: datetime | None  # None: every version was looked at
    copied: list[str] = []
    already_home: int = 0
    failed: list[str] = []


def fail_back(*, category: str, written: ObjectStore, home: ObjectStore, since: datetime | None, part_size: int,
              report: Callable[[str], None] = log.info) -> FailBack:
    """Copy every current version `written` gained since `since` that replication did not put there (no
    source-version metadata) to `home`, verified by SHA-256. Idempotent: a version already copied home
    (its version id in the home object's metadata) is skipped, so it runs before and after the switch."""
    result = FailBack(category=category, written_in=written.describe(written.prefix), home=home.describe(home.prefix),
                      since=since)
    for version in list_versions(written, since=since):
        if version.delete_marker or not version.latest or is_internal(version.key, written.prefix):
            continue
        try:
            head = written.client.head_object(Bucket=written.bucket, Key=version.key, VersionId=version.version_id)
            if head.get("Metadata", {}).get(METADATA_SOURCE_VERSION):
                continue  # a copy replication made: home has the original
            try:
                home_head = home.client.head_object(Bucket=home.bucket, Key=version.key)
                if home_head.get("Metadata", {}).get(METADATA_SOURCE_VERSION) == version.version_id:
                    result.already_home += 1
                    continue
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    raise
            copy_streamed(written, home, version, part_size=part_size)
            result.copied.append(version.key)
        except Exception as exc:  # the others still go home; the caller fails on any
            result.failed.append(f"{version.key}: {type(exc).__name__}: {exc}")
    report(f"{category}: {len(result.copied)} objects written in {result.written_in} since "
           f"{since.isoformat() if since else 'ever'} "
           f"copied home to {result.home} (SHA-256 verified), {result.already_home} already there, "
           f"{len(result.failed)} failed" + (f" (first: {result.failed[0]})" if result.failed else ""))
    return result


def missing_from(store: ObjectStore, keys: Iterable[tuple[str, int | None]]) -> list[str]:
    """The keys (with the size a row records, or None) `store` does not hold as recorded."""
    missing = []
    for key, size in keys:
        try:
            head = store.client.head_object(Bucket=store.bucket, Key=key)
            if size is not None and head["ContentLength"] != size:
                missing.append(f"{key} ({head['ContentLength']} bytes, the row says {size})")
        except botocore.exceptions.ClientError:
            missing.append(key)
    return missing


# -- staleness -------------------------------------------------------------------------------------
def stale_object_categories(policy: Policy, checkpoints: Mapping[str, Checkpoint], *,
                            now: datetime | None = None) -> list[str]:
    """Object categories whose last complete replication run started longer ago than their RPO maximum."""
    now = now or datetime.now(timezone.utc)
    alarms = []
    for name in (policy.objects.categories if policy.objects else {}):
        maximum = policy.data_categories[name].rpo.maximum
        complete = checkpoints[name].complete_at if name in checkpoints else None
        if complete is None:
            alarms.append(f"object category {name}: never replicated completely (RPO maximum "
                          f"{format_duration(maximum)}; see dr_object_replication)")
        elif now - complete > maximum:
            alarms.append(f"object category {name}: the last complete replication started "
                          f"{format_duration(now - complete)} ago, over its RPO maximum of {format_duration(maximum)}")
    return alarms


# -- wiring ----------------------------------------------------------------------------------------
def replicator_for(policy: Policy, category: str, *, client_for: Callable[[str, str], Any],
                   state: Mapping[str, StorageLocation], report: Callable[[str], None] = log.info) -> Replicator:
    """The category's replicator; `client_for(conn_id, region)` gives an S3 client."""
    if policy.objects is None or category not in policy.objects.categories:
        known = sorted(policy.objects.categories) if policy.objects else []
        raise ValueError(f"no object category {category!r} in the policy's objects section (known: {known})")
    spec = policy.objects.categories[category]

    def store(bucket: Any) -> ObjectStore:
        return ObjectStore.for_bucket(bucket, client_for)

    return Replicator(category=category, policy=spec, source=store(spec.source),
                      replicas={f"{r.region}:{r.bucket}": store(r) for r in spec.replicas}, state=state,
                      part_size=policy.objects.part_size, workers=policy.objects.copy_workers, report=report,
                      every_version_listing=policy.objects.every_version_listing)


def replicas_in(policy: Policy, region: str, *, client_for: Callable[[str, str], Any]) -> dict[str, tuple[ObjectStore, str]]:
    """Each object category's replica in `region` (a drill's or restore test's region), with the source's
    prefix (where the heartbeat is named): {category: (replica store, source prefix)}."""
    found = {}
    for name, category in (policy.objects.categories.items() if policy.objects else []):
        for bucket in category.replicas:
            if bucket.region == region:
                found[name] = (ObjectStore.for_bucket(bucket, client_for), category.source.prefix)
                break
    return found


def run_record_key(record: ReplicationRun) -> str:
    return f"objects/{record.category}/runs/{record.started_at:%Y%m%dT%H%M%SZ}-{key_safe(record.run_id)}.json"


def store_run_record(record: ReplicationRun, state: Mapping[str, StorageLocation]) -> list[str]:
    data = record.model_dump_json(indent=2).encode()
    written = []
    for location in state.values():
        location.put_bytes(run_record_key(record), data)
        written.append(location.describe(run_record_key(record)))
    return written

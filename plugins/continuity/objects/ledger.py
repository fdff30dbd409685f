"""The replica's records: the ledger (which replica version held which source version from when), the checkpoint and the run record."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict

from continuity.storage.locations import StorageError, StorageLocation, key_safe

log = logging.getLogger(__name__)
from continuity.objects.store import INTERNAL_PREFIX, ObjectStore, ReplicationError, SourceVersion, is_internal




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

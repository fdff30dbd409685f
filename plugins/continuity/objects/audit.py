"""Auditing the replicas: inventory against the source, the heartbeat's lag, and database <-> object consistency."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict


log = logging.getLogger(__name__)
from continuity.objects.ledger import LedgerEntry, current_as_of, read_ledger, version_entry, write_ledger
from continuity.objects.replication import Replicator
from continuity.objects.store import ObjectStore, SourceVersion, heartbeat_lag, is_internal, list_versions




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

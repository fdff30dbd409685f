"""Getting objects back: point-in-time restore from the ledger, and carrying what the DR region wrote home (fail back)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

import botocore.exceptions
from pydantic import BaseModel, ConfigDict


log = logging.getLogger(__name__)
from continuity.objects.copying import ContentMismatch, copy_streamed
from continuity.objects.ledger import current_as_of, read_ledger
from continuity.objects.store import METADATA_SOURCE_VERSION, ObjectStore, SourceVersion, is_internal, list_versions




# -- the ledger: what a replica holds, and when it was current at the source ------------------------
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

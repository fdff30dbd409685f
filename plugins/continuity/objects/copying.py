"""Copying one object version to a replica, streamed or server-side, verified by SHA-256."""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Mapping
from typing import Any


from continuity.storage.locations import b64, composite_sha256

log = logging.getLogger(__name__)
from continuity.objects.store import (METADATA_SHA256, METADATA_SOURCE_MODIFIED, METADATA_SOURCE_VERSION, ObjectStore,
                                      SourceVersion)




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

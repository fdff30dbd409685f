"""Storage locations behind one interface: `s3` (any S3 endpoint via boto3) and `file`.

The guarantee every backup relies on: nothing half-written is ever visible under a final name.
S3 writes are multipart uploads completed only on commit and aborted on any failure; file writes
go to a temporary name, are fsynced, then renamed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024  # S3 multipart part size; the per-location write buffer


class StorageError(Exception):
    """A location failed; the message names the location, and the key when there is one."""


class PreconditionFailed(StorageError):
    """A conditional write or delete found another state than expected (another writer got there first)."""


class StorageUnreachable(StorageError):
    """The location could not be reached at all (no connection, a timeout): its region's storage may be gone,
    as opposed to a location that answered with a refusal."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    metadata: dict[str, str] = field(default_factory=dict)
    checksum: str | None = None  # what the location reports without reading: S3 ETag, or our SHA-256 for files


class ObjectWriter(Protocol):
    # After commit: the SHA-256 (hex) of the whole object when the storage itself checked what it stored
    # against our checksums as it was written (S3 additional checksums of every part); None when it did
    # not, and the caller reads the object back instead.
    stored_sha256: str | None

    def write(self, data: bytes) -> None: ...
    def commit(self) -> str: ...  # the stored object's checksum (see ObjectInfo.checksum)
    def abort(self) -> None: ...


# Conditions of writes and deletes. Backups never overwrite and never delete what another writer
# committed, so every write of a final name says what it expects to find there:
#   exclusive=True       -> the key must not exist (S3 If-None-Match: *; files: a no-clobber link);
#   if_checksum="<sum>"  -> the key must still hold that object (S3 If-Match on the ETag).
# A failed condition raises PreconditionFailed and changes nothing.


class StorageLocation(Protocol):
    name: str
    region: str

    def describe(self, key: str = "") -> str: ...
    def open_writer(self, key: str, *, metadata: dict[str, str] | None = None,
                    exclusive: bool = False) -> ObjectWriter: ...
    def open_reader(self, key: str) -> BinaryIO: ...
    def head(self, key: str) -> ObjectInfo | None: ...
    # Keys in key order; `start_after` skips to the keys after it (S3 StartAfter), so a caller that knows
    # where its interest starts pays for no page before it.
    def list(self, prefix: str, *, start_after: str | None = None) -> Iterator[str]: ...
    def list_info(self, prefix: str, *, start_after: str | None = None) -> Iterator[ObjectInfo]: ...
    def delete(self, key: str, *, if_checksum: str | None = None) -> None: ...
    def put_bytes(self, key: str, data: bytes, *, metadata: dict[str, str] | None = None,
                  exclusive: bool = False, if_checksum: str | None = None) -> str: ...
    def get_bytes(self, key: str) -> bytes: ...
    def copy_from(self, other: StorageLocation, key: str) -> None: ...


def key_safe(text: str) -> str:
    """A run id (or any text) as one storage key segment: what is not [A-Za-z0-9._-] becomes '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def stored_documents(locations: Sequence[StorageLocation], prefix: str) -> list[dict[str, Any]]:
    """The JSON documents under `prefix` (reports, audits) of the first location that can list them:
    records are written to every required location, so one that answers has them all."""
    for location in locations:
        try:
            keys = [k for k in location.list(prefix) if k.endswith(".json")]
            return [json.loads(location.get_bytes(key)) for key in sorted(keys)]
        except Exception as exc:  # unreachable, or unreadable: the next location holds the same records
            log.warning("cannot read %s: %s", location.describe(prefix), exc)
    return []


def _is_precondition_failure(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    return response.get("Error", {}).get("Code") in ("PreconditionFailed", "412") \
        or response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412


def _is_unreachable(exc: Exception) -> bool:
    """botocore's connection-level failures (refused, reset, timed out): no answer from the endpoint."""
    from botocore.exceptions import ConnectionError as EndpointUnreachable, HTTPClientError

    return isinstance(exc, (EndpointUnreachable, HTTPClientError))


def b64(digest: bytes) -> str:
    """A digest as S3's checksum headers carry it."""
    return base64.b64encode(digest).decode()


def composite_sha256(part_digests: list[bytes]) -> str:
    """S3's checksum of a multipart object: the SHA-256 of its parts' SHA-256s, then -N."""
    return f"{b64(hashlib.sha256(b''.join(part_digests)).digest())}-{len(part_digests)}"


def read_back_sha256(location: StorageLocation, key: str) -> tuple[int, str]:
    """Stream an object back and hash it: the proof that what is stored is what was sent."""
    sha = hashlib.sha256()
    size = 0
    with location.open_reader(key) as stream:
        while block := stream.read(1024 * 1024):
            sha.update(block)
            size += len(block)
    return size, sha.hexdigest()


def streamed_copy(source: StorageLocation, target: StorageLocation, key: str) -> None:
    """Copy one object through this process, a part at a time (any kinds of location)."""
    info = source.head(key)
    writer = target.open_writer(key, metadata=info.metadata if info else None)
    try:
        with source.open_reader(key) as stream:
            while block := stream.read(PART_SIZE):
                writer.write(block)
        writer.commit()
    except BaseException:
        writer.abort()
        raise


# -- S3 --------------------------------------------------------------------------------------
class S3Location:
    """A bucket (and prefix) through a boto3 S3 client: AWS, or any endpoint_url (moto, MinIO)."""

    def __init__(self, *, name: str, region: str, client: Any, bucket: str, prefix: str = "",
                 storage_class: str = "STANDARD", server_side_encryption: str | None = None) -> None:
        self.name = name
        self.region = region
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.storage_class = storage_class
        self.server_side_encryption = server_side_encryption

    def describe(self, key: str = "") -> str:
        return f"location {self.name} (s3://{self.bucket}/{self.prefix}{key})"

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _put_args(self, metadata: dict[str, str] | None) -> dict[str, Any]:
        args: dict[str, Any] = {"Metadata": metadata or {}}
        if self.storage_class and self.storage_class != "STANDARD":
            args["StorageClass"] = self.storage_class
        if self.server_side_encryption:
            args["ServerSideEncryption"] = self.server_side_encryption
        return args

    def _fail(self, action: str, key: str, exc: Exception) -> StorageError:
        if _is_precondition_failure(exc):
            return PreconditionFailed(f"{self.describe(key)}: {action} refused: the object is not in the state "
                                      f"this writer expected (another writer changed it first)")
        if _is_unreachable(exc):
            return StorageUnreachable(f"{self.describe(key)}: {action} failed: {type(exc).__name__}: {exc}")
        return StorageError(f"{self.describe(key)}: {action} failed: {type(exc).__name__}: {exc}")

    @staticmethod
    def _conditions(exclusive: bool, if_checksum: str | None) -> dict[str, str]:
        if exclusive:
            return {"IfNoneMatch": "*"}
        if if_checksum:
            return {"IfMatch": f'"{if_checksum}"'}
        return {}

    def open_writer(self, key: str, *, metadata: dict[str, str] | None = None,
                    exclusive: bool = False) -> ObjectWriter:
        return _S3Writer(self, key, metadata, exclusive=exclusive)

    def open_reader(self, key: str) -> BinaryIO:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except Exception as exc:
            raise self._fail("read", key, exc) from exc
        return _S3Reader(self, key, body)  # type: ignore[return-value]

    def head(self, key: str) -> ObjectInfo | None:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail("head", key, exc) from exc
        except Exception as exc:
            raise self._fail("head", key, exc) from exc
        return ObjectInfo(key=key, size=response["ContentLength"], metadata=response.get("Metadata", {}),
                          checksum=response.get("ETag", "").strip('"') or None)

    def list(self, prefix: str, *, start_after: str | None = None) -> Iterator[str]:
        for info in self.list_info(prefix, start_after=start_after):
            yield info.key

    def list_info(self, prefix: str, *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Key, size and ETag of each object, from the listing alone (no HEAD)."""
        extra = {"StartAfter": self._key(start_after)} if start_after else {}
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix), **extra):
                for item in page.get("Contents", []):
                    yield ObjectInfo(key=item["Key"][len(self.prefix):], size=item["Size"],
                                     checksum=item.get("ETag", "").strip('"') or None)
        except Exception as exc:
            raise self._fail("list", prefix, exc) from exc

    def delete(self, key: str, *, if_checksum: str | None = None) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key), **self._conditions(False, if_checksum))
        except Exception as exc:
            raise self._fail("delete", key, exc) from exc

    def put_bytes(self, key: str, data: bytes, *, metadata: dict[str, str] | None = None,
                  exclusive: bool = False, if_checksum: str | None = None) -> str:
        try:
            response = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                              **self._put_args(metadata), **self._conditions(exclusive, if_checksum))
        except Exception as exc:
            raise self._fail("write", key, exc) from exc
        return response["ETag"].strip('"')

    def get_bytes(self, key: str) -> bytes:
        with self.open_reader(key) as body:
            return body.read()

    def copy_from(self, other: StorageLocation, key: str) -> None:
        """Server-side copy when both are buckets of one endpoint; otherwise a streamed copy."""
        if isinstance(other, S3Location) and other.client.meta.endpoint_url == self.client.meta.endpoint_url:
            try:
                self.client.copy({"Bucket": other.bucket, "Key": other._key(key)}, self.bucket, self._key(key),
                                 ExtraArgs={**self._put_args(None), "MetadataDirective": "COPY"})
                return
            except Exception as exc:
                raise self._fail(f"server-side copy from {other.name}", key, exc) from exc
        streamed_copy(other, self, key)


class _S3Reader:
    """A response body whose mid-stream failures (reset, timeout, short read) are StorageErrors,
    so callers fall back to another location instead of dying on a botocore exception."""

    def __init__(self, location: S3Location, key: str, body: Any) -> None:
        self.location = location
        self.key = key
        self.body = body

    def read(self, size: int = -1) -> bytes:
        try:
            return self.body.read(size if size >= 0 else None)
        except Exception as exc:
            raise self.location._fail("read", self.key, exc) from exc

    def close(self) -> None:
        self.body.close()

    def __enter__(self) -> _S3Reader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _S3Writer:
    """A multipart upload: invisible until commit(), aborted on abort() or any failure."""

    def __init__(self, location: S3Location, key: str, metadata: dict[str, str] | None, *, exclusive: bool) -> None:
        self.location = location
        self.key = key
        self.metadata = metadata
        self.exclusive = exclusive
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.digests: list[bytes] = []
        self.whole = hashlib.sha256()
        self.stored_sha256: str | None = None
        self.closed = False

    def write(self, data: bytes) -> None:
        self.whole.update(data)
        self.buffer += data
        while len(self.buffer) >= PART_SIZE:
            part = bytes(self.buffer[:PART_SIZE])
            del self.buffer[:PART_SIZE]
            self._upload_part(part)

    def _upload_part(self, part: bytes) -> None:
        loc = self.location
        try:
            if self.upload_id is None:
                self.upload_id = loc.client.create_multipart_upload(
                    Bucket=loc.bucket, Key=loc._key(self.key), ChecksumAlgorithm="SHA256",
                    **loc._put_args(self.metadata))["UploadId"]
            number = len(self.parts) + 1
            digest = hashlib.sha256(part).digest()
            # The endpoint refuses a part whose SHA-256 is not the one sent: a corrupted part never lands.
            response = loc.client.upload_part(Bucket=loc.bucket, Key=loc._key(self.key), UploadId=self.upload_id,
                                              PartNumber=number, Body=part, ChecksumAlgorithm="SHA256",
                                              ChecksumSHA256=b64(digest))
            self.parts.append({"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": b64(digest)})
            self.digests.append(digest)
        except Exception as exc:
            self.abort()
            raise loc._fail(f"upload of part {len(self.parts) + 1}", self.key, exc) from exc

    def commit(self) -> str:
        loc = self.location
        if self.upload_id is None:
            body = bytes(self.buffer)
            checksum = b64(hashlib.sha256(body).digest())
            try:
                response = loc.client.put_object(Bucket=loc.bucket, Key=loc._key(self.key), Body=body,
                                                 ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum,
                                                 **loc._put_args(self.metadata),
                                                 **loc._conditions(self.exclusive, None))
            except Exception as exc:
                raise loc._fail("write", self.key, exc) from exc
            self.closed = True
            if response.get("ChecksumSHA256") == checksum:
                self.stored_sha256 = self.whole.hexdigest()
            return response["ETag"].strip('"')
        if self.buffer:
            self._upload_part(bytes(self.buffer))
            self.buffer.clear()
        try:
            response = loc.client.complete_multipart_upload(Bucket=loc.bucket, Key=loc._key(self.key),
                                                            UploadId=self.upload_id, MultipartUpload={"Parts": self.parts},
                                                            **loc._conditions(self.exclusive, None))
        except Exception as exc:
            self.abort()
            raise loc._fail("completing the upload", self.key, exc) from exc
        self.closed = True
        composite = composite_sha256(self.digests).split("-")[0]
        stored = response.get("ChecksumSHA256")
        if not stored:  # some endpoints (moto) give the composite checksum only when asked for it
            try:
                version = {"VersionId": response["VersionId"]} if response.get("VersionId") not in (None, "null") else {}
                stored = loc.client.head_object(Bucket=loc.bucket, Key=loc._key(self.key), ChecksumMode="ENABLED",
                                                **version).get("ChecksumSHA256")
            except Exception:
                stored = None  # not proven here: the caller reads the object back
        if (stored or "").split("-")[0] == composite:
            # Every part checked by the endpoint against its SHA-256, the object their concatenation: the
            # whole stream's SHA-256 is the stored object's.
            self.stored_sha256 = self.whole.hexdigest()
        return response["ETag"].strip('"')

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.buffer.clear()
        if self.upload_id is not None:
            try:
                self.location.client.abort_multipart_upload(Bucket=self.location.bucket,
                                                            Key=self.location._key(self.key), UploadId=self.upload_id)
            except Exception:  # the endpoint may be the thing that failed; its lifecycle rule cleans up
                pass


# -- file ------------------------------------------------------------------------------------
class FileLocation:
    """A directory. Metadata lives beside each object in `<name>.meta` (written before the rename)."""

    def __init__(self, *, name: str, region: str, path: Path) -> None:
        self.name = name
        self.region = region
        self.root = Path(path)

    def describe(self, key: str = "") -> str:
        return f"location {self.name} ({self.root / key})"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise StorageError(f"{self.describe(key)}: key escapes the location")
        return path

    def open_writer(self, key: str, *, metadata: dict[str, str] | None = None,
                    exclusive: bool = False) -> ObjectWriter:
        return _FileWriter(self, key, metadata or {}, exclusive=exclusive)

    def open_reader(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except OSError as exc:
            raise StorageError(f"{self.describe(key)}: read failed: {exc.strerror}") from exc

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        meta_path = path.with_name(path.name + ".meta")
        metadata: dict[str, str] = {}
        if meta_path.exists():
            metadata = json.loads(meta_path.read_text())
        return ObjectInfo(key=key, size=path.stat().st_size, metadata=metadata, checksum=metadata.pop("sha256", None))

    def list(self, prefix: str, *, start_after: str | None = None) -> Iterator[str]:
        if not self.root.is_dir():
            raise StorageError(f"{self.describe()}: not a directory")
        # Walk only the directory the prefix names (a prefix ending mid-name walks its parent).
        base = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        keys = []
        for path in base.rglob("*") if base.is_dir() else ():
            if path.is_file() and not path.name.endswith((".meta", ".tmp")) and not path.name.startswith("."):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix) and (start_after is None or key > start_after):
                    keys.append(key)
        yield from sorted(keys)

    def list_info(self, prefix: str, *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        for key in self.list(prefix, start_after=start_after):
            info = self.head(key)
            if info is not None:  # deleted since it was listed
                yield info

    def _check_holds(self, key: str, checksum: str, action: str) -> None:
        info = self.head(key)
        if info is None or info.checksum != checksum:
            raise PreconditionFailed(f"{self.describe(key)}: {action} refused: the object is not in the state this "
                                     f"writer expected (another writer changed it first)")

    def delete(self, key: str, *, if_checksum: str | None = None) -> None:
        path = self._path(key)
        if if_checksum is not None:
            self._check_holds(key, if_checksum, "delete")
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".meta").unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes, *, metadata: dict[str, str] | None = None,
                  exclusive: bool = False, if_checksum: str | None = None) -> str:
        if if_checksum is not None:
            self._check_holds(key, if_checksum, "write")
        writer = self.open_writer(key, metadata=metadata, exclusive=exclusive)
        try:
            writer.write(data)
            return writer.commit()
        except BaseException:
            writer.abort()
            raise

    def get_bytes(self, key: str) -> bytes:
        with self.open_reader(key) as handle:
            return handle.read()

    def copy_from(self, other: StorageLocation, key: str) -> None:
        streamed_copy(other, self, key)


class _FileWriter:
    def __init__(self, location: FileLocation, key: str, metadata: dict[str, str], *, exclusive: bool) -> None:
        self.location = location
        self.key = key
        self.metadata = metadata
        self.exclusive = exclusive
        self.final = location._path(key)
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = self.final.with_name(f".{self.final.name}.{secrets.token_hex(4)}.tmp")
            self.handle = open(self.tmp, "xb")
        except OSError as exc:
            raise StorageError(f"{location.describe(key)}: cannot create: {exc.strerror}") from exc
        self.closed = False
        self.sha = hashlib.sha256()
        # A file is hashed as it is written and fsynced: reading it back would come from the page cache,
        # the same bytes, and prove nothing more.
        self.stored_sha256: str | None = None

    def write(self, data: bytes) -> None:
        try:
            self.sha.update(data)
            self.handle.write(data)
        except OSError as exc:
            self.abort()
            raise StorageError(f"{self.location.describe(self.key)}: write failed: {exc.strerror}") from exc

    def commit(self) -> str:
        checksum = self.sha.hexdigest()
        self.stored_sha256 = checksum
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            meta = self.final.with_name(self.final.name + ".meta")
            if self.exclusive:
                # link() refuses an existing name, so a concurrent writer's object is never replaced.
                try:
                    os.link(self.tmp, self.final)
                except FileExistsError:
                    self.abort()
                    raise PreconditionFailed(f"{self.location.describe(self.key)}: write refused: the object "
                                             f"already exists (another writer committed it first)") from None
                self.tmp.unlink()
                meta_tmp = meta.with_name(f".{meta.name}.{secrets.token_hex(4)}.tmp")
                meta_tmp.write_text(json.dumps({**self.metadata, "sha256": checksum}))
                os.replace(meta_tmp, meta)
            else:
                meta.write_text(json.dumps({**self.metadata, "sha256": checksum}))
                os.replace(self.tmp, self.final)
            dir_fd = os.open(self.final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            self.abort()
            raise StorageError(f"{self.location.describe(self.key)}: commit failed: {exc.strerror}") from exc
        self.closed = True
        return checksum

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.handle.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def locations_from_policy(policy: Any, client_for: Any, *, base_dir: Path | None = None) -> dict[str, StorageLocation]:
    """The policy's locations as storage objects; `client_for(location)` returns a boto3 S3 client."""
    built: dict[str, StorageLocation] = {}
    for location in policy.storage.locations:
        if location.kind == "s3":
            built[location.name] = S3Location(name=location.name, region=location.region,
                                              client=client_for(location), bucket=location.bucket,
                                              prefix=location.prefix, storage_class=location.storage_class,
                                              server_side_encryption=location.server_side_encryption)
        else:
            path = Path(location.path)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            built[location.name] = FileLocation(name=location.name, region=location.region, path=path)
    return built

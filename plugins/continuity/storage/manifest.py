"""Backup manifests: one JSON document per backup, authenticated, stored beside the data everywhere.

The MAC key is derived (HKDF) from the backup's own data key, so checking a manifest needs the
KEK that unwraps it: an edited manifest, or one whose wrapped key was swapped, is rejected.
Key rotation re-wraps the data key and re-MACs with the same derived key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field

from continuity.storage.archive import IntegrityError
from continuity.storage.keys import Keyring, WrappedKey
from continuity.policy.kinds import Kind

MANIFEST_FORMAT = "continuity-manifest/1"
# WAL backups, and only they, have ids starting with this (`wal-<WAL file name>`): the catalog lists them,
# or everything but them, by key prefix without reading a manifest of the other kinds.
WAL_ID_PREFIX = "wal-"


class LocationCopy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    stored_bytes: int
    checksum: str | None = None  # the location's own checksum of the object (S3 ETag, file SHA-256)
    verified_at: datetime | None = None
    verify_result: str | None = None
    verify_depth: Literal["shallow", "deep"] | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["continuity-manifest/1"] = MANIFEST_FORMAT
    backup_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
    kind: Kind
    label: str | None = None
    source: dict[str, Any] = {}
    started_at: datetime
    finished_at: datetime
    plaintext_bytes: int
    compressed_bytes: int
    stored_bytes: int
    plaintext_sha256: str
    stored_sha256: str
    chunk_size: int
    chunks: int
    compression: Literal["zstd", "none"] = "zstd"
    cipher: Literal["AES-256-GCM"] = "AES-256-GCM"
    key: dict[str, str]
    tool_versions: dict[str, str] = {}
    details: dict[str, Any] = {}
    depends_on: list[str] = []
    locations: dict[str, LocationCopy] = {}
    mac: str = ""

    @property
    def wrapped_key(self) -> WrappedKey:
        return WrappedKey.from_dict(self.key)

    @property
    def data_key_name(self) -> str:
        return data_key_name(self.kind, self.backup_id)

    def canonical(self) -> bytes:
        body = self.model_dump(mode="json", exclude={"mac"})
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True).encode() + b"\n"


def data_key_name(kind: str, backup_id: str) -> str:
    return f"data/{kind}/{backup_id}.cta"


def manifest_key_name(backup_id: str) -> str:
    return f"manifests/{backup_id}.json"


def _mac_key(data_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"continuity manifest mac v1").derive(data_key)


def seal(manifest: Manifest, data_key: bytes) -> Manifest:
    unsigned = manifest.model_copy(update={"mac": ""})
    mac = hmac.new(_mac_key(data_key), unsigned.canonical(), hashlib.sha256).hexdigest()
    return manifest.model_copy(update={"mac": mac})


def backup_id_of_key(key: str) -> str | None:
    """The backup id a manifest key names (`manifests/<id>.json`), or None for another key."""
    if key.startswith("manifests/") and key.endswith(".json"):
        return key[len("manifests/"):-len(".json")]
    return None


def open_manifest(raw: bytes, keyring: Keyring, *, where: str, expected_id: str) -> tuple[Manifest, bytes]:
    """Parse and authenticate a stored manifest; returns it with its (unwrapped) data key.

    `expected_id` is the backup id of the name it is stored under: a manifest authentic for
    backup A but stored as B is refused, so restoring B can never return A's bytes.
    """
    try:
        manifest = Manifest.model_validate_json(raw)
        wrapped = manifest.wrapped_key
    except (ValueError, KeyError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise IntegrityError(f"{where}: not a valid manifest: {first}") from None
    if manifest.backup_id != expected_id:
        raise IntegrityError(f"{where}: holds the manifest of backup {manifest.backup_id}, not of {expected_id} "
                             f"(copied or renamed in storage): it is not trusted")
    try:
        data_key = keyring.unwrap(wrapped, archive_id=manifest.backup_id)
    except (ValueError, TypeError) as exc:  # a malformed wrapped key (bad base64, wrong length)
        raise IntegrityError(f"{where}: manifest of backup {manifest.backup_id} has an unreadable wrapped key: "
                             f"{exc}") from None
    expected = hmac.new(_mac_key(data_key), manifest.canonical(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, manifest.mac):
        raise IntegrityError(f"{where}: manifest of backup {manifest.backup_id} failed authentication "
                             f"(edited in storage): it is not trusted")
    return manifest, data_key

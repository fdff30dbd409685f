"""Key-encryption keys (KEKs) and the envelope around each backup's data key.

A keyring holds KEKs by id, one of them active for new backups. Each backup gets a fresh 256-bit
data key; the keyring wraps it with AES-256-GCM under a KEK (or AWS KMS wraps it, for KEK ids
`kms:<key id>`). Only wrapped data keys are ever stored. Rotation re-wraps; payloads are untouched.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEYRING_ENV_VAR = "CONTINUITY_KEYRING"
KEYRING_FILE_ENV_VAR = "CONTINUITY_KEYRING_FILE"
KMS_PREFIX = "kms:"
DATA_KEY_BYTES = 32


# The connection the Airflow layer reads the keyring from. Never inside a configuration backup: the keyring
# protects the backups, so a copy inside one is either out of reach or every KEK (retired ones too) beside them.
KEYRING_CONN_ID = "continuity_keyring"

class KeyringError(Exception):
    """A key problem: missing, wrong, or a keyring that cannot be read."""


class MissingKeyError(KeyringError):
    """The KEK a backup needs is not in the keyring; the message names the KEK id."""


class WrongKeyError(KeyringError):
    """A KEK with the right id did not unwrap the data key: the key material is wrong."""


@dataclass(frozen=True)
class WrappedKey:
    kek_id: str
    alg: str
    wrapped: str  # base64

    def to_dict(self) -> dict[str, str]:
        return {"kek_id": self.kek_id, "alg": self.alg, "wrapped": self.wrapped}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WrappedKey:
        return cls(kek_id=data["kek_id"], alg=data["alg"], wrapped=data["wrapped"])


def _aad(kek_id: str, archive_id: str) -> bytes:
    # Binds the wrapped key to its KEK id and archive: it cannot be moved to another backup.
    return f"continuity data key|{kek_id}|{archive_id}".encode()


class Keyring:
    """KEKs by id plus the active id. `kms_client` (boto3 KMS) serves ids starting with `kms:`."""

    def __init__(self, *, keys: Mapping[str, bytes], active: str, kms_client: Any = None,
                 kms_keys: Sequence[str] = ()) -> None:
        for kek_id, key in keys.items():
            if len(key) != 32:
                raise ValueError(f"KEK {kek_id!r} must be 32 bytes (AES-256), got {len(key)}")
        if active not in keys and not active.startswith(KMS_PREFIX):
            raise MissingKeyError(f"the active KEK {active!r} is not in the keyring (ids: {', '.join(sorted(keys)) or 'none'})")
        self.keys = dict(keys)
        self.active = active
        self.kms_client = kms_client
        # The KMS keys this keyring trusts to unwrap (the active one, and earlier ones kept for
        # reading): a manifest naming any other KMS key is refused before KMS is asked.
        self.kms_keys = {k if k.startswith(KMS_PREFIX) else KMS_PREFIX + k for k in kms_keys}
        if active.startswith(KMS_PREFIX):
            self.kms_keys.add(active)

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_json(cls, text: str, *, where: str, kms_client: Any = None) -> Keyring:
        """{"active": ID, "keys": {ID: base64}} — or a single base64 key, whose id is 'default'."""
        text = text.strip()
        try:
            if text.startswith("{"):
                data = json.loads(text)
                keys = {k: base64.b64decode(v, validate=True) for k, v in data["keys"].items()}
                return cls(keys=keys, active=data["active"], kms_client=kms_client)
            return cls(keys={"default": base64.b64decode(text, validate=True)}, active="default", kms_client=kms_client)
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"{where}: not a keyring (expected {{\"active\": ID, \"keys\": {{ID: base64}}}} "
                            f"or one base64 32-byte key): {exc}") from None

    @classmethod
    def from_connection(cls, *, login: str | None, password: str | None, extra: Mapping[str, Any],
                        conn_id: str, kms_client: Any = None) -> Keyring:
        """An Airflow connection: password = keyring JSON or one base64 key (id = login);
        or extra.kms_key_id for AWS KMS (the key never leaves KMS)."""
        if extra.get("kms_key_id"):
            local = cls.from_json(password, where=f"connection {conn_id}").keys if password else {}
            return cls(keys=local, active=KMS_PREFIX + extra["kms_key_id"], kms_client=kms_client,
                       kms_keys=extra.get("previous_kms_key_ids", []))
        if not password:
            raise MissingKeyError(f"connection {conn_id} holds no key (its password is empty)")
        ring = cls.from_json(password, where=f"connection {conn_id}")
        if not password.strip().startswith("{") and login:
            ring = cls(keys={login: ring.keys["default"]}, active=login)
        return ring

    @classmethod
    def from_file(cls, path: Path, **kwargs: Any) -> Keyring:
        try:
            text = path.read_text()
        except OSError as exc:
            raise MissingKeyError(f"cannot read the keyring file {path}: {exc.strerror}") from None
        return cls.from_json(text, where=str(path), **kwargs)

    @classmethod
    def from_environment(cls, **kwargs: Any) -> Keyring | None:
        if os.environ.get(KEYRING_ENV_VAR):
            return cls.from_json(os.environ[KEYRING_ENV_VAR], where=f"${KEYRING_ENV_VAR}", **kwargs)
        if os.environ.get(KEYRING_FILE_ENV_VAR):
            return cls.from_file(Path(os.environ[KEYRING_FILE_ENV_VAR]), **kwargs)
        return None

    def to_json(self) -> str:
        return json.dumps({"active": self.active,
                           "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()}}, indent=2)

    def save(self, path: Path) -> None:
        """Write atomically with mode 0600."""
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def with_new_key(self, kek_id: str | None = None) -> Keyring:
        """A copy with a fresh random KEK added and made active (older ones kept for reading)."""
        kek_id = kek_id or "kek-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        if kek_id in self.keys:
            raise ValueError(f"the keyring already has a KEK {kek_id!r}")
        return Keyring(keys={**self.keys, kek_id: secrets.token_bytes(32)}, active=kek_id, kms_client=self.kms_client,
                       kms_keys=sorted(self.kms_keys))

    def without(self, kek_id: str) -> Keyring:
        if kek_id == self.active:
            raise ValueError(f"KEK {kek_id!r} is the active key; activate another one before retiring it")
        return Keyring(keys={k: v for k, v in self.keys.items() if k != kek_id}, active=self.active,
                       kms_client=self.kms_client, kms_keys=sorted(self.kms_keys - {kek_id}))

    # -- the envelope ----------------------------------------------------------------------
    def new_data_key(self, archive_id: str) -> tuple[bytes, WrappedKey]:
        """A fresh data key for one archive, and its wrapping under the active KEK."""
        if self.active.startswith(KMS_PREFIX):
            response = self._kms().generate_data_key(KeyId=self.active[len(KMS_PREFIX):], KeySpec="AES_256",
                                                     EncryptionContext={"archive_id": archive_id})
            return response["Plaintext"], WrappedKey(self.active, "aws-kms",
                                                     base64.b64encode(response["CiphertextBlob"]).decode())
        data_key = secrets.token_bytes(DATA_KEY_BYTES)
        return data_key, self.wrap(data_key, archive_id=archive_id)

    def wrap(self, data_key: bytes, *, archive_id: str, kek_id: str | None = None) -> WrappedKey:
        kek_id = kek_id or self.active
        if kek_id.startswith(KMS_PREFIX):
            response = self._kms().encrypt(KeyId=kek_id[len(KMS_PREFIX):], Plaintext=data_key,
                                           EncryptionContext={"archive_id": archive_id})
            return WrappedKey(kek_id, "aws-kms", base64.b64encode(response["CiphertextBlob"]).decode())
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self._kek(kek_id, archive_id)).encrypt(nonce, data_key, _aad(kek_id, archive_id))
        return WrappedKey(kek_id, "AES-256-GCM", base64.b64encode(nonce + sealed).decode())

    def unwrap(self, wrapped: WrappedKey, *, archive_id: str) -> bytes:
        try:
            blob = base64.b64decode(wrapped.wrapped, validate=True)
        except (ValueError, TypeError):
            raise WrongKeyError(f"archive {archive_id}: the wrapped data key is corrupt (not base64)") from None
        if wrapped.alg == "aws-kms":
            if wrapped.kek_id not in self.kms_keys:
                raise MissingKeyError(
                    f"archive {archive_id} names KMS key {wrapped.kek_id!r}, which this keyring does not trust "
                    f"(it trusts: {', '.join(sorted(self.kms_keys)) or 'no KMS key'}); a backup planted under "
                    f"another key is never unwrapped")
            try:
                # KeyId pins the key: KMS refuses a blob made under any other key the role may use.
                return self._kms().decrypt(CiphertextBlob=blob, KeyId=wrapped.kek_id[len(KMS_PREFIX):],
                                           EncryptionContext={"archive_id": archive_id})["Plaintext"]
            except Exception as exc:
                raise WrongKeyError(f"AWS KMS could not unwrap the data key of archive {archive_id} "
                                    f"(KEK {wrapped.kek_id}): {exc}") from exc
        if wrapped.alg != "AES-256-GCM":
            raise KeyringError(f"archive {archive_id}: unknown key wrapping {wrapped.alg!r}")
        try:
            return AESGCM(self._kek(wrapped.kek_id, archive_id)).decrypt(blob[:12], blob[12:],
                                                                        _aad(wrapped.kek_id, archive_id))
        except InvalidTag:
            raise WrongKeyError(
                f"archive {archive_id}: the keyring's KEK {wrapped.kek_id!r} does not unwrap its data key "
                f"(wrong key material for that id, or the wrapped key was altered)"
            ) from None

    def _kek(self, kek_id: str, archive_id: str) -> bytes:
        try:
            return self.keys[kek_id]
        except KeyError:
            raise MissingKeyError(
                f"archive {archive_id} needs KEK {kek_id!r}, which is not in the keyring "
                f"(it has: {', '.join(sorted(self.keys)) or 'no keys'})"
            ) from None

    def _kms(self) -> Any:
        if self.kms_client is None:
            raise MissingKeyError(f"KEK {self.active!r} is an AWS KMS key but no KMS client was configured")
        return self.kms_client

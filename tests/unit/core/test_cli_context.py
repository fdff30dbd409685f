"""The emergency CLI uses a sandbox only when one is named (--root or $CONTINUITY_SANDBOX): a stale .sandbox on an
operator's machine never chooses the storage or the keyring of a restore."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from continuity.cli.common import UsageError, _context
from continuity.storage.keys import Keyring, MissingKeyError
from continuity.storage.locations import S3Location


def _args(**given: object) -> argparse.Namespace:
    return argparse.Namespace(**{"policy": None, "root": None, "key_file": None, **given})


@pytest.fixture()
def stale_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory holding a .sandbox with state and a keyring, as `make run` leaves one."""
    root = tmp_path / ".sandbox"
    (root / "keys").mkdir(parents=True)
    (root / "state.json").write_text(json.dumps({"s3": {"port": 1}, "secrets": {"s3_secret_key": "not-real"}}))
    Keyring(keys={"sandbox-key": os.urandom(32)}, active="sandbox-key").save(root / "keys" / "keyring.json")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONTINUITY_PROJECT", str(Path(__file__).resolve().parents[3]))
    for name in ("CONTINUITY_SANDBOX", "CONTINUITY_KEYRING", "CONTINUITY_KEYRING_FILE"):
        monkeypatch.delenv(name, raising=False)
    # An operator's credentials (the AWS chain would otherwise ask the instance metadata service).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "operator")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-secret")
    return root


def test_a_sandbox_on_disk_is_not_used_unless_named(stale_sandbox: Path) -> None:
    with pytest.raises(MissingKeyError, match=r"no keyring: pass --key-file.*continuity sandbox env"):
        _context(_args())


def test_the_policy_storage_and_the_named_keyring_without_a_sandbox(stale_sandbox: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "operator-keyring.json"
    Keyring(keys={"production": os.urandom(32)}, active="production").save(key_file)
    context = _context(_args(key_file=str(key_file)))
    assert context.sandbox is None and context.keyring.active == "production"
    primary = context.locations["primary"]
    assert isinstance(primary, S3Location)
    assert primary.bucket == "continuity-backups-us-east-1"
    # The AWS chain's endpoint, not the sandbox's S3 server on loopback.
    assert "127.0.0.1" not in primary.client.meta.endpoint_url


def test_a_named_sandbox_that_is_not_there_is_refused(stale_sandbox: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match=r"--root .*/nowhere: no sandbox there \(no state.json\); HINT"):
        _context(_args(root=str(tmp_path / "nowhere")))
    monkeypatch.setenv("CONTINUITY_SANDBOX", str(tmp_path / "gone"))
    with pytest.raises(UsageError, match=r"\$CONTINUITY_SANDBOX \(.*/gone\): no sandbox there"):
        _context(_args())


def test_a_named_sandbox_gives_its_keyring(stale_sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTINUITY_SANDBOX", str(stale_sandbox))
    context = _context(_args())
    assert context.sandbox is not None and context.keyring.active == "sandbox-key"

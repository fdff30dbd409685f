"""A configuration bundle is read back only as written: every file against its SHA256SUMS, nothing outside."""

from __future__ import annotations

import io
import tarfile

import pytest

from continuity.backup.config import ConfigBundle, ConfigRestoreError, read_bundle


def _bundle() -> bytes:
    bundle = ConfigBundle()
    bundle.add("policy.yaml", b"topology: {}\n")
    bundle.add("airflow/connections.json", b'{"continuity_app": {"conn_type": "postgres"}}')
    return bundle.tar()


def _retar(data: bytes, change) -> bytes:
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive.getmembers():
            files[member.name] = archive.extractfile(member).read()
    change(files)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return out.getvalue()


def test_a_bundle_reads_back_as_written() -> None:
    assert read_bundle(_bundle(), where="test").files["policy.yaml"] == b"topology: {}\n"


def test_a_changed_file_is_named() -> None:
    changed = _retar(_bundle(), lambda files: files.update({"policy.yaml": b"topology: {evil: 1}\n"}))
    with pytest.raises(ConfigRestoreError, match="test: policy.yaml does not match its SHA-256 in SHA256SUMS"):
        read_bundle(changed, where="test")


def test_an_added_or_missing_file_is_named() -> None:
    added = _retar(_bundle(), lambda files: files.update({"extra.sh": b"rm -rf /"}))
    with pytest.raises(ConfigRestoreError, match=r"files \['extra.sh'\] differ from SHA256SUMS"):
        read_bundle(added, where="test")
    without_sums = _retar(_bundle(), lambda files: files.pop("SHA256SUMS"))
    with pytest.raises(ConfigRestoreError, match="no SHA256SUMS"):
        read_bundle(without_sums, where="test")


def test_a_member_outside_the_bundle_is_refused() -> None:
    escaping = _retar(_bundle(), lambda files: files.update({"../outside": b"x"}))
    with pytest.raises(ConfigRestoreError, match=r"unexpected member '../outside'"):
        read_bundle(escaping, where="test")


def test_not_a_tar_is_refused_clearly() -> None:
    with pytest.raises(ConfigRestoreError, match="test: not a configuration bundle"):
        read_bundle(b"not a bundle", where="test")

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


def test_the_keyring_and_the_topology_never_enter_a_config_backup(tmp_path) -> None:
    """#30 item 13: the keyring protects the backups (a copy inside one holds every KEK, retired ones too); the
    topology Variable is stale once restored."""
    import json

    from continuity.backup.config import collect

    policy = tmp_path / "policy.yaml"
    policy.write_text("topology: {}\n")
    environ = {"AIRFLOW_CONN_CONTINUITY_KEYRING": json.dumps({"conn_type": "generic", "password": "KEK-MATERIAL"}),
               "AIRFLOW_CONN_CONTINUITY_APP": json.dumps({"conn_type": "postgres", "password": "app-secret"}),
               "AIRFLOW_VAR_CONTINUITY_TOPOLOGY": json.dumps({"primary": "dr"}),
               "AIRFLOW_VAR_KEPT": "yes"}
    bundle = collect(policy_path=policy, state_files=[], airflow=None, environ=environ)
    assert b"KEK-MATERIAL" not in bundle.tar()
    assert sorted(json.loads(bundle.files["airflow/connections.json"])) == ["continuity_app"]
    assert sorted(json.loads(bundle.files["airflow/variables.json"])) == ["kept"]
    assert any("continuity_keyring left out" in note for note in bundle.notes)


def test_a_rebuild_without_a_fernet_key_is_refused_before_anything_is_imported(tmp_path) -> None:
    from continuity.backup.config import fernet_configured, restore_into_airflow

    bundle = ConfigBundle()
    bundle.add("airflow/connections.json", b'{"continuity_app": {"conn_type": "postgres", "password": "s"}}')
    bundle.add("airflow/variables.json", b"{}")
    with pytest.raises(ConfigRestoreError, match=r"has no Fernet key: the 1 connections would be stored in plain "
                                                 r"text .*nothing was imported. HINT: set AIRFLOW__CORE__FERNET_KEY"):
        restore_into_airflow(bundle, airflow="/nonexistent/airflow", airflow_home=tmp_path, backup_id="config-1",
                             environ={}, report=print)
    assert not (tmp_path / "continuity-config").exists()
    assert fernet_configured({"AIRFLOW__CORE__FERNET_KEY": "k"}, tmp_path)
    (tmp_path / "airflow.cfg").write_text("[core]\nfernet_key = abc\n")
    assert fernet_configured({}, tmp_path)
    (tmp_path / "airflow.cfg").write_text("[core]\nfernet_key =\n")
    assert not fernet_configured({}, tmp_path)

"""Validation with repair (dr_backup_validation's core) on moto's in-process S3: a flipped byte and a deleted
copy in a required location are repaired from a good copy and verified deep; a backup with no good copy left
anywhere is reported unrepairable, never papered over. tests/integration/test_validation_and_config.py shows
the DAG doing it on the sandbox."""

from __future__ import annotations

import io
import os

import pytest

from continuity.backup.engine import create_backup, verify_copy
from continuity.backup.validation import validate_copies
from continuity.storage.catalog import Catalog
from continuity.storage.keys import Keyring
from continuity.storage.manifest import manifest_key_name


@pytest.fixture
def keyring() -> Keyring:
    return Keyring(keys={"kek-1": os.urandom(32)}, active="kek-1")


def _flip_a_byte(location, key: str) -> None:
    data = bytearray(location.get_bytes(key))
    data[len(data) // 2] ^= 0x01
    location.put_bytes(key, bytes(data))


def test_a_corrupt_and_a_missing_copy_are_repaired_and_an_orphan_is_unrepairable(moto_locations, keyring) -> None:
    everywhere = list(moto_locations.values())
    corrupt = create_backup(io.BytesIO(os.urandom(200_000)), kind="adhoc", keyring=keyring, locations=everywhere)
    lost = create_backup(io.BytesIO(os.urandom(200_000)), kind="adhoc", keyring=keyring, locations=everywhere)
    only_dr = create_backup(io.BytesIO(os.urandom(200_000)), kind="adhoc", keyring=keyring,
                            locations=[moto_locations["dr"]])
    _flip_a_byte(moto_locations["dr"], corrupt.data_key_name)
    moto_locations["primary"].delete(manifest_key_name(lost.backup_id))
    moto_locations["primary"].delete(lost.data_key_name)
    _flip_a_byte(moto_locations["dr"], only_dr.data_key_name)
    said: list[str] = []

    result = validate_copies(Catalog(moto_locations, keyring), required={"primary", "dr"},
                             deep_ids={corrupt.backup_id, lost.backup_id, only_dr.backup_id}, report=said.append)

    outcome = {(f.backup_id, f.location): f for f in result.findings}
    repaired = outcome[(corrupt.backup_id, "dr")]
    assert repaired.action == "repaired" and repaired.reason.startswith("corrupt: ")
    assert "repaired from primary and verified deep" in repaired.reason, "a required location is the preferred source"
    refilled = outcome[(lost.backup_id, "primary")]
    assert refilled.action == "repaired"
    assert refilled.reason.startswith(f"missing: location primary holds no copy of {lost.backup_id}")
    for backup, name in ((corrupt, "dr"), (lost, "primary")):
        assert verify_copy(backup, moto_locations[name], keyring, deep=True).ok, (backup.backup_id, name)
    assert {(f.location, f.action) for f in result.findings if f.backup_id == only_dr.backup_id} == {
        ("primary", "unrepairable"), ("dr", "unrepairable")}
    assert "no location holds a good copy to repair from" in outcome[(only_dr.backup_id, "dr")].reason
    assert outcome[(corrupt.backup_id, "archive")].action == "verified"
    assert {(f.backup_id, f.location) for f in result.unrepaired} == {(only_dr.backup_id, "primary"),
                                                                     (only_dr.backup_id, "dr")}
    assert f"UNREPAIRABLE {only_dr.backup_id} in dr" in " ".join(said)
    assert said[-1] == "validated 3 backups: 4 copies verified, 2 repaired, 2 still bad"


def test_an_unreachable_location_is_reported_and_the_others_still_validated(moto_locations, keyring) -> None:
    backup = create_backup(io.BytesIO(b"x" * 50_000), kind="adhoc", keyring=keyring,
                           locations=[moto_locations["primary"], moto_locations["dr"]])
    archive = moto_locations["archive"]
    archive.client.delete_bucket(Bucket=archive.bucket)  # the optional location is gone
    said: list[str] = []
    result = validate_copies(Catalog(moto_locations, keyring), required={"primary", "dr"}, deep_ids=set(),
                             report=said.append)
    assert any(s.startswith("location archive is unreachable: ") for s in said)
    assert {(f.location, f.action) for f in result.findings if f.backup_id == backup.backup_id} == {
        ("primary", "verified"), ("dr", "verified")}
    assert all("shallow verification passed" == f.reason for f in result.findings)

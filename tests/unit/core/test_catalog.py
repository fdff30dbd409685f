"""The catalog on a directory location: listing one kind reads no manifest of the other."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from continuity.backup.engine import create_backup
from continuity.storage.catalog import Catalog
from continuity.storage.keys import Keyring
from continuity.storage.manifest import manifest_key_name
from continuity.storage.locations import FileLocation


class CountingLocation(FileLocation):
    """A directory location that remembers which objects were read whole."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reads: list[str] = []

    def get_bytes(self, key: str) -> bytes:
        self.reads.append(key)
        return super().get_bytes(key)


def test_listing_one_kind_reads_no_manifest_of_the_other(tmp_path: Path) -> None:
    keyring = Keyring(keys={"k": os.urandom(32)}, active="k")
    location = CountingLocation(name="local", region="local", path=tmp_path)
    segments = [f"wal-00000001000000000000000{i}" for i in range(1, 4)]
    for backup_id in segments:
        create_backup(io.BytesIO(b"wal"), kind="wal", backup_id=backup_id, keyring=keyring, locations=[location])
    base = create_backup(io.BytesIO(b"base"), kind="physical", keyring=keyring, locations=[location])
    catalog = Catalog({"local": location}, keyring)

    location.reads.clear()
    assert [m.backup_id for m in catalog.list(kind="physical")] == [base.backup_id]
    assert location.reads == [manifest_key_name(base.backup_id)], "no WAL manifest read to find a base backup"
    location.reads.clear()
    assert [m.backup_id for m in catalog.list(kind="wal")] == segments
    assert sorted(location.reads) == [manifest_key_name(s) for s in segments]
    assert {m.backup_id for m in catalog.list()} == {*segments, base.backup_id}


@pytest.mark.parametrize(("kind", "backup_id"), [("physical", "wal-000000010000000000000009"), ("wal", "segment-9")])
def test_a_backup_id_that_hides_its_kind_is_refused_before_anything_is_written(tmp_path: Path, kind: str,
                                                                              backup_id: str) -> None:
    keyring = Keyring(keys={"k": os.urandom(32)}, active="k")
    with pytest.raises(ValueError, match="WAL backups, and only they, have ids starting with 'wal-'"):
        create_backup(io.BytesIO(b"x"), kind=kind, backup_id=backup_id, keyring=keyring,
                      locations=[FileLocation(name="local", region="local", path=tmp_path)])
    assert list(tmp_path.rglob("*")) == []


def test_the_newest_logical_backup_of_one_database_is_not_another_databases(tmp_path: Path) -> None:
    """A drill validates the rebuilt `app` against app's newest dump, not a newer dump of another database."""
    keyring = Keyring(keys={"k": os.urandom(32)}, active="k")
    location = FileLocation(name="local", region="local", path=tmp_path)
    for backup_id, database in (("logical-app-1", "app"), ("logical-fixture-2", "fixture")):
        create_backup(io.BytesIO(b"dump"), kind="logical", backup_id=backup_id, keyring=keyring, locations=[location],
                      source_info={"database": database})
    catalog = Catalog({"local": location}, keyring)
    assert catalog.latest("logical").backup_id == "logical-fixture-2"
    assert catalog.latest("logical", database="app").backup_id == "logical-app-1"
    assert catalog.latest("logical", database="gone") is None

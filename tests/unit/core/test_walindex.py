"""The WAL index on a directory location: the catalog reads a few packs instead of every WAL manifest,
and never disagrees with the manifests (late writers, deletes, changes, tampering, key rotation)."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import pytest

from continuity.backup.engine import Verification, create_backup, record_verification, rewrap
from continuity.storage.catalog import Catalog
from continuity.storage.keys import Keyring
from continuity.storage.manifest import manifest_key_name
from continuity.storage.locations import FileLocation
from continuity.backup.validation import Decision, apply_retention
from continuity.storage.walindex import INDEX_PREFIX, LATE_PREFIX, refresh_index

from .test_catalog import CountingLocation


def _wal(location, keyring, *segnos: int) -> list[str]:
    ids = []
    for segno in segnos:
        name = f"00000001{segno >> 8:08X}{segno & 0xFF:08X}"
        create_backup(io.BytesIO(name.encode()), kind="wal", backup_id=f"wal-{name}", keyring=keyring,
                      locations=[location], source_info={"timeline": 1, "wal_file": name})
        ids.append(f"wal-{name}")
    return ids


def _packs(location) -> list[str]:
    return [k for k in location.list(INDEX_PREFIX)]


@pytest.fixture
def keyring() -> Keyring:
    return Keyring(keys={"k1": os.urandom(32)}, active="k1")


def test_the_catalog_reads_the_packs_then_only_what_came_after_them_or_was_marked_late(tmp_path: Path,
                                                                                       keyring: Keyring) -> None:
    location = CountingLocation(name="local", region="local", path=tmp_path)
    packed = _wal(location, keyring, 1, 2, 4, 5, 0x1000)  # two groups: segments 1-5 and 4096 on
    result = refresh_index(location, keyring)
    assert (result.manifests, result.packs, result.added, result.packs_written) == (5, 2, 5, 2)
    newer = _wal(location, keyring, 0x1001, 0x1002)
    late = _wal(location, keyring, 3)  # below the newest pack: its writer marks it
    assert list(location.list(LATE_PREFIX)) == [LATE_PREFIX + late[0]]

    location.reads.clear()
    listed = Catalog({"local": location}, keyring).list(kind="wal")
    assert sorted(m.backup_id for m in listed) == sorted(packed + newer + late)
    assert sorted(location.reads) == sorted(_packs(location) + [manifest_key_name(i) for i in newer + late]), \
        "packed manifests are not read one by one"

    again = refresh_index(location, keyring)
    assert (again.added, again.kept, again.packs_written) == (3, 5, 2)
    assert list(location.list(LATE_PREFIX)) == [], "the late mark is folded into its pack"
    location.reads.clear()
    assert len(Catalog({"local": location}, keyring).list(kind="wal")) == 8
    assert sorted(location.reads) == sorted(_packs(location))
    assert refresh_index(location, keyring).packs_written == 0, "nothing changed: nothing rewritten"


def test_a_tampered_pack_is_refused_and_every_manifest_is_read_instead(tmp_path: Path, keyring: Keyring) -> None:
    location = FileLocation(name="local", region="local", path=tmp_path)
    ids = _wal(location, keyring, 1, 2, 3)
    refresh_index(location, keyring)
    [pack] = _packs(location)
    text = gzip.decompress(location.get_bytes(pack))
    forged = text.replace(ids[1].encode(), ids[1][:-1].encode() + b"9", 1)  # an entry renamed inside
    location.put_bytes(pack, gzip.compress(forged))

    catalog = Catalog({"local": location}, keyring)
    assert [m.backup_id for m in catalog.list(kind="wal")] == ids
    assert any("WAL index pack failed authentication" in p and "reading every WAL manifest instead" in p
               for p in catalog.problems), catalog.problems

    # A pack dropped in from another keyring's index is refused the same way.
    other = Keyring(keys={"evil": os.urandom(32)}, active="evil")
    elsewhere = FileLocation(name="other", region="local", path=tmp_path / "other")
    _wal(elsewhere, other, 1)
    refresh_index(elsewhere, other)
    [foreign] = _packs(elsewhere)
    location.put_bytes(pack, elsewhere.get_bytes(foreign))
    catalog = Catalog({"local": location}, keyring)
    assert len(catalog.list(kind="wal")) == 3 and catalog.problems

    repaired = refresh_index(location, keyring)
    assert repaired.packs_written == 1 and repaired.added == 3
    catalog = Catalog({"local": location}, keyring)
    assert len(catalog.list(kind="wal")) == 3 and catalog.problems == []


def test_the_index_follows_retention_changes_and_a_key_rotation(tmp_path: Path, keyring: Keyring) -> None:
    location = FileLocation(name="local", region="local", path=tmp_path)
    ids = _wal(location, keyring, 1, 2, 3)
    refresh_index(location, keyring)

    # Retention deletes the oldest segment: gone from the listing at once.
    apply_retention(location, [Decision(backup_id=ids[0], kind="wal", keep=False, reason="test")], dry_run=False,
                    keyring=keyring)
    assert [m.backup_id for m in Catalog({"local": location}, keyring).list(kind="wal")] == ids[1:]

    # A verification noted in a manifest: the refresh sees its checksum change and reads it again.
    catalog = Catalog({"local": location}, keyring)
    manifest, _ = catalog.get(ids[1])
    record_verification(manifest, location, keyring, Verification(backup_id=ids[1], location="local", ok=True, depth="deep", reason="checked"))
    result = refresh_index(location, keyring)
    assert (result.changed, result.kept) == (1, 1)
    [listed] = [m for m in Catalog({"local": location}, keyring).list(kind="wal") if m.backup_id == ids[1]]
    assert listed.locations["local"].verify_depth == "deep"

    # Key rotation: every manifest re-wrapped, the index refreshed, the old KEK retired: all still readable.
    rotated = keyring.with_new_key("k2")
    for manifest in Catalog({"local": location}, rotated).manifests_in("local", indexed=False):
        rewrap(manifest, location, rotated, to_kek="k2")
    refreshed = refresh_index(location, rotated)
    assert refreshed.changed == 2 and refreshed.packs_written == 1
    retired = rotated.without("k1")
    catalog = Catalog({"local": location}, retired)
    assert [m.key["kek_id"] for m in catalog.list(kind="wal")] == ["k2", "k2"] and catalog.problems == []


def test_a_manifest_written_while_the_index_is_refreshed_is_not_lost(tmp_path: Path, keyring: Keyring) -> None:
    """The writer looks for packs after its manifest is written; the refresh looks again after its packs
    are written: whichever comes last sees the other."""

    class SlowRefresh(FileLocation):
        interloper: list[str] = []

        def put_bytes(self, key: str, data: bytes, **kwargs) -> str:
            if key.startswith(INDEX_PREFIX) and not self.interloper:
                # Between the refresh's listing and its pack: segment 2 arrives late (a slow push, a repair).
                self.interloper.extend(_wal(self, keyring, 2))
            return super().put_bytes(key, data, **kwargs)

    location = SlowRefresh(name="local", region="local", path=tmp_path)
    ids = _wal(location, keyring, 1, 3)
    result = refresh_index(location, keyring)
    assert result.late_marked == 1
    listed = [m.backup_id for m in Catalog({"local": location}, keyring).list(kind="wal")]
    assert sorted(listed) == sorted(ids + location.interloper)

"""Shipping the WAL spool (archive_command's queue) into storage and fetching it back (restore_command), on
directory locations: every file lands in every location and comes back byte for byte, a file leaves the spool
only once stored, a name is never stored twice with different contents, an optional location that is down is
left out and caught up by the next push."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from continuity.backup.wal import (SpoolBusy, WalConflict, WalNotArchived, classify, fetch_file, ship_spool,
                                   spool_files, spool_lock)
from continuity.storage.keys import Keyring
from continuity.storage.locations import FileLocation, StorageError
from continuity.storage.manifest import manifest_key_name

from continuity.backup.catchup import catch_up
from continuity.storage.degraded import DEGRADED_PREFIX, forget_failures, outstanding

from tests.support.locations import RegionStorage

SEGMENTS = ["000000010000000000000001", "000000010000000000000002", "000000010000000000000003"]


def _keyring() -> Keyring:
    return Keyring(keys={"k1": os.urandom(32)}, active="k1")


def _spool(tmp_path: Path, names: list[str], *, size: int = 64 * 1024) -> dict[str, bytes]:
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    contents = {}
    for name in names:
        contents[name] = os.urandom(size)
        (spool / name).write_bytes(contents[name])
    return contents


def _locations(tmp_path: Path, cls=FileLocation) -> dict[str, FileLocation]:
    return {name: cls(name=name, region=region, path=tmp_path / name)
            for name, region in (("primary", "us-east-1"), ("dr", "us-west-2"))}


def test_every_spool_file_lands_in_every_location_leaves_the_spool_and_comes_back_byte_for_byte(tmp_path: Path) -> None:
    keyring, locations = _keyring(), _locations(tmp_path)
    contents = _spool(tmp_path, [*SEGMENTS, "00000002.history"])
    result = ship_spool(tmp_path / "spool", keyring=keyring, locations=locations, required={"primary", "dr"},
                        report=lambda _m: None, workers=2)
    assert sorted(result.removed) == sorted(contents) and spool_files(tmp_path / "spool") == []
    assert result.newest is not None and result.newest.source["wal_file"] == SEGMENTS[-1]
    for name, data in contents.items():
        for only in locations:  # each location's copy on its own
            target = tmp_path / "fetched" / only / name
            target.parent.mkdir(parents=True, exist_ok=True)
            fetch_file(name, target, keyring=keyring, locations={only: locations[only]}, report=lambda _m: None)
            assert target.read_bytes() == data


def test_history_files_ship_before_segments(tmp_path: Path) -> None:
    _spool(tmp_path, [SEGMENTS[0], "00000002.history"], size=16)
    assert [w.name for w in spool_files(tmp_path / "spool")] == ["00000002.history", SEGMENTS[0]]


def test_the_same_file_queued_again_is_already_shipped_not_stored_twice(tmp_path: Path) -> None:
    keyring, locations = _keyring(), _locations(tmp_path)
    contents = _spool(tmp_path, SEGMENTS[:1])
    ship_spool(tmp_path / "spool", keyring=keyring, locations=locations, required={"primary", "dr"}, report=lambda _m: None)
    (tmp_path / "spool" / SEGMENTS[0]).write_bytes(contents[SEGMENTS[0]])  # archive_command ran again after a crash
    again = ship_spool(tmp_path / "spool", keyring=keyring, locations=locations, required={"primary", "dr"},
                       report=lambda _m: None)
    assert again.already_shipped == [SEGMENTS[0]] and again.shipped == [] and again.removed == [SEGMENTS[0]]


def test_a_name_stored_with_other_contents_is_an_alarm_and_the_spool_file_stays(tmp_path: Path) -> None:
    keyring, locations = _keyring(), _locations(tmp_path)
    _spool(tmp_path, SEGMENTS[:1])
    ship_spool(tmp_path / "spool", keyring=keyring, locations=locations, required={"primary", "dr"}, report=lambda _m: None)
    (tmp_path / "spool" / SEGMENTS[0]).write_bytes(b"a different segment under the same name")
    with pytest.raises(WalConflict):
        ship_spool(tmp_path / "spool", keyring=keyring, locations=locations, required={"primary", "dr"},
                   report=lambda _m: None)
    assert (tmp_path / "spool" / SEGMENTS[0]).exists(), "never removed, never overwritten"


def test_an_optional_location_that_is_down_is_left_out_then_caught_up_by_the_next_push(tmp_path: Path) -> None:
    keyring = _keyring()
    locations = _locations(tmp_path)
    archive = RegionStorage(name="archive", region="eu-west-1", path=tmp_path / "archive")
    archive.gone = True
    everywhere = {**locations, "archive": archive}
    contents = _spool(tmp_path, SEGMENTS[:2])
    result = ship_spool(tmp_path / "spool", keyring=keyring, locations=everywhere, required={"primary", "dr"},
                        report=lambda _m: None)
    assert sorted(result.removed) == SEGMENTS[:2], "the required locations hold them: they leave the spool"
    archive.gone = False
    forget_failures()  # the minute a pusher leaves an unanswering location alone has passed
    assert archive.head(manifest_key_name(classify(SEGMENTS[0]).backup_id)) is None
    _spool(tmp_path, SEGMENTS[:1])  # the next file for that name (or a re-queue) makes the push look again
    (tmp_path / "spool" / SEGMENTS[0]).write_bytes(contents[SEGMENTS[0]])
    caught = ship_spool(tmp_path / "spool", keyring=keyring, locations=everywhere, required={"primary", "dr"},
                        report=lambda _m: None)
    assert caught.replicated == [f"{SEGMENTS[0]} -> archive"]
    target = tmp_path / "from-archive"
    fetch_file(SEGMENTS[0], target, keyring=keyring, locations={"archive": archive}, report=lambda _m: None)
    assert target.read_bytes() == contents[SEGMENTS[0]]


def test_a_file_no_location_holds_is_not_archived_naming_the_locations(tmp_path: Path) -> None:
    with pytest.raises(WalNotArchived, match=r"000000010000000000000009: not in any location \(primary, dr\)"):
        fetch_file("000000010000000000000009", tmp_path / "x", keyring=_keyring(), locations=_locations(tmp_path),
                   report=lambda _m: None)
    with pytest.raises(ValueError, match="is not a WAL file name"):
        fetch_file("pg_control", tmp_path / "x", keyring=_keyring(), locations=_locations(tmp_path))


def test_one_shipper_at_a_time_the_second_gives_up_naming_the_spool(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with spool_lock(spool):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        said: list[str] = []
        with pytest.raises(SpoolBusy, match="stayed locked by another shipper"):
            with spool_lock(spool, timeout=0.3, report=said.append):
                pass
        assert said and "waiting for it to finish" in said[0]
    finally:
        release.set()
        thread.join()
    with spool_lock(spool, timeout=1):  # released by the holder: free again
        pass


@pytest.fixture
def primary_region_gone(tmp_path: Path):
    """The primary region's storage cut off (a required location), the DR one answering."""
    forget_failures()
    locations = _locations(tmp_path, cls=RegionStorage)
    locations["primary"].gone = True
    yield locations
    forget_failures()


def test_with_a_required_location_gone_every_file_is_kept_in_the_other_degraded_and_leaves_the_spool(
        tmp_path: Path, primary_region_gone) -> None:
    """#30 item 1: "required" means required while reachable. Archiving goes on into the DR location (the spool
    empties, so archive_command never fails and pg_wal never grows), each file's manifest says which location
    it misses and why, and the DR location owes each one to the primary by a marker."""
    keyring, locations = _keyring(), primary_region_gone
    contents = _spool(tmp_path, [*SEGMENTS, "00000002.history"])
    messages: list[str] = []
    result = ship_spool(tmp_path / "spool", keyring=keyring, locations=locations, required={"primary", "dr"},
                        report=messages.append, workers=2)
    assert sorted(result.removed) == sorted(contents) and spool_files(tmp_path / "spool") == []
    assert any("DEGRADED" in m for m in messages), messages
    owed, unlisted = outstanding(locations)
    assert {c.backup_id for c in owed} == {classify(n).backup_id for n in contents}
    assert {c.missing for c in owed} == {"primary"} and "EndpointConnectionError" in owed[0].reason
    assert set(unlisted) == {"primary"}
    (tmp_path / "fetched").mkdir()
    for name, data in contents.items():  # the DR location alone gives every file back
        target = tmp_path / "fetched" / name
        fetch_file(name, target, keyring=keyring, locations={"dr": locations["dr"]}, report=lambda _m: None)
        assert target.read_bytes() == data


def test_with_every_required_location_gone_the_file_stays_in_the_spool(tmp_path: Path, primary_region_gone) -> None:
    keyring, locations = _keyring(), primary_region_gone
    locations["dr"].gone = True
    _spool(tmp_path, SEGMENTS[:1])
    with pytest.raises(StorageError, match="no required location took it"):
        ship_spool(tmp_path / "spool", keyring=keyring, locations=locations, required={"primary", "dr"},
                   report=lambda _m: None)
    assert [w.name for w in spool_files(tmp_path / "spool")] == SEGMENTS[:1]
    assert not (tmp_path / "dr").exists() or not any((tmp_path / "dr").rglob("wal-*")), "nothing stored half"


def test_the_catch_up_copies_every_degraded_file_once_the_location_answers_and_nothing_is_degraded_after(
        tmp_path: Path, primary_region_gone) -> None:
    keyring, locations = _keyring(), primary_region_gone
    contents = _spool(tmp_path, SEGMENTS)
    ship_spool(tmp_path / "spool", keyring=keyring, locations=locations, required={"primary", "dr"},
               report=lambda _m: None)
    still = catch_up(locations, keyring, report=lambda _m: None)
    assert still.still_missing == {"primary": 3} and still.caught_up == [], "gone is gone: nothing copied yet"
    locations["primary"].gone = False
    forget_failures()
    done = catch_up(locations, keyring, report=lambda _m: None)
    assert sorted(done.caught_up) == sorted(f"{classify(n).backup_id} -> primary" for n in contents)
    assert not done.degraded and outstanding(locations) == ([], {})
    assert [k for loc in locations.values() for k in loc.list(DEGRADED_PREFIX)] == []
    (tmp_path / "from-primary").mkdir()
    for name, data in contents.items():  # the primary's own copy, verified deep as it was copied
        target = tmp_path / "from-primary" / name
        fetch_file(name, target, keyring=keyring, locations={"primary": locations["primary"]}, report=lambda _m: None)
        assert target.read_bytes() == data
    assert catch_up(locations, keyring, report=lambda _m: None).caught_up == [], "a second run has nothing to do"


def test_a_file_already_degraded_pushed_again_is_not_marked_twice_and_keeps_its_first_time(
        tmp_path: Path, primary_region_gone) -> None:
    keyring, locations = _keyring(), primary_region_gone
    contents = _spool(tmp_path, SEGMENTS[:1])
    ship_spool(tmp_path / "spool", keyring=keyring, locations=locations, required={"primary", "dr"},
               report=lambda _m: None)
    first, _ = outstanding(locations)
    (tmp_path / "spool" / SEGMENTS[0]).write_bytes(contents[SEGMENTS[0]])  # archive_command ran again
    again = ship_spool(tmp_path / "spool", keyring=keyring, locations=locations, required={"primary", "dr"},
                       report=lambda _m: None)
    assert again.already_shipped == SEGMENTS[:1] and again.removed == SEGMENTS[:1]
    assert outstanding(locations)[0] == first


def test_the_pusher_keeps_the_spool_through_an_outage_and_ships_it_once_a_location_answers(
        tmp_path: Path, primary_region_gone) -> None:
    """The WAL service's loop (push_continuously): with no required location answering, every pass fails, says
    how many files wait and keeps them; once the DR location answers, the spool empties into it (degraded) and
    the pusher says it works again."""
    from continuity.backup.wal import push_continuously
    from continuity.waiting import poll

    keyring, locations = _keyring(), primary_region_gone
    locations["dr"].gone = True
    _spool(tmp_path, SEGMENTS)
    said: list[str] = []
    stop = threading.Event()
    pusher = threading.Thread(target=push_continuously, args=(tmp_path / "spool",), daemon=True, kwargs=dict(
        keyring=keyring, locations=locations, required={"primary", "dr"}, stop=stop, interval=0.02, retry=0.05,
        report=said.append))
    pusher.start()
    try:
        assert poll(lambda: sum("pushing failed" in s for s in said) >= 2, timeout=20, interval=0.02), said
        assert len(spool_files(tmp_path / "spool")) == 3
        assert "3 files wait in the spool; retrying in 0s" in next(s for s in said if "pushing failed" in s)
        locations["dr"].gone = False
        forget_failures()  # what RETRY_AFTER (60 s) would do: an unreachable location is asked again
        assert poll(lambda: any(s.startswith("pushing works again after") for s in said), timeout=20, interval=0.02), said
    finally:
        stop.set()
        pusher.join(timeout=10)
    assert not pusher.is_alive() and spool_files(tmp_path / "spool") == []
    assert f"pushed 3 WAL files ({SEGMENTS[0]} .. {SEGMENTS[-1]}) to dr" in said, "only where they went"
    assert any(s.startswith("DEGRADED: 3 WAL files are missing from required primary") for s in said)

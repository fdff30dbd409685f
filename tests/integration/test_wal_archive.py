"""dr_wal_archive against the sandbox: every segment reaches every region once, gaps and conflicts stop the run."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from continuity.storage.catalog import Catalog
from continuity.storage.manifest import data_key_name, manifest_key_name
from continuity.triggers.wal_archived import WalArchivedTrigger
from continuity.backup.wal import classify

from tests.support.airflow_helpers import load_dag, task_states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")


def _write(sandbox, rows: int = 2000) -> None:
    with psycopg.connect(sandbox.app_conninfo()) as conn:
        conn.execute("UPDATE detections SET confidence = confidence WHERE id <= %s", (rows,))


def _catalog(sandbox) -> tuple[Catalog, dict]:
    catalog = sandbox.catalog()
    return catalog, catalog.locations


def _segments(catalog: Catalog, location: str) -> list[str]:
    return sorted(m.source["wal_file"] for m in catalog.list(kind="wal", location=location)
                  if classify(m.source["wal_file"]).kind == "segment")


def test_hourly_runs_ship_every_segment_once_and_empty_the_spool(sandbox) -> None:
    _write(sandbox)
    first = load_dag("dr_wal_archive").test()
    assert str(first.state) == "success", task_states(first)
    closed = xcom(first, "switch_wal")
    assert [p for p in sandbox.spool_dir.iterdir() if not p.name.startswith(".")] == []

    catalog, _ = _catalog(sandbox)
    for location in ("primary", "dr", "archive"):
        segments = _segments(catalog, location)
        assert closed in segments, location
    assert _segments(catalog, "primary") == _segments(catalog, "dr")

    _write(sandbox)
    second = load_dag("dr_wal_archive").test()
    assert str(second.state) == "success", task_states(second)
    shipped = xcom(second, "ship_wal")["shipped"]
    assert xcom(second, "switch_wal") in shipped
    assert not set(shipped) & set(xcom(first, "ship_wal")["shipped"]), "nothing is shipped twice"
    continuity = xcom(second, "check_wal_continuity")
    assert continuity["dr"]["gaps"] == [] and continuity["dr"]["newest"] == xcom(second, "switch_wal")


def test_same_name_with_different_contents_is_an_alarm(sandbox) -> None:
    catalog, locations = _catalog(sandbox)
    if not _segments(catalog, "dr"):
        _write(sandbox)
        load_dag("dr_wal_archive").test()
        catalog, locations = _catalog(sandbox)
    shipped = _segments(catalog, "dr")[-1]
    before = locations["dr"].get_bytes(data_key_name("wal", f"wal-{shipped}"))
    impostor = sandbox.spool_dir / shipped
    impostor.write_bytes(b"\0" * 16 * 2**20)
    try:
        run = load_dag("dr_wal_archive").test()
        assert str(run.state) == "failed"
        assert task_states(run)["ship_wal"] == "failed"
        assert impostor.exists(), "the conflicting file stays for investigation"
        assert locations["dr"].get_bytes(data_key_name("wal", f"wal-{shipped}")) == before, "never overwritten"
    finally:
        impostor.unlink(missing_ok=True)


def test_a_missing_segment_fails_continuity_naming_it(sandbox, capfd: pytest.CaptureFixture[str]) -> None:
    for _ in range(3):
        _write(sandbox)
        load_dag("dr_wal_archive").test()
    catalog, locations = _catalog(sandbox)
    segments = _segments(catalog, "dr")
    assert len(segments) >= 3
    victim = segments[-2]
    dr = locations["dr"]
    saved = {key: dr.get_bytes(key) for key in (manifest_key_name(f"wal-{victim}"), data_key_name("wal", f"wal-{victim}"))}
    for key in saved:
        dr.delete(key)
    try:
        run = load_dag("dr_wal_archive").test()
        assert str(run.state) == "failed"
        assert task_states(run)["check_wal_continuity"] == "failed"
        states = task_states(run)
        assert states["ship_wal"] == "success"
        assert f"location dr: WAL gap, first missing segment {victim} (1 missing)" in capfd.readouterr().out
    finally:
        for key, data in saved.items():
            dr.put_bytes(key, data)
    healed = load_dag("dr_wal_archive").test()
    assert str(healed.state) == "success"


def test_a_failing_archiver_fails_the_run_with_its_reason(sandbox, capfd: pytest.CaptureFixture[str]) -> None:
    import time

    spool = sandbox.spool_dir
    primary = sandbox.node("primary")
    spool.chmod(0o550)  # the archive_command can no longer write its temporary file
    try:
        _write(sandbox)
        with primary.connect() as conn:
            conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 30
        while not primary.archiver().failing and time.monotonic() < deadline:
            time.sleep(0.2)
        assert primary.archiver().failing
        run = load_dag("dr_wal_archive").test()
        assert str(run.state) == "failed"
        assert task_states(run)["wal_archived"] == "failed", "the wait stops at the failure, not at its timeout"
        assert "the archiver on primary is failing" in capfd.readouterr().out
        # The same verdict from the triggerer, where the deferred wait runs.
        trigger = WalArchivedTrigger(conn_id="continuity_pg_primary", node="primary", segment="FFFFFFFF0000000000000000",
                                     poll_interval=0.2)
        event = asyncio.run(asyncio.wait_for(trigger.run().__anext__(), timeout=20))
        assert event.payload["status"] == "failing" and "HINT: fix archive_command" in event.payload["reason"]
    finally:
        spool.chmod(0o750)
    # After three failures in a row the archiver sleeps up to a minute before it tries again; a reload (what
    # an operator does after fixing archive_command) wakes it at once.
    with primary.connect() as conn:
        conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 60
    while primary.archiver().failing and time.monotonic() < deadline:
        time.sleep(0.5)
    assert str(load_dag("dr_wal_archive").test().state) == "success"


def _fill_spool(sandbox, segments: int) -> list[str]:
    """Close `segments` WAL segments on the primary and wait until the archiver has spooled them."""
    import time

    primary = sandbox.node("primary")
    closed = []
    for _ in range(segments):
        _write(sandbox, rows=200)
        with primary.connect() as conn:
            closed.append(conn.execute("SELECT pg_walfile_name(pg_switch_wal()) AS name").fetchone()["name"])
    deadline = time.monotonic() + 30
    while (primary.archiver().last_archived_wal or "")[:24] < closed[-1] and time.monotonic() < deadline:
        time.sleep(0.2)
    return closed


def test_two_shippers_on_one_spool_both_succeed_and_store_each_segment_once(sandbox) -> None:
    import threading

    from continuity.backup.engine import verify_copy
    from continuity.backup.wal import ship_spool, spool_files

    closed = _fill_spool(sandbox, 3)
    waiting = [w.name for w in spool_files(sandbox.spool_dir)]
    assert set(closed) <= set(waiting)
    keyring = sandbox.keyring()
    required = {loc.name for loc in sandbox.policy.storage.locations if loc.required}
    results: dict[str, object] = {}

    def shipper(name: str) -> None:
        try:
            results[name] = ship_spool(sandbox.spool_dir, keyring=keyring, locations=sandbox.storage_locations(),
                                       required=required)
        except BaseException as exc:  # recorded, asserted below
            results[name] = exc

    threads = [threading.Thread(target=shipper, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(isinstance(r, BaseException) for r in results.values()), results
    shipped = [name for r in results.values() for name in r.shipped]
    assert sorted(shipped) == sorted(set(shipped)), "no file was shipped twice"
    assert set(waiting) <= set(shipped) | {n for r in results.values() for n in r.already_shipped}
    assert not [w for w in spool_files(sandbox.spool_dir) if w.name in waiting]

    catalog = sandbox.catalog()
    for location_name, location in catalog.locations.items():
        for name in waiting:
            manifest = catalog.get(f"wal-{name}", location=location_name)[0]
            assert verify_copy(manifest, location, keyring, deep=True).ok, (location_name, name)
    # Exactly one stored version of each data object: nobody wrote over (or deleted) another's copy.
    policy_location = next(loc for loc in sandbox.policy.storage.locations if loc.name == "dr")
    client = sandbox.s3_client(policy_location.region)
    for name in waiting:
        key = policy_location.prefix + data_key_name("wal", f"wal-{name}")
        listed = client.list_object_versions(Bucket=policy_location.bucket, Prefix=key)
        assert len(listed.get("Versions", [])) == 1 and not listed.get("DeleteMarkers"), (name, listed)


def test_a_spool_file_shipped_by_another_shipper_meanwhile_is_not_an_error(sandbox) -> None:
    from continuity.backup.wal import ShipResult, _ship_one, classify, ship_spool

    _fill_spool(sandbox, 1)
    keyring = sandbox.keyring()
    required = {loc.name for loc in sandbox.policy.storage.locations if loc.required}
    locations = sandbox.storage_locations()
    first = ship_spool(sandbox.spool_dir, keyring=keyring, locations=locations, required=required)
    gone = (first.shipped or first.already_shipped)[-1]
    late = ShipResult()
    _ship_one(sandbox.spool_dir / gone, classify(gone), keyring=keyring, locations=locations, required=required,
              result=late, report=print)
    assert late.already_shipped == [gone] and not late.shipped


def test_a_spool_file_stays_until_every_required_copy_verifies(sandbox) -> None:
    from continuity.backup.wal import WalGap, ship_spool, spool_files

    _fill_spool(sandbox, 1)
    keyring = sandbox.keyring()
    required = {loc.name for loc in sandbox.policy.storage.locations if loc.required}
    locations = sandbox.storage_locations()
    name = spool_files(sandbox.spool_dir)[-1].name
    # Another shipper stored this file, but the dr copy of its data went bad before we got here.
    from continuity.backup.engine import create_backup

    with open(sandbox.spool_dir / name, "rb") as handle:
        create_backup(handle, kind="wal", keyring=keyring, locations=list(locations.values()), required=required,
                      backup_id=f"wal-{name}", source_info={"timeline": 1, "wal_file": name})
    data = data_key_name("wal", f"wal-{name}")
    good = locations["dr"].get_bytes(data)
    locations["dr"].put_bytes(data, good[:-1] + bytes([good[-1] ^ 1]))
    try:
        with pytest.raises(WalGap, match=f"WAL file {name}: not every required location"):
            ship_spool(sandbox.spool_dir, keyring=keyring, locations=locations, required=required)
        assert name in [w.name for w in spool_files(sandbox.spool_dir)], "the only good copy stays in the spool"
    finally:
        locations["dr"].put_bytes(data, good)
    ship_spool(sandbox.spool_dir, keyring=keyring, locations=locations, required=required)
    assert name not in [w.name for w in spool_files(sandbox.spool_dir)]

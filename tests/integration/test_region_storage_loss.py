"""#30 item 1: the primary region's storage lost (its gateway stopped: every client of that region's buckets is
cut, the WAL pusher too) while the database keeps writing. Protection goes on into the DR location, a PITR
from the DR location alone reaches a point inside the outage, and once the bucket answers the catch-up leaves
nothing degraded."""

from __future__ import annotations

import shlex
import time
from datetime import datetime, timezone

import psycopg
import pytest

from continuity.backup.engine import load_manifest, verify_copy
from continuity.backup.wal import spool_files
from continuity.restore.engine import restore_physical, scratch_cluster
from continuity.storage.catalog import Catalog
from continuity.storage.degraded import outstanding

from continuity.waiting import poll

from tests.support.airflow_helpers import load_dag, task_states, xcom
from tests.support.wal import close_segments

pytestmark = pytest.mark.usefixtures("airflow_db")
PRIMARY_REGION = "us-east-1"
SPOOL_LIMIT = 4  # archive_command's bound for this test: the outage outlasts what the spool holds


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def test_with_the_primary_regions_bucket_cut_off_wal_and_backups_go_on_into_dr_and_catch_up_after(sandbox) -> None:
    primary, cluster = sandbox.node("primary"), sandbox.cluster("primary")
    keyring = sandbox.keyring()
    dr_only = Catalog({"dr": sandbox.storage_locations()["dr"]}, keyring)
    with primary.connect() as conn:
        archive_command = conn.execute("SHOW archive_command").fetchone()["archive_command"]
    bounded = " ".join(shlex.quote(p) for p in shlex.split(archive_command)[:-1]) + f" {SPOOL_LIMIT}"
    pusher_log = sandbox.logs_dir / "wal-pusher.log"
    log_start = pusher_log.stat().st_size if pusher_log.exists() else 0
    assert sandbox.start_wal_pusher(), "the session sandbox runs without a pusher until a test starts one"
    try:
        # The spool holds what earlier tests of this sandbox left (no pusher ran): drained before it is bounded,
        # else the bound is met by that backlog, not by the outage (CI run 17: archive_command failed once at
        # the start, before the storage was cut).
        assert poll(lambda: not spool_files(sandbox.spool_dir), timeout=120, interval=0.5), \
            f"the pusher did not drain the spool: {spool_files(sandbox.spool_dir)}"
        cluster.psql(f"ALTER SYSTEM SET archive_command = {_literal(bounded)}; SELECT pg_reload_conf();")
        failures_before = primary.archiver().failed_count
        assert sandbox.cut_storage(PRIMARY_REGION), "the primary region's gateway was running"

        # The daily backups, through Airflow's connections (which reach us-east-1 through its gateway).
        run = load_dag("dr_full_backup").test(logical_date=datetime(2026, 11, 22, 2, 0, tzinfo=timezone.utc))
        assert str(run.state) == "success", task_states(run)
        made = [*xcom(run, "logical_backup"), xcom(run, "physical_backup")]
        for backup_id in made:
            manifest, _ = dr_only.get(backup_id)
            assert "dr" in manifest.locations and "primary" not in manifest.locations, manifest.locations
            assert "primary" in manifest.details["degraded"], manifest.details
            assert verify_copy(manifest, dr_only.locations["dr"], keyring).ok

        # Writes inside the outage around a target second, then more segments than the spool may hold.
        with psycopg.connect(sandbox.app_conninfo(), autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS outage_marks (name text PRIMARY KEY, "
                         "at timestamptz DEFAULT clock_timestamp())")
            conn.execute("INSERT INTO outage_marks (name) VALUES ('before-target')")
            time.sleep(1.5)
            target = datetime.now(timezone.utc)
            time.sleep(1.5)
            conn.execute("INSERT INTO outage_marks (name) VALUES ('after-target')")
        def in_dr(name: str) -> bool:
            try:
                return verify_copy(load_manifest(dr_only.locations["dr"], f"wal-{name}", keyring),
                                   dr_only.locations["dr"], keyring).ok
            except Exception:
                return False

        # At a writer's pace (one segment after the other, as a healthy pusher keeps up with), three times what
        # the spool holds: before the fix the fifth segment found the spool full and archive_command failed.
        closed = []
        for _ in range(3 * SPOOL_LIMIT):
            [name] = close_segments(sandbox, 1)
            assert poll(lambda: in_dr(name), timeout=120, interval=0.5), (
                f"{name}, closed during the outage, did not reach the DR location within 120s")
            closed.append(name)
        assert primary.archiver().failed_count == failures_before, (
            "archive_command never failed: the spool never filled although the outage outlasted it")
        log = pusher_log.read_bytes()[log_start:].decode(errors="replace")
        assert "DEGRADED: " in log and "missing from required primary" in log, log[-2000:]
        owed, _ = outstanding(sandbox.storage_locations())
        owed_ids = {c.backup_id for c in owed if c.missing == "primary"}
        assert {f"wal-{name}" for name in closed} <= owed_ids and set(made) <= owed_ids

        # A point in time inside the outage, from the DR location alone.
        with scratch_cluster(initdb=False) as scratch:
            restore_physical(catalog=dr_only, location="dr", scratch=scratch, target_time=target)
            with scratch.connect("app") as conn:
                marks = {row[0] for row in conn.execute("SELECT name FROM outage_marks")}
        assert marks == {"before-target"}
    finally:
        sandbox.stop_wal_pusher()
        sandbox.restore_storage()
        cluster.psql("ALTER SYSTEM RESET archive_command; SELECT pg_reload_conf();")

    # The bucket back: the hourly run ships what waits, catches every degraded copy up and finds no gap.
    wal = load_dag("dr_wal_archive").test()
    assert str(wal.state) == "success", task_states(wal)
    caught = xcom(wal, "catch_up")
    assert not caught["still_missing"] and len(caught["caught_up"]) + len(caught["already_there"]) >= len(owed_ids)
    assert outstanding(sandbox.storage_locations()) == ([], {}), "nothing is degraded any more"
    locations = sandbox.storage_locations()
    for backup_id in sorted(owed_ids):
        manifest = load_manifest(locations["primary"], backup_id, keyring)
        assert verify_copy(manifest, locations["primary"], keyring, deep=backup_id in made).ok, backup_id

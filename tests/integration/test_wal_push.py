"""WAL pushed as it closes (the asynchronous pusher behind archive-wal.sh), fetched for restore_command,
and pushed synchronously by `continuity wal push`, against the sandbox's real primary and S3 endpoint."""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import psycopg

from continuity.backup.engine import load_manifest
from continuity.cli import EXIT_FAILURE, EXIT_INTEGRITY, EXIT_OK, EXIT_USAGE
from continuity.postgres.cluster import free_port
from continuity.storage.locations import locations_from_policy
from continuity.backup.wal import classify, push_continuously, spool_files

from tests.support.wal import close_segments

REQUIRED = ("primary", "dr")


def _stored_everywhere(sandbox, names: list[str]) -> dict[str, list[str]]:
    """Per required location, the names not (yet) stored there with an authentic manifest."""
    locations, keyring = sandbox.storage_locations(), sandbox.keyring()
    missing: dict[str, list[str]] = {}
    for location in REQUIRED:
        for name in names:
            try:
                load_manifest(locations[location], f"wal-{name}", keyring)
            except Exception:
                missing.setdefault(location, []).append(name)
    return missing


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _wait(condition, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _cli(sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "continuity.cli", "wal", *args, "--root", str(sandbox.root)],
                          capture_output=True, text=True)


def test_the_pusher_stores_every_closed_segment_in_every_required_location_within_seconds(sandbox) -> None:
    assert sandbox.start_wal_pusher(), "the session sandbox runs without a pusher until a test starts one"
    try:
        closed = close_segments(sandbox, 3)
        started = time.monotonic()
        _wait(lambda: not _stored_everywhere(sandbox, closed), timeout=60,
              what=f"{closed} in every required location")
        seconds = time.monotonic() - started
        _wait(lambda: not spool_files(sandbox.spool_dir), timeout=30, what="the spool to empty")

        def said() -> bool:  # the pusher reports a pass once it ends, just after the spool empties
            log = (sandbox.logs_dir / "wal-pusher.log").read_text()
            return "pushed" in log and closed[-1] in log

        _wait(said, timeout=30, what=f"the pusher's log to report {closed[-1]} pushed")
        print(f"3 segments in every required location {seconds:.1f}s after the last closed")
        assert sandbox.status()["wal_pusher"]["running"] is True
    finally:
        assert sandbox.stop_wal_pusher()
    assert sandbox.status()["wal_pusher"]["running"] is False


def test_with_storage_down_segments_queue_and_a_full_queue_fails_archive_command_then_all_drain(sandbox) -> None:
    """The storage unreachable: segments wait in the spool and the archiver reports no failure; once the spool
    holds its limit, archive_command fails and PostgreSQL keeps the segment; storage back, everything is
    stored in order and nothing is missing."""
    primary, cluster = sandbox.node("primary"), sandbox.cluster("primary")
    dead = free_port()  # nothing listens there: every request is refused
    unreachable = locations_from_policy(sandbox.policy, lambda loc: boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{dead}", region_name=loc.region, aws_access_key_id="x",
        aws_secret_access_key="y", config=boto3.session.Config(retries={"total_max_attempts": 1})),
        base_dir=sandbox.root)
    required = {loc.name for loc in sandbox.policy.storage.locations if loc.required}
    keyring = sandbox.keyring()
    messages: list[str] = []

    def pusher(locations, stop):
        thread = threading.Thread(target=push_continuously, args=(sandbox.spool_dir,), daemon=True, kwargs=dict(
            keyring=keyring, locations=locations, required=required, stop=stop, interval=0.3, retry=0.5,
            report=messages.append))
        thread.start()
        return thread

    stop = threading.Event()
    thread = pusher(unreachable, stop)
    archive_command = None
    try:
        failures_before = primary.archiver().failed_count
        queued = close_segments(sandbox, 3)
        _wait(lambda: {w.name for w in spool_files(sandbox.spool_dir)} >= set(queued), timeout=30,
              what="the segments in the spool")
        _wait(lambda: any("pushing failed" in m for m in messages), timeout=30, what="the pusher to fail")
        assert primary.archiver().failed_count == failures_before, "a queue with room takes every segment"
        assert any("files wait in the spool" in m for m in messages), messages

        # The queue full: archive_command refuses the next segment, PostgreSQL keeps it and retries.
        with primary.connect() as conn:
            archive_command = conn.execute("SHOW archive_command").fetchone()["archive_command"]
        limit = len(spool_files(sandbox.spool_dir))
        full = " ".join(shlex.quote(p) for p in shlex.split(archive_command)[:-1]) + f" {limit}"
        cluster.psql(f"ALTER SYSTEM SET archive_command = {_literal(full)}; SELECT pg_reload_conf();")
        [refused] = close_segments(sandbox, 1)
        _wait(lambda: primary.archiver().failed_count > failures_before, timeout=30,
              what="archive_command to fail on the full queue")
        assert primary.archiver().last_failed_wal == refused
        assert refused not in {w.name for w in spool_files(sandbox.spool_dir)}

        # Storage back (and room in the queue): everything is stored, oldest first.
        stop.set()
        thread.join(timeout=30)
        cluster.psql("ALTER SYSTEM RESET archive_command; SELECT pg_reload_conf();")
        archive_command = None
        messages.clear()
        stop = threading.Event()
        thread = pusher(sandbox.storage_locations(), stop)
        _wait(lambda: not _stored_everywhere(sandbox, [*queued, refused]), timeout=90,
              what="the queued and the refused segments in every required location")
        # The pusher says "pushed" once its whole batch is stored: the last upload lands just before.
        _wait(lambda: any(m.startswith("pushed") for m in messages), timeout=30, what="the pusher's report")
        pushed = [m for m in messages if m.startswith("pushed")]
        assert pushed and pushed[0].split("(")[1].split(" ..")[0] <= queued[0], pushed
        assert not primary.archiver().failing or primary.archiver().last_archived_wal >= refused
    finally:
        stop.set()
        thread.join(timeout=30)
        if archive_command is not None:
            cluster.psql("ALTER SYSTEM RESET archive_command; SELECT pg_reload_conf();")


def test_wal_push_and_fetch_as_archive_and_restore_command(sandbox, tmp_path: Path) -> None:
    [name] = close_segments(sandbox, 1)
    primary = sandbox.node("primary")
    _wait(lambda: (primary.archiver().last_archived_wal or "") >= name, timeout=30, what=f"{name} queued")
    queued = sandbox.spool_dir / name
    segment = tmp_path / name
    segment.write_bytes(queued.read_bytes())
    digest = hashlib.sha256(segment.read_bytes()).hexdigest()

    pushed = _cli(sandbox, "push", str(segment))
    assert pushed.returncode == EXIT_OK, pushed.stderr
    assert not _stored_everywhere(sandbox, [name]), "success means stored in every required location"
    again = _cli(sandbox, "push", str(segment))
    assert again.returncode == EXIT_OK, "the same segment stored already is success (a retried archive_command)"
    impostor = tmp_path / "impostor"
    impostor.write_bytes(b"\0" * 16 * 2**20)
    conflict = _cli(sandbox, "push", str(impostor), "--name", name)
    assert conflict.returncode == EXIT_INTEGRITY and "ALARM" in conflict.stderr and name in conflict.stderr

    fetched = tmp_path / "pg_wal" / "RECOVERYXLOG"
    fetched.parent.mkdir()
    got = _cli(sandbox, "fetch", name, str(fetched), "--location", "dr")
    assert got.returncode == EXIT_OK, got.stderr
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == digest
    assert [p.name for p in fetched.parent.iterdir()] == ["RECOVERYXLOG"], "no temporary file left behind"

    beyond = _cli(sandbox, "fetch", "0000000100000FFF000000FF", str(tmp_path / "pg_wal" / "NEXT"))
    assert beyond.returncode == EXIT_FAILURE and not (tmp_path / "pg_wal" / "NEXT").exists(), \
        "past the archive's end: exit 1, as restore_command must"
    bad = _cli(sandbox, "fetch", "not-a-segment", str(tmp_path / "x"))
    assert bad.returncode == EXIT_USAGE and "not a WAL file name" in bad.stderr
    assert classify(name) is not None
    queued.unlink()  # stored everywhere: the spool's copy is done with (as the shipper would remove it)


def test_pitr_from_the_pushed_archive_alone_to_seconds_before_a_regional_loss(sandbox) -> None:
    """No hourly shipping, no forced switch: the pusher stores segments as they fill, and the DR region's
    bucket alone restores to a point between two commits made seconds before the primary region is
    lost (the pusher stopped: nothing more leaves it)."""
    from datetime import datetime, timezone

    from continuity.backup.full import physical_backup
    from continuity.restore.engine import restore_physical, scratch_cluster

    catalog = sandbox.catalog()
    physical_backup(node=sandbox.backup_node("sync1"), keyring=sandbox.keyring(),
                    locations=list(catalog.locations.values()), required=set(REQUIRED),
                    backup_id=f"physical-sync1-pushed-{time.time_ns()}", report=lambda _m: None)
    assert sandbox.start_wal_pusher()
    try:
        with psycopg.connect(sandbox.app_conninfo(), autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS pushed_marks (name text PRIMARY KEY)")
            conn.execute("INSERT INTO pushed_marks VALUES ('A')")
            time.sleep(1)
            target = datetime.now(timezone.utc)
            time.sleep(1)
            conn.execute("INSERT INTO pushed_marks VALUES ('B')")
            last_commit = time.monotonic()
            segment = conn.execute("SELECT pg_walfile_name(pg_current_wal_insert_lsn())").fetchone()[0]
            # The application keeps writing: its WAL fills the segment holding B (about 20 MiB of rows).
            conn.execute("CREATE TABLE pushed_filler AS SELECT repeat(md5(i::text), 32) AS x "
                         "FROM generate_series(1, 20000) AS i")
        _wait(lambda: not _stored_everywhere(sandbox, [segment]), timeout=60,
              what=f"segment {segment} (holding B) in every required location")
        lost_after = time.monotonic() - last_commit
    finally:
        assert sandbox.stop_wal_pusher()  # the primary region is lost: nothing more is pushed
    print(f"B was committed {lost_after:.1f} s before the loss and is in the DR archive")
    try:
        with scratch_cluster(initdb=False) as scratch:
            restore_physical(catalog=sandbox.catalog(), location="dr", scratch=scratch, target_time=target)
            with scratch.connect("app") as conn:
                assert {row[0] for row in conn.execute("SELECT name FROM pushed_marks")} == {"A"}
        with scratch_cluster(initdb=False) as latest:
            restore_physical(catalog=sandbox.catalog(), location="dr", scratch=latest)
            with latest.connect("app") as conn:
                assert {row[0] for row in conn.execute("SELECT name FROM pushed_marks")} == {"A", "B"}
    finally:
        with psycopg.connect(sandbox.app_conninfo(), autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS pushed_filler")


def test_a_standby_cut_from_its_upstream_replays_from_the_archive_through_the_wal_service(sandbox) -> None:
    """restore_command (fetch-wal.sh) asks the pusher's socket, which holds the keys; the standby's OS user
    gets decrypted, verified WAL and nothing else. A file the archive does not hold is exit 1 (streaming
    resumes), never an error."""
    dr = sandbox.cluster("dr")
    assert "fetch-wal.sh" in dr.psql("SHOW restore_command;")
    socket = sandbox.wal_fetch_socket
    assert sandbox.start_wal_pusher()
    try:
        _wait(lambda: socket.is_socket(), timeout=30, what="the WAL service's socket")
        assert socket.stat().st_mode & 0o777 == 0o600 and socket.stat().st_uid == sandbox.user.uid
        dr.psql("ALTER SYSTEM SET primary_conninfo = ''; SELECT pg_reload_conf();")
        _wait(lambda: dr.psql("SELECT count(*) FROM pg_stat_wal_receiver;").strip() == "0", timeout=30,
              what="the dr standby to stop streaming")
        marker = f"from-the-archive-{time.time_ns()}"
        with psycopg.connect(sandbox.app_conninfo(), autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS archive_marks (name text PRIMARY KEY)")
            conn.execute("INSERT INTO archive_marks VALUES (%s)", (marker,))
        [closed] = close_segments(sandbox, 1)
        _wait(lambda: not _stored_everywhere(sandbox, [closed]), timeout=60, what=f"{closed} stored")

        def replayed() -> bool:
            try:
                return dr.psql(f"SELECT count(*) FROM archive_marks WHERE name = '{marker}';", dbname="app").strip() == "1"
            except Exception:
                return False  # the table itself is not replayed yet

        _wait(replayed, timeout=90, what="the dr standby to replay the marker from the archive")
        log = (sandbox.logs_dir / "wal-pusher.log").read_text()
        assert f"served {closed}" in log, log[-2000:]
        assert dr.psql("SELECT count(*) FROM pg_stat_wal_receiver;").strip() == "0", "not by streaming"
    finally:
        dr.psql("ALTER SYSTEM RESET primary_conninfo; SELECT pg_reload_conf();")
        assert sandbox.stop_wal_pusher()
    assert not socket.exists(), "the socket goes with the service"
    sandbox.wait_streaming(timeout=60)

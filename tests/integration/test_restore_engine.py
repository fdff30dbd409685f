"""The restore engine: logical restore, physical restore, point-in-time recovery,
all from the DR region's copies alone, into scratch clusters that are always removed."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from continuity.storage.catalog import Catalog
from continuity.backup.full import NodeAddress, logical_backup, physical_backup, row_counts
from continuity.restore.engine import (RestoreError, choose_base_backup, restore_logical, restore_physical,
                                       scratch_cluster)

from tests.support.airflow_helpers import load_dag

pytestmark = pytest.mark.usefixtures("airflow_db")


def _catalog(sandbox) -> Catalog:
    return sandbox.catalog()


def _node(sandbox, name: str) -> NodeAddress:
    return sandbox.backup_node(name)


@pytest.fixture(scope="module")
def pitr_setup(sandbox):
    """A base backup, then commit A, a target time and WAL position, commit B, and the WAL shipped."""
    catalog = _catalog(sandbox)
    base = physical_backup(node=_node(sandbox, "sync1"), keyring=sandbox.keyring(),
                           locations=list(catalog.locations.values()), required={"primary", "dr"},
                           backup_id=f"physical-sync1-pitr-{time.time_ns()}", report=lambda _m: None)
    with psycopg.connect(sandbox.app_conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pitr_marks (name text PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
        conn.execute("INSERT INTO pitr_marks (name) VALUES ('A')")
        lsn = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
        time.sleep(1.5)
        target = datetime.now(timezone.utc)
        time.sleep(1.5)
        conn.execute("INSERT INTO pitr_marks (name) VALUES ('B')")
    assert str(load_dag("dr_wal_archive").test().state) == "success"
    return base, target, lsn


def _marks(scratch) -> set[str]:
    with scratch.connect("app") as conn:
        return {row[0] for row in conn.execute("SELECT name FROM pitr_marks")}


def test_point_in_time_between_two_commits_restores_the_first_not_the_second(sandbox, pitr_setup) -> None:
    base, target, _ = pitr_setup
    catalog = _catalog(sandbox)
    with scratch_cluster(initdb=False) as scratch:
        used = restore_physical(catalog=catalog, location="dr", scratch=scratch, target_time=target)
        assert used.finished_at <= target
        assert _marks(scratch) == {"A"}
        with scratch.connect("app") as conn:
            conn.execute("INSERT INTO pitr_marks (name) VALUES ('writable')")  # promoted: accepts writes
    assert not scratch.root.exists(), "the scratch cluster is always removed"


def test_recovery_to_a_wal_position_between_two_commits_restores_the_first_not_the_second(sandbox, pitr_setup) -> None:
    _, _, lsn = pitr_setup
    with scratch_cluster(initdb=False) as scratch:
        restore_physical(catalog=_catalog(sandbox), location="dr", scratch=scratch, target_lsn=lsn)
        assert _marks(scratch) == {"A"}


def test_wal_position_outside_the_window_or_malformed_is_refused(sandbox, pitr_setup) -> None:
    catalog = _catalog(sandbox)
    with pytest.raises(RestoreError, match=r"target LSN 0/10 is outside the recovery window of location dr: [0-9A-F]+/[0-9A-F]+ to "):
        choose_base_backup(catalog, "dr", None, "0/10")
    with pytest.raises(RestoreError, match="'yesterday' is not a WAL position"):
        choose_base_backup(catalog, "dr", None, "yesterday")
    malformed = _cli(sandbox, "--lsn", "yesterday", "--to-cluster", "/tmp/continuity-never-created")
    assert malformed.returncode == 2 and "--lsn" in malformed.stderr and "Traceback" not in malformed.stderr


def test_latest_point_has_both_commits(sandbox, pitr_setup) -> None:
    catalog = _catalog(sandbox)
    with scratch_cluster(initdb=False) as scratch:
        restore_physical(catalog=catalog, location="dr", scratch=scratch)
        assert {"A", "B"} <= _marks(scratch)
        assert set(scratch.timings) >= {"fetch_and_unpack", "wal_staging", "wal_replay"}


def test_target_outside_the_window_is_refused_with_the_window(sandbox, pitr_setup) -> None:
    catalog = _catalog(sandbox)
    with pytest.raises(RestoreError, match=r"outside the recovery window of location dr: \d{4}-\d\d-\d\d .* to "):
        choose_base_backup(catalog, "dr", datetime(2020, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(RestoreError, match="outside the recovery window"):
        choose_base_backup(catalog, "dr", datetime.now(timezone.utc) + timedelta(days=1))


def test_logical_restore_into_scratch_has_the_manifest_counts(sandbox) -> None:
    catalog = _catalog(sandbox)
    manifest = logical_backup(node=_node(sandbox, "primary"), database="app", keyring=sandbox.keyring(),
                              locations=list(catalog.locations.values()), required={"primary", "dr"},
                              backup_id=f"logical-app-restore-{time.time_ns()}", report=lambda _m: None)
    with scratch_cluster() as scratch:
        database = restore_logical(manifest, catalog=catalog, location="dr", scratch=scratch)
        with scratch.connect(database) as conn:
            assert row_counts(conn) == manifest.details["row_counts"]
        # Parallel jobs read a decrypted file in the scratch directory, removed afterwards.
        parallel = restore_logical(manifest, catalog=catalog, location="dr", scratch=scratch, database="parallel", jobs=2)
        with scratch.connect(parallel) as conn:
            assert row_counts(conn) == manifest.details["row_counts"]
        assert not (scratch.root / "restore.dump").exists()


def _cli(sandbox, *args: str):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "continuity.cli", "restore", *args, "--root", str(sandbox.root)],
                          capture_output=True, text=True, env={**os.environ})


def test_cli_restores_a_point_in_time_to_a_cluster_directory(sandbox, pitr_setup) -> None:
    import shutil
    import tempfile
    from pathlib import Path

    from continuity.postgres.cluster import ServiceUser

    _, target, _ = pitr_setup
    tmp_path = Path(tempfile.mkdtemp(prefix="continuity-sandbox-cli-restore-"))
    ServiceUser.detect().make_dir(tmp_path, 0o755)
    data_dir = tmp_path / "rebuilt"
    result = _cli(sandbox, "--time", target.isoformat(), "--to-cluster", str(data_dir), "--location", "dr")
    assert result.returncode == 0, result.stderr
    assert "running on port" in result.stdout
    from continuity.postgres.cluster import LocalCluster, ServiceUser, find_bindir

    port = int(result.stdout.split("running on port ")[1].split(";")[0])
    socket_dir = tmp_path / ".rebuilt.continuity" / "run"
    cluster = LocalCluster(name="rebuilt", data_dir=data_dir, port=port, socket_dir=socket_dir,
                           log_file=tmp_path / "x.log", user=ServiceUser.detect(), bindir=find_bindir())
    try:
        with psycopg.connect(host=str(socket_dir), port=port, user="postgres", dbname="app") as conn:
            assert {r[0] for r in conn.execute("SELECT name FROM pitr_marks")} == {"A"}
    finally:
        cluster.stop(mode="immediate")
    refused = _cli(sandbox, "--time", target.isoformat(), "--to-cluster", str(data_dir))
    assert refused.returncode == 2 and "not empty; refusing to overwrite" in refused.stderr
    outside = _cli(sandbox, "--time", "2020-01-01T00:00:00Z", "--to-cluster", str(tmp_path / "other"))
    assert outside.returncode == 1 and "outside the recovery window" in outside.stderr
    assert "Traceback" not in outside.stderr
    shutil.rmtree(tmp_path)


def test_cli_restores_a_logical_backup_into_an_empty_database(sandbox) -> None:
    catalog = _catalog(sandbox)
    manifest = logical_backup(node=_node(sandbox, "primary"), database="app", keyring=sandbox.keyring(),
                              locations=list(catalog.locations.values()), required={"primary", "dr"},
                              backup_id=f"logical-app-cli-{time.time_ns()}", report=lambda _m: None)
    with scratch_cluster() as scratch:
        scratch.cluster.psql("CREATE DATABASE target;")
        dsn = scratch.conninfo("target")
        result = _cli(sandbox, manifest.backup_id, "--to-database", dsn)
        assert result.returncode == 0, result.stderr
        with scratch.connect("target") as conn:
            assert row_counts(conn) == manifest.details["row_counts"]
        again = _cli(sandbox, manifest.backup_id, "--to-database", dsn)
        assert again.returncode == 2 and "refusing to restore over them" in again.stderr


def test_great_expectations_pass_on_a_faithful_restore_and_name_what_broke(sandbox) -> None:
    from continuity.restore.expectations import validate_restored

    catalog = _catalog(sandbox)
    manifest = logical_backup(node=_node(sandbox, "primary"), database="app", keyring=sandbox.keyring(),
                              locations=list(catalog.locations.values()), required={"primary", "dr"},
                              backup_id=f"logical-app-gx-{time.time_ns()}", report=lambda _m: None)
    with scratch_cluster() as scratch:
        database = restore_logical(manifest, catalog=catalog, location="dr", scratch=scratch)
        checks = validate_restored(manifest=manifest, socket_dir=scratch.cluster.socket_dir, port=scratch.port,
                                   database=database)
        assert all(c.success for c in checks), [c for c in checks if not c.success]
        kinds = {c.expectation for c in checks}
        assert {"expect_table_row_count_to_equal", "expect_column_values_to_be_unique", "unexpected_rows_expectation",
                "expect_column_max_to_be_between", "schema_fingerprint_matches"} <= kinds
        month_later = manifest.model_copy(update={"finished_at": manifest.finished_at + timedelta(days=30)})
        stale = [c for c in validate_restored(manifest=month_later, socket_dir=scratch.cluster.socket_dir,
                                              port=scratch.port, database=database, tables=["videos"]) if not c.success]
        assert [c.expectation for c in stale] == ["expect_column_max_to_be_between"], "a month without new rows is stale"
        with scratch.connect(database, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")  # rows vanish behind the constraints' back
            conn.execute("DELETE FROM videos WHERE id <= 10")
        broken = [c for c in validate_restored(manifest=manifest, socket_dir=scratch.cluster.socket_dir,
                                               port=scratch.port, database=database) if not c.success]
        described = {(c.table, c.expectation) for c in broken}
        assert ("videos", "expect_table_row_count_to_equal") in described
        assert ("(schema)", "schema_fingerprint_matches") not in described, "the schema itself is intact"
        assert any(c.table == "detections" and "detections_video_id_fkey" in c.description for c in broken)


def test_sample_restore_takes_foreign_key_parents_and_validates(sandbox) -> None:
    from continuity.restore.expectations import validate_restored
    from continuity.restore.engine import sample_tables

    catalog = _catalog(sandbox)
    manifest = logical_backup(node=_node(sandbox, "primary"), database="app", keyring=sandbox.keyring(),
                              locations=list(catalog.locations.values()), required={"primary", "dr"},
                              backup_id=f"logical-app-sample-{time.time_ns()}", report=lambda _m: None)
    assert ["public.annotations", "video_id", "public.videos", "id"] in manifest.details["foreign_keys"]
    sample = sample_tables(manifest, size=1, critical=["users"], seed="fixed")
    assert "users" in sample
    assert sample == sample_tables(manifest, size=1, critical=["users"], seed="fixed"), "stable per seed"
    detections_sample = sample_tables(manifest, size=0, critical=["detections"], seed="x")
    assert detections_sample == ["detections", "projects", "users", "videos"], "parents come along"
    with scratch_cluster() as scratch:
        database = restore_logical(manifest, catalog=catalog, location="dr", scratch=scratch, tables=detections_sample)
        with scratch.connect(database) as conn:
            restored = row_counts(conn)
        assert set(restored) == {f"public.{t}" for t in detections_sample}
        checks = validate_restored(manifest=manifest, socket_dir=scratch.cluster.socket_dir, port=scratch.port,
                                   database=database, tables=detections_sample)
        assert checks and all(c.success for c in checks), [c for c in checks if not c.success]
        assert any("detections_video_id_fkey" in c.description for c in checks)
        schema_checks = {c.table for c in checks if c.expectation == "table_schema_matches" and c.success}
        assert schema_checks == set(detections_sample), "each sampled table's schema matches the manifest"
        with scratch.connect(database, autocommit=True) as conn:
            conn.execute("ALTER TABLE users ALTER COLUMN email DROP NOT NULL")
        drifted = validate_restored(manifest=manifest, socket_dir=scratch.cluster.socket_dir, port=scratch.port,
                                    database=database, tables=detections_sample)
        failed = [(c.table, c.expectation) for c in drifted if not c.success]
        assert failed == [("users", "table_schema_matches")]


def test_amcheck_passes_on_a_clean_cluster_and_catches_a_corrupted_page() -> None:
    from continuity.restore.engine import amcheck

    with scratch_cluster() as scratch:
        with scratch.connect(autocommit=True) as conn:
            conn.execute("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g")
            conn.execute("CREATE INDEX ON t (id)")
            conn.execute("CHECKPOINT")
            relation = conn.execute("SELECT pg_relation_filepath('t')").fetchone()[0]
        assert amcheck(scratch) == (True, "pg_amcheck found no corruption in any database")
        scratch.cluster.stop()
        path = scratch.cluster.data_dir / relation
        blob = bytearray(path.read_bytes())
        blob[8192 + 4000] ^= 0xFF  # inside the second heap page, past its header
        path.write_bytes(bytes(blob))
        scratch.cluster.start()
        ok, detail = amcheck(scratch)
        assert not ok and "pg_amcheck exited" in detail


def test_cli_never_puts_a_database_password_in_argv(sandbox) -> None:
    import os
    import secrets
    import subprocess
    import sys

    catalog = _catalog(sandbox)
    manifest = logical_backup(node=_node(sandbox, "primary"), database="app", keyring=sandbox.keyring(),
                              locations=list(catalog.locations.values()), required={"primary", "dr"},
                              backup_id=f"logical-app-argv-{time.time_ns()}", report=lambda _m: None)
    password = "pw-" + secrets.token_hex(8)
    with scratch_cluster() as scratch:
        scratch.cluster.psql(f"CREATE ROLE restorer LOGIN PASSWORD '{password}'; "
                             f"CREATE DATABASE target OWNER restorer;")
        scratch.write_private_conf({"listen_addresses": "'127.0.0.1'"})  # TCP: scram, so the password is needed
        scratch.cluster.stop()
        scratch.cluster.start()
        over_tcp = f"host=127.0.0.1 port={scratch.cluster.port} user=restorer dbname=target"
        refused = _cli(sandbox, manifest.backup_id, "--to-database", f"{over_tcp} password={password}")
        assert refused.returncode == 2 and "carries a password" in refused.stderr
        assert password not in refused.stderr

        process = subprocess.Popen([sys.executable, "-m", "continuity.cli", "restore", manifest.backup_id,
                                    "--to-database", over_tcp, "--root", str(sandbox.root)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "PGPASSWORD": password})
        seen: list[str] = []
        while process.poll() is None:  # every command line on the machine while the restore runs
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
                    except OSError:
                        continue
                    if "pg_restore" in cmdline or "continuity.cli" in cmdline:
                        seen.append(cmdline)
            time.sleep(0.005)
        _, stderr = process.communicate()
        assert process.returncode == 0, stderr
        assert any("pg_restore" in c for c in seen), "the restore's pg_restore was observed"
        assert not [c for c in seen if password in c]
        with scratch.connect("target") as conn:
            assert row_counts(conn) == manifest.details["row_counts"]


def test_a_hostile_dump_restores_without_running_a_program_or_seeing_a_secret(sandbox, monkeypatch, tmp_path) -> None:

    from continuity.backup.engine import backup_from_command
    from continuity.postgres.cluster import find_tool

    monkeypatch.setenv("AIRFLOW_CONN_CANARY", "postgres://u:canary-secret-in-env@h/db")
    drop = tmp_path / "drop"
    drop.mkdir()
    drop.chmod(0o777)
    leaked = drop / "leaked-environment.txt"
    # Under a prefix of its own: this hostile dump must never be the newest logical backup others test.
    locations = sandbox.storage_locations()
    for location in locations.values():
        location.prefix = "hostile-tests/"
    catalog = Catalog(locations, sandbox.keyring())
    with scratch_cluster() as source:
        # A CHECK constraint whose function, once restored elsewhere, runs a program that dumps the
        # server's environment (harmless where it was written: it only acts on another port).
        source.cluster.psql("CREATE DATABASE hostile;")
        source.cluster.psql(f"""
            CREATE FUNCTION looks_fine(v int) RETURNS boolean LANGUAGE plpgsql AS $f$
            BEGIN
              IF current_setting('port')::int <> {source.port} THEN
                EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', 'env > {leaked}');
              END IF;
              RETURN true;
            END $f$;
            CREATE TABLE notes (id int PRIMARY KEY, body text, CHECK (looks_fine(id)));
            INSERT INTO notes VALUES (1, 'hello');""", dbname="hostile")
        manifest = backup_from_command(
            [find_tool("pg_dump"), "--format=custom", "-h", str(source.cluster.socket_dir), "-p", str(source.port),
             "-U", "postgres", "hostile"],
            kind="logical", keyring=sandbox.keyring(), locations=list(catalog.locations.values()),
            required={"primary", "dr"}, backup_id=f"logical-hostile-{time.time_ns()}", report=lambda _m: None,
            source_info={"database": "hostile"}, details={"row_counts": {"public.notes": 1}})
    with scratch_cluster() as scratch:
        environ = open(f"/proc/{scratch.cluster.postmaster_pid()}/environ", "rb").read()
        assert b"canary-secret-in-env" not in environ and b"AIRFLOW_CONN_" not in environ, \
            "the scratch server starts with a scrubbed environment"
        with pytest.raises(RestoreError, match="must be superuser or have privileges of the pg_execute_server_program role"):
            restore_logical(manifest, catalog=catalog, location="dr", scratch=scratch)
    assert not leaked.exists(), "no program ran and nothing of the environment left the server"


def test_unpacking_a_base_backup_streams_it_intact_and_stops_cleanly_on_a_flipped_byte(tmp_path) -> None:
    """The writer thread and tar keep up with each other; a chunk failing authentication mid-stream ends
    the restore with the reason (the writer thread and tar are stopped, nothing hangs)."""
    import io
    import os
    import tarfile
    import threading

    from continuity.backup.engine import create_backup
    from continuity.storage.keys import Keyring
    from continuity.postgres.cluster import ServiceUser
    from continuity.restore.engine import unpack_base_backup
    from continuity.storage.locations import FileLocation

    payload = {f"base/{n}": os.urandom(700_000) for n in range(5)}  # several 1 MiB chunks, incompressible
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in payload.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    keyring = Keyring(keys={"k": os.urandom(32)}, active="k")
    store = tmp_path / "store"
    location = FileLocation(name="local", region="local", path=store)
    manifest = create_backup(io.BytesIO(buffer.getvalue()), kind="physical", backup_id="physical-unpack",
                             keyring=keyring, locations=[location])
    user = ServiceUser.detect()
    with scratch_cluster(initdb=False) as scratch:  # a directory the database's OS user can reach
        unpack_base_backup(manifest, location, keyring, scratch.root / "good", user=user)
        for name, data in payload.items():
            assert (scratch.root / "good" / name).read_bytes() == data

        stored = store / manifest.data_key_name
        blob = bytearray(stored.read_bytes())
        blob[len(blob) // 2] ^= 0x01
        stored.write_bytes(bytes(blob))
        threads = threading.active_count()
        with pytest.raises(RestoreError, match="chunk .* failed authentication"):
            unpack_base_backup(manifest, location, keyring, scratch.root / "bad", user=user)
        assert threading.active_count() == threads, "the writer thread ended with the restore"


def test_a_wal_file_failing_while_recovery_replays_aborts_the_restore_naming_it(sandbox, pitr_setup) -> None:
    """WAL is staged while PostgreSQL replays: a segment that fails authentication midway stops the restore
    with its name, never a cluster promoted short of its target."""
    import io

    from continuity.backup.wal import classify

    base, _, _ = pitr_setup
    for _ in range(2):  # at least two segments after the base backup's start, whatever ran before
        with psycopg.connect(sandbox.app_conninfo(), autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS wal_fillers (at timestamptz DEFAULT clock_timestamp())")
            conn.execute("INSERT INTO wal_fillers DEFAULT VALUES")
        sandbox.cluster(sandbox.current_primary()).psql("SELECT pg_switch_wal();")
    assert str(load_dag("dr_wal_archive").test().state) == "success"
    catalog = _catalog(sandbox)
    start = classify(base.source["start_wal_file"])
    segments = [m for m in catalog.list(kind="wal", location="dr")
                if (wal := classify(m.source["wal_file"])).kind == "segment" and wal.timeline == start.timeline
                and wal.segno >= start.segno]
    assert len(segments) >= 2
    victim = segments[len(segments) // 2]

    class Corrupting:
        def __init__(self, inner) -> None:
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def open_reader(self, key: str):
            reader = self.inner.open_reader(key)
            if key != victim.data_key_name:
                return reader
            with reader:
                blob = bytearray(reader.read())
            blob[len(blob) // 2] ^= 0x01
            return io.BytesIO(bytes(blob))

    catalog.locations = {**catalog.locations, "dr": Corrupting(catalog.locations["dr"])}
    with scratch_cluster(initdb=False) as scratch:
        with pytest.raises(RestoreError, match=f"staging the WAL of {base.backup_id} .* failed: .*{victim.backup_id}"):
            restore_physical(catalog=catalog, location="dr", scratch=scratch, base=base, timeout=120)


def test_a_base_backup_of_a_cluster_set_up_like_the_compose_nodes_restores_private_and_not_archiving(sandbox) -> None:
    """#30 item 10: the source keeps its settings where the compose nodes do (ALTER SYSTEM: archiving on, an
    archive_command, listening everywhere; no node.conf include). A point-in-time restore of its base backup still
    finds its WAL, listens on its private socket only and archives nothing."""
    import shutil
    import tempfile
    from pathlib import Path

    evidence_dir = Path(tempfile.mkdtemp(prefix="continuity-archived-"))
    evidence_dir.chmod(0o777)  # the archive_command would run as the server's OS user
    evidence = evidence_dir / "archived-by-the-restored-copy"
    primary = sandbox.cluster("primary")
    conf = primary.data_dir / "postgresql.conf"
    sandbox_conf = conf.read_text()
    catalog = _catalog(sandbox)
    # Written, not reloaded: the running primary keeps its settings, the base backup carries these files.
    primary.psql(f"ALTER SYSTEM SET listen_addresses = '*'; ALTER SYSTEM SET archive_mode = 'on'; "
                 f"ALTER SYSTEM SET archive_command = 'touch {evidence}'")
    try:
        primary.user.write_file(conf, "".join(line for line in sandbox_conf.splitlines(keepends=True)
                                              if "include_if_exists" not in line))
        physical_backup(node=_node(sandbox, "primary"), keyring=sandbox.keyring(),
                        locations=list(catalog.locations.values()), required={"primary", "dr"},
                        backup_id=f"physical-primary-compose-like-{time.time_ns()}", report=lambda _m: None)
    finally:
        primary.user.write_file(conf, sandbox_conf)
        primary.psql("ALTER SYSTEM RESET listen_addresses; ALTER SYSTEM RESET archive_mode; "
                     "ALTER SYSTEM RESET archive_command")
    marker = f"after-the-base-backup-{time.time_ns()}"
    with psycopg.connect(sandbox.app_conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pitr_marks (name text PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
        conn.execute("INSERT INTO pitr_marks (name) VALUES (%s)", (marker,))
    assert str(load_dag("dr_wal_archive").test().state) == "success"
    try:
        with scratch_cluster(initdb=False) as scratch:
            restore_physical(catalog=_catalog(sandbox), location="dr", scratch=scratch)
            assert marker in _marks(scratch), "the WAL after the base backup was replayed (restore_command read)"
            with scratch.connect() as conn:
                settings = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN "
                                             "('listen_addresses', 'archive_mode', 'port')").fetchall())
                conn.execute("SELECT pg_switch_wal()")  # a finished segment: what archive_command would take
                time.sleep(1)
            assert settings == {"listen_addresses": "", "archive_mode": "off", "port": str(scratch.port)}, settings
        assert not evidence.exists(), "the restored copy ran the source's archive_command"
    finally:
        shutil.rmtree(evidence_dir, ignore_errors=True)

"""dr_full_backup against the sandbox: consistent logical and physical backups that really restore."""

from __future__ import annotations

import contextlib
import io
import subprocess
import threading
import time
from datetime import datetime, timezone

import psycopg
import pytest

from continuity.backup.engine import restore_copy

from continuity.backup.full import DumpFailed, logical_backup, row_counts, schema_fingerprint
from continuity.postgres.cluster import find_tool
from continuity.storage.manifest import manifest_key_name

from tests.support.airflow_helpers import load_dag, task_states, xcom
from tests.support.scratch import cluster_from_base_backup, empty_cluster

pytestmark = pytest.mark.usefixtures("airflow_db")
LOGICAL_DATE = datetime(2026, 11, 20, 2, 0, tzinfo=timezone.utc)
LOGICAL_ID = "logical-app-20261120T020000Z"
PHYSICAL_ID = "physical-sync1-20261120T020000Z"


@pytest.fixture(scope="module")
def full_run(sandbox):
    """One dr_full_backup run (with writes before it) and a dr_wal_archive run after it."""
    with psycopg.connect(sandbox.app_conninfo()) as conn:
        conn.execute("UPDATE videos SET status = 'processed' WHERE id % 7 = 0")
    run = load_dag("dr_full_backup").test(logical_date=LOGICAL_DATE)
    assert str(run.state) == "success", task_states(run)
    assert xcom(run, "logical_backup") == [LOGICAL_ID] and xcom(run, "physical_backup") == PHYSICAL_ID
    with psycopg.connect(sandbox.app_conninfo()) as conn:
        conn.execute("UPDATE videos SET status = 'failed' WHERE id % 11 = 0")
    wal = load_dag("dr_wal_archive").test()
    assert str(wal.state) == "success", task_states(wal)
    return run


def _catalog(sandbox):
    catalog = sandbox.catalog()
    return catalog, catalog.locations


def test_catalog_holds_both_kinds_and_gap_free_wal_in_both_regions(sandbox, full_run) -> None:
    logical_id, physical_id = LOGICAL_ID, PHYSICAL_ID
    catalog, _ = _catalog(sandbox)
    for region in ("primary", "dr"):
        ids = {m.backup_id for m in catalog.list(location=region)}
        assert {logical_id, physical_id} <= ids
    physical, _ = catalog.get(physical_id, location="dr")
    assert physical.source["node"] == "sync1" and physical.source["start_wal_file"]
    continuity = load_dag("dr_wal_archive").test()
    summary = xcom(continuity, "check_wal_continuity")
    assert summary["primary"]["gaps"] == [] and summary["dr"]["gaps"] == []


def test_rerun_for_the_same_logical_date_is_idempotent(sandbox, full_run) -> None:
    catalog, locations = _catalog(sandbox)
    logical_id = LOGICAL_ID
    before = locations["dr"].get_bytes(manifest_key_name(logical_id))
    rerun = load_dag("dr_full_backup").test(logical_date=LOGICAL_DATE)
    assert str(rerun.state) == "success"
    assert xcom(rerun, "logical_backup") == [logical_id]
    assert locations["dr"].get_bytes(manifest_key_name(logical_id)) == before


@contextlib.contextmanager
def _restored(manifest, location, keyring):
    """The logical backup fetched from `location` and pg_restored into a scratch cluster: a connection to it,
    after checking its row counts and schema fingerprint against the manifest."""
    dump = io.BytesIO()
    restore_copy(manifest, location, keyring, dump)
    with empty_cluster() as scratch:
        scratch.psql("CREATE DATABASE restored;")
        result = subprocess.run(
            scratch.user.command([find_tool("pg_restore"), "--no-owner", "--exit-on-error", "-h", str(scratch.socket_dir),
                                  "-p", str(scratch.port), "-U", "postgres", "-d", "restored"]),
            input=dump.getvalue(), capture_output=True)
        assert result.returncode == 0, result.stderr.decode()
        with psycopg.connect(host=str(scratch.socket_dir), port=scratch.port, user="postgres", dbname="restored") as conn:
            assert row_counts(conn) == manifest.details["row_counts"]
            assert schema_fingerprint(conn) == manifest.details["schema_fingerprint"]
            yield conn


def test_logical_backup_restores_with_exactly_the_manifest_row_counts(sandbox, full_run) -> None:
    catalog, locations = _catalog(sandbox)
    manifest, _ = catalog.get(LOGICAL_ID, location="dr")  # the DR region alone
    assert manifest.compression == "zstd"
    with _restored(manifest, locations["dr"], sandbox.keyring()) as conn:
        assert conn.execute("SELECT count(*) FROM videos WHERE status = 'failed' AND id % 11 = 0").fetchone()[0] \
            < conn.execute("SELECT count(*) FROM videos WHERE id % 11 = 0").fetchone()[0], \
            "the dump is the snapshot before the later write"


def test_a_dump_compressed_by_pg_dump_is_stored_as_it_is_and_restores_the_same(sandbox, full_run) -> None:
    """backups.full.compression: pg_dump: pg_dump's own zlib, the archive adds none (one compression pass)."""
    catalog, locations = _catalog(sandbox)
    manifest = logical_backup(node=sandbox.backup_node("primary"), database="app", keyring=sandbox.keyring(),
                              locations=list(locations.values()), required={"primary", "dr"},
                              backup_id="logical-app-pg_dump-compressed", report=lambda _m: None, compression="pg_dump")
    stored, _ = catalog.get(manifest.backup_id, location="dr")
    assert stored.compression == "none" and stored.compressed_bytes == stored.plaintext_bytes
    assert stored.details["pg_dump_compression"].startswith("pg_dump's default")
    zstd_dump, _ = catalog.get(LOGICAL_ID, location="dr")
    assert stored.plaintext_bytes < zstd_dump.plaintext_bytes / 2, "pg_dump compressed what it wrote"
    with _restored(stored, locations["dr"], sandbox.keyring()) as conn:
        assert conn.execute("SELECT count(*) FROM videos").fetchone()[0] == stored.details["row_counts"]["public.videos"]


def test_physical_backup_passes_pg_verifybackup_and_starts(sandbox, full_run) -> None:
    catalog, locations = _catalog(sandbox)
    manifest, _ = catalog.get(PHYSICAL_ID, location="dr")
    tar = io.BytesIO()
    restore_copy(manifest, locations["dr"], sandbox.keyring(), tar)
    with cluster_from_base_backup(tar.getvalue()) as (cluster, make_private):
        verify = subprocess.run(cluster.user.command([find_tool("pg_verifybackup"), str(cluster.data_dir)]),
                                capture_output=True, text=True)
        assert verify.returncode == 0, verify.stderr
        assert "backup successfully verified" in verify.stdout
        make_private()
        cluster.start()
        with psycopg.connect(host=str(cluster.socket_dir), port=cluster.port, user="postgres", dbname="app") as conn:
            assert conn.execute("SELECT count(*) FROM users").fetchone()[0] > 0
            assert conn.execute("SELECT current_setting('data_checksums')").fetchone()[0] == "on"


def test_primary_killed_mid_dump_fails_cleanly_and_the_retry_succeeds(sandbox) -> None:
    with psycopg.connect(sandbox.app_conninfo(through_pgbouncer=False)) as conn:
        conn.execute("CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS payload FROM generate_series(1, 3000000) g")
    catalog, locations = _catalog(sandbox)
    node = sandbox.backup_node("primary")
    backup_id = "logical-app-killed-mid-dump"
    progress = threading.Event()
    primary = sandbox.cluster("primary")

    def killer() -> None:
        progress.wait(60)
        primary.kill()

    try:
        threading.Thread(target=killer, daemon=True).start()
        with pytest.raises(DumpFailed, match=r"logical backup of database app on node primary") as failed:
            logical_backup(node=node, database="app", keyring=sandbox.keyring(), locations=list(locations.values()),
                           required={"primary", "dr"}, backup_id=backup_id,
                           report=lambda message: progress.set() if "snapshot" in message else None)
        assert "pg_dump" in str(failed.value) or "connection" in str(failed.value)
        for location in locations.values():
            assert [k for k in location.list("") if backup_id in k] == [], "no manifest, no data, anywhere"
    finally:
        primary.start()
        sandbox.wait_streaming()
        sandbox.wait_entry_point()
    manifest = logical_backup(node=node, database="app", keyring=sandbox.keyring(), locations=list(locations.values()),
                              required={"primary", "dr"}, backup_id=backup_id, report=lambda _m: None)
    assert manifest.details["row_counts"]["public.bulk"] == 3000000
    with psycopg.connect(sandbox.app_conninfo(through_pgbouncer=False)) as conn:
        conn.execute("DROP TABLE bulk")
    time.sleep(0)


def test_an_unreachable_optional_location_is_left_out_not_fatal(sandbox, monkeypatch, tmp_path) -> None:
    """The eu-west-1 archive bucket gone: full, config and WAL backups still succeed everywhere else."""
    from tests.support.policies import use_overlay

    use_overlay(monkeypatch, tmp_path,
                {"storage": {"locations": [{"name": "archive", "bucket": "continuity-archive-gone"}]}})
    with psycopg.connect(sandbox.app_conninfo()) as conn:
        conn.execute("UPDATE videos SET status = 'processed' WHERE id % 5 = 0")
    runs = {dag_id: load_dag(dag_id).test(logical_date=datetime(2026, 11, 21, 2, 0, tzinfo=timezone.utc))
            for dag_id in ("dr_full_backup", "dr_config_backup", "dr_wal_archive")}
    for dag_id, run in runs.items():
        assert str(run.state) == "success", (dag_id, task_states(run))
    catalog = sandbox.catalog()
    made = [catalog.get(backup_id, location="dr")[0]
            for backup_id in [*xcom(runs["dr_full_backup"], "logical_backup"),
                              xcom(runs["dr_full_backup"], "physical_backup")]]
    made.append(catalog.latest("config", location="dr"))
    for manifest in made:
        assert set(manifest.locations) == {"primary", "dr"}, manifest.backup_id
        assert "continuity-archive-gone" in manifest.details["left_out_locations"]["archive"], manifest.details


def test_row_level_security_and_large_objects_back_up_every_row_or_refuse_first(sandbox) -> None:
    """#30 item 15 (roles): a table under forced row-level security with a policy naming a role, and a large
    object of the application's. Without BYPASSRLS, or with a large object the backup role may not read, the
    backup refuses before dumping, saying what to grant; granted, every row and the object come back."""
    from continuity.restore.engine import RESTORE_ROLE, restore_logical, scratch_cluster

    primary = sandbox.cluster("primary")
    node = sandbox.backup_node("primary")
    catalog, locations = _catalog(sandbox)

    def backup(tag: str):
        return logical_backup(node=node, database="app", keyring=sandbox.keyring(), locations=list(locations.values()),
                              required={"primary", "dr"}, backup_id=f"logical-app-{tag}-{time.time_ns()}",
                              report=lambda _m: None)

    primary.psql("CREATE ROLE tenant_reader NOLOGIN;")
    with psycopg.connect(sandbox.app_conninfo(through_pgbouncer=False), autocommit=True) as conn:
        conn.execute("CREATE TABLE tenant_notes (tenant text NOT NULL, note text NOT NULL)")
        conn.execute("INSERT INTO tenant_notes VALUES ('a', 'one'), ('a', 'two'), ('b', 'three')")
        conn.execute("ALTER TABLE tenant_notes ENABLE ROW LEVEL SECURITY; ALTER TABLE tenant_notes FORCE ROW LEVEL SECURITY")
        conn.execute("CREATE POLICY tenant_only ON tenant_notes TO tenant_reader, app "
                     "USING (tenant = current_setting('app.tenant', true))")
        assert conn.execute("SELECT count(*) FROM tenant_notes").fetchone()[0] == 0, "the policy hides every row here"
        large_object = conn.execute("SELECT lo_from_bytea(0, 'a large object of the application')").fetchone()[0]
    try:
        primary.psql("ALTER ROLE continuity_backup NOBYPASSRLS;")
        with pytest.raises(DumpFailed, match=r"1 table\(s\) under row-level security \(public.tenant_notes\).*"
                                             r"HINT: ALTER ROLE continuity_backup BYPASSRLS"):
            backup("rls")
        primary.psql("ALTER ROLE continuity_backup BYPASSRLS;")  # as the sandbox makes it

        with pytest.raises(DumpFailed, match=r"large objects the backup role continuity_backup may not read \(1 of app\)"
                                             r".*HINT: GRANT app TO continuity_backup"):
            backup("lo")
        assert not [m for m in catalog.list(location="primary", kind="logical") if "-lo-" in m.backup_id], \
            "a refused backup stores nothing"
        primary.psql("GRANT app TO continuity_backup;")
        manifest = backup("granted")
        assert manifest.details["row_counts"]["public.tenant_notes"] == 3, "every row counted, not the policy's"
        assert {"app", "tenant_reader"} <= set(manifest.details["roles"])

        with scratch_cluster(prefix="continuity-rls-") as scratch:
            restore_logical(manifest, catalog=sandbox.catalog(), location="dr", scratch=scratch, database="restored")
            with scratch.connect("restored", user=RESTORE_ROLE) as conn:
                assert conn.execute("SELECT count(*) FROM tenant_notes").fetchone()[0] == 3
                assert conn.execute("SELECT lo_get(%s)", (large_object,)).fetchone()[0] == \
                    b"a large object of the application"
                roles = conn.execute("SELECT roles FROM pg_policies WHERE policyname = 'tenant_only'").fetchone()[0]
                assert sorted(roles) == ["app", "tenant_reader"], "the policy restored naming the same roles"
    finally:
        from continuity.storage.manifest import data_key_name

        # Later tests of this sandbox take the newest logical backup: not this one, of a table dropped below.
        for manifest in catalog.list(kind="logical"):
            if "-granted-" in manifest.backup_id:
                for location in locations.values():
                    location.delete(manifest_key_name(manifest.backup_id))
                    location.delete(data_key_name("logical", manifest.backup_id))
        primary.psql("REVOKE app FROM continuity_backup; ALTER ROLE continuity_backup BYPASSRLS;")
        with psycopg.connect(sandbox.app_conninfo(through_pgbouncer=False), autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS tenant_notes")
            conn.execute("SELECT lo_unlink(%s)", (large_object,))
        primary.psql("DROP ROLE IF EXISTS tenant_reader;")

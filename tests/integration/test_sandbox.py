"""The sandbox is the real thing: streaming replication, PgBouncer, archiving, versioned buckets."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from continuity_lab.processes import archive_script_source


def _wait_for(predicate, *, timeout: float = 20, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_primary_with_three_streaming_standbys_two_of_them_a_synchronous_quorum(sandbox) -> None:
    primary = sandbox.node("primary")
    assert primary.is_in_recovery() is False
    rows = {r.application_name: r for r in primary.replication()}
    assert set(rows) == {"sync1", "sync2", "dr"}
    assert rows["sync1"].state == rows["sync2"].state == rows["dr"].state == "streaming"
    assert rows["sync1"].sync_state == rows["sync2"].sync_state == "quorum"  # ANY 1 (sync1, sync2)
    assert rows["dr"].sync_state == "async"
    for name in ("sync1", "sync2", "dr"):
        standby = sandbox.node(name)
        assert standby.is_in_recovery() is True
        receiver = standby.wal_receiver()
        assert receiver is not None and receiver.status == "streaming" and receiver.slot_name == name
    assert {s.slot_name: s.active for s in primary.replication_slots()} == {"sync1": True, "sync2": True, "dr": True}
    assert primary.settings(["data_checksums"]) == {"data_checksums": "on"}


def test_row_written_through_pgbouncer_reaches_every_standby(sandbox) -> None:
    marker = f"replication-probe-{time.time_ns()}@example.com"
    with psycopg.connect(sandbox.app_conninfo(through_pgbouncer=True)) as conn:
        # The connection really goes through PgBouncer: its port, and PgBouncer's own server list.
        assert conn.info.port == sandbox.pgbouncer_port
        conn.execute(
            "INSERT INTO users (id, email, full_name, role, created_at) "
            "VALUES ((SELECT max(id) + 1 FROM users), %s, 'Probe', 'viewer', now())",
            (marker,),
        )
    for name in ("sync1", "sync2", "dr"):
        standby = sandbox.node(name, user="app", dbname="app")
        _wait_for(lambda: standby.query("SELECT 1 FROM users WHERE email = %s", (marker,)),
                  what=f"the row on standby {name}")


def test_switched_segment_reaches_the_spool(sandbox) -> None:
    with psycopg.connect(sandbox.app_conninfo(through_pgbouncer=False)) as app:
        app.execute("UPDATE projects SET status = status WHERE id = 1")
    with sandbox.node("primary").connect() as conn:
        segment = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn()) AS f").fetchone()["f"]
        conn.execute("SELECT pg_switch_wal()")
    spooled = sandbox.spool_dir / segment
    _wait_for(spooled.exists, what=f"{segment} in the WAL spool")
    # The final name appears (ln) before archive_command exits and its trap removes the temporary
    # copy: only PostgreSQL's own record that the command returned says the script is done.
    primary = sandbox.node("primary")
    _wait_for(lambda: (primary.query_one("SELECT last_archived_wal FROM pg_stat_archiver")["last_archived_wal"]
                       or "") >= segment,
              what=f"pg_stat_archiver to record {segment} archived")
    assert spooled.stat().st_size == 16 * 2**20
    assert not [p for p in sandbox.spool_dir.iterdir() if p.name.endswith(".tmp")]


def test_archive_script_is_atomic_idempotent_and_never_overwrites(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    source = tmp_path / "000000010000000000000042"
    source.write_bytes(b"wal" * 1000)

    def archive(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(archive_script_source()), str(spool), str(path), source.name],
                              capture_output=True, text=True)

    assert archive(source).returncode == 0
    assert (spool / source.name).read_bytes() == source.read_bytes()
    assert archive(source).returncode == 0, "an identical file already there is a success (a retry)"
    different = tmp_path / "other"
    different.write_bytes(b"not the same wal")
    refused = archive(different)
    assert refused.returncode != 0
    assert "refusing to overwrite" in refused.stderr
    assert (spool / source.name).read_bytes() == source.read_bytes()
    assert sorted(p.name for p in spool.iterdir()) == [source.name]


def test_archive_script_refuses_a_new_file_once_the_queue_is_full(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    names = [f"0000000100000000000000{i:02X}" for i in range(1, 4)]

    def archive(name: str) -> subprocess.CompletedProcess[str]:
        source = tmp_path / name
        source.write_bytes(name.encode() * 100)
        return subprocess.run(["sh", str(archive_script_source()), str(spool), str(source), name, "2"],
                              capture_output=True, text=True)

    assert archive(names[0]).returncode == 0 and archive(names[1]).returncode == 0
    full = archive(names[2])
    assert full.returncode != 0 and "already holds 2 files (limit 2)" in full.stderr and "HINT:" in full.stderr
    assert sorted(p.name for p in spool.iterdir()) == names[:2], "nothing half-written, nothing dropped"
    assert archive(names[1]).returncode == 0, "a retry of a file already queued still succeeds when full"
    (spool / names[0]).unlink()  # the pusher sent one
    assert archive(names[2]).returncode == 0


def test_buckets_exist_with_versioning(sandbox) -> None:
    for location in sandbox.policy.storage.locations:
        client = sandbox.s3_client(location.region)
        assert client.get_bucket_versioning(Bucket=location.bucket)["Status"] == "Enabled"
        region = client.get_bucket_location(Bucket=location.bucket)["LocationConstraint"] or "us-east-1"
        assert region == location.region


def test_sample_database_has_realistic_related_rows(sandbox) -> None:
    app = sandbox.node("primary", user="app", dbname="app")
    counts = {t: app.query_one(f"SELECT count(*) AS n FROM {t}")["n"] for t in ("users", "projects", "videos", "annotations", "detections")}
    assert counts["detections"] > counts["annotations"] > counts["videos"] > counts["users"] > counts["projects"] > 0
    orphans = app.query_one("SELECT count(*) AS n FROM annotations a LEFT JOIN videos v ON v.id = a.video_id WHERE v.id IS NULL")
    assert orphans["n"] == 0


def test_key_and_secrets_are_private_and_never_printed(sandbox) -> None:
    key = sandbox.key_file
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    keyring = sandbox.keyring()
    assert [len(k) for k in keyring.keys.values()] == [32] and keyring.active in keyring.keys
    for private in (sandbox.state_file, sandbox.connections_file):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    script = sandbox.env_script()
    for secret in [*sandbox.state["secrets"].values(), *(base64.b64encode(k).decode() for k in keyring.keys.values())]:
        assert secret not in script
    shell = subprocess.run(["bash", "-c", script + 'echo "$AIRFLOW_CONN_CONTINUITY_APP"'], capture_output=True, text=True)
    conn = json.loads(shell.stdout)
    assert conn["port"] == sandbox.pgbouncer_port and conn["password"] == sandbox.password("app")


def test_cli_status_json(sandbox) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "continuity.cli", "sandbox", "status", "--json", "--root", str(sandbox.root)],
        capture_output=True, text=True, env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["nodes"]["primary"]["role"] == "primary"
    assert status["nodes"]["sync1"]["sync_state"] == status["nodes"]["sync2"]["sync_state"] == "quorum"
    assert status["nodes"]["dr"]["replication"] == "streaming"
    assert status["pgbouncer"]["running"] and status["s3"]["running"]
    buckets = {(b["category"], b["role"]): b for b in status["application_buckets"]}
    assert set(buckets) == {("video_content", "source"), ("video_content", "replica"),
                            ("user_uploads", "source"), ("user_uploads", "replica")}
    assert buckets[("video_content", "replica")]["region"] == "us-west-2" and buckets[("video_content", "replica")]["object_lock"]
    for secret in sandbox.state["secrets"].values():
        assert secret not in result.stdout + result.stderr


def test_the_application_bucket_holds_the_object_each_videos_row_describes(sandbox) -> None:
    import hashlib

    source = sandbox.policy.objects.categories["video_content"].source
    client = sandbox.s3_client(source.region)
    # The seeded rows (the application's own uploads, e.g. the DR region's after a failover test, live
    # in their region's bucket).
    rows = sandbox.node("primary", user="app", dbname="app").query(
        "SELECT s3_key, size_bytes, sha256 FROM videos WHERE s3_key ~ '^videos/[0-9]{8}\\.mp4$'")
    for row in rows:
        body = client.get_object(Bucket=source.bucket, Key=row["s3_key"])["Body"].read()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (row["size_bytes"], row["sha256"]), row["s3_key"]
    assert max(r["size_bytes"] for r in rows) > sandbox.policy.objects.part_size, "some copies run multipart"
    uploads = sandbox.policy.objects.categories["user_uploads"].source
    assert client.list_objects_v2(Bucket=uploads.bucket, Prefix=uploads.prefix)["KeyCount"] > 0


def test_the_providers_own_hook_connects_with_every_postgres_connection(sandbox, monkeypatch) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    postgres = {conn_id: conn for conn_id, conn in sandbox.connections().items() if conn["conn_type"] == "postgres"}
    assert len(postgres) >= 5
    for conn_id, conn in postgres.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        with PostgresHook(postgres_conn_id=conn_id).get_conn() as connection:
            connection.autocommit = True  # PgBouncer's admin console knows no BEGIN
            command = "SHOW VERSION" if conn.get("schema") == "pgbouncer" else "SELECT 1"
            assert connection.execute(command).fetchone(), conn_id


def test_slowed_storage_carries_every_byte_at_no_more_than_its_rate_and_comes_back(sandbox) -> None:
    payload = os.urandom(1 << 20)
    region, bucket = "us-west-2", "gateway-rate-probe"  # a bucket of its own: no backup, drill or replica sees it
    sandbox.s3_client(region).create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    sandbox.slow_storage(region, 256 * 1024)
    try:
        client = sandbox.s3_client(region)
        started = time.monotonic()
        client.put_object(Bucket=bucket, Key="probe/slowed.bin", Body=payload)
        took = time.monotonic() - started
        assert client.get_object(Bucket=bucket, Key="probe/slowed.bin")["Body"].read() == payload
        # A lower bound only: 1 MiB cannot cross a 256 KiB/s connection in under 4 s, however fast the machine.
        assert took >= 3.5, f"1 MiB through a 256 KiB/s gateway in {took:.1f}s"
        try:
            sandbox.slow_storage("nowhere-1", 1)
        except ValueError as exc:
            assert "no S3 gateway for region 'nowhere-1'" in str(exc) and region in str(exc)
        else:
            raise AssertionError("an unknown region was accepted")
    finally:
        sandbox.slow_storage(region, None)
    assert "rate" not in sandbox.state["gateways"][region] or sandbox.state["gateways"][region]["rate"] is None
    client = sandbox.s3_client(region)
    assert client.get_object(Bucket=bucket, Key="probe/slowed.bin")["Body"].read() == payload
    client.delete_object(Bucket=bucket, Key="probe/slowed.bin")

"""#30 item 15: a database with the object kinds applications use (tests/support/fixture_schema.sql: every common
column type, enums, domains, composite types, a partitioned table, views, a materialized view, triggers,
functions, extensions, sequences with set values, large objects, comments, row-level security, a role with
grants) comes back the same from a logical backup restored into a new database and from a physical backup + WAL
recovered to a point in time: `pg_dump --schema-only` equal, every table's rows, every sequence and every large
object equal."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from continuity.backup.full import logical_backup, physical_backup
from continuity.postgres.cluster import find_tool
from continuity.restore.engine import restore_logical, restore_physical, scratch_cluster
from continuity.storage.manifest import data_key_name, manifest_key_name

from tests.support.airflow_helpers import load_dag

pytestmark = pytest.mark.usefixtures("airflow_db")
FIXTURE_SQL = Path(__file__).resolve().parents[1] / "support" / "fixture_schema.sql"
DATABASE = "fixture"


def _schema(*, host: str, port: int, database: str, password: str | None = None) -> str:
    """pg_dump --schema-only as the restores make them (no owners, no grants), less its random \\restrict key."""
    env = {**os.environ, **({"PGPASSWORD": password} if password else {})}
    result = subprocess.run([find_tool("pg_dump"), "--schema-only", "--no-owner", "--no-privileges", "-h", host,
                             "-p", str(port), "-U", "postgres", "-d", database], capture_output=True, text=True,
                            env=env, check=True)
    return "\n".join(line for line in result.stdout.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))


def _contents(conninfo: str) -> dict[str, object]:
    """Each table's and materialized view's rows (digest of the sorted rows), each sequence's state, each large
    object (digest of its bytes)."""
    with psycopg.connect(conninfo) as conn:
        conn.execute("SET row_security = off")
        relations = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2").fetchall()
        rows = {}
        for schema, name in relations:
            table = sql.Identifier(schema, name)
            text = conn.execute(sql.SQL("SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '') FROM {} t")
                                .format(table)).fetchone()[0]
            rows[f"{schema}.{name}"] = hashlib.sha256(text.encode()).hexdigest()
        sequences = {f"{schema}.{name}": conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
            sql.Identifier(schema, name))).fetchone() for schema, name in conn.execute(
            "SELECT schemaname, sequencename FROM pg_sequences ORDER BY 1, 2").fetchall()}
        objects = dict(conn.execute("SELECT oid, md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY 1").fetchall())
    return {"rows": rows, "sequences": sequences, "large_objects": objects}


@pytest.fixture(scope="module")
def fixture_db(sandbox):
    primary = sandbox.cluster("primary")
    primary.psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE); DROP ROLE IF EXISTS fixture_reader;")
    primary.psql(f"CREATE ROLE fixture_reader NOLOGIN; CREATE DATABASE {DATABASE} OWNER app;")
    try:
        app = sandbox.app_conninfo(through_pgbouncer=False).replace("dbname=app", f"dbname={DATABASE}")
        with psycopg.connect(app, autocommit=True) as conn:
            conn.execute(FIXTURE_SQL.read_text())
        port = sandbox.state["nodes"]["primary"]["port"]
        source = {"host": "127.0.0.1", "port": port, "database": DATABASE, "password": sandbox.password("postgres")}
        superuser = f"host=127.0.0.1 port={port} user=postgres password={sandbox.password('postgres')} dbname={DATABASE}"
        contents = _contents(superuser)
        # every_type, audit_log, customers, three invoice partitions, the materialized view
        assert len(contents["rows"]) == 7 and len(contents["large_objects"]) == 2, contents
        yield {"app": app, "source": source, "superuser": superuser}
    finally:
        primary.psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE); DROP ROLE IF EXISTS fixture_reader;")
        catalog = sandbox.catalog()  # later tests of this sandbox pick a recent logical backup: not of this database
        for manifest in catalog.list(kind="logical"):
            if manifest.source.get("database") == DATABASE:
                for location in catalog.locations.values():
                    location.delete(manifest_key_name(manifest.backup_id))
                    location.delete(data_key_name("logical", manifest.backup_id))


def test_a_logical_backup_restored_into_a_new_database_gives_back_the_same_schema_and_rows(sandbox, fixture_db) -> None:
    catalog = sandbox.catalog()
    manifest = logical_backup(node=sandbox.backup_node("primary"), database=DATABASE, keyring=sandbox.keyring(),
                              locations=list(catalog.locations.values()), required={"primary", "dr"},
                              backup_id=f"logical-{DATABASE}-{time.time_ns()}", report=lambda _m: None)
    expected_schema, expected = _schema(**fixture_db["source"]), _contents(fixture_db["superuser"])
    with scratch_cluster(prefix="continuity-fixture-") as scratch:
        restore_logical(manifest, catalog=catalog, location="dr", scratch=scratch, database=DATABASE)
        restored_schema = _schema(host=str(scratch.cluster.socket_dir), port=scratch.port, database=DATABASE)
        restored = _contents(scratch.conninfo(DATABASE))
    assert restored_schema == expected_schema
    assert restored == expected


def test_a_physical_backup_and_wal_recovered_to_a_point_give_back_the_same_schema_and_rows(sandbox, fixture_db) -> None:
    catalog = sandbox.catalog()
    physical_backup(node=sandbox.backup_node("primary"), keyring=sandbox.keyring(),
                    locations=list(catalog.locations.values()), required={"primary", "dr"},
                    backup_id=f"physical-primary-fixture-{time.time_ns()}", report=lambda _m: None)
    with psycopg.connect(fixture_db["app"], autocommit=True) as conn:  # after the base backup: from WAL only
        conn.execute("INSERT INTO billing.invoices (customer_id, issued, total) VALUES (2, '2026-07-01', 12.5)")
        conn.execute("SELECT nextval('ticket_numbers')")
        conn.execute("REFRESH MATERIALIZED VIEW billing.monthly")
    expected_schema, expected = _schema(**fixture_db["source"]), _contents(fixture_db["superuser"])
    time.sleep(1.5)
    target = datetime.now(timezone.utc)
    time.sleep(1.5)
    with psycopg.connect(fixture_db["app"], autocommit=True) as conn:  # after the target: must not come back
        conn.execute("INSERT INTO billing.customers (name) VALUES ('after the target')")
        conn.execute("SELECT lo_from_bytea(0, 'after the target')")
    assert str(load_dag("dr_wal_archive").test().state) == "success"
    with scratch_cluster(initdb=False, prefix="continuity-fixture-pitr-") as scratch:
        restore_physical(catalog=sandbox.catalog(), location="dr", scratch=scratch, target_time=target)
        restored_schema = _schema(host=str(scratch.cluster.socket_dir), port=scratch.port, database=DATABASE)
        restored = _contents(scratch.conninfo(DATABASE))
    assert restored_schema == expected_schema
    assert restored["rows"] == expected["rows"] and restored["large_objects"] == expected["large_objects"]
    # PostgreSQL WAL-logs a sequence 32 values ahead of what it hands out: recovered from WAL, a sequence may
    # skip values (never hand one out twice). A logical backup restores them exactly (the test above).
    for name, (value, _called) in expected["sequences"].items():
        assert restored["sequences"][name][0] >= value, (name, restored["sequences"][name], value)
    assert restored["sequences"].keys() == expected["sequences"].keys()

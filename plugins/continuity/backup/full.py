"""Full backups: a snapshot-consistent logical dump, and a physical base backup, both streamed.

Logical: a REPEATABLE READ transaction exports its snapshot; the row count of every table and a
schema fingerprint are taken in that same snapshot, and `pg_dump --snapshot` streams the dump
through the engine, so a restore can be checked exactly against the manifest.

Physical: `pg_basebackup -D - -Ft -X fetch` (tar on stdout, with the WAL needed for consistency and
PostgreSQL's backup_manifest inside) streamed through the engine, from the node the policy names.
Neither stages the backup on local disk.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from continuity.backup.engine import CommandSource, SourceCommandFailed, backup_from_command
from continuity.storage.keys import Keyring
from continuity.postgres.cluster import find_tool
from continuity.storage.manifest import Manifest
from continuity.postgres.node import conninfo, lsn_to_int, tool_connection
from continuity.storage.locations import StorageLocation
from continuity.backup.wal import SEGMENT_SIZE, segment_name


class DumpFailed(RuntimeError):
    """A full backup failed; the message names the node and database. Nothing was kept."""


@dataclass(frozen=True)
class NodeAddress:
    """Where and as whom to connect for a backup (the password only goes to the tool's environment)."""

    name: str
    host: str
    port: int
    user: str
    password: str | None
    # The connection's further libpq parameters (sslmode, sslrootcert, options, target_session_attrs...).
    params: Mapping[str, str] = field(default_factory=dict)

    def conninfo(self, dbname: str) -> str:
        return conninfo(host=self.host, port=self.port, user=self.user, password=self.password, dbname=dbname,
                        **self.params)

    def tool_env(self) -> dict[str, str]:
        environment, _ = tool_connection({"password": self.password, **self.params})
        return environment

    def tool_dbname(self, dbname: str | None = None) -> str | None:
        """The tool's --dbname: the database, as a conninfo when some parameter has no environment variable."""
        _, rest = tool_connection(self.params)
        if not rest:
            return dbname
        return make_conninfo(**({"dbname": dbname} if dbname else {}), **rest)


def tool_version(path: str) -> str:
    return subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout.strip()




def wal_file_for(lsn: str, timeline: int, *, segment_size: int = SEGMENT_SIZE) -> str:
    return segment_name(timeline, lsn_to_int(lsn) // segment_size, segment_size=segment_size)


# -- logical -----------------------------------------------------------------------------------
_TABLES = """
    SELECT n.nspname AS schema, c.relname AS name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg_toast%' AND NOT c.relispartition
    ORDER BY 1, 2
"""
_FINGERPRINT = """
    SELECT 'column' AS what, table_schema || '.' || table_name AS owner,
           column_name || ' ' || data_type || ' ' || is_nullable || ' ' || ordinal_position AS definition
    FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
    UNION ALL
    SELECT 'constraint', n.nspname || '.' || c.relname, con.conname || ' ' || pg_get_constraintdef(con.oid)
    FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
    UNION ALL
    SELECT 'index', schemaname || '.' || tablename, indexdef
    FROM pg_indexes WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
    ORDER BY 1, 2, 3
"""


# Single-column foreign keys as [schema.table, column, schema.referenced table, column]: a sample
# restore takes a table's parents with it so that its foreign keys can be checked.
_FOREIGN_KEY_COLUMNS = """
    SELECT n.nspname || '.' || c.relname, a.attname, rn.nspname || '.' || rc.relname, ra.attname
    FROM pg_constraint con
    JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_class rc ON rc.oid = con.confrelid JOIN pg_namespace rn ON rn.oid = rc.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = con.conkey[1]
    JOIN pg_attribute ra ON ra.attrelid = rc.oid AND ra.attnum = con.confkey[1]
    WHERE con.contype = 'f' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
    ORDER BY 1, 2
"""


# Tables whose rows a policy would hide from this role (row-level security on, and either not its table or
# forced on owners too), and large objects it may not read: pg_dump fails on both mid-stream, and row counts
# taken through a policy would be the policy's, not the table's.
_HIDDEN_BY_POLICIES = """
    SELECT n.nspname || '.' || c.relname
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND c.relrowsecurity
      AND (c.relforcerowsecurity OR NOT pg_has_role(current_user, c.relowner, 'USAGE'))
      AND NOT (SELECT rolbypassrls FROM pg_roles WHERE rolname = current_user)
    ORDER BY 1
"""
_UNREADABLE_LARGE_OBJECTS = """
    SELECT pg_get_userbyid(m.lomowner) AS owner, count(*) AS objects
    FROM pg_largeobject_metadata m
    WHERE NOT pg_has_role(current_user, m.lomowner, 'USAGE')
      AND NOT EXISTS (SELECT 1 FROM aclexplode(m.lomacl) a
                      WHERE a.privilege_type = 'SELECT' AND (a.grantee = 0 OR pg_has_role(current_user, a.grantee, 'USAGE')))
    GROUP BY 1 ORDER BY 1
"""
# The roles a restore into another cluster must find (policies name them): names only, never passwords.
_ROLES = "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1"


def check_readable(conn: psycopg.Connection, *, user: str, where: str) -> None:
    """Refuse, before any dump starts, a database whose rows or large objects this role cannot all read."""
    hidden = [row[0] for row in conn.execute(_HIDDEN_BY_POLICIES).fetchall()]
    if hidden:
        raise DumpFailed(
            f"{where}: {len(hidden)} table(s) under row-level security ({', '.join(hidden[:5])}"
            f"{', ...' if len(hidden) > 5 else ''}): the backup role {user} would dump and count only the rows the "
            f"policies show it; nothing was stored. HINT: ALTER ROLE {user} BYPASSRLS (pg_dump needs it to read every "
            f"row; README 'What the backup roles may do')")
    unreadable = conn.execute(_UNREADABLE_LARGE_OBJECTS).fetchall()
    if unreadable:
        owners = ", ".join(f"{count} of {owner}" for owner, count in unreadable)
        first = unreadable[0][0]
        raise DumpFailed(
            f"{where}: large objects the backup role {user} may not read ({owners}): pg_dump would stop at the first; "
            f"nothing was stored. HINT: GRANT {first} TO {user} (PostgreSQL grants no role read access to every large "
            f"object; README 'What the backup roles may do')")


def row_counts(conn: psycopg.Connection) -> dict[str, int]:
    counts: dict[str, int] = {}
    for schema, name in conn.execute(_TABLES).fetchall():
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
        counts[f"{schema}.{name}"] = conn.execute(query).fetchone()[0]
    return counts


def schema_fingerprint(conn: psycopg.Connection) -> str:
    digest = hashlib.sha256()
    for row in conn.execute(_FINGERPRINT).fetchall():
        digest.update("\x1f".join(row).encode() + b"\n")
    return digest.hexdigest()


def table_fingerprints(conn: psycopg.Connection) -> dict[str, str]:
    """Per table: SHA-256 of its columns and constraints (not secondary indexes), so a sample restore
    can compare the schema of exactly the tables it restored."""
    lines: dict[str, list[str]] = {}
    for what, owner, definition in conn.execute(_FINGERPRINT).fetchall():
        if what != "index":
            lines.setdefault(owner, []).append(f"{what}\x1f{definition}")
    return {owner: hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest() for owner, rows in lines.items()}


def logical_backup(
    *,
    node: NodeAddress,
    database: str,
    keyring: Keyring,
    locations: Sequence[StorageLocation],
    required: set[str],
    backup_id: str,
    report: Callable[[str], None],
    compression: Literal["zstd", "pg_dump"] = "zstd",
) -> Manifest:
    """`compression` (the policy's backups.full.compression): "zstd" dumps uncompressed and the archive's
    zstd compresses once; "pg_dump" lets pg_dump compress (its custom format's default, zlib) and the
    archive stores that as it is."""
    pg_dump = find_tool("pg_dump")
    where = f"logical backup of database {database} on node {node.name}"
    try:
        conn = psycopg.connect(node.conninfo(database), connect_timeout=10, autocommit=True)
    except psycopg.OperationalError as exc:
        raise DumpFailed(f"{where}: cannot connect: {str(exc).strip().splitlines()[0]}") from exc
    try:
        with conn:
            check_readable(conn, user=node.user, where=where)
            # A policy that would filter a count makes it fail instead (row_security off), as it does pg_dump.
            conn.execute("SET row_security = off")
            roles = [row[0] for row in conn.execute(_ROLES).fetchall()]
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            position = conn.execute(
                "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text,"
                " (SELECT timeline_id FROM pg_control_checkpoint()), current_setting('server_version')"
            ).fetchone()
            fingerprint = schema_fingerprint(conn)
            per_table = table_fingerprints(conn)
            foreign_keys = [list(row) for row in conn.execute(_FOREIGN_KEY_COLUMNS).fetchall()]
            # The row counts (a scan of every table) are taken on the snapshot's own connection while pg_dump
            # streams from the same snapshot: the same numbers, without adding their time to the backup's.
            counting = ThreadPoolExecutor(max_workers=1, thread_name_prefix="continuity-row-counts")
            counted = counting.submit(row_counts, conn)
            report(f"{where}: snapshot {snapshot} at LSN {position[0]}; pg_dump streams it while its rows are "
                   f"counted")

            def logical_details(_source: Any) -> dict[str, Any]:
                counts = counted.result()
                report(f"{where}: {len(counts)} tables, {sum(counts.values()):,} rows counted in the dump's snapshot")
                return {"snapshot": snapshot, "row_counts": counts, "schema_fingerprint": fingerprint, "roles": roles,
                        "table_fingerprints": per_table, "foreign_keys": foreign_keys, "format": "pg_dump custom",
                        "pg_dump_compression": ("none: the archive's zstd" if compression == "zstd"
                                                else "pg_dump's default (the archive stores it uncompressed)")}

            # Compressed once, by one or the other: zstd over zlib's output gains little for the same CPU.
            argv = [pg_dump, f"--snapshot={snapshot}", "--format=custom",
                    *(["--compress=0"] if compression == "zstd" else []), "--no-password",
                    f"--host={node.host}", f"--port={node.port}", f"--username={node.user}",
                    f"--dbname={node.tool_dbname(database)}"]
            try:
                manifest = backup_from_command(
                    argv, env=node.tool_env(), kind="logical", keyring=keyring, locations=locations,
                    required=required, backup_id=backup_id, report=report,
                    compression="zstd" if compression == "zstd" else "none",
                    versions={"pg_dump": tool_version(pg_dump), "server": position[2]},
                    source_info={"node": node.name, "database": database, "lsn": position[0],
                                 "timeline": position[1]},
                    details=logical_details)
            finally:
                counting.shutdown(wait=True)  # its query ends before the connection is used again
            try:
                conn.execute("COMMIT")
            except psycopg.OperationalError as exc:  # the backup is complete: only the snapshot's holder is gone
                report(f"{where}: the snapshot's connection ended at the finish ({str(exc).strip().splitlines()[0]}); "
                       f"the backup is complete")
    except SourceCommandFailed as exc:
        raise DumpFailed(f"{where}: {exc}") from exc
    except psycopg.OperationalError as exc:
        raise DumpFailed(f"{where}: the connection holding the snapshot failed: "
                         f"{str(exc).strip().splitlines()[0]}") from exc
    finally:
        conn.close()
    return manifest


# -- physical ----------------------------------------------------------------------------------
_START = re.compile(r"write-ahead log start point: ([0-9A-F]+/[0-9A-F]+) on timeline (\d+)")
_END = re.compile(r"write-ahead log end point: ([0-9A-F]+/[0-9A-F]+)")


def physical_backup(
    *,
    node: NodeAddress,
    keyring: Keyring,
    locations: Sequence[StorageLocation],
    required: set[str],
    backup_id: str,
    report: Callable[[str], None],
) -> Manifest:
    pg_basebackup = find_tool("pg_basebackup")
    where = f"physical backup of node {node.name}"
    argv = [pg_basebackup, "--pgdata=-", "--format=tar", "--wal-method=fetch", "--checkpoint=fast", "--verbose",
            "--manifest-checksums=SHA256", "--no-password", f"--host={node.host}", f"--port={node.port}",
            f"--username={node.user}", f"--label=continuity {backup_id}"]
    if (connection := node.tool_dbname()) is not None:
        argv.append(f"--dbname={connection}")
    positions: dict[str, Any] = {}

    def parse(source: CommandSource) -> Mapping[str, Any]:
        start, end = _START.search(source.stderr_text), _END.search(source.stderr_text)
        if not start or not end:
            raise DumpFailed(f"{where}: pg_basebackup did not report its start and end WAL positions")
        positions.update(start_lsn=start.group(1), timeline=int(start.group(2)), stop_lsn=end.group(1))
        positions["start_wal_file"] = wal_file_for(positions["start_lsn"], positions["timeline"])
        positions["stop_wal_file"] = wal_file_for(positions["stop_lsn"], positions["timeline"])
        return {"format": "pg_basebackup tar (base.tar with pg_wal and backup_manifest)", "wal_method": "fetch"}

    try:
        return backup_from_command(
            argv, env=node.tool_env(), kind="physical", keyring=keyring, locations=locations, required=required,
            backup_id=backup_id, report=report, versions={"pg_basebackup": tool_version(pg_basebackup)},
            details=parse, source_info=lambda: {"node": node.name, **positions},
        )
    except SourceCommandFailed as exc:
        raise DumpFailed(f"{where}: {exc}") from exc

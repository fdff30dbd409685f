"""The daily database integrity check (the requirements' `database_integrity`): every table's pages and every
B-tree index read and verified by PostgreSQL's amcheck, on a standby so the primary's load is untouched.

A backup copies whatever pages the database has; a page corrupted on disk (a flipped bit, a torn write that data
checksums catch on read) is copied into every backup after it unless something reads it first. amcheck reads
each heap page (`verify_heapam`: checksums, tuple headers, TOAST) and each B-tree (`bt_index_check`, with
`heapallindexed`: every heap tuple has its index entry). It runs on a hot standby (read-only locks only), which
holds the same pages as the primary bit for bit except for hint bits.

Needs the `amcheck` extension in each checked database (created on the primary; it replicates) and EXECUTE on
`verify_heapam` and `bt_index_check` for the checking role. Without it the check says `not measured` and why.
The sandbox does not install it: an extension in the application database is in every logical backup, and
pg_restore into a target whose role may not create it (or lacks the granted role) fails; restoring around such
entries (a pg_restore list without them) has to come first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone

import psycopg
from pydantic import BaseModel, ConfigDict

from continuity.policy.model import Policy
from continuity.postgres.node import NodeUnreachable, PostgresNode

TABLES = ("SELECT c.oid::regclass::text AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
          "WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence = 'p' ORDER BY 1")
BTREES = ("SELECT c.oid::regclass::text AS name FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
          "JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' AND c.relpersistence = 'p' AND i.indisvalid "
          "AND i.indisready ORDER BY 1")


class IntegrityProblem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    database: str
    relation: str
    kind: str  # "table" or "index"
    detail: str


class IntegrityReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str
    checked_at: datetime
    databases: list[str]
    tables: int = 0
    indexes: int = 0
    seconds: float = 0.0
    problems: list[IntegrityProblem] = []

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        what = f"{self.tables} tables and {self.indexes} B-tree indexes of {', '.join(self.databases)} on {self.node}"
        if self.ok:
            return f"intact: {what} read and verified by amcheck in {self.seconds:.1f}s"
        first = self.problems[0]
        return (f"CORRUPT: {len(self.problems)} relation(s) of {what} failed amcheck, first {first.database}."
                f"{first.relation} ({first.kind}): {first.detail}")


def integrity_node(policy: Policy) -> str:
    """Where the check reads: a standby in the DR region, else any standby, else the primary."""
    standbys = [node for node in policy.topology.nodes if node.role == "standby"]
    in_dr = [node for node in standbys if node.region == policy.topology.dr_region]
    return (in_dr or standbys or policy.topology.nodes)[0].name


class IntegrityCheckError(RuntimeError):
    """The check itself could not run (the node, or amcheck missing): nothing was judged."""


class AmcheckMissing(IntegrityCheckError):
    """The database has no amcheck extension: nothing can be checked there (`not measured`)."""


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def check_database(node: PostgresNode, database: str, report: IntegrityReport,
                   progress: Callable[[str], None]) -> None:
    try:
        installed = node.query_one("SELECT count(*) AS n FROM pg_extension WHERE extname = 'amcheck'")["n"]
        tables = [row["name"] for row in node.query(TABLES)]
        indexes = [row["name"] for row in node.query(BTREES)]
    except (NodeUnreachable, psycopg.Error) as exc:
        raise IntegrityCheckError(f"database {database} on {node.name}: {_first_line(exc)}") from exc
    if not installed:
        raise AmcheckMissing(
            f"database {database} on {node.name} has no amcheck extension: nothing was checked. HINT: on the "
            f"primary, CREATE EXTENSION amcheck in {database} and GRANT EXECUTE ON FUNCTION verify_heapam, "
            f"bt_index_check(regclass, boolean) to the checking role")
    progress(f"{database} on {node.name}: {len(tables)} tables, {len(indexes)} B-tree indexes to verify")
    for name in tables:
        # One statement per relation: a page that fails its checksum raises instead of returning a row, and must
        # not stop the check of the others.
        try:
            rows = node.query("SELECT blkno, offnum, msg FROM verify_heapam(%s::regclass, on_error_stop => true)",
                              (name,))
        except NodeUnreachable as exc:
            raise IntegrityCheckError(f"{node.name} stopped answering during the check ({exc})") from exc
        except psycopg.Error as exc:
            report.problems.append(IntegrityProblem(database=database, relation=name, kind="table",
                                                    detail=_first_line(exc)))
            continue
        if rows:
            row = rows[0]
            report.problems.append(IntegrityProblem(database=database, relation=name, kind="table",
                                                    detail=f"block {row['blkno']} item {row['offnum']}: {row['msg']}"))
    report.tables += len(tables)
    for name in indexes:
        try:
            node.query("SELECT bt_index_check(%s::regclass, true)", (name,))
        except NodeUnreachable as exc:
            raise IntegrityCheckError(f"{node.name} stopped answering during the check ({exc})") from exc
        except psycopg.Error as exc:
            report.problems.append(IntegrityProblem(database=database, relation=name, kind="index",
                                                    detail=_first_line(exc)))
    report.indexes += len(indexes)


def check_integrity(node_for: Callable[[str], PostgresNode], databases: list[str], *, node_name: str,
                    progress: Callable[[str], None] = lambda _m: None) -> IntegrityReport:
    """amcheck over every table and B-tree index of `databases`, through `node_for(database)`."""
    started = time.monotonic()
    report = IntegrityReport(node=node_name, checked_at=datetime.now(timezone.utc), databases=list(databases))
    for database in databases:
        check_database(node_for(database), database, report, progress)
    report.seconds = round(time.monotonic() - started, 3)
    return report

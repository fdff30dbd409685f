"""What a PostgreSQL node says about itself: role, timeline, LSNs, replication, archiving, settings.

Plain psycopg over a conninfo string; the Airflow hook builds the conninfo from a connection and
the CLI from the sandbox state or flags. Every method runs one short read-only query.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

CONNECT_TIMEOUT_SECONDS = 5


class NodeUnreachable(ConnectionError):
    """The node did not accept a connection; the message names it and says why."""


class InvalidLsn(ValueError):
    """Text that is not a WAL position."""


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> its 64-bit position; a clear error for anything else."""
    try:
        high, low = text.strip().split("/")
        return (int(high, 16) << 32) | int(low, 16)
    except (ValueError, AttributeError):
        raise InvalidLsn(f"{text!r} is not a WAL position (LSN); expected the form 16/B374D848") from None


def lsn_to_int(lsn: str | None) -> int:
    """A position PostgreSQL reported, where None (not known, e.g. no WAL receiver) counts as 0."""
    return 0 if not lsn else parse_lsn(lsn)


def format_lsn(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def conninfo(*, host: str, port: int, user: str, password: str | None, dbname: str, **extra: Any) -> str:
    return make_conninfo(host=host, port=port, user=user, password=password or None, dbname=dbname, **extra)


# Values that are secrets: they never go on a command line, which every local user can read in `ps`.
SECRET_PARAMETERS = frozenset({"password", "sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key"})


@functools.cache
def _environment_variables() -> dict[str, str]:
    """libpq's own map from connection keywords to the environment variables it reads (PGSSLMODE, ...)."""
    return {option.keyword.decode(): option.envvar.decode()
            for option in psycopg.pq.Conninfo.get_defaults() if option.envvar}


def tool_connection(params: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """How a libpq client tool (pg_dump, pg_basebackup) gets connection parameters with no secret in its argv.

    Returns (environment, conninfo keywords): every keyword libpq reads from an environment variable
    goes there; the rest (keepalives, ...) must go in the tool's ``--dbname`` conninfo.
    """
    known = _environment_variables()
    environment: dict[str, str] = {}
    in_conninfo: dict[str, str] = {}
    for keyword, value in params.items():
        if value is None:
            continue
        if keyword in known:
            environment[known[keyword]] = str(value)
        elif keyword in SECRET_PARAMETERS:
            raise ValueError(f"connection parameter {keyword} is a secret libpq reads from no environment variable, so "
                             f"a client tool could only get it on its command line; HINT: use a key file or "
                             f"a ~/.pgpass entry instead")
        else:
            in_conninfo[keyword] = str(value)
    return environment, in_conninfo


def redacted(info: str) -> str:
    """The conninfo fit for a log line: everything but the password."""
    params = conninfo_to_dict(info)
    return " ".join(f"{k}={v}" for k, v in params.items() if k != "password")


REPLICATION_SQL = """
    SELECT application_name, state, sync_state,
           sent_lsn::text AS sent_lsn, replay_lsn::text AS replay_lsn,
           pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS lag_bytes,
           EXTRACT(EPOCH FROM replay_lag)::float8 AS replay_lag_seconds
    FROM pg_stat_replication
    ORDER BY application_name
"""


@dataclass(frozen=True)
class StandbyReplication:
    """One row of pg_stat_replication on the primary: a standby streaming from it."""

    application_name: str
    state: str
    sync_state: str
    sent_lsn: str | None
    replay_lsn: str | None
    lag_bytes: int | None
    replay_lag_seconds: float | None


@dataclass(frozen=True)
class WalReceiver:
    """pg_stat_wal_receiver on a standby."""

    status: str
    received_tli: int | None
    flushed_lsn: str | None
    sender_host: str | None
    sender_port: int | None
    slot_name: str | None
    last_message_age_seconds: float | None = None  # since the sender's last message (WAL or keepalive)


@dataclass(frozen=True)
class ArchiverStatus:
    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None

    @property
    def failing(self) -> bool:
        """True when the newest archiver event is a failure (a failure followed by success is healed)."""
        if self.last_failed_time is None:
            return False
        return self.last_archived_time is None or self.last_failed_time > self.last_archived_time


@dataclass(frozen=True)
class ReplicationSlot:
    slot_name: str
    active: bool
    restart_lsn: str | None
    retained_bytes: int | None
    # PostgreSQL's verdict on the slot's WAL: reserved/extended (kept), unreserved (past
    # max_slot_wal_keep_size, removed at the next checkpoint), lost (removed: the standby must be cloned again).
    wal_status: str | None = None


class PostgresNode:
    """Read-only questions to one PostgreSQL server; `name` is only used in messages."""

    def __init__(self, *, name: str, conninfo: str) -> None:
        self.name = name
        self.conninfo = conninfo

    def __repr__(self) -> str:
        return f"PostgresNode({self.name}: {redacted(self.conninfo)})"

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[dict[str, Any]]:
        try:
            return psycopg.connect(
                self.conninfo,
                autocommit=autocommit,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                row_factory=dict_row,
                prepare_threshold=None,  # PgBouncer in transaction pooling cannot keep prepared statements
            )
        except psycopg.OperationalError as exc:
            lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
            reason = lines[0].removeprefix("connection failed: ") if lines else type(exc).__name__
            raise NodeUnreachable(f"node {self.name} ({redacted(self.conninfo)}) is unreachable: {reason}") from exc

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.connect() as conn:
            try:
                return conn.execute(sql, params).fetchall()
            except psycopg.OperationalError as exc:
                # Connection-class failures after login (a pooler whose server is gone, a shutdown).
                raise NodeUnreachable(f"node {self.name} ({redacted(self.conninfo)}) failed mid-query: "
                                      f"{str(exc).strip().splitlines()[0]}") from exc

    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] | None = None) -> None:
        """Run a statement that returns no rows (CHECKPOINT, SET ...)."""
        with self.connect() as conn:
            try:
                conn.execute(sql, params)
            except psycopg.OperationalError as exc:
                raise NodeUnreachable(f"node {self.name} ({redacted(self.conninfo)}) failed mid-statement: "
                                      f"{str(exc).strip().splitlines()[0]}") from exc

    def commit_seconds(self, *, timeout: float) -> tuple[float, str | None]:
        """How long one commit takes here: a transaction that writes WAL (a transactional logical message, no table
        needed), so its commit waits for the synchronous standbys the primary names, as every application write
        does. With none acknowledging, the wait is cancelled after `timeout` (statement_timeout cannot: PostgreSQL
        disables it before the commit waits) and PostgreSQL's warning is returned with the time; the message is
        committed locally, which changes no data."""
        warnings: list[str] = []
        with self.connect(autocommit=False) as conn:
            conn.add_notice_handler(lambda diagnostic: warnings.append(diagnostic.message_primary or ""))
            canceller = threading.Timer(timeout, conn.cancel)
            try:
                conn.execute("SELECT pg_logical_emit_message(true, %s, %s)", ("continuity", "commit latency probe"))
                started = time.monotonic()
                canceller.start()
                conn.commit()
            except psycopg.OperationalError as exc:
                raise NodeUnreachable(f"node {self.name} ({redacted(self.conninfo)}) failed mid-commit: "
                                      f"{str(exc).strip().splitlines()[0]}") from exc
            finally:
                canceller.cancel()
            elapsed = time.monotonic() - started
        return elapsed, next((w for w in warnings if "synchronous replication" in w), None)

    def query_one(self, sql: str, params: tuple[Any, ...] | dict[str, Any] | None = None) -> dict[str, Any]:
        rows = self.query(sql, params)
        return rows[0] if rows else {}

    # -- role and position -------------------------------------------------------------------
    def is_in_recovery(self) -> bool:
        return bool(self.query_one("SELECT pg_is_in_recovery() AS r")["r"])

    def timeline(self) -> int:
        return int(self.query_one("SELECT timeline_id FROM pg_control_checkpoint()")["timeline_id"])

    def lsns(self) -> dict[str, str | None]:
        """current/flush on a primary; receive/replay on a standby (the others are None)."""
        return self.query_one(
            """
            SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END AS current_lsn,
                   CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END AS flush_lsn,
                   pg_last_wal_receive_lsn()::text AS receive_lsn,
                   pg_last_wal_replay_lsn()::text AS replay_lsn,
                   pg_last_xact_replay_timestamp() AS last_replay_time
            """
        )

    # -- replication -------------------------------------------------------------------------
    def replication(self) -> list[StandbyReplication]:
        """Standbys streaming from this node, as pg_stat_replication shows them."""
        return [StandbyReplication(**row) for row in self.query(REPLICATION_SQL)]

    def standby_replication(self, application_name: str) -> StandbyReplication | None:
        for row in self.replication():
            if row.application_name == application_name:
                return row
        return None

    def wal_receiver(self) -> WalReceiver | None:
        row = self.query_one(
            """
            SELECT status, received_tli, flushed_lsn::text AS flushed_lsn,
                   sender_host, sender_port, slot_name,
                   EXTRACT(EPOCH FROM now() - last_msg_receipt_time)::float8 AS last_message_age_seconds
            FROM pg_stat_wal_receiver
            """
        )
        return WalReceiver(**row) if row else None

    def replication_slots(self) -> list[ReplicationSlot]:
        rows = self.query(
            """
            SELECT slot_name, active, restart_lsn::text AS restart_lsn,
                   CASE WHEN pg_is_in_recovery() THEN NULL
                        ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint END AS retained_bytes,
                   wal_status
            FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY slot_name
            """
        )
        return [ReplicationSlot(**row) for row in rows]

    # -- archiving and settings --------------------------------------------------------------
    def archiver(self) -> ArchiverStatus:
        return ArchiverStatus(**self.query_one(ARCHIVER_SQL))

    def settings(self, names: list[str]) -> dict[str, str]:
        rows = self.query("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (names,))
        return {row["name"]: row["setting"] for row in rows}

    def ping(self) -> None:
        """Raise NodeUnreachable unless the node answers a query."""
        self.query_one("SELECT 1 AS ok")


async def standby_replication_async(conninfo: str, application_name: str) -> StandbyReplication | None:
    """pg_stat_replication's row for one standby, for triggers that must not block the event loop."""
    async with await psycopg.AsyncConnection.connect(
        conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS, row_factory=dict_row
    ) as conn:
        cursor = await conn.execute(REPLICATION_SQL)
        for row in await cursor.fetchall():
            if row["application_name"] == application_name:
                return StandbyReplication(**row)
    return None


ARCHIVER_SQL = """
    SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, last_failed_time
    FROM pg_stat_archiver
"""


async def archiver_async(conninfo: str) -> ArchiverStatus:
    """pg_stat_archiver, for triggers that must not block the event loop."""
    async with await psycopg.AsyncConnection.connect(
        conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS, row_factory=dict_row
    ) as conn:
        cursor = await conn.execute(ARCHIVER_SQL)
        return ArchiverStatus(**await cursor.fetchone())


def as_dict(value: Any) -> Any:
    """Dataclasses to plain dicts for XCom and --json output."""
    if isinstance(value, list):
        return [as_dict(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(value).items()}
    return value

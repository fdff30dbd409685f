"""Database-aware restores into isolated scratch clusters: logical, physical, and point-in-time.

A scratch cluster lives in a temporary directory on a free loopback port, runs as the `postgres`
OS user when we are root, never archives, and is always torn down. Production nodes are never
touched: the only inputs are backups from the catalog.

Longer than 600 lines on purpose: the three restores share the scratch cluster's life (create, feed, check,
always tear down) and its failure handling; the expectations that validate a restore are apart
(restore.expectations).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import queue
import random
import signal
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from continuity.backup.engine import restore_copy
from continuity.storage.catalog import Catalog
from continuity.storage.keys import Keyring, KeyringError
from continuity.postgres.cluster import (ClusterError, LocalCluster, ServiceUser, find_bindir, find_tool, free_port,
                                    scrubbed_environment, stop_pid)
from continuity.storage.manifest import Manifest
from continuity.objects.audit import Consistency, check_consistency
from continuity.objects.store import ObjectStore
from continuity.postgres.node import InvalidLsn, format_lsn, parse_lsn
from continuity.storage.locations import StorageLocation
from continuity.waiting import poll
from continuity.backup.wal import SEGMENT_SIZE, classify

log = logging.getLogger(__name__)


class RestoreError(RuntimeError):
    """A restore could not be done; the message says which backup, where, and why."""


class RestoreRefused(RestoreError):
    """The request itself is wrong (wrong kind of backup, a non-empty target, a password in argv): nothing ran."""


# Logical restores load data that came from the application: functions inside a dump (a CHECK
# constraint, a trigger, a default) run as whoever restores it. This role is no superuser and
# holds no pg_execute_server_program / pg_read_server_files, so such code cannot run a program
# or read the server's files; the server itself runs with a scrubbed environment.
RESTORE_ROLE = "continuity_restore"
# The same danger in a restored physical copy (a drill's markers, row counts, object references): its tables
# and views are the application's, and a view calling an application function runs that function with the
# reader's rights; as a superuser, `COPY ... TO PROGRAM`. Reads there go through this role, made in the
# throwaway copy only (`add_check_role`): no superuser, reading by pg_read_all_data. (pg_amcheck may stay a
# superuser: amcheck evaluates index expressions as the table's owner, in a security-restricted operation.)
CHECK_ROLE = "continuity_check"


@dataclass
class ScratchCluster:
    """A throwaway PostgreSQL cluster; use `scratch_cluster()` so it is always removed."""

    root: Path
    cluster: LocalCluster
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.cluster.port

    def conninfo(self, dbname: str = "postgres", *, user: str = "postgres") -> str:
        return f"host={self.cluster.socket_dir} port={self.cluster.port} user={user} dbname={dbname}"

    def connect(self, dbname: str = "postgres", *, user: str = "postgres", **kwargs: Any) -> psycopg.Connection:
        return psycopg.connect(self.conninfo(dbname, user=user), **kwargs)

    def add_check_role(self) -> str:
        """Make CHECK_ROLE in this (promoted) copy and return its name. A role of that name restored with the copy
        is replaced: its attributes came from the backup. It logs in without a password over the copy's socket
        only, whose directory (scratch_cluster: 0700) only the service user can enter; the source's pg_hba.conf
        rules follow for every other role."""
        self.cluster.psql(f"DROP ROLE IF EXISTS {CHECK_ROLE};\n"
                          f"CREATE ROLE {CHECK_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                          f"NOBYPASSRLS;\nGRANT pg_read_all_data TO {CHECK_ROLE};")
        hba = self.cluster.data_dir / "pg_hba.conf"
        rules = hba.read_text()
        if not rules.startswith(f"local all {CHECK_ROLE} trust"):
            self.cluster.user.write_file(hba, f"local all {CHECK_ROLE} trust\n{rules}")
            self.cluster.psql("SELECT pg_reload_conf();")

            def admitted() -> bool:  # the postmaster reads pg_hba.conf again on the signal: soon, not at once
                try:
                    self.connect(user=CHECK_ROLE, connect_timeout=5).close()
                    return True
                except psycopg.OperationalError:
                    return False

            if not poll(admitted, timeout=10):
                raise RestoreError(f"the restored copy does not let {CHECK_ROLE} log in over its socket "
                                   f"({hba} reloaded); see {self.cluster.log_file}")
        return CHECK_ROLE

    def write_private_conf(self, extra: dict[str, str] | None = None) -> None:
        """Settings that keep a restored copy private: own port and socket, no archiving, no upstream."""
        settings = {"port": str(self.port), "unix_socket_directories": f"'{self.cluster.socket_dir}'",
                    "listen_addresses": "''", "archive_mode": "off", "synchronous_standby_names": "''",
                    "primary_conninfo": "''", "primary_slot_name": "''", "hot_standby": "on", **(extra or {})}
        self.cluster.user.write_file(self.cluster.data_dir / "node.conf",
                                     "".join(f"{k} = {v}\n" for k, v in settings.items()))


@contextmanager
def scratch_cluster(*, initdb: bool = True, prefix: str = "continuity-scratch-") -> Iterator[ScratchCluster]:
    user = ServiceUser.detect()
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    user.make_dir(root, 0o755)
    socket_dir = user.make_dir(root / "run", 0o700)
    cluster = LocalCluster(name="scratch", data_dir=root / "data", port=free_port(), socket_dir=socket_dir,
                           log_file=root / "postgres.log", user=user, bindir=find_bindir())
    scratch = ScratchCluster(root=root, cluster=cluster)
    try:
        if initdb:
            cluster.initdb()
            with open(cluster.data_dir / "postgresql.conf", "a") as conf:
                conf.write("\ninclude_if_exists = 'node.conf'\n")
            scratch.write_private_conf()
            cluster.start()
            cluster.psql(f"CREATE ROLE {RESTORE_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;")
        yield scratch
    finally:
        try:
            cluster.stop(mode="immediate")
        except ClusterError as exc:
            log.warning("scratch cluster stop: %s", exc)
        shutil.rmtree(root, ignore_errors=True)


def scratch_prefix(run_id: str) -> str:
    """The temporary-directory prefix of one run's scratch clusters (short: socket paths are limited)."""
    return f"continuity-{hashlib.sha256(run_id.encode()).hexdigest()[:12]}-"


def remove_scratch_clusters(prefix: str, *, parent: Path | None = None) -> list[Path]:
    """Stop and delete every scratch cluster left under `prefix` (a worker killed mid-restore leaves
    one running): the teardown task's guarantee when the context manager never got to clean up."""
    removed = []
    for root in sorted(Path(parent or tempfile.gettempdir()).glob(f"{prefix}*")):
        pid_file = root / "data" / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            pid = None
        if pid and not _is_postgres(pid):
            pid = None  # a stale pid file whose number now belongs to someone else
        if stop_pid(pid, name=f"scratch postgres in {root}", sig=signal.SIGQUIT, timeout=10):
            log.info("stopped the scratch cluster in %s (pid %s)", root, pid)
        shutil.rmtree(root, ignore_errors=True)
        removed.append(root)
    return removed


def _is_postgres(pid: int) -> bool:
    try:
        return b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


# -- logical -----------------------------------------------------------------------------------
def sample_tables(manifest: Manifest, *, size: int, critical: list[str], seed: str) -> list[str]:
    """`size` random tables (stable for a seed) plus the critical ones, closed over foreign-key parents."""
    tables = sorted(name.split(".", 1)[-1] for name in manifest.details.get("row_counts", {}))
    chosen = {t for t in critical if t in tables}
    rest = sorted(set(tables) - chosen)
    chosen |= set(random.Random(seed).sample(rest, min(size, len(rest))))
    parents = {}
    for table, _column, parent, _ref in manifest.details.get("foreign_keys", []):
        parents.setdefault(table.split(".", 1)[-1], set()).add(parent.split(".", 1)[-1])
    queue = list(chosen)
    while queue:
        for parent in parents.get(queue.pop(), ()):
            if parent not in chosen:
                chosen.add(parent)
                queue.append(parent)
    return sorted(chosen)


_MULTIWORD_KINDS = ("SEQUENCE OWNED BY", "SEQUENCE SET", "TABLE DATA", "FK CONSTRAINT")


def _toc_for(listing: str, tables: set[str]) -> str:
    """Keep the TOC entries of the chosen tables: definition, data, keys and foreign keys."""
    kept = []
    for line in listing.splitlines():
        if not line or line.startswith(";"):
            continue
        # "ID; CLASS OID TYPE [TYPE2] schema name owner"; TYPE may be two words (TABLE DATA, FK CONSTRAINT)
        body = line.split(";", 1)[1].split()
        kind = next((k for k in _MULTIWORD_KINDS if body[2:2 + k.count(" ") + 1] == k.split()), body[2])
        names = body[2 + kind.count(" ") + 1:]
        if kind in ("TABLE", "TABLE DATA", "CONSTRAINT", "FK CONSTRAINT", "DEFAULT") and len(names) >= 2 \
                and names[1] in tables:
            kept.append(line)
        elif kind in ("SCHEMA", "EXTENSION", "TYPE", "FUNCTION", "SEQUENCE", "SEQUENCE SET"):
            # Not "SEQUENCE OWNED BY": its table may not be in the sample (the listing does not name it),
            # and a sequence's owner is no data to verify.
            kept.append(line)
    return "\n".join(kept) + "\n"


PARALLEL_RESTORE_MIN_BYTES = 64 * 2**20


def restore_jobs(manifest: Manifest, tables: list[str] | None) -> int:
    """Parallel pg_restore pays off for a whole, large dump on a machine with spare cores."""
    if tables or manifest.plaintext_bytes < PARALLEL_RESTORE_MIN_BYTES:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def restore_logical(manifest: Manifest, *, catalog: Catalog, location: str, scratch: ScratchCluster,
                    database: str | None = None, tables: list[str] | None = None, jobs: int | None = None) -> str:
    """Restore a logical dump (or only `tables`) into a new database of the scratch cluster.

    One job streams the dump into pg_restore's stdin (nothing on disk). More than one job needs a
    seekable file: the dump is decrypted into the scratch directory first (disk, not memory)."""
    if manifest.kind != "logical":
        raise RestoreError(f"backup {manifest.backup_id} is a {manifest.kind} backup, not a logical dump")
    database = database or manifest.source.get("database", "restored")
    jobs = restore_jobs(manifest, tables) if jobs is None else jobs
    cluster = scratch.cluster
    pg_restore = find_tool("pg_restore")
    cluster.psql(f'CREATE DATABASE "{database}" OWNER {RESTORE_ROLE};')
    argv = [pg_restore, "--no-owner", "--no-privileges", "--exit-on-error",
            "-h", str(cluster.socket_dir), "-p", str(cluster.port), "-U", RESTORE_ROLE, "-d", database]
    started = time.monotonic()
    if tables:
        # The custom format starts with its table of contents: list it, keep the sample's entries.
        listing = _stream_into([pg_restore, "--list"], manifest, catalog, location, user=None)
        toc = scratch.root / "sample.toc"
        toc.write_text(_toc_for(listing, set(tables)))
        toc.chmod(0o644)
        argv += ["--use-list", str(toc)]
    if jobs > 1:
        dump = scratch.root / "restore.dump"
        with open(os.open(dump, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
            restore_copy(manifest, catalog.locations[location], catalog.keyring, handle)
        if cluster.user.is_other:
            os.chown(dump, cluster.user.uid, cluster.user.gid)
        try:
            result = subprocess.run(cluster.user.command([*argv, f"--jobs={jobs}", str(dump)]),
                                    capture_output=True, text=True, check=False, env=scrubbed_environment())
        finally:
            dump.unlink(missing_ok=True)
        if result.returncode != 0:
            raise RestoreError(f"pg_restore --jobs={jobs} of backup {manifest.backup_id} from location {location} "
                               f"failed: {tool_error(result.stderr) or result.returncode}")
    else:
        _stream_into(argv, manifest, catalog, location, user=cluster.user)
    scratch.timings["restore"] = time.monotonic() - started
    return database


def _stream_into(argv: list[str], manifest: Manifest, catalog: Catalog, location: str,
                 *, user: ServiceUser | None) -> str:
    return stream_into_tool(argv, manifest, catalog.locations[location], catalog.keyring, user=user)


def stream_into_tool(argv: list[str], manifest: Manifest, location: StorageLocation, keyring: Keyring,
                     *, user: ServiceUser | None = None, env: dict[str, str] | None = None) -> str:
    """Decrypt a backup into a tool's stdin; returns its stdout. A tool that stops reading early is fine.

    stdout is drained by a thread and stderr goes to a temporary file (not a pipe read at the end),
    so a chatty tool can never block the stream. The tool gets a scrubbed environment (+ `env`).
    """
    with tempfile.TemporaryFile() as stderr_file:
        process = subprocess.Popen(user.command(argv) if user else argv, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=stderr_file, env=scrubbed_environment(env))
        assert process.stdin is not None and process.stdout is not None
        output: list[bytes] = []
        reader = threading.Thread(target=lambda: output.append(process.stdout.read()), daemon=True)
        reader.start()
        try:
            restore_copy(manifest, location, keyring, process.stdin)
        except BrokenPipeError:
            pass
        finally:
            try:
                process.stdin.close()
            except BrokenPipeError:
                pass
        reader.join()
        code = process.wait()
        stderr_file.seek(0)
        stderr = stderr_file.read()[-64_000:].decode(errors="replace")
    if code != 0:
        name = Path(argv[0]).name
        raise RestoreError(f"{name} of backup {manifest.backup_id} from location {location.name} failed: "
                           f"{tool_error(stderr) or code}")
    return b"".join(output).decode(errors="replace")


def restore_into_database(manifest: Manifest, location: StorageLocation, keyring: Keyring, dsn: str) -> None:
    """A logical backup into an existing, empty database (the emergency CLI's `--to-database`).

    The connection string may carry no password (argv is public): PGPASSWORD or ~/.pgpass supply it.
    """
    if manifest.kind != "logical":
        raise RestoreRefused(f"backup {manifest.backup_id} is {manifest.kind}; only a logical backup restores into a "
                           f"database")
    if "password" in conninfo_to_dict(dsn):
        raise RestoreRefused("the connection string carries a password, which any user of this machine can read in "
                           "`ps`; give it through PGPASSWORD or a ~/.pgpass / PGPASSFILE entry instead")
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
                              "'information_schema')").fetchone()[0]
    if tables:
        raise RestoreRefused(f"the target database already holds {tables} tables; refusing to restore over them")
    password = {"PGPASSWORD": os.environ["PGPASSWORD"]} if os.environ.get("PGPASSWORD") else {}
    passfile = {k: os.environ[k] for k in ("PGPASSFILE", "HOME") if os.environ.get(k)}
    stream_into_tool([find_tool("pg_restore"), "--no-owner", "--exit-on-error", "--no-password", "--dbname", dsn],
                     manifest, location, keyring, env={**password, **passfile})


def restore_to_directory(*, catalog: Catalog, location: str, target: Path, base: Manifest,
                         target_time: datetime | None, target_lsn: str | None, port: int | None,
                         report: Callable[[str], None]) -> LocalCluster:
    """A base backup + WAL into the new data directory `target`, recovered (to a point when asked) and
    left running on `port` (default: a free one): the emergency CLI's `--to-cluster`."""
    if base.kind != "physical":
        raise RestoreRefused(f"backup {base.backup_id} is {base.kind}; a cluster is restored from a physical backup")
    user = ServiceUser.detect()
    target.parent.mkdir(parents=True, exist_ok=True)
    if user.is_other and subprocess.run(user.command(["test", "-w", str(target.parent), "-a", "-x", str(target.parent)]),
                                        check=False).returncode != 0:
        raise RestoreRefused(f"the OS user {user.name!r}, which PostgreSQL runs as, cannot write in {target.parent}; "
                             f"choose a directory it can reach (e.g. under /var/lib/postgresql or /tmp)")
    work = user.make_dir(target.parent / f".{target.name}.continuity", 0o755)
    cluster = LocalCluster(name=target.name, data_dir=target, port=port or free_port(),
                           socket_dir=user.make_dir(work / "run", 0o755), log_file=work / "postgres.log",
                           user=user, bindir=find_bindir())
    restore_physical(catalog=catalog, location=location, scratch=ScratchCluster(root=work, cluster=cluster),
                     base=base, target_time=target_time, target_lsn=target_lsn, report=report)
    return cluster


def tool_error(stderr: str) -> str:
    """The server's ERROR (what was refused, and why) with the tool's last word, from a client tool's stderr."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR:" in line]
    if errors and errors[0] != lines[-1]:
        return f"{errors[0]} ({lines[-1]})"
    return lines[-1] if lines else ""


def amcheck(scratch: ScratchCluster) -> tuple[bool, str]:
    """pg_amcheck over every database of a restored physical copy (heap and B-tree corruption)."""
    cluster = scratch.cluster
    result = subprocess.run(
        cluster.user.command([find_tool("pg_amcheck"), "--install-missing", "--all", "--heapallindexed",
                              "-h", str(cluster.socket_dir), "-p", str(cluster.port), "-U", "postgres"]),
        capture_output=True, text=True, timeout=3600, check=False, env=scrubbed_environment())
    detail = (result.stdout + result.stderr).strip()
    if result.returncode == 0:
        return True, "pg_amcheck found no corruption in any database"
    return False, f"pg_amcheck exited {result.returncode}: {detail.splitlines()[-1] if detail else ''}"


# -- physical and point-in-time ------------------------------------------------------------------
@dataclass(frozen=True)
class RecoveryWindow:
    start: datetime
    end: datetime

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M:%S %Z} to {self.end:%Y-%m-%d %H:%M:%S %Z}"


def recovery_window(catalog: Catalog, location: str) -> RecoveryWindow:
    bases = catalog.list(kind="physical", location=location)
    wal = catalog.list(kind="wal", location=location)
    if not bases:
        raise RestoreError(f"location {location} holds no base backup: no point in time can be restored")
    end = max([m.finished_at for m in wal] + [bases[-1].finished_at])
    return RecoveryWindow(start=bases[0].finished_at, end=end)



def lsn_window(catalog: Catalog, location: str) -> tuple[int, int]:
    """From the first base backup's end to the end of the newest archived WAL segment."""
    bases = catalog.list(kind="physical", location=location)
    if not bases:
        raise RestoreError(f"location {location} holds no base backup: no WAL position can be restored")
    ends = [parse_lsn(m.source["stop_lsn"]) for m in bases]
    for manifest in catalog.list(kind="wal", location=location):
        wal = classify(manifest.source.get("wal_file", ""))
        if wal is not None and wal.kind == "segment" and wal.segno is not None:
            ends.append((wal.segno + 1) * SEGMENT_SIZE)
    return parse_lsn(bases[0].source["stop_lsn"]), max(ends)


def choose_base_backup(catalog: Catalog, location: str, target_time: datetime | None,
                       target_lsn: str | None = None) -> Manifest:
    """The newest base backup that ended before the target; refuse a target outside the window."""
    bases = catalog.list(kind="physical", location=location)
    if target_lsn is not None:
        try:
            position = parse_lsn(target_lsn)
        except InvalidLsn as exc:
            raise RestoreError(str(exc)) from None
        start, end = lsn_window(catalog, location)
        if not start <= position <= end:
            raise RestoreError(f"target LSN {target_lsn} is outside the recovery window of location {location}: "
                               f"{format_lsn(start)} to {format_lsn(end)}")
        return [m for m in bases if parse_lsn(m.source["stop_lsn"]) <= position][-1]
    window = recovery_window(catalog, location)
    if target_time is None:
        return bases[-1]
    if not window.start <= target_time <= window.end:
        raise RestoreError(f"target {target_time:%Y-%m-%d %H:%M:%S %Z} is outside the recovery window of location "
                           f"{location}: {window}")
    return [m for m in bases if m.finished_at <= target_time][-1]


# restore_command of a restore whose WAL a thread stages while PostgreSQL replays: the file once staged; exit 1
# (the end of the archive) only once staging is over and the file is not there; exit 255 when staging failed,
# so recovery aborts (an exit status above 125 is fatal to it) instead of promoting short of the target.
STAGED_WAL_COMMAND = """#!/bin/sh
dir=$1 name=$2 target=$3
case "$name" in *.history) over="$dir/.history-staged" ;; *) over="$dir/.staged" ;; esac
while [ ! -f "$dir/$name" ]; do
    [ -f "$dir/.failed" ] && exit 255
    if [ -f "$over" ]; then
        [ -f "$dir/$name" ] && break
        exit 1
    fi
    sleep 0.05
done
exec cp "$dir/$name" "$target"
"""


def stage_wal(catalog: Catalog, location: str, base: Manifest, staging: Path, *, user: ServiceUser,
              stop: threading.Event | None = None) -> int:
    """Decrypt and verify every WAL file from the base backup's start onward into `staging`: history files
    first (then `.history-staged`), segments in the order recovery asks for them (then `.staged`); each
    appears whole under its name (written hidden, renamed). On failure `.failed` says so, then it raises.
    `stop` ends it early (recovery reached its target)."""
    start = classify(base.source["start_wal_file"])
    wanted = []
    for manifest in catalog.list(kind="wal", location=location):
        wal = classify(manifest.source.get("wal_file", ""))
        if wal is None or wal.kind not in ("history", "segment"):
            continue
        if wal.kind == "segment" and (wal.timeline, wal.segno or 0) < (start.timeline, start.segno or 0):
            continue
        wanted.append((wal, manifest))
    wanted.sort(key=lambda item: (item[0].kind != "history", item[0].segno or 0, item[0].timeline))
    count = 0
    try:
        for number, (wal, manifest) in enumerate(wanted):
            if stop is not None and stop.is_set():
                break
            hidden = staging / f".{wal.name}.staging"
            with open(hidden, "wb") as handle:
                try:
                    restore_copy(manifest, catalog.locations[location], catalog.keyring, handle)
                except KeyringError:
                    # The WAL index's copy of the manifest predates a key rotation whose old KEK is retired:
                    # the manifest as stored now holds the re-wrapped key.
                    handle.seek(0)
                    handle.truncate()
                    current, _ = catalog.get(manifest.backup_id, location=location)
                    restore_copy(current, catalog.locations[location], catalog.keyring, handle)
            if user.is_other:
                os.chown(hidden, user.uid, user.gid)
            os.replace(hidden, staging / wal.name)
            count += 1
            if wal.kind == "history" and (number + 1 == len(wanted) or wanted[number + 1][0].kind != "history"):
                (staging / ".history-staged").touch()
    except BaseException:
        (staging / ".failed").touch()
        raise
    (staging / ".history-staged").touch()
    (staging / ".staged").touch()
    return count


class BackgroundWriter:
    """A sink written by a thread of its own, at most `depth` blocks behind: decrypting, decompressing and
    hashing go on while a slow reader (tar through a pipe) takes the previous blocks, instead of the two
    waiting on each other through a 64 KiB pipe. Memory stays at `depth` blocks."""

    def __init__(self, sink: Any, *, depth: int = 16) -> None:
        self._sink = sink
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="continuity-restore-writer", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        try:
            while (block := self._queue.get()) is not None:
                self._sink.write(block)
        except BaseException as exc:  # reported to the producer at its next write or at close
            self._error = exc
            while self._queue.get() is not None:
                pass

    def write(self, data: bytes) -> int:
        if self._error is not None:
            raise self._error
        self._queue.put(bytes(data))
        return len(data)

    def close(self) -> None:
        """Wait until every block is written; raise what the writer met."""
        self.stop()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """End the writer thread (idempotent; after a failure the thread discards what is queued)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=60)


def unpack_base_backup(base: Manifest, location: StorageLocation, keyring: Keyring, data_dir: Path, *,
                       user: ServiceUser) -> None:
    """Fetch, decrypt and unpack a base backup into a new `data_dir`, owned by the OS user PostgreSQL runs as.

    GNU tar unpacks as that user, so no ownership pass over every file follows, in a process of its own fed
    by a writer thread through a 1 MiB pipe in 128 KiB records: this process decrypts and decompresses while
    tar writes the previous blocks (bench/pgbackrest.py: 1.4-1.6 s instead of 2.2-2.5 s for 786 MiB).
    """
    user.make_dir(data_dir, 0o700)
    messages = tempfile.TemporaryFile()  # a file, not a pipe: tar never blocks on a full stderr while fed
    tar = subprocess.Popen(user.command(["tar", "--extract", "--file=-", "--blocking-factor=256",
                                         "--read-full-records", f"--directory={data_dir}"]),
                           stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=messages, bufsize=0)
    assert tar.stdin is not None
    try:
        fcntl.fcntl(tar.stdin.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass  # above this machine's pipe-max-size: the default pipe works, only slower
    feeder = BackgroundWriter(tar.stdin)
    try:
        restore_copy(base, location, keyring, feeder)
        feeder.close()
        tar.stdin.close()
    except BrokenPipeError:
        pass  # tar stopped reading: its exit status and message say why
    except BaseException as exc:
        tar.kill()
        tar.wait()
        raise RestoreError(f"base backup {base.backup_id} from location {location.name} failed: {exc}") from exc
    finally:
        feeder.stop()
        if not tar.stdin.closed:
            try:
                tar.stdin.close()
            except BrokenPipeError:
                pass
    tar.wait()
    with messages:
        messages.seek(0)
        errors = messages.read().decode(errors="replace").strip()
    if tar.returncode != 0:
        raise RestoreError(f"unpacking base backup {base.backup_id} into {data_dir} failed (tar exit "
                           f"{tar.returncode}): {errors.splitlines()[-1] if errors else 'no message'}")


def restore_physical(
    *,
    catalog: Catalog,
    location: str,
    scratch: ScratchCluster,
    target_time: datetime | None = None,
    target_lsn: str | None = None,
    base: Manifest | None = None,
    report: Callable[[str], None] = log.info,
    timeout: float = 300,
) -> Manifest:
    """Rebuild a cluster from a base backup plus WAL and promote it at the target (default: latest)."""
    if target_time is not None and target_lsn is not None:
        raise RestoreError("give a target time or a target LSN, not both")
    base = base or choose_base_backup(catalog, location, target_time, target_lsn)
    cluster = scratch.cluster
    user = cluster.user
    started = time.monotonic()
    unpack_base_backup(base, catalog.locations[location], catalog.keyring, cluster.data_dir, user=user)
    scratch.timings["fetch_and_unpack"] = time.monotonic() - started
    staging = user.make_dir(scratch.root / "wal", 0o700)
    command = scratch.root / "restore-staged-wal.sh"
    command.write_text(STAGED_WAL_COMMAND)
    command.chmod(0o755)
    # WAL is staged by a thread while PostgreSQL replays what is already there (recovery waits for each file
    # in turn), instead of replay starting only once every file is fetched.
    started = time.monotonic()
    stop_staging = threading.Event()
    staging_outcome: dict[str, Any] = {}

    def stage() -> None:
        try:
            staging_outcome["count"] = stage_wal(catalog, location, base, staging, user=user, stop=stop_staging)
        except BaseException as exc:
            staging_outcome["error"] = exc
        finally:
            scratch.timings["wal_staging"] = time.monotonic() - started

    stager = threading.Thread(target=stage, name="continuity-wal-staging", daemon=True)
    stager.start()
    report(f"restoring base backup {base.backup_id} from location {location}; its WAL is staged as it replays")
    recovery = {"restore_command": f"'{command} {staging} %f %p'", "recovery_target_action": "'promote'",
                "recovery_target_timeline": "'latest'"}
    if target_time is not None:
        recovery["recovery_target_time"] = f"'{target_time.isoformat()}'"
    if target_lsn is not None:
        recovery["recovery_target_lsn"] = f"'{format_lsn(parse_lsn(target_lsn))}'"
    scratch.write_private_conf(recovery)
    # A base backup taken from a standby carries its standby.signal: a restore must end recovery.
    (cluster.data_dir / "standby.signal").unlink(missing_ok=True)
    user.write_file(cluster.data_dir / "recovery.signal", "")
    start_error: ClusterError | None = None
    try:
        try:
            cluster.start(timeout=int(timeout))
        except ClusterError as exc:  # said after the staging's outcome, which may be why
            start_error = exc

        def promoted() -> bool:
            if "error" in staging_outcome:
                return True  # recovery aborts on the failed staging: said below
            try:
                with scratch.connect() as conn:
                    return not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
            except psycopg.OperationalError:
                return False  # still starting up or replaying: not accepting connections yet

        finished = start_error is None and poll(promoted, timeout=timeout)
    finally:
        stop_staging.set()  # at the target: what follows it is not needed
        stager.join()
    if "error" in staging_outcome:
        raise RestoreError(f"staging the WAL of {base.backup_id} from location {location} failed: "
                           f"{staging_outcome['error']}") from staging_outcome["error"]
    if start_error is not None:
        raise start_error
    if not finished:
        raise RestoreError(f"recovery of {base.backup_id} did not finish within {timeout:.0f}s "
                           f"(log: {cluster.log_file})")
    scratch.timings["wal_replay"] = time.monotonic() - started
    point = target_lsn if target_lsn is not None else (target_time.isoformat() if target_time else "latest")
    report(f"recovered and promoted: {point}")
    return base


def replicated_through(checks: Iterable[Consistency]) -> datetime | None:
    """How far every checked object replica holds copies (the oldest of their newest copied versions):
    an application reading a restored database with these replicas can read objects written before it."""
    return min((c.replicated_through for c in checks if c.replicated_through is not None), default=None)


def check_object_references(policy: Any, category: str, replica: ObjectStore, scratch: Any, database: str,
                            *, source_database: str | None = None, describe: str | None = None,
                            report: Callable[[str], None], user: str | None = None) -> Consistency | None:
    """The restored `database`'s references to `category`'s objects against a replica, as of now (what a
    restore of the objects could bring back). `scratch`: where the database is (anything with
    `connect(database)`: a ScratchCluster, a promoted node). `source_database`: the application database
    it was restored from (default: the same name); `user`: the role to read as (CHECK_ROLE in a restored copy).
    None when the category references no table of it."""
    spec = policy.objects.categories.get(category) if policy.objects else None
    reference = spec.database_reference if spec else None
    if reference is None or reference.database != (source_database or database):
        return None
    columns = [sql.Identifier(reference.key_column),
               sql.Identifier(reference.size_column) if reference.size_column else sql.NULL,
               sql.Identifier(reference.sha256_column) if reference.sha256_column else sql.NULL,
               sql.Identifier(reference.time_column) if reference.time_column else sql.NULL]
    query = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(columns), sql.Identifier(reference.table))
    with scratch.connect(database, **({"user": user} if user else {})) as conn:
        with conn.cursor(name="continuity_object_references") as cursor:  # server-side: rows stream
            cursor.execute(query)
            return check_consistency(iter(cursor), replica=replica,
                                     category=category, prefix=replica.prefix,
                                     database=describe or f"the restored database {database}",
                                     as_of=datetime.now(timezone.utc), report=report)
